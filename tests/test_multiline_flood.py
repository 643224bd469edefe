"""Flood control of draft/multiline batches: the lines of an open batch pay by size (one token per 4,096
bytes of text, 64 more a line), so one token does not buy a 40 kB message to every member, and a 100-line
batch within the default limits is not Excess Flood (issue #12 review)."""
from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.support import IRCClient, asynctest, start_server

CAPS = ("batch", "message-tags", "draft/multiline")


class MultilineFloodTests(unittest.TestCase):
    async def two(self, **flood: float) -> tuple[Clock, IRCClient, IRCClient]:
        clock = Clock()
        clock.advance(1_700_000_000)
        srv = await start_server(self, clock=clock, **flood)
        alice = await srv.client("alice", caps=CAPS)
        bob = await srv.client("bob", caps=CAPS)
        for c in (alice, bob):
            c.send("JOIN #c")
            clock.advance(10)  # registration may have spent a small burst; time gives tokens back
            await c.expect("366")
            c.skip()
        clock.advance(60)  # both buckets full again
        return clock, alice, bob

    def send_batch(self, client: IRCClient, ref: str, lines: list[str]) -> None:
        client.send(f"BATCH +{ref} draft/multiline #c")
        for text in lines:
            client.send(f"@batch={ref} PRIVMSG #c :{text}")
        client.send(f"BATCH -{ref}")

    @asynctest
    async def test_a_large_batch_waits_for_its_tokens(self) -> None:
        """With a burst of 5 and a stopped clock, a 38 kB batch (about 9 tokens) cannot complete; once time
        gives the tokens back, it is delivered whole."""
        clock, alice, bob = await self.two(flood_burst=5, flood_rate=1.0)
        body = ["x" * 2000 for _ in range(19)]
        self.send_batch(alice, "big", body)
        # No line of alice's can serve as a barrier (it would queue behind the batch on the stopped clock),
        # so this waits: without the charge the batch arrives within milliseconds.
        await bob.expect_not(lambda l: l.command == "BATCH", wait=0.5)
        clock.advance(30)
        opener = await bob.expect(lambda l: l.command == "BATCH" and l.params[0].startswith("+"))
        inner = await bob.collect_until(lambda l: l.command == "BATCH" and l.params[0] == "-" + opener.params[0][1:])
        # Delivered lines are re-cut to fit 512 bytes: compare the text, not the cut.
        self.assertEqual("".join(l.params[-1] for l in inner if l.command == "PRIVMSG"), "".join(body))

    @asynctest
    async def test_a_hundred_short_lines_pass_the_default_limits(self) -> None:
        """100 short lines (about 2 tokens) go through at once with the default burst, no Excess Flood."""
        _clock, alice, bob = await self.two()
        body = [f"line {i}" for i in range(100)]
        self.send_batch(alice, "many", body)
        opener = await bob.expect(lambda l: l.command == "BATCH" and l.params[0].startswith("+"))
        inner = await bob.collect_until(lambda l: l.command == "BATCH" and l.params[0] == "-" + opener.params[0][1:])
        self.assertEqual([l.params[-1] for l in inner if l.command == "PRIVMSG"], body)
        await alice.sync()
        self.assertFalse(alice.is_closed)
