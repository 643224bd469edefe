"""SASL ATPROTO-CHALLENGE on the wire (reference §13.1 and §13.5 adversarial cases) and what an identity
does on the server: nick ownership, founders and DID ops, DID bans, oper DIDs, account surfaces,
and message signatures. Real server on loopback; raw line clients, with the SDK where it helps."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from freeq.auth.multikey import ED25519, SECP256K1, did_key, generate_private_key
from freeq.client.auth import CryptoCredential, b64url, b64url_decode, chunk_payload
from freeq.config import Config, Listen
from freeq.signing import canonical, verify
from tests.atproto_servers import make_did_doc, random_plc_did, start_plc
from tests.support import IRCClient, Line, ServerFixture, asynctest, start_server, start_tree
from tests.test_client_sdk import close_client, same_second_window, sdk


def new_credential(kind: str = ED25519) -> CryptoCredential:
    """A fresh did:key signer."""
    return CryptoCredential.from_private_key(generate_private_key(kind))


def is_cap(sub: str) -> Any:
    return lambda l: l.command == "CAP" and l.params[1:2] == [sub]


async def open_negotiation(srv: ServerFixture, nick: str, req: Optional[str] = "sasl") -> IRCClient:
    """Connect, start CAP negotiation (LS 302), send NICK/USER and, with ``req``, REQ those caps."""
    c = await srv.connect()
    c.nick = nick
    c.send("CAP LS 302")
    c.send(f"NICK {nick}")
    c.send(f"USER {nick} 0 * :Real {nick}")
    await c.expect(is_cap("LS"))
    if req:
        c.send("CAP REQ :" + req)
        await c.expect(is_cap("ACK"))
    return c


async def read_challenge(c: IRCClient) -> bytes:
    """Read a (possibly chunked) server challenge and decode it."""
    pieces = []
    while True:
        line = await c.expect("AUTHENTICATE")
        if line.params[0] != "+":
            pieces.append(line.params[0])
        if len(line.params[0]) < 400:
            break
    return b64url_decode("".join(pieces))


async def request_challenge(c: IRCClient) -> bytes:
    """``AUTHENTICATE ATPROTO-CHALLENGE`` and the decoded challenge."""
    c.send("AUTHENTICATE ATPROTO-CHALLENGE")
    return await read_challenge(c)


def send_payload(c: IRCClient, payload: str) -> None:
    """Send a response payload in IRCv3 chunks."""
    for piece in chunk_payload(payload):
        c.send("AUTHENTICATE " + piece)


async def sasl_result(c: IRCClient) -> Line:
    """The next 903 or 904 (or 906)."""
    return await c.expect(lambda l: l.command in ("903", "904", "906"))


async def authenticate(c: IRCClient, cred: CryptoCredential) -> Line:
    """A whole exchange with ``cred``; returns the 903/904 line."""
    challenge = await request_challenge(c)
    send_payload(c, cred.payload(challenge))
    return await sasl_result(c)


async def finish(c: IRCClient) -> Line:
    """CAP END and wait for the welcome; returns the 001 line."""
    c.send("CAP END")
    welcome = await c.expect("001")
    await c.expect(lambda l: l.command in ("376", "422"))
    return welcome


async def login(srv: ServerFixture, nick: str, cred: CryptoCredential, caps: str = "") -> IRCClient:
    """A raw client fully authenticated as ``cred`` and registered, its lines so far read."""
    c = await open_negotiation(srv, nick, ("sasl " + caps).strip())
    line = await authenticate(c, cred)
    assert line.command == "903", line
    await finish(c)
    c.skip()
    return c


def padded_payload(fields: dict[str, str], length: int) -> str:
    """A response payload of exactly ``length`` base64url characters (an ignored ``pad`` field fills it)."""
    assert length % 4 in (0, 2, 3)
    size = length * 3 // 4
    base = json.dumps(dict(fields, pad=""), separators=(",", ":"))
    body = json.dumps(dict(fields, pad="x" * (size - len(base))), separators=(",", ":")).encode()
    payload = b64url(body)
    assert len(payload) == length, (len(payload), length)
    return payload


class SaslAdversarialTests(unittest.TestCase):
    """Hostile and unusual SASL exchanges (reference §13.1, §13.5 items 9-10)."""

    async def server(self, **overrides: Any) -> ServerFixture:
        self.plc = await start_plc(self)
        return await start_server(self, allow_private_network=True, plc_directory_url=self.plc.url, **overrides)

    @asynctest
    async def test_cap_ls_advertises_mechanism(self) -> None:
        """CAP LS 302 lists sasl=ATPROTO-CHALLENGE,PLAIN (PLAIN: issue #12 item 7, tests/test_sasl_plain.py)."""
        srv = await self.server()
        c = await srv.connect()
        c.send("CAP LS 302")
        ls = await c.expect(is_cap("LS"))
        self.assertIn("sasl=ATPROTO-CHALLENGE,PLAIN", ls.params[-1].split())

    @asynctest
    async def test_challenge_format(self) -> None:
        """The challenge is compact JSON session_id/nonce/timestamp with a 43-char nonce, base64url without padding."""
        srv = await self.server()
        c = await open_negotiation(srv, "fmt")
        c.send("AUTHENTICATE ATPROTO-CHALLENGE")
        line = await c.expect("AUTHENTICATE")
        self.assertIsNone(line.source)
        self.assertNotIn("=", line.params[0])
        obj = json.loads(b64url_decode(line.params[0]))
        self.assertEqual(list(obj), ["session_id", "nonce", "timestamp"])
        self.assertEqual(len(obj["nonce"]), 43)
        c2 = await open_negotiation(srv, "fmt2")
        other = json.loads(await request_challenge(c2))
        self.assertNotEqual(obj["session_id"], other["session_id"])
        self.assertNotEqual(obj["nonce"], other["nonce"])

    @asynctest
    async def test_garbage_payload_then_guest(self) -> None:
        """A garbage response → 904; CAP END then registers a guest."""
        srv = await self.server()
        c = await open_negotiation(srv, "garbage")
        await request_challenge(c)
        c.send("AUTHENTICATE !!!not-valid-base64!!!")
        self.assertEqual((await sasl_result(c)).command, "904")
        welcome = await finish(c)
        self.assertEqual(welcome.params[0], "garbage")
        self.assertIsNone(srv.server.users["garbage"].account)

    @asynctest
    async def test_garbage_then_valid_succeeds(self) -> None:
        """After a garbage response a fresh challenge signed correctly → 903 and an authenticated 001."""
        srv = await self.server()
        cred = new_credential()
        c = await open_negotiation(srv, "retry")
        await request_challenge(c)
        c.send("AUTHENTICATE bm90IGpzb24")
        self.assertEqual((await sasl_result(c)).command, "904")
        self.assertEqual((await authenticate(c, cred)).command, "903")
        await finish(c)
        self.assertEqual(srv.server.users["retry"].account, cred.did)

    @asynctest
    async def test_signature_by_other_key(self) -> None:
        """Key B signing while claiming DID A (a did:plc doc holding key A, or did:key A) → 904."""
        srv = await self.server()
        key_a, key_b = generate_private_key(SECP256K1), generate_private_key(SECP256K1)
        did = random_plc_did()
        self.plc.add(make_did_doc(did, [key_a.public_key()]))
        c = await open_negotiation(srv, "forger")
        self.assertEqual((await authenticate(c, CryptoCredential(did, key_b))).command, "904")
        forged = CryptoCredential(did_key(key_a.public_key()), key_b)
        self.assertEqual((await authenticate(c, forged)).command, "904")
        self.assertEqual((await authenticate(c, CryptoCredential(did, key_a))).command, "903")

    @asynctest
    async def test_unresolvable_did(self) -> None:
        """A did:plc the directory does not know → 904."""
        srv = await self.server()
        c = await open_negotiation(srv, "nobody")
        line = await authenticate(c, CryptoCredential(random_plc_did(), generate_private_key(ED25519)))
        self.assertEqual(line.command, "904")
        await finish(c)

    @asynctest
    async def test_three_failures_close_the_connection(self) -> None:
        """Three failing responses → 904 ×3, then ERROR, and the socket is really closed."""
        srv = await self.server()
        c = await open_negotiation(srv, "bogus")
        bogus = CryptoCredential("did:key:z6MkBogus", generate_private_key(ED25519))
        for _ in range(3):
            self.assertEqual((await authenticate(c, bogus)).command, "904")
        error = await c.expect("ERROR")
        self.assertIn("Too many SASL failures", error.params[-1])
        await c.closed
        self.assertTrue(c.is_closed)
        self.assertEqual(len([u for u in srv.server.connections if u.nick == "bogus"]), 0)

    @asynctest
    async def test_challenge_expiry(self) -> None:
        """With a Clock: answering after challenge_timeout → 904; a fresh challenge answered at once → 903."""
        clock = Clock()
        clock.advance(1_700_000_000)
        srv = await self.server(clock=clock, challenge_timeout=5.0)
        cred = new_credential()
        c = await open_negotiation(srv, "slow")
        challenge = await request_challenge(c)
        clock.advance(6)
        send_payload(c, cred.payload(challenge))
        line = await sasl_result(c)
        self.assertEqual(line.command, "904")
        self.assertIn("expired", line.params[-1])
        challenge = await request_challenge(c)
        clock.advance(5)  # exactly the timeout is still in time
        send_payload(c, cred.payload(challenge))
        self.assertEqual((await sasl_result(c)).command, "903")

    @asynctest
    async def test_replayed_response(self) -> None:
        """A response to an earlier challenge is refused on a new one, on the same or another connection."""
        srv = await self.server()
        cred = new_credential()
        c = await open_negotiation(srv, "replayer")
        old = cred.payload(await request_challenge(c))
        await request_challenge(c)
        send_payload(c, old)
        self.assertEqual((await sasl_result(c)).command, "904")
        good = await open_negotiation(srv, "victim")
        challenge = await request_challenge(good)
        answer = cred.payload(challenge)
        send_payload(good, answer)
        self.assertEqual((await sasl_result(good)).command, "903")
        thief = await open_negotiation(srv, "thief")
        await request_challenge(thief)
        send_payload(thief, answer)
        self.assertEqual((await sasl_result(thief)).command, "904")

    @asynctest
    async def test_abort_mid_exchange(self) -> None:
        """AUTHENTICATE * mid-exchange → 906; CAP END → 001 as a guest."""
        srv = await self.server()
        c = await open_negotiation(srv, "quitter")
        await request_challenge(c)
        c.send("AUTHENTICATE *")
        self.assertEqual((await sasl_result(c)).command, "906")
        await finish(c)
        self.assertIsNone(srv.server.users["quitter"].account)

    @asynctest
    async def test_without_cap_req(self) -> None:
        """AUTHENTICATE works without CAP REQ sasl."""
        srv = await self.server()
        cred = new_credential()
        c = await open_negotiation(srv, "noreq", req=None)
        self.assertEqual((await authenticate(c, cred)).command, "903")
        await finish(c)
        self.assertEqual(srv.server.users["noreq"].account, cred.did)

    @asynctest
    async def test_second_challenge_replaces_first(self) -> None:
        """Two challenge requests in a row: answering the second → 903."""
        srv = await self.server()
        cred = new_credential()
        c = await open_negotiation(srv, "twice")
        await request_challenge(c)
        second = await request_challenge(c)
        send_payload(c, cred.payload(second))
        self.assertEqual((await sasl_result(c)).command, "903")

    @asynctest
    async def test_bad_did_strings(self) -> None:
        """did "" and "not-a-did" → 904, and the client can still register."""
        srv = await self.server()
        key = generate_private_key(ED25519)
        c = await open_negotiation(srv, "baddid")
        for did in ("", "not-a-did"):
            self.assertEqual((await authenticate(c, CryptoCredential(did, key))).command, "904")
        await finish(c)

    @asynctest
    async def test_empty_authenticate(self) -> None:
        """`AUTHENTICATE` with an empty parameter is refused; CAP END mid-exchange aborts it (906) and registers."""
        srv = await self.server()
        c = await open_negotiation(srv, "empty")
        await request_challenge(c)
        c.send("AUTHENTICATE :")
        c.send("CAP END")
        await c.expect("906")
        await c.expect("001")
        self.assertIsNone(srv.server.users["empty"].account)

    @asynctest
    async def test_chunked_responses(self) -> None:
        """Responses over 400 bytes in chunks, exactly 400 with a trailing '+', exactly 400 alone (JS SDK),
        and 800 with '+' are all accepted."""
        srv = await self.server()
        cred = new_credential()
        for i, (length, plus) in enumerate([(700, False), (400, True), (400, False), (800, True), (1203, False)]):
            c = await open_negotiation(srv, f"chunk{i}")
            challenge = await request_challenge(c)
            payload = padded_payload(dict(cred.response(challenge)), length)  # type: ignore[arg-type]
            pieces = [payload[j:j + 400] for j in range(0, len(payload), 400)]
            for piece in pieces:
                c.send("AUTHENTICATE " + piece)
            if plus:
                c.send("AUTHENTICATE +")
            line = await sasl_result(c)
            self.assertEqual(line.command, "903", f"length {length} plus {plus}: {line.raw}")

    @asynctest
    async def test_oversized_response(self) -> None:
        """An endless chunked response is cut off with 904."""
        srv = await self.server(flood_rate=0)
        c = await open_negotiation(srv, "flood", req="sasl")
        await request_challenge(c)
        for _ in range(50):
            c.send("AUTHENTICATE " + "A" * 400)
        self.assertEqual((await sasl_result(c)).command, "904")

    @asynctest
    async def test_stray_plus_ignored(self) -> None:
        """AUTHENTICATE + outside an exchange gets no 904 (before registration and after a success)."""
        srv = await self.server()
        cred = new_credential()
        c = await open_negotiation(srv, "plus")
        c.send("AUTHENTICATE +")
        c.send("PING :sync1")
        lines = await c.collect_until("PONG")
        self.assertEqual([l.raw for l in lines if l.command.startswith("90")], [])
        self.assertEqual((await authenticate(c, cred)).command, "903")
        c.send("AUTHENTICATE +")
        await finish(c)
        c.send("PING :sync2")
        lines = await c.collect_until("PONG")
        self.assertEqual([l.raw for l in lines if l.command.startswith("90")], [])

    @asynctest
    async def test_already_authenticated_907(self) -> None:
        """A second AUTHENTICATE after success → 907."""
        srv = await self.server()
        c = await login(srv, "again", new_credential())
        c.send("AUTHENTICATE ATPROTO-CHALLENGE")
        self.assertEqual((await c.expect(lambda l: l.command.startswith("90"))).command, "907")

    @asynctest
    async def test_unknown_mechanism_908(self) -> None:
        """AUTHENTICATE SCRAM-SHA-256 → 908 listing ATPROTO-CHALLENGE,PLAIN, then 904."""
        srv = await self.server()
        c = await open_negotiation(srv, "plain")
        c.send("AUTHENTICATE SCRAM-SHA-256")
        line = await c.expect("908")
        self.assertEqual(line.params[1], "ATPROTO-CHALLENGE,PLAIN")
        await c.expect("904")
        await finish(c)


class RestartableServer:
    """A real service tree on a data directory (freeq.tap.build_service), stoppable and restartable."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.case = case
        self.data_dir = os.path.abspath(case.mktemp())
        self.top: Any = None
        self.fixture: Optional[ServerFixture] = None

    async def start(self) -> ServerFixture:
        config = Config(listen=Listen("127.0.0.1", 0), tls_listen=None, data_dir=self.data_dir, flood_rate=0)
        top, port = start_tree(config)
        self.top = top
        self.fixture = ServerFixture(getattr(top, "irc_server"), port, None, [], [], reactor)
        self.case.addCleanup(lambda: defer.ensureDeferred(self.stop()))
        return self.fixture

    async def stop(self) -> None:
        if self.top is not None:
            top, self.top = self.top, None
            await top.stopService()
            assert self.fixture is not None
            await self.fixture.stop()


class NickOwnershipTests(unittest.TestCase):
    """Nicks bound to DIDs at SASL success."""

    @asynctest
    async def test_guest_renamed_and_owner_reclaims(self) -> None:
        """A guest registering an owned nick becomes Guest<n> with a NOTICE; the owner gets the nick back."""
        srv = await start_server(self)
        cred = new_credential()
        owner = await sdk(self, srv.port, "alice", credential=cred)
        self.assertEqual(srv.server.nick_owner("alice"), cred.did)
        await owner.quit()
        guest = await srv.connect()
        guest.send("NICK alice")
        guest.send("USER a 0 * :squatter")
        notice = await guest.expect("NOTICE")
        self.assertIn("alice", notice.params[-1])
        self.assertIn("registered", notice.params[-1])
        welcome = await guest.expect("001")
        self.assertRegex(welcome.params[0], r"^Guest\d+$")
        self.assertNotIn("alice", srv.server.users)
        back = await sdk(self, srv.port, "alice", credential=cred)
        self.assertEqual((back.nick, back.account), ("alice", cred.did))

    @asynctest
    async def test_owned_nick_refused_in_every_state(self) -> None:
        """A registered guest cannot NICK to an owned nick, even after sending CAP LS or AUTHENTICATE first."""
        srv = await start_server(self)
        cred = new_credential()
        owner = await sdk(self, srv.port, "alice", credential=cred)
        await owner.quit()
        guest = await srv.client("mallory")
        guest.send("NICK alice")
        self.assertEqual((await guest.expect("433")).params[1], "alice")
        guest.send("CAP LS 302")
        await guest.expect(is_cap("LS"))
        guest.send("NICK alice")
        await guest.expect("433")
        guest.send("AUTHENTICATE ATPROTO-CHALLENGE")
        await guest.expect("AUTHENTICATE")
        guest.send("NICK alice")
        await guest.expect("433")
        self.assertIn("mallory", srv.server.users)
        self.assertNotIn("alice", srv.server.users)

    @asynctest
    async def test_ownership_survives_restart(self) -> None:
        """Nick ownership is written to the store and enforced after a restart."""
        run = RestartableServer(self)
        srv = await run.start()
        cred = new_credential()
        owner = await sdk(self, srv.port, "alice", credential=cred)
        await owner.quit()
        await run.stop()
        srv = await run.start()
        self.assertEqual(srv.server.nick_owner("alice"), cred.did)
        guest = await srv.connect()
        guest.send("NICK alice")
        guest.send("USER a 0 * :squatter")
        self.assertRegex((await guest.expect("001")).params[0], r"^Guest\d+$")
        back = await sdk(self, srv.port, "alice", credential=cred)
        self.assertEqual(back.nick, "alice")
        await back.quit()


class ChannelAuthorityTests(unittest.TestCase):
    """Founders, persistent DID operators, DID bans, operator DIDs."""

    @asynctest
    async def test_founder_and_did_ops(self) -> None:
        """The first DID in a channel founds it and regains ops on rejoin and reconnect; +o on a DID persists;
        another op cannot -o the founder (482)."""
        srv = await start_server(self)
        alice_cred, carol_cred = new_credential(), new_credential(SECP256K1)
        alice = await login(srv, "alice", alice_cred)
        guest = await srv.client("guest")
        alice.send("JOIN #den")
        await alice.expect("366")
        self.assertEqual(srv.server.channels["#den"].founder, alice_cred.did)
        guest.send("JOIN #den")
        await guest.expect("366")
        carol = await login(srv, "carol", carol_cred)
        carol.send("JOIN #den")
        await carol.expect("366")
        alice.send("MODE #den +o carol")
        await carol.expect(r"MODE #den \+o carol")
        self.assertIn(carol_cred.did, srv.server.channels["#den"].did_ops)

        carol.send("PART #den")
        await carol.expect("PART")
        carol.send("JOIN #den")
        names = await carol.expect("353")
        self.assertIn("@carol", names.params[-1].split())

        carol.send("MODE #den -o alice")
        self.assertEqual((await carol.expect("482")).params[1], "#den")

        alice.send("QUIT :brb")
        await alice.closed
        alice = await login(srv, "alice", alice_cred)
        alice.send("JOIN #den")
        names = await alice.expect("353")
        self.assertIn("@alice", names.params[-1].split())

    @asynctest
    async def test_did_ban_follows_identity(self) -> None:
        """MODE #c +b <did> keeps that DID out under any nick; others still join."""
        srv = await start_server(self)
        op_cred, banned = new_credential(), new_credential()
        op = await login(srv, "op", op_cred)
        op.send("JOIN #guarded")
        await op.expect("366")
        op.send(f"MODE #guarded +b {banned.did}")
        await op.expect(r"MODE #guarded \+b")
        op.send("MODE #guarded +b")
        entry = await op.expect("367")
        self.assertEqual(entry.params[2], banned.did)
        first = await login(srv, "pest", banned)
        first.send("JOIN #guarded")
        await first.expect("474")
        second = await login(srv, "newname", banned)
        second.send("JOIN #guarded")
        self.assertEqual((await second.expect("474")).params[1], "#guarded")
        other = await login(srv, "fine", new_credential())
        other.send("JOIN #guarded")
        await other.expect("366")

    @asynctest
    async def test_oper_dids(self) -> None:
        """A DID in oper_dids is made a server operator on SASL success; before registration its +o is announced
        once, by the welcome burst after 001 (issue #13 item 8: not also before 001)."""
        cred = new_credential()
        srv = await start_server(self, oper_dids=(cred.did,))
        c = await open_negotiation(srv, "boss")
        lines_start = len(c.lines)
        self.assertEqual((await authenticate(c, cred)).command, "903")
        await finish(c)
        await c.sync()  # the welcome burst's MODE follows the end of the MOTD
        commands = [l.command for l in c.lines[lines_start:]]
        modes = [l for l in c.lines[lines_start:] if l.command == "MODE"]
        self.assertEqual([m.params for m in modes], [["boss", "+o"]])
        self.assertLess(commands.index("001"), commands.index("MODE"))
        self.assertTrue(srv.server.users["boss"].is_oper)
        plain = await login(srv, "pleb", new_credential())
        self.assertFalse(srv.server.users["pleb"].is_oper)
        plain.send("PING :x")
        await plain.expect("PONG")


class AccountSurfaceTests(unittest.TestCase):
    """Where other clients see the DID: 900, WHOIS 330, extended-join, account-tag, account-notify."""

    @asynctest
    async def test_surfaces(self) -> None:
        """900 names the DID and cloak; WHOIS 330; extended-join, account tag and ACCOUNT carry the DID."""
        srv = await start_server(self)
        cred = new_credential()
        watcher = await srv.client("watcher", caps=("extended-join", "account-tag", "account-notify",
                                                    "message-tags"))
        watcher.send("JOIN #lobby")
        await watcher.expect("366")
        c = await open_negotiation(srv, "ident")
        challenge = await request_challenge(c)
        send_payload(c, cred.payload(challenge))
        logged_in = await c.expect("900")
        self.assertEqual(logged_in.params[1], f"ident!~ident@freeq/key/{cred.did[8:16]}")
        self.assertEqual(logged_in.params[2], cred.did)
        await c.expect("903")
        await finish(c)
        c.send("JOIN #lobby")
        join = await watcher.expect("JOIN")
        self.assertEqual(join.params, ["#lobby", cred.did, "Real ident"])
        c.send("PRIVMSG #lobby :tagged")
        msg = await watcher.expect("PRIVMSG")
        self.assertEqual(msg.tags.get("account"), cred.did)
        watcher.send("WHOIS ident")
        lines = await watcher.collect_until("318")
        account = [l for l in lines if l.command == "330"]
        self.assertEqual(account[0].params[2], cred.did)

        late = await srv.client("late")
        late.send("JOIN #lobby")
        await watcher.expect("JOIN")
        late_cred = new_credential()
        self.assertEqual((await authenticate(late, late_cred)).command, "903")
        notify = await watcher.expect("ACCOUNT")
        self.assertEqual(notify.params, [late_cred.did])
        self.assertTrue(notify.source.startswith("late!"))
        guest = await srv.client("nobody")
        watcher.send("WHOIS nobody")
        lines = await watcher.collect_until("318")
        self.assertEqual([l for l in lines if l.command == "330"], [])
        guest.send("PING :x")


class SignedMessageTests(unittest.TestCase):
    """+freeq.at/sig on messages from DID users; never from guests."""

    CAPS = ("message-tags", "server-time", "account-tag")

    async def setup_room(self, **login_kw: Any) -> tuple[Any, IRCClient, IRCClient, CryptoCredential]:
        srv = await start_server(self)
        cred = new_credential()
        sender = await login(srv, "signer", cred, caps="message-tags")
        receiver = await srv.client("reader", caps=self.CAPS)
        for c in (sender, receiver):
            c.send("JOIN #Signed")
            await c.expect("366")
        return srv, sender, receiver, cred

    @staticmethod
    def second_of(line: Line) -> int:
        from freeq.client.protocol import parse_server_time

        when = parse_server_time(line.tags.get("time"))
        assert when is not None
        return int(when)

    @asynctest
    async def test_server_signature(self) -> None:
        """Without a session key the server signs; the tag verifies with the server's public key over the
        lower-cased channel; a forged client tag is replaced."""
        srv, sender, receiver, cred = await self.setup_room()
        sender.send("@+freeq.at/sig=FORGED PRIVMSG #Signed :signed by the server")
        msg = await receiver.expect("PRIVMSG")
        sig = msg.tags["+freeq.at/sig"]
        self.assertNotEqual(sig, "FORGED")
        self.assertTrue(verify(srv.server.signer.public_key, sig, cred.did, "#signed", "signed by the server",
                               self.second_of(msg)))

    @asynctest
    async def test_client_session_key_signature(self) -> None:
        """A MSGSIG-registered key's signature over the canonical target is relayed as is; one over another
        spelling of the channel is replaced by the server's."""
        from cryptography.hazmat.primitives.asymmetric import ed25519

        srv, sender, receiver, cred = await self.setup_room()
        session = ed25519.Ed25519PrivateKey.generate()
        public = session.public_key().public_bytes_raw()
        sender.send("MSGSIG " + b64url(public))
        await sender.expect("MSGSIG")
        await same_second_window()
        now = int(time.time())
        mine = b64url(session.sign(canonical(cred.did, "#signed", "by me", now)))
        sender.send(f"@+freeq.at/sig={mine} PRIVMSG #Signed :by me")
        msg = await receiver.expect("PRIVMSG")
        self.assertEqual(msg.tags["+freeq.at/sig"], mine)
        self.assertTrue(verify(public, mine, cred.did, "#signed", "by me", self.second_of(msg)))
        await same_second_window()
        now = int(time.time())
        typed = b64url(session.sign(canonical(cred.did, "#Signed", "typed case", now)))
        sender.send(f"@+freeq.at/sig={typed} PRIVMSG #Signed :typed case")
        msg = await receiver.expect("PRIVMSG")
        self.assertNotEqual(msg.tags["+freeq.at/sig"], typed)
        self.assertTrue(verify(srv.server.signer.public_key, msg.tags["+freeq.at/sig"], cred.did, "#signed",
                               "typed case", self.second_of(msg)))

    @asynctest
    async def test_guest_forged_signature_stripped(self) -> None:
        """A guest's +freeq.at/sig never reaches anyone, and guests' messages carry no signature."""
        srv = await start_server(self)
        guest = await srv.client("guest", caps=("message-tags",))
        receiver = await srv.client("reader", caps=self.CAPS)
        for c in (guest, receiver):
            c.send("JOIN #open")
            await c.expect("366")
        guest.send("@+freeq.at/sig=FORGEDSIG;+other=ok PRIVMSG #open :trust me")
        msg = await receiver.expect("PRIVMSG")
        self.assertNotIn("+freeq.at/sig", msg.tags)
        self.assertNotIn("FORGEDSIG", msg.raw)
        self.assertEqual(msg.tags.get("+other"), "ok")
        guest.send("@+freeq.at/sig=FORGEDSIG PRIVMSG reader :dm")
        dm = await receiver.expect("PRIVMSG")
        self.assertNotIn("FORGEDSIG", dm.raw)

    @asynctest
    async def test_sdk_receiver_verifies(self) -> None:
        """An SDK receiver verifies a raw DID user's server-signed message with ChatMessage.verify."""
        srv = await start_server(self)
        cred = new_credential()
        sender = await login(srv, "raw", cred)
        reader = await sdk(self, srv.port, "sdkreader")
        incoming = reader.on_message.wait()
        sender.send("PRIVMSG sdkreader :check this")
        msg = await incoming
        self.assertEqual(msg.account, cred.did)
        self.assertTrue(msg.verify(srv.server.signer.public_key))
        self.assertFalse(msg.verify(b"\x00" * 32))
        await close_client(reader)
