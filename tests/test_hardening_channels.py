"""Issue #10 item 14: a cap on new channels per address/account, expiry of empty channels without a
founder, and pages for ``/api/v1/channels`` (real loopback IRC and HTTP, time driven by a Clock)."""
from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq.config import Config, ConfigError
from freeq.state.channel_quota import CreationQuota
from tests.support import IRCClient, ServerFixture, asynctest, start_server, start_web
from tests.test_web_rest import get

ALICE = "did:plc:alice000000000000000000"


class CreationQuotaTests(unittest.TestCase):
    """The pure token bucket behind the creation cap (time passed in)."""

    def test_burst_then_one_per_interval(self) -> None:
        """Three at once, the fourth refused with the wait until the next token; one more after it."""
        quota = CreationQuota(3, 60.0)
        self.assertEqual([quota.take(["1.2.3.4"], 0.0).allowed for _ in range(4)], [True, True, True, False])
        self.assertEqual(quota.take(["1.2.3.4"], 30.0).wait, 30.0)
        self.assertTrue(quota.take(["1.2.3.4"], 60.0).allowed)
        self.assertFalse(quota.take(["1.2.3.4"], 61.0).allowed)
        self.assertTrue(quota.take(["5.6.7.8"], 61.0).allowed)  # another address has its own bucket

    def test_every_key_must_have_a_token_and_only_then_each_pays(self) -> None:
        """An account spent on one address is refused from another, and the refusal costs the address nothing."""
        quota = CreationQuota(2, 60.0)
        self.assertTrue(quota.take(["1.1.1.1", "account did:a"], 0.0).allowed)
        self.assertTrue(quota.take(["1.1.1.1", "account did:a"], 0.0).allowed)
        self.assertFalse(quota.take(["2.2.2.2", "account did:a"], 0.0).allowed)
        self.assertTrue(quota.take(["2.2.2.2"], 0.0).allowed)
        self.assertTrue(quota.take(["2.2.2.2"], 0.0).allowed)

    def test_refusals_log_once_per_interval_and_count_the_rest(self) -> None:
        """The first refusal of a key is logged, the next ones within a minute are held and counted."""
        quota = CreationQuota(1, 600.0, log_interval=60.0)
        quota.take(["k"], 0.0)
        self.assertEqual([quota.take(["k"], t).log for t in (1.0, 2.0, 3.0)], [True, False, False])
        verdict = quota.take(["k"], 61.0)
        self.assertEqual((verdict.log, verdict.suppressed), (True, 2))

    def test_zero_burst_is_off_and_prune_forgets_refilled_keys(self) -> None:
        """Burst 0 allows everything; prune drops buckets that are full again, so the table stays small."""
        off = CreationQuota(0, 60.0)
        self.assertTrue(all(off.take(["k"], 0.0).allowed for _ in range(100)))
        quota = CreationQuota(2, 60.0)
        quota.take(["a"], 0.0)
        quota.take(["b"], 100.0)
        quota.prune(100.0)
        self.assertEqual(len(quota), 1)
        quota.prune(160.0)
        self.assertEqual(len(quota), 0)

    def test_table_is_bounded(self) -> None:
        """More keys than ``max_keys`` push the least recently used out."""
        quota = CreationQuota(1, 60.0, max_keys=10)
        for i in range(50):
            quota.take([f"10.0.0.{i}"], 0.0)
        self.assertEqual(len(quota), 10)

    def test_config_validation(self) -> None:
        """Negative burst or expiry, or a non-positive interval, are refused at start-up."""
        bads: list[dict[str, Any]] = [{"channel_create_burst": -1}, {"channel_create_interval": 0},
                                      {"channel_expiry": -1}]
        for bad in bads:
            with self.assertRaises(ConfigError):
                Config(**bad).validate()


def refusal_lines(observer: EventLoggingObserver) -> list[tuple[Any, str]]:
    """Level and text of each 'Channel creation refused' log line."""
    return [(e["log_level"], formatEvent(e)) for e in observer if "Channel creation refused" in formatEvent(e)]


async def join(client: IRCClient, name: str) -> str:
    """JOIN ``name``; return ``366`` (joined) or the refusal numeric."""
    client.send(f"JOIN {name}")
    line = await client.expect(lambda l: l.command in ("366", "479", "405", "403"))
    return line.command


