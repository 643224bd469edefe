"""The read-only REST API under ``/api/v1`` (wire shapes of the reference server, without its holes).

Routes: ``health``, ``signing-key``, ``signing-keys/{did}``, ``verify/{msgid}``, ``channels``,
``channels/{name}``, ``channels/{name}/history`` and ``users/{nick}``. ``{name}`` is a channel name
with or without its ``#``.

Authorization: anything about a public channel (not ``+s``/``+p``/``+i``/``+k``) is public. Anything
else needs ``Authorization: Bearer <token>``, a random 256-bit token scoped to one DID and expiring
(:class:`freeq.web.tokens.BearerTokenStore`; never a session id), whose DID is a member, the founder
or a DID operator of that channel; a private conversation only to its two parties. A secret or
private channel the caller may not see is answered ``404`` as if it did not exist; an invite-only or
keyed one ``401`` without a token and ``403`` with someone else's. A token that is unknown or expired
is always ``401``. Channels that exist only in the history (nobody in them, no state) are not served.
"""
from __future__ import annotations

import heapq
import re
from typing import TYPE_CHECKING, Any, Callable, Optional
from urllib.parse import quote

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from freeq import __version__
from freeq.core.history import format_ms
from freeq.irc.names import fold, is_channel
from freeq.signing import SIG_TAG, canonical, unb64url, verify as verify_signature
from freeq.state.redaction import EDITED_TAG
from freeq.store.chunks import StoredMessage
from freeq.web.http import bearer_token, error_response, json_response, report_failure

if TYPE_CHECKING:
    from freeq.core.server import IRCServer
    from freeq.state.channel import Channel
    from freeq.web.tokens import BearerTokenStore

log = Logger()

HISTORY_DEFAULT = 50
HISTORY_MAX = 200
LIST_DEFAULT = 100  # channels per page of /api/v1/channels
LIST_MAX = 500
CANONICAL_FORM = "{sender_did}\\0{target}\\0{text}\\0{timestamp}"
_MSGID = re.compile(r"[A-Za-z0-9_\-]{1,64}\Z")
_PRIVATE_MODES = frozenset("spi")


def is_public(chan: "Channel") -> bool:
    """Whether anyone may read about ``chan`` over REST: not secret, private, invite-only or keyed."""
    return not (chan.modes & _PRIVATE_MODES) and chan.key is None


def did_may_see(chan: "Channel", did: Optional[str]) -> bool:
    """Whether the identity ``did`` belongs in ``chan``: a member now, the founder or a DID operator."""
    if not did:
        return False
    if did == chan.founder or did in chan.did_ops:
        return True
    return any(member.account == did for member in chan.members)


