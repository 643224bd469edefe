"""Network bans across the federation (issue #13 item 4): a K-line or D-line reaches full-trust peers (live and in
bursts), is applied, stored and enforced there, and is lifted there by UNKLINE; relay and readonly peers neither
get bans nor may send them. Real servers linked by iroh on 127.0.0.1 (relays off), and a scripted peer."""
from __future__ import annotations

import time
from typing import Any

from twisted.trial import unittest

from tests.s2s_support import LogCapture, keys, link_raw_peer, settle, start_node, start_pair, wait_for
from tests.support import asynctest
from tests.test_s2s_oper import make_oper


def ban_fields(**over: Any) -> dict[str, Any]:
    """The fields of a valid ``ban`` event, with ``over`` replacing some."""
    fields: dict[str, Any] = {"id": "01J0000000000000000000000@mallory", "kind": "K", "mask": "alice@127.0.0.1",
                              "reason": "from mallory", "setter": "op!~op@mallory", "set_at": int(time.time()),
                              "expires": None}
    fields.update(over)
    return fields


class FullTrustTests(unittest.TestCase):
    """A and B trust each other ``full``."""

    timeout = 40

    @asynctest
    async def test_kline_reaches_the_peer_and_unkline_lifts_it(self) -> None:
        """carol's KLINE on A is applied on B: B's matching user bob is closed, the ban is stored there and listed
        by STATS k as coming from a.test; UNKLINE on A lifts it on B, and bob can come back."""
        a, b, _alice, bob = await start_pair(self, oper_password="pw")
        carol = await a.client("carol")
        await make_oper(carol)
        carol.send("KLINE bob@127.0.0.1 :federated ban")
        await carol.expect("NOTICE")
        await bob.expect("465")
        error = await bob.expect("ERROR")
        self.assertIn("K-lined: federated ban", error.params[-1])
        ban = b.server.network_bans.get("K", "bob@127.0.0.1")
        assert ban is not None
        self.assertEqual((ban.origin, ban.reason), ("a.test", "federated ban"))
        self.assertEqual(ban.id, a.server.network_bans.get("K", "bob@127.0.0.1").id)  # type: ignore[union-attr]
        dave = await b.client("dave")
        await make_oper(dave)
        dave.send("STATS k")
        rows = [l for l in await dave.collect_until("219") if l.command == "216"]
        self.assertEqual(len(rows), 1)
        self.assertIn("[from a.test]", rows[0].params[-1])

        carol.send("UNKLINE bob@127.0.0.1")
        await carol.expect("NOTICE")
        await wait_for(lambda: b.server.network_bans.get("K", "bob@127.0.0.1") is None, what="unban on B")
        back = await b.client("bob")
        back.send("PING x")
        await back.expect("PONG")

    @asynctest
    async def test_bans_travel_in_the_burst(self) -> None:
        """A ban set on A before B links reaches B in A's burst (applied once, with its id)."""
        (ka, ida), (kb, idb) = keys(2)
        a = await start_node(self, "a.test", allowed=[idb], key=ka, oper_password="pw")
        b = await start_node(self, "b.test", allowed=[ida], key=kb, oper_password="pw")
        carol = await a.client("carol")
        await make_oper(carol)
        carol.send("DLINE 60 192.0.2.0/24 :before the link")
        await carol.expect("NOTICE")
        a.link_to(b)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="link")
        await settle(a, b)
        ban = await wait_for(lambda: b.server.network_bans.get("D", "192.0.2.0/24"), what="ban on B")
        self.assertEqual((ban.origin, ban.reason), ("a.test", "before the link"))
        self.assertIsNotNone(ban.expires)
        self.assertEqual(len(b.server.network_bans), 1)
        self.assertEqual(len(a.server.network_bans), 1)  # B's burst back does not duplicate it


