"""Convergent channel state: one merge rule per field, the same for live events and bursts.

This is the project's documented equivalent of a CRDT library (see docs/federation.md, "Merge
rules"): a small, explicit state-based CRDT per channel whose every operation can be validated
and authorised before it is merged, which an opaque update format (Automerge, Yjs/pycrdt) would not
allow. The fields and their rules:

=====================  =======================================  ==========================================
field                  rule                                     op
=====================  =======================================  ==========================================
topic, key, limit,     last-writer-wins register ordered by     ``["set", reg, value, stamp]``
each flag mode imnpst  hybrid-logical-clock stamp, then value
founder, creator       first-writer-wins registers (lowest      ``["found", did, stamp]``,
                       stamp, then value)                       ``["created", uid, stamp]``
bans b, exceptions e,  observed-remove set (add wins over a     ``["add", list, spelling, tag, setter, at]``
invex I, DID ops       concurrent remove; a remove only          ``["rem", list, [tags]]``
                       deletes the adds it has seen)
=====================  =======================================  ==========================================

A stamp is ``(milliseconds, counter, node)``. Tags of set elements are derived from the entry
itself (list, folded element, setter, time), so a server that restarts and re-adopts its persisted
lists produces the same tags, and removals made elsewhere while it was down still apply: nothing is
resurrected by a restart. Membership and member status are presence, owned by each user's home
server, and are not part of this module.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Iterable, Optional

from freeq.irc.names import fold
from freeq.s2s.protocol import ProtocolError, canonical, is_did
from freeq.state.channel import FLAG_MODES, Channel, ListEntry

Stamp = tuple[int, int, str]
ZERO: Stamp = (0, 0, "")
LISTS = ("b", "e", "I", "ops")
REGISTERS = frozenset({"topic", "key", "limit"} | {"mode:" + m for m in FLAG_MODES})
MAX_LIST = 500  # live elements kept per list (local MAXLIST is lower; this bounds a peer)
MAX_TOMBSTONES = 4000  # removed tags remembered per list
#: Stamps further than this in the future are refused (a peer cannot pin a register forever).
MAX_DRIFT_MS = 300_000
STATE_VERSION = 1  # format of :meth:`ChannelCRDT.serialize`
MAX_STATE_CHARS = 8_000_000  # a stored state larger than this is refused as corrupt


class HybridClock:
    """A hybrid logical clock: wall milliseconds, a counter for ties, and this node's name."""

    def __init__(self, node: str, wall: Callable[[], float]) -> None:
        self.node = node
        self.wall = wall
        self.ms = 0
        self.counter = 0

    def tick(self) -> Stamp:
        """A stamp for a local event, greater than every stamp seen so far."""
        now = int(self.wall() * 1000)
        if now > self.ms:
            self.ms, self.counter = now, 0
        else:
            self.counter += 1
        return (self.ms, self.counter, self.node)

    def observe(self, stamp: Stamp) -> None:
        """Move past a stamp received from a peer (call only with checked stamps)."""
        now = int(self.wall() * 1000)
        ms = max(self.ms, stamp[0], now)
        if ms == self.ms == stamp[0]:
            self.counter = max(self.counter, stamp[1]) + 1
        elif ms == self.ms:
            self.counter += 1
        elif ms == stamp[0]:
            self.counter = stamp[1] + 1
        else:
            self.counter = 0
        self.ms = ms

    def check(self, value: Any) -> Stamp:
        """Validate a stamp from the wire (not too far in the future); raise :class:`ProtocolError`."""
        if (not isinstance(value, list) or len(value) != 3 or not isinstance(value[0], int)
                or not isinstance(value[1], int) or not isinstance(value[2], str) or isinstance(value[0], bool)
                or value[0] < 0 or not 0 <= value[1] < 2**31 or len(value[2]) > 64):
            raise ProtocolError("bad stamp")
        if value[0] > int(self.wall() * 1000) + MAX_DRIFT_MS:
            raise ProtocolError("stamp too far in the future")
        return (value[0], value[1], value[2])


