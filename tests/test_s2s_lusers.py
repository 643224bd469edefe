"""LUSERS across federation: 251/255/266 count the users and servers federation knows, not only this
server's (issue #12 conformance; the local 265 stays local)."""
from __future__ import annotations

from twisted.trial import unittest

from tests.s2s_support import start_line, wait_for
from tests.support import asynctest


class FederatedLusersTests(unittest.TestCase):
    timeout = 40

    @asynctest
    async def test_global_counts_include_the_other_servers(self) -> None:
        """A-B-C in a line: on A, with one user on each server, 251 says 3 users on 3 servers, 255 one
        directly linked server, 265 one local user and 266 three global users."""
        a, b, c = await start_line(self, "a.test", "b.test", "c.test")
        alice = await a.client("alice")
        await b.client("bob")
        await c.client("carol")
        await wait_for(lambda: {"bob", "carol"} <= set(a.server.users), what="bob and carol known on A")
        alice.skip()
        alice.send("LUSERS")
        lines = await alice.collect_until("266")
        by = {l.command: l for l in lines}
        self.assertIn("There are 3 users and 0 invisible on 3 servers", by["251"].params[-1])
        self.assertIn("I have 1 clients and 1 servers", by["255"].params[-1])
        self.assertEqual(by["265"].params[1], "1")
        self.assertEqual(by["266"].params[1:3], ["3", "3"])
