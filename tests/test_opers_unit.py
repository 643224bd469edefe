"""Named operator accounts, the pure parts (issue #13 item 3): scrypt hashes made and checked with bounded
parameters, ``[[oper]]`` blocks validated into :class:`freeq.opers.OperAccount` with one-line errors, and host
masks matched against the real address without a regex."""
from __future__ import annotations

import base64
import io
import os
import time
from typing import Any

from twisted.trial import unittest

from freeq import admin
from freeq.config import ConfigError
from freeq.opers import (ALL_PRIVILEGES, CLASSES, MAX_SCRYPT_N, OperAccount, find_account, hash_password,
                         parse_hash, parse_host_mask, parse_oper_blocks, verify_password)
from freeq.state.user import User

#: One hash for the whole module (each costs some 50 ms).
HASH = hash_password("correct horse", salt=b"0123456789abcdef")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


class HashTests(unittest.TestCase):
    """hash_password / verify_password."""

    def test_round_trip(self) -> None:
        """The right password verifies, a wrong one or an empty one does not; the format is as documented."""
        self.assertTrue(HASH.startswith("scrypt$16384$8$1$"))
        self.assertEqual(len(HASH.split("$")), 6)
        self.assertTrue(verify_password("correct horse", HASH))
        self.assertFalse(verify_password("correct horsE", HASH))
        self.assertFalse(verify_password("", HASH))

    def test_fresh_salt(self) -> None:
        """Two hashes of one password differ (a random salt each) and both verify."""
        a, b = hash_password("pw"), hash_password("pw")
        self.assertNotEqual(a, b)
        self.assertTrue(verify_password("pw", a) and verify_password("pw", b))

    def test_malformed_never_matches(self) -> None:
        """Plain text, a truncated hash, bad base64 or non-numbers never match (and raise nothing)."""
        for bad in ("correct horse", "scrypt$16384$8$1$abc", "scrypt$x$8$1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
                    HASH.replace("$8$", "$-8$"), HASH[:-3] + "!!!", "", "scrypt$" * 200):
            self.assertFalse(verify_password("correct horse", bad), bad)

    def test_hostile_parameters_refused_cheaply(self) -> None:
        """A hash asking for n = 2**20 (1 GiB), r = 1000 or p = 100 is refused without running scrypt."""
        salt, digest = b64(os.urandom(16)), b64(os.urandom(32))
        for n, r, p in ((2 ** 20, 8, 1), (2 ** 14, 1000, 1), (2 ** 14, 8, 100), (3000, 8, 1), (MAX_SCRYPT_N, 16, 4)):
            encoded = f"scrypt${n}${r}${p}${salt}${digest}"
            with self.assertRaises(ValueError):
                parse_hash(encoded)
            started = time.monotonic()
            self.assertFalse(verify_password("x", encoded))
            self.assertLess(time.monotonic() - started, 0.05)

    def test_parse_hash_fields(self) -> None:
        """parse_hash returns the parameters, salt and digest."""
        h = parse_hash(HASH)
        self.assertEqual((h.n, h.r, h.p, h.salt, len(h.digest)), (16384, 8, 1, b"0123456789abcdef", 32))


