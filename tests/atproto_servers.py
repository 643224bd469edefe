"""Loopback AT Protocol services for tests: a PLC directory, did:web hosting, and a PDS.

These are real ``twisted.web`` servers on 127.0.0.1, port 0, started per test and stopped in the
test's cleanups (open connections aborted, pending timers cancelled), so tests exercise the real
:class:`~freeq.auth.http.SafeHTTPClient`. Clients must be built with ``allow_private=True``
(:func:`loopback_http`) since everything is on loopback.

Typical use::

    plc = await start_plc(self)
    key = generate_private_key("secp256k1")
    did = random_plc_did()
    pds = await start_pds(self, did=did, handle="alice.test", token="tok")
    plc.add(make_did_doc(did, [key.public_key()], handle="alice.test", pds_url=pds.url))
    resolver = DIDResolver(loopback_http(), reactor, plc_directory_url=plc.url)

or all at once: ``ident = await start_identity(self)``.

Behaviour knobs on document servers (:class:`FakePLC`, :class:`DIDWebHost`): ``delay`` (seconds
before answering), ``status`` (answer every request with this status), ``oversize`` (a body of that
many bytes with a Content-Length), ``oversize_chunked`` (the same, streamed without a length),
``redirect_to`` (302 to that URL); on every server ``extra_headers`` (added to each answer). On :class:`FakePDS`: ``require_dpop_nonce``, ``rotate_nonce()``,
``send_nonce_header``, ``session_did`` (the DID getSession claims), ``status``, ``delay``, ``accept_bearer`` /
``accept_dpop``. The PDS verifies DPoP proofs for real (ES256 signature, ``htm``, ``htu``, ``ath``,
``iat``, and the nonce when one is required).
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from twisted.internet import defer, ssl
from twisted.internet import reactor as _reactor
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.trial import unittest
from twisted.web import resource, server

from freeq.auth.did import did_web_url
from freeq.auth.http import SafeHTTPClient
from freeq.auth.multikey import P256, PrivateKey, PublicKey, generate_private_key

reactor: Any = _reactor  # typed loosely: mypy runs without the zope plugin here
GET_SESSION_PATH = "/xrpc/com.atproto.server.getSession"
_B32 = "abcdefghijklmnopqrstuvwxyz234567"


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Decode base64url with or without padding."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def random_plc_did() -> str:
    """A syntactically valid, random ``did:plc`` (24 base32 characters)."""
    return "did:plc:" + "".join(secrets.choice(_B32) for _ in range(24))


def loopback_http(timeout: float = 5.0, max_bytes: int = 1_048_576, tls_trust_root: Any = None,
                  the_reactor: Any = None) -> SafeHTTPClient:
    """A :class:`SafeHTTPClient` allowed to reach loopback (as every test server lives there)."""
    return SafeHTTPClient(the_reactor or reactor, allow_private=True, timeout=timeout, max_bytes=max_bytes,
                          tls_trust_root=tls_trust_root)


def make_did_doc(did: str, keys: Sequence[PublicKey] = (), *, handle: Optional[str] = None,
                 pds_url: Optional[str] = None, relative_ids: bool = False,
                 authentication: bool = False) -> dict[str, Any]:
    """A DID document shaped like plc.directory's.

    The first key is ``#atproto``, further keys ``#key1``, ``#key2``...; ids are absolute
    (``<did>#atproto``, as PLC writes them) unless ``relative_ids``. With ``authentication`` every
    key is also referenced from ``authentication`` (by the same form of id); without it only the
    ``#atproto`` key is usable, as with real PLC documents.
    """
    ids = [("#atproto" if i == 0 else f"#key{i}") for i in range(len(keys))]
    if not relative_ids:
        ids = [did + i for i in ids]
    doc: dict[str, Any] = {
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1",
            "https://w3id.org/security/suites/secp256k1-2019/v1",
        ],
        "id": did,
        "alsoKnownAs": [f"at://{handle}"] if handle else [],
        "verificationMethod": [
            {"id": vm_id, "type": "Multikey", "controller": did, "publicKeyMultibase": key.multibase}
            for vm_id, key in zip(ids, keys)
        ],
    }
    if authentication:
        doc["authentication"] = list(ids)
    if pds_url is not None:
        doc["service"] = [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds_url}]
    return doc


def make_dpop_proof(key: PrivateKey, htu: str, access_token: Optional[str] = None, nonce: Optional[str] = None,
                    htm: str = "GET", iat: Optional[int] = None) -> str:
    """A DPoP proof JWS (ES256, P-256 ``key``) in the format the freeq SDK sends."""
    if key.kind != P256:
        raise ValueError("DPoP proofs here use ES256 (P-256) keys")
    point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key.public_key().raw).public_numbers()
    header = {"typ": "dpop+jwt", "alg": "ES256",
              "jwk": {"kty": "EC", "crv": "P-256", "x": b64url(point.x.to_bytes(32, "big")),
                      "y": b64url(point.y.to_bytes(32, "big"))}}
    payload: dict[str, Any] = {"jti": b64url(os.urandom(16)), "htm": htm, "htu": htu,
                               "iat": int(time.time()) if iat is None else iat}
    if nonce is not None:
        payload["nonce"] = nonce
    if access_token is not None:
        payload["ath"] = b64url(hashlib.sha256(access_token.encode()).digest())
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    return signing_input + "." + b64url(key.sign(signing_input.encode()))


def check_dpop_proof(proof: str, htm: str, htu: str, access_token: str) -> dict[str, Any]:
    """Verify a DPoP proof as a PDS would; return its payload or raise ``ValueError``."""
    try:
        h64, p64, s64 = proof.split(".")
        header = json.loads(unb64url(h64))
        payload = json.loads(unb64url(p64))
        signature = unb64url(s64)
    except (ValueError, TypeError):
        raise ValueError("malformed DPoP proof") from None
    if header.get("typ") != "dpop+jwt" or header.get("alg") != "ES256" or len(signature) != 64:
        raise ValueError("unsupported DPoP proof header")
    jwk = header.get("jwk") or {}
    try:
        public = ec.EllipticCurvePublicNumbers(int.from_bytes(unb64url(jwk["x"]), "big"),
                                               int.from_bytes(unb64url(jwk["y"]), "big"),
                                               ec.SECP256R1()).public_key()
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        public.verify(der, f"{h64}.{p64}".encode(), ec.ECDSA(hashes.SHA256()))
    except (KeyError, TypeError, ValueError, InvalidSignature):
        raise ValueError("bad DPoP proof signature") from None
    if payload.get("htm") != htm or payload.get("htu") != htu:
        raise ValueError("DPoP proof is for another request")
    if payload.get("ath") != b64url(hashlib.sha256(access_token.encode()).digest()):
        raise ValueError("DPoP proof is bound to another token")
    if not isinstance(payload.get("iat"), int) or abs(payload["iat"] - time.time()) > 300:
        raise ValueError("DPoP proof is stale")
    if not payload.get("jti"):
        raise ValueError("DPoP proof has no jti")
    return payload


def make_tls_certificate(directory: str, hostname: str = "localhost") -> tuple[bytes, bytes]:
    """A throw-away self-signed certificate (PEM) for ``hostname`` and 127.0.0.1, and its key (PEM)."""
    import ipaddress

    os.makedirs(directory, exist_ok=True)
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(pkey, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return cert_pem, key_pem


@dataclass
class RecordedRequest:
    """One request a test server saw."""

    method: str
    path: str
    headers: dict[str, str]


class _Dispatch(resource.Resource):
    isLeaf = True

    def __init__(self, handler: Callable[[server.Request], Any]) -> None:
        super().__init__()
        self._handler = handler

    def render(self, request: server.Request) -> Any:
        return self._handler(request)


class LoopbackServer:
    """A ``twisted.web`` server on 127.0.0.1:0 (plain or TLS) that stops without leaving anything."""

    def __init__(self, tls: Optional[ssl.CertificateOptions] = None, hostname: str = "127.0.0.1") -> None:
        self._tls = tls
        self._hostname = hostname
        self._site = server.Site(_Dispatch(self._handle), timeout=None)
        self._site.displayTracebacks = False
        self._site.noisy = False
        self._factory = WrappingFactory(self._site)
        self._factory.noisy = False
        self._calls: list[Any] = []
        self._port: Any = None
        self._port_number = 0
        self.requests: list[RecordedRequest] = []
        self.delay = 0.0
        self.status: Optional[int] = None
        self.extra_headers: dict[str, str] = {}

    def start(self) -> None:
        """Listen on an ephemeral loopback port."""
        if self._tls is not None:
            self._port = reactor.listenSSL(0, self._factory, self._tls, interface="127.0.0.1")
        else:
            self._port = reactor.listenTCP(0, self._factory, interface="127.0.0.1")
        self._port_number = int(self._port.getHost().port)

    @property
    def port(self) -> int:
        """The listening port (remembered after :meth:`stop`)."""
        return self._port_number

    @property
    def url(self) -> str:
        """Base URL, no trailing slash."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{self._hostname}:{self.port}"

    def stop(self) -> defer.Deferred[None]:
        """Cancel timers, abort connections, stop listening; fires when all is gone."""
        return defer.Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        for proto in list(self._factory.protocols):
            if proto.transport is not None:
                proto.transport.abortConnection()
        port, self._port = self._port, None
        if port is not None:
            await defer.maybeDeferred(port.stopListening)
        for _ in range(200):
            if not self._factory.protocols:
                break
            await deferLater(reactor, 0.005, lambda: None)

    def _handle(self, request: server.Request) -> Any:
        headers = {k.decode("latin-1").lower(): v[-1].decode("latin-1")
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        path = request.path.decode("latin-1")
        self.requests.append(RecordedRequest(request.method.decode("latin-1"), path, headers))
        if self.delay:
            call = reactor.callLater(self.delay, self._answer, request, path, headers)
            self._calls.append(call)
            request.notifyFinish().addErrback(lambda _: call.cancel() if call.active() else None)
            return server.NOT_DONE_YET
        self._answer(request, path, headers)
        return server.NOT_DONE_YET

    def _answer(self, request: server.Request, path: str, headers: dict[str, str]) -> None:
        if self.status is not None:
            self._send(request, self.status, {"error": "forced"})
        else:
            self.respond(request, path, headers)

    def _send(self, request: server.Request, status: int, body: Any, headers: Optional[dict[str, str]] = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        for name, value in {**self.extra_headers, **(headers or {})}.items():
            request.setHeader(name.encode(), value.encode())
        request.setHeader(b"content-length", str(len(data)).encode())
        request.write(data)
        request.finish()

    def respond(self, request: server.Request, path: str, headers: dict[str, str]) -> None:
        """Answer one request (subclasses)."""
        self._send(request, 404, {"error": "NotFound"})


class DocumentServer(LoopbackServer):
    """Serves JSON documents by path, with failure knobs (see the module docstring)."""

    def __init__(self, tls: Optional[ssl.CertificateOptions] = None, hostname: str = "127.0.0.1") -> None:
        super().__init__(tls, hostname)
        self.documents: dict[str, bytes] = {}
        self.oversize: Optional[int] = None
        self.oversize_chunked: Optional[int] = None
        self.redirect_to: Optional[str] = None

    def put(self, path: str, body: Any) -> None:
        """Serve ``body`` (bytes, or JSON-encoded) at ``path``."""
        self.documents[path] = body if isinstance(body, bytes) else json.dumps(body).encode()

    def respond(self, request: server.Request, path: str, headers: dict[str, str]) -> None:
        if self.redirect_to is not None:
            request.setResponseCode(302)
            request.setHeader(b"location", self.redirect_to.encode())
            request.setHeader(b"content-length", b"0")
            request.finish()
        elif self.oversize is not None:
            self._send(request, 200, b" " * self.oversize)
        elif self.oversize_chunked is not None:
            request.setHeader(b"content-type", b"application/json")
            request.write(b" " * self.oversize_chunked)
            request.finish()
        elif path in self.documents:
            self._send(request, 200, self.documents[path])
        else:
            self._send(request, 404, {"message": "DID not registered"})


class FakePLC(DocumentServer):
    """A PLC directory: ``GET /<did>`` answers the document added for that DID."""

    def add(self, doc: dict[str, Any]) -> None:
        """Publish ``doc`` under its ``id``."""
        self.put("/" + doc["id"], doc)

    def remove(self, did: str) -> None:
        """Stop serving ``did``."""
        self.documents.pop("/" + did, None)

    def fetches(self, did: str) -> int:
        """How many times ``did`` was requested."""
        return sum(1 for r in self.requests if unquote(r.path) == "/" + did)


class DIDWebHost(DocumentServer):
    """An https host for did:web documents at ``localhost:<port>`` with a self-signed certificate.

    Use :attr:`trust_root` as the client's ``tls_trust_root``.
    """

    def __init__(self, directory: str) -> None:
        cert_pem, key_pem = make_tls_certificate(directory, "localhost")
        options = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem).options()
        super().__init__(options, "localhost")
        self.trust_root = ssl.Certificate.loadPEM(cert_pem)

    def did(self, *segments: str) -> str:
        """The did:web served here (``did:web:localhost%3A<port>[:seg...]``)."""
        return ":".join([f"did:web:localhost%3A{self.port}", *segments])

    def add(self, doc: dict[str, Any]) -> None:
        """Publish ``doc`` at the path its ``id`` (a did:web of this host) maps to."""
        self.put(urlsplit(did_web_url(doc["id"])).path, doc)


class FakePDS(LoopbackServer):
    """A PDS answering ``com.atproto.server.getSession`` for one account.

    Accepts ``Authorization: Bearer <token>`` and ``Authorization: DPoP <token>`` with a valid
    ``DPoP`` proof; with :attr:`require_dpop_nonce` a proof must carry :attr:`dpop_nonce`, else the
    answer is 401 ``{"error": "use_dpop_nonce"}`` with a ``DPoP-Nonce`` header.
    """

    def __init__(self, did: str, handle: Optional[str], token: str) -> None:
        super().__init__()
        self.did = did
        self.handle = handle
        self.token = token
        self.session_did: Optional[str] = None
        self.accept_bearer = True
        self.accept_dpop = True
        self.require_dpop_nonce = False
        self.send_nonce_header = True
        self.dpop_nonce = b64url(os.urandom(16))
        self.dpop_payloads: list[dict[str, Any]] = []

    def rotate_nonce(self) -> str:
        """Switch to a fresh DPoP nonce and return it."""
        self.dpop_nonce = b64url(os.urandom(16))
        return self.dpop_nonce

    @property
    def session_url(self) -> str:
        """The getSession URL (also the ``htu`` a DPoP proof must name)."""
        return self.url + GET_SESSION_PATH

    def respond(self, request: server.Request, path: str, headers: dict[str, str]) -> None:
        if path != GET_SESSION_PATH or request.method != b"GET":
            self._send(request, 404, {"error": "MethodNotImplemented"})
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme == "Bearer" and self.accept_bearer:
            pass
        elif scheme == "DPoP" and self.accept_dpop:
            try:
                payload = check_dpop_proof(headers.get("dpop", ""), "GET", self.session_url, token)
            except ValueError as e:
                self._send(request, 401, {"error": "invalid_dpop_proof", "message": str(e)})
                return
            self.dpop_payloads.append(payload)
            if self.require_dpop_nonce and payload.get("nonce") != self.dpop_nonce:
                demand = {"WWW-Authenticate": 'DPoP error="use_dpop_nonce"'}
                if self.send_nonce_header:
                    demand["DPoP-Nonce"] = self.dpop_nonce
                self._send(request, 401, {"error": "use_dpop_nonce",
                                          "message": "Resource server requires nonce in DPoP proof"}, demand)
                return
        else:
            self._send(request, 401, {"error": "AuthMissing", "message": "Authentication Required"})
            return
        if not secrets.compare_digest(token.encode(), self.token.encode()):
            self._send(request, 401, {"error": "InvalidToken", "message": "Token could not be verified"})
            return
        body: dict[str, Any] = {"did": self.session_did or self.did, "active": True}
        if self.handle is not None:
            body["handle"] = self.handle
        self._send(request, 200, body)


def _register(case: unittest.TestCase, srv: LoopbackServer) -> None:
    srv.start()
    case.addCleanup(srv.stop)


async def start_plc(case: unittest.TestCase) -> FakePLC:
    """A running :class:`FakePLC`, stopped in ``case``'s cleanup."""
    plc = FakePLC()
    _register(case, plc)
    return plc


async def start_did_web(case: unittest.TestCase) -> DIDWebHost:
    """A running :class:`DIDWebHost`, stopped in ``case``'s cleanup."""
    host = DIDWebHost(case.mktemp())
    _register(case, host)
    return host


async def start_pds(case: unittest.TestCase, did: str, handle: Optional[str] = "alice.test",
                    token: Optional[str] = None) -> FakePDS:
    """A running :class:`FakePDS` for ``did``, stopped in ``case``'s cleanup."""
    pds = FakePDS(did, handle, token if token is not None else b64url(os.urandom(32)))
    _register(case, pds)
    return pds


@dataclass
class Identity:
    """A complete test account: a key, a did:plc published in a PLC directory, and its PDS."""

    did: str
    handle: str
    key: PrivateKey
    token: str
    plc: FakePLC
    pds: FakePDS
    doc: dict[str, Any] = field(default_factory=dict)


async def start_identity(case: unittest.TestCase, kind: str = "secp256k1", handle: str = "alice.test",
                         plc: Optional[FakePLC] = None) -> Identity:
    """Create a key of ``kind`` and a did:plc for it, with a PDS, in a (new or given) PLC directory."""
    if plc is None:
        plc = await start_plc(case)
    key = generate_private_key(kind)
    did = random_plc_did()
    pds = await start_pds(case, did=did, handle=handle)
    doc = make_did_doc(did, [key.public_key()], handle=handle, pds_url=pds.url)
    plc.add(doc)
    return Identity(did=did, handle=handle, key=key, token=pds.token, plc=plc, pds=pds, doc=doc)


__all__ = [
    "GET_SESSION_PATH", "b64url", "unb64url", "random_plc_did", "loopback_http", "make_did_doc",
    "make_dpop_proof", "check_dpop_proof", "make_tls_certificate", "RecordedRequest", "LoopbackServer",
    "DocumentServer", "FakePLC", "DIDWebHost", "FakePDS", "start_plc", "start_did_web", "start_pds",
    "Identity", "start_identity",
]
