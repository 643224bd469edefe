"""draft/metadata-2 of an account signed in on two federated servers: what a session of the account sets on
one server becomes the account's on the other (its session there is told, the value is stored there for
later sessions), unsets follow, the Bluesky profile defaults shown with the values are never carried as the
account's, a ``relay`` peer's account claim writes nothing, and nothing echoes back and forth."""
from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from freeq.auth.profile import Profile
from tests.s2s_support import Node, link_raw_peer, start_line, wait_for
from tests.support import asynctest, sleep
from tests.test_read_marker import NO_NETWORK, web_token_login

DID = "did:plc:metadataaccountaaaaaaaaa"
CAPS = "draft/metadata-2 batch"


def is_metadata(target: str, key: str) -> Any:
    return lambda l: l.command == "METADATA" and l.params[:2] == [target, key]


def numeric(code: str) -> Any:
    return lambda l: l.command == code


async def stored(node: Node, did: str = DID) -> dict[str, str]:
    """What ``node``'s store holds for ``did`` (queued writes first)."""
    rows: dict[str, str] = await node.server.store.load_account_metadata(did)
    return rows


def applied(node: Node) -> int:
    """How many ``metadata`` events ``node`` applied from its peers."""
    return int(node.federation.stats.get("applied:metadata", 0))


class AccountAcrossServersTests(unittest.TestCase):
    """One DID with a session on A and one on B (SASL on both)."""

    @asynctest
    async def test_set_and_unset_follow_the_account(self) -> None:
        a, b = await start_line(self, "a.test", "b.test", **NO_NETWORK)
        on_a = await web_token_login(a.fixture, "alice", did=DID, caps=CAPS)
        on_b = await web_token_login(b.fixture, "alicb", did=DID, caps=CAPS)
        await wait_for(lambda: b.knows("alice") and a.knows("alicb"), what="each other's user")
        base_a, base_b = applied(a), applied(b)

        on_a.send("METADATA * SET display-name :Alice A.")
        await on_a.expect(numeric("761"))
        self.assertEqual((await on_b.expect(is_metadata("alicb", "display-name"))).params,
                         ["alicb", "display-name", "*", "Alice A."])
        self.assertEqual(b.server.metadata.accounts[DID], {"display-name": "Alice A."})
        self.assertEqual(await stored(b), {"display-name": "Alice A."})
        on_b.send("METADATA * GET display-name")
        self.assertEqual((await on_b.expect(numeric("761"))).params[1:], ["alicb", "display-name", "*", "Alice A."])
        # A's users see B's session of the account with the new value too (a plain ``metadata`` event from B).
        await wait_for(lambda: a.server.user_metadata(a.server.users["alicb"]) == {"display-name": "Alice A."},
                       what="alicb's value on A")

        on_b.send("METADATA * SET homepage https://alice.example/")  # the other way
        await on_b.expect(numeric("761"))
        self.assertEqual((await on_a.expect(is_metadata("alice", "homepage"))).params[-1], "https://alice.example/")
        await wait_for(lambda: a.server.metadata.accounts[DID].get("homepage"), what="homepage on A")

        on_a.send("METADATA * SET display-name")  # unset
        await on_a.expect(numeric("766"))
        self.assertEqual((await on_b.expect(is_metadata("alicb", "display-name"))).params,
                         ["alicb", "display-name", "*"])
        self.assertEqual(b.server.metadata.accounts[DID], {"homepage": "https://alice.example/"})
        self.assertEqual(await stored(b), {"homepage": "https://alice.example/"})
        self.assertEqual(await stored(a), {"homepage": "https://alice.example/"})

        # No loop: each change is one event with ``account`` and one plain echo (the other session's values).
        await sleep(0.3)
        self.assertEqual((applied(a) - base_a, applied(b) - base_b), (3, 3))
        self.assertEqual(a.federation.stats.get("rejected:unauthorized"), None)

    @asynctest
    async def test_a_later_session_on_the_other_server_gets_it(self) -> None:
        """B holds no session of the account when it changes on A: B stores it, and a session that logs in on
        B later (after B forgot the account in memory) reads it from the store."""
        a, b = await start_line(self, "a.test", "b.test", **NO_NETWORK)
        on_a = await web_token_login(a.fixture, "alice", did=DID, caps=CAPS)
        await wait_for(lambda: b.knows("alice"), what="alice on B")
        on_a.send("METADATA * SET homepage https://alice.example/")
        await on_a.expect(numeric("761"))
        await wait_for(lambda: applied(b), what="the event on B")
        self.assertEqual(await stored(b), {"homepage": "https://alice.example/"})
        del b.server.metadata.accounts[DID]  # as if dropped from the cache: the store is what is left
        later = await web_token_login(b.fixture, "alicb", did=DID, caps=CAPS)
        await wait_for(lambda: DID not in b.server.metadata.loading, what="the account read on B")
        later.send("METADATA * GET homepage")
        self.assertEqual((await later.expect(numeric("761"))).params[1:],
                         ["alicb", "homepage", "*", "https://alice.example/"])

    @asynctest
    async def test_profile_defaults_are_not_the_accounts(self) -> None:
        """A's session shows its Bluesky profile's display name: B shows it for that user, but B's account
        (its own session, its store) does not get it; a key the user sets does."""
        a, b = await start_line(self, "a.test", "b.test", **NO_NETWORK)
        on_a = await web_token_login(a.fixture, "alice", did=DID, caps=CAPS)
        on_b = await web_token_login(b.fixture, "alicb", did=DID, caps=CAPS)
        await wait_for(lambda: b.knows("alice") and a.knows("alicb"), what="each other's user")
        a.server._profile_fetched(Profile("Alice From Bluesky", None), DID)
        self.assertEqual((await on_a.expect(is_metadata("alice", "display-name"))).params[-1], "Alice From Bluesky")
        await wait_for(lambda: b.server.user_metadata(b.server.users["alice"]).get("display-name"),
                       what="alice's profile name on B")
        on_a.send("METADATA * SET homepage https://alice.example/")
        await on_a.expect(numeric("761"))
        self.assertEqual((await on_b.expect(is_metadata("alicb", "homepage"))).params[-1], "https://alice.example/")
        await on_b.expect_not(is_metadata("alicb", "display-name"), after=(on_b,))
        self.assertEqual(b.server.metadata.accounts[DID], {"homepage": "https://alice.example/"})
        self.assertEqual(await stored(b), {"homepage": "https://alice.example/"})
        self.assertEqual(await stored(a), {"homepage": "https://alice.example/"})