def entry_tag(lst: str, key: str, setter: str, set_at: int, bump: int = 0) -> str:
    """The deterministic tag of a list entry (see the module docstring)."""
    raw = f"{lst}\0{key}\0{setter}\0{set_at}\0{bump}".encode("utf-8", "replace")
    return hashlib.sha256(raw).hexdigest()[:24]


def element_key(lst: str, spelling: str) -> str:
    """Masks compare case-insensitively; DIDs exactly."""
    return spelling if lst == "ops" else fold(spelling)


class ChannelView:
    """The plain values of a channel's convergent fields (what clients see)."""

    __slots__ = ("modes", "key", "limit", "topic", "lists", "founder")

    def __init__(self) -> None:
        self.modes: set[str] = set()
        self.key: Optional[str] = None
        self.limit: Optional[int] = None
        self.topic: tuple[str, str, int] = ("", "", 0)
        self.lists: dict[str, dict[str, tuple[str, str, int]]] = {lst: {} for lst in LISTS}
        self.founder: Optional[str] = None

    @classmethod
    def of(cls, chan: Channel) -> "ChannelView":
        """The view of a model channel."""
        v = cls()
        v.modes = set(chan.modes) & set(FLAG_MODES)
        v.key, v.limit = chan.key, chan.limit
        v.topic = (chan.topic, chan.topic_setter, int(chan.topic_time))
        for lst in ("b", "e", "I"):
            v.lists[lst] = {fold(e.mask): (e.mask, e.setter, int(e.set_at)) for e in chan.lists[lst]}
        v.lists["ops"] = {d: (d, by, int(at)) for d, (by, at) in chan.did_ops.items()}
        v.founder = chan.founder
        return v


