"""Operator control of federation links over IRC: LINKS, SQUIT and CONNECT on real linked servers."""
from __future__ import annotations

import re
from typing import Any

from twisted.trial import unittest

from tests.s2s_support import LogCapture, Node, settle, start_line, start_pair, wait_for
from tests.support import asynctest, sleep, start_server

HEX_ID = re.compile(r"[0-9a-f]{64}")


async def make_oper(client: Any) -> None:
    """Make ``client`` a server operator (the nodes are started with ``oper_password="pw"``)."""
    client.send("OPER admin pw")
    await client.expect("381")
    await client.expect(r"MODE \S+ \+o")
    client.skip()


async def links(client: Any, *params: str) -> tuple[dict[str, tuple[str, int, str]], list[Any]]:
    """Send LINKS; return {server: (uplink, hops, info)} from the 364 lines, and every line up to 365."""
    client.send(" ".join(("LINKS",) + params))
    lines = await client.collect_until("365")
    rows = {}
    for line in lines:
        if line.command == "364":
            hops, info = line.params[3].split(" ", 1)
            rows[line.params[1]] = (line.params[2], int(hops), info)
    return rows, lines


class LinksTests(unittest.TestCase):
    """LINKS on a line A-B-C, and who may use SQUIT and CONNECT."""

    timeout = 40

    @asynctest
    async def test_links_lists_the_federation_from_each_side(self) -> None:
        """Each server lists all three with its own hop counts and uplinks; only operators see endpoint ids."""
        a, b, c = await start_line(self, "a.test", "b.test", "c.test", oper_password="pw")
        ids = {a.id, b.id, c.id}
        expected = {
            a: {"a.test": ("a.test", 0), "b.test": ("a.test", 1), "c.test": ("b.test", 2)},
            b: {"b.test": ("b.test", 0), "a.test": ("b.test", 1), "c.test": ("b.test", 1)},
            c: {"c.test": ("c.test", 0), "b.test": ("c.test", 1), "a.test": ("b.test", 2)},
        }
        for node, want in expected.items():
            user = await node.client("user" + node.name[0])
            rows, lines = await links(user)
            self.assertEqual({name: row[:2] for name, row in rows.items()}, want, node.name)
            self.assertEqual([line.params[1] for line in lines if line.command == "364"][0], node.name)
            self.assertFalse([line.raw for line in lines if HEX_ID.search(line.raw)], "ids shown to a non-operator")
            self.assertEqual(rows[node.name][2], "freeq IRC server")
        alice = await a.client("alice")
        rows, _ = await links(alice, "c*")
        self.assertEqual(list(rows), ["c.test"])
        rows, _ = await links(alice, "b.test", "*.test")  # LINKS <remote> <mask>: the same view, answered here
        self.assertEqual(sorted(rows), ["a.test", "b.test", "c.test"])
        alice.send("LINKS nowhere.test *")
        line = await alice.expect("402")
        self.assertEqual(line.params[1:], ["nowhere.test", "No such server"])

        # Operators additionally see endpoint ids, and the trust of direct links.
        await make_oper(alice)
        rows, lines = await links(alice)
        self.assertEqual(rows["a.test"][2], f"freeq IRC server [{a.id}]")
        self.assertEqual(rows["b.test"][2], f"freeq IRC server [{b.id}, trust full]")
        self.assertEqual(rows["c.test"][2], f"freeq IRC server [{c.id}]")
        self.assertEqual({m for line in lines for m in HEX_ID.findall(line.raw)}, ids)

    @asynctest
    async def test_squit_and_connect_permissions_and_errors(self) -> None:
        """481 for non-operators, 402 for unknown servers, a NOTICE for servers that are not direct links."""
        a, b, c = await start_line(self, "a.test", "b.test", "c.test", oper_password="pw")
        mallory = await a.client("mallory")
        for command in ("SQUIT b.test :bye", "CONNECT b.test"):
            mallory.send(command)
            line = await mallory.expect("481")
            self.assertEqual(line.params[1], "Permission Denied- You're not an IRC operator")
        alice = await a.client("alice")
        await make_oper(alice)
        for command in ("SQUIT nowhere.test :x", "CONNECT nowhere.test", "SQUIT " + "0" * 64):
            alice.send(command)
            line = await alice.expect("402")
            self.assertEqual(line.params[1:], [command.split()[1], "No such server"])
        alice.send("SQUIT")
        await alice.expect("461")
        alice.send("SQUIT c.test :too far")
        line = await alice.expect("NOTICE")
        self.assertEqual(line.source, "a.test")
        self.assertIn("c.test is not linked directly to a.test (it is 2 hops away, through b.test)", line.params[1])
        alice.send("SQUIT a.test")
        self.assertIn("is this server", (await alice.expect("NOTICE")).params[1])
        alice.send("CONNECT b.test")
        self.assertIn(f"b.test ({b.id}) is not held: it is linked", (await alice.expect("NOTICE")).params[1])
        await sleep(0.3)
        self.assertTrue(a.linked(b) and b.linked(c))
        self.assertEqual(a.federation.held, {})


