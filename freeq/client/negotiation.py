"""Capability negotiation (``CAP LS 302``/``REQ``/``END``), SASL ``ATPROTO-CHALLENGE`` with DPoP nonce
rounds, and the ``MSGSIG`` session key registered after a login."""
from __future__ import annotations

from typing import Optional

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.logger import Logger
from twisted.python.failure import Failure

from freeq.client.auth import MECHANISM, b64url, b64url_decode, chunk_payload
from freeq.client.commands import ClientCommands
from freeq.client.errors import SASLFailed
from freeq.irc.parser import Message

log = Logger()

#: How many ``DPOP_NONCE`` rounds one exchange may take before the client gives up.
MAX_DPOP_ROUNDS = 5


class ClientNegotiation(ClientCommands):
    """CAP, SASL and MSGSIG: how a client logs in (see the SASL failure rules in :mod:`freeq.client.protocol`)."""

    # ------------------------------------------------------------------
    # Capabilities
    # ------------------------------------------------------------------
    def irc_CAP(self, msg: Message) -> None:
        if len(msg.params) < 3:
            return
        sub = msg.params[1].upper()
        if sub == "LS":
            more = len(msg.params) >= 4 and msg.params[2] == "*"
            self._ls_tokens.extend(msg.params[-1].split())
            if not more:
                self._cap_ls_done()
        elif sub in ("ACK", "NAK"):
            names = msg.params[-1].split()
            if sub == "ACK":
                for name in names:
                    if name.startswith("-"):
                        self.caps.discard(name[1:])
                    else:
                        self.caps.add(name)
            if self._req_pending <= 0:
                return
            self._req_pending -= 1
            if sub == "NAK" and not self._req_split and len(names) > 1:
                # Some cap in the batch was refused: ask for each alone rather than lose them all.
                self._req_split = True
                self._req_pending = len(names)
                for name in names:
                    self.send("CAP", "REQ", name)
                return
            if self._req_pending == 0:
                self._caps_negotiated()
        elif sub == "NEW":
            for token in msg.params[-1].split():
                name, _, value = token.partition("=")
                self.caps_available[name] = value
        elif sub == "DEL":
            for name in msg.params[-1].split():
                self.caps_available.pop(name, None)
                self.caps.discard(name)

    def _cap_ls_done(self) -> None:
        tokens, self._ls_tokens = self._ls_tokens, []
        for token in tokens:
            name, _, value = token.partition("=")
            self.caps_available[name] = value
        if not self._negotiating or self.welcomed:
            return
        wanted = [c for c in self.wanted_caps if c in self.caps_available and c != "sasl"]
        if self.credential is not None and self._sasl_offered():
            wanted.append("sasl")
        if not wanted:
            self._caps_negotiated()
            return
        self._req_pending = 1
        self.send("CAP", "REQ", " ".join(wanted))

    def _sasl_offered(self) -> bool:
        if "sasl" not in self.caps_available:
            return False
        value = self.caps_available["sasl"]
        return not value or MECHANISM in value.upper().split(",")

    def _caps_negotiated(self) -> None:
        if self.credential is None:
            self._end_negotiation()
        elif "sasl" in self.caps:
            self._start_sasl()
        else:
            self._sasl_failed("server does not offer SASL " + MECHANISM, None)

    def _end_negotiation(self) -> None:
        if self._negotiating:
            self._negotiating = False
            if not self.welcomed:
                self.send("CAP", "END")

    # ------------------------------------------------------------------
    # SASL
    # ------------------------------------------------------------------
    def _start_sasl(self) -> None:
        self._sasl_state = "authenticating"
        self._challenge_chunks = []
        self._dpop_rounds = 0
        self.send("AUTHENTICATE", MECHANISM)

    def irc_AUTHENTICATE(self, msg: Message) -> None:
        if self._sasl_state != "authenticating" or not msg.params or self.credential is None:
            return
        chunk = msg.params[0]
        if chunk != "+":
            self._challenge_chunks.append(chunk)
            if len(chunk) == 400:
                return  # more to come (or a "+")
        data, self._challenge_chunks = "".join(self._challenge_chunks), []
        try:
            challenge = b64url_decode(data)
        except ValueError:
            self.sasl_error = "server sent an undecodable challenge"
            self.send("AUTHENTICATE", "*")
            return
        for piece in chunk_payload(self.credential.payload(challenge)):
            self.send("AUTHENTICATE", piece)

    def _sasl_notice(self, text: str) -> bool:
        """Handle the DPoP nonce relay; returns whether the notice was consumed."""
        if self._sasl_state != "authenticating" or not text.startswith("DPOP_NONCE "):
            return False
        nonce = text[len("DPOP_NONCE "):].strip()
        self._dpop_rounds += 1
        if self._dpop_rounds > MAX_DPOP_ROUNDS:
            self.sasl_error = "too many DPoP nonce rounds"
            self.send("AUTHENTICATE", "*")
            return True
        if self.credential is not None and nonce:
            self.credential.dpop_nonce(nonce)
        return True

    def _sasl_failed(self, reason: str, numeric: Optional[str]) -> None:
        self._sasl_state = "failed"
        self.sasl_error = reason
        cred = self.credential
        if cred is not None and not cred.is_token and self.guest_fallback:
            log.info("SASL failed ({reason}); continuing as a guest", reason=reason)
            self._end_negotiation()
            return
        log.info("SASL failed: {reason}", reason=reason)
        self._registered.fire(Failure(SASLFailed(reason, numeric)))
        if self.is_connected:
            self.quit("Authentication failed")

    def _sasl_numeric(self, code: str, msg: Message) -> None:
        text = msg.params[-1] if msg.params else ""
        if code == "900":
            did = msg.params[2] if len(msg.params) > 3 else ""
            self.account = did if did.startswith("did:") else (self.credential.did if self.credential else did)
        elif code == "901":
            self.account = None
        elif code == "903":
            self._sasl_state = "done"
            if self.account is None and self.credential is not None:
                self.account = self.credential.did
            self._end_negotiation()
            if self.welcomed:
                self._register_session_key()
        elif code in ("902", "904", "905", "906"):
            if self._sasl_state == "authenticating":
                self._sasl_failed(self.sasl_error if code == "906" and self.sasl_error else text, code)
        elif code == "907":
            if self._sasl_state == "authenticating":
                self._sasl_state = "done"
                self._end_negotiation()
        elif code == "908":
            self.sasl_mechanisms = msg.params[1].split(",") if len(msg.params) > 2 else []

    def _register_session_key(self) -> None:
        if not self.auto_msgsig or not self.account or self.session_key is not None:
            return
        self.session_key = ed25519.Ed25519PrivateKey.generate()
        self.send("MSGSIG", b64url(self.session_public_key or b""))

    def irc_MSGSIG(self, msg: Message) -> None:
        if msg.params and msg.params[0].upper() == "OK" and self.session_key is not None:
            self.msgsig_active = True

    def irc_FAIL(self, msg: Message) -> None:
        if msg.params and msg.params[0].upper() == "MSGSIG":
            log.info("server refused the MSGSIG session key: {text}", text=msg.params[-1])
            self.msgsig_active = False

