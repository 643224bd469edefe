"""``freeq-admin audit`` and the start-up summary (issue #13 item 2): the hardening checklist over a config."""
from __future__ import annotations

import io
import os
import sys
from typing import Any

from twisted.internet import defer
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq import admin, audit
from freeq.config import Config, Listen
from freeq.store import keys
from tests.support import make_certificate, start_tree

PEER = "ab" * 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeResource:
    """A stand-in for the ``resource`` module with a chosen RLIMIT_NOFILE."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int) -> None:
        self.limits = (soft, hard)

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.limits


def rows(findings: list[audit.Finding], check: str) -> list[tuple[str, str]]:
    """The (status, detail) of every finding of ``check``."""
    return [(f.status, f.detail) for f in findings if f.check == check]


def statuses(findings: list[audit.Finding]) -> dict[str, set[str]]:
    """check -> the statuses it reported."""
    out: dict[str, set[str]] = {}
    for f in findings:
        out.setdefault(f.check, set()).add(f.status)
    return out


class AuditCommandTests(unittest.TestCase):
    """``freeq-admin audit`` with the server's flags: the table and the exit status."""

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir, mode=0o700)
        os.chmod(self.data_dir, 0o700)
        for name in (keys.DB_ENCRYPTION_KEY, keys.MSG_SIGNING_KEY):
            keys.write_secret_atomically(os.path.join(self.data_dir, name), os.urandom(32))

    def run_audit(self, *argv: str, env: dict[str, str] | None = None, resource: Any = None) -> tuple[int, str, str]:
        """``freeq-admin audit ARGV`` in-process: (exit status, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        self.patch(os, "environ", dict(env or {}))
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        status = admin.audit_command(list(argv), out, err, resource_module=resource)
        return status, out.getvalue(), err.getvalue()

    def table_row(self, table: str, check: str) -> str:
        """The first line of ``check``'s row(s) in the printed table."""
        lines = [line for line in table.splitlines() if line.split()[:1] == [check]]
        self.assertTrue(lines, f"no row {check} in:\n{table}")
        return "\n".join(lines)

    def test_insecure_config_fails(self) -> None:
        """A public plain listener, open federation, an oper password on argv and a 0644 key file: exit 1, each a
        FAIL row saying what to change, and the password never printed."""
        os.chmod(os.path.join(self.data_dir, keys.DB_ENCRYPTION_KEY), 0o644)
        status, table, err = self.run_audit(
            "--listen-addr", "0.0.0.0:6667", "--iroh", "--s2s-open-federation", "--oper-password", "hunter2-secret",
            "--data-dir", self.data_dir, "--max-clients", "100")
        self.assertEqual(status, 1, table + err)
        self.assertIn("FAIL", self.table_row(table, "irc-plain"))
        self.assertIn("--tls-cert", " ".join(table.split()))
        self.assertIn("FAIL", self.table_row(table, "federation"))
        self.assertIn("--s2s-allowed-peers", " ".join(table.split()))
        self.assertIn("FAIL", self.table_row(table, "secrets-argv"))
        self.assertIn("--oper-password is on the command line", " ".join(table.split()))
        self.assertIn("FAIL", self.table_row(table, "key-files"))
        self.assertIn(f"{keys.DB_ENCRYPTION_KEY} (0644)", " ".join(table.split()))
        self.assertNotIn(keys.MSG_SIGNING_KEY, self.table_row(table, "key-files"))
        self.assertIn("OK", self.table_row(table, "data-dir"))
        self.assertNotIn("hunter2", table + err)
        self.assertTrue(table.rstrip().endswith("4 fail"), table)

    def test_secure_flags_pass(self) -> None:
        """TLS only (plain off), an allowlisted federation, oper DIDs and the oper password from the environment,
        0700/0600 files: exit 0."""
        cert, key = make_certificate(self.mktemp())
        os.chmod(key, 0o600)
        status, table, err = self.run_audit(
            "--listen-addr", "none", "--tls-listen-addr", "0.0.0.0:6697", "--tls-cert", cert, "--tls-key", key,
            "--iroh", "--s2s-allowed-peers", PEER, "--oper-dids", "did:plc:abc", "--data-dir", self.data_dir,
            "--max-clients", "100", env={"OPER_PASSWORD": "from-the-environment"})
        self.assertEqual(status, 0, table + err)
        self.assertNotIn("FAIL", table)
        self.assertIn("OK", self.table_row(table, "irc-tls"))
        self.assertIn("expires on", " ".join(table.split()))  # the throw-away certificate lasts 2 days
        self.assertIn("WARN", self.table_row(table, "tls-files"))
        self.assertIn("oper DID", self.table_row(table, "oper-auth"))
        self.assertIn("no secret on the command line", " ".join(table.split()))
        self.assertIn("0 fail", table)

    def test_example_config_passes(self) -> None:
        """docs/freeq.example.toml as shipped passes (exit 0), with a LimitNOFILE like the deployment guide's unit
        (the only host-dependent check) and a data directory of the test's own."""
        example = os.path.join(ROOT, "docs", "freeq.example.toml")
        status, table, err = self.run_audit("--config", example, "--data-dir", self.data_dir,
                                            resource=FakeResource(16384, 16384))
        self.assertEqual(status, 0, table + err)
        self.assertIn("OK", self.table_row(table, "config-file"))
        self.assertIn("0 fail", table)

    def test_deployment_guide_config_passes(self) -> None:
        """The config file docs/deployment.md tells a newcomer to write (its paths moved under the test's directory,
        the files it names created as the guide says) is accepted by the server's parser and passes."""
        with open(os.path.join(ROOT, "docs", "deployment.md"), encoding="utf-8") as f:
            guide = f.read()
        block = guide.split("```toml\n", 1)[1].split("```", 1)[0]
        etc = os.path.abspath(self.mktemp())
        for sub in ("tls", "secrets"):
            os.makedirs(os.path.join(etc, sub))
        cert, key = make_certificate(self.mktemp())
        os.replace(cert, os.path.join(etc, "tls", "fullchain.pem"))
        os.replace(key, os.path.join(etc, "tls", "privkey.pem"))
        os.chmod(os.path.join(etc, "tls", "privkey.pem"), 0o600)
        with open(os.path.join(etc, "secrets", "metrics-token"), "w") as f:
            f.write("f" * 64 + "\n")
        with open(os.path.join(etc, "motd.txt"), "w") as f:
            f.write("Welcome\n")
        from freeq.opers import hash_password

        text = block.replace("/etc/freeq", etc).replace("/var/lib/freeq", self.data_dir)
        text = text.replace("scrypt$...", hash_password("correct horse"))
        config = os.path.join(etc, "freeq.toml")
        with open(config, "w") as f:
            f.write(text)
        os.chmod(config, 0o640)
        status, table, err = self.run_audit("--config", config, resource=FakeResource(16384, 16384))
        self.assertEqual(status, 0, table + err)
        for check in ("irc-tls", "irc-plain", "web-tls", "trusted-proxies", "metrics", "oper-auth", "config-file"):
            self.assertIn("OK", self.table_row(table, check), check)

    def test_inline_secret_in_a_world_readable_config_file_fails(self) -> None:
        """Through --config: a file every user can read that holds the oper password inline fails."""
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(f'data-dir = "{self.data_dir}"\noper-password = "inline-oper-secret"\nmax-clients = 100\n')
        os.chmod(config, 0o644)
        status, table, err = self.run_audit("--config", config)
        self.assertEqual(status, 1, table + err)
        self.assertIn("FAIL", self.table_row(table, "config-file"))
        self.assertNotIn("inline-oper-secret", table + err)

    def test_loose_data_dir_and_world_readable_tls_key_fail(self) -> None:
        """A 0755 data directory and a world-readable TLS key each fail."""
        os.chmod(self.data_dir, 0o755)
        cert, key = make_certificate(self.mktemp())
        os.chmod(key, 0o644)
        status, table, _err = self.run_audit("--listen-addr", "127.0.0.1:6667", "--tls-cert", cert, "--tls-key", key,
                                             "--data-dir", self.data_dir, "--max-clients", "100")
        self.assertEqual(status, 1, table)
        self.assertIn("FAIL", self.table_row(table, "data-dir"))
        self.assertIn("chmod 700", " ".join(table.split()))
        self.assertIn("FAIL", self.table_row(table, "tls-files"))

    def test_config_the_server_refuses_fails(self) -> None:
        """A configuration the server would not start with is a fail (exit 1), told in one line."""
        status, table, err = self.run_audit("--nick-len", "3", "--data-dir", self.data_dir)
        self.assertEqual(status, 1)
        self.assertEqual(table, "")
        self.assertIn("--nick-len", err)
        self.assertEqual(len(err.strip().splitlines()), 1)

    def test_unknown_flag_is_a_usage_error(self) -> None:
        """A flag the server does not take: exit 2 and one line."""
        status, _table, err = self.run_audit("--no-such-flag")
        self.assertEqual(status, 2)
        self.assertIn("no-such-flag", err)

    def test_main_dispatches_audit(self) -> None:
        """``freeq-admin audit ...`` through the console script's entry point."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", io.StringIO())
        self.assertEqual(admin.main(["audit", "--listen-addr", "0.0.0.0:6667", "--data-dir", self.data_dir,
                                     "--max-clients", "100"]), 1)
        self.assertIn("irc-plain", out.getvalue())


class AuditUnitTests(unittest.TestCase):
    """The checks over a Config directly (no flags), one concern each."""

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        self.resource = FakeResource(100000, 100000)

    def run_checks(self, argv: tuple[str, ...] = (), **fields: Any) -> list[audit.Finding]:
        fields.setdefault("data_dir", self.data_dir)
        fields.setdefault("tls_listen", None)
        return audit.audit(Config(**fields), argv, resource_module=self.resource)

    def test_public_plain_web_listener(self) -> None:
        """Plain HTTP on a public address fails; with a trusted proxy it warns (firewall it); TLS is ok."""
        found = self.run_checks(web_listen=Listen("0.0.0.0", 8080))
        self.assertEqual(rows(found, "web-tls")[0][0], audit.FAIL)
        found = self.run_checks(web_listen=Listen("0.0.0.0", 8080), trusted_proxies=("10.0.0.5",))
        self.assertEqual(rows(found, "web-tls")[0][0], audit.WARN)

    def test_loopback_web_without_trusted_proxies_warns(self) -> None:
        """A loopback web listener is behind a proxy, whose clients all look like 127.0.0.1 unless trusted."""
        found = self.run_checks(web_listen=Listen("127.0.0.1", 8080))
        self.assertEqual(rows(found, "trusted-proxies")[0][0], audit.WARN)
        self.assertIn("--trusted-proxies 127.0.0.1", rows(found, "trusted-proxies")[0][1])
        found = self.run_checks(web_listen=Listen("127.0.0.1", 8080), trusted_proxies=("127.0.0.1",))
        self.assertEqual(rows(found, "trusted-proxies")[0][0], audit.OK)

    def test_trusting_everyone_fails(self) -> None:
        """--trusted-proxies 0.0.0.0/0 lets anyone forge their address."""
        found = self.run_checks(web_listen=Listen("127.0.0.1", 8080), trusted_proxies=("0.0.0.0/0",))
        self.assertEqual(rows(found, "trusted-proxies")[0][0], audit.FAIL)

    def test_public_metrics(self) -> None:
        """/metrics on a public web listener warns unless a token or its own address protects it."""
        web = dict(web_listen=Listen("0.0.0.0", 8443), web_tls_cert="c.pem", web_tls_key="k.pem")
        self.assertEqual(rows(self.run_checks(**web), "metrics")[0][0], audit.WARN)
        if "metrics_token" in Config.__dataclass_fields__:
            self.assertEqual(rows(self.run_checks(metrics_token="t" * 32, **web), "metrics")[0][0], audit.OK)
        self.assertEqual(rows(self.run_checks(), "metrics")[0][0], audit.OK)

    def test_short_broker_secret_warns(self) -> None:
        """The broker is only on with a secret; a short one is guessable."""
        self.assertEqual(rows(self.run_checks(broker_shared_secret="s3cr3tvalue"), "broker")[0][0], audit.WARN)
        self.assertEqual(rows(self.run_checks(broker_shared_secret="x" * 40), "broker")[0][0], audit.OK)
        self.assertNotIn("s3cr3t", " ".join(f.detail for f in self.run_checks(broker_shared_secret="s3cr3tvalue")))

    def test_no_operator_warns(self) -> None:
        """Without oper accounts, a password or DIDs nobody can act on abuse."""
        self.assertEqual(rows(self.run_checks(), "oper-auth")[0][0], audit.WARN)
        self.assertEqual(rows(self.run_checks(oper_password="p"), "oper-auth")[0][0], audit.OK)

    def test_weakened_guards_warn(self) -> None:
        """--allow-private-network and --sasl-plain-insecure each warn."""
        found = self.run_checks(allow_private_network=True, sasl_plain_insecure=True)
        self.assertEqual(rows(found, "ssrf-guard")[0][0], audit.WARN)
        self.assertEqual(rows(found, "sasl-plain")[0][0], audit.WARN)
        self.assertEqual(audit.exit_status(found), 0)

    def test_webirc_gateway_on_a_public_plain_listener_warns(self) -> None:
        """A gateway on another host with plain IRC public: its WEBIRC password may cross in clear (warn); on
        loopback, or with plain IRC off or on loopback, fine; no gateway, no row."""
        from freeq.gateways import parse_webirc_blocks

        remote = parse_webirc_blocks([{"name": "kiwi", "password": "gw-secret-1", "hosts": ["192.0.2.10"]}])
        local = parse_webirc_blocks([{"name": "kiwi", "password": "gw-secret-1", "hosts": ["127.0.0.1"]}])
        found = self.run_checks(webirc=remote, listen=Listen("0.0.0.0", 6667))
        self.assertEqual(rows(found, "webirc")[0][0], audit.WARN)
        self.assertNotIn("gw-secret-1", " ".join(f.detail for f in found))
        self.assertEqual(rows(self.run_checks(webirc=local, listen=Listen("0.0.0.0", 6667)), "webirc")[0][0], audit.OK)
        self.assertEqual(rows(self.run_checks(webirc=remote), "webirc")[0][0], audit.OK)
        self.assertEqual(rows(self.run_checks(), "webirc"), [])

    def test_fd_limit(self) -> None:
        """RLIMIT_NOFILE against --max-clients: enough, raisable to the hard limit, or too low (fail)."""
        self.resource = FakeResource(1024, 4096)
        self.assertEqual(rows(self.run_checks(max_clients=500), "fd-limit")[0][0], audit.OK)
        self.assertEqual(rows(self.run_checks(max_clients=2000), "fd-limit")[0][0], audit.OK)
        status, detail = rows(self.run_checks(max_clients=10000), "fd-limit")[0]
        self.assertEqual(status, audit.FAIL)
        self.assertIn("LimitNOFILE=10064", detail)

    def test_database_and_wal_on_different_filesystems_fail(self) -> None:
        """A -wal sidecar on another device than the database (a symlink) fails."""
        os.makedirs(self.data_dir)
        db = os.path.join(self.data_dir, "freeq.db")
        for path in (db, db + "-wal"):
            with open(path, "wb"):
                pass
            os.chmod(path, 0o600)
        auditor = audit.Auditor(Config(data_dir=self.data_dir), (), (), self.resource)
        real_stat = os.stat

        def stat(path: str) -> os.stat_result:
            st = real_stat(path)
            if path.endswith("-wal"):
                fields = list(st)
                fields[2] = st.st_dev + 1  # st_dev
                return os.stat_result(fields)
            return st

        auditor.stat = stat  # type: ignore[assignment]
        auditor.database()
        status, detail = rows(auditor.findings, "database")[0]
        self.assertEqual(status, audit.FAIL)
        self.assertIn("its -wal file", detail)
        auditor = audit.Auditor(Config(data_dir=self.data_dir), (), (), self.resource)
        auditor.database()
        self.assertEqual(rows(auditor.findings, "database")[0][0], audit.OK)

    def test_database_on_a_network_filesystem_fails(self) -> None:
        """The filesystem type comes from the longest mount point; NFS fails."""
        os.makedirs(self.data_dir)
        mounts = self.mktemp()
        with open(mounts, "w") as f:
            f.write("overlay / overlay rw 0 0\n")
            f.write(f"server:/export {self.data_dir} nfs4 rw 0 0\n")
        self.assertEqual(audit.filesystem_type(os.path.join(self.data_dir, "x"), mounts), "nfs4")
        self.assertEqual(audit.filesystem_type("/", mounts), "overlay")
        self.patch(audit, "filesystem_type", lambda path: "nfs4")
        self.assertEqual(rows(self.run_checks(), "database")[0][0], audit.FAIL)

    def test_loose_schema_upgrade_copy_warns(self) -> None:
        """A schema-upgrade copy (freeq.db.vN.bak) holds the same data as the database: readable by others, a warn."""
        os.makedirs(self.data_dir, mode=0o700)
        db = os.path.join(self.data_dir, "freeq.db")
        for path, mode in ((db, 0o600), (db + ".v3.bak", 0o644)):
            with open(path, "wb"):
                pass
            os.chmod(path, mode)
        status, detail = rows(self.run_checks(), "database")[0]
        self.assertEqual(status, audit.WARN)
        self.assertIn("freeq.db.v3.bak (0644)", detail)

    def test_data_dir_closed_to_this_user_warns(self) -> None:
        """Run by a user who cannot look inside the data directory, the audit says so instead of "no key files"."""
        os.makedirs(self.data_dir, mode=0o700)
        real_access = os.access
        self.patch(os, "access", lambda path, mode: False if path == self.data_dir else real_access(path, mode))
        status, detail = rows(self.run_checks(), "key-files")[0]
        self.assertEqual(status, audit.WARN)
        self.assertIn("server's user", detail)

    def test_no_persistence_warns(self) -> None:
        """--db-path none or :memory: keeps nothing across restarts."""
        self.assertEqual(rows(self.run_checks(db_path="none"), "database")[0][0], audit.WARN)

    def test_abbreviated_secret_flag_on_argv(self) -> None:
        """Like getopt, an unambiguous prefix of a secret flag counts; the server password only warns."""
        known = ["oper-password", "oper-backoff-base", "server-password", "server-name", "broker-shared-secret"]
        self.assertEqual(audit.secret_flags_on_argv(["--oper-pass=x", "--server-name", "n"], known), ["oper-password"])
        self.assertEqual(audit.secret_flags_on_argv(["--oper-", "x"], known), [])  # ambiguous: getopt refuses it
        found = self.run_checks(("--server-password", "x"), server_password="x")
        self.assertEqual(rows(found, "secrets-argv")[0][0], audit.WARN)

    def test_config_file_with_inline_secret_readable_by_all_fails(self) -> None:
        """A world-readable config file holding a secret inline fails; 0600, or secrets as *-file keys, is ok."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('listen-addr = "none"\noper-password = "inline-secret"\n')
        os.chmod(path, 0o644)
        status, detail = rows(self.run_checks(config_path=path), "config-file")[0]
        self.assertEqual(status, audit.FAIL)
        self.assertIn("oper-password", detail)
        self.assertNotIn("inline-secret", detail)
        os.chmod(path, 0o600)
        self.assertEqual(rows(self.run_checks(config_path=path), "config-file")[0][0], audit.OK)
        with open(path, "w") as f:
            f.write('oper-password-file = "/etc/freeq/oper.secret"\n')
        os.chmod(path, 0o644)
        self.assertEqual(rows(self.run_checks(config_path=path), "config-file")[0][0], audit.OK)

    def test_table_format(self) -> None:
        """One row per finding, status upper-cased, long details wrapped under their column, a summary line."""
        table = audit.format_table([audit.Finding("a", audit.OK, "fine"),
                                    audit.Finding("longer-check", audit.FAIL, "word " * 40)])
        lines = table.splitlines()
        self.assertTrue(lines[2].startswith("a             ") and "OK" in lines[2])
        self.assertIn("FAIL", lines[3])
        self.assertTrue(lines[4].startswith(" " * 22))
        self.assertEqual(lines[-1], "1 ok, 0 warn, 1 fail")


