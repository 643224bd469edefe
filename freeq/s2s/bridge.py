"""The iroh S2S bridge: an asyncio loop in a dedicated thread, owned by a Twisted service.

The bridge is transport only. It binds one iroh endpoint (QUIC with the server's Ed25519 key as its
identity), dials the configured peers with back-off, accepts incoming connections, enforces the
allowlist *before any stream is opened or read*, and moves length-prefixed frames between one
bidirectional stream per link and a :class:`LinkListener` in the reactor thread.

Threading (docs/architecture.md, STYLE rule 6): everything iroh runs on the bridge's own asyncio
loop. The reactor calls in with :func:`asyncio.run_coroutine_threadsafe`; everything that comes
out (link up/down, frames, rejections, log lines) goes through ``reactor.callFromThread``. The model
and transports are never touched from the loop thread, and no Deferred wraps the loop's futures.
Start-up waits (bounded) for the endpoint to bind so a bad ``--iroh-port`` fails loudly.
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import threading
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from freeq.logs import security_event
from freeq.s2s.protocol import ALPN, MAX_FRAME, FrameDecoder, FrameError

log = Logger()

#: QUIC application close codes.
CLOSE_NORMAL = 0
CLOSE_UNAUTHORIZED = 1
CLOSE_PROTOCOL = 2
CLOSE_DUPLICATE = 3

REJECT_MESSAGE = "Rejecting S2S connection"


@dataclass(frozen=True)
class PeerAddress:
    """A configured peer: its endpoint id and, optionally, a direct UDP address to dial."""

    endpoint_id: str
    host: Optional[str] = None
    port: Optional[int] = None

    def addresses(self) -> list[str]:
        """Direct addresses in iroh's ``host:port`` form."""
        if self.host is None or self.port is None:
            return []
        return [f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"]


class LinkListener(Protocol):
    """What the bridge reports, always in the reactor thread."""

    def link_up(self, link_id: int, peer_id: str, incoming: bool) -> None:
        """A link to an authenticated, allowed peer is open (no data read yet)."""

    def link_frames(self, link_id: int, payloads: list[bytes]) -> None:
        """Complete frames received on a link, in order."""

    def link_down(self, link_id: int, peer_id: str, reason: str) -> None:
        """A link ended (either side, any cause)."""

    def link_rejected(self, peer_id: str, reason: str) -> None:
        """An incoming connection was refused (already logged by the bridge)."""


class _Link:
    __slots__ = ("link_id", "peer_id", "incoming", "conn", "queue", "tasks", "closing", "reason")

    def __init__(self, link_id: int, peer_id: str, incoming: bool, conn: Any) -> None:
        self.link_id = link_id
        self.peer_id = peer_id
        self.incoming = incoming
        self.conn = conn
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.tasks: list[asyncio.Task[Any]] = []
        self.closing = False
        self.reason = ""


_APP_CLOSE = re.compile(r'ApplicationClose \{ error_code: (\d+), reason: b"((?:[^"\\]|\\.)*)" \}')


def _peer_close_reason(text: str) -> Optional[str]:
    """``closed by peer: <reason> (code N)`` when a stream error says the peer closed the connection."""
    m = _APP_CLOSE.search(text or "")
    if m is None:
        return None
    return f"closed by peer: {m.group(2) or 'no reason'} (code {m.group(1)})"


def _error_text(exc: BaseException) -> str:
    """A one-line description of an iroh (or other) error."""
    message = getattr(exc, "message", None)
    try:
        text = message() if callable(message) else str(exc)
    except Exception:
        text = ""
    text = (text or type(exc).__name__).split("\n")[0]
    if " (/" in text:  # drop Rust source locations
        text = text.split(" (/")[0]
    return text[:200]


def address_ip(addr: str) -> str:
    """The IP of an iroh ``host:port`` (``[v6]:port``) address as the bridge reports it; the text itself when it
    is not one (a relay URL), ``unknown`` when empty."""
    text = (addr or "").strip()
    if text.startswith("[") and "]" in text:
        text = text[1:text.index("]")]
    elif text.count(":") == 1:
        text = text.rsplit(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text[:100] or "unknown"


class IrohBindError(RuntimeError):
    """The iroh endpoint could not bind its UDP socket; the message is one line for the operator."""


def _ipv6_usable() -> bool:
    """Whether this host can bind an IPv6 socket at all (some containers have IPv6 disabled)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def bind_addresses(host: str, port: int, ipv6_usable: bool) -> list[str]:
    """The ``host:port`` strings to bind the iroh endpoint to for ``--iroh-host``/``--iroh-port``.

    iroh always binds both address families: an explicit address replaces only its own family's
    wildcard default, and the bindings cannot clear the other one. So a specific address of one
    family (or ``0.0.0.0``) pins the other family to its loopback address on a free port, which no
    other host can reach; only ``::`` keeps iroh's dual-stack default (all IPv6 and IPv4 addresses).
    """
    ip = ipaddress.ip_address(host)
    if ip.version == 4:
        return [f"{host}:{port}"] + (["[::1]:0"] if ipv6_usable else [])
    if ip.is_unspecified:
        return [f"[{host}]:{port}"]
    return [f"[{host}]:{port}", "127.0.0.1:0"]


class IrohBridgeService(service.Service):
    """Runs the iroh endpoint for S2S links on an asyncio loop in its own thread.

    ``allowed`` is the set of endpoint ids that may connect (``None``: open federation, anyone).
    An empty set refuses every incoming connection (closed federation).
    """

    name = "s2s-bridge"  # type: ignore[assignment]

    def __init__(self, reactor: Any, secret_key: bytes, *, peers: tuple[PeerAddress, ...] = (),
                 allowed: Optional[frozenset[str]] = frozenset(), bind_host: str = "0.0.0.0", port: int = 0,
                 relay_mode: str = "default", max_frame: int = MAX_FRAME, connect_timeout: float = 5.0,
                 backoff_min: float = 1.0, backoff_max: float = 30.0, start_timeout: float = 15.0,
                 dial_yield: Optional[float] = None) -> None:
        self.reactor = reactor
        self._secret = secret_key
        self.peers = {p.endpoint_id: p for p in peers}
        self.allowed = allowed
        self.bind_host = bind_host
        self.port = port
        self.relay_mode = relay_mode
        self.max_frame = max_frame
        self.connect_timeout = connect_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.start_timeout = start_timeout
        #: Seconds this endpoint waits before each dial of a peer with a lower endpoint id (see _dial_loop).
        self.dial_yield = 2 * backoff_min if dial_yield is None else dial_yield
        self.listener: Optional[LinkListener] = None
        from nacl.signing import SigningKey

        self.endpoint_id = SigningKey(secret_key).verify_key.encode().hex()
        self.bound: list[str] = []
        #: Link id -> the peer's address (``host:port`` as iroh reports it), for log lines (reactor side).
        self.addresses: dict[int, str] = {}
        # Loop-thread state (touched only from the loop thread):
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._endpoint: Any = None
        self._links: dict[int, _Link] = {}
        self._by_peer: dict[str, _Link] = {}
        self._held: set[str] = set()
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._next_id = 0
        self._stopping = False
        self._stopped: Optional[Deferred] = None

    # ------------------------------------------------------------------------------------------
    # Reactor side
    # ------------------------------------------------------------------------------------------
    def privilegedStartService(self) -> None:
        """Bind the endpoint before the reactor runs, so a bad ``--iroh-port`` stops ``twistd`` at once."""
        super().privilegedStartService()
        self._bind_once()

    def startService(self) -> None:
        """Start accepting and dialling (binding first if :meth:`privilegedStartService` did not)."""
        super().startService()
        self._bind_once()
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._run(list(self.peers.values())), self._loop)

    def _bind_once(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._stopped = Deferred()
        self._thread = threading.Thread(target=self._thread_main, args=(loop,), name="freeq-iroh", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._bind(), loop)
        try:
            # A bounded start-up wait on plain data (the bound addresses); nothing else crosses this way.
            self.bound = future.result(timeout=self.start_timeout)
        except Exception as e:
            loop.call_soon_threadsafe(loop.stop)
            self._loop = None
            self.running = False
            raise IrohBindError(f"iroh endpoint failed to bind {self.bind_host}:{self.port}: {_error_text(e)}") from None
        log.info("iroh endpoint id {endpoint_id} (S2S on UDP {addrs}, relays {relay}); peers link with "
                 "--s2s-peers {endpoint_id}@<host>:<port>", endpoint_id=self.endpoint_id,
                 addrs=", ".join(self.bound), relay=self.relay_mode)

    def stopService(self) -> Deferred:
        """Close every link with a reason, close the endpoint and stop the loop thread."""
        super().stopService()
        loop, done = self._loop, self._stopped
        if loop is None or done is None:
            return succeed(None)
        self._loop = None
        asyncio.run_coroutine_threadsafe(self._shutdown("server shutting down"), loop)
        # The loop thread fires ``done`` through callFromThread; do not wait forever for it.
        timer = self.reactor.callLater(5.0, _fire, done)
        done.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return done

    def send(self, link_id: int, data: bytes) -> None:
        """Queue one encoded frame (or several, concatenated) on a link."""
        loop = self._loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._enqueue(link_id, data), loop)

    def close_link(self, link_id: int, reason: str, code: int = CLOSE_PROTOCOL) -> None:
        """Close a link, telling the peer ``reason``."""
        loop = self._loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._close(link_id, code, reason), loop)

    def hold_peer(self, peer_id: str, reason: str = "link held") -> None:
        """Drop any link to ``peer_id`` and stop dialling or accepting it until :meth:`release_peer`."""
        loop = self._loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._hold(peer_id, reason), loop)

    def release_peer(self, peer_id: str) -> None:
        """Allow ``peer_id`` again and dial it at once if it is configured."""
        loop = self._loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._release(peer_id), loop)

    def add_peer(self, peer: PeerAddress) -> None:
        """Start dialling another peer (it must be allowed, as for ``--s2s-peers``)."""
        if not self.is_allowed(peer.endpoint_id):
            raise ValueError(f"peer {peer.endpoint_id} is not in the allowlist")
        loop = self._loop
        self.peers[peer.endpoint_id] = peer
        if loop is not None and self.running:
            asyncio.run_coroutine_threadsafe(self._start_dialling(peer), loop)

    def is_allowed(self, peer_id: str) -> bool:
        """Whether the allowlist admits ``peer_id`` (immutable config: safe from either thread)."""
        return self.allowed is None or peer_id in self.allowed

    # Called in the reactor thread via callFromThread:
    def peer_ip(self, link_id: int) -> str:
        """The IP a link's peer connected from (or was dialled at): ``unknown`` when not known (reactor side)."""
        return address_ip(self.addresses.get(link_id, ""))

    def _up(self, link_id: int, peer_id: str, incoming: bool, addr: str = "") -> None:
        self.addresses[link_id] = addr
        log.info("S2S link {link} to {peer} established ({direction})", link=link_id, peer=peer_id,
                 direction="incoming" if incoming else "outgoing")
        if self.listener is not None:
            self.listener.link_up(link_id, peer_id, incoming)

    def _frames(self, link_id: int, payloads: list[bytes]) -> None:
        if self.listener is not None:
            self.listener.link_frames(link_id, payloads)

    def _down(self, link_id: int, peer_id: str, reason: str) -> None:
        self.addresses.pop(link_id, None)
        log.info("S2S link {link} to {peer} closed: {reason}", link=link_id, peer=peer_id, reason=reason)
        if self.listener is not None:
            self.listener.link_down(link_id, peer_id, reason)

    def _rejected(self, peer_id: str, reason: str, addr: str) -> None:
        # The text predates the ip field: monitoring matches "Rejecting S2S connection from <peer id> (<ip>:<port>)".
        security_event(log, "s2s_rejected", address_ip(addr), REJECT_MESSAGE + " from {peer} ({addr}): {reason}",
                       peer=peer_id, addr=addr, reason=reason)
        if self.listener is not None:
            self.listener.link_rejected(peer_id, reason)

    def _log(self, level: str, fmt: str, **kw: Any) -> None:
        self.reactor.callFromThread(getattr(log, level), fmt, **kw)

    # ------------------------------------------------------------------------------------------
    # Loop side
    # ------------------------------------------------------------------------------------------
    def _thread_main(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            done = self._stopped
            if done is not None:
                self.reactor.callFromThread(_fire, done)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _bind(self) -> list[str]:
        import iroh

        if self.relay_mode == "disabled":
            preset, relay = iroh.preset_minimal(), iroh.RelayMode.disabled()
        else:
            preset, relay = iroh.preset_n0(), iroh.RelayMode.default_mode()
        addresses = bind_addresses(self.bind_host, self.port, _ipv6_usable())
        options = iroh.EndpointOptions(preset=_BindPreset(preset, addresses), secret_key=self._secret,
                                       alpns=[ALPN], relay_mode=relay)
        self._endpoint = await iroh.Endpoint.bind(options)
        if str(self._endpoint.id()) != self.endpoint_id:
            raise RuntimeError("iroh endpoint id does not match the key")
        return [a for a in self._endpoint.bound_sockets()]

    async def _run(self, peers: list[PeerAddress]) -> None:
        self._spawn(self._accept_loop())
        for peer in peers:
            await self._start_dialling(peer)

    async def _start_dialling(self, peer: PeerAddress) -> None:
        if peer.endpoint_id in self._wake or self._stopping:
            return
        self._wake[peer.endpoint_id] = asyncio.Event()
        self._spawn(self._dial_loop(peer))

    async def _accept_loop(self) -> None:
        endpoint = self._endpoint
        while not self._stopping:
            try:
                incoming = await endpoint.accept_next()
            except Exception as e:
                self._log("warn", "S2S accept failed: {error}", error=_error_text(e))
                await asyncio.sleep(0.5)
                continue
            if incoming is None:
                return
            self._spawn(self._incoming(incoming))

    async def _incoming(self, incoming: Any) -> None:
        try:
            remote = str(await incoming.remote_addr())
            accepting = await incoming.accept()
            conn = await asyncio.wait_for(accepting.connect(), self.connect_timeout * 2)
        except Exception as e:
            self._log("debug", "S2S incoming handshake failed: {error}", error=_error_text(e))
            return
        peer_id = str(conn.remote_id())
        addr = remote.split("addr=")[-1].rstrip(")") if "addr=" in remote else remote
        reason = None
        if self.allowed is None:
            pass
        elif not self.allowed:
            reason = "federation is closed (no --s2s-allowed-peers; see --s2s-open-federation)"
        elif peer_id not in self.allowed:
            reason = "peer not in --s2s-allowed-peers"
        if reason is None and peer_id in self._held:
            reason = "peer is on hold"
        if reason is None and peer_id == self.endpoint_id:
            reason = "connection from our own endpoint id"
        if reason is not None:
            # Refused before any stream is accepted or read.
            try:
                conn.close(CLOSE_UNAUTHORIZED, b"not authorized")
            except Exception:
                pass
            self.reactor.callFromThread(self._rejected, peer_id, reason, addr)
            return
        await self._run_link(conn, peer_id, incoming=True, addr=addr)

    async def _dial_loop(self, peer: PeerAddress) -> None:
        import iroh

        wake = self._wake[peer.endpoint_id]
        backoff = self.backoff_min
        failures = 0
        # Two servers that list each other dial at once when they start (or come back) together. Of two links,
        # the one dialled by the lower endpoint id is kept (_run_link); a late one replacing a link already in
        # use would split the network for nothing. So the higher id yields: it waits a moment before each dial
        # and dials only if the lower one has not linked in the meantime.
        yields = self.dial_yield > 0 and peer.endpoint_id < self.endpoint_id
        while not self._stopping:
            if yields and peer.endpoint_id not in self._by_peer and peer.endpoint_id not in self._held:
                await asyncio.sleep(self.dial_yield)
            if peer.endpoint_id in self._held or peer.endpoint_id in self._by_peer:
                wake.clear()
                await self._wait(wake, self.backoff_max)
                continue
            try:
                addr = iroh.EndpointAddr(iroh.EndpointId.from_string(peer.endpoint_id), None, peer.addresses())
                conn = await asyncio.wait_for(self._endpoint.connect(addr, ALPN), self.connect_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self._stopping:
                    return
                failures += 1
                if failures <= 3 or failures % 20 == 0:
                    self._log("info", "S2S peer {peer} unreachable ({error}); retrying in {delay:.1f}s",
                              peer=peer.endpoint_id, error=_error_text(e) or "timeout", delay=backoff)
                wake.clear()
                await self._wait(wake, backoff)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            failures = 0
            started = asyncio.get_running_loop().time()
            await self._run_link(conn, peer.endpoint_id, incoming=False, addr=" ".join(peer.addresses()[:1]))
            if asyncio.get_running_loop().time() - started > 10:
                backoff = self.backoff_min
            wake.clear()
            await self._wait(wake, backoff)
            backoff = min(backoff * 2, self.backoff_max)

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def _run_link(self, conn: Any, peer_id: str, incoming: bool, addr: str = "") -> None:
        """Own one connection until it ends: tie-break duplicates, then pump frames both ways."""
        if self._stopping:
            conn.close(CLOSE_NORMAL, b"server shutting down")
            return
        existing = self._by_peer.get(peer_id)
        if existing is not None:
            # Both sides dialled: keep the connection dialled by the lower endpoint id (both agree).
            dialler_low = min(self.endpoint_id, peer_id)
            new_preferred = (peer_id if incoming else self.endpoint_id) == dialler_low
            self._log("info", "S2S peer {peer}: both sides dialled; keeping the link dialled by {dialler}",
                      peer=peer_id, dialler="this server" if dialler_low == self.endpoint_id else "the peer")
            if not new_preferred:
                conn.close(CLOSE_DUPLICATE, b"duplicate link")
                return
            await self._close(existing.link_id, CLOSE_DUPLICATE, "duplicate link replaced")
        self._next_id += 1
        link = _Link(self._next_id, peer_id, incoming, conn)
        self._links[link.link_id] = link
        self._by_peer[peer_id] = link
        try:
            if incoming:
                bi = await asyncio.wait_for(conn.accept_bi(), self.connect_timeout * 2)
            else:
                bi = await conn.open_bi()
        except Exception as e:
            self._forget(link)
            try:
                conn.close(CLOSE_PROTOCOL, b"no stream")
            except Exception:
                pass
            self._log("info", "S2S link to {peer} failed before its stream opened: {error}", peer=peer_id,
                      error=_error_text(e) or "timeout")
            return
        self.reactor.callFromThread(self._up, link.link_id, peer_id, incoming, addr)
        reader = self._spawn(self._reader(link, bi.recv()))
        writer = self._spawn(self._writer(link, bi.send()))
        link.tasks = [reader, writer]
        await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in link.tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*link.tasks, return_exceptions=True)
        if not link.closing:
            link.closing = True
            try:
                conn.close(CLOSE_NORMAL, link.reason.encode()[:100] or b"closed")
            except Exception:
                pass
        reason = _peer_close_reason(link.reason) or link.reason
        self._forget(link)
        self.reactor.callFromThread(self._down, link.link_id, peer_id, reason or "closed")

    def _forget(self, link: _Link) -> None:
        self._links.pop(link.link_id, None)
        if self._by_peer.get(link.peer_id) is link:
            del self._by_peer[link.peer_id]
            wake = self._wake.get(link.peer_id)
            if wake is not None:
                wake.set()

    async def _reader(self, link: _Link, recv: Any) -> None:
        decoder = FrameDecoder(self.max_frame)
        try:
            while True:
                data = await recv.read(65536)
                if not data:
                    link.reason = link.reason or "stream ended by peer"
                    return
                payloads = decoder.feed(data)
                if payloads:
                    self.reactor.callFromThread(self._frames, link.link_id, payloads)
        except FrameError as e:
            link.reason = f"protocol error: {e}"
            link.closing = True
            self._log("warn", "S2S link {link} to {peer}: {error}; closing", link=link.link_id, peer=link.peer_id,
                      error=str(e))
            try:
                link.conn.close(CLOSE_PROTOCOL, str(e).encode()[:100])
            except Exception:
                pass
        except asyncio.CancelledError:
            raise
        except Exception as e:
            link.reason = link.reason or f"stream error: {_error_text(e)}"

    async def _writer(self, link: _Link, send: Any) -> None:
        queue = link.queue
        try:
            while True:
                chunks = [await queue.get()]
                while not queue.empty() and len(chunks) < 256:  # coalesce what is already queued
                    chunks.append(queue.get_nowait())
                await send.write_all(b"".join(chunks))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            link.reason = link.reason or f"stream error: {_error_text(e)}"

    async def _enqueue(self, link_id: int, data: bytes) -> None:
        link = self._links.get(link_id)
        if link is None or link.closing:
            return
        if link.queue.qsize() > 20000:
            await self._close(link_id, CLOSE_PROTOCOL, "send queue overflow (peer too slow)")
            return
        link.queue.put_nowait(data)

    async def _close(self, link_id: int, code: int, reason: str) -> None:
        link = self._links.get(link_id)
        if link is None or link.closing:
            return
        link.closing = True
        link.reason = reason
        try:
            link.conn.close(code, reason.encode("utf-8", "replace")[:100])
        except Exception:
            pass

    async def _hold(self, peer_id: str, reason: str) -> None:
        self._held.add(peer_id)
        link = self._by_peer.get(peer_id)
        if link is not None:
            await self._close(link.link_id, CLOSE_NORMAL, reason)

    async def _release(self, peer_id: str) -> None:
        self._held.discard(peer_id)
        wake = self._wake.get(peer_id)
        if wake is not None:
            wake.set()

    async def _shutdown(self, reason: str) -> None:
        self._stopping = True
        for link in list(self._links.values()):
            await self._close(link.link_id, CLOSE_NORMAL, reason)
        for wake in self._wake.values():
            wake.set()
        for _ in range(50):  # let the links report their end (bounded)
            if not self._links:
                break
            await asyncio.sleep(0.02)
        # Cancel the dialling and accepting loops (and any in-flight connect) before closing the endpoint.
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        if self._endpoint is not None:
            try:
                await asyncio.wait_for(self._endpoint.close(), 1.5)
            except Exception:
                pass
        asyncio.get_running_loop().stop()


def _bind_preset_class() -> Any:
    import iroh

    class BindPreset(iroh.Preset):  # type: ignore[misc]
        """A built-in preset, then exactly the given bind addresses (EndpointOptions takes only one)."""

        def __init__(self, base: Any, addresses: list[str]) -> None:
            self.base = base
            self.addresses = addresses

        def apply(self, builder: Any) -> None:
            self.base.apply(builder)
            for address in self.addresses:
                builder.bind_addr(address)

    return BindPreset


def _BindPreset(base: Any, addresses: list[str]) -> Any:
    """An iroh ``Preset`` applying ``base`` and then binding each of ``addresses`` (loop thread)."""
    return _bind_preset_class()(base, addresses)


def _fire(done: Deferred) -> None:
    if not done.called:
        done.callback(None)
