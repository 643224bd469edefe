"""Outbound HTTP for identity checks (DID documents, PDS sessions), hardened against SSRF.

Every fetch the server makes on a client's behalf goes to a URL the client influences (a DID, a
PDS URL), so :class:`SafeHTTPClient` enforces, per request:

* scheme ``http`` or ``https`` only; no ``user:pass@`` part;
* unless ``allow_private`` (the operator's ``--allow-private-network``): host names ``localhost``,
  ``*.localhost``, ``*.local``, ``*.internal`` are refused, and the host is resolved here and
  **every** address it resolves to must be globally routable (:func:`is_public_address`: no
  loopback, RFC 1918, link-local, CGNAT, ULA, multicast, documentation, reserved, unspecified, and
  the same for IPv4 addresses embedded in IPv6 — mapped, 6to4, Teredo);
* the connection goes to one of those checked addresses (pinned: no second DNS lookup that could
  be rebound), trying them in order; for ``https`` the TLS certificate is verified against the URL's
  host name (platform trust, or ``tls_trust_root``);
* no redirects: any 3xx answer is an :class:`HTTPFetchError` (not followed to any host);
* only the identity encoding is requested and accepted (no decompression bombs);
* the body is read with a cap (``max_bytes``; a larger ``Content-Length`` fails before reading,
  a streamed body aborts the connection as soon as it goes over);
* one deadline (``timeout``) covers resolution, connection, TLS, headers and body; on expiry the
  request is cancelled and the connection dropped.

Requests carry no cookies between calls (a fresh treq client per request).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Optional, Union, cast

import hyperlink
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHostResolution, IResolutionReceiver, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from zope.interface import implementer

log = Logger()

_IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_BLOCKED_NAME_SUFFIXES = (".localhost", ".local", ".internal")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class UnsafeURLError(Exception):
    """The URL may not be fetched: bad scheme or form, or a private/local destination."""


class HTTPFetchError(Exception):
    """The fetch failed: timeout, connection or TLS failure, redirect, oversized body."""


@dataclass(frozen=True)
class HTTPResponse:
    """A complete response: status, headers (lower-case names, last value wins), body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def is_public_address(ip: _IP) -> bool:
    """Whether ``ip`` is a globally routable unicast address (embedded IPv4 checked too)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not is_public_address(embedded):
            return False
        if ip.ipv4_mapped is not None:
            return True
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
        return False
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return False
    return True


@implementer(IResolutionReceiver)
class _Collect:
    """Collects a host name resolution into a Deferred list of IP address strings."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.done: defer.Deferred[list[str]] = defer.Deferred()

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)) and address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        # A cancelled wait has no canceller, so this late callback is silently dropped.
        self.done.callback(self.addresses)


@implementer(IStreamClientEndpoint)
class _PinnedEndpoint:
    """Connects to already-checked addresses in order; wraps TLS verified against ``hostname``."""

    def __init__(self, reactor: Any, addresses: list[_IP], port: int, tls_hostname: Optional[str],
                 trust_root: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._addresses = addresses
        self._port = port
        self._tls_hostname = tls_hostname
        self._trust_root = trust_root
        self._connect_timeout = connect_timeout

    def connect(self, protocolFactory: Any) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: Any) -> Any:
        last: Optional[Failure] = None
        for ip in self._addresses:
            endpoint: Any
            if isinstance(ip, ipaddress.IPv6Address):
                endpoint = TCP6ClientEndpoint(self._reactor, str(ip), self._port, timeout=self._connect_timeout)
            else:
                endpoint = TCP4ClientEndpoint(self._reactor, str(ip), self._port, timeout=self._connect_timeout)
            if self._tls_hostname is not None:
                endpoint = wrapClientTLS(optionsForClientTLS(self._tls_hostname, trustRoot=self._trust_root),
                                         endpoint)
            try:
                return await endpoint.connect(protocolFactory)
            except defer.CancelledError:
                raise
            except Exception:
                last = Failure()
        assert last is not None
        last.raiseException()


