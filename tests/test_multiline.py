"""IRCv3 ``draft/multiline`` on one server: client batches in, batches or plain lines out, limits, history.

The pure part (:mod:`freeq.state.multiline`) is tested directly; everything else over real sockets.
"""
from __future__ import annotations

from typing import Any, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.task import Clock
from twisted.trial import unittest

from freeq import signing
from freeq.irc.parser import parse
from freeq.state.multiline import (
    MAX_BYTES, MAX_LINES, PendingBatch, Refusal, body_problem, line_budget, split_body,
)
from tests.support import IRCClient, Line, ServerFixture, asynctest, sleep, start_server
from tests.test_client_sdk import FakeClient

ML = ("batch", "draft/multiline", "message-tags", "server-time", "echo-message")
T0 = 1_700_000_000.0


def send_batch(client: IRCClient, target: str, lines: list[str], ref: str = "b1", command: str = "PRIVMSG",
               opener_tags: str = "", concat: tuple[int, ...] = (), concat_tag: str = "draft/multiline-concat",
               close: bool = True) -> None:
    """Send a whole multiline batch (line ``i`` in ``concat`` carries the concat tag)."""
    out = [f"{opener_tags}BATCH +{ref} draft/multiline {target}"]
    for i, text in enumerate(lines):
        tags = f"@batch={ref}" + (f";{concat_tag}" if i in concat else "")
        out.append(f"{tags} {command} {target} :{text}")
    if close:
        out.append(f"BATCH -{ref}")
    client.send("\r\n".join(out))


async def read_batch(client: IRCClient) -> tuple[Line, list[Line]]:
    """The next multiline batch a client receives: its opener and its lines."""
    opener = await client.expect(lambda l: l.command == "BATCH" and l.params[0][:1] == "+")
    ref = opener.params[0][1:]
    lines = await client.collect_until(lambda l: l.command == "BATCH" and l.params == ["-" + ref])
    inner = lines[:-1]
    for line in inner:
        assert line.tags.get("batch") == ref, line
    return opener, inner


def assemble(lines: list[Line]) -> str:
    """What a draft/multiline client makes of a batch's lines."""
    out = ""
    for i, line in enumerate(lines):
        cont = "draft/multiline-concat" in line.tags or "+draft/multiline-concat" in line.tags
        out += (line.params[-1] if cont or i == 0 else "\n" + line.params[-1])
    return out


class PureTests(unittest.TestCase):
    """freeq.state.multiline without a server."""

    def test_assembly_newlines_and_concat(self) -> None:
        """Lines join with newlines, concat lines with nothing."""
        b = PendingBatch("r", "#c", "#c", 0.0, {})
        b.add("PRIVMSG", "#c", "#c", "one", False)
        b.add("PRIVMSG", "#c", "#c", "two ", False)
        b.add("PRIVMSG", "#c", "#c", "halves", True)
        b.add("PRIVMSG", "#c", "#c", "", False)
        b.add("PRIVMSG", "#c", "#c", "end", False)
        self.assertEqual(b.body(), "one\ntwo halves\n\nend")

    def test_refusals(self) -> None:
        """Each rule breaks with its FAIL code."""
        def refused(*adds: tuple[str, str, str, bool]) -> Refusal:
            b = PendingBatch("r", "#c", "#c", 0.0, {})
            with self.assertRaises(Refusal) as cm:
                for cmd, target, text, concat in adds:
                    b.add(cmd, target, target, text, concat)
            return cm.exception
        self.assertEqual(refused(("PRIVMSG", "#d", "x", False)).code, "MULTILINE_INVALID_TARGET")
        self.assertEqual(refused(("PRIVMSG", "#c", "a", False), ("PRIVMSG", "#c", "", True)).code,
                         "MULTILINE_INVALID")
        self.assertEqual(refused(("PRIVMSG", "#c", "a", False), ("NOTICE", "#c", "b", False)).code,
                         "MULTILINE_INVALID")
        self.assertEqual(refused(*[("PRIVMSG", "#c", "a", False)] * (MAX_LINES + 1)).code, "MULTILINE_MAX_LINES")
        self.assertEqual(refused(*[("PRIVMSG", "#c", "a" * 500, False)] * 81).code, "MULTILINE_MAX_BYTES")
        empty = PendingBatch("r", "#c", "#c", 0.0, {})
        empty.add("PRIVMSG", "#c", "#c", "", False)
        self.assertRaises(Refusal, empty.body)

    def test_split_body_round_trips(self) -> None:
        """Re-splitting keeps every byte (concat pieces join back), cuts after spaces and never inside a character."""
        body = "short\n" + ("word " * 200) + "\n" + ("é" * 300) + "\n\nend"
        pieces = split_body(body, 100)
        for text, _ in pieces:
            self.assertLessEqual(len(text.encode("utf-8")), 100)
        self.assertEqual("".join(("" if c or i == 0 else "\n") + t for i, (t, c) in enumerate(pieces)), body)
        self.assertTrue(all(t.endswith(" ") for t, c in pieces[1:10]))
        self.assertEqual(line_budget("n!u@h", "PRIVMSG", "#c"), 512 - len(":n!u@h PRIVMSG #c :\r\n"))

    def test_body_problem(self) -> None:
        """A peer's body is checked against the same limits."""
        self.assertIsNone(body_problem("a\nb"))
        self.assertIsNotNone(body_problem("a\rb"))
        self.assertIsNotNone(body_problem("x" * (MAX_BYTES + 1)))
        self.assertIsNotNone(body_problem("\n".join(["a"] * (MAX_LINES + 1))))
        self.assertIsNotNone(body_problem("\n\n"))


