"""A channel, its members and modes, as plain data with pure mutation methods."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional, Self

from freeq.irc.names import fold
from freeq.state.masks import MaskSet
from freeq.state.user import User

@dataclass
class ChannelRecord:
    """A channel's persistent snapshot (what the store keeps and loads at start-up)."""

    name: str
    created_at: int
    modes: str
    key: Optional[str]
    limit: Optional[int]
    topic: str
    topic_setter: str
    topic_time: int
    founder: Optional[str]
    lists: dict[str, list[tuple[str, str, int]]]
    did_ops: dict[str, tuple[str, int]]


#: Membership status bits.
VOICE = 1
OP = 2

#: Channel modes by ISUPPORT CHANMODES type.
LIST_MODES = "beI"
KEY_MODES = "k"
PARAM_SET_MODES = "l"
FLAG_MODES = "imnpst"
PREFIX_MODES = {"o": OP, "v": VOICE}


@dataclass
class ListEntry:
    """A ban, exception or invite-exception entry."""

    mask: str
    setter: str
    set_at: int


class Channel:
    """A channel. ``members`` maps each :class:`User` to its status bits."""

    __slots__ = (
        "name", "folded", "members", "modes", "key", "limit", "topic", "topic_setter",
        "topic_time", "created", "lists", "_compiled", "founder", "did_ops", "persisted",
        "invited_accounts", "table",
    )

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.folded = fold(name)
        self.members: dict[User, int] = {}
        self.modes: set[str] = set()
        self.key: Optional[str] = None
        self.limit: Optional[int] = None
        self.topic = ""
        self.topic_setter = ""
        self.topic_time = 0
        self.created = int(now)
        self.lists: dict[str, list[ListEntry]] = {"b": [], "e": [], "I": []}
        self._compiled: dict[str, MaskSet] = {}  # per list letter, rebuilt after a change
        self.founder: Optional[str] = None  # DID of the creator (identity layer)
        self.did_ops: dict[str, tuple[str, int]] = {}  # DID -> (granted by, when)
        self.persisted = False
        self.invited_accounts: set[str] = set()  # INVITEs that follow a DID (any of its connections)
        self.table: Optional[ChannelTable] = None  # the server's table holding this channel, which counts it

    # -- persistence --------------------------------------------------------
    def has_state(self) -> bool:
        """Whether the channel carries anything worth keeping when empty (and across restarts)."""
        return bool(self.topic or self.modes != {"n", "t"} or self.key is not None or self.limit is not None
                    or any(self.lists.values()) or self.founder or self.did_ops)

    def record(self) -> ChannelRecord:
        """A snapshot for the store."""
        return ChannelRecord(
            self.name, self.created, "".join(sorted(self.modes)), self.key, self.limit, self.topic,
            self.topic_setter, self.topic_time, self.founder,
            {m: [(e.mask, e.setter, e.set_at) for e in entries] for m, entries in self.lists.items()},
            dict(self.did_ops))

    @classmethod
    def from_record(cls, rec: ChannelRecord) -> "Channel":
        """Rebuild a channel loaded from the store."""
        chan = cls(rec.name, rec.created_at)
        chan.modes = set(rec.modes) & set(FLAG_MODES)
        chan.key, chan.limit = rec.key, rec.limit
        chan.topic, chan.topic_setter, chan.topic_time = rec.topic, rec.topic_setter, rec.topic_time
        chan.founder = rec.founder
        chan.did_ops = dict(rec.did_ops)
        for mode, entries in rec.lists.items():
            chan.lists[mode] = [ListEntry(m, s, t) for m, s, t in entries]
        chan.persisted = True
        return chan

    # -- membership -------------------------------------------------------
    def add(self, user: User, status: int = 0) -> None:
        """Add a member."""
        members = self.members
        if not members and self.table is not None:
            self.table.formed += 1
        members[user] = status
        user.channels[self.folded] = self

    def remove(self, user: User) -> None:
        """Remove a member (no-op if absent)."""
        members = self.members
        if members.pop(user, _ABSENT) is not _ABSENT and not members and self.table is not None:
            self.table.formed -= 1
        user.channels.pop(self.folded, None)

    def status(self, user: User) -> int:
        """The member's status bits (0 if not a member)."""
        return self.members.get(user, 0)

    def is_op(self, user: User) -> bool:
        """Whether the user is a channel operator here."""
        return bool(self.members.get(user, 0) & OP)

    # -- lists ------------------------------------------------------------
    def list_add(self, mode: str, mask: str, setter: str, now: float, limit: int) -> Optional[bool]:
        """Add a mask to list ``mode``; ``True`` if added, ``False`` if already there, ``None`` if full."""
        entries = self.lists[mode]
        folded = fold(mask)
        if any(fold(e.mask) == folded for e in entries):
            return False
        if len(entries) >= limit:
            return None
        entries.append(ListEntry(mask, setter, int(now)))
        self._compiled.pop(mode, None)
        return True

    def list_remove(self, mode: str, mask: str) -> Optional[str]:
        """Remove a mask (case-insensitively); return the stored spelling, or ``None`` if absent."""
        entries = self.lists[mode]
        folded = fold(mask)
        for i, e in enumerate(entries):
            if fold(e.mask) == folded:
                del entries[i]
                self._compiled.pop(mode, None)
                return e.mask
        return None

    def list_matches(self, mode: str, user: User) -> bool:
        """Whether ``user`` matches any entry of list ``mode`` (by hostmask, or exactly by DID)."""
        entries = self.lists[mode]
        if not entries:
            return False
        compiled = self._compiled.get(mode)
        if compiled is None:
            compiled = self._compiled[mode] = MaskSet(e.mask for e in entries)
        return compiled.matches(user.hostmask, user.account)

    def is_banned(self, user: User) -> bool:
        """Banned and not excepted (``+b`` without a matching ``+e``)."""
        return self.list_matches("b", user) and not self.list_matches("e", user)

    # -- mode strings -------------------------------------------------------
    def mode_string(self, show_key: bool) -> tuple[str, list[str]]:
        """The ``+modes`` string and its arguments (key shown only to members)."""
        letters = "".join(sorted(self.modes))
        args: list[str] = []
        if self.key is not None:
            letters += "k"
            args.append(self.key if show_key else "*")
        if self.limit is not None:
            letters += "l"
            args.append(str(self.limit))
        return "+" + letters, args

    def __repr__(self) -> str:
        return f"<Channel {self.name} {len(self.members)}>"


