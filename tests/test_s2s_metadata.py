"""draft/metadata-2 across federated servers: a user's metadata and a channel's reach subscribers on the far
server (``metadata`` events), what a user set before connecting follows it there, and a peer may change
only its own users' metadata and, over a ``full`` link, that of channels its user operates."""
from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from freeq.core.metadata import changes_problem
from tests.s2s_support import link_raw_peer, start_line, wait_for
from tests.support import asynctest
from tests.test_read_marker import NO_NETWORK

CAPS = ("draft/metadata-2", "batch")


def is_metadata(target: str, key: str) -> Any:
    return lambda l: l.command == "METADATA" and l.params[:2] == [target, key]


def numeric(code: str) -> Any:
    return lambda l: l.command == code


class ChangesTests(unittest.TestCase):
    """The shape check of a peer's ``keys`` field, without a server."""

    def test_changes_problem(self) -> None:
        """Keys and values are held to the client rules; ``None`` unsets; empty, oversized or odd maps are not."""
        self.assertIsNone(changes_problem({"display-name": "Al", "avatar": None}))
        for bad in (None, [], {}, {"Bad Key": "x"}, {"avatar": "javascript:alert(1)"}, {"x": 3},
                    {"x": "a\r\nb"}, {f"k{i}": "v" for i in range(21)}):
            self.assertIsNotNone(changes_problem(bad), bad)


class FederatedMetadataTests(unittest.TestCase):
    """Two linked servers: subscribers on B hear of what alice (on A) sets on herself and on her channel."""

    @asynctest
    async def test_user_and_channel_metadata_cross(self) -> None:
        a, b = await start_line(self, "a.test", "b.test", **NO_NETWORK)
        alice = await a.client("alice", caps=CAPS)
        bob = await b.client("bob", caps=CAPS)
        alice.send("JOIN #fed")
        await alice.expect(numeric("366"))
        await wait_for(lambda: "#fed" in b.server.channels, what="#fed on B")
        bob.send("JOIN #fed")
        await bob.expect(numeric("366"))
        await alice.expect(r":bob!\S+ JOIN #fed")
        bob.send("METADATA * SUB display-name homepage")
        await bob.expect(numeric("770"))

        alice.send("METADATA * SET display-name :Alice A.")
        await alice.expect(numeric("761"))
        self.assertEqual((await bob.expect(is_metadata("alice", "display-name"))).params,
                         ["alice", "display-name", "*", "Alice A."])
        bob.send("METADATA alice GET display-name")
        self.assertEqual((await bob.expect(numeric("761"))).params[1:], ["alice", "display-name", "*", "Alice A."])
        bob.send("WHOIS alice")
        self.assertEqual((await bob.expect(numeric("760"))).params, ["bob", "alice", "display-name", "*", "Alice A."])
        await bob.expect(numeric("318"))

        alice.send("METADATA #fed SET homepage https://fed.example/")
        await alice.expect(numeric("761"))
        self.assertEqual((await bob.expect(is_metadata("#fed", "homepage"))).params,
                         ["#fed", "homepage", "*", "https://fed.example/"])
        bob.send("METADATA #fed SET homepage https://bob.example/")  # not an operator of #fed
        self.assertEqual((await bob.expect("FAIL")).params[:2], ["METADATA", "KEY_NO_PERMISSION"])

        bob.send("JOIN #other")  # a channel of B's: subscribers there hear of a remote joiner's metadata
        await bob.expect(numeric("366"))
        await wait_for(lambda: "#other" in a.server.channels, what="#other on A")
        alice.send("JOIN #other")
        await alice.expect(numeric("366"))
        self.assertEqual((await bob.expect(is_metadata("alice", "display-name"))).params,
                         ["alice", "display-name", "*", "Alice A."])

        alice.send("METADATA * SET display-name")  # unset
        await alice.expect(numeric("766"))
        self.assertEqual((await bob.expect(is_metadata("alice", "display-name"))).params,
                         ["alice", "display-name", "*"])
        bob.send("METADATA alice GET display-name")
        await bob.expect(numeric("766"))

        # Set before connecting: it follows the user to B once it registers there.
        early = await a.fixture.connect()
        early.send("CAP LS 302")
        early.send("CAP REQ :draft/metadata-2 batch")
        early.send("METADATA * SET homepage https://early.example/")
        await early.expect(numeric("761"))
        early.send("NICK early")
        early.send("USER early 0 * :Early")
        early.send("CAP END")
        await early.expect(lambda l: l.command in ("376", "422"))
        await wait_for(lambda: b.knows("early"), what="early on B")
        bob.send("METADATA early GET homepage")
        self.assertEqual((await bob.expect(numeric("761"))).params[-1], "https://early.example/")