class MultilineTests(unittest.TestCase):
    """Client batches against a real server."""

    async def start(self, clock: Optional[Clock] = None, **overrides: object) -> tuple[
            ServerFixture, IRCClient, IRCClient, IRCClient]:
        """alice (multiline, echo), bob (multiline) and carol (plain tags, no multiline) in #c."""
        self.srv = await start_server(self, clock=clock, **overrides)
        alice = await self.srv.client("alice", caps=ML)
        bob = await self.srv.client("bob", caps=("batch", "draft/multiline", "message-tags", "server-time"))
        carol = await self.srv.client("carol", caps=("message-tags", "server-time"))
        for c in (alice, bob, carol):
            c.send("JOIN #c")
            await c.expect("366")
        for c in (alice, bob):
            await c.expect(r":carol!\S+ JOIN")
            c.skip()
        carol.skip()
        return self.srv, alice, bob, carol

    @asynctest
    async def test_cap_advertised_with_limits(self) -> None:
        """CAP LS 302 offers draft/multiline=max-bytes=40000,max-lines=100."""
        srv = await start_server(self)
        c = await srv.connect()
        c.send("CAP LS 302")
        line = await c.expect("CAP")
        self.assertIn("draft/multiline=max-bytes=40000,max-lines=100", line.params[-1].split())

    @asynctest
    async def test_channel_batch_and_fallback(self) -> None:
        """A batch reaches multiline clients as one batch (opener: prefix, msgid, time) and plain clients as
        one PRIVMSG per line with the msgid on the first only; the sender's echo is a batch."""
        srv, alice, bob, carol = await self.start()
        send_batch(alice, "#c", ["first line", "second line", "", "fourth"])
        opener, lines = await read_batch(bob)
        self.assertEqual(opener.params[1:], ["draft/multiline", "#c"])
        self.assertTrue(opener.source.startswith("alice!"))
        msgid = opener.tags["msgid"]
        self.assertIn("time", opener.tags)
        self.assertEqual([l.params for l in lines], [["#c", "first line"], ["#c", "second line"], ["#c", ""],
                                                     ["#c", "fourth"]])
        self.assertTrue(all(l.source.startswith("alice!") and "msgid" not in l.tags for l in lines))
        echo_opener, echo_lines = await read_batch(alice)
        self.assertEqual(echo_opener.tags["msgid"], msgid)
        self.assertEqual(assemble(echo_lines), "first line\nsecond line\n\nfourth")
        plain = [await carol.expect("PRIVMSG") for _ in range(3)]
        self.assertEqual([l.params[-1] for l in plain], ["first line", "second line", "fourth"])
        self.assertEqual(plain[0].tags["msgid"], msgid)
        self.assertTrue(all("msgid" not in l.tags and "time" in l.tags for l in plain[1:]))
        self.assertFalse(any(l.command == "BATCH" or "batch" in l.tags for l in carol.lines))

    @asynctest
    async def test_concat_both_spellings_and_long_lines(self) -> None:
        """Both concat spellings are read; a line longer than one IRC line goes out in pieces carrying both."""
        srv, alice, bob, carol = await self.start()
        part = "x" * 200 + " "
        send_batch(alice, "#c", [part, part, part], concat=(1,))
        send_batch(alice, "#c", [part, part, part], ref="b2", concat=(1, 2), concat_tag="+draft/multiline-concat")
        _o, lines = await read_batch(bob)
        self.assertEqual(assemble(lines), part * 2 + "\n" + part)
        _o, lines = await read_batch(bob)
        self.assertEqual(assemble(lines), part * 3)
        self.assertEqual(len(lines), 2)  # 603 bytes do not fit one line: cut, the rest a continuation
        self.assertIn("draft/multiline-concat", lines[1].tags)
        self.assertIn("+draft/multiline-concat", lines[1].tags)
        self.assertNotIn("draft/multiline-concat", lines[0].tags)

    @asynctest
    async def test_private_message_batch(self) -> None:
        """A multiline DM reaches the other party as a batch (plain lines without the cap)."""
        srv, alice, bob, carol = await self.start()
        send_batch(alice, "bob", ["hi", "there"])
        opener, lines = await read_batch(bob)
        self.assertEqual(opener.params[1:], ["draft/multiline", "bob"])
        self.assertEqual(assemble(lines), "hi\nthere")
        send_batch(alice, "carol", ["a", "b"], ref="b2", command="NOTICE")
        got = [await carol.expect("NOTICE") for _ in range(2)]
        self.assertEqual([l.params for l in got], [["carol", "a"], ["carol", "b"]])

    @asynctest
    async def test_fail_codes(self) -> None:
        """Each broken rule gets its FAIL BATCH code, nothing is delivered, and the rest of the batch is quiet."""
        srv, alice, bob, carol = await self.start()
        send_batch(alice, "#c", ["x"] * (MAX_LINES + 1), ref="l")
        line = await alice.expect("FAIL")
        self.assertEqual(line.params[:3], ["BATCH", "MULTILINE_MAX_LINES", str(MAX_LINES)])
        send_batch(alice, "#c", ["y" * 420] * 99, ref="m")
        line = await alice.expect("FAIL")
        self.assertEqual(line.params[:3], ["BATCH", "MULTILINE_MAX_BYTES", str(MAX_BYTES)])
        alice.send("BATCH +t draft/multiline #c\r\n@batch=t PRIVMSG #other :x\r\nBATCH -t")
        line = await alice.expect("FAIL")
        self.assertEqual(line.params[:5], ["BATCH", "MULTILINE_INVALID_TARGET", "#c", "#other",
                                           "Multiline target mismatch"])
        send_batch(alice, "#c", ["a", ""], ref="c", concat=(1,))
        line = await alice.expect("FAIL")
        self.assertEqual(line.params[:2], ["BATCH", "MULTILINE_INVALID"])
        alice.send("BATCH +e draft/multiline #c\r\nBATCH -e")
        line = await alice.expect("FAIL")
        self.assertEqual(line.params[:2], ["BATCH", "MULTILINE_INVALID"])
        await alice.expect_not("FAIL", after=[bob, carol])
        self.assertFalse(any(l.command in ("PRIVMSG", "BATCH") for l in bob.lines + carol.lines))
        self.assertEqual(srv.server.__dict__.get("_multiline", {}), {})

    @asynctest
    async def test_at_most_five_open_batches(self) -> None:
        """A sixth open batch is refused; the five others still complete."""
        srv, alice, bob, carol = await self.start()
        for i in range(6):
            alice.send(f"BATCH +r{i} draft/multiline #c")
        line = await alice.expect("FAIL")
        self.assertEqual(line.params[:2], ["BATCH", "MULTILINE_INVALID"])
        alice.send("@batch=r5 PRIVMSG #c :dropped\r\nBATCH -r5")
        for i in range(5):
            alice.send(f"@batch=r{i} PRIVMSG #c :m{i}\r\nBATCH -r{i}")
        texts = [assemble((await read_batch(bob))[1]) for _ in range(5)]
        self.assertEqual(texts, [f"m{i}" for i in range(5)])
        await alice.expect_not("FAIL", after=[bob])

    @asynctest
    async def test_open_batch_times_out_and_disconnect_frees(self) -> None:
        """A batch never closed is dropped after 60 s by the sweep (with a FAIL); a disconnect frees the rest."""
        clock = Clock()
        clock.advance(T0)
        srv, alice, bob, carol = await self.start(clock=clock)
        alice.send("BATCH +slow draft/multiline #c\r\n@batch=slow PRIVMSG #c :waiting")
        await alice.sync()
        sessions = srv.server.__dict__["_multiline"]
        self.assertEqual(len(sessions), 1)
        clock.advance(59)
        srv.server.sweep()
        self.assertEqual(len(sessions), 1)
        clock.advance(2)
        srv.server.sweep()
        line = await alice.expect("FAIL")
        self.assertEqual(line.params[:2], ["BATCH", "MULTILINE_INVALID"])
        self.assertEqual(sessions, {})
        alice.send("BATCH -slow")  # over: the close is quiet
        bob.send("BATCH +x draft/multiline #c\r\n@batch=x PRIVMSG #c :never closed")
        await bob.sync()
        self.assertEqual(len(sessions), 1)
        bob.disconnect()
        await bob.closed
        await alice.expect(r":bob!\S+ QUIT")
        self.assertEqual(sessions, {})

    @asynctest
    async def test_hundred_lines_pass_flood_control(self) -> None:
        """A full 100-line batch arrives intact under the default flood control (lines of an open batch cost no
        tokens; before, the 61st queued line was an Excess Flood)."""
        srv, alice, bob, carol = await self.start()
        body = [f"line {i}" for i in range(MAX_LINES)]
        send_batch(alice, "#c", body)
        _o, lines = await read_batch(bob)
        self.assertEqual(assemble(lines), "\n".join(body))
        alice.send("PRIVMSG #c :still here")
        await bob.expect("still here")

    @asynctest
    async def test_long_lines_of_a_batch_are_read(self) -> None:
        """Lines of an open batch may be longer than an IRC line (the freeq JS SDK sends up to 6400 bytes), whole or
        arriving in pieces; outside a batch the same line is still 417."""
        srv, alice, bob, carol = await self.start()
        long1, long2 = "a" * 3000, "b" * 6000
        alice.send("BATCH +L draft/multiline #c\r\n@batch=L PRIVMSG #c :" + long1)
        line = ("@batch=L PRIVMSG #c :" + long2 + "\r\n").encode()
        for i in range(0, len(line), 1000):
            alice.send(line[i:i + 1000])
            await sleep(0.01)
        alice.send("BATCH -L")
        _o, lines = await read_batch(bob)
        self.assertEqual(assemble(lines), long1 + "\n" + long2)
        self.assertTrue(all(len(l.raw.encode()) <= 512 + len(l.raw.split(" ", 1)[0]) for l in lines))
        alice.send("@batch=none PRIVMSG #c :" + long1)
        await alice.expect("417")
        alice.send("PRIVMSG #c :" + long1)
        await alice.expect("417")

    @asynctest
    async def test_signature_over_body(self) -> None:
        """An account's batch is signed over the assembled body (server key), or keeps the client's own
        signature from the opener when it verifies under its MSGSIG key."""
        clock = Clock()
        clock.advance(T0)
        srv, alice, bob, carol = await self.start(clock=clock)
        user = srv.server.users["alice"]
        user.account = "did:plc:alice"
        send_batch(alice, "#C", ["one", "two ", "three"], concat=(2,))
        opener, lines = await read_batch(bob)
        sig = opener.tags[signing.SIG_TAG]
        self.assertTrue(signing.verify(srv.server.signer.public_key, sig, "did:plc:alice", "#c", "one\ntwo three",
                                       int(T0)))
        self.assertTrue(all(signing.SIG_TAG not in l.tags for l in lines))
        first = await carol.expect("PRIVMSG")
        self.assertEqual(first.tags[signing.SIG_TAG], sig)
        key = Ed25519PrivateKey.generate()
        user.session_key = key.public_key().public_bytes_raw()
        own = signing.b64url(key.sign(signing.canonical("did:plc:alice", "#c", "a\nb", int(T0))))
        send_batch(alice, "#c", ["a", "b"], ref="s", opener_tags=f"@{signing.SIG_TAG}={own} ")
        opener, _lines = await read_batch(bob)
        self.assertEqual(opener.tags[signing.SIG_TAG], own)

    @asynctest
    async def test_one_history_row_replayed_as_batch_or_lines(self) -> None:
        """The message is one history row (text with newlines); CHATHISTORY replays it as a multiline batch
        nested in the chathistory batch, or as plain lines to a client without the cap."""
        srv, alice, bob, carol = await self.start()
        send_batch(alice, "#c", ["alpha", "beta"])
        opener, _ = await read_batch(bob)
        msgid = opener.tags["msgid"]
        await carol.expect("beta")
        rows = await srv.server.store.history("#c", "LATEST", (None,), 10)
        self.assertEqual([(r.msgid, r.text) for r in rows], [(msgid, "alpha\nbeta")])
        bob.send("CAP REQ draft/chathistory")
        await bob.expect(r"CAP bob ACK")
        bob.send("CHATHISTORY LATEST #c * 10")
        outer = await bob.expect(lambda l: l.command == "BATCH" and "chathistory" in l.params)
        inner = await bob.expect(lambda l: l.command == "BATCH" and "draft/multiline" in l.params)
        self.assertEqual(inner.tags["batch"], outer.params[0][1:])
        self.assertEqual(inner.tags["msgid"], msgid)
        self.assertTrue(inner.source.startswith("alice!"))
        ref = inner.params[0][1:]
        lines = await bob.collect_until(lambda l: l.command == "BATCH" and l.params == ["-" + ref])
        self.assertEqual(assemble(lines[:-1]), "alpha\nbeta")
        await bob.expect(lambda l: l.command == "BATCH" and l.params == ["-" + outer.params[0][1:]])
        carol.send("CAP REQ batch")
        await carol.expect(r"CAP carol ACK")
        carol.send("CHATHISTORY LATEST #c * 10")
        got = await carol.collect_until(lambda l: l.command == "BATCH" and l.params[0][:1] == "-")
        privmsgs = [l for l in got if l.command == "PRIVMSG"]
        self.assertEqual([l.params[-1] for l in privmsgs], ["alpha", "beta"])
        self.assertEqual(privmsgs[0].tags["msgid"], msgid)
        self.assertNotIn("msgid", privmsgs[1].tags)

    @asynctest
    async def test_batch_needs_the_cap_and_a_known_type(self) -> None:
        """Without draft/multiline, for another batch type, or with a target that is not one word, BATCH is
        refused with a FAIL (a target that cannot be echoed shows as ``*``)."""
        srv, alice, bob, carol = await self.start()
        carol.send("BATCH +x draft/multiline #c")
        line = await carol.expect("FAIL")
        self.assertEqual(line.params[:2], ["BATCH", "MULTILINE_INVALID"])
        alice.send("BATCH +x netsplit a b")
        line = await alice.expect("FAIL")
        self.assertEqual(line.params[:2], ["BATCH", "INVALID_TYPE"])
        alice.send("BATCH +x :odd type")
        line = await alice.expect("FAIL")
        self.assertEqual(line.params[:3], ["BATCH", "INVALID_TYPE", "*"])
        alice.send("BATCH +y draft/multiline #c,#d")
        line = await alice.expect("FAIL")
        self.assertEqual(line.params[:2], ["BATCH", "MULTILINE_INVALID_TARGET"])
        alice.send("BATCH +z draft/multiline :#c x")
        line = await alice.expect("FAIL")
        self.assertEqual(line.params[:3], ["BATCH", "MULTILINE_INVALID_TARGET", "*"])
        alice.send("BATCH +w draft/multiline #c\r\n@batch=w PRIVMSG :#c x")
        line = await alice.expect("FAIL")
        self.assertEqual(line.params[:4], ["BATCH", "MULTILINE_INVALID_TARGET", "#c", "*"])


