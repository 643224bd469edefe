"""Channel modes as a pure operation: :func:`apply_modes` changes a channel and says what it did.

No I/O, no numerics, no clock: the caller passes the time and the actor's authority, and turns the
:class:`ModeOutcome` into replies (the core: numerics, the MODE line, persistence and federation).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

from freeq.irc.names import fold
from freeq.state.channel import FLAG_MODES, LIST_MODES, PREFIX_MODES, Channel, ListEntry
from freeq.state.masks import mask_problem, normalize_mask
from freeq.state.user import User

#: What a :class:`ModeReply` tells the actor (the core's numeric in brackets).
LIST = "list"  #: the entries of list ``mode``, asked for with no mask (367/368, 348/349, 346/347)
LIST_REFUSED = "list-refused"  #: list ``mode`` (``e``/``I``) is for channel operators only (482)
NEED_PARAMS = "need-params"  #: ``mode`` needs an argument that is missing (461)
UNKNOWN = "unknown"  #: ``mode`` is not a channel mode (472)
NO_SUCH_NICK = "no-such-nick"  #: nobody has nick ``arg`` (401)
NOT_MEMBER = "not-member"  #: ``arg`` is not on the channel (441)
FOUNDER = "founder"  #: the channel founder cannot be deopped by another member (482)
INVALID = "invalid"  #: an invalid key or limit ``arg`` (696; ``text`` says why)
MASK_REFUSED = "mask-refused"  #: mask ``arg`` is over the caps (696; ``text`` is the problem)
LIST_FULL = "list-full"  #: list ``mode`` is full, mask ``arg`` not added (478)

#: A change as it is broadcast: sign, letter, argument (``None`` for flags and ``-l``).
Change = tuple[str, str, Optional[str]]

#: The longest channel key, and the highest limit, accepted.
MAX_KEY_LENGTH = 23
MAX_LIMIT = 1_000_000

#: What a 696 shows in place of a value it cannot echo: an empty one (a middle parameter cannot be
#: empty), one with a space or a leading ':' (it would not stay one parameter), or an over-long one.
HIDDEN_VALUE = "*"

#: The longest limit value a 696 echoes (longer than any valid limit, short enough to keep the line sane).
MAX_SHOWN_LIMIT = 16


def shown_value(value: str, max_length: int) -> str:
    """``value`` as a 696 echoes it in its ``<param>`` slot: itself when it is a non-empty word of at most
    ``max_length`` characters without a leading ``:``, else :data:`HIDDEN_VALUE`, so the reply keeps all of
    ``<channel> <mode> <param> <description>``."""
    if not value or len(value) > max_length or " " in value or value[0] == ":":
        return HIDDEN_VALUE
    return value


@dataclass(frozen=True)
class ModeReply:
    """Something to tell the actor about one mode letter of the request, in request order."""

    kind: str
    mode: str
    arg: Optional[str] = None
    text: str = ""
    entries: tuple[ListEntry, ...] = ()  # LIST: the list as it was at that point of the request


@dataclass
class ModeOutcome:
    """What :func:`apply_modes` did: the changes applied, the replies owed to the actor, whether some
    change was refused for want of operator status (``denied``), and whether the DID operators changed."""

    applied: list[Change] = field(default_factory=list)
    replies: list[ModeReply] = field(default_factory=list)
    denied: bool = False
    did_ops_changed: bool = False

    @property
    def persist(self) -> bool:
        """Whether the channel's kept state changed (anything but a member's status, or its DID operators)."""
        return self.did_ops_changed or any(ch not in PREFIX_MODES for _s, ch, _a in self.applied)


def apply_modes(chan: Channel, actor: User, modes: str, params: Sequence[str], now: float, *, authorized: bool,
                users: Mapping[str, User], devices: Callable[[User], Iterable[User]], max_changes: int,
                max_list_entries: int) -> ModeOutcome:
    """Apply the mode string ``modes`` with its arguments ``params`` from ``actor`` to ``chan``.

    ``authorized``: whether the actor may change modes (a channel operator, or a server operator whose
    override every server sharing the channel accepts); otherwise changes are skipped and ``denied`` set,
    while list queries are still answered. ``users`` maps folded nicks to users (for ``+o``/``+v``),
    ``devices`` gives every connection of a user (its status follows on all of them). At most
    ``max_changes`` changes taking an argument are made; lists hold at most ``max_list_entries``.
    """
    run = _ModeRun(chan, actor, now, authorized, users, devices, max_changes, max_list_entries, iter(params))
    adding = True
    for ch in modes:
        if ch in "+-":
            adding = ch == "+"
        elif ch in LIST_MODES:
            run.list_mode(ch, adding)
        elif ch in PREFIX_MODES:
            run.prefix_mode(ch, adding)
        elif ch == "k":
            run.key_mode(adding)
        elif ch == "l":
            run.limit_mode(adding)
        elif ch in FLAG_MODES:
            run.flag_mode(ch, adding)
        else:
            run.reply(UNKNOWN, ch)
    return run.outcome


class _ModeRun:
    """One :func:`apply_modes` call: its inputs, the arguments still unread, and the outcome so far."""

    def __init__(self, chan: Channel, actor: User, now: float, authorized: bool, users: Mapping[str, User],
                 devices: Callable[[User], Iterable[User]], max_changes: int, max_list_entries: int,
                 params: Iterator[str]) -> None:
        self.chan = chan
        self.actor = actor
        self.now = now
        self.authorized = authorized
        self.users = users
        self.devices = devices
        self.max_list_entries = max_list_entries
        self.changes_left = max_changes
        self.params = params
        self.outcome = ModeOutcome()

    def reply(self, kind: str, mode: str, arg: Optional[str] = None, text: str = "") -> None:
        self.outcome.replies.append(ModeReply(kind, mode, arg, text))

    def allowed(self) -> bool:
        """Whether the actor may make this change (else it is denied)."""
        if not self.authorized:
            self.outcome.denied = True
        return self.authorized

    def take_change(self) -> bool:
        """Count one argument-taking change against the cap; False once it is spent (silently skipped)."""
        if self.changes_left <= 0:
            return False
        self.changes_left -= 1
        return True

    def list_mode(self, ch: str, adding: bool) -> None:
        chan = self.chan
        mask = next(self.params, None)
        if mask is None or not mask.strip():
            if adding or mask is None:
                self.list_query(ch)
            return
        if not self.allowed() or not self.take_change():
            return
        mask = normalize_mask(mask.strip())
        if " " in mask or mask[0] == ":":
            return  # could not be echoed as one middle parameter (324/367, MODE)
        if adding:
            problem = mask_problem(mask)
            if problem is not None:
                self.reply(MASK_REFUSED, ch, mask, problem)
                return
            res = chan.list_add(ch, mask, self.actor.hostmask, self.now, self.max_list_entries)
            if res is None:
                self.reply(LIST_FULL, ch, mask)
            elif res:
                self.outcome.applied.append(("+", ch, mask))
        else:
            stored = chan.list_remove(ch, mask)
            if stored is not None:
                self.outcome.applied.append(("-", ch, stored))

    def list_query(self, ch: str) -> None:
        """Show list ``ch``: bans to anyone who may see the channel, exceptions and invite exceptions to
        channel and server operators."""
        actor = self.actor
        if ch in "eI" and not self.chan.is_op(actor) and not actor.oper_holds("override"):
            self.reply(LIST_REFUSED, ch)
            return
        self.outcome.replies.append(ModeReply(LIST, ch, entries=tuple(self.chan.lists[ch])))

    def prefix_mode(self, ch: str, adding: bool) -> None:
        chan, actor = self.chan, self.actor
        nick = next(self.params, None)
        if nick is None:
            self.reply(NEED_PARAMS, ch)
            return
        if not self.allowed() or not self.take_change():
            return
        target = self.users.get(fold(nick))
        if target is None:
            self.reply(NO_SUCH_NICK, ch, nick)
            return
        if target not in chan.members:
            self.reply(NOT_MEMBER, ch, target.nick)
            return
        if ch == "o" and not adding and target.account and target.account == chan.founder \
                and target is not actor and not actor.oper_holds("override"):
            self.reply(FOUNDER, ch, target.nick)
            return
        bit = PREFIX_MODES[ch]
        old = chan.members[target]
        new = old | bit if adding else old & ~bit
        if ch == "o" and target.account:
            self.did_op(target.account, adding)
        if new != old:
            for device in self.devices(target):
                if device in chan.members:
                    chan.members[device] = new
            self.outcome.applied.append(("+" if adding else "-", ch, target.nick))

    def did_op(self, account: str, adding: bool) -> None:
        """+o/-o on an account holder is remembered by DID (the founder stays a DID operator)."""
        chan = self.chan
        if adding and account not in chan.did_ops:
            chan.did_ops[account] = (self.actor.hostmask, int(self.now))
            self.outcome.did_ops_changed = True
        elif not adding and account in chan.did_ops and account != chan.founder:
            del chan.did_ops[account]
            self.outcome.did_ops_changed = True

    def key_mode(self, adding: bool) -> None:
        chan = self.chan
        key = next(self.params, None)
        if adding and key is None:
            self.reply(NEED_PARAMS, "k")
            return
        if not self.allowed():
            return
        if adding:
            key = key.strip() if key else ""
            if not key or "," in key or " " in key or key[0] == ":" or len(key) > MAX_KEY_LENGTH:
                self.reply(INVALID, "k", shown_value(key, MAX_KEY_LENGTH),
                           f"Invalid key (1-{MAX_KEY_LENGTH} characters, no comma or space)")
                return
            chan.key = key
            self.outcome.applied.append(("+", "k", key))
        elif chan.key is not None:
            chan.key = None
            self.outcome.applied.append(("-", "k", "*"))

    def limit_mode(self, adding: bool) -> None:
        chan = self.chan
        if not adding:
            if self.allowed() and chan.limit is not None:
                chan.limit = None
                self.outcome.applied.append(("-", "l", None))
            return
        raw = next(self.params, None)
        if raw is None:
            self.reply(NEED_PARAMS, "l")
            return
        if not self.allowed():
            return
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if limit <= 0 or limit > MAX_LIMIT:
            self.reply(INVALID, "l", shown_value(raw, MAX_SHOWN_LIMIT), "Invalid limit")
            return
        chan.limit = limit
        self.outcome.applied.append(("+", "l", str(limit)))

    def flag_mode(self, ch: str, adding: bool) -> None:
        chan = self.chan
        if not self.allowed():
            return
        if adding and ch not in chan.modes:
            chan.modes.add(ch)
            self.outcome.applied.append(("+", ch, None))
        elif not adding and ch in chan.modes:
            chan.modes.discard(ch)
            self.outcome.applied.append(("-", ch, None))