class ChannelCRDT:
    """The convergent state of one channel (see the module docstring for the rules)."""

    __slots__ = ("regs", "founder", "creator", "adds", "tombs")

    def __init__(self) -> None:
        self.regs: dict[str, tuple[Stamp, Any]] = {}
        self.founder: Optional[tuple[Stamp, str]] = None
        self.creator: Optional[tuple[Stamp, str]] = None  # who created the channel (uid), first writer wins
        self.adds: dict[str, dict[str, dict[str, tuple[str, str, int]]]] = {lst: {} for lst in LISTS}
        self.tombs: dict[str, dict[str, None]] = {lst: {} for lst in LISTS}

    # -- reading --------------------------------------------------------------------------------
    def view(self) -> ChannelView:
        """The current values."""
        v = ChannelView()
        for m in FLAG_MODES:
            reg = self.regs.get("mode:" + m)
            if reg is not None and reg[1]:
                v.modes.add(m)
        v.key = self._reg("key")
        v.limit = self._reg("limit")
        topic = self._reg("topic")
        if topic:
            v.topic = (topic[0], topic[1], topic[2])
        for lst in LISTS:
            tombs = self.tombs[lst]
            for key, by_tag in self.adds[lst].items():
                live = [(meta[2], tag, meta) for tag, meta in by_tag.items() if tag not in tombs]
                if live:
                    v.lists[lst][key] = min(live)[2]
        v.founder = self.founder[1] if self.founder else None
        return v

    def _reg(self, name: str) -> Any:
        reg = self.regs.get(name)
        return reg[1] if reg is not None else None

    def live_tags(self, lst: str, key: str) -> list[str]:
        """The tags under which ``key`` is present in ``lst``."""
        tombs = self.tombs[lst]
        return [t for t in self.adds[lst].get(key, {}) if t not in tombs]

    def dump(self) -> list[list[Any]]:
        """The whole state as a list of ops (merging them elsewhere reproduces this state)."""
        ops: list[list[Any]] = [["set", name, value, list(stamp)] for name, (stamp, value) in sorted(self.regs.items())]
        if self.founder is not None:
            ops.append(["found", self.founder[1], list(self.founder[0])])
        if self.creator is not None:
            ops.append(["created", self.creator[1], list(self.creator[0])])
        for lst in LISTS:
            for _key, by_tag in self.adds[lst].items():
                for tag, (spelling, setter, at) in by_tag.items():
                    ops.append(["add", lst, spelling, tag, setter, at])
            tombs = list(self.tombs[lst])
            for i in range(0, len(tombs), 500):  # keep each op well inside a frame
                ops.append(["rem", lst, tombs[i:i + 500]])
        return ops

    # -- merging --------------------------------------------------------------------------------
    def apply(self, op: Any, clock: HybridClock) -> None:
        """Merge one op (validated here; raises :class:`ProtocolError` on a malformed op)."""
        if not isinstance(op, list) or not op or not isinstance(op[0], str):
            raise ProtocolError("bad op")
        kind = op[0]
        if kind == "set" and len(op) == 4:
            name, value = op[1], op[2]
            if name not in REGISTERS:
                raise ProtocolError("unknown register")
            check_register(name, value)
            stamp = clock.check(op[3])
            cur = self.regs.get(name)
            if cur is None or (stamp, canonical(value)) > (cur[0], canonical(cur[1])):
                self.regs[name] = (stamp, value)
        elif kind == "found" and len(op) == 3:
            if not is_did(op[1]):
                raise ProtocolError("bad founder")
            stamp = clock.check(op[2])
            if self.founder is None or (stamp, op[1]) < self.founder:
                self.founder = (stamp, op[1])
        elif kind == "created" and len(op) == 3:
            if not isinstance(op[1], str) or len(op[1]) > 64:
                raise ProtocolError("bad creator")
            stamp = clock.check(op[2])
            if self.creator is None or (stamp, op[1]) < self.creator:
                self.creator = (stamp, op[1])
        elif kind == "add" and len(op) == 6:
            lst, spelling, tag, setter, at = op[1], op[2], op[3], op[4], op[5]
            if lst not in LISTS or not isinstance(tag, str) or not 1 <= len(tag) <= 64:
                raise ProtocolError("bad add")
            check_element(lst, spelling)
            if not isinstance(setter, str) or len(setter) > 300 or any(c in setter for c in " \r\n\x00"):
                raise ProtocolError("bad setter")
            if not isinstance(at, int) or isinstance(at, bool) or at < 0:
                raise ProtocolError("bad time")
            key = element_key(lst, spelling)
            by_tag = self.adds[lst].get(key)
            if by_tag is None:
                if len(self.adds[lst]) >= MAX_LIST * 2 and not self._prune(lst):
                    return
                by_tag = self.adds[lst][key] = {}
            if len(by_tag) < 64:
                by_tag.setdefault(tag, (spelling, setter, at))
        elif kind == "rem" and len(op) == 3:
            lst, tags = op[1], op[2]
            if lst not in LISTS or not isinstance(tags, list) or len(tags) > MAX_TOMBSTONES:
                raise ProtocolError("bad rem")
            tombs = self.tombs[lst]
            for tag in tags:
                if not isinstance(tag, str) or not 1 <= len(tag) <= 64:
                    raise ProtocolError("bad tag")
                tombs[tag] = None
            while len(tombs) > MAX_TOMBSTONES:
                del tombs[next(iter(tombs))]
            self._prune(lst)
        else:
            raise ProtocolError(f"unknown op {kind[:16]!r}")

    def _prune(self, lst: str) -> bool:
        """Forget elements whose every add was removed; whether there is room for another element."""
        tombs = self.tombs[lst]
        adds = self.adds[lst]
        for key in [k for k, by_tag in adds.items() if all(t in tombs for t in by_tag)]:
            del adds[key]
        return len(adds) < MAX_LIST * 2

    # -- local changes ----------------------------------------------------------------------------
    def capture(self, chan: Channel, clock: HybridClock) -> list[list[Any]]:
        """Ops that make this state equal to the model channel ``chan`` (changed locally); merged here too."""
        have = self.view()
        want = ChannelView.of(chan)
        ops: list[list[Any]] = []
        stamp: Optional[Stamp] = None

        def next_stamp() -> list[Any]:
            nonlocal stamp
            stamp = clock.tick()
            return list(stamp)

        for m in FLAG_MODES:
            if (m in want.modes) != (m in have.modes):
                ops.append(["set", "mode:" + m, m in want.modes, next_stamp()])
        if want.key != have.key:
            ops.append(["set", "key", want.key, next_stamp()])
        if want.limit != have.limit:
            ops.append(["set", "limit", want.limit, next_stamp()])
        if want.topic != have.topic and (want.topic[0] or have.topic[0]):
            ops.append(["set", "topic", list(want.topic), next_stamp()])
        if want.founder and want.founder != have.founder:
            ops.append(["found", want.founder, next_stamp()])
        for lst in LISTS:
            for key, (spelling, setter, at) in want.lists[lst].items():
                if key not in have.lists[lst]:
                    bump = 0
                    tag = entry_tag(lst, key, setter, at)
                    while tag in self.tombs[lst] or tag in self.adds[lst].get(key, {}):
                        bump += 1
                        tag = entry_tag(lst, key, setter, at, bump)
                    ops.append(["add", lst, spelling, tag, setter, at])
            for key in have.lists[lst]:
                if key not in want.lists[lst]:
                    ops.append(["rem", lst, self.live_tags(lst, key)])
        for op in ops:
            self.apply(op, clock)
        return ops

    @classmethod
    def adopt(cls, chan: Channel, node: str = "") -> "ChannelCRDT":
        """The state of a channel that existed before federation knew it (e.g. restored from the store).

        Its values are stamped with their own times (creation, topic time, entry times), so anything
        changed elsewhere later wins, and list entries get their deterministic tags.
        """
        crdt = cls()
        created = int(chan.created) * 1000
        for m in FLAG_MODES:
            crdt.regs["mode:" + m] = ((created, 0, node), m in chan.modes)
        crdt.regs["key"] = ((created, 0, node), chan.key)
        crdt.regs["limit"] = ((created, 0, node), chan.limit)
        if chan.topic:
            crdt.regs["topic"] = ((int(chan.topic_time) * 1000, 0, node),
                                  [chan.topic, chan.topic_setter, int(chan.topic_time)])
        if chan.founder:
            crdt.founder = ((created, 0, node), chan.founder)
        crdt.creator = ((created, 0, node), "")
        view = ChannelView.of(chan)
        for lst in LISTS:
            for key, (spelling, setter, at) in view.lists[lst].items():
                crdt.adds[lst].setdefault(key, {})[entry_tag(lst, key, setter, at)] = (spelling, setter, at)
        return crdt

    @classmethod
    def defaults(cls) -> "ChannelCRDT":
        """A channel first seen through a peer: the creation defaults (+nt), stamped below everything."""
        crdt = cls()
        for m in FLAG_MODES:
            crdt.regs["mode:" + m] = (ZERO, m in "nt")
        return crdt

    # -- persistence ----------------------------------------------------------------------------
    def serialize(self) -> str:
        """The whole state (registers with stamps, adds with tags, tombstones) as compact JSON for the store."""
        return json.dumps({"v": STATE_VERSION, "ops": self.dump()}, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def deserialize(cls, text: Any, clock: HybridClock) -> "ChannelCRDT":
        """Rebuild a state saved by :meth:`serialize`, validated like peer input.

        Raises :class:`ProtocolError` on anything malformed (including stamps too far in the future,
        which would otherwise pin our clock), so a corrupt row can never become channel state.
        """
        if not isinstance(text, str) or len(text) > MAX_STATE_CHARS:
            raise ProtocolError("bad stored state")
        try:
            doc = json.loads(text)
        except ValueError:
            raise ProtocolError("stored state is not JSON") from None
        if not isinstance(doc, dict) or doc.get("v") != STATE_VERSION or not isinstance(doc.get("ops"), list):
            raise ProtocolError("unknown stored state format")
        crdt = cls()
        for op in doc["ops"]:
            crdt.apply(op, clock)
        return crdt

    def max_stamp(self) -> Stamp:
        """The highest stamp in this state (a restarted clock must not go below it)."""
        stamps = [stamp for stamp, _value in self.regs.values()]
        stamps += [reg[0] for reg in (self.founder, self.creator) if reg is not None]
        return max(stamps, default=ZERO)

    def is_trivial(self) -> bool:
        """Whether nothing distinguishes this state from a fresh default channel."""
        v = self.view()
        return (v.modes == {"n", "t"} and v.key is None and v.limit is None and not v.topic[0]
                and not any(v.lists.values()) and v.founder is None and not any(self.tombs.values()))


def check_register(name: str, value: Any) -> None:
    """Validate a register value for ``name``."""
    if name.startswith("mode:"):
        ok = isinstance(value, bool)
    elif name == "key":
        ok = value is None or (isinstance(value, str) and 1 <= len(value) <= 23
                               and not any(c in value for c in ", :\r\n\x00") and not value.startswith(":"))
    elif name == "limit":
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1_000_000)
    else:  # topic
        ok = (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str)
              and len(value[0].encode("utf-8")) <= 1000 and isinstance(value[1], str) and len(value[1]) <= 300
              and isinstance(value[2], int) and not any(c in value[0] + value[1] for c in "\r\n\x00")
              and " " not in value[1])
    if not ok:
        raise ProtocolError(f"bad value for {name}")


