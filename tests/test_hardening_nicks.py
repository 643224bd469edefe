"""Look-alike nicks (issue #10 item 10): invisible and formatting characters are refused in nicks, and a
nick whose TR39 confusable skeleton equals that of a DID-bound nick is refused to everyone but the DID
that owns it. Pure parts (validation, skeleton, the index) directly; the rule over real sockets."""
from __future__ import annotations

import os
import time

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.trial import unittest

from freeq.irc.confusables import NickOwners, lookalike_keys, skeleton
from freeq.irc.names import nick_problem
from freeq.client.auth import CryptoCredential
from tests.support import IRCClient, ServerFixture, asynctest, start_server, start_tree
from tests.test_persistence import Running, _config
from tests.test_sasl import authenticate, finish, login, new_credential, open_negotiation

OWNED = "alicex"
#: The issue's look-alikes of ``alicex``: invisible ones (refused by validation) and confusable ones.
ZWSP = "alicex\u200b"
SOFT_HYPHEN = "alic\u00adex"
CYRILLIC_A = "\u0430licex"
FULLWIDTH_A = "\uff41licex"
CAPITAL_I = "aIicex"


class NickValidationTests(unittest.TestCase):
    """:func:`nick_problem`: what is refused with 432, and what international nicks stay valid."""

    def test_invisible_and_format_characters_refused(self) -> None:
        """Zero-width and format characters, bidi controls, odd spaces, fillers and controls are refused
        with a reason naming the code point; nicks in other scripts stay valid."""
        for ch in ("\u200b", "\u00ad", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202e", "\u2066", "\u061c",
                   "\u00a0", "\u3000", "\u2028", "\u3164", "\u115f", "\ufe0f", "\U000e0041", "\u0085", "\ue000",
                   "\u2800", "\u034f"):
            problem = nick_problem(f"ali{ch}cex", 64)
            self.assertIsNotNone(problem, f"U+{ord(ch):04X}")
            self.assertIn(f"U+{ord(ch):04X}", problem or "")
        # ... while letters of any script, accents and handles with dots remain acceptable.
        for nick in ("café", "Việt", "Алиса", "ἀλέξης", "李小龍", "alice.bsky.social", "a[b]c`d^_{|}"):
            self.assertIsNone(nick_problem(nick, 64), nick)

    def test_combining_marks_bounded(self) -> None:
        """A combining mark may not start a nick, nor more than three follow each other."""
        self.assertIn("starts with a combining mark", nick_problem("\u0301alice", 64) or "")
        self.assertIn("combining marks in a row", nick_problem("ali" + "\u0301" * 4 + "ce", 64) or "")
        self.assertIsNone(nick_problem("e\u0323\u0302t", 64))  # Vietnamese, decomposed


class SkeletonTests(unittest.TestCase):
    """The TR39 skeleton and the keys nicks are compared by."""

    def test_issue_lookalikes_share_a_key_with_the_original(self) -> None:
        """Cyrillic а, fullwidth ａ and capital I for l all share a look-alike key with ``alicex``."""
        self.assertEqual(skeleton(CYRILLIC_A), skeleton(OWNED))
        self.assertEqual(skeleton(FULLWIDTH_A), skeleton(OWNED))
        for nick in (CYRILLIC_A, FULLWIDTH_A, CAPITAL_I, "ALI\u0421EX", "a1icex"):
            self.assertTrue(set(lookalike_keys(nick)) & set(lookalike_keys(OWNED)), nick)

    def test_different_nicks_differ(self) -> None:
        """Nicks that do not look alike keep different keys."""
        for nick in ("alicey", "alice", "bob", "malicex"):
            self.assertFalse(set(lookalike_keys(nick)) & set(lookalike_keys(OWNED)), nick)


class NickOwnersTests(unittest.TestCase):
    """The table of DID-bound nicks keeps its look-alike index exact through every change."""

    def test_index_follows_bindings(self) -> None:
        """Set, rebind and delete update what :meth:`NickOwners.lookalike` finds; the owner is exempt."""
        owners = NickOwners({"alicex": ("alicex", "did:plc:alice")})
        self.assertEqual(owners, {"alicex": ("alicex", "did:plc:alice")})
        self.assertEqual(owners.lookalike(CYRILLIC_A, None), ("alicex", "did:plc:alice"))
        self.assertEqual(owners.lookalike(CYRILLIC_A, "did:plc:mallory"), ("alicex", "did:plc:alice"))
        self.assertIsNone(owners.lookalike(CYRILLIC_A, "did:plc:alice"))
        self.assertIsNone(owners.lookalike("Alicex", None), "the exact nick is the ownership rule's")
        owners["alicex"] = ("alicex", "did:plc:other")
        self.assertEqual(owners.lookalike(CYRILLIC_A, "did:plc:alice"), ("alicex", "did:plc:other"))
        del owners["alicex"]
        self.assertIsNone(owners.lookalike(CYRILLIC_A, None))
        owners.update({"bob": ("Bob", "did:plc:bob")})
        self.assertEqual(owners.lookalike("B\u043eb", None), ("Bob", "did:plc:bob"))
        self.assertEqual(owners.pop("bob"), ("Bob", "did:plc:bob"))
        self.assertIsNone(owners.lookalike("B\u043eb", None))
        self.assertEqual(len(owners), 0)

    def test_bound_lookalike_keeps_its_own_nick(self) -> None:
        """Two look-alike nicks bound before the rule: each owner keeps its own exact nick."""
        owners = NickOwners({"alicex": ("alicex", "did:a"), "aiicex": ("aIicex", "did:b")})
        self.assertIsNone(owners.lookalike("aIicex", "did:b"))
        self.assertIsNone(owners.lookalike("alicex", "did:a"))
        self.assertEqual(owners.lookalike(CYRILLIC_A, "did:b"), ("alicex", "did:a"))