_ABSENT = object()


class ChannelTable(dict[str, Channel]):
    """The server's channels by folded name, counting those with members (``formed``, for LUSERS).

    A channel in the table adjusts ``formed`` itself when its first member joins or its last
    leaves (:meth:`Channel.add`, :meth:`Channel.remove`); persisted channels nobody is in stay
    uncounted. Every way of putting a channel in or taking it out keeps the count.
    """

    __slots__ = ("formed",)

    def __init__(self, items: Iterable[tuple[str, Channel]] = ()) -> None:
        super().__init__()
        self.formed = 0
        for key, chan in items:
            self[key] = chan

    def _take(self, chan: Channel) -> None:
        chan.table = self
        if chan.members:
            self.formed += 1

    def _release(self, chan: Channel) -> None:
        if chan.table is self:
            chan.table = None
            if chan.members:
                self.formed -= 1

    def __setitem__(self, key: str, chan: Channel) -> None:
        old = self.get(key)
        if old is chan:
            return
        if old is not None:
            self._release(old)
        super().__setitem__(key, chan)
        self._take(chan)

    def __delitem__(self, key: str) -> None:
        chan = self[key]
        super().__delitem__(key)
        self._release(chan)

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        chan = super().pop(key)
        self._release(chan)
        return chan

    def popitem(self) -> tuple[str, Channel]:
        key, chan = super().popitem()
        self._release(chan)
        return key, chan

    def setdefault(self, key: str, default: Channel) -> Channel:  # type: ignore[override]
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, chan in dict(*args, **kwargs).items():
            self[key] = chan

    def clear(self) -> None:
        for chan in self.values():
            self._release(chan)
        super().clear()

    def __ior__(self, other: Any) -> Self:  # type: ignore[override, misc]
        self.update(other)
        return self
