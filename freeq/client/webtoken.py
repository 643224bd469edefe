"""Web tokens: log in with a single-use token the auth broker minted (SASL method ``web-token``).

A trusted broker (a web service that did the AT Protocol OAuth dance for the user and shares
``--broker-shared-secret`` with the server) asks ``POST /auth/broker/web-token`` for a token for a DID
(docs/web.md); :func:`fetch_web_token` is that call, signed with the broker scheme
(``X-Broker-Timestamp`` and ``X-Broker-Signature``: base64url HMAC-SHA256 of ``"ts=" + ts + "\\n" + body``).
:class:`WebTokenCredential` then logs in once with the token over SASL ``ATPROTO-CHALLENGE``, answering
``{"did":"","method":"web-token","signature":"<token>"}`` (the server takes the DID from the token).

A token is good for one login within a few minutes: a client that reconnects needs a fresh one each time
(give :class:`freeq.client.reconnect.Reconnector` a ``credential_factory`` that calls :func:`fetch_web_token`).
Tokens and the secret are never logged or shown in ``repr``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from twisted.internet import defer

from freeq.client.auth import Credential
from freeq.client.errors import ClientError

#: The broker's route for web tokens.
WEB_TOKEN_PATH = "/auth/broker/web-token"
#: Longest broker answer read.
MAX_ANSWER_BYTES = 65536
#: A token is 43 base64url characters; anything else from a broker is refused before it reaches the wire.
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def broker_headers(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The headers that authenticate ``body`` to the broker routes at Unix time ``timestamp``."""
    ts = str(int(timestamp))
    mac = hmac.new(secret.encode("utf-8"), b"ts=" + ts.encode("ascii") + b"\n" + body, hashlib.sha256).digest()
    return {"X-Broker-Timestamp": ts, "X-Broker-Signature": base64.urlsafe_b64encode(mac).rstrip(b"=").decode(),
            "Content-Type": "application/json"}


def valid_token(token: object) -> bool:
    """Whether ``token`` looks like a web token (1-256 base64url characters): safe to put on the wire."""
    return isinstance(token, str) and 0 < len(token) <= 256 and all(c in _TOKEN_CHARS for c in token)


@dataclass(frozen=True)
class WebToken:
    """A minted token and what the broker said of it (``nick``: the handle without a Bluesky suffix)."""

    token: str = field(repr=False)
    did: str
    nick: Optional[str] = None
    handle: Optional[str] = None

    def credential(self) -> "WebTokenCredential":
        """A credential that logs in with this token (once)."""
        return WebTokenCredential(self.token, self.did)


class WebTokenCredential(Credential):
    """Logs in once with a broker-minted web token (SASL method ``web-token``).

    ``did`` is only what the caller expects (the server takes the DID from the token; the client's
    ``account`` is what the server's 900 says). The token is sent once: a second challenge (a retry on
    the same connection, or a reconnect with the same credential) answers with an empty token, which the
    server refuses, rather than resending a secret that can no longer work.
    """

    method = "web-token"
    is_token = True

    def __init__(self, token: str, did: str = "") -> None:
        if not valid_token(token):
            raise ValueError("a web token is 1-256 base64url characters")
        self.did = did
        self._token: Optional[str] = token

    def response(self, challenge: bytes) -> dict[str, Optional[str]]:
        """``{"did":"","method":"web-token","signature":<token>}``; the token only the first time."""
        token, self._token = self._token, None
        return {"did": "", "method": self.method, "signature": token or ""}


async def _post(reactor: Any, url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    import treq  # only this helper needs an HTTP client
    from twisted.web.client import HTTPConnectionPool

    wire: dict[Union[bytes, str], Union[bytes, str]] = {k: v for k, v in headers.items()}
    # One request now and then: no connection is kept open behind the caller's back.
    pool = HTTPConnectionPool(reactor, persistent=False)
    response = await treq.post(url, data=body, headers=wire, timeout=timeout, reactor=reactor, pool=pool)
    content: bytes = await treq.content(response)
    return int(response.code), content[:MAX_ANSWER_BYTES + 1]


def fetch_web_token(reactor: Any, base_url: str, secret: str, did: str, handle: Optional[str] = None,
                    timeout: float = 10.0) -> defer.Deferred:
    """Ask the broker endpoint at ``base_url`` (the server's web listener, e.g. ``http://127.0.0.1:8080``)
    for a web token for ``did``; fires with a :class:`WebToken`, fails with :class:`ClientError` when the
    server refuses (the status and its ``error`` text; never the secret)."""
    if not did.startswith("did:"):
        return defer.fail(ValueError("did must start with did:"))
    fields: dict[str, Any] = {"did": did, "request_id": os.urandom(8).hex()}  # unique: never a replay
    if handle is not None:
        fields["handle"] = handle
    body = json.dumps(fields).encode("utf-8")
    url = base_url.rstrip("/") + WEB_TOKEN_PATH

    async def run() -> WebToken:
        code, content = await _post(reactor, url, body, broker_headers(secret, body, int(reactor.seconds())), timeout)
        try:
            data = json.loads(content[:MAX_ANSWER_BYTES].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            data = None
        if code != 200 or not isinstance(data, dict):
            why = data.get("error") if isinstance(data, dict) else None
            raise ClientError(f"broker refused the web token request: {code} {str(why or '')[:200]}".rstrip())
        token = data.get("token")
        if not valid_token(token):
            raise ClientError("broker answered without a usable token")
        nick, shown_handle = data.get("nick"), data.get("handle")
        return WebToken(str(token), str(data.get("did") or did), nick if isinstance(nick, str) else None,
                        shown_handle if isinstance(shown_handle, str) else None)

    return defer.ensureDeferred(run())


__all__ = ["WEB_TOKEN_PATH", "WebToken", "WebTokenCredential", "broker_headers", "fetch_web_token", "valid_token"]