class AccountClaimTrustTests(unittest.TestCase):
    """A scripted peer's user claims the account: believed over a ``full`` link only."""

    async def _send(self, trust: Any) -> tuple[Node, Any, Any]:
        node, mallory, _op = await link_raw_peer(self, "a.test", "op", trust=trust)
        victim = await web_token_login(node.fixture, "alice", did=DID, caps=CAPS)
        mallory.send(mallory.user(1, "mal", account=DID))
        await wait_for(lambda: node.knows("mal"), what="mallory's user of the account")
        keys = {"homepage": "https://mal.example/"}
        mallory.send(mallory.event("metadata", {"uid": mallory.uid(1), "keys": keys,
                                                "account": {"homepage": "https://other.example/", "x": "y"}}))
        mallory.send(mallory.event("metadata", {"uid": mallory.uid(1), "keys": keys, "account": keys}))
        mallory.send(mallory.user(2, "mal2"))  # the link is in order: once mal2 is known, all of the above was read
        await wait_for(lambda: node.knows("mal2"), what="mallory's second user")
        return node, mallory, victim

    @asynctest
    async def test_relay_link_writes_nothing_into_the_account(self) -> None:
        node, _mallory, victim = await self._send("relay")
        self.assertEqual(node.server.user_metadata(node.server.users["mal"]), {"homepage": "https://mal.example/"})
        self.assertEqual(node.server.metadata.accounts.get(DID, {}), {})
        self.assertEqual(await stored(node), {})
        victim.send("METADATA * GET homepage")
        await victim.expect(numeric("766"))
        stats = node.federation.stats
        self.assertEqual((stats.get("malformed"), stats.get("rejected:unauthorized")), (1, 1))

    @asynctest
    async def test_full_link_writes_into_the_account(self) -> None:
        node, _mallory, victim = await self._send(None)
        self.assertEqual((await victim.expect(is_metadata("alice", "homepage"))).params[-1], "https://mal.example/")
        self.assertEqual(await stored(node), {"homepage": "https://mal.example/"})
        self.assertEqual(node.federation.stats.get("malformed"), 1)
