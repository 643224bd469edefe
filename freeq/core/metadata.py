"""IRCv3 ``draft/metadata-2``: METADATA on users and channels (GET, LIST, SET, CLEAR, SUB, UNSUB, SUBS, SYNC).

Who holds what:

* a DID-authenticated user's metadata belongs to its account, is shared by its connections and is
  persisted (``account_metadata``); it is read from the store at login. Its Bluesky profile's display
  name and avatar (:mod:`freeq.auth.profile`, fetched after login) are defaults for ``display-name``
  and ``avatar``: shown while the account has not set those keys itself, never stored;
* a guest's metadata lives on its connection only; what a connection set before logging in
  (``before-connect``) becomes its account's;
* a channel's metadata is set by its operators; that of a registered channel (one with a founder DID)
  is persisted (``channel_metadata``), any other channel's lasts as long as the channel. It follows the
  channel through a RENAME.

Keys are 1 to :data:`MAX_KEY_LEN` characters of ``a-z0-9_./-``; values at most :data:`MAX_VALUE_BYTES`
bytes of UTF-8 without control characters; ``avatar`` and ``homepage`` must be http(s) URLs. At most
:data:`MAX_KEYS` keys per target and :data:`MAX_SUBS` subscriptions per connection. Clients with the
capability hear of changes to keys they subscribed to on themselves (made by their other connections),
on their channels and on the users they share a channel with; a joiner with the capability gets the
channel's and its members' metadata, and ``760`` lines in WHOIS.

Federated: a change made here goes out as a signed ``metadata`` event (freeq.s2s.outbound); a server applies
a user's only from that user's home server and a channel's only from a server whose user is an operator of
the channel there (freeq.s2s.inbound), through :meth:`MetadataCommands.apply_remote_metadata`. A federated
user shows what its home server announced (kept in memory, never stored here): when it registers, whenever
its values change, and in its home server's bursts (freeq.s2s.burst); a channel's only when they change
(docs/federation.md). An account signed in on several servers shares its own values: a logged-in user's
change also carries the account's own values (``account``, never the profile defaults), which a server
that believes the account claim (a ``full`` link) applies to the account here and stores
(:meth:`MetadataCommands.apply_account_metadata`).

Mixed into :class:`freeq.core.server.IRCServer`, whose named hook points (``on_account_changed``,
``before_motd``, ``after_register``, ``after_join``, ...) call the ``metadata_*`` methods: nothing of
another group is overridden.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterable, Optional
from urllib.parse import urlsplit

from twisted.logger import Logger

from freeq.irc.names import fold, is_channel
from freeq.irc.parser import Message, build, build_text
from freeq.state.channel import OP, Channel
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.auth.profile import Profile, ProfileFetcher
    from freeq.core.shared import ServerCore as _Server
else:
    _Server = object

log = Logger()

CAP = "draft/metadata-2"
MAX_KEYS = 20
MAX_SUBS = 50
MAX_KEY_LEN = 64
MAX_VALUE_BYTES = 300
#: The capability's value (CAP LS 302). No limit is advertised: ``CAP LS`` must stay one line for the freeq
#: JS SDK (tests/test_cap_ls_line.py, with a 63-character server name), and a client over a limit is told
#: (``FAIL METADATA LIMIT_REACHED`` for keys, ``TOO_MANY_SUBS``, ``VALUE_INVALID`` for the value size).
CAP_VALUE = "before-connect"
#: Keys whose value must be an http(s) URL.
URL_KEYS = frozenset({"avatar", "homepage"})
#: Accounts whose metadata is held in memory: over this, accounts without a connection are dropped first.
MAX_CACHED_ACCOUNTS = 20000
#: Keys per 772 (RPL_METADATASUBS) line.
SUBS_PER_LINE = 10

_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_./-")


def valid_key(key: str) -> bool:
    """Whether ``key`` is a metadata key name this server accepts."""
    return 0 < len(key) <= MAX_KEY_LEN and set(key) <= _KEY_CHARS


def value_problem(key: str, value: str) -> Optional[str]:
    """Why ``value`` may not be stored under ``key`` (``None`` when it may)."""
    if not value:
        return "Value is empty"
    if len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        return f"Value is longer than {MAX_VALUE_BYTES} bytes"
    if any(ch < " " or ch == "\x7f" for ch in value):
        return "Value contains control characters"
    if key in URL_KEYS:
        if any(ch.isspace() for ch in value):
            return "Not a URL"
        try:
            parts = urlsplit(value)
        except ValueError:
            return "Not a URL"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "Only http and https URLs are accepted"
    return None


class MetadataState:
    """The server's metadata (see the module docstring for who holds what)."""

    def __init__(self) -> None:
        self.accounts: OrderedDict[str, dict[str, str]] = OrderedDict()  # DID -> what it set
        self.loading: dict[str, set[str]] = {}  # DID being read -> keys changed meanwhile (they win)
        self.defaults: OrderedDict[str, dict[str, str]] = OrderedDict()  # DID -> its profile's values
        self.guests: weakref.WeakKeyDictionary[User, dict[str, str]] = weakref.WeakKeyDictionary()
        # a federated user -> what its home server announced (``metadata`` events)
        self.remote: weakref.WeakKeyDictionary[User, dict[str, str]] = weakref.WeakKeyDictionary()
        self.channels: dict[str, tuple[int, dict[str, str]]] = {}  # folded -> (channel created, values)
        self.subs: weakref.WeakKeyDictionary[User, set[str]] = weakref.WeakKeyDictionary()
        self.load_failure_logged = False

    def trim(self, connected: Any) -> None:
        """Keep at most :data:`MAX_CACHED_ACCOUNTS` accounts (and as many defaults), dropping the least
        recently used of those without a connection (``connected``: the server's DID -> sessions)."""
        for table in (self.accounts, self.defaults):
            excess = len(table) - MAX_CACHED_ACCOUNTS
            if excess <= 0:
                continue
            for did in [d for d in table if d not in connected][:excess]:
                del table[did]


