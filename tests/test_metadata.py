"""IRCv3 ``draft/metadata-2``: key and value rules and the profile parser directly, then real servers on
loopback: METADATA GET/LIST/SET/CLEAR/SUB/UNSUB/SUBS/SYNC on users and channels, notifications, JOIN
sync, before-connect, persistence across a restart, and Bluesky profile defaults read from a loopback
PDS through the SSRF-guarded client."""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import server as web_server

from freeq.auth.multikey import generate_private_key
from freeq.auth.profile import ProfileFetcher, avatar_url, clean_display_name, parse_profile
from freeq.client.auth import CryptoCredential
from freeq.config import Config, Listen
from freeq.core.metadata import MAX_KEYS, MAX_SUBS, MAX_VALUE_BYTES, valid_key, value_problem
from tests.atproto_servers import LoopbackServer, loopback_http, make_did_doc, random_plc_did, start_plc
from tests.support import ServerFixture, asynctest, sleep, start_server, start_tree
from tests.test_read_marker import NO_NETWORK, web_token_login
from tests.test_sasl import login

CAPS = ("draft/metadata-2", "batch")
DID = "did:plc:metadataaaaaaaaaaaaaaaaa"
CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def numeric(code: str) -> Any:
    return lambda l: l.command == code


def fail(code: str) -> Any:
    return lambda l: l.command == "FAIL" and l.params[:2] == ["METADATA", code]


