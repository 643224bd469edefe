"""Read markers (``draft/read-marker``) and metadata (``draft/metadata-2``) for
:class:`freeq.client.protocol.FreeqClient`.

The capabilities that tell of changes (``draft/read-marker``, ``draft/metadata-2``, ``batch``) are in
``DEFAULT_CAPS``; the commands work without them. What the server says is kept in
:attr:`MarkerCommands.read_markers` (folded target -> ``timestamp`` or ``None``) and
:attr:`MarkerCommands.metadata` (folded target -> {key: value}), and published on
:attr:`MarkerCommands.on_markread` and :attr:`MarkerCommands.on_metadata`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from twisted.internet import defer

from freeq.client.commands import ClientCommands
from freeq.client.errors import IRCError
from freeq.client.events import Event
from freeq.irc.parser import Message

#: How long a helper waits for the server's answer.
REPLY_TIMEOUT = 10.0


@dataclass(frozen=True)
class MarkRead:
    """A ``MARKREAD`` from the server: ``timestamp`` (``YYYY-MM-DDThh:mm:ss.sssZ``) or ``None`` (no marker)."""

    target: str
    timestamp: Optional[str]


@dataclass(frozen=True)
class MetadataChange:
    """A ``METADATA`` from the server: ``value`` ``None`` when the key was removed."""

    target: str
    key: str
    value: Optional[str]


def format_timestamp(when: float) -> str:
    """Unix seconds as a server-time timestamp (millisecond precision)."""
    ms = int(round(when * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


class MarkerCommands(ClientCommands):
    """MARKREAD and METADATA helpers, and the state the server's lines build."""

    def _marker_state(self) -> dict[str, Any]:
        state: Optional[dict[str, Any]] = self.__dict__.get("_marker_state_")
        if state is None:
            state = self.__dict__["_marker_state_"] = {
                "read_markers": {}, "metadata": {}, "markreads": 0,
                "on_markread": Event("markread", self.clock), "on_metadata": Event("metadata", self.clock)}
        return state

    @property
    def read_markers(self) -> dict[str, Optional[str]]:
        """Folded target -> last-read timestamp (``None``: the server has none), as last heard."""
        markers: dict[str, Optional[str]] = self._marker_state()["read_markers"]
        return markers

    @property
    def metadata(self) -> dict[str, dict[str, str]]:
        """Folded target -> {key: value}, from METADATA lines and the answers to :meth:`metadata_get`."""
        values: dict[str, dict[str, str]] = self._marker_state()["metadata"]
        return values

    @property
    def on_markread(self) -> Event[MarkRead]:
        """Fired for every ``MARKREAD`` from the server (answers and other devices' updates)."""
        event: Event[MarkRead] = self._marker_state()["on_markread"]
        return event

    @property
    def on_metadata(self) -> Event[MetadataChange]:
        """Fired for every ``METADATA`` notification."""
        event: Event[MetadataChange] = self._marker_state()["on_metadata"]
        return event

    # ------------------------------------------------------------------
    # Read markers
    # ------------------------------------------------------------------
    def mark_read(self, target: str, when: Union[float, str, None] = None) -> defer.Deferred:
        """Tell the server ``target`` was read up to ``when`` (Unix seconds or a timestamp; default now).

        Fires with the marker the server keeps (never earlier than before: markers only move forward), or
        fails with :class:`IRCError` (``FAIL MARKREAD ...``).
        """
        stamp = when if isinstance(when, str) else format_timestamp(self.clock.seconds() if when is None else when)
        d = self._markread_answer(target)
        self.send("MARKREAD", target, "timestamp=" + stamp)
        return d

    def get_read_marker(self, target: str) -> defer.Deferred:
        """Ask the server for the marker of ``target``; fires with its timestamp or ``None``."""
        d = self._markread_answer(target)
        self.send("MARKREAD", target)
        return d

    def _markread_answer(self, target: str) -> defer.Deferred:
        key = self.fold(target)
        state = self._marker_state()
        sent_after = state["markreads"]

        def matches(msg: Message) -> bool:
            if msg.command == "MARKREAD":
                # Only a MARKREAD read after ours was sent: an on_markread callback may send this command while
                # the line that fired it is still being handled (and is offered to on_raw waiters next).
                return bool(msg.params) and self.fold(msg.params[0]) == key and state["markreads"] > sent_after
            return msg.command == "FAIL" and msg.params[:1] == ["MARKREAD"]

        return self._answer(matches, lambda msg: self.read_markers.get(key))

    def irc_MARKREAD(self, msg: Message) -> None:
        if len(msg.params) < 2:
            return
        target, value = msg.params[0], msg.params[1]
        stamp = value[len("timestamp="):] if value.startswith("timestamp=") else None
        self._marker_state()["markreads"] += 1
        self.read_markers[self.fold(target)] = stamp
        self.on_markread.fire(MarkRead(target, stamp))

    # ------------------------------------------------------------------
    # Metadata
    # ------------------------------------------------------------------
    def metadata_get(self, target: str, *keys: str) -> defer.Deferred:
        """``METADATA <target> GET <keys>``; fires with {key: value or None} (``*``: oneself)."""
        if not keys:
            return defer.fail(ValueError("name at least one key"))
        wanted = set(keys)
        result: dict[str, Optional[str]] = {}

        def matches(msg: Message) -> bool:
            if msg.command == "FAIL" and msg.params[:1] == ["METADATA"]:
                return True
            if msg.command in ("761", "766") and len(msg.params) >= 3 and self._same_target(msg.params[1], target):
                key = msg.params[2]
                if key in wanted:
                    value = msg.params[4] if msg.command == "761" and len(msg.params) > 4 else None
                    result[key] = value
                    self._remember(msg.params[1], key, value)
                    wanted.discard(key)
            return not wanted

        d = self._answer(matches, lambda msg: result)
        self.send("METADATA", target, "GET", *keys)
        return d

    def metadata_set(self, target: str, key: str, value: Optional[str] = None) -> defer.Deferred:
        """``METADATA <target> SET <key> [value]`` (no value: remove it); fires with the value the server
        keeps (``None`` once removed), fails with :class:`IRCError` (``FAIL METADATA ...``)."""

        def matches(msg: Message) -> bool:
            if msg.command == "FAIL" and msg.params[:1] == ["METADATA"]:
                return True
            return (msg.command in ("761", "766") and len(msg.params) >= 3
                    and self._same_target(msg.params[1], target) and msg.params[2] == key)

        def value_of(msg: Message) -> Optional[str]:
            kept = msg.params[4] if msg.command == "761" and len(msg.params) > 4 else None
            self._remember(msg.params[1], key, kept)
            return kept

        d = self._answer(matches, value_of)
        if value is None:
            self.send("METADATA", target, "SET", key)
        else:
            self.send("METADATA", target, "SET", key, value)
        return d

    def metadata_subscribe(self, *keys: str) -> defer.Deferred:
        """``METADATA * SUB <keys>``; fires with the keys the server confirmed (770)."""

        def matches(msg: Message) -> bool:
            return msg.command == "770" or (msg.command == "FAIL" and msg.params[:1] == ["METADATA"])

        d = self._answer(matches, lambda msg: msg.params[1:])
        self.send("METADATA", "*", "SUB", *keys)
        return d

    def irc_METADATA(self, msg: Message) -> None:
        if len(msg.params) < 3:
            return
        target, key = msg.params[0], msg.params[1]
        value = msg.params[3] if len(msg.params) > 3 else None
        self._remember(target, key, value)
        self.on_metadata.fire(MetadataChange(target, key, value))

    def _remember(self, target: str, key: str, value: Optional[str]) -> None:
        values = self.metadata.setdefault(self.fold(target), {})
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value

    def _same_target(self, shown: str, asked: str) -> bool:
        return self.fold(shown) == self.fold(self.nick if asked == "*" else asked)

    # ------------------------------------------------------------------
    def _answer(self, matches: Callable[[Message], bool], value: Callable[[Message], Any]) -> defer.Deferred:
        """The next line ``matches`` accepts, as ``value(line)`` (a ``FAIL`` as an :class:`IRCError`)."""
        d = self.on_raw.wait(matches, timeout=REPLY_TIMEOUT)

        def done(msg: Message) -> Any:
            if msg.command == "FAIL":
                raise IRCError("FAIL", list(msg.params))  # params: command, code, context..., description
            return value(msg)

        return d.addCallback(done)