class MetadataCommands(_Server):
    """The METADATA command, and metadata on login, registration and JOIN."""

    if TYPE_CHECKING:
        profiles: Optional["ProfileFetcher"]
        ulid: Any
        current_label: Optional[str]
        oper_log: Any  # operator: (user, action, **fields)

    @property
    def metadata(self) -> MetadataState:
        """This server's metadata (made on first use: the server's constructor knows nothing of it)."""
        state = self.__dict__.get("_metadata")
        if state is None:
            state = self.__dict__["_metadata"] = MetadataState()
        return state

    # ------------------------------------------------------------------
    # Reading
    # ------------------------------------------------------------------
    def user_metadata(self, user: User) -> dict[str, str]:
        """What ``user`` shows: its account's values over its profile's defaults, or a guest's own."""
        state = self.metadata
        federation = self.federation
        if federation is not None and federation.is_remote(user):
            return dict(state.remote.get(user, {}))
        did = user.account
        if did is None:
            return dict(state.guests.get(user, {}))
        return {**state.defaults.get(did, {}), **state.accounts.get(did, {})}

    def channel_metadata(self, chan: Channel) -> dict[str, str]:
        """The metadata of ``chan`` (an entry left by an earlier channel of that name is dropped)."""
        entry = self.metadata.channels.get(chan.folded)
        if entry is None:
            return {}
        if entry[0] != chan.created:
            del self.metadata.channels[chan.folded]
            return {}
        return entry[1]

    def _own_values(self, user: User, create: bool) -> Optional[dict[str, str]]:
        """The dict of what ``user``'s identity set itself (made when ``create``)."""
        state = self.metadata
        did = user.account
        if did is None:
            values = state.guests.get(user)
            if values is None and create:
                values = state.guests[user] = {}
            return values
        values = state.accounts.get(did)
        if values is None and create:
            values = state.accounts[did] = {}
            state.trim(self.sessions)
        return values

    # ------------------------------------------------------------------
    # The command
    # ------------------------------------------------------------------
    def irc_METADATA(self, user: User, msg: Message) -> None:
        if len(msg.params) < 2:
            self.num(user, "461", "METADATA", "Not enough parameters")
            return
        target, sub = msg.params[0], msg.params[1].upper()
        args = msg.params[2:]
        if sub in ("SUB", "UNSUB", "SUBS"):
            getattr(self, "_metadata_" + sub.lower())(user, args)
            return
        if sub not in ("GET", "LIST", "SET", "CLEAR", "SYNC"):
            self.fail(user, "METADATA", "SUBCOMMAND_INVALID", sub if _safe_word(sub) else "*", "Invalid subcommand")
            return
        resolved = self._metadata_target(user, target)
        if resolved is None:
            self.fail(user, "METADATA", "INVALID_TARGET", target if _safe_word(target) else "*",
                      "Invalid metadata target")
            return
        name, obj = resolved
        if sub == "GET":
            if not args:
                self.num(user, "461", "METADATA", "Not enough parameters")
                return
            values = self._values_of(obj)
            lines = []
            for key in args:
                if not valid_key(key):
                    self.fail(user, "METADATA", "KEY_INVALID", key if _safe_word(key) else "*", "Invalid key")
                elif key in values:
                    lines.append(build(self.name, "761", user.nick, name, key, "*", values[key]))
                else:
                    lines.append(build(self.name, "766", user.nick, name, key, "Key not set"))
            self._metadata_batch(user, "metadata", name, lines)
        elif sub == "LIST":
            values = self._values_of(obj)
            self._metadata_batch(user, "metadata", name, [
                build(self.name, "761", user.nick, name, k, "*", v) for k, v in sorted(values.items())])
        elif sub == "SET":
            if not args:
                self.num(user, "461", "METADATA", "Not enough parameters")
                return
            self._metadata_set(user, name, obj, args[0], args[1] if len(args) > 1 else None)
        elif sub == "CLEAR":
            self._metadata_clear(user, name, obj)
        else:
            self._metadata_sync(user, name, obj)

    def _metadata_target(self, user: User, target: str) -> Optional[tuple[str, Any]]:
        """(name to show, the User or Channel) for a target the asker may see, or ``None``."""
        if target == "*" or (user.registered and fold(target) == user.folded):
            return (user.nick if user.registered else "*"), user
        if not user.registered:
            return None  # before registration: only oneself
        if is_channel(target):
            chan = self.channels.get(fold(target))
            if chan is None or (user not in chan.members and chan.modes & {"s", "p"}):
                return None
            return chan.name, chan
        other = self.users.get(fold(target))
        if other is None or not other.registered:
            return None
        return other.nick, other

    def _values_of(self, obj: Any) -> dict[str, str]:
        return self.channel_metadata(obj) if isinstance(obj, Channel) else self.user_metadata(obj)

    def _may_edit(self, user: User, obj: Any) -> bool:
        if isinstance(obj, Channel):
            if obj.members.get(user, 0) & OP:
                return True
            if user.oper_holds("override"):  # a server operator's override of the channel's rules
                self.oper_log(user, "override", command="METADATA", channel=obj.name)
                return True
            return False
        return obj is user

    def _metadata_set(self, user: User, name: str, obj: Any, key: str, value: Optional[str]) -> None:
        if not valid_key(key):
            self.fail(user, "METADATA", "KEY_INVALID", key if _safe_word(key) else "*", "Invalid key")
            return
        if not self._may_edit(user, obj):
            self.fail(user, "METADATA", "KEY_NO_PERMISSION", name, key, "Permission denied")
            return
        if value is not None:
            problem = value_problem(key, value)
            if problem is not None:
                self.fail(user, "METADATA", "VALUE_INVALID", problem)
                return
        if isinstance(obj, Channel):
            entry = self.channel_metadata(obj)
            values: Optional[dict[str, str]] = entry if entry else None
            if values is None and value is not None:
                values = {}
                self.metadata.channels[obj.folded] = (obj.created, values)
        else:
            values = self._own_values(user, create=value is not None)
        shown = self._values_of(obj)
        if value is None:
            if key not in shown:
                self.fail(user, "METADATA", "KEY_NOT_SET", name, key, "Key not set")
                return
            if values is not None:
                values.pop(key, None)
            if isinstance(obj, User) and obj.account is not None:
                self.metadata.defaults.get(obj.account, {}).pop(key, None)  # until the profile is read again
            self._metadata_changed(user, obj, [key], own_change=True)
            user.write(build(self.name, "766", user.nick, name, key, "Key not set"))
            return
        assert values is not None
        if key not in values and len(values) >= MAX_KEYS:
            self.fail(user, "METADATA", "LIMIT_REACHED", name, "Metadata limit reached")
            return
        values[key] = value
        self._metadata_changed(user, obj, [key], own_change=True)
        user.write(build(self.name, "761", user.nick, name, key, "*", value))

    def _metadata_clear(self, user: User, name: str, obj: Any) -> None:
        if not self._may_edit(user, obj):
            self.fail(user, "METADATA", "KEY_NO_PERMISSION", name, "*", "Permission denied")
            return
        values = self.channel_metadata(obj) if isinstance(obj, Channel) else self._own_values(user, create=False)
        keys = sorted(values or {})
        if values:
            values.clear()
        if keys:
            self._metadata_changed(user, obj, keys, own_change=True)
        self._metadata_batch(user, "metadata", name, [
            build(self.name, "761", user.nick, name, k, "*") for k in keys])

    def _metadata_sync(self, user: User, name: str, obj: Any) -> None:
        if user.account is not None and user.account in self.metadata.loading and obj is user:
            self.num_raw(user, "774", name, "1")  # RPL_METADATASYNCLATER: its account's values are being read
            return
        self._metadata_batch(user, "metadata", name, self._sync_lines(user, obj))

    def _sync_lines(self, user: User, obj: Any) -> list[bytes]:
        """``METADATA`` lines of ``obj`` (and, for a channel, of its members) for the keys ``user`` subscribed to."""
        subs = self.metadata.subs.get(user)
        if not subs:
            return []
        lines = []
        targets: Iterable[tuple[str, dict[str, str]]]
        if isinstance(obj, Channel):
            users = self.users
            members = [(m.nick, self.user_metadata(m)) for m in obj.members if users.get(m.folded) is m]
            targets = [(obj.name, self.channel_metadata(obj))] + members
        else:
            targets = [(obj.nick, self.user_metadata(obj))]
        for target, values in targets:
            for key in sorted(subs & values.keys()):
                lines.append(build(self.name, "METADATA", target, key, "*", values[key]))
        return lines

    def _metadata_sub(self, user: User, keys: list[str]) -> None:
        if not keys:
            self.num(user, "461", "METADATA", "Not enough parameters")
            return
        subs = self.metadata.subs.get(user)
        if subs is None:
            subs = self.metadata.subs[user] = set()
        done = []
        for key in keys:
            if not valid_key(key):
                self.fail(user, "METADATA", "KEY_INVALID", key if _safe_word(key) else "*", "Invalid key")
                continue
            if key not in subs and len(subs) >= MAX_SUBS:
                self.fail(user, "METADATA", "TOO_MANY_SUBS", key, "Too many subscriptions")
                break
            subs.add(key)
            done.append(key)
        if done:
            user.write(build(self.name, "770", user.nick, *done))

    def _metadata_unsub(self, user: User, keys: list[str]) -> None:
        if not keys:
            self.num(user, "461", "METADATA", "Not enough parameters")
            return
        subs = self.metadata.subs.get(user, set())
        done = []
        for key in keys:
            if not valid_key(key):
                self.fail(user, "METADATA", "KEY_INVALID", key if _safe_word(key) else "*", "Invalid key")
                continue
            subs.discard(key)
            done.append(key)
        if done:
            user.write(build(self.name, "771", user.nick, *done))

    def _metadata_subs(self, user: User, args: list[str]) -> None:
        keys = sorted(self.metadata.subs.get(user, ()))
        self._metadata_batch(user, "metadata-subs", None, [
            build(self.name, "772", user.nick, *keys[i:i + SUBS_PER_LINE])
            for i in range(0, len(keys), SUBS_PER_LINE)])

    def _metadata_batch(self, user: User, kind: str, param: Optional[str], lines: list[bytes]) -> None:
        """Send ``lines`` in a ``kind`` batch to a client with ``batch``; a labelled command's reply is already
        grouped by its label (labeled-response), so it is sent as it is. A client without ``batch`` learns
        where a ``metadata`` reply ends from ``762`` (RPL_METADATAEND, as in the earlier drafts)."""
        if "batch" not in user.caps or self.current_label is not None:
            for line in lines:
                user.write(line)
            if kind == "metadata" and "batch" not in user.caps:
                self.num(user, "762", "end of metadata")
            return
        ref = self.ulid.new()[-10:]
        user.write(build(self.name, "BATCH", "+" + ref, kind, *([param] if param else [])))
        tag = b"@batch=" + ref.encode() + b" "
        for line in lines:
            user.write(tag + line)
        user.write(build(self.name, "BATCH", "-" + ref))

    # ------------------------------------------------------------------
    # Changes: persistence and notifications
    # ------------------------------------------------------------------
    def _metadata_changed(self, by: Optional[User], obj: Any, keys: list[str], from_peer: bool = False,
                          own_change: bool = False) -> None:
        """Persist and announce a change of ``keys`` on ``obj`` (a User or Channel) made by ``by`` (``None``:
        the server, e.g. profile defaults arriving). A local change also goes to the federation (a
        ``metadata`` event); one ``from_peer`` (a federated server's event) does not, and a federated user's
        values are never stored here. ``own_change``: a user changed its own values itself (SET, CLEAR, what it set
        before logging in): a logged-in user's event then also carries its account's own values (``account``),
        which the account's other servers store (:meth:`apply_account_metadata`); values read from the
        store or a profile's defaults never do (a stale copy must not overwrite a fresher one elsewhere)."""
        store = self.store
        if isinstance(obj, Channel):
            values = self.channel_metadata(obj)
            if store is not None and obj.founder is not None:
                for key in keys:
                    store.save_channel_metadata(obj.folded, key, values.get(key))
            target = obj.name
            audience: Iterable[User] = obj.members
        else:
            did = obj.account
            own = self.metadata.accounts.get(did, {}) if did is not None else {}
            if did is not None and store is not None and by is not None and not from_peer:
                for key in keys:
                    store.save_account_metadata(did, key, own.get(key))
                loading = self.metadata.loading.get(did)
                if loading is not None:
                    loading.update(keys)
            values = self.user_metadata(obj)
            target = obj.nick
            audience = set(self.group(obj)) | self.co_members(obj)
        if by is not None and not from_peer and self.federation is not None:
            account = None
            if own_change and isinstance(obj, User) and obj.account is not None:
                mine = self.metadata.accounts.get(obj.account, {})
                account = {key: mine.get(key) for key in keys}
            self.s2s_notify("metadata", by, obj, {key: values.get(key) for key in keys}, account)
        subs_of = self.metadata.subs
        for other in audience:
            if other is by or CAP not in other.caps or not other.registered:
                continue
            subs = subs_of.get(other)
            if not subs:
                continue
            for key in keys:
                if key in subs:
                    value = values.get(key)
                    other.write(build(self.name, "METADATA", target, key, "*", *([value] if value else [])))

    def apply_remote_metadata(self, actor: User, chan: Optional[Channel], changes: dict[str, Optional[str]]) -> None:
        """A federated server's ``metadata`` event: ``actor`` (one of its users) changed its own metadata
        (``chan`` is ``None``) or that of ``chan``; ``changes`` maps keys to values (``None``: unset). The caller
        (freeq.s2s.inbound) has checked who may change it and the values (:func:`changes_problem`). Subscribers
        here are told of what changed; a new key over :data:`MAX_KEYS` is dropped."""
        state = self.metadata
        if chan is None:
            values = state.remote.get(actor)
            if values is None:
                values = state.remote[actor] = {}
        else:
            values = self.channel_metadata(chan)
            if not values:
                values = {}
                state.channels[chan.folded] = (chan.created, values)
        changed = []
        for key, value in changes.items():
            if value is None:
                if values.pop(key, None) is not None:
                    changed.append(key)
            elif values.get(key) != value and (key in values or len(values) < MAX_KEYS):
                values[key] = value
                changed.append(key)
        if changed:
            self._metadata_changed(actor, actor if chan is None else chan, sorted(changed), from_peer=True)

    def apply_account_metadata(self, did: str, changes: dict[str, Optional[str]]) -> None:
        """A federated server's ``metadata`` event carried the ``account`` field: a session of ``did`` there
        changed the account's own values (``changes``: key -> value, ``None``: unset; never profile defaults).
        The caller (freeq.s2s.inbound) has checked the values (:func:`changes_problem`) and that this server
        believes the account claim (a ``full`` link). The account's values here follow: in memory (read from
        the store first if not held; keys changed meanwhile win over that read), stored for a later session,
        and shown to its sessions here and their subscribers. No ``account`` goes out again (no loops); only
        the keys its session here now shows, so that other servers see that session's values too. A new key
        over :data:`MAX_KEYS` is dropped."""
        state = self.metadata
        own = state.accounts.get(did)
        if own is None:
            own = self._hold_account(did)
        shown = self._account_shown(did)
        accepted = []
        for key, value in sorted(changes.items()):
            if value is not None and key not in own and len(own) >= MAX_KEYS:
                continue
            if value is None:
                own.pop(key, None)
            else:
                own[key] = value
            accepted.append(key)
        loading = state.loading.get(did)
        if loading is not None:
            loading.update(accepted)  # the stored values being read are older
        store = self.store
        if store is not None:
            for key in accepted:
                store.save_account_metadata(did, key, own.get(key))
        after = self._account_shown(did)
        changed = sorted(k for k in accepted if shown.get(k) != after.get(k))
        if changed:
            log.debug("account metadata of {did} from a peer: {keys}", did=did, keys=",".join(changed))
            self._account_shown_changed(did, changed, announce=True)

    def _account_shown(self, did: str) -> dict[str, str]:
        """What a session of the local account ``did`` shows: its own values over its profile's defaults."""
        state = self.metadata
        return {**state.defaults.get(did, {}), **state.accounts.get(did, {})}

    def _hold_account(self, did: str) -> dict[str, str]:
        """The account's own values, now held in memory; when a store is there, they are being read from it
        (``loading``: what changes meanwhile wins over that read)."""
        state = self.metadata
        own = state.accounts[did] = {}
        state.trim(self.sessions)
        if self.store is not None and did not in state.loading:
            state.loading[did] = set()
            d = self.store.load_account_metadata(did)
            d.addCallbacks(self._account_metadata_read, self._account_metadata_unreadable,
                           callbackArgs=(did,), errbackArgs=(did,))
        return own

    def _account_shown_changed(self, did: str, keys: list[str], announce: bool) -> None:
        """What the local account ``did`` shows under ``keys`` changed without a session of it asking (a
        profile's defaults, a peer's ``account`` values): its sessions with the capability are told, and so are
        the subscribers among its nick's co-members; when ``announce``, the federation too (a ``metadata``
        event of the shown values, never with ``account``)."""
        shown = self._account_shown(did)
        sessions = self.sessions.get(did, ())
        for session in sessions:
            if CAP in session.caps and session.registered:
                for key in keys:
                    value = shown.get(key)
                    session.write(build(self.name, "METADATA", session.nick, key, "*", *([value] if value else [])))
        primary = self.primary_session(did)
        if primary is None:
            return
        if announce and self.federation is not None:
            self.s2s_notify("metadata", primary, primary, {key: shown.get(key) for key in keys})
        subs_of = self.metadata.subs
        for other in self.co_members(primary) - set(sessions):
            subs = subs_of.get(other)
            if CAP in other.caps and subs:
                for key in keys:
                    if key in subs:
                        value = shown.get(key)
                        other.write(build(self.name, "METADATA", primary.nick, key, "*", *([value] if value else [])))

    # ------------------------------------------------------------------
    # Hook points (called by IRCServer's named hooks, freeq.core.server)
    # ------------------------------------------------------------------
    def metadata_on_account(self, user: User, account: Optional[str]) -> None:
        """``user`` logged in to ``account``: read the account's metadata (what the connection set before
        logging in becomes the account's) and, in the background, its Bluesky profile."""
        federation = self.federation
        if account is None or (federation is not None and federation.is_remote(user)):
            return  # a federated user's metadata comes from its home server (``metadata`` events)
        state = self.metadata
        before = state.guests.pop(user, None)
        own = state.accounts.get(account)
        if own is None:
            own = self._hold_account(account)
        if before:
            for key, value in before.items():
                if key in own or len(own) < MAX_KEYS:
                    own[key] = value
            self._metadata_changed(user, user, sorted(before), own_change=True)
        self._fetch_profile(account)

    def metadata_before_motd(self, user: User) -> None:
        """``user`` is registering and the MOTD comes next: a client with the capability first gets its own
        metadata (every key) in a ``metadata`` batch, as the spec wants it before the end of the MOTD."""
        if CAP in user.caps:
            values = self.user_metadata(user)
            self._metadata_batch(user, "metadata", user.nick, [
                build(self.name, "METADATA", user.nick, k, "*", v) for k, v in sorted(values.items())])

    def metadata_after_register(self, user: User) -> None:
        """``user`` registered and was announced to the federation: what it set before connecting (or its
        account holds already) follows it there."""
        if self.federation is None or self.users.get(user.folded) is not user:
            return  # another device of an identity already announced
        values = self.user_metadata(user)
        if values:
            self.s2s_notify("metadata", user, user, dict(sorted(values.items())))

    def metadata_after_join(self, user: User, chan: Channel) -> None:
        """``user`` (and its other devices) joined ``chan``: a joiner with the capability gets the channel's and
        its members' metadata (subscribed keys), and members with it get the joiner's."""
        for device in self.group(user):
            if CAP in device.caps and self.metadata.subs.get(device):
                self._metadata_batch(device, "metadata", chan.name, self._sync_lines(device, chan))
        values = self.user_metadata(user)
        if not values:
            return
        devices = set(self.group(user))
        for member in chan.members:
            subs = self.metadata.subs.get(member)
            if member in devices or CAP not in member.caps or not subs:
                continue
            for k in sorted(subs & values.keys()):
                member.write(build(self.name, "METADATA", user.nick, k, "*", values[k]))

    def metadata_on_caps_changed(self, user: User) -> None:
        """``user``'s capabilities changed: a client that gave up the capability (or ``batch``) loses its
        subscriptions, as the spec wants."""
        if user in self.metadata.subs and (CAP not in user.caps or "batch" not in user.caps):
            del self.metadata.subs[user]

    def metadata_after_channels_loaded(self) -> None:
        """The persisted channels were restored at start-up: the metadata of the registered ones with them."""
        if self.store is None:
            return
        for folded, values in self.store.load_channel_metadata().items():
            chan = self.channels.get(folded)
            if chan is not None:
                self.metadata.channels[folded] = (chan.created, dict(list(values.items())[:MAX_KEYS]))

    def metadata_on_channel_gone(self, chan: Channel) -> None:
        """``chan`` was forgotten: its metadata goes too (in memory, and the stored rows of a channel that was
        persisted), so entries of channels that come and go cannot pile up."""
        entry = self.metadata.channels.get(chan.folded)
        if entry is None or entry[0] != chan.created:
            return
        del self.metadata.channels[chan.folded]
        if self.store is not None:
            for key in entry[1]:
                self.store.save_channel_metadata(chan.folded, key, None)

    def metadata_on_channel_renamed(self, chan: Channel, old_folded: str) -> None:
        """``chan`` was renamed (it was ``old_folded``): its metadata follows it to its new name (and, for a
        registered channel, its stored rows)."""
        state = self.metadata
        if chan.folded == old_folded:
            return
        entry = state.channels.pop(old_folded, None)
        if entry is None or entry[0] != chan.created or not entry[1]:
            return
        state.channels[chan.folded] = entry
        store = self.store
        if store is not None and chan.founder is not None:
            for key, value in entry[1].items():
                store.save_channel_metadata(old_folded, key, None)
                store.save_channel_metadata(chan.folded, key, value)

    def metadata_whois(self, asker: User, target: User) -> None:
        """WHOIS of ``target``: its metadata as ``760`` (RPL_WHOISKEYVALUE ``<target> <key> <visibility>
        :<value>``), every key being public here."""
        for key, value in sorted(self.user_metadata(target).items()):
            asker.write(build_text(self.name, "760", asker.nick, target.nick, key, "*", value))

    def _account_metadata_read(self, rows: dict[str, str], did: str) -> None:
        state = self.metadata
        changed_meanwhile = state.loading.pop(did, set())
        own = state.accounts.get(did)
        if own is None:
            own = state.accounts[did] = {}
        fresh = []
        for key in sorted(rows):  # keys changed meanwhile win; at most MAX_KEYS (a peer's values come in too)
            if key in changed_meanwhile or own.get(key) == rows[key] or (key not in own and len(own) >= MAX_KEYS):
                continue
            own[key] = rows[key]
            fresh.append(key)
        if fresh:
            for session in self.sessions.get(did, ()):
                if CAP in session.caps:
                    for key in sorted(fresh):
                        session.write(build(self.name, "METADATA", session.nick, key, "*", own[key]))
            primary = self.primary_session(did)
            if primary is not None:
                self._metadata_changed(primary, primary, fresh)  # its channels' subscribers

    def _account_metadata_unreadable(self, failure: Any, did: str) -> None:
        state = self.metadata
        state.loading.pop(did, None)
        if not state.load_failure_logged:
            state.load_failure_logged = True
            log.failure("reading the metadata of {did} failed (further failures are not logged)", failure, did=did)

    def _fetch_profile(self, did: str) -> None:
        fetcher: Optional["ProfileFetcher"] = self.profiles  # from the composition root (freeq.tap)
        if fetcher is None:
            return
        d = fetcher.fetch(did)
        d.addCallback(self._profile_fetched, did)
        d.addErrback(lambda f: log.failure("applying the profile of {did} failed", f, did=did))

    def _profile_fetched(self, profile: Optional["Profile"], did: str) -> None:
        if profile is None:
            return
        defaults = {}
        if profile.display_name and value_problem("display-name", profile.display_name) is None:
            defaults["display-name"] = profile.display_name
        if profile.avatar and value_problem("avatar", profile.avatar) is None:
            defaults["avatar"] = profile.avatar
        state = self.metadata
        old = state.defaults.get(did, {})
        state.defaults[did] = defaults
        state.defaults.move_to_end(did)
        state.trim(self.sessions)
        own = state.accounts.get(did, {})
        changed = sorted(k for k in set(defaults) | set(old) if k not in own and defaults.get(k) != old.get(k))
        if not changed:
            return
        log.debug("profile defaults of {did}: {keys}", did=did, keys=",".join(changed))
        self._account_shown_changed(did, changed, announce=True)


def changes_problem(changes: Any) -> Optional[str]:
    """Why ``changes`` (the ``keys`` of a peer's ``metadata`` event: key -> value or ``None``) is malformed, or
    ``None`` when every key and value is one this server would accept from a client."""
    if not isinstance(changes, dict) or not changes:
        return "no keys"
    if len(changes) > MAX_KEYS:
        return "too many keys"
    for key, value in changes.items():
        if not isinstance(key, str) or not valid_key(key):
            return "bad key"
        if value is not None and (not isinstance(value, str) or value_problem(key, value) is not None):
            return "bad value"
    return None


def _safe_word(text: str) -> bool:
    """Whether ``text`` can be echoed as a middle parameter (short, no space, no leading colon)."""
    return 0 < len(text) <= MAX_KEY_LEN and " " not in text and not text.startswith(":") and text.isprintable()


__all__ = ["CAP", "CAP_VALUE", "changes_problem", "MAX_KEYS", "MAX_SUBS", "MAX_VALUE_BYTES", "MetadataCommands", "MetadataState",
           "valid_key", "value_problem"]