class ParseBlocksTests(unittest.TestCase):
    """parse_oper_blocks: the config file's [[oper]] tables."""

    def error(self, blocks: Any) -> str:
        with self.assertRaises(ConfigError) as cm:
            parse_oper_blocks(blocks)
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        return message

    def test_full_block(self) -> None:
        """Every key, read into an OperAccount."""
        (acct,) = parse_oper_blocks([{"name": "alice", "password": HASH, "did": "did:plc:abc123",
                                      "hosts": ["*@192.0.2.0/24", "*.example.org"], "privileges": ["kill", "ban"]}])
        self.assertEqual(acct, OperAccount(name="alice", password_hash=HASH, did="did:plc:abc123",
                                           hosts=("*@192.0.2.0/24", "*.example.org"),
                                           privileges=frozenset({"kill", "ban"})))

    def test_defaults_and_classes(self) -> None:
        """No hosts: any; no privileges: every one; class oper: no rehash or link; None or []: no accounts."""
        a, b = parse_oper_blocks([{"name": "a", "password": HASH}, {"name": "b.c-d_e", "did": "did:web:x.org",
                                                                     "class": "oper"}])
        self.assertEqual((a.hosts, a.privileges), (("*",), ALL_PRIVILEGES))
        self.assertEqual(b.privileges, CLASSES["oper"])
        self.assertNotIn("rehash", b.privileges)
        self.assertEqual(parse_oper_blocks(None), ())
        self.assertEqual(parse_oper_blocks([]), ())

    def test_password_file(self) -> None:
        """password-file names a file holding the hash (a trailing newline is fine)."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(HASH + "\n")
        (acct,) = parse_oper_blocks([{"name": "alice", "password-file": path}])
        self.assertEqual(acct.password_hash, HASH)
        self.assertIn("password-file", self.error([{"name": "alice", "password-file": path + ".missing"}]))

    def test_plain_text_refused_without_echo(self) -> None:
        """A plain-text password is refused, the message naming the block and key but not the value."""
        message = self.error([{"name": "alice", "password": "hunter2"}])
        self.assertIn("[[oper]] 'alice': password:", message)
        self.assertIn("freeq-admin hash-password", message)
        self.assertNotIn("hunter2", message)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("hunter2\n")
        message = self.error([{"name": "alice", "password-file": path}])
        self.assertIn("password-file", message)
        self.assertNotIn("hunter2", message)

    def test_errors_name_block_and_key(self) -> None:
        """Each mistake is one line naming the block and the key."""
        cases = [
            ([{"password": HASH}], "block 1: name"),
            ([{"name": "bad name", "password": HASH}], "block 1: name"),
            ([{"name": "x" * 33, "password": HASH}], "block 1: name"),
            ([{"name": "a", "password": HASH}, {"name": "a", "password": HASH}], "'a': name: used by two"),
            ([{"name": "a"}], "'a': needs password"),
            ([{"name": "a", "password": HASH, "password-file": "/x"}], "'a': password:"),
            ([{"name": "a", "did": "not-a-did"}], "'a': did:"),
            ([{"name": "a", "password": HASH, "hosts": []}], "'a': hosts:"),
            ([{"name": "a", "password": HASH, "hosts": ["10.0.0.0/33"]}], "'a': hosts:"),
            ([{"name": "a", "password": HASH, "hosts": ["a b"]}], "'a': hosts:"),
            ([{"name": "a", "password": HASH, "hosts": ["*" * 40]}], "'a': hosts:"),
            ([{"name": "a", "password": HASH, "hosts": ["x"] * 65}], "'a': hosts:"),
            ([{"name": "a", "password": HASH, "privileges": ["kill", "root"]}], "'a': privileges: unknown"),
            ([{"name": "a", "password": HASH, "privileges": "kill"}], "'a': privileges:"),
            ([{"name": "a", "password": HASH, "class": "god"}], "'a': class:"),
            ([{"name": "a", "password": HASH, "class": "oper", "privileges": []}], "'a': privileges:"),
            ([{"name": "a", "password": HASH, "pasword": "x"}], "'a': unknown key 'pasword'"),
            (["not a table"], "block 1: must be a table"),
            ({"name": "a"}, "array of tables"),
        ]
        for blocks, expected in cases:
            self.assertIn(expected, self.error(blocks), blocks)

    def test_find_account(self) -> None:
        """Accounts are found by exact name."""
        accounts = parse_oper_blocks([{"name": "alice", "password": HASH}, {"name": "bob", "password": HASH}])
        self.assertEqual(find_account(accounts, "bob"), accounts[1])
        self.assertIsNone(find_account(accounts, "Bob"))
        self.assertIsNone(find_account(accounts, "carol"))


class HostMaskTests(unittest.TestCase):
    """OperAccount.matches_host: nick, username, real IP, shown host."""

    def account(self, *hosts: str) -> OperAccount:
        return OperAccount(name="a", password_hash=HASH, hosts=hosts)

    def test_any(self) -> None:
        """'*' and '*@*' match everyone."""
        for mask in ("*", "*@*"):
            self.assertTrue(self.account(mask).matches_host("n", "~u", "203.0.113.9", "freeq/guest"))

    def test_ip_and_cidr(self) -> None:
        """An IP matches exactly; a CIDR contains; an IPv4-mapped address counts as IPv4; versions never mix."""
        acct = self.account("192.0.2.7", "2001:db8::/32")
        self.assertTrue(acct.matches_host("n", "u", "192.0.2.7", "h"))
        self.assertTrue(acct.matches_host("n", "u", "::ffff:192.0.2.7", "h"))
        self.assertFalse(acct.matches_host("n", "u", "192.0.2.8", "h"))
        self.assertTrue(acct.matches_host("n", "u", "2001:db8:5::1", "h"))
        self.assertFalse(acct.matches_host("n", "u", "2001:db9::1", "h"))
        self.assertFalse(acct.matches_host("n", "u", "unix", "h"))
        self.assertTrue(self.account("10.0.0.0/8").matches_host("n", "u", "10.200.3.4", "h"))

    def test_user_and_host_globs(self) -> None:
        """user@ and nick!user@ parts are globs; a host glob matches the IP text or the shown host."""
        acct = self.account("~admin@192.0.2.*", "boss!*@freeq/user/*")
        self.assertTrue(acct.matches_host("x", "~admin", "192.0.2.200", "h"))
        self.assertFalse(acct.matches_host("x", "~other", "192.0.2.200", "h"))
        self.assertTrue(acct.matches_host("BOSS", "~u", "203.0.113.1", "freeq/user/abc"))
        self.assertFalse(acct.matches_host("minion", "~u", "203.0.113.1", "freeq/user/abc"))

    def test_worst_case_is_bounded(self) -> None:
        """A 32-wildcard mask against a long host costs no more than a few milliseconds (no regex)."""
        mask = "*a" * 16 + "@" + "h" * 100
        self.assertEqual(parse_host_mask(mask).who, "*a" * 16)
        started = time.monotonic()
        for _ in range(100):
            self.account(mask).matches_host("n", "a" * 300 + "b", "1.2.3.4", "h" * 100)
        self.assertLess(time.monotonic() - started, 0.5)


class UserPrivilegeTests(unittest.TestCase):
    """User.oper_holds: +o and the privilege."""

    def test_holds(self) -> None:
        """Without +o nothing is held; with +o, what set_oper granted (every privilege by default)."""
        user = User(None, lambda data: None, "127.0.0.1", 0.0, "srv")
        self.assertFalse(user.oper_holds("kill"))
        user.modes = frozenset({"o"})
        self.assertTrue(all(user.oper_holds(p) for p in ALL_PRIVILEGES))
        user.set_oper("alice", frozenset({"wallops"}))
        self.assertEqual(user.oper_name, "alice")
        self.assertTrue(user.oper_holds("wallops"))
        self.assertFalse(user.oper_holds("kill"))


class HashPasswordCommandTests(unittest.TestCase):
    """``freeq-admin hash-password``: never from argv; stdin when not a terminal."""

    def test_from_stdin(self) -> None:
        """A password piped on stdin is hashed; the output verifies and holds no plain text."""
        out = io.StringIO()
        self.assertEqual(admin.hash_password_command(stdin=io.StringIO("s3cret pw\n"), out=out), 0)
        encoded = out.getvalue().strip()
        self.assertTrue(verify_password("s3cret pw", encoded))
        self.assertNotIn("s3cret", out.getvalue())

    def test_empty_refused(self) -> None:
        """An empty password is refused (exit 1), nothing printed on stdout."""
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(admin.hash_password_command(stdin=io.StringIO("\n"), out=out, err=err), 1)
        self.assertEqual(out.getvalue(), "")
        self.assertIn("empty", err.getvalue())

    def test_terminal_asks_twice(self) -> None:
        """On a terminal, getpass asks twice; a mismatch is refused."""
        answers = iter(["one", "two"])
        out, err = io.StringIO(), io.StringIO()
        code = admin.hash_password_command(stdin=_Tty(), out=out, err=err, ask=lambda prompt: next(answers))
        self.assertEqual((code, out.getvalue()), (1, ""))
        self.assertIn("do not match", err.getvalue())
        answers = iter(["same", "same"])
        self.assertEqual(admin.hash_password_command(stdin=_Tty(), out=out, err=err,
                                                     ask=lambda prompt: next(answers)), 0)
        self.assertTrue(verify_password("same", out.getvalue().strip()))

    def test_no_password_argument(self) -> None:
        """The subcommand takes no password argument (argv would show it in ps and the shell history)."""
        with self.assertRaises(SystemExit):
            admin.main(["hash-password", "hunter2"])


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True
