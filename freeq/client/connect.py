"""Open a registered (and, with a credential, authenticated) connection to a freeq server."""
from __future__ import annotations

from typing import Any, Iterable, Optional, Union, cast

from twisted.internet import defer, endpoints, ssl

from freeq.client.auth import Credential
from freeq.client.protocol import DEFAULT_CAPS, FreeqClient, FreeqClientFactory

#: ``None`` (the platform's CAs), a path to a PEM file, an ``ssl.Certificate`` or any ``IOpenSSLTrustRoot``.
TrustRoot = Union[None, str, ssl.Certificate, Any]


def _trust_root(trust_root: TrustRoot) -> Any:
    """``None``: the platform's CAs; a path: a PEM file of CA certificates; else used as given."""
    if trust_root is None:
        return ssl.platformTrust()
    if isinstance(trust_root, str):
        with open(trust_root, "rb") as f:
            return ssl.Certificate.loadPEM(f.read())
    return trust_root


def client_endpoint(reactor: Any, host: str, port: int, tls: bool = False, trust_root: TrustRoot = None,
                    server_hostname: Optional[str] = None, timeout: float = 30.0) -> Any:
    """The stream endpoint for ``host:port``; with ``tls`` the certificate is verified against
    ``server_hostname`` (default ``host``) and ``trust_root``."""
    endpoint: Any = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    if not tls:
        return endpoint
    options = ssl.optionsForClientTLS(server_hostname or host, trustRoot=_trust_root(trust_root))
    return endpoints.wrapClientTLS(options, endpoint)


def connect(reactor: Any, host: str, port: int, nick: str, tls: bool = False,
            credential: Optional[Credential] = None, caps: Iterable[str] = DEFAULT_CAPS,
            trust_root: TrustRoot = None, *, server_hostname: Optional[str] = None,
            timeout: Optional[float] = 30.0, **client_kwargs: Any) -> defer.Deferred:
    """Connect, negotiate capabilities, authenticate with ``credential`` (if any) and register.

    Returns a ``Deferred`` that fires with the :class:`FreeqClient` after the welcome burst
    (001 … end of MOTD). It fails with :class:`freeq.client.protocol.SASLFailed` when the server
    refuses a credential (a signer given ``guest_fallback=True`` continues as a guest instead),
    with :class:`freeq.client.protocol.ConnectionClosed` if the server hangs up, and with
    ``twisted.internet.defer.TimeoutError`` after ``timeout`` seconds (the connection is dropped).
    Further keyword arguments go to :class:`FreeqClient` (``username``, ``realname``,
    ``password``, ``guest_fallback``, ``auto_msgsig``).
    """
    client_kwargs.setdefault("clock", reactor)
    factory = FreeqClientFactory(nick, credential=credential, caps=tuple(caps), **client_kwargs)
    endpoint = client_endpoint(reactor, host, port, tls=tls, trust_root=trust_root,
                               server_hostname=server_hostname, timeout=timeout or 30.0)

    async def run() -> FreeqClient:
        client: FreeqClient = await endpoint.connect(factory)
        try:
            return await client.registered
        except defer.CancelledError:
            if client.is_connected and client.transport is not None:
                cast(Any, client.transport).abortConnection()  # a TCP/TLS transport (ITCPTransport)
            raise

    d = defer.ensureDeferred(run())
    if timeout is not None:
        d.addTimeout(timeout, reactor)
    return d


__all__ = ["connect", "client_endpoint"]
