"""IRCv3 ``draft/read-marker``: MARKREAD, the last-read time of each conversation.

A marker belongs to an identity: for a DID-authenticated user it is kept per account, shared by all of
the account's connections (each one with the capability is told when it moves, and gets the marker of a
channel when it joins it), and persisted; a guest's markers live on its one connection and are never
stored (a guest nick is ephemeral, so there is no identity to attach them to across connections). A
marker only ever moves forward, and never past the server's clock.

Federated: when an account's marker moves here, a ``marker`` event is routed to each server where the
account also has a user (freeq.s2s.outbound); a server applies one only from a server hosting a user of
that account (freeq.s2s.inbound), through :meth:`ReadMarkerCommands.apply_remote_marker`, forward only.

An account's markers are read from the store when it logs in (on the DB thread) and cached for the
``MAX_CACHED_ACCOUNTS`` most recently used accounts; anything asking for them before the read finishes
waits for it. Mixed into :class:`freeq.core.server.IRCServer`, whose named hook points (``on_account_changed``,
``before_names``) call the ``markers_*`` methods: nothing of another group is overridden.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.logger import Logger

from freeq.core.history import format_ms, parse_timestamp
from freeq.irc.names import fold, is_channel, valid_channel, valid_nick
from freeq.irc.parser import Message, build
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore as _Server
    from freeq.state.channel import Channel
else:
    _Server = object

log = Logger()

#: The capability; without it a client may still use MARKREAD but is told of nothing unasked.
CAP = "draft/read-marker"
#: Markers kept per account (the least recently moved go first) and per guest connection.
MAX_MARKERS_PER_ACCOUNT = 1000
MAX_GUEST_MARKERS = 100
#: Accounts whose markers are held in memory (least recently used are dropped, and re-read when needed).
MAX_CACHED_ACCOUNTS = 10000


class MarkerBook:
    """The markers of one identity: folded target -> (read time in Unix ms, last moved in Unix seconds)."""

    __slots__ = ("entries", "limit")

    def __init__(self, limit: int, entries: Optional[dict[str, tuple[int, int]]] = None) -> None:
        self.limit = limit
        self.entries: dict[str, tuple[int, int]] = dict(entries or {})

    def get(self, target: str) -> Optional[int]:
        """The read time of ``target`` (folded), or ``None`` when there is no marker."""
        entry = self.entries.get(target)
        return entry[0] if entry is not None else None

    def advance(self, target: str, read_ms: int, now: float) -> tuple[int, bool, Optional[str]]:
        """Move the marker of ``target`` forward to ``read_ms`` (never back).

        Returns the marker's time afterwards, whether it moved, and the target whose marker was dropped to
        stay within the limit (the least recently moved one), if any.
        """
        entry = self.entries.get(target)
        if entry is not None and entry[0] >= read_ms:
            return entry[0], False, None
        self.entries[target] = (read_ms, int(now))
        evicted = None
        if len(self.entries) > self.limit:
            evicted = min((k for k in self.entries if k != target), key=lambda k: self.entries[k][1])
            del self.entries[evicted]
        return read_ms, True, evicted


class ReadMarkerState:
    """The server's markers: cached accounts, reads in flight, and guests' per-connection books."""

    def __init__(self) -> None:
        self.accounts: OrderedDict[str, MarkerBook] = OrderedDict()
        self.loading: dict[str, list[Callable[[MarkerBook], None]]] = {}
        self.guests: weakref.WeakKeyDictionary[User, MarkerBook] = weakref.WeakKeyDictionary()
        self.load_failures_logged = False

    def cache(self, did: str, book: MarkerBook) -> None:
        """Hold ``book`` for ``did``, dropping the least recently used accounts over the cap."""
        self.accounts[did] = book
        self.accounts.move_to_end(did)
        while len(self.accounts) > MAX_CACHED_ACCOUNTS:
            self.accounts.popitem(last=False)


def marker_target(target: str, channel_len: int, nick_len: int) -> Optional[str]:
    """The folded key of a MARKREAD target (a channel or a nick), or ``None`` if it is neither."""
    if is_channel(target):
        return fold(target) if valid_channel(target, channel_len) else None
    return fold(target) if valid_nick(target, nick_len) else None


def markread_line(source: str, target: str, read_ms: Optional[int]) -> bytes:
    """A server ``MARKREAD`` line (``*`` when there is no marker)."""
    return build(source, "MARKREAD", target, "*" if read_ms is None else "timestamp=" + format_ms(read_ms))


class ReadMarkerCommands(_Server):
    """MARKREAD, and the markers sent on JOIN and to an account's other connections."""

    @property
    def read_markers(self) -> ReadMarkerState:
        """This server's markers (made on first use: the server's constructor knows nothing of them)."""
        state = self.__dict__.get("_read_markers")
        if state is None:
            state = self.__dict__["_read_markers"] = ReadMarkerState()
        return state

    def irc_MARKREAD(self, user: User, msg: Message) -> None:
        if not msg.params or not msg.params[0]:
            self.fail(user, "MARKREAD", "NEED_MORE_PARAMS", "Missing parameters")
            return
        target = msg.params[0]
        key = marker_target(target, self.config.channel_len, self.config.nick_len)
        if key is None:
            self.fail(user, "MARKREAD", "INVALID_PARAMS", "*", "Invalid target")
            return
        wanted: Optional[int] = None
        if len(msg.params) > 1:
            value = msg.params[1]
            wanted = parse_timestamp(value[len("timestamp="):]) if value.startswith("timestamp=") else None
            if wanted is None:
                self.fail(user, "MARKREAD", "INVALID_PARAMS", target, "Invalid timestamp")
                return
            wanted = min(wanted, int(self.clock.seconds() * 1000))  # never past the server's clock

        def answer(book: MarkerBook) -> None:
            if user not in self.connections:
                return
            if wanted is None:
                user.write(markread_line(self.name, target, book.get(key)))
                return
            now = self.clock.seconds()
            read_ms, moved, evicted = book.advance(key, wanted, now)
            user.write(markread_line(self.name, target, read_ms))
            if not moved:
                return
            account = user.account
            if account is not None and self.store is not None:
                self.store.save_read_marker(account, key, read_ms, now)
                if evicted is not None:
                    self.store.delete_read_marker(account, evicted)
            line = markread_line(self.name, target, read_ms)
            for device in self.group(user):
                if device is not user and CAP in device.caps:
                    device.write(line)
            if account is not None:
                self.s2s_notify("marker", user, key, read_ms)

        book = self._marker_book(user, answer)
        if book is not None:
            answer(book)

    def _marker_book(self, user: User, then: Optional[Callable[[MarkerBook], None]] = None) -> Optional[MarkerBook]:
        """The markers of ``user``'s identity; ``None`` while its account's are still being read, in which case
        ``then`` is called with them once they are (and only if the read is needed, it is started)."""
        state = self.read_markers
        did = user.account
        if did is None:
            book = state.guests.get(user)
            if book is None:
                book = state.guests[user] = MarkerBook(MAX_GUEST_MARKERS)
            return book
        return self._account_markers(did, then)

    def _account_markers(self, did: str, then: Optional[Callable[[MarkerBook], None]] = None) -> Optional[MarkerBook]:
        """The markers of account ``did`` (see :meth:`_marker_book`)."""
        state = self.read_markers
        book = state.accounts.get(did)
        if book is not None:
            state.accounts.move_to_end(did)
            return book
        store = self.store
        if store is None:
            book = MarkerBook(MAX_MARKERS_PER_ACCOUNT)
            state.cache(did, book)
            return book
        waiting = state.loading.get(did)
        if waiting is None:
            waiting = state.loading[did] = []
            d = store.load_read_markers(did, MAX_MARKERS_PER_ACCOUNT)
            d.addCallbacks(self._markers_read, self._markers_unreadable, callbackArgs=(did,), errbackArgs=(did,))
        if then is not None:
            waiting.append(then)
        return None

    def _markers_read(self, rows: dict[str, tuple[int, int]], did: str) -> None:
        book = MarkerBook(MAX_MARKERS_PER_ACCOUNT, rows)
        state = self.read_markers
        state.cache(did, book)
        for then in state.loading.pop(did, ()):
            try:
                then(book)
            except Exception:
                log.failure("read marker reply failed for {did}", did=did)

    def _markers_unreadable(self, failure: Any, did: str) -> None:
        # The stored markers stay as they are (writes keep the larger time): carry on with an empty cache.
        state = self.read_markers
        if not state.load_failures_logged:
            state.load_failures_logged = True
            log.failure("reading the read markers of {did} failed (further failures are not logged)", failure,
                        did=did)
        self._markers_read({}, did)

    def apply_remote_marker(self, did: str, key: str, read_ms: int) -> None:
        """A federated server hosting a user of account ``did`` moved its marker of ``key`` (folded) to
        ``read_ms``: move ours forward too (stored, and told to the account's connections here with the
        capability). The caller (freeq.s2s.inbound) has checked who may move it and the values."""
        now = self.clock.seconds()
        store = self.store
        if did not in self.read_markers.accounts and not self.sessions.get(did):
            if store is not None:
                store.save_read_marker(did, key, read_ms, now)  # kept for its next login here (larger wins)
            return

        def apply(book: MarkerBook) -> None:
            marker, moved, evicted = book.advance(key, read_ms, now)
            if not moved:
                return
            if store is not None:
                store.save_read_marker(did, key, marker, now)
                if evicted is not None:
                    store.delete_read_marker(did, evicted)
            chan = self.channels.get(key)
            line = markread_line(self.name, chan.name if chan is not None else key, marker)
            for device in self.sessions.get(did, ()):
                if CAP in device.caps:
                    device.write(line)

        book = self._account_markers(did, apply)
        if book is not None:
            apply(book)

    # ------------------------------------------------------------------
    # Hook points (called by IRCServer's named hooks, freeq.core.server)
    # ------------------------------------------------------------------
    def markers_on_account(self, user: User, account: Optional[str]) -> None:
        """``user`` logged in to ``account``: start reading the account's markers (a login is when they will
        soon be wanted: the JOINs that follow carry them). Not for federated users."""
        federation = self.federation
        if account is not None and self.store is not None and not (federation and federation.is_remote(user)):
            self._account_markers(account)

    def markers_before_names(self, user: User, chan: "Channel") -> None:
        """NAMES of ``chan`` is about to be sent to ``user``: a member with the capability first gets the
        channel's marker, so it comes after the JOIN and before the end of NAMES (the spec's place for it)."""
        if CAP not in user.caps or user not in chan.members:
            return
        name = chan.name
        folded = chan.folded

        def send(book: MarkerBook) -> None:
            if user in self.connections:
                marker = book.get(folded)
                if marker is not None:
                    user.write(markread_line(self.name, name, marker))

        book = self._marker_book(user, send)
        user.write(markread_line(self.name, name, book.get(folded) if book is not None else None))

__all__ = ["CAP", "MarkerBook", "ReadMarkerCommands", "ReadMarkerState", "marker_target", "markread_line"]
