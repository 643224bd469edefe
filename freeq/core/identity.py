"""Identity in the command layer: SASL ATPROTO-CHALLENGE and PLAIN, nick ownership, MSGSIG, signatures.

Mixed into :class:`freeq.core.server.IRCServer`. Verification itself (DID resolution, keys,
PDS calls) is :class:`freeq.auth.verify.ChallengeVerifier`, injected as ``server.verifier``;
SASL PLAIN (handle + app password, checked at the user's PDS) is
:class:`freeq.auth.plain.PlainVerifier`, set as ``server.plain_verifier`` (``None``: PLAIN is off).
Both end in the same binding (:meth:`IdentityCommands._sasl_succeeded`).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

from twisted.logger import Logger

from freeq.auth.plain import BadPlain, parse_plain, plain_allowed
from freeq.auth.sasl import (
    MAX_DPOP_RETRIES, MAX_FAILURES, MECHANISM, PLAIN, BadResponse, SaslExchange, b64url, b64url_decode, cloak_for,
    decode_response,
)
from freeq.auth.did import valid_handle
from freeq.irc.names import fold
from freeq.irc.parser import Message, build, build_text
from freeq.logs import security_event
from freeq.signing import verify as verify_signature
from freeq.state.rules import is_did_op

if TYPE_CHECKING:
    from freeq.auth.plain import PlainResult, PlainVerifier
    from freeq.auth.verify import VerifyResult
    from freeq.core.server import IRCServer
    from freeq.state.channel import Channel
    from freeq.state.user import User

log = Logger()


class IdentityCommands:
    """AUTHENTICATE, MSGSIG and the effects of an identity on nicks, channels and messages."""

    plain_verifier: Optional["PlainVerifier"] = None  # SASL PLAIN backend; None: PLAIN is not offered

    def sasl_mechanisms(self) -> str:
        """The mechanisms offered, comma-separated (``CAP LS`` ``sasl=`` value and 908)."""
        return f"{MECHANISM},{PLAIN}" if self.plain_verifier is not None else MECHANISM

    # ------------------------------------------------------------------
    # SASL
    # ------------------------------------------------------------------
    def irc_AUTHENTICATE(self: "IRCServer", user: "User", msg: Message) -> None:  # type: ignore[misc]
        if not msg.params or not msg.params[0]:
            self.num(user, "461", "AUTHENTICATE", "Not enough parameters")
            return
        arg = msg.params[0]
        sasl = user.sasl
        if sasl is None:
            sasl = user.sasl = SaslExchange()
        if sasl.failures >= MAX_FAILURES:
            return
        if arg == "*":
            if sasl.in_progress:
                sasl.abort()
                self.num(user, "906", "SASL authentication aborted")
                self._try_register(user)
            return
        if not sasl.in_progress:
            if arg == "+":
                return  # a stray terminator (the JS SDK sends one): never answer it with 904
            if user.account is not None:
                self.num(user, "907", "You have already authenticated using SASL")
                return
            if arg.upper() == PLAIN and self.plain_verifier is not None:
                self._start_plain(user, sasl)
                return
            if arg.upper() != MECHANISM:
                user.write(build_text(self.name, "908", user.nick, self.sasl_mechanisms(),
                                      "are available SASL mechanisms"))
                self.num(user, "904", "SASL authentication failed")
                return
            self._send_challenge(user, sasl, reset=True)
            return
        if sasl.verifying:
            return  # one answer at a time; the result is on its way
        if arg.upper() == MECHANISM and not sasl.buffer:
            # A new request replaces the outstanding challenge (never base64url of a JSON response).
            self._send_challenge(user, sasl, reset=True)
            return
        if arg.upper() == PLAIN and not sasl.buffer and self.plain_verifier is not None:
            self._start_plain(user, sasl)  # "PLAIN" is never a whole base64 response (length 5)
            return
        payload = sasl.feed(arg)
        if payload is None:
            return
        if sasl.mechanism == PLAIN:
            self._plain_response(user, sasl, payload)
            return
        try:
            if isinstance(payload, BadResponse):
                raise payload
            response = decode_response(payload)
        except BadResponse as e:
            self._sasl_failed(user, sasl, "SASL authentication failed (bad response)", str(e))
            return
        challenge = sasl.take_challenge()
        now = self.clock.seconds()
        if response["method"] == "web-token":
            tokens = self.web_tokens
            found = tokens.consume(response["signature"]) if tokens is not None else None
            if challenge is None or challenge.expired(now, self.config.challenge_timeout):
                self._sasl_failed(user, sasl, "SASL authentication failed (challenge expired)", "expired")
            elif found is None:
                self._sasl_failed(user, sasl, "SASL authentication failed", "invalid or expired web token")
            else:
                self._sasl_succeeded(user, sasl, found[0], found[1])
            return
        if challenge is None or challenge.expired(now, self.config.challenge_timeout):
            self._sasl_failed(user, sasl, "SASL authentication failed (challenge expired)", "expired")
            return
        verifier = getattr(self, "verifier", None)
        if verifier is None:
            self._sasl_failed(user, sasl, "SASL authentication failed", "no verifier configured")
            return
        sasl.verifying = True
        generation = sasl.generation
        d = verifier.verify(challenge.data, challenge.nonce, response)
        d.addCallback(self._sasl_result, user, sasl, generation)
        d.addErrback(self._sasl_error, user, sasl, generation)

    def _start_plain(self: "IRCServer", user: "User", sasl: SaslExchange) -> None:  # type: ignore[misc]
        """``AUTHENTICATE PLAIN``: refuse before any password is sent unless the link is TLS or loopback."""
        if not plain_allowed(bool(getattr(user.conn, "secure", False)), user.ip, self.config.sasl_plain_insecure):
            self._sasl_failed(user, sasl, "SASL authentication failed (PLAIN sends a password: use a TLS connection)",
                              "PLAIN refused over plaintext")
            return
        sasl.start_plain()
        user.write(build(None, "AUTHENTICATE", "+"))

    def _plain_response(self: "IRCServer", user: "User", sasl: SaslExchange,  # type: ignore[misc]
                        payload: "str | BadResponse") -> None:
        """A complete PLAIN response: parse it and have the user's PDS check the password."""
        verifier = self.plain_verifier
        try:
            if isinstance(payload, BadResponse):
                raise BadPlain(str(payload))
            credentials = parse_plain(payload)
        except BadPlain as e:
            self._sasl_failed(user, sasl, f"SASL authentication failed ({e})", f"bad PLAIN response: {e}")
            return
        if verifier is None:
            self._sasl_failed(user, sasl, "SASL authentication failed", "PLAIN is off")
            return
        sasl.verifying = True
        generation = sasl.generation
        d = verifier.verify(credentials, user.ip)
        d.addCallback(self._plain_result, user, sasl, generation)
        d.addErrback(self._sasl_error, user, sasl, generation)

    def _plain_result(self: "IRCServer", result: "PlainResult", user: "User", sasl: SaslExchange,  # type: ignore[misc]
                      generation: int) -> None:
        if not self._current(user, sasl, generation):
            return
        sasl.verifying = False
        if result.did:
            self._sasl_succeeded(user, sasl, result.did, result.handle)
        else:
            self._sasl_failed(user, sasl, result.reply, result.reason or "verification failed")

    def _send_challenge(self: "IRCServer", user: "User", sasl: SaslExchange, reset: bool) -> None:  # type: ignore[misc]
        challenge = sasl.start(self.clock.seconds(), reset_retries=reset)
        payload = b64url(challenge.data)
        for i in range(0, len(payload), 400):
            user.write(build(None, "AUTHENTICATE", payload[i:i + 400]))
        if len(payload) % 400 == 0:
            user.write(build(None, "AUTHENTICATE", "+"))

    def _current(self: "IRCServer", user: "User", sasl: SaslExchange, generation: int) -> bool:  # type: ignore[misc]
        return user in self.connections and user.sasl is sasl and sasl.generation == generation

    def _sasl_result(self: "IRCServer", result: "VerifyResult", user: "User", sasl: SaslExchange,  # type: ignore[misc]
                     generation: int) -> None:
        if not self._current(user, sasl, generation):
            return
        sasl.verifying = False
        if result.did:
            self._sasl_succeeded(user, sasl, result.did, result.handle)
        elif result.dpop_nonce:
            sasl.dpop_retries += 1
            if sasl.dpop_retries > MAX_DPOP_RETRIES:
                self._sasl_failed(user, sasl, "SASL authentication failed (DPoP nonce retry limit exceeded)",
                                  "dpop retries")
                return
            nonce = result.dpop_nonce.replace(" ", "")[:256]
            user.write(build_text(self.name, "NOTICE", user.nick, f"DPOP_NONCE {nonce}"))
            self._send_challenge(user, sasl, reset=False)
        else:
            self._sasl_failed(user, sasl, "SASL authentication failed", result.error or "verification failed")

    def _sasl_error(self: "IRCServer", failure: Any, user: "User", sasl: SaslExchange,  # type: ignore[misc]
                    generation: int) -> None:
        log.failure("SASL verification crashed for {nick}", failure, nick=user.nick)
        if self._current(user, sasl, generation):
            sasl.verifying = False
            self._sasl_failed(user, sasl, "SASL authentication failed", "internal error")

    def _sasl_failed(self: "IRCServer", user: "User", sasl: SaslExchange, text: str,  # type: ignore[misc]
                     reason: str) -> None:
        mechanism = sasl.mechanism
        sasl.abort()
        sasl.failures += 1
        # At most MAX_FAILURES lines per connection (then it is closed), and connections are rate-limited.
        security_event(log, "sasl_failure", user.ip, "SASL failure from {ip} ({mechanism}, nick {nick}, failure "
                       "{n}): {reason}", metrics=self.metrics, n=sasl.failures, nick=user.nick, reason=reason,
                       mechanism=mechanism)
        self.num(user, "904", text)
        if sasl.failures >= MAX_FAILURES:
            self.close(user, "Too many SASL failures")
            return
        self._try_register(user)

    def _sasl_succeeded(self: "IRCServer", user: "User", sasl: SaslExchange, did: str,  # type: ignore[misc]
                        handle: Optional[str]) -> None:
        sasl.abort()
        self.metric("sasl_success")
        if handle is not None:
            # Every source checks the handle already (verifier, broker); this is the last gate before
            # WHOIS puts it on the wire. The DID is proven, so the login stands without the handle.
            checked = valid_handle(handle)
            if checked is None:
                log.warn("SASL handle for {did} dropped: not an AT Protocol handle", did=did)
            handle = checked
        user.handle = handle
        self.change_host(user, user.username, cloak_for(did))
        self.set_account(user, did)
        if self.primary_session(did) is not None and not user.registered:
            pass  # another device holds the identity's nick; this one adopts it at registration
        elif user.nick_given and not user.registered:
            owner = self.nick_owners.get(user.folded)
            if owner is None or owner[1] == did:
                self.bind_nick(user, did)
        elif user.registered:
            owner = self.nick_owners.get(user.folded)
            if owner is None:
                self.bind_nick(user, did)
        if did in self.oper_dids and not user.is_oper:
            self.set_user_mode(user, "o", True)
            if user.registered:
                # Before 001 the welcome burst announces the user's modes once (registration); not twice.
                user.write(build(self.name, "MODE", user.nick, "+o"))
            log.info("{nick} is a server operator by DID {did}", nick=user.nick, did=did)
        user.write(build_text(self.name, "900", user.nick, user.hostmask, did, f"You are now logged in as {did}"))
        self.num(user, "903", "SASL authentication successful")
        bearer = self.bearer_tokens
        if bearer is not None:
            user.write(build_text(self.name, "NOTICE", user.nick, f"API-BEARER {bearer.mint(did)}"))
        log.info("{nick} authenticated as {did}", nick=user.nick, did=did)
        if user.registered:
            for chan in list(user.channels.values()):
                self.apply_did_status(chan, user)
        self._try_register(user)

    # ------------------------------------------------------------------
    # Nick ownership
    # ------------------------------------------------------------------
    def bind_nick(self: "IRCServer", user: "User", did: str) -> None:  # type: ignore[misc]
        """Make ``did`` the owner of ``user``'s nick (releasing any nick it owned), and persist it."""
        for folded, (_nick, owner) in list(self.nick_owners.items()):
            if owner == did and folded != user.folded:
                del self.nick_owners[folded]
        self.nick_owners[user.folded] = (user.nick, did)
        if self.store is not None:
            self.store.bind_nick(user.folded, user.nick, did, self.clock.seconds())

    def nick_owner(self: "IRCServer", nick: str) -> Optional[str]:  # type: ignore[misc]
        """The DID that owns ``nick``, if any."""
        owner = self.nick_owners.get(fold(nick))
        return owner[1] if owner else None

    def enforce_nick_ownership(self: "IRCServer", user: "User") -> None:  # type: ignore[misc]
        """At registration: a nick owned by another identity, or looking like one (TR39 skeleton), is replaced
        (guests get ``Guest<n>``)."""
        owner = self.nick_owner(user.nick)
        if owner is None or owner == user.account:
            if self.nick_owners.lookalike(user.nick, user.account) is None:
                return
        wanted = user.nick
        if user.account is None:
            new = self._free_guest_nick()
            text = f"Nick {wanted} is registered to another identity; you are {new}. Authenticate to reclaim it."
        else:
            new = self._derived_nick(wanted, user.account)
            text = f"{wanted} is registered to another identity. You are {new} (tied to your account)."
        if self.users.get(user.folded) is user:
            del self.users[user.folded]
        user.set_nick(new)
        self.users[user.folded] = user
        if user.account is not None and self.nick_owner(new) is None:
            self.bind_nick(user, user.account)
        user.write(build_text(self.name, "NOTICE", new, text))

    def _free_guest_nick(self: "IRCServer") -> str:  # type: ignore[misc]
        for _ in range(1000):
            nick = f"Guest{int.from_bytes(os.urandom(4), 'big') % 100000}"
            if fold(nick) not in self.users and fold(nick) not in self.nick_owners:
                return nick
        n = 100000
        while f"guest{n}" in self.users or f"guest{n}" in self.nick_owners:
            n += 1
        return f"Guest{n}"

    def _derived_nick(self: "IRCServer", base: str, did: str) -> str:  # type: ignore[misc]
        tail = "".join(ch for ch in did.rsplit(":", 1)[-1].lower() if ch.isascii() and ch.isalnum())
        for size in (8, 12, 16, 24, len(tail)):
            frag = tail[:size]
            nick = f"{base[: max(1, self.config.nick_len - len(frag) - 1)]}-{frag}"
            folded = fold(nick)
            owner = self.nick_owners.get(folded)
            if folded not in self.users and (owner is None or owner[1] == did):
                return nick
        return self._free_guest_nick()

    # ------------------------------------------------------------------
    # Channel authority by DID
    # ------------------------------------------------------------------
    def apply_did_status(self: "IRCServer", chan: "Channel", user: "User") -> None:  # type: ignore[misc]
        """Give a member its persistent operator status (founder or DID op), announcing the change."""
        from freeq.state.channel import OP

        if not user.account or user not in chan.members:
            return
        if is_did_op(chan, user):
            if not chan.members[user] & OP:
                chan.members[user] |= OP
                self.broadcast(chan.members, build(self.name, "MODE", chan.name, "+o", user.nick))

    # ------------------------------------------------------------------
    # Message signing
    # ------------------------------------------------------------------
    def irc_MSGSIG(self: "IRCServer", user: "User", msg: Message) -> None:  # type: ignore[misc]
        if not user.account:
            self.fail(user, "MSGSIG", "NOT_AUTHENTICATED", "Must be DID-authenticated to register a signing key")
            return
        if not msg.params:
            self.fail(user, "MSGSIG", "INVALID_KEY", "Expected 32-byte base64url-encoded ed25519 public key")
            return
        try:
            key = b64url_decode(msg.params[0])
        except ValueError:
            key = b""
        if len(key) != 32:
            self.fail(user, "MSGSIG", "INVALID_KEY", "Expected 32-byte base64url-encoded ed25519 public key")
            return
        user.session_key = key
        keys = self.session_keys.setdefault(user.account, [])
        encoded = b64url(key)
        if encoded not in keys:
            keys.append(encoded)
            del keys[:-10]
        user.write(build(self.name, "MSGSIG", "OK"))

    def signature_tag(self: "IRCServer", user: "User", target: str, typed_target: str, text: str,  # type: ignore[misc]
                      client_sig: Optional[str], now: float) -> Optional[str]:
        """The ``+freeq.at/sig`` value for a message from an account holder (``None`` for guests).

        The client's own signature is kept when it verifies under its MSGSIG key for this second
        and the canonical ``target`` (a channel lower-cased); otherwise the server signs. A client
        signature over ``typed_target`` in another case is not kept: receivers, who only see the
        channel's name, could not verify it.
        """
        if not user.account:
            return None
        second = int(now)
        if client_sig and user.session_key is not None:
            if verify_signature(user.session_key, client_sig, user.account, target, text, second):
                return client_sig
        signer = getattr(self, "signer", None)
        if signer is None:
            return None
        return str(signer.sign(user.account, target, text, second))
