"""The Python SDK's modern-chat helpers: labeled requests, CHATHISTORY, MONITOR, reconnect and web tokens.

Pure parts (reply collection, history assembly, back-off, broker signatures, the web-token credential) are
tested directly; the helpers against a real server over loopback sockets (the two-server scenario is
tests/test_s2s_modern_chat.py).
"""
from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from freeq.client.connection import DEFAULT_CAPS
from freeq.client.errors import ClientError, IRCError
from freeq.client.history import ReplyCollector, history_messages, history_ref
from freeq.client.reconnect import Reconnector, backoff_delay
from freeq.client.webtoken import WebTokenCredential, broker_headers, fetch_web_token, valid_token
from freeq.core.caps import CAPABILITIES
from freeq.irc.parser import Message, parse
from freeq.web.broker import broker_signature
from tests.s2s_support import wait_for
from tests.support import asynctest, sleep, start_server, start_web
from tests.test_client_sdk import FakeClient, close_client, sdk
from tests.test_read_marker import NO_NETWORK

SECRET = "sdk helper secret"
DID = "did:plc:sdkhelpersaaaaaaaaaaaaaa"


def lines(*raw: str) -> list[Message]:
    out = []
    for text in raw:
        msg = parse(text)
        assert msg is not None
        out.append(msg)
    return out


class DefaultCapsTests(unittest.TestCase):
    """What the SDK asks for."""

    def test_modern_caps_requested_when_offered(self) -> None:
        """Every modern-chat cap is in DEFAULT_CAPS, freeq offers each, and the client requests them."""
        for cap in ("batch", "labeled-response", "draft/chathistory", "draft/multiline", "draft/message-redaction",
                    "draft/read-marker", "draft/metadata-2", "extended-monitor"):
            self.assertIn(cap, DEFAULT_CAPS)
            self.assertIn(cap, CAPABILITIES)
        self.assertNotIn("echo-message", DEFAULT_CAPS)  # opt-in: it changes what comes back
        c = FakeClient()
        c.sent()
        c.feed(":srv CAP * LS :batch draft/read-marker draft/metadata-2=max-subs=10 echo-message")
        self.assertEqual(c.sent(), ["CAP REQ :batch draft/read-marker draft/metadata-2"])


class ReplyCollectorTests(unittest.TestCase):
    """Gathering one answer out of the line stream."""

    def test_single_line_answer(self) -> None:
        c = ReplyCollector(lambda m: (m.tags or {}).get("label") == "L")
        other, ack = lines(":srv NOTICE x :unrelated", "@label=L :srv ACK")
        self.assertFalse(c.feed(other))
        self.assertTrue(c.feed(ack))
        self.assertEqual(c.lines, [ack])

    def test_batch_with_nested_batch_and_interleaved_lines(self) -> None:
        c = ReplyCollector(lambda m: (m.tags or {}).get("label") == "L")
        stream = lines("@label=L :srv BATCH +o labeled-response", "@batch=o :srv NOTICE me :one",
                       ":other PRIVMSG #c :live, not ours", "@batch=o :srv BATCH +i draft/multiline #c",
                       "@batch=i :a PRIVMSG #c :x", ":srv BATCH -i", ":srv BATCH -o")
        done = [c.feed(m) for m in stream]
        self.assertEqual(done, [False] * 6 + [True])
        self.assertNotIn(stream[2], c.lines)
        self.assertEqual(len(c.lines), 6)

    def test_bounded(self) -> None:
        c = ReplyCollector(lambda m: m.command == "BATCH", max_lines=3)
        c.feed(lines(":srv BATCH +o chathistory #c")[0])
        for _ in range(10):
            c.feed(lines("@batch=o :a PRIVMSG #c :x")[0])
        self.assertEqual(len(c.lines), 3)
        self.assertTrue(c.overflowed)
        self.assertTrue(c.feed(lines(":srv BATCH -o")[0]))


class HistoryAssemblyTests(unittest.TestCase):
    """CHATHISTORY lines -> messages."""

    def test_plain_and_multiline_rows_in_order(self) -> None:
        got = history_messages(lines(
            ":srv BATCH +o chathistory #c",
            "@batch=o;msgid=1;time=2026-01-01T00:00:00.000Z :a!u@h PRIVMSG #c :first",
            "@batch=o;msgid=2;+freeq.at/reactions=x:b :srv BATCH +i draft/multiline #c",
            "@batch=i :b!u@h NOTICE #c :two",
            "@batch=i;draft/multiline-concat :b!u@h NOTICE #c :-part",
            "@batch=i :b!u@h NOTICE #c :lines",
            ":srv BATCH -i",
            "@batch=o;msgid=3 :c!u@h PRIVMSG #c :last",
            ":srv BATCH -o"))
        self.assertEqual([(m.msgid, m.command, m.text) for m in got],
                         [("1", "PRIVMSG", "first"), ("2", "NOTICE", "two-part\nlines"), ("3", "PRIVMSG", "last")])
        self.assertEqual(got[1].tags["+freeq.at/reactions"], "x:b")
        self.assertNotIn("batch", got[0].tags)
        self.assertEqual((got[0].nick, got[0].reply_to), ("a", "#c"))

    def test_statusmsg_target_and_private_rows(self) -> None:
        got = history_messages(lines("@batch=o :a!u@h PRIVMSG @&ops :to ops", "@batch=o :b!u@h PRIVMSG me :hi"))
        self.assertEqual([(m.target, m.reply_to) for m in got], [("@&ops", "&ops"), ("me", "b")])

    def test_refs(self) -> None:
        self.assertEqual(history_ref("01J"), "msgid=01J")
        self.assertEqual(history_ref(None, "2026-01-01T00:00:00.000Z"), "timestamp=2026-01-01T00:00:00.000Z")
        self.assertEqual(history_ref(), "*")


