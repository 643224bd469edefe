"""The real ``twistd freeq`` as a subprocess, for the tests that need the process itself (signals, log output,
the twistd plugin): start it in the foreground, wait until it listens, connect a client."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Callable, Optional

from twisted.internet import endpoints, error, reactor
from twisted.trial import unittest

from tests.support import IRCClient, sleep

#: Runs twistd from the test's interpreter (``-m twisted.scripts.twistd`` has no ``__main__`` block).
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def twistd_env(home: str) -> dict[str, str]:
    """A small, predictable environment for a twistd subprocess (no inherited passwords)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "LANG": "C.UTF-8"}


async def connect_when_listening(case: unittest.TestCase, port: int, alive: Callable[[], None] = lambda: None,
                                 client: Optional[IRCClient] = None) -> IRCClient:
    """Connect ``client`` (a new one by default) to ``port`` on 127.0.0.1 as soon as something listens there,
    calling ``alive()`` (which fails the test if the server is gone) before each try; fails after about 15 s."""
    client = client or IRCClient()
    for _ in range(300):
        alive()
        try:
            await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
            return client
        except (ConnectionRefusedError, error.ConnectionRefusedError):
            await sleep(0.05)
    case.fail(f"twistd never listened on {port}")


async def wait_logged(case: unittest.TestCase, read: Callable[[], str], fragment: str) -> str:
    """``read()`` once ``fragment`` is in it (fails the test after about 10 s)."""
    for _ in range(200):
        text = read()
        if fragment in text:
            return text
        await sleep(0.05)
    case.fail(f"{fragment!r} never logged:\n{read()}")


class ForegroundTwistd:
    """``twistd -n --pidfile= freeq ARGS`` started in ``home`` with stdout and stderr in ``home/twistd.log``;
    killed at the test's cleanup if still running."""

    def __init__(self, case: unittest.TestCase, home: str, *args: str) -> None:
        self.case = case
        self.log_path = os.path.join(home, "twistd.log")
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen([sys.executable, "-c", TWISTD, "-n", "--pidfile=", "freeq", *args],
                                         cwd=home, env=twistd_env(home), stdout=log_file, stderr=subprocess.STDOUT)
        case.addCleanup(self.reap)

    def reap(self) -> None:
        """Kill the process if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def output(self) -> str:
        """Everything it has written so far."""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def alive(self) -> None:
        """Fail the test (with its output) if the process has exited."""
        self.case.assertIsNone(self.proc.poll(), f"twistd exited early:\n{self.output()}")

    async def connect(self, port: int) -> IRCClient:
        """A client connected to ``port`` as soon as the process listens there."""
        return await connect_when_listening(self.case, port, self.alive)

    async def wait_logged(self, fragment: str) -> str:
        """Its output once ``fragment`` is in it."""
        return await wait_logged(self.case, self.output, fragment)

    async def stopped(self) -> Optional[int]:
        """Its exit status, waiting up to about 10 s for it to exit (``None`` if it did not)."""
        for _ in range(200):
            if self.proc.poll() is not None:
                break
            await sleep(0.05)
        return self.proc.returncode
