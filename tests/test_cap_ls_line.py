"""``CAP LS 302`` fits on one line: the freeq JavaScript SDK handles each LS line as the final one (reference
§17.1), so a continuation (``CAP * LS * :...``) would make it send two REQs, the first holding a ``*``. Every
capability issue #12 added (with its value) and ``sts`` (with a five-digit port) must still fit, with the
longest server name, before the 302 continuation form is ever used. A new capability that does not fit
needs a decision (a shorter value, or dropping one) rather than a second LS line."""
from __future__ import annotations

from twisted.trial import unittest

from tests.support import asynctest
from tests.test_sts import start

#: The longest server name the config allows (63 characters).
LONG_NAME = "irc." + "x" * 55 + ".org"


class CapLsOneLineTests(unittest.TestCase):
    timeout = 20

    async def ls_lines(self, tls: bool) -> list[bytes]:
        tree = await start(self, server_name=LONG_NAME)
        c = await tree.connect(tls=tls)
        c.send("CAP LS 302")
        line = await c.expect(lambda l: l.command == "CAP" and l.params[1:2] == ["LS"])
        await c.sync()
        ls = [l for l in c.lines if l.command == "CAP" and l.params[1:2] == ["LS"]]
        self.assertEqual(ls, [line], "CAP LS 302 came in more than one line")
        self.assertNotEqual(line.params[2:3], ["*"])
        return [l.raw.encode("utf-8") if isinstance(l.raw, str) else l.raw for l in ls]

    @asynctest
    async def test_plain_listener_ls_is_one_line_with_sts_port(self) -> None:
        (raw,) = await self.ls_lines(tls=False)
        self.assertIn(b"sts=port=", raw)
        self.assertLessEqual(len(raw) + 2, 512, len(raw))

    @asynctest
    async def test_tls_listener_ls_is_one_line_with_sts_duration(self) -> None:
        (raw,) = await self.ls_lines(tls=True)
        self.assertIn(b"sts=duration=", raw)
        self.assertLessEqual(len(raw) + 2, 512, len(raw))