class BackoffTests(unittest.TestCase):
    def test_doubles_up_to_the_cap_with_jitter(self) -> None:
        self.assertEqual([backoff_delay(n, 1, 10, 2, 0) for n in range(1, 7)], [1, 2, 4, 8, 10, 10])
        self.assertEqual(backoff_delay(2, 1, 10, 2, 0.5, rand=lambda: 1.0), 3.0)
        self.assertEqual(backoff_delay(10 ** 6, 1, 10, 2, 0), 10)  # no overflow

    def test_bad_arguments(self) -> None:
        for args in ((0,), (1, -1.0), (1, 5.0, 1.0), (1, 1.0, 2.0, 0.5), (1, 1.0, 2.0, 2.0, 2.0)):
            self.assertRaises(ValueError, backoff_delay, *args)


class WebTokenUnitTests(unittest.TestCase):
    def test_broker_headers_match_the_server(self) -> None:
        body = b'{"did":"did:plc:x"}'
        headers = broker_headers(SECRET, body, 1700000000)
        self.assertEqual(headers["X-Broker-Timestamp"], "1700000000")
        self.assertEqual(headers["X-Broker-Signature"], broker_signature(SECRET, "1700000000", body))

    def test_credential_sends_the_token_once_and_hides_it(self) -> None:
        cred = WebTokenCredential("tok_en-1", DID)
        self.assertEqual(cred.response(b"challenge"), {"did": "", "method": "web-token", "signature": "tok_en-1"})
        self.assertEqual(cred.response(b"challenge")["signature"], "")
        self.assertNotIn("tok_en", repr(cred))
        self.assertTrue(cred.is_token)

    def test_token_validation(self) -> None:
        self.assertTrue(valid_token("a" * 43))
        for bad in ("", "a b", "a\r\n", "x" * 257, None, "tok=="):
            self.assertFalse(valid_token(bad))
            if isinstance(bad, str):
                self.assertRaises(ValueError, WebTokenCredential, bad)


