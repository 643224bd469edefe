"""End to end in headless Chromium: the shipped web client talks to a Python IRC client through the server.

Chromium (Debian's ``chromium``; ``make test`` installs it when it can) is driven over the DevTools
protocol with a small CDP client on Autobahn's WebSocket client. The page is the bundled client,
served by the web listener; it connects to ``/irc`` itself.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Optional

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial import unittest

from freeq.web.websocket import IRCWebSocketProtocol
from tests.support import ServerFixture, WebFixture, asynctest, sleep, start_server, start_web

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-allow-origins=*",
]


class _Browser(protocol.ProcessProtocol):
    """The Chromium process: keeps the tail of its stderr, fires ``ended`` when it exits."""

    def __init__(self) -> None:
        self.stderr = b""
        self.ended: defer.Deferred = defer.Deferred()
        self.running = True

    def errReceived(self, data: bytes) -> None:
        self.stderr = (self.stderr + data)[-4000:]

    def processEnded(self, reason: Any) -> None:
        self.running = False
        self.ended.callback(None)


class CDP(WebSocketClientProtocol):
    """A minimal Chrome DevTools Protocol client for one page target."""

    def __init__(self) -> None:
        super().__init__()
        self.next_id = 0
        self.pending: dict[int, defer.Deferred] = {}
        self.opened: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()
        self.console: list[str] = []

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"DevTools connection failed: {reason}"))

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        for d in self.pending.values():
            d.errback(ConnectionError("DevTools connection lost"))
        self.pending.clear()
        self.lost.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        msg = json.loads(payload)
        if "id" in msg:
            d = self.pending.pop(msg["id"], None)
            if d is None:
                return
            if "error" in msg:
                d.errback(RuntimeError(f"CDP error: {msg['error']}"))
            else:
                d.callback(msg.get("result", {}))
        elif msg.get("method") == "Runtime.consoleAPICalled":
            args = msg["params"].get("args", [])
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args)[:500])
        elif msg.get("method") == "Runtime.exceptionThrown":
            self.console.append("exception: " + json.dumps(msg["params"].get("exceptionDetails", {}))[:500])

    def call(self, method: str, **params: Any) -> defer.Deferred:
        """Send one CDP command; the Deferred fires with its result."""
        self.next_id += 1
        d: defer.Deferred = defer.Deferred()
        self.pending[self.next_id] = d
        self.sendMessage(json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        return d

    async def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return its (JSON) value."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page error in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")


class BrowserSession:
    """One headless Chromium with a DevTools connection to its page."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.case = case
        self.process: Optional[_Browser] = None
        self.transport: Any = None
        self.cdp: Optional[CDP] = None

    async def start(self) -> CDP:
        profile = os.path.abspath(self.case.mktemp())
        os.makedirs(profile)
        self.process = _Browser()
        env = {"HOME": profile, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        self.transport = reactor.spawnProcess(self.process, CHROMIUM, [CHROMIUM, *FLAGS,
                                              f"--user-data-dir={profile}", "about:blank"], env=env)
        self.case.addCleanup(lambda: defer.ensureDeferred(self.stop()))
        port_file = os.path.join(profile, "DevToolsActivePort")
        for _ in range(300):
            if os.path.exists(port_file) and open(port_file).read().count("\n") >= 1:
                break
            if not self.process.running:
                break
            await sleep(0.1)
        else:
            raise AssertionError("Chromium did not open its DevTools port: " + self.process.stderr.decode("replace"))
        if not self.process.running:
            raise AssertionError("Chromium exited: " + self.process.stderr.decode("replace"))
        port = int(open(port_file).read().split("\n")[0])
        target = None
        for _ in range(100):
            response = await treq.get(f"http://127.0.0.1:{port}/json/list", persistent=False)
            targets = json.loads(await response.content())
            target = next((t for t in targets if t.get("type") == "page"), None)
            if target is not None:
                break
            await sleep(0.1)
        assert target is not None, "no page target in Chromium"
        factory = WebSocketClientFactory(target["webSocketDebuggerUrl"], reactor=reactor)
        factory.protocol = CDP
        factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
        cdp = await endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
        await cdp.opened
        self.cdp = cdp
        await cdp.call("Runtime.enable")
        await cdp.call("Page.enable")
        return cdp

    async def open(self, url: str) -> None:
        """Navigate the page to ``url`` and wait until the client script has started."""
        assert self.cdp is not None
        await self.cdp.call("Page.navigate", url=url)
        await self.wait_for("typeof window.freeq === 'object' && document.readyState !== 'loading'")

    async def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Poll a JavaScript expression until it is truthy; fail with the page's status and console."""
        assert self.cdp is not None
        waited = 0.0
        while True:
            try:
                value = await self.cdp.evaluate(expression)
            except AssertionError:
                value = None
            if value:
                return value
            if waited >= timeout:
                status = await self.cdp.evaluate(
                    "document.getElementById('status') ? document.getElementById('status').textContent + ' | ' + "
                    "[...document.querySelectorAll('#messages li')].map(li => li.textContent).join(' / ') : ''")
                raise AssertionError(f"page never satisfied {expression!r}; page: {status!r}; "
                                     f"console: {self.cdp.console[-10:]}")
            await sleep(0.1)
            waited += 0.1

    async def stop(self) -> None:
        if self.cdp is not None and self.cdp.state == WebSocketClientProtocol.STATE_OPEN:
            self.cdp.dropConnection(abort=True)
            await self.cdp.lost
        if self.process is not None and self.process.running:
            self.transport.signalProcess("TERM")
            kill = reactor.callLater(10, lambda: self.process.running and self.transport.signalProcess("KILL"))
            await self.process.ended
            if kill.active():
                kill.cancel()


async def no_web_sessions(srv: ServerFixture) -> None:
    """Wait until the server has no WebSocket users left (the browser is gone)."""
    for _ in range(200):
        if not any(isinstance(u.conn, IRCWebSocketProtocol) for u in srv.server.connections):
            return
        await sleep(0.05)


class BrowserClientTests(unittest.TestCase):
    """The bundled web client, in a real browser, with a Python IRC client on the other side."""

    timeout = 120

    def setUp(self) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            raise unittest.SkipTest(
                "Chromium is not installed and could not be installed here (`make test` installs Debian's "
                "chromium when run as root with apt; or run `apt-get install chromium`)")

    async def start(self) -> tuple[ServerFixture, WebFixture, BrowserSession]:
        srv = await start_server(self)
        web = await start_web(self, srv)
        self.addCleanup(lambda: defer.ensureDeferred(no_web_sessions(srv)))
        browser = BrowserSession(self)
        await browser.start()
        return srv, web, browser

    @asynctest
    async def test_guest_page_joins_and_exchanges_messages(self) -> None:
        """A guest in the page joins #browser, sees the Python client, and messages flow both ways."""
        srv, web, browser = await self.start()
        py = await srv.client("pybot", caps=("message-tags",))
        py.send("JOIN #browser")
        await py.expect("366")
        await browser.open(f"{web.url}/?nick=webby&channel=%23browser&autoconnect=1")
        await py.expect(lambda l: l.command == "JOIN" and (l.source or "").startswith("webby!"), timeout=20)
        self.assertIsInstance(srv.server.users["webby"].conn, IRCWebSocketProtocol)
        await browser.wait_for("!!document.querySelector('#members li[data-nick=\"pybot\"]')")

        py.send("PRIVMSG #browser :hello browser")
        await browser.wait_for(
            "[...document.querySelectorAll('#messages li')].some(li => li.dataset.nick === 'pybot' && "
            "li.dataset.text === 'hello browser')")

        await browser.cdp.evaluate(  # type: ignore[union-attr]
            "document.getElementById('input').value = 'hello python'; "
            "document.getElementById('compose').requestSubmit(); true")
        line = await py.expect(lambda l: l.command == "PRIVMSG" and (l.source or "").startswith("webby!"))
        self.assertEqual(line.params, ["#browser", "hello python"])
        await browser.wait_for(
            "[...document.querySelectorAll('#messages li')].some(li => li.dataset.nick === 'webby' && "
            "li.dataset.text === 'hello python')")

    @asynctest
    async def test_did_key_sign_in_shows_account_badges(self) -> None:
        """The page signs in with a did:key made by WebCrypto; peers see the DID; the page shows badges."""
        srv, web, browser = await self.start()
        py = await srv.client("pybot", caps=("extended-join", "account-tag", "message-tags"))
        py.send("JOIN #ids")
        await py.expect("366")
        await browser.open(f"{web.url}/?nick=keyuser&channel=%23ids&auth=didkey&autoconnect=1")
        join = await py.expect(lambda l: l.command == "JOIN" and (l.source or "").startswith("keyuser!"), timeout=20)
        did = join.params[1]
        self.assertTrue(did.startswith("did:key:z6Mk"), join.raw)
        self.assertEqual(srv.server.users["keyuser"].account, did)
        identity = await browser.wait_for("document.getElementById('identity').textContent")
        self.assertEqual(identity, f"Signed in as {did}")
        await browser.wait_for(f"document.querySelector('#members li[data-nick=\"keyuser\"]')?.dataset.account "
                               f"=== {json.dumps(did)}")
        await browser.cdp.evaluate(  # type: ignore[union-attr]
            "document.getElementById('input').value = 'signed hello'; "
            "document.getElementById('compose').requestSubmit(); true")
        line = await py.expect(lambda l: l.command == "PRIVMSG" and (l.source or "").startswith("keyuser!"))
        self.assertEqual(line.tags.get("account"), did)
        await browser.wait_for(
            "[...document.querySelectorAll('#messages li')].some(li => li.dataset.nick === 'keyuser' && "
            f"li.dataset.account === {json.dumps(did)} && li.querySelector('.badge'))")
