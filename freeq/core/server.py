"""The IRC server logic: commands, numerics and fan-out over the pure state model.

This layer owns no socket. Each :class:`~freeq.state.user.User` carries a
``write`` byte sink installed by its connection (TCP, TLS or, later,
WebSocket) and a ``conn`` providing :class:`freeq.irc.interfaces.IClientConnection`
for closing. Time comes from the injected clock, so the whole layer runs
under ``twisted.internet.task.Clock`` in unit tests.

:class:`IRCServer` is assembled from command groups, one mixin per module of this package
(registration, channels, modes, messages, queries, monitor, operator, history, identity); this
module keeps construction, the connection lifecycle (connect, handle, disconnect, close, sweep),
the multi-device session helpers and the output helpers. What the groups share is typed in
:mod:`freeq.core.shared`; the rules they apply are pure functions in :mod:`freeq.state.rules` and
:mod:`freeq.state.modes`.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from freeq.config import Config
from freeq.core.bans import BanCommands  # KLINE, DLINE, STATS (issue #13)
from freeq.core.channels import ChannelCommands
from freeq.core.history import HistoryCommands
from freeq.core.markers import ReadMarkerCommands
from freeq.core.metadata import MetadataCommands
from freeq.core.identity import IdentityCommands
from freeq.core.messages import MessageCommands
from freeq.core.modes import ModeCommands
from freeq.core.monitor import MonitorCommands
from freeq.core.multiline import MultilineCommands
from freeq.core.operator import OperatorCommands
from freeq.core.queries import QueryCommands
from freeq.core.reactions import ReactionCommands  # reactions (issue #12)
from freeq.core.redaction import RedactionCommands  # edits and deletes (issue #12)
from freeq.core.registration import RegistrationCommands
from freeq.core.rehash import RehashCommands  # REHASH and live reload (issue #13)
from freeq.core.rename import RenameCommands  # draft/channel-rename (issue #12)
from freeq.core.webirc import WebircCommands  # WEBIRC for trusted gateways (issue #13)
from freeq.core.shared import CHANNEL_MODES, USER_MODES, VERSION, server_time, truncate
from freeq.irc.confusables import NickOwners
from freeq.irc.parser import Message, UnsafeLineError, build, build_text, format_tags
from freeq.irc.ulid import ULIDGenerator
from freeq.plugins import IServerHook
from freeq.state.channel import Channel, ChannelTable
from freeq.state.masks import LogThrottle, mask_problem
from freeq.state.channel_quota import CreationQuota
from freeq.state.links import FederationControl
from freeq.state.throttle import FailureThrottle
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.store.db import Store

#: Names other modules import from here (the helpers now live in freeq.core.shared).
__all__ = ["CHANNEL_MODES", "PRE_REGISTRATION", "USER_MODES", "VERSION", "IRCServer", "server_time", "truncate"]

log = Logger()

#: Commands a client may send before registration completes.
PRE_REGISTRATION = frozenset({"CAP", "NICK", "USER", "PASS", "PING", "PONG", "QUIT", "AUTHENTICATE",
                              "METADATA",  # draft/metadata-2 before-connect
                              "WEBIRC"})  # a trusted gateway's first command (freeq.core.webirc, issue #13)


class _LabelCapture:
    """Collects what is written to one client while it runs a labelled command."""

    __slots__ = ("lines", "label", "real_write", "done")

    def __init__(self, label: str, real_write: Callable[[bytes], None]) -> None:
        self.lines: list[bytes] = []
        self.label = label
        self.real_write = real_write
        self.done = False

    def append(self, data: bytes) -> None:
        self.lines.append(data)


def _add_tag(line: bytes, tag: bytes) -> bytes:
    if line.startswith(b"@"):
        return b"@" + tag + b";" + line[1:]
    return b"@" + tag + b" " + line


class IRCServer(RegistrationCommands, ChannelCommands, ModeCommands, MessageCommands, QueryCommands,
                MonitorCommands, OperatorCommands, HistoryCommands, IdentityCommands, MultilineCommands,
                RedactionCommands, ReactionCommands, RenameCommands, RehashCommands, WebircCommands,
                ReadMarkerCommands, MetadataCommands, BanCommands):  # they act through the hook points below (issue #12)
    """All users and channels of one server, and the handlers for every command."""

    def __str__(self) -> str:
        # Autobahn writes its factory's ``server`` attribute, which for the /irc WebSocket factory is this
        # object, as the Server header of the upgrade: name the software, never a repr or a version (item 12).
        return "freeq"

    def __init__(self, config: Config, clock: Any, hooks: Sequence[IServerHook] = (),
                 store: Optional["Store"] = None, *, signer: Any = None, verifier: Any = None, metrics: Any = None,
                 web_tokens: Any = None, bearer_tokens: Any = None, profiles: Any = None,
                 federation: Optional[Callable[["IRCServer"], FederationControl]] = None) -> None:
        """Collaborators come in here, from the composition root (:func:`freeq.tap.make_irc_server`):
        ``signer`` (freeq.signing.MessageSigner), ``verifier`` (freeq.auth.verify.ChallengeVerifier),
        ``metrics`` (freeq.metrics.Metrics), and the web listener's SASL web-token and REST bearer stores
        (freeq.web.tokens), and ``profiles`` (freeq.auth.profile.ProfileFetcher: Bluesky profiles, the
        draft/metadata-2 defaults). Each may be ``None`` where a test does without it. ``federation`` builds the
        federation of this server (freeq.s2s.federation.FederationFactory), called last, with the server
        complete; without it the server stands alone."""
        self.config = config
        self.store = store
        self.web_tokens = web_tokens  # SASL method web-token (the auth broker mints them)
        self.bearer_tokens = bearer_tokens  # REST API bearer tokens (NOTICE API-BEARER after SASL)
        # folded nick -> (nick, DID), indexed by look-alike skeleton; identity fills it
        self.nick_owners: NickOwners = NickOwners()
        self.current_label: Optional[str] = None
        self.oper_dids: set[str] = set(config.oper_dids)
        self.session_keys: dict[str, list[str]] = {}  # DID -> MSGSIG public keys (base64url)
        self.sessions: dict[str, list[User]] = {}  # DID -> its registered connections (multi-device)
        self.signer: Any = signer
        self.verifier: Any = verifier
        self.metrics: Any = metrics
        self.profiles: Any = profiles
        self.clock = clock
        self.name = config.server_name
        self.hooks = list(hooks)
        # freeq.s2s.federation.Federation when federation is on (built last, below): told of local changes
        # (s2s_notify); LINKS, SQUIT, CONNECT, remote KILL and server-operator overrides call through it
        self.federation: Optional[FederationControl] = None
        self.users: dict[str, User] = {}  # folded nick -> user (registered or holding a nick)
        self.channels: ChannelTable = ChannelTable()  # counts the channels with members itself
        self.connections: set[User] = set()
        # LUSERS counts, kept exact wherever they change (a recount is O(connections) per registration):
        # registered local connections, and those of them with +i and with +o.
        self.registered_count = 0
        self.invisible_count = 0
        self.oper_count = 0
        self.whowas: deque[tuple[str, str, str, str, float]] = deque(maxlen=config.whowas_size)
        self.monitors: dict[str, set[User]] = {}
        self.ulid = ULIDGenerator(clock.seconds)
        self.started = clock.seconds()
        self.motd = list(config.motd)
        self._isupport = self._make_isupport()
        self.mask_refusal_log = LogThrottle(10.0)  # refused over-cap masks: one info line per 10 s
        self.unsafe_line_log = LogThrottle(10.0)  # replies refused by the wire guard: one warn line per 10 s
        # Failed OPER per address (IPv6 /64) across connections: exponential back-off and a log budget.
        self.oper_throttle = FailureThrottle(config.oper_backoff_base, config.oper_backoff_max)
        # New channels per address (IPv6 /64) and per account; empty founderless channels by when they emptied.
        self.channel_quota = CreationQuota(config.channel_create_burst, config.channel_create_interval)
        self.empty_since: dict[str, float] = {}
        self.handlers: dict[str, Callable[[User, Message], None]] = {
            attr[4:]: getattr(self, attr) for attr in dir(self) if attr.startswith("irc_")
        }
        if federation is not None:
            self.federation = federation(self)

    # ------------------------------------------------------------------
    # Output helpers
    # ------------------------------------------------------------------
    def num(self, user: User, code: str, *params: str) -> None:
        """Send numeric ``code`` to ``user``; the last parameter is free text."""
        user.write(build_text(self.name, code, user.nick, *params))

    def num_raw(self, user: User, code: str, *params: str) -> None:
        """Send numeric ``code`` whose last parameter is a word (colon only when needed)."""
        user.write(build(self.name, code, user.nick, *params))

    def fail(self, user: User, command: str, code: str, *context_and_text: str) -> None:
        """Send an IRCv3 standard reply ``FAIL``."""
        user.write(build_text(self.name, "FAIL", command, code, *context_and_text))

    def notice(self, user: User, text: str) -> None:
        """A server NOTICE to ``user``."""
        user.write(build_text(self.name, "NOTICE", user.nick, text))

    def co_members(self, user: User) -> set[User]:
        """Everyone sharing a channel with ``user``, excluding ``user``."""
        out: set[User] = set()
        for chan in user.channels.values():
            out.update(chan.members)
        out.discard(user)
        return out

    def broadcast(self, users: Iterable[User], data: bytes, cap: Optional[str] = None,
                  fallback: Optional[bytes] = None) -> None:
        """Write ``data`` to each user (to those with ``cap`` if given; others get ``fallback``)."""
        for u in users:
            if cap is None or cap in u.caps:
                u.write(data)
            elif fallback is not None:
                u.write(fallback)

    # ------------------------------------------------------------------
    # Connection lifecycle (called by the protocol layer)
    # ------------------------------------------------------------------
    def check_connect(self, ip: str) -> Optional[str]:
        """Ask plugins whether a connection from ``ip`` may proceed; a reason refuses it."""
        for hook in self.hooks:
            try:
                reason = hook.on_connect(ip)
            except Exception:
                log.failure("plugin on_connect failed")
                continue
            if reason:
                return reason
        return None

    def connect(self, conn: Any, write: Callable[[bytes], None], ip: str) -> User:
        """A new connection: create its (unregistered) user."""
        user = User(conn, write, ip, self.clock.seconds(), self.name)
        self.connections.add(user)
        return user

    def handle(self, user: User, msg: Message) -> None:
        """Dispatch one parsed line from ``user``; errors become numerics, never tracebacks."""
        now = self.clock.seconds()
        user.last_active = now
        if user.conn is not None:
            user.conn.ping_sent = False
        cmd = msg.command
        handler = self.handlers.get(cmd)
        if not user.registered and cmd not in PRE_REGISTRATION:
            if handler is not None:
                user.write(build_text(self.name, "451", user.nick, "You have not registered"))
            return
        label = msg.tags.get("label") if msg.tags and "labeled-response" in user.caps else None
        if handler is None:
            if cmd.isdigit():
                return
            unknown = build_text(self.name, "421", user.nick, cmd, "Unknown command")
            if label is None:
                user.write(unknown)
            else:
                self._flush_label(user, label, [unknown])  # labeled-response: every reply carries the label
            return
        try:
            if label is None:
                handler(user, msg)
                return
            real_write = user.write
            capture = _LabelCapture(label, real_write)
            user.write = capture.append
            self.current_label = label
            result: Any = None
            try:
                result = handler(user, msg)
            finally:
                self.current_label = None
                if user.write == capture.append:
                    user.write = real_write
                # A handler that answers later (a Deferred, e.g. CHATHISTORY) labels its own reply;
                # close() flushes (done) when the command ends the connection.
                if not capture.done and (capture.lines or not isinstance(result, Deferred)):
                    self._flush_label(user, label, capture.lines)
        except UnsafeLineError:
            # A reply would have carried CR/LF/NUL from some stored or remote string (issue #10 item 9): it
            # was not built, so the answer stops there. The asker did nothing wrong; its connection stays.
            self.metric("unsafe_lines")
            held = self.unsafe_line_log.admit(now)
            if held is not None:
                log.warn("refused to send an unsafe line answering {command} from {nick} ({ip}); {held} more "
                         "since the last such line", command=cmd, nick=user.nick, ip=user.ip, held=held)

    def write_unlabelled(self, user: User, data: bytes) -> None:
        """Write ``data`` to ``user`` outside the reply to the labelled command it is running, if any: a message
        it sent to itself is delivered as a side effect, not a response (labeled-response)."""
        capture = getattr(user.write, "__self__", None)
        if isinstance(capture, _LabelCapture) and not capture.done:
            capture.real_write(data)
        else:
            user.write(data)

    def _flush_label(self, user: User, label: str, lines: list[bytes]) -> None:
        tag = ("label=" + format_tags({"x": label})[2:]).encode()
        if not lines:
            user.write(b"@" + tag + b" :" + self.name.encode() + b" ACK\r\n")
        elif len(lines) == 1:
            user.write(_add_tag(lines[0], tag))
        elif "batch" in user.caps:
            ref = self.ulid.new()[-10:]
            user.write(b"@" + tag + b" :" + self.name.encode() + b" BATCH +" + ref.encode() + b" labeled-response\r\n")
            btag = b"batch=" + ref.encode()
            for line in lines:
                user.write(_add_tag(line, btag))
            user.write(build(self.name, "BATCH", "-" + ref))
        else:
            for line in lines:
                user.write(line)

    def disconnect(self, user: User, reason: str) -> None:
        """The connection is gone (or going): remove the user and tell everyone who should know."""
        if user not in self.connections:
            return
        self.connections.discard(user)
        self.note_departure(user, reason)  # the quit line and counter (freeq.core.registration)
        self.multiline_forget(user)  # its open draft/multiline batches
        if user.registered:
            self._count_registered(user, -1)
        if user.registered and self._detach_session(user):
            return
        if user.registered:
            data = build_text(user.hostmask, "QUIT", reason)
            self.broadcast(self.co_members(user), data)
            self.whowas.append((user.nick, user.username, user.host, user.realname, self.clock.seconds()))
            self.monitor_notify(user.folded, None)
            self.s2s_notify("quit", user, reason)
        for chan in list(user.channels.values()):
            self.part_channel(chan, user)
        if self.users.get(user.folded) is user:
            del self.users[user.folded]
        self._unmonitor(user, user.monitored_nicks())
        user.registered = False

    # ------------------------------------------------------------------
    # Multi-device: several connections of one DID share a nick and channels
    # ------------------------------------------------------------------
    def primary_session(self, account: str) -> Optional[User]:
        """The connection of ``account`` that holds its nick, if one is registered."""
        for s in self.sessions.get(account, ()):
            if self.users.get(s.folded) is s:
                return s
        return None

    def group(self, user: User) -> list[User]:
        """Every registered connection sharing ``user``'s identity (just ``[user]`` for guests)."""
        if user.account:
            sessions = self.sessions.get(user.account)
            if sessions and user in sessions:
                return sessions
        return [user]

    def is_primary(self, user: User) -> bool:
        """Whether ``user`` is the connection that represents its nick (NAMES and WHO list only those)."""
        return self.users.get(user.folded) is user

    def _attach_session(self, user: User, primary: User) -> None:
        """A new device joins its identity's channels silently; only it sees the JOIN replay."""
        for chan in list(primary.channels.values()):
            chan.add(user, chan.members[primary])
            user.write(build_text(user.hostmask, "JOIN", chan.name, user.account or "*", user.realname)
                       if "extended-join" in user.caps else build(user.hostmask, "JOIN", chan.name))
            if chan.topic:
                self.num(user, "332", chan.name, chan.topic)
                user.write(build(self.name, "333", user.nick, chan.name, chan.topic_setter, str(chan.topic_time)))
            self._send_names(user, chan)
        if primary.away is not None and user.away is None:
            user.away = primary.away
        log.info("{nick} attached another device ({n} connections)", nick=user.nick,
                 n=len(self.sessions.get(user.account or "", ())))

    def _detach_session(self, user: User) -> bool:
        """Remove one device of a multi-device identity without a QUIT; False if it was the last one."""
        sessions = self.sessions.get(user.account or "")
        if not sessions or user not in sessions:
            return False
        sessions.remove(user)
        if not sessions:
            del self.sessions[user.account]  # type: ignore[arg-type]
            return False
        for chan in list(user.channels.values()):
            chan.remove(user)
        if self.users.get(user.folded) is user:
            self.users[user.folded] = sessions[0]
        self._unmonitor(user, user.monitored_nicks())
        user.registered = False
        return True

    def close(self, user: User, reason: str, quit_reason: Optional[str] = None) -> None:
        """Send ``ERROR`` and close the connection; co-members see ``quit_reason`` (or ``reason``)."""
        if user not in self.connections:
            return
        capture = getattr(user.write, "__self__", None)
        if isinstance(capture, _LabelCapture) and not capture.done:
            # Closing in the middle of a labelled command: its replies go out before the ERROR.
            capture.done = True
            user.write = capture.real_write
            self._flush_label(user, capture.label, capture.lines)
        user.write(build_text(None, "ERROR", f"Closing Link: {user.host} ({reason})"))
        self.disconnect(user, quit_reason or reason)
        if user.conn is not None:
            user.conn.close()

    def sweep(self) -> None:
        """Periodic housekeeping: registration timeouts, keepalive PINGs and ping timeouts."""
        now = self.clock.seconds()
        cfg = self.config
        for user in list(self.connections):
            try:
                if not user.registered:
                    if now - user.signon >= cfg.registration_timeout:
                        self.close(user, "Registration timed out")
                    continue
                idle = now - user.last_active
                if idle >= cfg.ping_timeout:
                    secs = int(idle)
                    self.close(user, f"Ping timeout: {secs} seconds")
                elif idle >= cfg.ping_interval and user.conn is not None and not user.conn.ping_sent:
                    user.conn.ping_sent = True
                    user.write(build(None, "PING", self.name))
            except Exception:
                log.failure("sweep failed for {nick}", nick=user.nick)
        try:
            self.expire_channels(now)
            self.channel_quota.prune(now)
            self.expire_multiline(now)
            self.expire_bans(now)  # K-/D-lines run out (freeq.core.bans)
        except Exception:
            log.failure("channel expiry sweep failed")

    def expire_channels(self, now: float) -> None:
        """Forget empty channels without a founder DID once ``--channel-expiry`` has passed since they emptied.

        A channel is *registered* when it has a founder DID: those stay while empty, with their topic, modes
        and lists (docs/persistence.md). Anyone else's channel keeps its state for the expiry only, so
        topics set by guests cannot pile up forever. History stays (it has its own retention).
        """
        expiry = self.config.channel_expiry
        if not expiry:
            self.empty_since.clear()
            return
        for folded, since in list(self.empty_since.items()):
            chan = self.channels.get(folded)
            if chan is None or chan.members or chan.founder is not None:
                del self.empty_since[folded]
            elif now - since >= expiry:
                del self.empty_since[folded]
                self.forget_channel(chan)
                self.metric("channels_expired")
                log.info("Channel {channel} expired: empty for {seconds} seconds and no founder",
                         channel=chan.name, seconds=int(now - since))

    def shutdown(self, reason: str = "Server shutting down") -> None:
        """Tell every client the server is stopping and close them."""
        for user in list(self.connections):
            self.close(user, reason)

    def metric(self, name: str) -> None:
        """Count one event in the server's metrics (if metrics are wired)."""
        m = self.metrics
        if m is not None:
            setattr(m, name, getattr(m, name, 0) + 1)

    # ------------------------------------------------------------------
    # Hook points: the command groups call these at fixed moments of their work, and each one names the
    # features that act then (no group overrides another's method, so the order of the bases decides nothing)
    # ------------------------------------------------------------------
    def on_account_changed(self, user: User, account: Optional[str]) -> None:
        """``user`` logged in to ``account`` (or out, ``None``); called by ``set_account`` once it is done."""
        self.metadata_on_account(user, account)
        self.markers_on_account(user, account)

    def on_caps_changed(self, user: User) -> None:
        """``user``'s capabilities changed (``CAP REQ`` acknowledged)."""
        self.metadata_on_caps_changed(user)

    def before_motd(self, user: User) -> None:
        """``user`` is registering: called just before its MOTD is sent."""
        self.metadata_before_motd(user)

    def after_register(self, user: User) -> None:
        """``user`` registered (and was announced to the federation)."""
        self.metadata_after_register(user)

    def before_names(self, user: User, chan: Channel) -> None:
        """The NAMES of ``chan`` is about to be sent to ``user`` (on JOIN, on NAMES, to a new device)."""
        self.markers_before_names(user, chan)

    def after_join(self, user: User, chan: Channel) -> None:
        """``user`` (and its other devices) joined ``chan`` here, the JOIN and NAMES sent."""
        self.metadata_after_join(user, chan)

    def after_channels_loaded(self) -> None:
        """The persisted channels were restored at start-up."""
        self.metadata_after_channels_loaded()

    def on_channel_renamed(self, chan: Channel, old_folded: str) -> None:
        """``chan`` was renamed; it was ``old_folded`` (folded)."""
        self.metadata_on_channel_renamed(chan, old_folded)

    def on_channel_gone(self, chan: Channel) -> None:
        """``chan`` was forgotten (``forget_channel``): empty and stateless, expired, or refused in a burst."""
        self.metadata_on_channel_gone(chan)

    def whois_extra(self, asker: User, target: User) -> None:
        """The WHOIS of ``target`` for ``asker``: called before its end (``318``)."""
        self.metadata_whois(asker, target)

    def s2s_notify(self, event: str, *args: Any) -> None:
        """Tell the federation (its observer ``local_<event>``) about a local state change."""
        federation = self.federation
        if federation is not None:
            try:
                federation.notify(event, *args)
            except Exception:
                log.failure("S2S observer failed on {event}", event=event)

    def _mask_refused(self, user: User, where: str, mask: str) -> bool:
        """Whether a mask from ``user`` is over the caps (length, wildcards); if so it is counted in
        ``masks_refused`` and logged, at info at most once per 10 s and at debug otherwise."""
        problem = mask_problem(mask)
        if problem is None:
            return False
        self.metric("masks_refused")
        held = self.mask_refusal_log.admit(self.clock.seconds())
        emit = log.info if held is not None else log.debug
        emit("refused {where} mask from {nick} ({ip}): {reason} ({held} more refused since the last such line)",
             where=where, nick=user.nick, ip=user.ip, reason=problem, held=held or 0)
        return True
