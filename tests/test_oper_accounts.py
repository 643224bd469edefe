"""Named operator accounts over real sockets (issue #13 item 3): OPER by [[oper]] account with its scrypt
password or its DID, host masks (491), privileges gating KILL, SQUIT/CONNECT, WALLOPS and channel overrides
(481 / 482), the shared --oper-password kept as a shortcut, accounts read from the live config (a reload),
and every operator action logged with the account name and IP."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq.core.operator import MAX_OPER_CHECKS
from freeq.opers import OperAccount, hash_password
from tests.support import IRCClient, ServerFixture, asynctest, sleep, start_server
from tests.test_sasl import login, new_credential

#: Hashed once for the module (each hash costs some 50 ms).
PASSWORD = "correct-horse-battery"
HASH = hash_password(PASSWORD)


def account(name: str, **kw: Any) -> OperAccount:
    """An account with the module's password unless ``kw`` says otherwise."""
    kw.setdefault("password_hash", HASH)
    if "privileges" in kw:
        kw["privileges"] = frozenset(kw["privileges"])
    if "hosts" in kw:
        kw["hosts"] = tuple(kw["hosts"])
    return OperAccount(name=name, **kw)


def log_lines(case: unittest.TestCase) -> Callable[[], list[tuple[Any, str]]]:
    """Level and text of every log event from now on."""
    observer = EventLoggingObserver.createWithCleanup(case, globalLogPublisher)
    return lambda: [(e["log_level"], formatEvent(e)) for e in observer]


async def oper(c: IRCClient, name: str, password: str = PASSWORD) -> str:
    """Send OPER and return the numeric it got."""
    c.send(f"OPER {name} {password}")
    return (await c.expect(lambda l: l.command in ("381", "464", "491", "263"))).command


async def join(c: IRCClient, chan: str) -> None:
    c.send(f"JOIN {chan}")
    await c.expect(lambda l: l.command == "366" and l.params[1] == chan)
    c.skip()