class ForgedMetadataTests(unittest.TestCase):
    """A hostile peer cannot change another server's users' metadata, nor a channel's without an operator."""

    @asynctest
    async def test_forged_metadata_refused(self) -> None:
        node, mallory, op = await link_raw_peer(self, "a.test", "op")
        op.send("METADATA * SET display-name Op")
        await op.expect(numeric("761"))
        op_uid = node.federation.uid(node.server.users["op"])
        mallory.send(mallory.user(1, "mal"))
        await wait_for(lambda: node.knows("mal"), what="mallory's user")
        mal = node.server.users["mal"]
        mine = {"uid": mallory.uid(1), "keys": {"display-name": "Mal"}}
        mallory.send(mallory.event("metadata", dict(mine, uid=op_uid)))  # our user's metadata: forged
        mallory.send(mallory.event("metadata", dict(mine, channel="#chan")))  # mal is no operator of #chan
        mallory.send(mallory.event("metadata", dict(mine, keys={"Bad Key": "x"})))  # malformed
        mallory.send(mallory.event("metadata", mine))  # its own user's: applied
        mallory.send(mallory.user(2, "mal2"))  # the link is in order: once mal2 is known, all of the above was read
        await wait_for(lambda: node.knows("mal2"), what="mallory's second user")
        self.assertEqual(node.server.user_metadata(node.server.users["op"]), {"display-name": "Op"})
        self.assertEqual(node.server.channel_metadata(node.server.channels["#chan"]), {})
        self.assertEqual(node.server.user_metadata(mal), {"display-name": "Mal"})
        stats = node.federation.stats
        self.assertEqual((stats.get("rejected:forged"), stats.get("rejected:unauthorized"), stats.get("malformed")),
                         (1, 1, 1))
        op.send("WHOIS mal")
        self.assertEqual((await op.expect(numeric("760"))).params, ["op", "mal", "display-name", "*", "Mal"])

    @asynctest
    async def test_channel_metadata_not_over_relay(self) -> None:
        """A relay peer may carry its users' own metadata but no channel's, even from a channel operator."""
        node, mallory, op = await link_raw_peer(self, "a.test", "op", trust="relay")
        mallory.send(mallory.user(1, "mal"))
        await wait_for(lambda: node.knows("mal"), what="mallory's user")
        chan = node.server.channels["#chan"]
        chan.members[node.server.users["mal"]] = chan.members[node.server.users["op"]]  # as if an operator there
        mallory.send(mallory.event("metadata", {"uid": mallory.uid(1), "channel": "#chan",
                                                "keys": {"homepage": "https://mal.example/"}}))
        mallory.send(mallory.event("metadata", {"uid": mallory.uid(1), "keys": {"homepage": "https://mal.example/"}}))
        await wait_for(lambda: node.server.user_metadata(node.server.users["mal"]), what="mal's own metadata")
        del chan.members[node.server.users["mal"]]
        self.assertEqual(node.server.channel_metadata(chan), {})
        self.assertEqual(node.federation.stats.get("rejected:unauthorized"), 1)


class BurstMetadataTests(unittest.TestCase):
    """Bursts carry each server's own users' metadata: a server that links later learns it; a peer cannot
    vouch for metadata of users not its own."""

    @asynctest
    async def test_metadata_set_before_the_link(self) -> None:
        from tests.s2s_support import keys, settle, start_node

        (ka, ida), (kb, idb) = keys(2)
        a = await start_node(self, "a.test", allowed=[idb], key=ka, **NO_NETWORK)
        b = await start_node(self, "b.test", allowed=[ida], key=kb, **NO_NETWORK)
        alice = await a.client("alice", caps=CAPS)
        alice.send("METADATA * SET display-name :Alice A.")
        await alice.expect(numeric("761"))
        a.link_to(b)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="the link")
        await settle(a, b)
        bob = await b.client("bob", caps=CAPS)
        bob.send("METADATA alice GET display-name")
        self.assertEqual((await bob.expect(numeric("761"))).params[1:], ["alice", "display-name", "*", "Alice A."])

    @asynctest
    async def test_burst_metadata_of_others_refused(self) -> None:
        node, mallory, op = await link_raw_peer(self, "a.test", "op")
        op_uid = node.federation.uid(node.server.users["op"])
        record = {k: v for k, v in mallory.user(1, "mal").items() if k not in ("type", "epoch", "seq", "to", "hlc",
                                                                                   "sig")}
        mallory.send({"type": "burst", "part": "servers", "marks": [],
                      "servers": [{"id": mallory.id, "name": mallory.name, "epoch": mallory.epoch, "hops": 0}]})
        mallory.send({"type": "burst", "part": "users", "users": [record]})
        mallory.send({"type": "burst", "part": "metadata", "users": [
            [op_uid, {"display-name": "Hacked"}], [mallory.uid(1), {"display-name": "Mal"}]]})
        mallory.send({"type": "burst", "part": "end"})
        await wait_for(lambda: node.knows("mal") and node.server.user_metadata(node.server.users["mal"]),
                       what="mal and its metadata")
        self.assertEqual(node.server.user_metadata(node.server.users["mal"]), {"display-name": "Mal"})
        self.assertEqual(node.server.user_metadata(node.server.users["op"]), {})
        self.assertEqual(node.federation.stats.get("rejected:forged"), 1)
