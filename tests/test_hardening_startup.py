"""Issue #10 item 13: a port in use is a one-line start-up error; ``--iroh-host`` binds only what was asked."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.trial import unittest

from freeq.s2s.bridge import IrohBridgeService, bind_addresses
from tests.support import asynctest, sleep
from tests.twistd_support import TWISTD, twistd_env


def _twistd(home: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", TWISTD, *args], cwd=home, env=twistd_env(home),
                          capture_output=True, text=True, timeout=60)


class PortInUseTests(unittest.TestCase):
    """``twistd freeq`` as a real subprocess, with its port already taken by another socket."""

    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        os.makedirs(self.home)
        self.taken = socket.socket()
        self.addCleanup(self.taken.close)
        self.taken.bind(("127.0.0.1", 0))
        self.taken.listen(1)
        self.port = self.taken.getsockname()[1]

    def test_foreground_prints_one_line_and_exits_non_zero(self) -> None:
        """`twistd -n freeq` on a busy --listen-addr: exit 1, one 'freeq: --listen-addr:' line, no traceback."""
        result = _twistd(self.home, "-n", "--pidfile=", "freeq", "--listen-addr", f"127.0.0.1:{self.port}",
                         "--tls-listen-addr", "none", "--data-dir", os.path.join(self.home, "data"))
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        errors = [line for line in output.splitlines() if "freeq: " in line and "cannot listen" in line]
        self.assertEqual(len(errors), 1, output)
        self.assertTrue(errors[0].endswith(
            f"freeq: --listen-addr: cannot listen on 127.0.0.1:{self.port}: Address already in use"), errors[0])
        self.assertLess(len(output.splitlines()), 12, output)

    def test_daemon_reports_the_line_and_removes_its_pid_file(self) -> None:
        """Daemonized, the waiting parent exits 1 with the reason; the log has the one line, no traceback."""
        pidfile = os.path.join(self.home, "twistd.pid")
        logfile = os.path.join(self.home, "twistd.log")
        result = _twistd(self.home, f"--pidfile={pidfile}", f"--logfile={logfile}", "freeq", "--listen-addr",
                         "127.0.0.1:0", "--tls-listen-addr", "none", "--web-addr", f"127.0.0.1:{self.port}",
                         "--data-dir", os.path.join(self.home, "data"))
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn(f"freeq: --web-addr: cannot listen on 127.0.0.1:{self.port}", result.stderr)
        for _ in range(100):  # the daemon child removes the pid file as it exits
            if not os.path.exists(pidfile):
                break
            time.sleep(0.05)
        self.assertFalse(os.path.exists(pidfile))
        line = f"freeq: --web-addr: cannot listen on 127.0.0.1:{self.port}: Address already in use"
        for _ in range(100):  # the exiting daemon may remove its pid file before the log line is flushed
            with open(logfile, encoding="utf-8") as f:
                log = f.read()
            if line in log:
                break
            time.sleep(0.05)
        self.assertNotIn("Traceback", log)
        self.assertIn(f"freeq: --web-addr: cannot listen on 127.0.0.1:{self.port}: Address already in use", log)


def _udp_sockets() -> dict[str, tuple[str, str]]:
    """This process's UDP sockets: inode -> (family file, local address in /proc hex form)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = {}
    for name in ("udp", "udp6"):
        with open(f"/proc/net/{name}") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    found[fields[9]] = (name, fields[1])
    return found


class IrohBindTests(unittest.TestCase):
    """The iroh endpoint binds the requested address, not the IPv6 wildcard as well."""

    timeout = 30

    def test_addresses_for_each_kind_of_host(self) -> None:
        """A specific address pins the other family to loopback; only '::' keeps iroh's dual-stack default."""
        self.assertEqual(bind_addresses("127.0.0.1", 7000, True), ["127.0.0.1:7000", "[::1]:0"])
        self.assertEqual(bind_addresses("192.0.2.7", 7000, False), ["192.0.2.7:7000"])
        self.assertEqual(bind_addresses("0.0.0.0", 0, True), ["0.0.0.0:0", "[::1]:0"])
        self.assertEqual(bind_addresses("2001:db8::1", 7000, True), ["[2001:db8::1]:7000", "127.0.0.1:0"])
        self.assertEqual(bind_addresses("::", 7000, True), ["[::]:7000"])

    @asynctest
    async def test_ipv4_loopback_host_opens_no_ipv6_wildcard_socket(self) -> None:
        """With bind_host 127.0.0.1 no UDP socket of the endpoint listens on [::] (checked in /proc/net/udp6)."""
        before = set(_udp_sockets())
        bridge = IrohBridgeService(reactor, os.urandom(32), bind_host="127.0.0.1", port=0, relay_mode="disabled")
        bridge.privilegedStartService()
        bridge.startService()
        self.addCleanup(bridge.stopService)
        await sleep(0.2)
        new = {inode: v for inode, v in _udp_sockets().items() if inode not in before}
        self.assertTrue(new)
        wildcard6 = [addr for family, addr in new.values() if family == "udp6" and addr.startswith("0" * 32)]
        self.assertEqual(wildcard6, [], new)
        for addr in bridge.bound:
            self.assertTrue(addr.startswith(("127.0.0.1:", "[::1]:")), bridge.bound)
        v4 = [addr for family, addr in new.values() if family == "udp" and addr.startswith("0100007F:")]
        self.assertIn(int(bridge.bound[0].rsplit(":", 1)[1]), [int(a.split(":")[1], 16) for a in v4])
