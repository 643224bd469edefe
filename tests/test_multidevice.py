"""Multi-device: several connections of one DID share its nick and channels."""
from __future__ import annotations

from twisted.trial import unittest

from tests.support import asynctest, start_server
from tests.test_sasl import authenticate, finish, login, new_credential, open_negotiation


class MultiDeviceTests(unittest.TestCase):
    """Two devices of one identity look like one user to everyone else."""

    async def two_devices(self) -> tuple:
        srv = await start_server(self, flood_rate=0)
        cred = new_credential()
        phone = await login(srv, "alice", cred, "message-tags")
        phone.send("JOIN #home")
        await phone.expect("366")
        bob = await srv.client("bob")
        bob.send("JOIN #home")
        await bob.expect("366")
        phone.skip()
        # The laptop asks for the same nick (in use), gets 433, signs in, and adopts the shared nick.
        laptop = await open_negotiation(srv, "alice", "sasl message-tags")
        self.assertTrue(any(l.command == "433" for l in laptop.lines), "NICK alice is in use by the phone")
        laptop.send("NICK alice_")
        line = await authenticate(laptop, cred)
        self.assertEqual(line.command, "903")
        welcome = await finish(laptop)
        self.assertEqual(welcome.params[0], "alice")
        return srv, cred, phone, laptop, bob

    @asynctest
    async def test_second_device_shares_nick_and_channels(self) -> None:
        """The second device gets the nick and a JOIN/NAMES replay; others see no second JOIN or nick."""
        srv, _cred, phone, laptop, bob = await self.two_devices()
        join = await laptop.expect("JOIN")
        self.assertEqual(join.params[0], "#home")
        self.assertTrue(join.source.startswith("alice!"))
        names = await laptop.expect("353")
        self.assertEqual(sorted(names.params[-1].split()), ["@alice", "bob"])
        await bob.expect_not(lambda l: l.command in ("JOIN", "NICK") or "alice_" in l.raw, after=(laptop,))
        bob.send("NAMES #home")
        names = await bob.expect("353")
        self.assertEqual(sorted(names.params[-1].split()), ["@alice", "bob"])
        self.assertEqual(len(srv.server.sessions[srv.server.users["alice"].account]), 2)

    @asynctest
    async def test_messages_reach_every_device(self) -> None:
        """Channel messages and DMs reach both devices; what one device says, the other sees."""
        _srv, _cred, phone, laptop, bob = await self.two_devices()
        laptop.skip()
        bob.send("PRIVMSG #home :hello all")
        for device in (phone, laptop):
            line = await device.expect("PRIVMSG")
            self.assertEqual(line.params, ["#home", "hello all"])
        bob.send("PRIVMSG alice :psst")
        for device in (phone, laptop):
            line = await device.expect("PRIVMSG")
            self.assertEqual(line.params, ["alice", "psst"])
        laptop.send("PRIVMSG #home :from the laptop")
        seen = await phone.expect("PRIVMSG")
        self.assertEqual(seen.params, ["#home", "from the laptop"])
        line = await bob.expect("PRIVMSG")
        self.assertEqual(line.params, ["#home", "from the laptop"])
        laptop.send("PRIVMSG bob :dm from laptop")
        await bob.expect(lambda l: l.command == "PRIVMSG" and l.params == ["bob", "dm from laptop"])
        copy = await phone.expect(lambda l: l.command == "PRIVMSG" and l.params[0] == "bob")
        self.assertEqual(copy.params, ["bob", "dm from laptop"])

    @asynctest
    async def test_one_device_leaving_is_silent(self) -> None:
        """Closing one device sends no QUIT; closing the last one does; the nick stays reachable meanwhile."""
        srv, _cred, phone, laptop, bob = await self.two_devices()
        bob.skip()
        phone.send("QUIT :phone off")
        await phone.closed
        await bob.expect_not("QUIT")  # phone saw its connection closed: the server has handled the QUIT
        bob.send("PRIVMSG alice :still there?")
        line = await laptop.expect(lambda l: l.command == "PRIVMSG" and l.params[-1] == "still there?")
        self.assertEqual(line.params[0], "alice")
        bob.send("WHOIS alice")
        await bob.expect("311")
        laptop.send("QUIT :laptop off")
        quit_line = await bob.expect("QUIT")
        self.assertTrue(quit_line.source.startswith("alice!"))
        self.assertNotIn("alice", srv.server.users)

    @asynctest
    async def test_part_and_nick_apply_to_all_devices(self) -> None:
        """PART from one device parts every device (one PART seen by others); NICK renames every device."""
        srv, _cred, phone, laptop, bob = await self.two_devices()
        laptop.skip()
        bob.skip()
        laptop.send("NICK alicia")
        for c in (phone, laptop, bob):
            line = await c.expect("NICK")
            self.assertEqual(line.params, ["alicia"])
        self.assertIn("alicia", srv.server.users)
        self.assertNotIn("alice", srv.server.users)
        phone.send("PART #home :bye")
        for c in (phone, laptop, bob):
            await c.expect("PART")
        await bob.expect_not("PART", after=(phone,))
        chan = srv.server.channels["#home"]
        self.assertEqual([m.nick for m in chan.members], ["bob"])


class BearerTokenTests(unittest.TestCase):
    """SASL success hands the client a REST bearer token scoped to its DID, never its session id."""

    @asynctest
    async def test_api_bearer_after_sasl(self) -> None:
        """903 is followed by NOTICE API-BEARER with a random token that maps to the DID."""
        srv = await start_server(self)
        cred = new_credential()
        c = await open_negotiation(srv, "carol", "sasl")
        line = await authenticate(c, cred)
        self.assertEqual(line.command, "903")
        notice = await c.expect(lambda l: l.command == "NOTICE" and l.params[-1].startswith("API-BEARER "))
        token = notice.params[-1].split()[1]
        self.assertGreaterEqual(len(token), 43)
        self.assertEqual(srv.server.bearer_tokens.lookup(token), cred.did)
        c2 = await open_negotiation(srv, "carol2", "sasl")
        await authenticate(c2, cred)
        other = await c2.expect(lambda l: l.command == "NOTICE" and l.params[-1].startswith("API-BEARER "))
        self.assertNotEqual(other.params[-1], notice.params[-1])