class CreationCapTests(unittest.TestCase):
    """New channels per address and per account, over real sockets."""

    @asynctest
    async def test_one_address_creates_a_burst_then_is_refused_until_the_interval(self) -> None:
        """Three new channels, then 479 for new ones from any connection of the address (joining an
        existing channel still works); one more after 60 s; one warn line, /metrics counts each refusal."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        clock = Clock()
        clock.advance(1000)
        srv = await start_server(self, clock=clock, flood_rate=0, channel_create_burst=3,
                                 channel_create_interval=60)
        web = await start_web(self, srv)
        spammer = await srv.client("spammer")
        self.assertEqual([await join(spammer, f"#spam{i}") for i in range(5)], ["366", "366", "366", "479", "479"])
        self.assertEqual(spammer.lines[-1].params[1:], ["#spam4", "Too many channels created, try again in 60 seconds"])
        self.assertNotIn("#spam3", srv.server.channels)
        friend = await srv.client("friend")
        self.assertEqual(await join(friend, "#spam0"), "366")  # an existing channel is not a creation
        self.assertEqual(await join(friend, "#other"), "479")  # the same address (127.0.0.1)
        clock.advance(60)
        self.assertEqual(await join(friend, "#other"), "366")
        self.assertEqual(await join(friend, "#more"), "479")
        self.assertEqual(srv.server.metrics.channel_create_refusals, 4)
        # One warn line for the first refusal; the next minute's first one says how many were held back.
        lines = refusal_lines(observer)
        self.assertEqual([level for level, _ in lines], [LogLevel.warn, LogLevel.warn])
        self.assertIn("for spammer from 127.0.0.1 (account none)", lines[0][1])
        self.assertIn("for friend from 127.0.0.1", lines[1][1])
        self.assertIn("2 more refused since the last line", lines[1][1])
        code, body, _ = await get(web, "/metrics")
        self.assertIn("freeq_channel_create_refusals_total 4.0", body)

    @asynctest
    async def test_account_quota_follows_the_did_and_opers_are_exempt(self) -> None:
        """An account's quota is its own (a second address does not reset it); an oper creates freely."""
        srv = await start_server(self, flood_rate=0, channel_create_burst=2, oper_password="pw")
        server = srv.server
        alice = await srv.client("alice")
        server.set_account(server.users["alice"], ALICE)
        self.assertEqual([await join(alice, f"#a{i}") for i in range(3)], ["366", "366", "479"])
        # The same DID from another address: the account bucket is empty too.
        server.channel_quota._buckets.pop("127.0.0.1")
        self.assertEqual(await join(alice, "#a9"), "479")
        oper = await srv.client("admin")
        oper.send("OPER admin pw")
        await oper.expect("381")
        self.assertEqual([await join(oper, f"#o{i}") for i in range(5)], ["366"] * 5)