class _Denied(Exception):
    """A request is refused; carries the status, the message and any extra headers."""

    def __init__(self, code: int, message: str, headers: Optional[dict[bytes, bytes]] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers


_CHALLENGE = {b"WWW-Authenticate": b'Bearer realm="freeq"'}


class APIv1(Resource):
    """``/api/v1/...``: one leaf that routes on the path segments."""

    isLeaf = True

    def __init__(self, server: "IRCServer", bearer_tokens: "BearerTokenStore", signer: Any,
                 signing_keys: list[tuple[str, int, Optional[int]]], clock: Any,
                 allowed_origins: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.irc = server  # not "server": twisted.web.Resource.putChild overwrites that attribute
        self.bearer_tokens = bearer_tokens
        self.signer = signer
        self.signing_keys = signing_keys
        self.clock = clock
        self.allowed_origins = frozenset(o.strip().rstrip("/").lower() for o in allowed_origins)
        self.routes: dict[tuple[str, int], Callable[..., Any]] = {
            ("health", 1): self.health,
            ("signing-key", 1): self.signing_key,
            ("signing-keys", 2): self.client_signing_keys,
            ("verify", 2): self.verify,
            ("channels", 1): self.channels,
            ("channels", 2): self.channel,
            ("channels", 3): self.channel_sub,
            ("users", 2): self.user,
        }

    # -- dispatch --------------------------------------------------------------
    def render_GET(self, request: Any) -> Any:
        self._cors(request)
        try:
            parts = [p.decode("utf-8") for p in request.postpath]
        except UnicodeDecodeError:
            return error_response(request, 400, "Path is not UTF-8")
        while parts and parts[-1] == "":
            parts.pop()
        handler = self.routes.get((parts[0], len(parts))) if parts else None
        if handler is None:
            return error_response(request, 404, "No such route")
        try:
            did = self._caller(request)
            return handler(request, did, *parts[1:])
        except _Denied as e:
            return error_response(request, e.code, e.message, e.headers)

    def render_OPTIONS(self, request: Any) -> bytes:
        self._cors(request)
        request.setHeader(b"Access-Control-Allow-Methods", b"GET, OPTIONS")
        request.setHeader(b"Access-Control-Allow-Headers", b"Authorization")
        request.setHeader(b"Access-Control-Max-Age", b"600")
        request.setResponseCode(204)
        return b""

    def _cors(self, request: Any) -> None:
        # Cross-origin reads only for the operator's listed web-client origins (none by default).
        origin = request.getHeader(b"origin")
        if origin and origin.decode("latin-1").rstrip("/").lower() in self.allowed_origins:
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            request.setHeader(b"Vary", b"Origin")
            request.setHeader(b"Access-Control-Expose-Headers", b"Link")  # the next page of a list

    def _caller(self, request: Any) -> Optional[str]:
        """The DID of the bearer token, ``None`` without one; ``401`` for a bad one."""
        token = bearer_token(request)
        if token is None:
            return None
        did = self.bearer_tokens.lookup(token) if token else None
        if did is None:
            raise _Denied(401, "Invalid or expired bearer token", _CHALLENGE)
        return did

    def _channel(self, name: str, did: Optional[str]) -> "Channel":
        """The channel ``name`` (``#`` optional) if ``did`` (or anyone, if public) may read it."""
        if not is_channel(name):
            name = "#" + name
        chan = self.irc.channels.get(fold(name))
        if chan is None or not chan.members and not chan.has_state():
            raise _Denied(404, "No such channel")
        if is_public(chan) or did_may_see(chan, did):
            return chan
        if chan.modes & {"s", "p"}:
            raise _Denied(404, "No such channel")
        if did is None:
            raise _Denied(401, "This channel needs a bearer token of a member", _CHALLENGE)
        raise _Denied(403, "Not a member of this channel")

    # -- routes ----------------------------------------------------------------
    def health(self, request: Any, did: Optional[str]) -> bytes:
        server = self.irc
        return json_response(request, 200, {
            "server_name": server.name,
            "version": __version__,
            "git_commit": None,
            "connections": len(server.connections),
            "channels": sum(1 for c in server.channels.values() if c.members),
            "uptime_secs": int(self.clock.seconds() - server.started),
        })

    def signing_key(self, request: Any, did: Optional[str]) -> bytes:
        if self.signer is None:
            return error_response(request, 503, "Message signing is not configured")
        current = self.signer.public_key_b64
        return json_response(request, 200, {
            "algorithm": "ed25519",
            "public_key": current,
            "encoding": "base64url",
            "usage": "message-signing",
            "canonical_form": CANONICAL_FORM,
            "tag": SIG_TAG,
            "previous_keys": [
                {"public_key": key, "valid_from": start, "valid_until": until}
                for key, start, until in self.signing_keys if key != current
            ],
        })

    def client_signing_keys(self, request: Any, did: Optional[str], subject: str) -> bytes:
        keys = list(getattr(self.irc, "session_keys", {}).get(subject, ()))
        if not keys:
            return error_response(request, 404, "No session signing keys registered for this DID")
        return json_response(request, 200, {
            "did": subject, "algorithm": "ed25519", "encoding": "base64url", "keys": keys, "public_key": keys[-1],
        })

    def channels(self, request: Any, did: Optional[str]) -> bytes:
        """One page of the visible channels, most members first (ties by name).

        ``limit`` (default 100, at most 500) and ``after`` (the opaque cursor of the previous page's
        ``Link: <...>; rel="next"`` header) page through the list; the next page's address comes in
        that header while more channels remain.
        """
        limit, after = _page_args(request)
        keyed: list[tuple[tuple[int, str], "Channel"]] = []
        for chan in self.irc.channels.values():
            if not (chan.members or chan.topic):
                continue
            key = (-len(chan.members), chan.folded)
            if after is not None and key <= after:
                continue
            if is_public(chan) or did_may_see(chan, did):
                keyed.append((key, chan))
        page = heapq.nsmallest(limit + 1, keyed, key=lambda kc: kc[0])
        if len(page) > limit:
            del page[limit:]
            last = page[-1][0]
            cursor = quote(f"{-last[0]}:{last[1]}", safe="")
            request.setHeader(b"Link", f'</api/v1/channels?limit={limit}&after={cursor}>; rel="next"'.encode())
        out = [{"name": chan.name, "members": len(chan.members), "topic": chan.topic} for _, chan in page]
        return json_response(request, 200, out)

    def channel(self, request: Any, did: Optional[str], name: str) -> bytes:
        chan = self._channel(name, did)
        modes, _ = chan.mode_string(show_key=False)
        return json_response(request, 200, {
            "name": chan.name,
            "members": len(chan.members),
            "topic": chan.topic,
            "topic_set_by": chan.topic_setter.split("!", 1)[0] if chan.topic else None,
            "topic_set_at": chan.topic_time or None,
            "modes": modes,
            "created": chan.created,
            "metadata": self.irc.channel_metadata(chan),  # draft/metadata-2: public, as METADATA LIST shows it
        })

    def channel_sub(self, request: Any, did: Optional[str], name: str, sub: str) -> Any:
        if sub != "history":
            raise _Denied(404, "No such route")
        chan = self._channel(name, did)
        store = self.irc.store
        if store is None:
            return json_response(request, 200, [])
        args = request.args
        try:
            limit = int(args.get(b"limit", [str(HISTORY_DEFAULT).encode()])[0])
            before = args.get(b"before", [None])[0]
            before_ms = int(float(before) * 1000) if before is not None else None
        except (ValueError, OverflowError):
            raise _Denied(400, "limit must be a whole number and before a Unix time in seconds")
        if limit < 1:
            raise _Denied(400, "limit must be at least 1")
        limit = min(limit, HISTORY_MAX)
        if before_ms is None:
            d = store.annotated_history(chan.folded, "LATEST", (None,), limit)
        else:
            d = store.annotated_history(chan.folded, "BEFORE", (before_ms,), limit)
        d.addCallback(lambda rows: [_message_json(m) for m in rows])
        return _finish_later(request, d)

    def user(self, request: Any, did: Optional[str], nick: str) -> bytes:
        folded = fold(nick)
        online = self.irc.users.get(folded)
        if online is not None and not online.registered:
            online = None
        owner = self.irc.nick_owners.get(folded)
        if online is None and owner is None:
            return error_response(request, 404, "No such nick")
        if online is not None:
            return json_response(request, 200, {
                "nick": online.nick, "online": True, "did": online.account or (owner[1] if owner else None),
                "handle": getattr(online, "handle", None),
                "metadata": self.irc.user_metadata(online),  # draft/metadata-2 (profile defaults included)
            })
        assert owner is not None
        return json_response(request, 200, {"nick": owner[0], "online": False, "did": owner[1], "handle": None})

    def verify(self, request: Any, did: Optional[str], msgid: str) -> Any:
        store = self.irc.store
        if not _MSGID.match(msgid) or store is None or not hasattr(store, "message"):
            raise _Denied(404, "No such message")
        d = store.message(msgid)
        d.addCallback(self._or_edit, store, msgid)
        d.addCallback(self._verified, did)
        return _finish_later(request, d)

    def _or_edit(self, found: Any, store: Any, msgid: str) -> Any:
        """A msgid not among the messages may be an edit's (freeq.store.redaction): verify the edit's text at
        its own time, as it was signed."""
        if found is not None or not hasattr(store, "edit_of"):
            return found

        def as_message(edit: Any) -> Any:
            if edit is None:
                return None
            target, _original, ms, body = edit
            tags = body.get("tags") if isinstance(body.get("tags"), dict) else {}
            return target, StoredMessage(msgid, ms, "PRIVMSG", str(body.get("sender", "*")), body.get("account"),
                                         str(body.get("shown", "")), str(body.get("text", "")), tags)

        return store.edit_of(msgid).addCallback(as_message)

    def _verified(self, found: Any, did: Optional[str]) -> Any:
        if found is None:
            raise _Denied(404, "No such message")
        target, m = found
        if target.startswith("dm:"):
            if not did or did not in target[3:].split(" "):
                raise _Denied(404, "No such message")  # a private conversation: only its parties
            channel = None
            candidates = [m.shown_to]
        else:
            chan = self._channel(target, did)
            channel = chan.name
            candidates = [chan.folded, chan.name, m.shown_to]
        second = m.time_ms // 1000
        sig = m.tags.get(SIG_TAG)
        sender_did = m.account
        canon = canonical(sender_did or "", candidates[0], m.text, second)
        verification = None
        if sig and sender_did:
            verification, used = self._check(sig, sender_did, candidates, m.text, second)
            if used is not None:
                canon = canonical(sender_did, used, m.text, second)
        return {
            "msgid": m.msgid,
            "channel": channel,
            "target": m.shown_to,
            "from": m.sender.split("!", 1)[0],
            "text": m.text,
            "timestamp": second,
            "time": format_ms(m.time_ms),
            "sender_did": sender_did,
            "signature": sig,
            "canonical_form": CANONICAL_FORM,
            "canonical_hex": canon.hex(),
            "verification": verification,
            "how_to_verify": (
                "Ed25519-verify the base64url signature over the bytes of canonical_hex with the server key from "
                "/api/v1/signing-key (or a previous_keys entry) or the sender's session key from "
                "/api/v1/signing-keys/{sender_did}."),
        }

    def _check(self, sig: str, sender_did: str, targets: list[str], text: str,
               second: int) -> tuple[dict[str, Any], Optional[str]]:
        """Try every server key (current and previous) and the sender's session keys; (result, target used)."""
        server_keys = [k for k, _s, _u in self.signing_keys]
        if self.signer is not None and self.signer.public_key_b64 not in server_keys:
            server_keys.append(self.signer.public_key_b64)
        client_keys = list(getattr(self.irc, "session_keys", {}).get(sender_did, ()))
        for kind, keys in (("server-key", server_keys), ("client-session-key", client_keys)):
            for key in keys:
                try:
                    raw = unb64url(key)
                except ValueError:
                    continue
                for target in dict.fromkeys(targets):
                    if verify_signature(raw, sig, sender_did, target, text, second):
                        return {
                            "valid": True, "verified_by": kind,
                            "server_public_key": key if kind == "server-key" else None,
                            "client_public_key": key if kind == "client-session-key" else None,
                        }, target
        return {"valid": False, "verified_by": "none",
                "server_public_key": self.signer.public_key_b64 if self.signer is not None else None,
                "client_public_key": client_keys[-1] if client_keys else None}, None


def _page_args(request: Any) -> tuple[int, Optional[tuple[int, str]]]:
    """``limit`` and the ``after`` cursor (``<members>:<folded name>``) of a channel list request; 400 if bad."""
    args = request.args
    raw_limit = args.get(b"limit", [None])[0]
    limit = LIST_DEFAULT
    if raw_limit is not None:
        if not raw_limit.isdigit() or len(raw_limit) > 9 or int(raw_limit) < 1:
            raise _Denied(400, f"limit must be a whole number from 1 to {LIST_MAX}")
        limit = min(int(raw_limit), LIST_MAX)
    raw_after = args.get(b"after", [None])[0]
    if raw_after is None:
        return limit, None
    try:
        members, _, name = raw_after.decode("utf-8").partition(":")
    except UnicodeDecodeError:
        members, name = "", ""
    if not (members.isascii() and members.isdigit() and len(members) <= 9 and is_channel(name)):
        raise _Denied(400, "after must be the cursor from the previous page's Link header")
    return limit, (-int(members), fold(name))


def _message_json(m: Any) -> dict[str, Any]:
    return {
        "id": m.msgid, "msgid": m.msgid, "sender": m.sender.split("!", 1)[0], "hostmask": m.sender,
        "account": m.account, "command": m.command, "text": m.text, "timestamp": m.time_ms // 1000,
        "time": format_ms(m.time_ms), "tags": m.tags,
        # the msgid of its latest edit (the text is that edit's), or None; deleted messages are left out
        "edited": m.tags.get(EDITED_TAG),
    }


def _finish_later(request: Any, d: Any) -> Any:
    """Answer when ``d`` fires (JSON), mapping refusals and failures; nothing if the client left."""
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _f: gone.append(True))

    def done(body: Any) -> None:
        if gone:
            return
        request.write(json_response(request, 200, body))
        request.finish()

    def failed(failure: Any) -> None:
        if gone:
            return
        if failure.check(_Denied):
            e = failure.value
            request.write(error_response(request, e.code, e.message, e.headers))
        else:
            report_failure(request, failure)  # one rate-limited line, no traceback (issue #10 item 12)
            request.write(error_response(request, 500, "Internal error"))
        request.finish()

    d.addCallbacks(done, failed)
    d.addErrback(lambda f: log.failure("REST reply failed", f))
    return NOT_DONE_YET