@implementer(IAgentEndpointFactory)
class _PinnedEndpointFactory:
    """Hands the Agent the pinned endpoint for the one URL it was built for."""

    def __init__(self, endpoint: _PinnedEndpoint) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: Any) -> _PinnedEndpoint:
        return self._endpoint


@implementer(IAgent)
class _IdentityEncodingAgent:
    """Innermost agent: asks for and accepts only unencoded bodies.

    treq's content decoder adds ``Accept-Encoding: gzip``; dropping it here means a compliant
    server sends plain bytes, and a body that arrives compressed anyway is refused rather than
    inflated without bound.
    """

    def __init__(self, agent: IAgent) -> None:
        self._agent: Any = agent  # zope interface methods confuse mypy without the zope plugin

    def request(self, method: bytes, uri: bytes, headers: Optional[Headers] = None,
                bodyProducer: Any = None) -> defer.Deferred:
        headers = headers.copy() if headers is not None else Headers()
        headers.removeHeader(b"accept-encoding")
        headers.setRawHeaders(b"accept-encoding", [b"identity"])
        d = self._agent.request(method, uri, headers, bodyProducer)
        d.addCallback(self._check)
        return d

    @staticmethod
    def _check(response: Any) -> IResponse:
        encodings = response.headers.getRawHeaders(b"content-encoding") or []
        if any(e.strip().lower() not in (b"", b"identity") for e in encodings):
            response.deliverBody(_Discard())
            raise HTTPFetchError("response uses a content encoding that was not requested")
        return response


class _Discard(Protocol):
    """Drops the connection of a response we will not read."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        cast(Any, self.transport).stopProducing()  # the HTTP client's TCP transport is a producer


class _CappedBody(Protocol):
    """Reads a body into memory, aborting the connection once it exceeds ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._chunks: list[bytes] = []
        self.finished: defer.Deferred[bytes] = defer.Deferred(canceller=self._cancel)

    def _cancel(self, d: defer.Deferred) -> None:
        if self.transport is not None:
            cast(Any, self.transport).stopProducing()  # the HTTP client's TCP transport is a producer

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._chunks.clear()
            assert self.transport is not None
            cast(Any, self.transport).stopProducing()  # the HTTP client's TCP transport is a producer
            self.finished.errback(HTTPFetchError("response body too large"))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self._chunks))
        else:
            self.finished.errback(HTTPFetchError("connection lost while reading the response"))


