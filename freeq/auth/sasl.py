"""SASL ``ATPROTO-CHALLENGE``: challenges and the per-connection exchange state (pure; time passed in).

Wire format as the reference server (client-protocol.md §5.2): the challenge is the compact
JSON ``{"session_id":…,"nonce":…,"timestamp":…}`` sent base64url without padding; the
response is base64url JSON. Fixes over the reference: the session id is 128 random bits per
exchange (never ``ip:port``), challenges live on the connection (gone when it closes), client
responses may be chunked in 400-byte pieces (IRCv3 SASL 3.1), and malformed responses count
toward the failure limit.

The same exchange state carries SASL ``PLAIN`` (RFC 4616; a Bluesky handle and app password,
checked by :mod:`freeq.auth.plain`): the server answers ``AUTHENTICATE +`` and the client's
base64 response is reassembled here with the standard IRCv3 rule (a 400-byte chunk always means
more follows) and a smaller size cap.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

MECHANISM = "ATPROTO-CHALLENGE"
PLAIN = "PLAIN"
CHUNK = 400
MAX_RESPONSE_BYTES = 16384
MAX_PLAIN_BYTES = 4096  # base64 characters of a PLAIN response (same as freeq.auth.plain.MAX_PAYLOAD)
MAX_FAILURES = 3
MAX_DPOP_RETRIES = 3


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; raises ``ValueError`` (also for the standard alphabet)."""
    if any(c in text for c in "+/"):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError(str(e)) from None


@dataclass
class Challenge:
    """One issued challenge: the exact bytes sent, its nonce, and when it was made."""

    data: bytes
    nonce: str
    created: float

    def expired(self, now: float, timeout: float) -> bool:
        """Whether the challenge is too old (or from the future) to be answered."""
        return abs(now - self.created) > timeout


def make_challenge(now: float) -> Challenge:
    """A fresh challenge: 32 random bytes of nonce and an unguessable per-exchange session id."""
    nonce = b64url(os.urandom(32))
    session_id = b64url(os.urandom(16))
    data = json.dumps({"session_id": session_id, "nonce": nonce, "timestamp": int(now)},
                      separators=(",", ":")).encode()
    return Challenge(data, nonce, now)


class BadResponse(ValueError):
    """The client's response could not be decoded into the expected JSON object."""


_FIELDS_STR = ("did", "signature")
_FIELDS_OPT = ("method", "pds_url", "dpop_proof", "challenge_nonce")


def decode_response(payload: str) -> dict[str, Any]:
    """Decode a complete response payload into its JSON object; raise :class:`BadResponse`."""
    try:
        obj = json.loads(b64url_decode(payload))
    except (ValueError, UnicodeDecodeError):
        raise BadResponse("not base64url JSON") from None
    if not isinstance(obj, dict):
        raise BadResponse("not a JSON object")
    for key in _FIELDS_STR:
        if not isinstance(obj.get(key), str):
            raise BadResponse(f"missing {key}")
    for key in _FIELDS_OPT:
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise BadResponse(f"bad {key}")
    method = obj.get("method") or "crypto"
    if method not in ("crypto", "pds-session", "pds-oauth", "web-token"):
        raise BadResponse("unsupported method")
    obj["method"] = method
    if method != "web-token" and (not obj["did"].startswith("did:") or len(obj["did"]) > 2048):
        raise BadResponse("bad did")
    return obj


class SaslExchange:
    """The SASL state of one connection."""

    __slots__ = ("challenge", "buffer", "in_progress", "verifying", "failures", "dpop_retries", "generation",
                 "mechanism")

    def __init__(self) -> None:
        self.challenge: Optional[Challenge] = None
        self.buffer: list[str] = []
        self.in_progress = False
        self.verifying = False
        self.failures = 0
        self.dpop_retries = 0
        self.generation = 0  # bumped on abort/restart so late verification results are ignored
        self.mechanism = MECHANISM  # of the exchange in progress

    def start_plain(self) -> None:
        """Begin (or restart) a PLAIN exchange: no challenge; the client's response comes next."""
        self.generation += 1
        self.in_progress = True
        self.verifying = False
        self.buffer = []
        self.challenge = None
        self.mechanism = PLAIN

    def start(self, now: float, reset_retries: bool = True) -> Challenge:
        """Begin (or restart) an exchange and return the challenge to send."""
        self.generation += 1
        self.in_progress = True
        self.verifying = False
        self.buffer = []
        if reset_retries:
            self.dpop_retries = 0
        self.mechanism = MECHANISM
        self.challenge = make_challenge(now)
        return self.challenge

    def abort(self) -> None:
        """Forget the exchange (``AUTHENTICATE *``, failure or success)."""
        self.generation += 1
        self.in_progress = False
        self.verifying = False
        self.buffer = []
        self.challenge = None

    def feed(self, chunk: str) -> Union[None, str, BadResponse]:
        """Add one ``AUTHENTICATE`` parameter; return the complete payload, ``None`` for "more to
        come", or a :class:`BadResponse` when the buffer overflows.

        A chunk shorter than 400 bytes ends the response; ``+`` ends it after a 400-byte chunk.
        A 400-byte chunk that already completes a JSON object is taken as complete (the freeq JS
        SDK sends an exactly-400 response without the ``+``). A chunk longer than 400 bytes is
        accepted as a whole, unchunked response, as the reference server's clients send them.

        For ``PLAIN`` a 400-byte chunk always means more follows (IRCv3 SASL 3.1), and the cap is
        :data:`MAX_PLAIN_BYTES`.
        """
        if chunk == "+":
            payload = "".join(self.buffer)
            self.buffer = []
            return payload
        self.buffer.append(chunk)
        total = sum(len(c) for c in self.buffer)
        if total > (MAX_PLAIN_BYTES if self.mechanism == PLAIN else MAX_RESPONSE_BYTES):
            self.buffer = []
            return BadResponse("response too long")
        if len(chunk) == CHUNK and self.mechanism == PLAIN:
            return None
        if len(chunk) == CHUNK:
            payload = "".join(self.buffer)
            try:
                decode_response(payload)
            except BadResponse:
                return None
            self.buffer = []
            return payload
        payload = "".join(self.buffer)
        self.buffer = []
        return payload

    def take_challenge(self) -> Optional[Challenge]:
        """Remove and return the outstanding challenge (single use)."""
        challenge, self.challenge = self.challenge, None
        return challenge


def cloak_for(did: Optional[str]) -> str:
    """The visible host of a user: ``freeq/<method>/<first 8 characters>`` for a DID, else ``freeq/guest``.

    Only characters that are safe in a hostname are kept, so a hostile ``did:web`` cannot inject
    spaces or IRC syntax into lines.
    """
    if not did:
        return "freeq/guest"
    body = did[4:] if did.startswith("did:") else did
    method, sep, rest = body.partition(":")
    if not sep or not method:
        return "freeq/did"
    safe = "".join(ch for ch in rest if ch.isascii() and (ch.isalnum() or ch in "-._"))[:8]
    method = "".join(ch for ch in method if ch.isascii() and ch.isalnum())[:16] or "did"
    return f"freeq/{method}/{safe or 'x'}"
