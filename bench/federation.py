#!/usr/bin/env python3
"""Federated benchmark: ``python bench/federation.py [--messages N] [--receivers N] [--window N] [--quick]``.

Starts two ``twistd freeq --iroh`` servers, A and B, linked over iroh on 127.0.0.1 (relays off,
direct addresses, each allowing only the other), puts one sender on A and ``--receivers`` clients on
B in one channel, and sends ``--messages`` channel messages from A with at most ``--window`` in
flight (not yet seen by every receiver). Prints one JSON line on stdout: messages/s (A to B, every
receiver served), deliveries/s, and latency percentiles from the sender's write to each receiver's
read (one clock: everything runs on this machine). Progress goes to stderr.

The per-peer S2S rate limit (100 events/s by default) would drop most of a flood, so B is started
with ``--s2s-rate`` (default here 1000000) to measure the pipeline itself; client flood control is
off for the same reason.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from server import TWISTD, default_python, free_port, raise_nofile  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg: str) -> None:
    print(f"[federation] {msg}", file=sys.stderr, flush=True)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    """A blocking-connect, non-blocking-read IRC client driven by select()."""

    def __init__(self, port: int, nick: str) -> None:
        self.nick = nick
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.out = b""
        self.pending: list[bytes] = []
        self.send(f"NICK {nick}\r\nUSER {nick[:10]} 0 * :{nick}\r\n")

    def send(self, text: str) -> None:
        self.out += text.encode()
        self.flush()

    def flush(self) -> None:
        self.sock.setblocking(True)
        if self.out:
            self.sock.sendall(self.out)
            self.out = b""
        self.sock.setblocking(False)

    def lines(self) -> list[bytes]:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return []
        if not data:
            raise ConnectionError(f"{self.nick}: server closed the connection")
        self.buf += data
        *complete, self.buf = self.buf.split(b"\n")
        out = []
        for raw in complete:
            line = raw.rstrip(b"\r")
            if line.startswith(b"PING "):
                self.send("PONG " + line[5:].decode() + "\r\n")
            out.append(line)
        return out

    def wait_for(self, needle: Any, timeout: float = 20.0) -> bytes:
        """Consume lines until one contains ``needle`` (or any of a tuple); later lines stay queued."""
        needles = needle if isinstance(needle, tuple) else (needle,)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while self.pending:
                line = self.pending.pop(0)
                if any(n in line for n in needles):
                    return line
            select.select([self.sock], [], [], 0.1)
            self.pending.extend(self.lines())
        raise TimeoutError(f"{self.nick}: no {needle!r} within {timeout}s")


class Server:
    """One ``twistd freeq`` federation node."""

    def __init__(self, home: str, name: str, python: str, key: bytes, peer_id: str, udp: int, peer_udp: int,
                 s2s_rate: float) -> None:
        self.name = name
        self.port = free_port()
        data = os.path.join(home, name)
        os.makedirs(data, mode=0o700)
        path = os.path.join(data, "iroh-key.secret")
        with open(path, "w") as f:
            f.write(key.hex())
        os.chmod(path, 0o600)
        self.log_path = os.path.join(home, f"{name}.log")
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [python, "-c", TWISTD, "-n", "--pidfile=", "freeq", "--server-name", name,
             "--listen-addr", f"127.0.0.1:{self.port}", "--data-dir", data, "--db-path", ":memory:",
             "--flood-rate", "0", "--connection-rate", "0", "--iroh", "--iroh-host", "127.0.0.1", "--iroh-port", str(udp),
             "--iroh-relay-mode", "disabled", "--s2s-peers", f"{peer_id}@127.0.0.1:{peer_udp}",
             "--s2s-allowed-peers", peer_id, "--s2s-rate", str(s2s_rate)],
            cwd=REPO, stdout=self.log_file, stderr=subprocess.STDOUT)

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited during start-up; see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} never listened")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


def percentile(sorted_ms: list[float], p: float) -> Optional[float]:
    if not sorted_ms:
        return None
    k = min(len(sorted_ms) - 1, max(0, int(round(p / 100.0 * (len(sorted_ms) - 1)))))
    return round(sorted_ms[k], 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from nacl.signing import SigningKey

    home = tempfile.mkdtemp(prefix="freeq-fedbench-")
    ka, kb = os.urandom(32), os.urandom(32)
    ida = SigningKey(ka).verify_key.encode().hex()
    idb = SigningKey(kb).verify_key.encode().hex()
    ua, ub = free_udp_port(), free_udp_port()
    python = args.python or default_python()
    a = Server(home, "a.bench", python, ka, idb, ua, ub, args.s2s_rate)
    b = Server(home, "b.bench", python, kb, ida, ub, ua, args.s2s_rate)
    clients: list[Client] = []
    try:
        a.wait_listening()
        b.wait_listening()
        sender = Client(a.port, "sender")
        sender.wait_for(b" 001 ")
        sender.send("JOIN #bench\r\n")
        sender.wait_for(b" 366 ")
        receivers = []
        for i in range(args.receivers):
            c = Client(b.port, f"recv{i}")
            c.wait_for(b" 001 ")
            receivers.append(c)
        clients = [sender, *receivers]
        # Wait for the link: B must know the sender (and so #bench, created on A) before receivers join.
        deadline = time.monotonic() + 30
        probe = receivers[0]
        while True:
            probe.send("WHOIS sender\r\n")
            if b" 311 " in probe.wait_for((b" 311 ", b" 401 ")):
                probe.wait_for(b" 318 ")
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the servers did not link; see {home}")
            time.sleep(0.05)
        for c in receivers:
            c.send("JOIN #bench\r\n")
            c.wait_for(b" 366 ")
        for _ in receivers:
            sender.wait_for(b" JOIN ")
        log(f"linked; {len(receivers)} receivers on B; sending {args.messages} messages from A")
        # Warm-up round trip.
        sender.send("PRIVMSG #bench :warmup\r\n")
        for c in receivers:
            c.wait_for(b"warmup")
        sent_at: dict[int, int] = {}
        got: dict[int, int] = {}
        latencies: list[float] = []
        socks = {c.sock: c for c in receivers}
        next_seq = 0
        start = time.monotonic_ns()
        deadline = time.monotonic() + args.timeout
        while (next_seq < args.messages or any(v < len(receivers) for v in got.values())) and \
                time.monotonic() < deadline:
            batch = []
            while next_seq < args.messages and next_seq - sum(1 for v in got.values() if v >= len(receivers)) \
                    < args.window:
                now = time.monotonic_ns()
                sent_at[next_seq] = now
                got[next_seq] = 0
                batch.append(f"PRIVMSG #bench :m {next_seq} {now}\r\n")
                next_seq += 1
                if len(batch) >= 50:
                    break
            if batch:
                sender.send("".join(batch))
            ready, _, _ = select.select(list(socks), [], [], 0.05)
            for sock in ready:
                for line in socks[sock].lines():
                    idx = line.find(b" :m ")
                    if idx < 0:
                        continue
                    recv_ns = time.monotonic_ns()
                    parts = line[idx + 4:].split(b" ")
                    seq = int(parts[0])
                    got[seq] = got.get(seq, 0) + 1
                    latencies.append((recv_ns - int(parts[1])) / 1e6)
            sender.lines()  # drain (PINGs)
        elapsed = (time.monotonic_ns() - start) / 1e9
        complete = sum(1 for v in got.values() if v >= len(receivers))
        latencies.sort()
        return {
            "scenario": "federation",
            "servers": 2,
            "receivers": len(receivers),
            "messages": args.messages,
            "window": args.window,
            "complete": complete,
            "lost_deliveries": args.messages * len(receivers) - len(latencies),
            "seconds": round(elapsed, 3),
            "msgs_per_sec": round(complete / elapsed, 1) if elapsed else None,
            "deliveries_per_sec": round(len(latencies) / elapsed, 1) if elapsed else None,
            "latency_ms": {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90),
                           "p99": percentile(latencies, 99), "max": round(latencies[-1], 3) if latencies else None},
        }
    finally:
        for c in clients:
            try:
                c.sock.close()
            except OSError:
                pass
        a.stop()
        b.stop()
        if args.keep_logs:
            log(f"server logs kept in {home}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--receivers", type=int, default=10)
    ap.add_argument("--window", type=int, default=200, help="messages in flight (not yet seen by all receivers)")
    ap.add_argument("--s2s-rate", type=float, default=1_000_000.0, help="B's per-peer event rate limit")
    ap.add_argument("--timeout", type=float, default=120.0, help="give up measuring after this many seconds")
    ap.add_argument("--quick", action="store_true", help="a short smoke run (500 messages, 3 receivers)")
    ap.add_argument("--python", help="interpreter for the servers (default: .venv/bin/python)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the servers' data and logs")
    args = ap.parse_args(argv)
    if args.quick:
        args.messages, args.receivers = min(args.messages, 500), min(args.receivers, 3)
    raise_nofile()
    result = run(args)
    print(json.dumps(result), flush=True)
    return 0 if result["complete"] == args.messages else 1


if __name__ == "__main__":
    sys.exit(main())