class ExpiryTests(unittest.TestCase):
    """Empty channels without a founder DID are forgotten after --channel-expiry; founded ones stay."""

    async def server(self, **overrides: Any) -> tuple[ServerFixture, Clock]:
        clock = Clock()
        clock.advance(1000)
        srv = await start_server(self, clock=clock, flood_rate=0, **overrides)
        return srv, clock

    @asynctest
    async def test_guest_channel_with_a_topic_expires_from_memory_and_database(self) -> None:
        """A guest's channel with a topic survives its last member for the expiry, then is gone from the
        model, the database and the REST list; rejoining makes a fresh channel. Logged and counted."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        srv, clock = await self.server(channel_expiry=3600)
        web = await start_web(self, srv)
        guest = await srv.client("guest")
        await join(guest, "#junk")
        guest.send("TOPIC #junk :buy now")
        await guest.expect("TOPIC")
        guest.send("PART #junk")
        await guest.expect("PART")
        store = srv.server.store
        assert store is not None
        await store.flush()
        self.assertIn("#junk", [r.name for r in store.load_channels()])
        clock.advance(3599)
        srv.server.sweep()
        self.assertIn("#junk", srv.server.channels)
        clock.advance(1)
        srv.server.sweep()
        self.assertNotIn("#junk", srv.server.channels)
        await store.flush()
        self.assertNotIn("#junk", [r.name for r in store.load_channels()])
        code, data, _ = await get(web, "/api/v1/channels")
        self.assertEqual((code, data), (200, []))
        self.assertEqual(srv.server.metrics.channels_expired, 1)
        self.assertTrue(any("Channel #junk expired" in formatEvent(e) for e in observer))
        other = await srv.client("other")
        await join(other, "#junk")
        self.assertFalse(any(l.command == "332" for l in other.lines))  # no old topic
        self.assertTrue(srv.server.channels["#junk"].is_op(srv.server.users["other"]))

    @asynctest
    async def test_rejoin_before_expiry_restarts_the_clock_and_founded_channels_stay(self) -> None:
        """Someone joining an emptied channel keeps it; a channel with a founder DID never expires."""
        srv, clock = await self.server(channel_expiry=60)
        guest = await srv.client("guest")
        alice = await srv.client("alice")
        srv.server.set_account(srv.server.users["alice"], ALICE)
        for client, name in ((guest, "#guest"), (alice, "#owned")):
            await join(client, name)
            client.send(f"TOPIC {name} :kept")
            await client.expect("TOPIC")
            client.send(f"PART {name}")
            await client.expect("PART")
        clock.advance(50)
        await join(guest, "#guest")
        clock.advance(50)
        srv.server.sweep()
        self.assertIn("#guest", srv.server.channels)  # occupied again
        guest.send("PART #guest")
        await guest.expect("PART")
        clock.advance(59)
        srv.server.sweep()
        self.assertIn("#guest", srv.server.channels)
        clock.advance(1)
        srv.server.sweep()
        self.assertNotIn("#guest", srv.server.channels)
        clock.advance(100000)
        srv.server.sweep()
        self.assertEqual(srv.server.channels["#owned"].topic, "kept")

    @asynctest
    async def test_loaded_founderless_channels_expire_after_a_restart(self) -> None:
        """Channels loaded at start-up without a founder get the full expiry from the start, then go."""
        srv, clock = await self.server(channel_expiry=60)
        from freeq.state.channel import Channel

        chan = Channel("#old", clock.seconds())
        chan.modes.update("nt")
        chan.topic = "left over"
        srv.server.load_channels([chan.record()])
        clock.advance(60)
        srv.server.sweep()
        self.assertNotIn("#old", srv.server.channels)


class ChannelListPagingTests(unittest.TestCase):
    """/api/v1/channels in pages: limit, the after cursor, the Link header and 400 for bad values."""

    @asynctest
    async def test_pages_cover_every_channel_once(self) -> None:
        """limit=2 over five channels gives 2, 2, 1 following the Link header, most members first."""
        srv = await start_server(self, flood_rate=0)
        web = await start_web(self, srv)
        one = await srv.client("one")
        two = await srv.client("two")
        for name in ("#a", "#b", "#c", "#d", "#e"):
            await join(one, name)
        await join(two, "#d")
        seen: list[str] = []
        path = "/api/v1/channels?limit=2"
        pages = 0
        while path:
            code, data, headers = await get(web, path)
            self.assertEqual(code, 200)
            seen += [c["name"] for c in data]
            pages += 1
            link = (headers.getRawHeaders("Link") or [""])[0]
            path = link[1:link.index(">")] if link else ""
        self.assertEqual(seen, ["#d", "#a", "#b", "#c", "#e"])
        self.assertEqual(pages, 3)

    @asynctest
    async def test_default_and_maximum_page_size(self) -> None:
        """Without limit a page holds 100 channels; a limit above 500 gives 500, with a next page."""
        srv = await start_server(self, flood_rate=0, channel_create_burst=0, max_channels_per_user=600)
        web = await start_web(self, srv)
        one = await srv.client("one")
        for start in range(0, 510, 50):
            one.send("JOIN " + ",".join(f"#c{i}" for i in range(start, min(start + 50, 510))))
        await one.expect(lambda l: l.command == "366" and l.params[1] == "#c509", timeout=20)
        code, data, headers = await get(web, "/api/v1/channels")
        self.assertEqual((code, len(data)), (200, 100))
        self.assertIn("rel=\"next\"", headers.getRawHeaders("Link")[0])
        code, first, headers = await get(web, "/api/v1/channels?limit=100000")
        self.assertEqual((code, len(first)), (200, 500))
        link = headers.getRawHeaders("Link")[0]
        self.assertTrue(link.startswith("</api/v1/channels?limit=500&after="), link)
        code, rest, headers = await get(web, link[1:link.index(">")])
        self.assertEqual([c["name"] for c in rest], [f"#c{i}" for i in range(90, 100)])  # ties: by name
        self.assertIsNone(headers.getRawHeaders("Link"))
        self.assertEqual(sorted(c["name"] for c in first + rest), sorted(f"#c{i}" for i in range(510)))

    @asynctest
    async def test_bad_limit_or_cursor_is_400_json(self) -> None:
        """A limit that is not a whole number from 1, or a cursor not made by the server, is 400 JSON."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        for query in ("limit=0", "limit=-1", "limit=abc", "limit=", "after=nonsense", "after=x:%23a",
                      "after=1:nochannel", "after=%C2%B2:%23a"):
            code, data, _ = await get(web, "/api/v1/channels?" + query)
            self.assertEqual(code, 400, query)
            self.assertIn("error", data)
