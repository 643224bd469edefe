"""End-to-end smoke test: two guests over TCP and TLS talk in a channel."""
from twisted.trial import unittest

from tests.support import asynctest, start_server


class SmokeTests(unittest.TestCase):
    @asynctest
    async def test_two_guests_talk_over_tcp_and_tls(self) -> None:
        """A TCP guest and a TLS guest join one channel and exchange a message."""
        srv = await start_server(self, tls=True)
        alice = await srv.client("alice", caps=("message-tags", "server-time"))
        bob = await srv.client("bob", tls=True)
        alice.send("JOIN #chat")
        await alice.expect("366")
        bob.send("JOIN #chat")
        await bob.expect("366")
        bob.send("PRIVMSG #chat :hello alice")
        line = await alice.expect("PRIVMSG")
        self.assertEqual(line.params, ["#chat", "hello alice"])
        self.assertEqual(line.source, "bob!~bob@freeq/guest")
        self.assertIn("msgid", line.tags)
        self.assertRegex(line.tags["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
