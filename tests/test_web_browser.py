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

from freeq.core.history import parse_timestamp
from freeq.web.websocket import IRCWebSocketProtocol
from tests.support import IRCClient, Line, ServerFixture, WebFixture, asynctest, sleep, start_server, start_web
from tests.test_sasl import login, new_credential

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


#: The caps of the Python client on the other side of the modern-chat tests.
PY_CAPS = ("message-tags", "server-time", "echo-message", "batch", "draft/multiline", "draft/message-redaction",
           "draft/chathistory", "draft/read-marker")


def li_where(condition: str) -> str:
    """A JavaScript expression: the first message ``li`` (any conversation) for which ``condition`` (over
    ``li``) holds, or undefined."""
    return f"[...document.querySelectorAll('#messages li')].find(li => {condition})"


def by_text(text: str) -> str:
    """A JavaScript condition: a message ``li`` whose text is ``text``."""
    return f"li.dataset.text === {json.dumps(text)}"


class BrowserChatTests(unittest.TestCase):
    """History, conversations, multiline, edits, deletes, reactions and read markers in the bundled web client,
    in headless Chromium against the real server, with a Python IRC client on the other side."""

    timeout = 120

    def setUp(self) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            raise unittest.SkipTest("Chromium is not installed (`apt-get install chromium`)")

    async def start(self) -> tuple[ServerFixture, WebFixture, BrowserSession]:
        srv = await start_server(self, flood_rate=0)
        web = await start_web(self, srv)
        self.addCleanup(lambda: defer.ensureDeferred(no_web_sessions(srv)))
        browser = BrowserSession(self)
        await browser.start()
        self.browser = browser
        return srv, web, browser

    async def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page."""
        return await self.browser.cdp.evaluate(expression)  # type: ignore[union-attr]

    async def type_and_send(self, text: str) -> None:
        """Put ``text`` in the compose box and send it as the user would (Enter)."""
        await self.js(f"document.getElementById('input').value = {json.dumps(text)}; "
                      "document.getElementById('input').dispatchEvent(new KeyboardEvent('keydown', "
                      "{key: 'Enter', bubbles: true, cancelable: true})); true")

    async def joined(self, py: IRCClient, nick: str, channel: str) -> None:
        """Wait until ``py`` sees ``nick`` join ``channel`` and the page shows the channel."""
        await py.expect(lambda l: l.command == "JOIN" and (l.source or "").startswith(nick + "!")
                        and l.params[0] == channel, timeout=20)
        await self.browser.wait_for(f"freeq.active === {json.dumps(channel.lower())}")

    async def say(self, py: IRCClient, target: str, text: str, tags: str = "") -> Line:
        """``py`` sends ``text`` to ``target``; returns its echo (with the msgid). Messages get distinct
        times (read markers have millisecond precision)."""
        py.send(f"{tags}PRIVMSG {target} :{text}")
        line = await py.expect(lambda l: l.command == "PRIVMSG" and (l.source or "").startswith(py.nick + "!")
                               and l.params[-1] == text)
        await sleep(0.005)
        return line

    @asynctest
    async def test_history_on_join_shows_edits_deletes_and_reactions(self) -> None:
        """Joining asks CHATHISTORY LATEST after 366; the batch fills the channel in order, with an edited
        message's latest text marked edited, a deleted one left out and stored reactions counted."""
        srv, web, browser = await self.start()
        py = await srv.client("pybot", caps=PY_CAPS)
        py.send("JOIN #hist")
        await py.expect("366")
        first = await self.say(py, "#hist", "first words")
        typo = await self.say(py, "#hist", "helo wrld")
        py.send(f"@+draft/edit={typo.tags['msgid']} PRIVMSG #hist :hello world")
        await py.expect(lambda l: l.command == "PRIVMSG" and l.params[-1] == "hello world")
        gone = await self.say(py, "#hist", "regrettable")
        py.send(f"REDACT #hist {gone.tags['msgid']}")
        await py.expect("REDACT")
        py.send(f"@+draft/react=👍;+draft/reply={first.tags['msgid']} TAGMSG #hist")
        await py.expect("TAGMSG")
        await self.say(py, "#hist", "last words")

        await browser.open(f"{web.url}/?nick=webby&channel=%23hist&autoconnect=1")
        await self.joined(py, "webby", "#hist")
        texts = await browser.wait_for(
            "(() => { const t = [...document.querySelectorAll('#messages li.privmsg')].map(li => li.dataset.text);"
            " return t.length >= 3 ? t : null; })()")
        self.assertEqual(texts, ["first words", "hello world", "last words"])
        edited = await self.js("({..." + li_where(by_text("hello world")) + ".dataset})")
        self.assertEqual(edited.get("edited"), "1")
        self.assertEqual(edited.get("msgid"), typo.tags["msgid"])
        chip = await self.js("({..." + li_where(by_text("first words")) + ".querySelector('.reaction').dataset})")
        self.assertEqual(chip, {"emoji": "👍", "count": "1"})
        self.assertIsNone(await self.js(li_where(by_text("regrettable"))))

    @asynctest
    async def test_several_channels_and_private_chats(self) -> None:
        """/join adds a second channel to the list; a message to the one not shown counts as unread there;
        a private message opens a chat; clicking a member's nick opens one; /msg sends to it."""
        srv, web, browser = await self.start()
        py = await srv.client("pybot", caps=PY_CAPS)
        for chan in ("#one", "#two"):
            py.send(f"JOIN {chan}")
            await py.expect("366")
        await browser.open(f"{web.url}/?nick=webby&channel=%23one&autoconnect=1")
        await self.joined(py, "webby", "#one")
        await self.type_and_send("/join #two")
        await self.joined(py, "webby", "#two")
        names = await self.js("[...document.querySelectorAll('#convs li')].map(li => li.dataset.name)")
        self.assertEqual(names, ["*", "#one", "#two"])

        await self.say(py, "#one", "while you were away")
        await browser.wait_for("document.querySelector('#convs li[data-key=\"#one\"]').dataset.unread === '1'")
        self.assertEqual(await self.js("document.querySelector('#convs li[data-key=\"#one\"] .unread').textContent"),
                         "1")
        await self.js("document.querySelector('#convs li[data-key=\"#one\"]').click(); true")
        await browser.wait_for("freeq.active === '#one' && "
                               "document.querySelector('#convs li[data-key=\"#one\"]').dataset.unread === '0'")
        shown = await self.js("[...document.querySelectorAll('#messages ol')].filter(ol => !ol.hidden)"
                              ".map(ol => ol.dataset.conv)")
        self.assertEqual(shown, ["#one"])

        py.send("PRIVMSG webby :psst")
        await browser.wait_for("document.querySelector('#convs li[data-key=\"pybot\"]')?.dataset.unread === '1'")
        self.assertEqual(await self.js("freeq.active"), "#one")
        await browser.wait_for("!!" + li_where("li.closest('ol').dataset.conv === 'pybot' && li.dataset.text === 'psst'"))

        await self.js("document.querySelector('#members li[data-nick=\"pybot\"]').click(); true")
        await browser.wait_for("freeq.active === 'pybot'")
        await self.type_and_send("and back")
        line = await py.expect(lambda l: l.command == "PRIVMSG" and (l.source or "").startswith("webby!"))
        self.assertEqual(line.params, ["pybot", "and back"])
        await browser.wait_for("!!" + li_where("li.closest('ol').dataset.conv === 'pybot' && li.dataset.text === 'and back'"))

        await self.type_and_send("/msg carol hi there")
        await browser.wait_for("freeq.active === 'carol'")

    @asynctest
    async def test_private_chat_history_for_signed_in_users(self) -> None:
        """A signed-in page that comes back and opens a private chat with /query gets its stored history
        (CHATHISTORY LATEST <nick>), its own side included."""
        srv, web, browser = await self.start()
        py = await login(srv, "pyid", new_credential(), caps="message-tags server-time echo-message batch")
        py.nick = "pyid"
        py.send("JOIN #dm")
        await py.expect("366")
        url = f"{web.url}/?nick=webdid&channel=%23dm&auth=didkey&autoconnect=1"
        await browser.open(url)
        await self.joined(py, "webdid", "#dm")
        await self.say(py, "webdid", "remember this")
        await browser.wait_for("!!" + li_where("li.closest('ol').dataset.conv === 'pyid' && " + by_text("remember this")))
        await self.js("document.querySelector('#convs li[data-key=\"pyid\"]').click(); true")
        await self.type_and_send("and this")
        await py.expect(lambda l: l.command == "PRIVMSG" and l.params == ["pyid", "and this"])
        await self.js("document.querySelector('#convs li[data-key=\"#dm\"]').click(); true")
        await self.say(py, "webdid", "unseen")
        await browser.wait_for("document.querySelector('#convs li[data-key=\"pyid\"]').dataset.unread === '1'")

        await self.js("freeq.disconnect(); true")
        await py.expect(lambda l: l.command == "QUIT" and (l.source or "").startswith("webdid!"), timeout=20)
        await browser.open(url)
        await self.joined(py, "webdid", "#dm")
        self.assertIsNone(await self.js("document.querySelector('#convs li[data-key=\"pyid\"]')"))
        await self.type_and_send("/query pyid")
        await browser.wait_for("freeq.active === 'pyid'")
        texts = await browser.wait_for(
            "(() => { const t = [...document.querySelectorAll('#messages ol[data-conv=\"pyid\"] li.privmsg')]"
            ".map(li => li.dataset.nick + ': ' + li.dataset.text); return t.length >= 2 ? t : null; })()")
        self.assertEqual(texts, ["pyid: remember this", "webdid: and this", "pyid: unseen"])
        # the chat's read marker (asked with MARKREAD pyid; its reply may come after the history) puts the
        # boundary before the one not yet seen
        await browser.wait_for("document.querySelector('#messages ol[data-conv=\"pyid\"] .unread-marker')"
                               "?.nextElementSibling?.dataset.text === 'unseen'")

    @asynctest
    async def test_multiline_out_and_in(self) -> None:
        """Shift+Enter makes a new line; Enter sends the lines as one draft/multiline batch; a batch from the
        other side shows as one message."""
        srv, web, browser = await self.start()
        py = await srv.client("pybot", caps=PY_CAPS)
        py.send("JOIN #ml")
        await py.expect("366")
        await browser.open(f"{web.url}/?nick=webby&channel=%23ml&autoconnect=1")
        await self.joined(py, "webby", "#ml")
        cdp = browser.cdp
        assert cdp is not None
        await self.js("document.getElementById('input').focus(); true")
        await cdp.call("Input.insertText", text="first line")
        for kind in ("keyDown", "keyUp"):
            await cdp.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                           modifiers=8, **({"text": "\r"} if kind == "keyDown" else {}))
        await cdp.call("Input.insertText", text="  second line")
        self.assertEqual(await self.js("document.getElementById('input').value"), "first line\n  second line")
        for kind in ("keyDown", "keyUp"):
            await cdp.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                           **({"text": "\r"} if kind == "keyDown" else {}))
        opener = await py.expect(lambda l: l.command == "BATCH" and l.params[0].startswith("+"))
        self.assertEqual(opener.params[1:], ["draft/multiline", "#ml"])
        self.assertTrue((opener.source or "").startswith("webby!"))
        lines = await py.collect_until(lambda l: l.command == "BATCH" and l.params[0] == "-" + opener.params[0][1:])
        self.assertEqual([l.params for l in lines[:-1]], [["#ml", "first line"], ["#ml", "  second line"]])
        await browser.wait_for("!!" + li_where("li.dataset.nick === 'webby' && " + by_text("first line\n  second line")))
        self.assertEqual(await self.js("document.getElementById('input').value"), "")

        long_line = "x" * 900
        await self.type_and_send("short\n" + long_line)
        opener = await py.expect(lambda l: l.command == "BATCH" and l.params[0].startswith("+"))
        lines = await py.collect_until(lambda l: l.command == "BATCH" and l.params[0] == "-" + opener.params[0][1:])
        self.assertEqual("".join(("" if "draft/multiline-concat" in l.tags else "\n") + l.params[1]
                                 for l in lines[:-1]), "\nshort\n" + long_line)

        py.send("BATCH +b1 draft/multiline #ml")
        py.send("@batch=b1 PRIVMSG #ml :from python")
        py.send("@batch=b1 PRIVMSG #ml :")
        py.send("@batch=b1 PRIVMSG #ml :<b>not bold</b>")
        py.send("BATCH -b1")
        await browser.wait_for("!!" + li_where("li.dataset.nick === 'pybot' && "
                                        + by_text("from python\n\n<b>not bold</b>")))
        self.assertEqual(await self.js(li_where("li.dataset.nick === 'pybot'") + ".querySelectorAll('b').length"), 0)
        self.assertEqual(await self.js("document.querySelectorAll('#messages li.privmsg').length"), 3)

    @asynctest
    async def test_edit_and_delete(self) -> None:
        """The page edits its own message (+draft/edit) and deletes it (REDACT); the other side's edit and
        delete show on receipt."""
        srv, web, browser = await self.start()
        py = await srv.client("pybot", caps=PY_CAPS)
        py.send("JOIN #ed")
        await py.expect("366")
        await browser.open(f"{web.url}/?nick=webby&channel=%23ed&autoconnect=1")
        await self.joined(py, "webby", "#ed")
        await self.type_and_send("helo")
        sent = await py.expect(lambda l: l.command == "PRIVMSG" and l.params == ["#ed", "helo"])
        msgid = sent.tags["msgid"]
        await browser.wait_for(li_where(by_text("helo")) + f"?.dataset.msgid === {json.dumps(msgid)}")
        self.assertIsNone(await self.js(li_where("li.dataset.nick === 'pybot'")))

        await self.js(li_where(by_text("helo")) + ".querySelector('button.edit').click(); true")
        self.assertEqual(await self.js("document.getElementById('input').value"), "helo")
        await self.type_and_send("hello")
        edit = await py.expect(lambda l: l.command == "PRIVMSG" and (l.source or "").startswith("webby!"))
        self.assertEqual(edit.params, ["#ed", "hello"])
        self.assertEqual(edit.tags.get("+draft/edit"), msgid)
        await browser.wait_for(li_where(f"li.dataset.msgid === {json.dumps(msgid)}") +
                               "?.dataset.edited === '1'")
        self.assertEqual(await self.js(li_where(f"li.dataset.msgid === {json.dumps(msgid)}") + ".dataset.text"),
                         "hello")
        self.assertEqual(await self.js("document.querySelectorAll('#messages li.privmsg').length"), 1)

        await self.js(li_where(by_text("hello")) + ".querySelector('button.delete').click(); true")
        redact = await py.expect("REDACT")
        self.assertEqual(redact.params[:2], ["#ed", msgid])
        await browser.wait_for(li_where(f"li.dataset.msgid === {json.dumps(msgid)}") + "?.dataset.deleted === '1'")
        self.assertEqual(await self.js(li_where(f"li.dataset.msgid === {json.dumps(msgid)}") +
                                       ".querySelector('.text').textContent"), "(message deleted)")

        theirs = await self.say(py, "#ed", "their typo")
        their_id = theirs.tags["msgid"]
        await browser.wait_for("!!" + li_where(by_text("their typo")))
        self.assertIsNone(await self.js(li_where(by_text("their typo")) + ".querySelector('button.edit')"))
        py.send(f"@+draft/edit={their_id} PRIVMSG #ed :their fix")
        await browser.wait_for(li_where(f"li.dataset.msgid === {json.dumps(their_id)}") +
                               "?.dataset.text === 'their fix'")
        py.send(f"REDACT #ed {their_id}")
        await browser.wait_for(li_where(f"li.dataset.msgid === {json.dumps(their_id)}") + "?.dataset.deleted === '1'")

    @asynctest
    async def test_reactions(self) -> None:
        """The page reacts (TAGMSG +draft/react with +draft/reply) and takes it back; the other side's
        reactions are counted, and a REDACT of a reaction takes it away."""
        srv, web, browser = await self.start()
        py = await srv.client("pybot", caps=PY_CAPS)
        py.send("JOIN #re")
        await py.expect("366")
        await browser.open(f"{web.url}/?nick=webby&channel=%23re&autoconnect=1")
        await self.joined(py, "webby", "#re")
        line = await self.say(py, "#re", "react to me")
        msgid = line.tags["msgid"]
        target = li_where(by_text("react to me"))
        await browser.wait_for("!!" + target)

        await self.js(target + ".querySelector('button.react').click(); " + target +
                      ".querySelector('.picker button').click(); true")
        reaction = await py.expect(lambda l: l.command == "TAGMSG" and (l.source or "").startswith("webby!"))
        self.assertEqual(reaction.params, ["#re"])
        self.assertEqual((reaction.tags.get("+draft/react"), reaction.tags.get("+draft/reply")), ("👍", msgid))
        await browser.wait_for(target + "?.querySelector('.reaction[data-emoji=\"👍\"]')?.dataset.count === '1'")

        py.send(f"@+draft/react=👍;+draft/reply={msgid} TAGMSG #re")
        await browser.wait_for(target + "?.querySelector('.reaction[data-emoji=\"👍\"]')?.dataset.count === '2'")
        py.send(f"@+draft/react=🎉;+draft/reply={msgid} TAGMSG #re")
        party = await py.expect(lambda l: l.command == "TAGMSG" and l.tags.get("+draft/react") == "🎉")
        await browser.wait_for(target + "?.querySelector('.reaction[data-emoji=\"🎉\"]')?.dataset.count === '1'")
        py.send(f"REDACT #re {party.tags['msgid']}")
        await browser.wait_for(target + " && !" + target + ".querySelector('.reaction[data-emoji=\"🎉\"]')")

        await self.js(target + ".querySelector('.reaction[data-emoji=\"👍\"]').click(); true")
        unreact = await py.expect(lambda l: l.command == "TAGMSG" and (l.source or "").startswith("webby!"))
        self.assertEqual((unreact.tags.get("+freeq.at/unreact"), unreact.tags.get("+draft/reply")), ("👍", msgid))
        await browser.wait_for(target + "?.querySelector('.reaction[data-emoji=\"👍\"]')?.dataset.count === '1'")
        self.assertEqual(await self.js(target + ".querySelector('.reaction').title"), "pybot")

    @asynctest
    async def test_replies(self) -> None:
        """Reply on a message sends the next one with +draft/reply=<msgid>; a received reply shows what it
        answers."""
        srv, web, browser = await self.start()
        py = await srv.client("pybot", caps=PY_CAPS)
        py.send("JOIN #rp")
        await py.expect("366")
        await browser.open(f"{web.url}/?nick=webby&channel=%23rp&autoconnect=1")
        await self.joined(py, "webby", "#rp")
        question = await self.say(py, "#rp", "question?")
        await browser.wait_for("!!" + li_where(by_text("question?")))
        await self.js(li_where(by_text("question?")) + ".querySelector('button.reply').click(); true")
        await self.type_and_send("answer")
        answer = await py.expect(lambda l: l.command == "PRIVMSG" and (l.source or "").startswith("webby!"))
        self.assertEqual(answer.params, ["#rp", "answer"])
        self.assertEqual(answer.tags.get("+draft/reply"), question.tags["msgid"])
        await browser.wait_for(li_where(by_text("answer")) + "?.querySelector('.reply-to')?.textContent === "
                               + json.dumps("↪ pybot: question?"))
        await self.type_and_send("no longer a reply")
        plain = await py.expect(lambda l: l.command == "PRIVMSG" and (l.source or "").startswith("webby!"))
        self.assertNotIn("+draft/reply", plain.tags)

        await self.say(py, "#rp", "thanks", tags=f"@+draft/reply={answer.tags['msgid']} ")
        await browser.wait_for(li_where(by_text("thanks")) + "?.querySelector('.reply-to')?.textContent === "
                               + json.dumps("↪ webby: answer"))

    @asynctest
    async def test_read_marker_boundary_and_unread_count(self) -> None:
        """Viewing a channel sends MARKREAD with its newest message's time; a signed-in page that comes back
        gets the marker on join and shows the unread boundary before the first message after it (and an
        unread count for a channel not on screen), then moves the marker on."""
        srv, web, browser = await self.start()
        py = await srv.client("pybot", caps=PY_CAPS)
        for chan in ("#rm", "#side"):
            py.send(f"JOIN {chan}")
            await py.expect("366")
        seen = await self.say(py, "#rm", "seen before")
        url = f"{web.url}/?nick=marky&channel=%23rm&auth=didkey&autoconnect=1"
        await browser.open(url)
        await self.joined(py, "marky", "#rm")
        did = srv.server.users["marky"].account
        self.assertTrue(did and did.startswith("did:key:"))
        await browser.wait_for("!!" + li_where(by_text("seen before")))
        seen_ms = parse_timestamp(seen.tags["time"])
        for _ in range(100):
            if srv.server.read_markers.accounts.get(did) and srv.server.read_markers.accounts[did].get("#rm") == seen_ms:
                break
            await sleep(0.05)
        self.assertEqual(srv.server.read_markers.accounts[did].get("#rm"), seen_ms)
        self.assertIsNone(await self.js("document.querySelector('#messages .unread-marker')"))

        await self.js("freeq.disconnect(); true")
        await py.expect(lambda l: l.command == "QUIT" and (l.source or "").startswith("marky!"), timeout=20)
        await sleep(0.01)
        await self.say(py, "#rm", "new one")
        await self.say(py, "#side", "side one")
        last = await self.say(py, "#rm", "new two")

        await browser.open(url)
        await self.joined(py, "marky", "#rm")
        await browser.wait_for("!!" + li_where(by_text("new two")))
        after = await self.js("document.querySelector('#messages .unread-marker')?.nextElementSibling?.dataset.text")
        self.assertEqual(after, "new one")
        before = await self.js("document.querySelector('#messages .unread-marker').previousElementSibling.dataset.text")
        self.assertEqual(before, "seen before")
        last_ms = parse_timestamp(last.tags["time"])
        for _ in range(100):
            if srv.server.read_markers.accounts[did].get("#rm") == last_ms:
                break
            await sleep(0.05)
        self.assertEqual(srv.server.read_markers.accounts[did].get("#rm"), last_ms)

        await self.type_and_send("/join #side")
        await self.joined(py, "marky", "#side")
        await browser.wait_for("!!" + li_where(by_text("side one")))  # on screen, so read
        await self.js("document.querySelector('#convs li[data-key=\"#rm\"]').click(); true")
        await browser.wait_for("freeq.active === '#rm'")
        side_two = await self.say(py, "#side", "side two")
        await self.say(py, "#side", "side three")
        await browser.wait_for("document.querySelector('#convs li[data-key=\"#side\"]').dataset.unread === '2'")
        # the count follows the marker, wherever it moves it from (here: a MARKREAD the page sends itself)
        await self.type_and_send(f"/quote MARKREAD #side timestamp={side_two.tags['time']}")
        await browser.wait_for("document.querySelector('#convs li[data-key=\"#side\"]').dataset.unread === '1'")