class SquitTests(unittest.TestCase):
    """An operator holds a direct link with SQUIT and releases it with CONNECT."""

    timeout = 40

    async def pair(self) -> tuple[Node, Node, Any, Any]:
        """A and B linked (both dial each other), alice on A and bob on B in #fed."""
        # B dials too, so the hold must also refuse B's connections, not only stop dialling
        return await start_pair(self, both_dial=True, oper_password="pw")

    @asynctest
    async def test_squit_holds_the_link_until_connect(self) -> None:
        """SQUIT: netsplit QUITs, the link stays down (neither dialled nor accepted); CONNECT: bob comes back."""
        logs = LogCapture(self)
        a, b, alice, bob = await self.pair()
        await make_oper(alice)
        alice.send("SQUIT b.test :maintenance window")
        line = await alice.expect("NOTICE")  # at once; the link's end comes back from the bridge thread later
        self.assertEqual(line.params[1], f"Link to b.test ({b.id}) dropped and held: it is neither dialled nor "
                                         "accepted until CONNECT b.test")
        line = await alice.expect(r":bob!\S+ QUIT")
        self.assertEqual(line.params, ["*.net *.split"])
        line = await bob.expect(r":alice!\S+ QUIT")
        self.assertEqual(line.params, ["*.net *.split"])
        await logs.wait(f"S2S link to b.test ({b.id}) held by operator alice (no account): maintenance window")
        event = [e for e in logs.events if e.get("log_format", "").startswith("S2S link to {name} ({peer}) held")][0]
        self.assertEqual((event["name"], event["peer"], event["nick"], event["reason"]),
                         ("b.test", b.id, "alice", "maintenance window"))
        await logs.wait("Rejecting S2S connection from " + b.id, "peer is on hold")  # B's own dialling is refused
        await sleep(2.0)
        self.assertFalse(a.linked(b) or b.linked(a))
        self.assertFalse(a.knows("bob") or b.knows("alice"))
        rows, _ = await links(alice)
        self.assertEqual(list(rows), ["a.test"])
        line = await alice.expect("NOTICE")
        self.assertRegex(line.params[1], rf"^Held S2S peer b\.test \({b.id}\) by alice \d+s ago: maintenance window; "
                                         r"CONNECT b\.test releases it$")
        alice.send("SQUIT b.test")
        self.assertIn("is already held", (await alice.expect("NOTICE")).params[1])

        # The name is remembered while the link is down, so CONNECT b.test finds the held peer.
        alice.send("CONNECT b.test")
        line = await alice.expect("NOTICE")
        self.assertEqual(line.params[1], f"Link to b.test ({b.id}) released: dialling it now")
        await logs.wait(f"S2S link to b.test ({b.id}) released by operator alice (no account)")
        await wait_for(lambda: a.linked(b) and b.linked(a), what="relink")
        await settle(a, b)
        await alice.expect(r":bob!\S+ JOIN #fed")
        await wait_for(lambda: a.knows("bob"), what="bob back on A")
        alice.send("NAMES #fed")
        self.assertEqual(sorted((await alice.expect("353")).params[-1].split()), ["@alice", "bob"])
        self.assertEqual(a.federation.held, {})

    @asynctest
    async def test_squit_and_connect_by_endpoint_id(self) -> None:
        """The accepting side holds by endpoint id; after CONNECT it accepts the peer's next dial."""
        logs = LogCapture(self)
        a, b = await start_line(self, "a.test", "b.test", oper_password="pw")  # only A dials
        bob = await b.client("bob")
        await make_oper(bob)
        bob.send(f"SQUIT {a.id[:12]}")  # a unique prefix of the id is enough
        line = await bob.expect("NOTICE")
        self.assertIn(f"Link to a.test ({a.id}) dropped and held", line.params[1])
        await logs.wait("held by operator bob (no account): no reason given")
        await wait_for(lambda: not a.linked(b) and not b.linked(a), what="split")
        bob.send(f"CONNECT {a.id}")
        line = await bob.expect("NOTICE")
        self.assertEqual(line.params[1], f"Link to a.test ({a.id}) released: it is not in --s2s-peers, so the link "
                                         "comes back when it dials this server")
        await wait_for(lambda: a.linked(b) and b.linked(a), what="relink after A's back-off")
        rows, _ = await links(bob)
        self.assertEqual(sorted(rows), ["a.test", "b.test"])


class WithoutFederationTests(unittest.TestCase):
    """A server without --iroh: LINKS lists only itself, SQUIT and CONNECT know no server."""

    @asynctest
    async def test_no_federation(self) -> None:
        """481 for non-operators first; operators get 402 for any target; LINKS shows no endpoint id."""
        srv = await start_server(self, server_name="solo.test", oper_password="pw")
        alice = await srv.client("alice")
        alice.send("SQUIT b.test")
        await alice.expect("481")
        await make_oper(alice)
        for command in ("SQUIT b.test :x", "CONNECT b.test"):
            alice.send(command)
            self.assertEqual((await alice.expect("402")).params[1:], ["b.test", "No such server"])
        rows, lines = await links(alice)
        self.assertEqual(rows, {"solo.test": ("solo.test", 0, "freeq IRC server")})
        await alice.expect_not("NOTICE")