class OperAccountTests(unittest.TestCase):
    """OPER <name> <password> against [[oper]] accounts."""

    async def server(self, *accounts: OperAccount, **kw: Any) -> ServerFixture:
        kw.setdefault("oper_backoff_base", 0)  # the back-off has its own tests (test_hardening_oper)
        return await start_server(self, opers=accounts, flood_rate=0, **kw)

    @asynctest
    async def test_right_and_wrong_password(self) -> None:
        """A wrong password: 464, a warn line naming the IP and account, never the password; the right one:
        381, MODE +o, the account's name and privileges on the user, an info line with account and IP."""
        logged = log_lines(self)
        srv = await self.server(account("alice", privileges=["kill", "wallops"]))
        c = await srv.client("ally")
        self.assertEqual(await oper(c, "alice", "wrong-guess"), "464")
        self.assertFalse(srv.server.users["ally"].is_oper)
        self.assertIn((LogLevel.warn, "failed OPER from 127.0.0.1 as alice (account alice: wrong password; "
                                      "nick ally, failures 1)"), logged())
        self.assertEqual(await oper(c, "alice"), "381")
        mode = await c.expect("MODE")
        self.assertEqual(mode.params, ["ally", "+o"])
        user = srv.server.users["ally"]
        self.assertTrue(user.is_oper)
        self.assertEqual((user.oper_name, user.oper_privileges), ("alice", frozenset({"kill", "wallops"})))
        self.assertIn((LogLevel.info, "oper action OPER by ally (oper alice) from 127.0.0.1, name alice, "
                                      "by password, privileges kill wallops"), logged())
        self.assertFalse(any(PASSWORD in text or "wrong-guess" in text for _level, text in logged()))
        self.assertEqual(srv.server.oper_checks, set())

    @asynctest
    async def test_unknown_name_and_wrong_host(self) -> None:
        """Without a shared password an unknown name is 491; an account whose host masks do not match the
        real address is 491 even with the right password; a matching CIDR works."""
        logged = log_lines(self)
        srv = await self.server(account("remote", hosts=["10.0.0.0/8", "*@192.0.2.1"]),
                                account("local", hosts=["~lo*@127.0.0.0/8"]))
        c = await srv.client("someone")
        self.assertEqual(await oper(c, "remote"), "491")
        self.assertEqual(await oper(c, "nobody"), "491")
        self.assertFalse(srv.server.users["someone"].is_oper)
        texts = [text for _level, text in logged()]
        self.assertIn("failed OPER from 127.0.0.1 as remote (account remote: host not allowed; nick someone, "
                      "failures 1)", texts)
        d = await srv.client("local")
        self.assertEqual(await oper(d, "local"), "381")
        e = await srv.client("other")
        self.assertEqual(await oper(e, "local"), "491")  # username ~other does not match ~lo*

    @asynctest
    async def test_did_account(self) -> None:
        """An account with a DID: signed in via SASL as that DID, OPER needs no password (any word does);
        signed in as another DID, or not at all, it is refused (464)."""
        cred = new_credential()
        srv = await self.server(account("boss", password_hash=None, did=cred.did, privileges=["kill"]))
        boss = await login(srv, "boss", cred)
        self.assertEqual(await oper(boss, "boss", "*"), "381")
        self.assertEqual(srv.server.users["boss"].oper_name, "boss")
        other = await login(srv, "other", new_credential())
        self.assertEqual(await oper(other, "boss", "*"), "464")
        guest = await srv.client("guest")
        self.assertEqual(await oper(guest, "boss", "*"), "464")
        self.assertFalse(srv.server.users["other"].is_oper or srv.server.users["guest"].is_oper)

    @asynctest
    async def test_shared_password_still_works(self) -> None:
        """With accounts configured, the shared --oper-password still opers any other name with every
        privilege (KILL works); an account's name is checked against the account only."""
        logged = log_lines(self)
        srv = await self.server(account("alice", privileges=["wallops"]), oper_password="shared-pw")
        c = await srv.client("admin")
        victim = await srv.client("victim")
        self.assertEqual(await oper(c, "anyname", "shared-pw"), "381")
        user = srv.server.users["admin"]
        self.assertIsNone(user.oper_name)
        self.assertTrue(user.oper_holds("kill") and user.oper_holds("override"))
        c.send("KILL victim :bye")
        await victim.expect("KILL")
        self.assertTrue(any("oper action KILL by admin (oper shared password) from 127.0.0.1, victim victim, "
                            "victim_ip 127.0.0.1, reason bye" in text for _l, text in logged()))
        d = await srv.client("dave")
        self.assertEqual(await oper(d, "alice", "shared-pw"), "464")

    @asynctest
    async def test_privileges_gate_commands(self) -> None:
        """An oper without kill gets 481 on KILL (the victim stays), without link on SQUIT and CONNECT,
        without override cannot KICK, set TOPIC or MODE on a channel it has no status on; one with them can,
        and each action is logged with the account and IP."""
        logged = log_lines(self)
        srv = await self.server(account("helper", privileges=["wallops"]),
                                account("chief", privileges=["kill", "override", "link"]))
        owner = await srv.client("owner")
        bob = await srv.client("bob")
        await join(owner, "#c")
        await join(bob, "#c")
        helper = await srv.client("helper")
        self.assertEqual(await oper(helper, "helper"), "381")
        helper.skip()
        helper.send("KILL bob :no")
        line = await helper.expect("481")
        self.assertIn("kill privilege", line.params[-1])
        for command in ("SQUIT some.server :x", "CONNECT some.server"):
            helper.send(command)
            self.assertIn("link privilege", (await helper.expect("481")).params[-1])
        helper.send("TOPIC #c :helper topic")
        await helper.expect("442")
        helper.send("KICK #c bob :out")
        await helper.expect("442")
        helper.send("MODE #c +m")
        await helper.expect("442")
        helper.send("WALLOPS :hello opers")
        await helper.sync()
        self.assertIn("bob", srv.server.users)
        self.assertEqual(srv.server.channels["#c"].topic, "")
        self.assertNotIn("m", srv.server.channels["#c"].modes)
        chief = await srv.client("chief")
        self.assertEqual(await oper(chief, "chief"), "381")
        chief.send("TOPIC #c :chief topic")
        await owner.expect("TOPIC")
        chief.send("MODE #c +m")
        await owner.expect("MODE")
        chief.send("KILL bob :gone")
        await bob.expect("KILL")
        chief.send("WALLOPS :nope")
        self.assertIn("wallops privilege", (await chief.expect("481")).params[-1])
        chief.send("SQUIT some.server :x")
        await chief.expect("402")  # allowed, but this server has no federation
        texts = [text for _level, text in logged()]
        for expected in ("oper action WALLOPS by helper (oper helper) from 127.0.0.1, text hello opers",
                         "oper action override by chief (oper chief) from 127.0.0.1, command TOPIC, channel #c",
                         "oper action override by chief (oper chief) from 127.0.0.1, command MODE, channel #c, "
                         "modes +m",
                         "oper action KILL by chief (oper chief) from 127.0.0.1, victim bob, victim_ip 127.0.0.1, "
                         "reason gone"):
            self.assertIn(expected, texts)
        self.assertFalse(any("by helper" in t and "override" in t for t in texts))

    @asynctest
    async def test_reload_adds_and_removes_accounts(self) -> None:
        """A reload replaces server.config: an account added is usable at once, a removed one can no longer
        be used, and an oper of a removed account keeps +o until it disconnects (documented)."""
        srv = await self.server(account("old"))
        c = await srv.client("c")
        self.assertEqual(await oper(c, "old"), "381")
        srv.server.config = dataclasses.replace(srv.server.config, opers=(account("new", privileges=["kill"]),))
        d = await srv.client("d")
        self.assertEqual(await oper(d, "old"), "491")
        self.assertEqual(await oper(d, "new"), "381")
        self.assertEqual(srv.server.users["d"].oper_privileges, frozenset({"kill"}))
        self.assertTrue(srv.server.users["c"].is_oper)

    @asynctest
    async def test_disconnect_during_check(self) -> None:
        """A client that leaves while its password is being checked is not made an operator and nothing is
        left pending."""
        srv = await self.server(account("alice"))
        c = await srv.client("quitter")
        c.send(f"OPER alice {PASSWORD}")
        c.send("QUIT :bye")
        await c.closed
        for _ in range(500):
            if not srv.server.oper_checks:
                break
            await sleep(0.01)
        self.assertEqual(srv.server.oper_checks, set())
        other = await srv.client("other")
        self.assertEqual(await oper(other, "alice"), "381")
        self.assertEqual(srv.server.oper_checks, set())
        self.assertEqual(srv.server.oper_count, 1)

    @asynctest
    async def test_password_checks_are_bounded(self) -> None:
        """While a password check of the address runs, another OPER from it is answered 263 unchecked; with
        MAX_OPER_CHECKS checks running server-wide, so is an OPER from anywhere. Neither counts as a failure."""
        srv = await self.server(account("alice"))
        c = await srv.client("c")
        srv.server.oper_checks.add("127.0.0.1")
        self.assertEqual(await oper(c, "alice"), "263")
        self.assertIn("being checked", c.lines[-1].params[-1])
        srv.server.oper_checks.clear()
        srv.server.oper_checks.update(f"192.0.2.{i}" for i in range(MAX_OPER_CHECKS))
        self.assertEqual(await oper(c, "alice"), "263")
        self.assertIn("Too many OPER checks", c.lines[-1].params[-1])
        srv.server.oper_checks.clear()
        self.assertEqual(await oper(c, "alice"), "381")
        self.assertEqual(srv.server.metrics.oper_failures, 0)

    @asynctest
    async def test_invite_and_exception_lists_need_override(self) -> None:
        """Without override an oper cannot INVITE to a +i channel it is not on, nor read its +e list; with it,
        it can (and the override is logged)."""
        logged = log_lines(self)
        srv = await self.server(account("helper", privileges=["kill"]), account("chief", privileges=["override"]))
        owner = await srv.client("owner")
        await join(owner, "#c")
        owner.send("MODE #c +i")
        await owner.expect("MODE")
        guest = await srv.client("guest")
        helper = await srv.client("helper")
        chief = await srv.client("chief")
        self.assertEqual(await oper(helper, "helper"), "381")
        self.assertEqual(await oper(chief, "chief"), "381")
        helper.send("INVITE guest #c")
        await helper.expect("442")
        helper.send("MODE #c e")
        await helper.expect("482")
        await guest.expect_not("INVITE", after=[helper])
        chief.send("INVITE guest #c")
        await guest.expect("INVITE")
        chief.send("MODE #c e")
        await chief.expect("349")
        self.assertIn("oper action override by chief (oper chief) from 127.0.0.1, command INVITE, channel #c",
                      [text for _level, text in logged()])