class SdkUnitTests(unittest.TestCase):
    """The Python SDK's multiline helper and inbound assembly, against scripted server lines."""

    def client(self, caps: str = "batch draft/multiline=max-bytes=40000,max-lines=100 message-tags") -> FakeClient:
        c = FakeClient(caps=("batch", "draft/multiline", "message-tags"))
        c.sent()
        c.feed(f":srv CAP * LS :{caps}")
        req = c.sent()[0]
        c.feed(":srv CAP * ACK :" + req.split(" ", 2)[2].lstrip(":"), ":srv 001 bot :hi")
        c.sent()
        return c

    def test_say_multiline_wire_form(self) -> None:
        """One batch: opener, a tagged line per line, a long line continued with the concat tag, closer."""
        c = self.client()
        c.proto.say_multiline("#c", "hi\n" + "y" * 500)
        sent = [parse(l) for l in c.sent()]
        assert all(m is not None for m in sent)
        opener, *lines, closer = sent
        self.assertEqual(opener.params[1:], ["draft/multiline", "#c"])
        ref = opener.params[0][1:]
        self.assertEqual(closer.params, ["-" + ref])
        self.assertEqual([m.params[1] for m in lines], ["hi", "y" * 400, "y" * 100])
        self.assertTrue(all(m.tags["batch"] == ref for m in lines))
        self.assertEqual(["draft/multiline-concat" in m.tags for m in lines], [False, False, True])
        self.assertRaises(ValueError, c.proto.say_multiline, "#c", "\n\n")

    def test_fallback_without_the_cap(self) -> None:
        """Without draft/multiline each non-blank line is its own PRIVMSG."""
        c = self.client(caps="message-tags")
        c.proto.say_multiline("#c", "a\n\nb")
        self.assertEqual(c.sent(), ["PRIVMSG #c a", "PRIVMSG #c b"])

    def test_inbound_batch_assembled_with_both_concat_spellings(self) -> None:
        """A server batch becomes one message with the opener's sender and tags; both concat spellings join."""
        c = self.client()
        got: list[Any] = []
        c.proto.on_message.add(got.append)
        c.feed("@msgid=M1;time=2026-01-01T00:00:00.000Z :al!u@h BATCH +r draft/multiline #c",
               "@batch=r :al!u@h PRIVMSG #c :one",
               "@batch=r;+draft/multiline-concat :al!u@h PRIVMSG #c : more",
               "@batch=r :al!u@h PRIVMSG #c :two",
               "@batch=r;draft/multiline-concat :al!u@h PRIVMSG #c :!",
               "BATCH -r")
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0].text, "one more\ntwo!")
        self.assertEqual((got[0].nick, got[0].msgid, got[0].target), ("al", "M1", "#c"))
        self.assertNotIn("batch", got[0].tags)


class LabelTests(unittest.TestCase):
    """labeled-response on the closing BATCH."""

    @asynctest
    async def test_labelled_close_gets_ack_and_a_clean_echo(self) -> None:
        """A labelled ``BATCH -`` is acknowledged; the echo is a well-formed multiline batch of its own."""
        srv = await start_server(self)
        alice = await srv.client("alice", caps=ML + ("labeled-response",))
        alice.send("JOIN #c")
        await alice.expect("366")
        alice.skip()
        alice.send("BATCH +b draft/multiline #c\r\n@batch=b PRIVMSG #c :x\r\n@batch=b PRIVMSG #c :y\r\n"
                   "@label=L1 BATCH -b")
        opener, lines = await read_batch(alice)
        self.assertNotIn("label", opener.tags)
        self.assertEqual(assemble(lines), "x\ny")
        ack = await alice.expect("ACK")
        self.assertEqual(ack.tags["label"], "L1")