class StartupSummaryTests(unittest.TestCase):
    """The server logs the audit at start: one line per warn/fail and one summary line."""

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def audit_events(self) -> list[Any]:
        return [e for e in self.events if "Configuration audit" in e.get("log_format", "")]

    def test_log_audit_lines(self) -> None:
        """A fail is logged at error, a warn at warn, then the counts at info; secrets on argv are named, not shown."""
        config = Config(listen=Listen("0.0.0.0", 6667), tls_listen=None, data_dir=os.path.abspath(self.mktemp()),
                        allow_private_network=True, oper_password="hunter2-secret")
        audit.log_audit(config, ["--oper-password", "hunter2-secret"], known_flags=["oper-password"])
        events = self.audit_events()
        text = [formatEvent(e) for e in events]
        levels = {formatEvent(e).split(":")[1].split()[0]: e["log_level"] for e in events[:-1]}
        self.assertEqual(levels["irc-plain"], LogLevel.error)
        self.assertEqual(levels["secrets-argv"], LogLevel.error)
        self.assertEqual(levels["ssrf-guard"], LogLevel.warn)
        self.assertEqual(events[-1]["log_level"], LogLevel.info)
        root = os.geteuid() == 0  # the server's own audit also warns when it runs as root
        self.assertEqual((events[-1]["warn"], events[-1]["fail"]), (1 + root, 2))
        self.assertEqual(len(events), 4 + root)
        self.assertFalse([t for t in text if "hunter2" in t])

    def test_build_service_logs_the_summary(self) -> None:
        """A real service tree (freeq.tap.build_service) logs the summary once at start."""
        config = Config(listen=Listen("127.0.0.1", 0), tls_listen=None, data_dir=os.path.abspath(self.mktemp()),
                        max_clients=100)
        top, _port = start_tree(config)
        self.addCleanup(lambda: defer.maybeDeferred(top.stopService))
        summary = [e for e in self.audit_events() if e["log_level"] == LogLevel.info]
        self.assertEqual(len(summary), 1)
        self.assertIn("0 fail", formatEvent(summary[0]))
        warned = {formatEvent(e).split(":")[1].split()[0] for e in self.audit_events() if e["log_level"] == LogLevel.warn}
        self.assertEqual(warned, {"oper-auth"} | ({"process-user"} if os.geteuid() == 0 else set()))