class SafeHTTPClient:
    """GET and POST with the SSRF, TLS, redirect, size and time limits described in the module docstring.

    ``allow_private`` lifts the address and host-name checks (for tests and private deployments);
    ``tls_trust_root`` replaces platform trust (an ``IOpenSSLTrustRoot``, e.g. a test CA).
    """

    def __init__(self, reactor: Any, allow_private: bool = False, timeout: float = 10.0,
                 max_bytes: int = 1_048_576, tls_trust_root: Any = None) -> None:
        self._reactor = reactor
        self.allow_private = allow_private
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._trust_root = tls_trust_root

    def get(self, url: str, headers: Optional[dict[str, str]] = None) -> defer.Deferred[HTTPResponse]:
        """Fetch ``url``; fails with :class:`UnsafeURLError` or :class:`HTTPFetchError`."""
        return self._guarded(url, self._request("GET", url, headers or {}, None))

    def post(self, url: str, body: bytes, headers: Optional[dict[str, str]] = None) -> defer.Deferred[HTTPResponse]:
        """POST ``body`` to ``url`` under the same guards as :meth:`get`.

        The body may hold a secret (SASL PLAIN's app password): it is never logged, and failures
        carry only a short reason.
        """
        return self._guarded(url, self._request("POST", url, headers or {}, body))

    def _guarded(self, url: str, work: Any) -> defer.Deferred[HTTPResponse]:
        d: defer.Deferred[HTTPResponse] = defer.Deferred.fromCoroutine(work)
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        deadline = self._reactor.callLater(self.timeout, expire)

        def stop_deadline(result: Any) -> Any:
            if deadline.active():
                deadline.cancel()
            return result

        d.addBoth(stop_deadline)
        d.addErrback(self._translate, url, expired)
        return d

    def _translate(self, failure: Failure, url: str, expired: list[bool]) -> Failure:
        if expired:
            reason = "timed out"
        elif failure.check(UnsafeURLError, HTTPFetchError, defer.CancelledError):
            return failure
        else:
            reason = "connection failed"
        log.debug("fetch of {url} failed: {error}", url=url, error=failure.getErrorMessage())
        return Failure(HTTPFetchError(reason))

    def check_url(self, url: str) -> tuple[hyperlink.URL, str]:
        """Parse and vet ``url`` without network access; return it and its ASCII host.

        Raises :class:`UnsafeURLError`.
        """
        try:
            parsed = hyperlink.URL.from_text(url).to_uri()
        except (ValueError, TypeError):
            raise UnsafeURLError("malformed URL") from None
        if parsed.scheme not in ("http", "https"):
            raise UnsafeURLError("only http and https URLs may be fetched")
        if parsed.userinfo:
            raise UnsafeURLError("URLs with credentials are refused")
        host = parsed.host.rstrip(".").lower()
        if not host:
            raise UnsafeURLError("URL has no host")
        if not self.allow_private:
            if host == "localhost" or host.endswith(_BLOCKED_NAME_SUFFIXES):
                raise UnsafeURLError("local host names are refused")
            ip = _parse_ip(host)
            if ip is not None and not is_public_address(ip):
                raise UnsafeURLError("private or local address refused")
        return parsed, host

    async def _resolve(self, host: str, port: int) -> list[_IP]:
        literal = _parse_ip(host)
        if literal is not None:
            return [literal]
        collect = _Collect()
        self._reactor.nameResolver.resolveHostName(collect, host, portNumber=port)
        found = await collect.done
        addresses: list[_IP] = []
        for text in found:
            ip = _parse_ip(text)
            if ip is None:
                raise UnsafeURLError("host resolved to an unparsable address")
            addresses.append(ip)
        if not addresses:
            raise HTTPFetchError("host name did not resolve")
        if not self.allow_private and not all(is_public_address(ip) for ip in addresses):
            raise UnsafeURLError("host resolves to a private or local address")
        return addresses

    async def _request(self, method: str, url: str, headers: dict[str, str], body: Optional[bytes]) -> HTTPResponse:
        parsed, host = self.check_url(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = await self._resolve(host, port)
        endpoint = _PinnedEndpoint(self._reactor, addresses, port,
                                   host if parsed.scheme == "https" else None,
                                   self._trust_root, self.timeout)
        pool = HTTPConnectionPool(self._reactor, persistent=False)
        agent = Agent.usingEndpointFactory(self._reactor, _PinnedEndpointFactory(endpoint), pool=pool)
        client = HTTPClient(cast(IAgent, _IdentityEncodingAgent(agent)))
        request_headers: Any = dict(headers)
        response: Any = await client.request(method, parsed.to_text(), headers=request_headers, data=body,
                                             allow_redirects=False, unbuffered=True)
        status = int(response.code)
        if 300 <= status < 400:
            response.deliverBody(_Discard())
            raise HTTPFetchError(f"redirect refused (HTTP {status})")
        length = response.length
        if isinstance(length, int) and length > self.max_bytes:
            response.deliverBody(_Discard())
            raise HTTPFetchError("response body too large")
        reader = _CappedBody(self.max_bytes)
        response.deliverBody(reader)
        body = await reader.finished
        names: dict[str, str] = {}
        for name, values in response.headers.getAllRawHeaders():
            if values:
                names[name.decode("latin-1").lower()] = values[-1].decode("latin-1")
        return HTTPResponse(status, names, body)


def _parse_ip(text: str) -> Optional[_IP]:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


__all__ = ["SafeHTTPClient", "HTTPResponse", "UnsafeURLError", "HTTPFetchError", "is_public_address"]