def refusal(c: IRCClient) -> Deferred:
    """The next 432 or 433."""
    return c.expect(lambda l: l.command in ("432", "433"))


class LookalikeNickTests(unittest.TestCase):
    """Guests and other identities cannot take a look-alike of a DID-bound nick; its owner can."""

    async def setup(self) -> tuple:
        srv = await start_server(self, flood_rate=0)
        cred = new_credential()
        owner = await login(srv, OWNED, cred)
        self.assertEqual(srv.server.nick_owner(OWNED), owner_did(srv))
        return srv, cred, owner

    @asynctest
    async def test_guest_refused_before_registration(self) -> None:
        """A connecting guest gets 432 for the invisible variants and 433 naming ``alicex`` for the
        confusable ones, then registers under a nick of its own."""
        srv, _cred, _owner = await self.setup()
        guest = await srv.connect()
        for nick, code in ((ZWSP, "432"), (SOFT_HYPHEN, "432"), (CYRILLIC_A, "433"), (FULLWIDTH_A, "433"),
                           (CAPITAL_I, "433")):
            guest.send(f"NICK {nick}")
            line = await refusal(guest)
            self.assertEqual((line.command, line.params[1]), (code, nick))
            if code == "433":
                self.assertIn("looks like alicex, which is registered to another identity", line.params[-1])
            else:
                self.assertIn("invisible, control or formatting character", line.params[-1])
        guest.send("NICK guest")
        guest.send("USER guest 0 * :Guest")
        welcome = await guest.expect("001")
        self.assertEqual(welcome.params[0], "guest")
        for nick in (CYRILLIC_A, FULLWIDTH_A, CAPITAL_I, ZWSP):
            self.assertNotIn(nick, srv.server.users)

    @asynctest
    async def test_registered_guest_and_other_identity_refused(self) -> None:
        """A registered guest, and a user signed in with another DID, get 433 for each look-alike (432 for
        the invisible ones); the owner itself may still use them, and signs in as ``alicex`` again."""
        srv, cred, owner = await self.setup()
        guest = await srv.client("bob")
        other = await login(srv, "carol", new_credential())
        for c in (guest, other):
            for nick in (CYRILLIC_A, FULLWIDTH_A, CAPITAL_I, "ALI\u0421EX"):
                c.send(f"NICK {nick}")
                line = await refusal(c)
                self.assertEqual((line.command, line.params[1]), ("433", nick))
            for nick in (ZWSP, SOFT_HYPHEN):
                c.send(f"NICK {nick}")
                line = await refusal(c)
                self.assertEqual((line.command, line.params[1]), ("432", nick))
        self.assertEqual(sorted(u.nick for u in srv.server.connections), sorted(["alicex", "bob", "carol"]))
        await self.owner_keeps_its_nick(srv, cred, owner)

    async def owner_keeps_its_nick(self, srv: ServerFixture, cred: CryptoCredential, owner: IRCClient) -> None:
        """The owner may switch to a look-alike of its own nick and back, and signs in as ``alicex`` again."""
        owner.send(f"NICK {CYRILLIC_A}")
        line = await owner.expect("NICK")
        self.assertEqual(line.params, [CYRILLIC_A])
        owner.send(f"NICK {OWNED}")
        line = await owner.expect("NICK")
        self.assertEqual(line.params, [OWNED])
        owner.disconnect()
        await owner.closed
        again = await open_negotiation(srv, OWNED)
        self.assertEqual((await authenticate(again, cred)).command, "903")
        welcome = await finish(again)
        self.assertEqual(welcome.params[0], OWNED)


class StoredBindingTests(unittest.TestCase):
    """Bindings read from the database at start-up are in the look-alike index too."""

    async def start(self, data_dir: str) -> Running:
        top, port = start_tree(_config(data_dir))
        running = Running(top, port)
        self.addCleanup(lambda: defer.ensureDeferred(running.stop()))
        return running

    @asynctest
    async def test_lookalike_of_stored_binding_refused_after_restart(self) -> None:
        """A nick bound in the store before the server started is protected from look-alikes."""
        data_dir = os.path.abspath(self.mktemp())
        first = await self.start(data_dir)
        first.store.bind_nick(OWNED, OWNED, "did:plc:alice", time.time())
        await first.stop()
        running = await self.start(data_dir)
        guest = await running.fixture.connect()
        guest.send(f"NICK {CYRILLIC_A}")
        line = await refusal(guest)
        self.assertEqual((line.command, line.params[1]), ("433", CYRILLIC_A))


def owner_did(srv: ServerFixture) -> str:
    """The DID signed in as ``alicex``."""
    return str(srv.server.users[OWNED].account)