class HelperSocketTests(unittest.TestCase):
    """The helpers against a real server."""

    timeout = 30

    async def start(self) -> Any:
        return await start_server(self, **NO_NETWORK)

    @asynctest
    async def test_request_ack_and_echo(self) -> None:
        """Without echo-message a labeled PRIVMSG is ACKed (say_labeled: None); with it, the echo comes back
        with its msgid; an error reply fails; without labeled-response request() refuses."""
        srv = await self.start()
        plain = await sdk(self, srv.port, "plain")
        echo = await sdk(self, srv.port, "echo", caps=DEFAULT_CAPS + ("echo-message",))
        self.assertIsNone(await plain.say_labeled("echo", "hi"))
        got = await echo.say_labeled("plain", "hello back")
        self.assertEqual((got.nick, got.target, got.text, got.own), ("echo", "plain", "hello back", True))
        self.assertTrue(got.msgid)
        with self.assertRaises(IRCError) as e:
            await echo.say_labeled("nobody-here", "lost")
        self.assertEqual(e.exception.numeric, "401")
        bare = await sdk(self, srv.port, "bare", caps=("message-tags",))
        with self.assertRaises(ClientError):
            await bare.request("PING", "x")

    @asynctest
    async def test_history_is_not_replayed_as_live_messages(self) -> None:
        """history() assembles a multiline row and the batch's lines never reach on_message."""
        srv = await self.start()
        alice = await sdk(self, srv.port, "alice")
        bob = await sdk(self, srv.port, "bob")
        await alice.join("#h")
        await bob.join("#h")
        got = bob.on_message.wait(lambda m: m.text == "one\ntwo")
        alice.say_multiline("#h", "one\ntwo")
        await got
        alice.say("#h", "three")
        await bob.on_message.wait(lambda m: m.text == "three")
        live: list[Any] = []
        bob.on_message.add(live.append)
        messages = await bob.history("#h", "LATEST", "*", 10)
        self.assertEqual([m.text for m in messages], ["one\ntwo", "three"])
        after = await bob.history("#h", "AFTER", history_ref(messages[0].msgid), 10)
        self.assertEqual([m.text for m in after], ["three"])
        self.assertEqual(live, [])
        with self.assertRaises(IRCError) as e:
            await bob.history("#not-joined")
        self.assertEqual(e.exception.params[:2], ["CHATHISTORY", "INVALID_TARGET"])
        self.assertRaises(ValueError, bob.history, "#h", "SIDEWAYS")

    @asynctest
    async def test_monitor(self) -> None:
        srv = await self.start()
        watcher = await sdk(self, srv.port, "watcher")
        self.assertEqual(await watcher.monitor("ghost"), {"ghost": False})
        walker = await sdk(self, srv.port, "walker")
        self.assertEqual(await watcher.monitor("walker", "ghost"), {"walker": True, "ghost": False})
        self.assertEqual(watcher.monitored, {"ghost": False, "walker": True})
        went = watcher.on_raw.wait(lambda m: m.command == "731")
        await close_client(walker)
        await went
        self.assertEqual(await watcher.monitor("walker"), {"walker": False})
        with self.assertRaises(ValueError):
            await watcher.monitor("a,b")

    @asynctest
    async def test_web_token_login_and_refusals(self) -> None:
        """fetch_web_token mints over HTTP and the credential logs in once; a wrong secret is refused with
        the server's reason and never shows the secret."""
        srv = await self.start()
        web = await start_web(self, srv, broker_shared_secret=SECRET)
        token = await fetch_web_token(reactor, web.url, SECRET, DID, "web.example.com")
        self.assertEqual((token.did, token.nick, token.handle), (DID, "web.example.com", "web.example.com"))
        self.assertNotIn(token.token, repr(token))
        client = await sdk(self, srv.port, "webby", credential=token.credential())
        self.assertEqual(client.account, DID)
        with self.assertRaises(ClientError) as e:
            await fetch_web_token(reactor, web.url, "wrong secret", DID)
        self.assertIn("401", str(e.exception))
        self.assertNotIn("wrong secret", str(e.exception))
        with self.assertRaises(Exception):  # a used token is refused: the login fails, never a guest
            await sdk(self, srv.port, "again", credential=WebTokenCredential(token.token))
        with self.assertRaises(ValueError):
            await fetch_web_token(reactor, web.url, SECRET, "not-a-did")

    @asynctest
    async def test_reconnect_rejoins_and_catches_up(self) -> None:
        """A dropped connection comes back after the back-off, in the same channels, with what it missed."""
        srv = await self.start()
        talker = await sdk(self, srv.port, "talker")
        await talker.join("#r")
        keeper = Reconnector(reactor, "127.0.0.1", srv.port, "keeper", channels=["#r"], min_delay=0.2,
                             jitter=0.0, max_attempts=3)
        self.addCleanup(keeper.stop)
        clients: list[Any] = []
        keeper.on_client.add(clients.append)
        first = await keeper.start()
        self.assertIn("#r", first.channels)
        got = first.on_message.wait(lambda m: m.text == "seen")
        talker.say("#r", "seen")
        await got
        caught: list[Any] = []
        keeper.on_caught_up.add(caught.append)
        first.transport.abortConnection()
        await wait_for(lambda: "keeper" not in srv.server.users, what="the drop")
        talker.say("#r", "missed")
        await wait_for(lambda: caught, what="catch-up")
        self.assertEqual([m.text for m in caught[0].messages], ["missed"])
        self.assertEqual(len(clients), 2)
        self.assertIn("#r", keeper.client.channels)
        self.assertEqual(keeper.last_seen("#r"), history_ref(caught[0].messages[-1].msgid))
        await keeper.stop()
        await wait_for(lambda: "keeper" not in srv.server.users, what="the quit")
        self.assertEqual(keeper.reconnects, 1)
        await close_client(talker)

    @asynctest
    async def test_stop_while_connecting_keeps_nothing(self) -> None:
        """stop() before the first connection completes: that connection is closed, nothing reconnects."""
        srv = await self.start()
        keeper = Reconnector(reactor, "127.0.0.1", srv.port, "early", min_delay=0.05, jitter=0.0)
        started = keeper.start()
        await keeper.stop()
        client = await started
        await client.closed
        self.assertIsNone(keeper.client)
        await sleep(0.2)
        self.assertNotIn("early", srv.server.users)

    @asynctest
    async def test_reconnect_gives_up(self) -> None:
        """With the server gone, max_attempts failed connections in a row end in on_gave_up."""
        srv = await self.start()
        keeper = Reconnector(reactor, "127.0.0.1", srv.port, "keeper", min_delay=0.05, max_delay=0.1, jitter=0.0,
                             max_attempts=2, timeout=2.0)
        self.addCleanup(keeper.stop)
        client = await keeper.start()
        gave_up = keeper.on_gave_up.wait(timeout=10)
        listener = srv.listeners.pop(0)  # the server stops accepting (its cleanup no longer sees this port)
        await listener.stopListening()
        await close_client(client)
        await gave_up
        self.assertEqual(keeper.attempts, 3)
        self.assertIsNone(keeper.client)
