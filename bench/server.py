"""Start, observe and stop one freeq server subprocess for the benchmark.

The server is started as ``python -c <twistd run()> -n --pidfile= freeq ...``
(``python -m twisted.scripts.twistd`` does nothing: that module has no
``__main__`` guard), pinned to one core, with a raised file-descriptor limit.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
NOFILE = 200_000

TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def default_python() -> str:
    venv = os.path.join(REPO, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


def raise_nofile(want: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (root may raise the hard limit too); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (max(want, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target) if target > hard else (target, hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when the benchmark dies (PR_SET_PDEATHSIG), so no server outlives it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """utime + stime of every thread of ``pid`` (the main thread's id is ``pid``)."""
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2:].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                parts = line.split()
                vals = [int(x) for x in parts[1:]]
                idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
                out[int(parts[0][3:])] = (sum(vals[:8]) - idle, sum(vals[:8]))
    return out


def core_busy(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[int, float]:
    res = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (0, 0))
        res[cpu] = round((b1 - b0) / (t1 - t0), 3) if t1 > t0 else 0.0
    return res


class ServerProcess:
    """One freeq server: ``start()``, observe with ``cpu()``/``rss()``, ``stop()``."""

    def __init__(self, python: Optional[str] = None, cpu: Optional[int] = None, extra_args: tuple[str, ...] = (),
                 log_path: Optional[str] = None, server_dir: Optional[str] = None) -> None:
        self.python = python or default_python()
        #: the tree the server runs from: ``python -c`` puts the working directory first on sys.path
        self.server_dir = os.path.abspath(server_dir or REPO)
        self.cpu = cpu
        # FREEQ_BENCH_SERVER_ARGS adds server flags to every run (bench/persistence.py uses it).
        self.extra_args = tuple(extra_args) + tuple(os.environ.get("FREEQ_BENCH_SERVER_ARGS", "").split())
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.data_dir = tempfile.mkdtemp(prefix="freeq-bench-")
        self.log_path = log_path or os.path.join(self.data_dir, "server.log")
        self.proc: Optional[subprocess.Popen] = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @staticmethod
    def max_clients() -> int:
        """As many clients as the open-file limit the server will get allows (it refuses to start above it)."""
        return max(1_000, min(100_000, raise_nofile() - 1_000))

    def argv(self) -> list[str]:
        return [self.python, "-c", TWISTD, "-n", "--pidfile=", "freeq",
                "--listen-addr", f"{self.host}:{self.port}", "--tls-listen-addr", "none",
                "--data-dir", os.path.join(self.data_dir, "data"),
                "--flood-rate", "0", "--max-connections-per-ip", "100000", "--max-clients", str(self.max_clients()),
                "--sendq-bytes", "16777216", "--channel-create-burst", "0", "--connection-rate", "0", *self.extra_args]

    def start(self, timeout: float = 30.0) -> None:
        cpu = self.cpu

        def prepare() -> None:  # runs in the child before exec
            _die_with_parent()
            raise_nofile()
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv(), cwd=self.server_dir, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, preexec_fn=prepare, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    pass
                time.sleep(0.5)  # let start-up finish before anyone samples RSS or CPU
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not listen within {timeout}s: {self.log_tail()}")

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss(self) -> int:
        return proc_rss_bytes(self.pid)

    def fds(self) -> int:
        return proc_fd_count(self.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                f.seek(max(0, size - n))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def count_log(self, needle: str) -> int:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().count(needle.encode())
        except OSError:
            return 0

    def stop(self, timeout: float = 15.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)

    def cleanup(self, keep_log: Optional[str] = None) -> None:
        if keep_log:
            try:
                shutil.copy(self.log_path, keep_log)
            except OSError:
                pass
        shutil.rmtree(self.data_dir, ignore_errors=True)


def git_state(path: str) -> dict[str, object]:
    """Commit and dirtiness of the server tree (so figures can be tied to code)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", path, *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "freeq")
    return {"dir": path, "commit": head or None, "freeq_dirty": bool(dirty)}