class LowerTrustTests(unittest.TestCase):
    """Peers trusted less than ``full`` neither get bans nor may set them."""

    timeout = 40

    @asynctest
    async def test_relay_peer_is_not_sent_bans(self) -> None:
        """B trusts A only as relay: A's KLINE stays on A (B would not apply it, so it is not sent)."""
        (ka, ida), (kb, idb) = keys(2)
        a = await start_node(self, "a.test", allowed=[idb], key=ka, oper_password="pw")
        b = await start_node(self, "b.test", allowed=[ida], key=kb, trust={ida: "relay"}, oper_password="pw")
        a.link_to(b)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="link")
        await settle(a, b)
        bob = await b.client("bob")
        carol = await a.client("carol")
        await make_oper(carol)
        logs = LogCapture(self)
        carol.send("KLINE bob@127.0.0.1 :not for relays")
        await carol.expect("NOTICE")
        await logs.wait("S2S ban of bob@127.0.0.1 sent to 0 server(s)")
        await bob.expect_not("ERROR")
        self.assertEqual(len(b.server.network_bans), 0)

    @asynctest
    async def test_ban_from_relay_or_readonly_peer_is_refused(self) -> None:
        """A relay or readonly peer's ban event is refused at the trust step (logged); nothing is banned."""
        for trust in ("relay", "readonly"):
            logs = LogCapture(self)
            node, mallory, alice = await link_raw_peer(self, f"{trust}.test", "alice", trust=trust)
            mallory.send(mallory.event("ban", ban_fields(), to=node.id))
            await logs.wait(f"S2S ban event from peer {mallory.id}", f"rejected: trust: not allowed from a {trust} peer")
            await alice.expect_not("ERROR")
            self.assertEqual(len(node.server.network_bans), 0)

    @asynctest
    async def test_full_peer_ban_is_validated_then_applied(self) -> None:
        """From a full peer: a too-wide or unnormalised mask is dropped as malformed (logged); a valid ban is
        applied, stored and enforced (alice closed), and a second copy of it changes nothing."""
        logs = LogCapture(self)
        node, mallory, alice = await link_raw_peer(self, "a.test", "alice")
        mallory.send(mallory.event("ban", ban_fields(mask="*@*"), to=node.id))
        await logs.wait("S2S malformed frame from peer " + mallory.id, "ban mask")
        mallory.send(mallory.event("ban", ban_fields(mask="Alice@127.0.0.1"), to=node.id))
        await logs.wait("not normalised")
        mallory.send(mallory.event("ban", ban_fields(reason="a\nb"), to=node.id))
        await logs.wait("ban reason has a control character")
        self.assertEqual(len(node.server.network_bans), 0)
        mallory.send(mallory.event("ban", ban_fields(), to=node.id))
        error = await alice.expect("ERROR")
        self.assertIn("K-lined: from mallory", error.params[-1])
        ban = node.server.network_bans.get("K", "alice@127.0.0.1")
        assert ban is not None
        self.assertEqual(ban.origin, "mallory")
        mallory.send(mallory.event("ban", ban_fields(reason="again"), to=node.id))
        mallory.send(mallory.event("unban", {"kind": "D", "mask": "192.0.2.1"}, to=node.id))  # nothing held: no-op
        await wait_for(lambda: node.federation.stats.get("applied:unban"), what="the unban handled")
        self.assertEqual(node.server.network_bans.get("K", "alice@127.0.0.1").reason,  # type: ignore[union-attr]
                         "from mallory")

    @asynctest
    async def test_burst_is_the_complete_list_of_its_servers_bans(self) -> None:
        """A full peer's burst lists every ban of its servers: one it held before and no longer lists (lifted
        while apart) goes; a listed new one is applied; an entry naming a server not behind the link is refused."""
        logs = LogCapture(self)
        node, mallory, alice = await link_raw_peer(self, "a.test", "alice")
        mallory.send(mallory.event("ban", ban_fields(mask="nobody@192.0.2.1"), to=node.id))
        await wait_for(lambda: node.server.network_bans.get("K", "nobody@192.0.2.1"), what="the live ban")
        servers = [{"id": mallory.id, "name": mallory.name, "epoch": mallory.epoch, "hops": 0}]
        later = ["01J0000000000000000000001@mallory", "D", "198.51.100.0/24", "burst ban", "op", int(time.time()),
                 None, "mallory"]
        forged = ["01J0000000000000000000002@elsewhere", "D", "203.0.113.0/24", "forged", "op", int(time.time()),
                  None, "b.test"]
        mallory.send({"type": "burst", "part": "servers", "servers": servers, "marks": []})
        mallory.send({"type": "burst", "part": "bans", "bans": [later, forged]})
        mallory.send({"type": "burst", "part": "end"})
        await logs.wait("burst ban from peer " + mallory.id, "forged: origin is not behind this link")
        await wait_for(lambda: node.server.network_bans.get("D", "198.51.100.0/24"), what="the burst's ban")
        self.assertIsNone(node.server.network_bans.get("K", "nobody@192.0.2.1"))
        self.assertIsNone(node.server.network_bans.get("D", "203.0.113.0/24"))
        await logs.wait("lifted while we were apart")
