"""What the server keeps per channel goes when the channel does (issue #12 review): an empty channel without
state, an expired one, or one a burst left empty is forgotten through one method, forget_channel, and its
draft/metadata-2 values with it — else entries of channels that come and go would pile up in memory."""
from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.support import asynctest, start_server

CAPS = ("draft/metadata-2", "batch")


class ChannelGoneTests(unittest.TestCase):
    @asynctest
    async def test_metadata_of_a_channel_that_empties_is_dropped(self) -> None:
        srv = await start_server(self)
        alice = await srv.client("alice", caps=CAPS)
        alice.send("JOIN #tmp")
        await alice.expect("366")
        alice.send("METADATA #tmp SET homepage :https://example.org/tmp")
        await alice.expect("761")
        self.assertIn("#tmp", srv.server.metadata.channels)
        alice.send("PART #tmp")
        await alice.expect("PART")
        self.assertNotIn("#tmp", srv.server.channels)
        self.assertNotIn("#tmp", srv.server.metadata.channels)

    @asynctest
    async def test_metadata_of_an_expired_channel_is_dropped(self) -> None:
        clock = Clock()
        clock.advance(1_700_000_000)
        srv = await start_server(self, clock=clock, channel_expiry=60.0)
        alice = await srv.client("alice", caps=CAPS)
        alice.send("JOIN #keep")
        await alice.expect("366")
        alice.send("TOPIC #keep :state that keeps it while empty")
        await alice.expect("TOPIC")
        alice.send("METADATA #keep SET homepage :https://example.org/keep")
        await alice.expect("761")
        alice.send("PART #keep")
        await alice.expect("PART")
        self.assertIn("#keep", srv.server.channels)
        clock.advance(61)
        srv.server.expire_channels(clock.seconds())
        self.assertNotIn("#keep", srv.server.channels)
        self.assertNotIn("#keep", srv.server.metadata.channels)