def check_element(lst: str, spelling: Any) -> None:
    """Validate a list element: a DID for ``ops``, a one-word mask otherwise."""
    if lst == "ops":
        if not is_did(spelling):
            raise ProtocolError("bad DID op")
        return
    if (not isinstance(spelling, str) or not 1 <= len(spelling) <= 200 or spelling.startswith(":")
            or any(c in spelling for c in " ,\r\n\x00")):
        raise ProtocolError("bad mask")


def materialize(crdt: ChannelCRDT, chan: Channel) -> tuple[list[tuple[str, str, Optional[str]]], bool]:
    """Write the CRDT's values into the model channel.

    Returns the visible mode changes as ``(sign, letter, arg)`` (bans, exceptions, invex, flags,
    key, limit) and whether the topic changed, for the caller to announce to local members.
    """
    old = ChannelView.of(chan)
    new = crdt.view()
    changes: list[tuple[str, str, Optional[str]]] = []
    for m in sorted(FLAG_MODES):
        if (m in new.modes) != (m in old.modes):
            changes.append(("+" if m in new.modes else "-", m, None))
    chan.modes = (set(chan.modes) - set(FLAG_MODES)) | new.modes
    if new.key != old.key:
        changes.append(("+", "k", new.key) if new.key is not None else ("-", "k", "*"))
        chan.key = new.key
    if new.limit != old.limit:
        changes.append(("+", "l", str(new.limit)) if new.limit is not None else ("-", "l", None))
        chan.limit = new.limit
    topic_changed = new.topic != old.topic and (new.topic[0] != old.topic[0] or bool(new.topic[0]))
    if new.topic != old.topic:
        chan.topic, chan.topic_setter, chan.topic_time = new.topic
    for lst in ("b", "e", "I"):
        if new.lists[lst].keys() != old.lists[lst].keys():
            for key in old.lists[lst].keys() - new.lists[lst].keys():
                changes.append(("-", lst, old.lists[lst][key][0]))
            for key in new.lists[lst].keys() - old.lists[lst].keys():
                changes.append(("+", lst, new.lists[lst][key][0]))
            chan.lists[lst] = [ListEntry(s, by, at) for s, by, at in sorted(new.lists[lst].values(), key=lambda e: e[2])]
            chan._compiled.pop(lst, None)
    chan.did_ops = {d: (by, at) for d, by, at in new.lists["ops"].values()}
    chan.founder = new.founder
    return changes, topic_changed


def merge_ops(crdt: ChannelCRDT, ops: Iterable[Any], clock: HybridClock) -> None:
    """Merge a list of ops (a burst's channel state); raises :class:`ProtocolError` on the first bad one."""
    if not isinstance(ops, list) or len(ops) > 20000:
        raise ProtocolError("bad ops")
    for op in ops:
        crdt.apply(op, clock)