class RuleTests(unittest.TestCase):
    """Keys, values and the profile record, without a server."""

    def test_keys(self) -> None:
        for good in ("avatar", "display-name", "homepage", "a.b/c_d-1"):
            self.assertTrue(valid_key(good), good)
        for bad in ("", "Avatar", "a b", "a:b", "ключ", "x" * 65, "*"):
            self.assertFalse(valid_key(bad), bad)

    def test_values(self) -> None:
        self.assertIsNone(value_problem("display-name", "Alice ✨"))
        self.assertIsNotNone(value_problem("display-name", ""))
        self.assertIsNotNone(value_problem("display-name", "a\x01b"))
        self.assertIsNotNone(value_problem("display-name", "é" * (MAX_VALUE_BYTES // 2 + 1)))
        self.assertIsNone(value_problem("homepage", "https://example.com/a?b=c"))
        self.assertIsNone(value_problem("avatar", "http://example.com/a.png"))
        for bad in ("javascript:alert(1)", "ftp://example.com/x", "https://", "example.com", "data:image/png,xx",
                    "https://exa mple.com/"):
            self.assertIsNotNone(value_problem("avatar", bad), bad)
            self.assertIsNotNone(value_problem("homepage", bad), bad)
        self.assertIsNone(value_problem("status", "javascript:alert(1)"))  # only the URL keys are URLs

    def test_profile_record(self) -> None:
        self.assertEqual(clean_display_name("  Al\x00ice\u0085  \n Smith "), "Alice Smith")
        self.assertIsNone(clean_display_name("\x01\x02"))
        self.assertIsNone(clean_display_name(7))
        self.assertEqual(len(clean_display_name("x" * 500) or ""), 64)
        blob = {"$type": "blob", "ref": {"$link": CID}, "mimeType": "image/jpeg", "size": 10}
        self.assertEqual(avatar_url("https://pds.example/", DID, blob),
                         f"https://pds.example/xrpc/com.atproto.sync.getBlob?did=did%3Aplc%3Ametadataaaaaaaaaaaaaaaaa"
                         f"&cid={CID}")
        self.assertIsNone(avatar_url("https://pds.example", DID, {"ref": {"$link": "bad cid?&x=1"}}))
        self.assertIsNone(avatar_url("https://pds.example", DID, "https://evil.example/a.png"))
        body = json.dumps({"uri": "at://x", "value": {"displayName": "Alice", "avatar": blob}}).encode()
        profile = parse_profile(body, "https://pds.example", DID)
        self.assertEqual(profile.display_name, "Alice")
        self.assertTrue(profile.avatar and profile.avatar.endswith(CID))
        for broken in (b"not json", b"[]", b'{"value": 3}'):
            with self.assertRaises(ValueError):
                parse_profile(broken, "https://pds.example", DID)


class UserMetadataTests(unittest.TestCase):
    """A user's own metadata, others' reads, and the FAIL replies."""

    @asynctest
    async def test_set_get_list_clear(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        c = await srv.client("alice", caps=CAPS)
        c.send("METADATA * SET display-name :Alice A.")
        self.assertEqual((await c.expect(numeric("761"))).params, ["alice", "alice", "display-name", "*", "Alice A."])
        c.send("METADATA * SET homepage https://alice.example/")
        await c.expect(numeric("761"))
        c.send("METADATA alice GET display-name avatar")
        start = await c.expect("BATCH")
        self.assertEqual(start.params[1:], ["metadata", "alice"])
        got = await c.expect(numeric("761"))
        self.assertEqual(got.tags.get("batch"), start.params[0][1:])
        self.assertEqual(got.params[2:], ["display-name", "*", "Alice A."])
        self.assertEqual((await c.expect(numeric("766"))).params[1:3], ["alice", "avatar"])
        await c.expect(lambda l: l.command == "BATCH" and l.params[0].startswith("-"))
        bob = await srv.client("bob")  # no cap, no batch: plain replies
        bob.send("METADATA Alice LIST")
        first = await bob.expect(numeric("761"))
        second = await bob.expect(numeric("761"))
        self.assertEqual([first.params[2], second.params[2]], ["display-name", "homepage"])
        await bob.expect(numeric("762"))  # RPL_METADATAEND: where the reply ends, for a client without batch
        c.send("METADATA * CLEAR")
        cleared = await c.collect_until(lambda l: l.command == "BATCH" and l.params[0].startswith("-"))
        self.assertEqual(sorted(l.params[2] for l in cleared if l.command == "761"), ["display-name", "homepage"])
        bob.send("METADATA alice GET display-name")
        self.assertEqual((await bob.expect(numeric("766"))).params[2], "display-name")

    @asynctest
    async def test_refusals(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        c = await srv.client("alice", caps=CAPS)
        await srv.client("bob")
        c.send("METADATA * SET Bad:Key x")
        self.assertEqual((await c.expect(fail("KEY_INVALID"))).params[2], "Bad:Key")
        c.send("METADATA * SET :bad key")
        self.assertEqual((await c.expect(fail("KEY_INVALID"))).params[2], "*")
        c.send("METADATA * SET avatar javascript:alert(1)")
        await c.expect(fail("VALUE_INVALID"))
        c.send("METADATA * SET display-name :" + "x" * (MAX_VALUE_BYTES + 1))
        await c.expect(fail("VALUE_INVALID"))
        c.send("METADATA bob SET display-name mallory")
        self.assertEqual((await c.expect(fail("KEY_NO_PERMISSION"))).params[2:4], ["bob", "display-name"])
        c.send("METADATA * SET status")
        self.assertEqual((await c.expect(fail("KEY_NOT_SET"))).params[2:4], ["alice", "status"])
        c.send("METADATA nobody GET avatar")
        self.assertEqual((await c.expect(fail("INVALID_TARGET"))).params[2], "nobody")
        c.send("METADATA * FROB")
        await c.expect(fail("SUBCOMMAND_INVALID"))
        c.send("METADATA *")
        await c.expect(numeric("461"))
        for i in range(MAX_KEYS):
            c.send(f"METADATA * SET k{i} v")
        for _ in range(MAX_KEYS):
            await c.expect(numeric("761"))
        c.send("METADATA * SET one-more v")
        self.assertEqual((await c.expect(fail("LIMIT_REACHED"))).params[2], "alice")
        c.send("METADATA * SET k0 replaced")  # an existing key may still change
        self.assertEqual((await c.expect(numeric("761"))).params[-1], "replaced")
        c.send("METADATA * GET avatar")  # nothing bad was stored
        await c.expect(numeric("766"))

    @asynctest
    async def test_subscriptions(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        c = await srv.client("alice", caps=CAPS)
        c.send("METADATA * SUB display-name avatar Bad")
        await c.expect(fail("KEY_INVALID"))
        self.assertEqual((await c.expect(numeric("770"))).params[1:], ["display-name", "avatar"])
        c.send("METADATA * UNSUB avatar")
        self.assertEqual((await c.expect(numeric("771"))).params[1:], ["avatar"])
        c.send("METADATA * SUBS")
        start = await c.expect("BATCH")
        self.assertEqual(start.params[1], "metadata-subs")
        self.assertEqual((await c.expect(numeric("772"))).params[1:], ["display-name"])
        keys = [f"k{i}" for i in range(MAX_SUBS)]
        for i in range(0, len(keys), 10):
            c.send("METADATA * SUB " + " ".join(keys[i:i + 10]))
        lines = await c.collect_until(fail("TOO_MANY_SUBS"))
        lines.append(await c.expect(numeric("770")))  # the keys of that line that did fit
        self.assertEqual(sum(len(l.params) - 1 for l in lines if l.command == "770"), MAX_SUBS - 1)


class CapAndRenameTests(unittest.TestCase):
    """Giving up the capability clears the subscriptions; a renamed channel keeps its metadata."""

    @asynctest
    async def test_cap_removal_clears_subscriptions(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        c = await srv.client("alice", caps=CAPS)
        c.send("METADATA * SUB display-name")
        await c.expect(numeric("770"))
        c.send("CAP REQ :-draft/metadata-2")
        await c.expect(lambda l: l.command == "CAP" and "ACK" in l.params)
        c.send("CAP REQ :draft/metadata-2")
        await c.expect(lambda l: l.command == "CAP" and "ACK" in l.params)
        c.send("METADATA * SUBS")
        lines = await c.collect_until(lambda l: l.command == "BATCH" and l.params[0].startswith("-"))
        self.assertEqual([l for l in lines if l.command == "772"], [])

    @asynctest
    async def test_rename_keeps_metadata(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        c = await srv.client("alice", caps=CAPS + ("draft/channel-rename",))
        c.send("JOIN #old")
        await c.expect(numeric("366"))
        c.send("METADATA #old SET url https://old.example/")
        await c.expect(numeric("761"))
        c.send("RENAME #old #new :moving")
        await c.expect("RENAME")
        c.send("METADATA #new GET url")
        self.assertEqual((await c.expect(numeric("761"))).params[1:], ["#new", "url", "*", "https://old.example/"])


class NotificationTests(unittest.TestCase):
    """Subscribers hear of changes on users they share a channel with and on their channels; JOIN syncs."""

    @asynctest
    async def test_user_and_channel_changes(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        alice = await srv.client("alice", caps=CAPS)
        bob = await srv.client("bob", caps=CAPS)
        carol = await srv.client("carol", caps=CAPS)  # not subscribed
        for c in (alice, bob, carol):
            c.send("JOIN #room")
            await c.expect(numeric("366"))
        bob.send("METADATA * SUB display-name url")
        await bob.expect(numeric("770"))
        alice.send("METADATA * SET display-name Alice")
        await alice.expect(numeric("761"))
        self.assertEqual((await bob.expect("METADATA")).params, ["alice", "display-name", "*", "Alice"])
        alice.send("METADATA #room SET url https://room.example/")  # alice created #room: she is an op
        await alice.expect(numeric("761"))
        self.assertEqual((await bob.expect("METADATA")).params, ["#room", "url", "*", "https://room.example/"])
        bob.send("METADATA #room SET url https://bob.example/")
        await bob.expect(fail("KEY_NO_PERMISSION"))
        alice.send("METADATA * SET display-name")
        await alice.expect(numeric("766"))
        self.assertEqual((await bob.expect("METADATA")).params, ["alice", "display-name", "*"])
        await carol.expect_not("METADATA", after=(alice, bob))
        await alice.expect_not("METADATA", after=(bob,))  # the one who made the change gets the reply only

    @asynctest
    async def test_join_sync(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        alice = await srv.client("alice", caps=CAPS)
        alice.send("JOIN #room")
        await alice.expect(numeric("366"))
        alice.send("METADATA * SET display-name Alice")
        alice.send("METADATA #room SET url https://room.example/")
        alice.send("METADATA * SUB display-name")
        await alice.expect(numeric("770"))
        dave = await srv.client("dave", caps=CAPS)
        dave.send("METADATA * SET display-name Dave")
        dave.send("METADATA * SUB display-name url")
        await dave.expect(numeric("770"))
        dave.send("JOIN #room")
        lines = await dave.collect_until(lambda l: l.command == "BATCH" and l.params[0].startswith("-"))
        names = [l.command for l in lines]
        self.assertLess(names.index("366"), names.index("BATCH"))
        got = [l.params for l in lines if l.command == "METADATA"]
        self.assertIn(["#room", "url", "*", "https://room.example/"], got)
        self.assertIn(["alice", "display-name", "*", "Alice"], got)
        self.assertEqual((await alice.expect("METADATA")).params, ["dave", "display-name", "*", "Dave"])
        dave.send("METADATA #room SYNC")
        synced = await dave.collect_until(lambda l: l.command == "BATCH" and l.params[0].startswith("-"))
        self.assertIn(["alice", "display-name", "*", "Alice"], [l.params for l in synced if l.command == "METADATA"])


class WhoisTests(unittest.TestCase):
    """WHOIS shows the target's metadata as 760 (RPL_WHOISKEYVALUE), before its end."""

    @asynctest
    async def test_whois_key_values(self) -> None:
        srv = await start_server(self)
        alice = await srv.client("alice", caps=CAPS)
        bob = await srv.client("bob")  # no capability needed to read a WHOIS
        alice.send("METADATA * SET homepage https://alice.example/")
        await alice.expect(numeric("761"))
        alice.send("METADATA * SET display-name :Alice A.")
        await alice.expect(numeric("761"))
        bob.send("WHOIS alice")
        lines = await bob.collect_until(numeric("318"))
        self.assertEqual([l.params for l in lines if l.command == "760"],
                         [["bob", "alice", "display-name", "*", "Alice A."],
                          ["bob", "alice", "homepage", "*", "https://alice.example/"]])
        alice.send("WHOIS bob")
        self.assertEqual([l for l in await alice.collect_until(numeric("318")) if l.command == "760"], [])


class HookPointTests(unittest.TestCase):
    """Read markers and metadata act through the server's named hook points (freeq.core.server), never by
    overriding a method of another command group (which made the order of IRCServer's bases decide)."""

    def test_features_override_nothing(self) -> None:
        from freeq.core.markers import ReadMarkerCommands
        from freeq.core.metadata import MetadataCommands
        from freeq.core.server import IRCServer

        features = (ReadMarkerCommands, MetadataCommands)
        others = [base for base in IRCServer.__mro__ if base not in features and base is not object]
        for feature in features:
            own = {name for name in vars(feature) if not name.startswith("__")}
            clashes = {name for name in own for base in others if name in vars(base)}
            self.assertEqual(clashes, set(), feature.__name__)

    @asynctest
    async def test_no_profile_read_leaves_loopback_in_tests(self) -> None:
        """A did:plc login on a test server without a fake PLC of its own reads the profile from the tests'
        loopback PLC address (refused by the SSRF guard), never from plc.directory."""
        from tests.s2s_support import LogCapture, wait_for

        logs = LogCapture(self)
        srv = await start_server(self)
        requested: list[str] = []
        http = srv.server.profiles._http
        real_get = http.get
        http.get = lambda url, **kw: (requested.append(url), real_get(url, **kw))[1]
        self.addCleanup(setattr, http, "get", real_get)
        await web_token_login(srv, "alice", did=DID, caps="draft/metadata-2")
        await wait_for(lambda: DID in srv.server.profiles._cache, what="the profile read to end")
        self.assertEqual(logs.find("no profile for " + DID) != [], True)
        self.assertTrue(requested)  # the read was tried, on loopback
        self.assertEqual([url for url in requested if not url.startswith("http://127.0.0.1:9/")], [])


class BeforeConnectTests(unittest.TestCase):
    """METADATA during registration, and the burst that carries it before the end of the MOTD."""

    @asynctest
    async def test_set_before_connect(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        c = await srv.connect()
        c.send("CAP LS 302")
        c.send("NICK early")
        c.send("USER early 0 * :Early")
        c.send("CAP REQ :draft/metadata-2 batch")
        await c.expect(lambda l: l.command == "CAP" and "ACK" in l.params)
        c.send("METADATA * SET display-name :Early Bird")
        self.assertEqual((await c.expect(numeric("761"))).params[1:], ["*", "display-name", "*", "Early Bird"])
        c.send("METADATA #chan GET url")  # only oneself before registration
        await c.expect(fail("INVALID_TARGET"))
        c.send("CAP END")
        lines = await c.collect_until(lambda l: l.command in ("376", "422"))
        burst = [l.params for l in lines if l.command == "METADATA"]
        self.assertEqual(burst, [["early", "display-name", "*", "Early Bird"]])


class PersistenceTests(unittest.TestCase):
    """An account's metadata and a registered channel's survive a restart; a guest's do not exist after it."""

    @asynctest
    async def test_restart(self) -> None:
        data_dir = os.path.abspath(self.mktemp())
        config = Config(listen=Listen("127.0.0.1", 0), tls_listen=None, data_dir=data_dir, flood_rate=0,
                        plc_directory_url=NO_NETWORK["plc_directory_url"])
        top, port = start_tree(config)
        srv = ServerFixture(getattr(top, "irc_server"), port, None, [], [], reactor)
        try:
            a = await web_token_login(srv, "alice", did=DID, caps="draft/metadata-2")
            a.send("METADATA * SET homepage https://alice.example/")
            await a.expect(numeric("761"))
            a.send("JOIN #kept")  # founded by a DID: registered
            await a.expect(numeric("366"))
            a.send("METADATA #kept SET url https://kept.example/")
            await a.expect(numeric("761"))
        finally:
            await top.stopService()
            await srv.stop()
        top, port = start_tree(config)
        srv = ServerFixture(getattr(top, "irc_server"), port, None, [], [], reactor)
        self.addCleanup(lambda: defer.ensureDeferred(_stop(top, srv)))
        b = await web_token_login(srv, "alice", did=DID, caps="draft/metadata-2")
        for _ in range(200):
            if DID not in srv.server.metadata.loading:
                break
            await sleep(0.01)
        b.send("METADATA * GET homepage")
        self.assertEqual((await b.expect(numeric("761"))).params[-1], "https://alice.example/")
        guest = await srv.client("guest")
        guest.send("METADATA #kept GET url")
        self.assertEqual((await guest.expect(numeric("761"))).params[-1], "https://kept.example/")


async def _stop(top: Any, srv: ServerFixture) -> None:
    await top.stopService()
    await srv.stop()


class ProfilePDS(LoopbackServer):
    """A PDS answering ``com.atproto.repo.getRecord`` for one profile record (or a forced status)."""

    def __init__(self, did: str, record: Optional[dict[str, Any]]) -> None:
        super().__init__()
        self.did = did
        self.record = record

    def respond(self, request: web_server.Request, path: str, headers: dict[str, str]) -> None:
        args = {k.decode(): v[-1].decode() for k, v in request.args.items()}
        if (path != "/xrpc/com.atproto.repo.getRecord" or args.get("repo") != self.did
                or args.get("collection") != "app.bsky.actor.profile" or args.get("rkey") != "self"):
            self._send(request, 400, {"error": "InvalidRequest"})
            return
        if self.record is None:
            self._send(request, 400, {"error": "RecordNotFound"})
            return
        self._send(request, 200, {"uri": f"at://{self.did}/app.bsky.actor.profile/self", "value": self.record})


class ProfileDefaultTests(unittest.TestCase):
    """A DID's Bluesky display name and avatar become its defaults; what it sets itself wins."""

    async def identity(self, record: Optional[dict[str, Any]], delay: float = 0.0) -> tuple[Any, str, Any, Any]:
        plc = await start_plc(self)
        pds = ProfilePDS("", record)
        pds.delay = delay
        pds.start()
        self.addCleanup(pds.stop)
        key = generate_private_key("secp256k1")
        did = random_plc_did()
        pds.did = did
        plc.add(make_did_doc(did, [key.public_key()], handle="alice.test", pds_url=pds.url))
        srv = await start_server(self, allow_private_network=True, plc_directory_url=plc.url)
        return srv, did, CryptoCredential(did, key), pds

    @asynctest
    async def test_defaults_from_the_profile(self) -> None:
        blob = {"$type": "blob", "ref": {"$link": CID}, "mimeType": "image/png", "size": 99}
        srv, did, cred, pds = await self.identity({"displayName": "Alice Liddell", "avatar": blob})
        c = await login(srv, "alice", cred, caps="draft/metadata-2 batch")
        c.send("METADATA * SUB display-name")
        await c.expect(numeric("770"))
        for _ in range(300):
            if srv.server.metadata.defaults.get(did):
                break
            await sleep(0.01)
        c.send("METADATA * GET display-name avatar")
        self.assertEqual((await c.expect(numeric("761"))).params[2:], ["display-name", "*", "Alice Liddell"])
        avatar = (await c.expect(numeric("761"))).params[-1]
        self.assertEqual(avatar, f"{pds.url}/xrpc/com.atproto.sync.getBlob?did={did.replace(':', '%3A')}&cid={CID}")
        c.send("METADATA * SET display-name Mine")
        await c.expect(numeric("761"))
        c.send("METADATA * GET display-name")
        self.assertEqual((await c.expect(numeric("761"))).params[-1], "Mine")
        fetches = [r for r in pds.requests if r.path == "/xrpc/com.atproto.repo.getRecord"]
        self.assertEqual(len(fetches), 1)
        again = await login(srv, "alice2", cred)  # a second device: the cached profile, no new fetch
        again.send("METADATA * GET avatar")
        await again.expect(numeric("761"))
        self.assertEqual(len([r for r in pds.requests if r.path == "/xrpc/com.atproto.repo.getRecord"]), 1)

    @asynctest
    async def test_late_profile_is_announced(self) -> None:
        srv, did, cred, pds = await self.identity({"displayName": "Slow Alice"}, delay=0.3)
        c = await login(srv, "alice", cred, caps="draft/metadata-2 batch")
        self.assertEqual((await c.expect("METADATA", timeout=5)).params, ["alice", "display-name", "*", "Slow Alice"])

    @asynctest
    async def test_failures_are_ignored(self) -> None:
        srv, did, cred, pds = await self.identity(None)
        pds.status = 500
        c = await login(srv, "alice", cred, caps="draft/metadata-2")
        for _ in range(300):
            fetcher = srv.server.profiles
            if fetcher and did in fetcher._cache:
                break
            await sleep(0.01)
        c.send("METADATA * GET display-name")
        await c.expect(numeric("766"))

    @asynctest
    async def test_private_pds_refused_without_the_flag(self) -> None:
        """The profile fetch goes through the SSRF guard: a loopback PDS is refused unless allowed."""
        plc = await start_plc(self)
        pds = ProfilePDS("", {"displayName": "Nope"})
        pds.start()
        self.addCleanup(pds.stop)
        did = random_plc_did()
        pds.did = did
        plc.add(make_did_doc(did, [], handle="alice.test", pds_url=pds.url))
        from freeq.auth.did import DIDResolver
        from freeq.auth.http import SafeHTTPClient

        resolver = DIDResolver(loopback_http(), reactor, plc_directory_url=plc.url)
        strict = ProfileFetcher(resolver, SafeHTTPClient(reactor, allow_private=False, timeout=5), reactor)
        self.assertIsNone(await strict.fetch(did))
        self.assertEqual(pds.requests, [])
        allowed = ProfileFetcher(resolver, loopback_http(), reactor)
        profile = await allowed.fetch(did)
        self.assertEqual(profile.display_name if profile else None, "Nope")



class SDKMetadataTests(unittest.TestCase):
    """The Python SDK's metadata helpers: set, get, subscribe, and the change events."""

    @asynctest
    async def test_set_get_subscribe(self) -> None:
        from freeq.client.connection import DEFAULT_CAPS
        from freeq.client.errors import IRCError
        from freeq.client.markers import MetadataChange
        from tests.test_client_sdk import sdk
        from tests.test_sasl import new_credential

        srv = await start_server(self, **NO_NETWORK)
        caps = DEFAULT_CAPS + ("draft/metadata-2", "batch")
        alice = await sdk(self, srv.port, "alice", credential=new_credential(), caps=caps)
        bob = await sdk(self, srv.port, "bob", caps=caps)
        await alice.join("#room")
        await bob.join("#room")
        self.assertEqual(await bob.metadata_subscribe("display-name", "avatar"), ["display-name", "avatar"])
        told = bob.on_metadata.wait(lambda c: c.key == "display-name")
        self.assertEqual(await alice.metadata_set("*", "display-name", "Alice"), "Alice")
        self.assertEqual(await told, MetadataChange("alice", "display-name", "Alice"))
        self.assertEqual(bob.metadata["alice"], {"display-name": "Alice"})
        self.assertEqual(await bob.metadata_get("alice", "display-name", "homepage"),
                         {"display-name": "Alice", "homepage": None})
        with self.assertRaises(IRCError) as caught:
            await alice.metadata_set("*", "avatar", "javascript:alert(1)")
        self.assertEqual(caught.exception.params[:2], ["METADATA", "VALUE_INVALID"])
        self.assertIsNone(await alice.metadata_set("*", "display-name"))