class OperAccountsFromFileTests(unittest.TestCase):
    """[[oper]] blocks in a real config file (``--config``), through the loader and REHASH."""

    @asynctest
    async def test_file_accounts_and_rehash(self) -> None:
        """Accounts come from the file (one through password-file); REHASH with a new file adds and removes
        accounts for the next OPER while an oper of a removed account keeps its status; a file with a
        plain-text password is refused (one FAIL line naming the block and key, never the value) and the
        running accounts kept."""
        from tests.test_reload import Fixture

        hash_file = os.path.abspath(self.mktemp())
        with open(hash_file, "w") as f:
            f.write(HASH + "\n")
        head = "oper-backoff-base = 0\n"  # the 491 below would make the next OPER wait
        alice = head + (f'[[oper]]\nname = "alice"\npassword-file = "{hash_file}"\nhosts = ["*@127.0.0.1"]\n'
                        'class = "admin"\n')
        fx = Fixture(self, alice).start()
        boss = await fx.client("boss")
        self.assertEqual(await oper(boss, "alice"), "381")
        self.assertEqual(fx.server.users["boss"].oper_name, "alice")
        fx.write(head + f'[[oper]]\nname = "bob"\npassword = "{HASH}"\nprivileges = ["kill"]\n')
        boss.send("REHASH")
        await boss.expect(lambda l: l.command == "NOTICE" and "reloaded" in l.params[-1])
        c = await fx.client("carl")
        self.assertEqual(await oper(c, "alice"), "491")
        self.assertEqual(await oper(c, "bob"), "381")
        self.assertEqual(fx.server.users["carl"].oper_privileges, frozenset({"kill"}))
        self.assertTrue(fx.server.users["boss"].oper_holds("rehash"))  # kept until it disconnects
        fx.write(head + '[[oper]]\nname = "dan"\npassword = "plain-text-pw"\n')
        boss.send("REHASH")
        fail = await boss.expect("FAIL")
        self.assertEqual(fail.params[:2], ["REHASH", "CONFIG_ERROR"])
        self.assertIn("[[oper]] 'dan': password:", fail.params[-1])
        self.assertNotIn("plain-text-pw", fail.params[-1])
        self.assertEqual([a.name for a in fx.server.config.opers], ["bob"])
