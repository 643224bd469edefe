"""Load-generator worker processes: raw non-blocking sockets on one epoll loop each.

A :class:`Pool` forks N workers (pinned to the load-generator core). The main
process drives them phase by phase over pipes; every phase has a deadline. A
worker keeps reading its sockets while it waits for the next command, so the
server never blocks on a full socket buffer between phases.

Received data is never split into lines in Python: counts come from
``bytes.count`` over whole ``recv`` chunks (a partial last line is carried to
the next chunk), and latency is read only from messages marked `` :~T<ns>``
(the sender's ``time.monotonic_ns()``; CLOCK_MONOTONIC is system-wide on
Linux, so it is comparable across processes).
"""
from __future__ import annotations

import errno
import math
import multiprocessing as mp
import os
import resource
import select
import socket
import time
import traceback
from collections import deque
from typing import Any, Callable, Optional

now_ns = time.monotonic_ns

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERRHUP = select.EPOLLERR | select.EPOLLHUP
IP_BIND_ADDRESS_NO_PORT = 24
RECV = 262144

MARK = b" :~T"  # a timestamped message: " :~T<monotonic ns> ..."
PRIV = b" PRIVMSG "
PONG = b" PONG "

# connection states
CONNECTING, REGISTERING, JOINING, READY, QUITTING, DEAD = range(6)


class Conn:
    __slots__ = ("sock", "fd", "nick", "state", "tail", "out", "chans", "joins_left", "t_start", "t_done",
                 "pongs", "role", "sampler", "count", "other", "window", "batch", "outstanding", "line",
                 "next_send", "interval", "sent", "cycler", "src", "fast")

    def __init__(self, sock: socket.socket, nick: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.nick = nick
        self.state = CONNECTING
        self.tail = b""
        self.out: Optional[bytearray] = None
        self.chans: list[str] = []
        self.joins_left = 0
        self.t_start = 0
        self.t_done = 0
        self.pongs = 0
        self.role = 0  # bit 1: counted receiver, bit 2: sender
        self.sampler = False
        self.count = 0
        self.other = 0
        self.window = 0
        self.batch = 1
        self.outstanding = 0
        self.line = b""
        self.next_send = 0
        self.interval = 0
        self.sent = 0
        self.cycler = -1
        self.src = ""
        self.fast = False  # a pure, non-sampling receiver: lines counted straight from the recv buffer


def _ename(err: Optional[int]) -> str:
    return errno.errorcode.get(err or 0, str(err))


def percentiles(samples: list[int], ps: tuple[float, ...] = (50, 90, 99, 99.9)) -> dict[str, Optional[float]]:
    """Percentiles (nearest rank) of nanosecond samples, in milliseconds."""
    out: dict[str, Optional[float]] = {}
    if not samples:
        return {f"p{p:g}_ms": None for p in ps}
    s = sorted(samples)
    n = len(s)
    for p in ps:
        k = min(n - 1, max(0, math.ceil(p / 100.0 * n) - 1))
        out[f"p{p:g}_ms"] = round(s[k] / 1e6, 3)
    out["max_ms"] = round(s[-1] / 1e6, 3)
    return out


class Worker:
    """One worker process: a set of client connections on one epoll."""

    def __init__(self, wid: int, ctrl: Any, host: str, port: int, src_ips: list[str]) -> None:
        self.wid = wid
        self.ctrl = ctrl
        self.host = host
        self.port = port
        self.src_ips = src_ips
        self.src_i = wid
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.ctrl_fd = ctrl.fileno()
        self.ep.register(self.ctrl_fd, EPOLLIN)
        self.errors: dict[str, int] = {}

    # -- sockets ---------------------------------------------------------------
    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def open(self, nick: str) -> Optional[Conn]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        src = ""
        if self.src_ips:
            src = self.src_ips[self.src_i % len(self.src_ips)]
            self.src_i += 1
            try:
                s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            except OSError:
                pass
            s.bind((src, 0))
        err = s.connect_ex((self.host, self.port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self.error(f"connect:{_ename(err)}")
            return None
        c = Conn(s, nick)
        c.src = src
        c.t_start = now_ns()
        self.conns[c.fd] = c
        self.ep.register(c.fd, EPOLLOUT | EPOLLIN)
        return c

    def kill(self, c: Conn, why: Optional[str] = None) -> None:
        if c.state == DEAD:
            return
        if why:
            self.error(why)
        c.state = DEAD
        self.conns.pop(c.fd, None)
        try:
            self.ep.unregister(c.fd)
        except (OSError, ValueError):
            pass
        c.sock.close()

    def send(self, c: Conn, data: bytes) -> None:
        if c.state == DEAD:
            return
        if c.out:
            c.out += data
            return
        try:
            n = c.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self.kill(c, f"send:{_ename(e.errno)}")
            return
        if n < len(data):
            c.out = bytearray(data[n:])
            self.ep.modify(c.fd, EPOLLIN | EPOLLOUT)

    def flush(self, c: Conn) -> None:
        out = c.out
        if not out:
            self.ep.modify(c.fd, EPOLLIN)
            return
        try:
            n = c.sock.send(out)
        except BlockingIOError:
            return
        except OSError as e:
            self.kill(c, f"send:{_ename(e.errno)}")
            return
        del out[:n]
        if not out:
            c.out = None
            self.ep.modify(c.fd, EPOLLIN)

    def connected(self, c: Conn) -> bool:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.kill(c, f"connect:{_ename(err)}")
            return False
        c.state = REGISTERING
        self.ep.modify(c.fd, EPOLLIN)
        self.send(c, b"NICK %s\r\nUSER bench 0 * :freeq bench\r\n" % c.nick.encode())
        return True

    def frame(self, c: Conn, data: bytes) -> tuple[bytes, int]:
        """Prefix the carried partial line; return (buffer, end of the last complete line)."""
        if c.tail:
            data = c.tail + data
        end = data.rfind(b"\n") + 1
        c.tail = data[end:] if end < len(data) else b""
        if len(c.tail) > 65536:
            c.tail = b""
        return data, end

    def answer_ping(self, c: Conn, data: bytes, end: int) -> None:
        """Answer server keepalive PINGs (``PING freeq`` at the start of a line)."""
        i = data.find(b"PING ", 0, end)
        while i >= 0:
            if i == 0 or data[i - 1] == 10:
                self.send(c, b"PONG :freeq\r\n")
            i = data.find(b"PING ", i + 5, end)

    # -- the loop -------------------------------------------------------------------
    def poll(self, timeout: float, on_data: Callable[[Conn, bytes, int], None]) -> bool:
        """One epoll round; returns True when a control message is waiting."""
        ctrl = False
        conns = self.conns
        for fd, ev in self.ep.poll(timeout, 4096):
            if fd == self.ctrl_fd:
                ctrl = True
                continue
            c = conns.get(fd)
            if c is None:
                continue
            if ev & EPOLLOUT:
                if c.state == CONNECTING:
                    if not self.connected(c):
                        continue
                else:
                    self.flush(c)
                    if c.state == DEAD:
                        continue
            if ev & (EPOLLIN | EPOLLERRHUP):
                try:
                    data = c.sock.recv(RECV)
                except BlockingIOError:
                    continue
                except OSError as e:
                    on_data(c, b"", now_ns())
                    if c.state != DEAD:
                        self.kill(c, f"recv:{_ename(e.errno)}")
                    continue
                on_data(c, data, now_ns())
                if not data and c.state != DEAD:
                    self.kill(c, "eof" if c.state != QUITTING else None)
        return ctrl

    def poll_traffic(self, timeout: float, on_data: Callable[[Conn, bytes, int], None], w0: int, w1: int,
                     buf: bytearray) -> None:
        """Like :meth:`poll`, but pure receivers (``c.fast``) only count newlines, in a reused buffer.

        During a traffic phase such a receiver gets nothing but PRIVMSG lines (and, at most, a
        keepalive PING), so counting ``\n`` is exact and needs no line framing.
        """
        conns = self.conns
        events = self.ep.poll(timeout, 4096)
        t = now_ns()
        counting = w0 <= t <= w1
        for fd, ev in events:
            c = conns.get(fd)
            if c is None:
                continue
            if ev & EPOLLOUT:
                self.flush(c)
                if c.state == DEAD:
                    continue
            if not ev & (EPOLLIN | EPOLLERRHUP):
                continue
            if c.fast:
                try:
                    n = c.sock.recv_into(buf)
                except BlockingIOError:
                    continue
                except OSError as e:
                    self.kill(c, f"recv:{_ename(e.errno)}")
                    continue
                if not n:
                    self.kill(c, "eof")
                    continue
                if counting:
                    c.count += buf.count(b"\n", 0, n)
                if buf.find(b"\nPING ", 0, n) >= 0:
                    self.send(c, b"PONG :freeq\r\n")
                continue
            try:
                data = c.sock.recv(RECV)
            except BlockingIOError:
                continue
            except OSError as e:
                self.kill(c, f"recv:{_ename(e.errno)}")
                continue
            on_data(c, data, now_ns())
            if not data and c.state != DEAD:
                self.kill(c, "eof")

    def idle_data(self, c: Conn, data: bytes, t: int) -> None:
        if data:
            data, end = self.frame(c, data)
            if end:
                self.answer_ping(c, data, end)

    def serve(self) -> None:
        while True:
            if not self.poll(1.0, self.idle_data):
                continue
            try:
                cmd, args = self.ctrl.recv()
            except EOFError:
                return
            if cmd == "exit":
                self.ctrl.send(("ok", None))
                return
            try:
                result = getattr(self, "cmd_" + cmd)(**args)
                self.ctrl.send(("ok", result))
            except Exception:
                self.ctrl.send(("error", traceback.format_exc()))

    # -- phases ---------------------------------------------------------------------
    def cmd_stats(self) -> dict[str, Any]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"live": len(self.conns), "errors": dict(self.errors), "cpu": ru.ru_utime + ru.ru_stime}

    def cmd_connect(self, nicks: list[str], chans: list[list[str]], inflight: int, timeout: float) -> dict[str, Any]:
        """Connect and register ``nicks`` (at most ``inflight`` at once), then join each one's channels."""
        deadline = time.monotonic() + timeout
        todo = deque(zip(nicks, chans))
        pending: set[Conn] = set()
        done = 0
        failed = 0
        reg_lat: list[int] = []
        t_first = now_ns()
        t_last = t_first

        def finish(c: Conn, ok: bool) -> None:
            nonlocal done, failed, t_last
            pending.discard(c)
            if ok:
                done += 1
                c.state = READY
                c.t_done = now_ns()
                t_last = c.t_done
            else:
                failed += 1

        def on_data(c: Conn, data: bytes, t: int) -> None:
            if not data:
                if c in pending:
                    finish(c, False)
                return
            data, end = self.frame(c, data)
            if not end:
                return
            self.answer_ping(c, data, end)
            if c.state == REGISTERING:
                if data.find(b" 376 ", 0, end) >= 0 or data.find(b" 422 ", 0, end) >= 0:
                    reg_lat.append(t - c.t_start)
                    if c.chans:
                        c.state = JOINING
                        c.joins_left = len(c.chans)
                        self.send(c, b"JOIN %s\r\n" % ",".join(c.chans).encode())
                        i = data.find(b" 422 ", 0, end)
                        if i < 0:
                            i = data.find(b" 376 ", 0, end)
                        c.joins_left -= data.count(b" 366 ", i, end)
                    else:
                        finish(c, True)
                elif data.find(b"ERROR ", 0, end) >= 0:
                    self.error("refused")
            elif c.state == JOINING:
                c.joins_left -= data.count(b" 366 ", 0, end)
            if c.state == JOINING and c.joins_left <= 0:
                finish(c, True)

        while time.monotonic() < deadline:
            while todo and len(pending) < inflight:
                nick, ch = todo.popleft()
                c = self.open(nick)
                if c is None:
                    failed += 1
                    continue
                c.chans = list(ch)
                pending.add(c)
            if not todo and not pending:
                break
            self.poll(0.05, on_data)
        timed_out = len(pending) + len(todo)
        for c in list(pending):
            self.kill(c, "connect-timeout")
        return {"done": done, "failed": failed + timed_out, "timed_out": timed_out, "t_first": t_first,
                "t_last": t_last, "reg_lat": reg_lat, "live": len(self.conns), "errors": dict(self.errors)}

    def cmd_sync(self, timeout: float, token: str = "sync") -> dict[str, Any]:
        """PING every connection and wait for every PONG: all output queued before it has arrived."""
        deadline = time.monotonic() + timeout
        waiting: set[Conn] = set()
        msg = b"PING :%s\r\n" % token.encode()
        for c in list(self.conns.values()):
            if c.state == READY:
                c.pongs = 0
                waiting.add(c)
                self.send(c, msg)

        def on_data(c: Conn, data: bytes, t: int) -> None:
            if not data:
                waiting.discard(c)
                return
            data, end = self.frame(c, data)
            if end:
                self.answer_ping(c, data, end)
                if c in waiting and data.find(PONG, 0, end) >= 0:
                    waiting.discard(c)

        while waiting and time.monotonic() < deadline:
            self.poll(0.05, on_data)
        return {"answered": len(self.conns) - len(waiting), "missing": len(waiting), "live": len(self.conns),
                "errors": dict(self.errors)}

    def cmd_traffic(self, t_start: int, t_stop: int, w0: int, w1: int, drain: float, senders: list[int],
                    mode: str, window: int, batch: int, rate: float, phase: float, target: str,
                    count_senders: bool, sample_every: int, text_len: int, max_samples: int,
                    phase0: float = 0.0) -> dict[str, Any]:
        """Send and count PRIVMSGs.

        Connections whose index (in connect order) is in ``senders`` send to
        ``target`` (``"*"``: each sender's own first channel); from ``t_start``
        to ``t_stop`` (monotonic ns). ``mode`` is ``closed`` (keep ``window``
        messages in flight per sender, a ``PING`` after each ``batch``, its
        ``PONG`` retiring the batch) or ``paced`` (``rate`` messages/s per
        sender; this worker's i-th sender first sends at ``t_start + phase0 + i * phase``
        seconds). ``PRIVMSG`` lines received in
        ``[w0, w1]`` are counted; every ``sample_every``-th connection records
        the latency of every timestamped message it receives.
        """
        conns = [c for c in self.conns.values() if c.state == READY]
        conns.sort(key=lambda c: c.t_start)
        sender_set = set(senders)
        active: list[Conn] = []
        pad = b"x" * max(0, text_len)
        for i, c in enumerate(conns):
            c.count = 0
            c.other = 0
            c.outstanding = 0
            c.sent = 0
            is_sender = i in sender_set
            c.role = (2 if is_sender else 0) | (1 if (not is_sender or count_senders) else 0)
            c.sampler = sample_every > 0 and i % sample_every == 0
            c.fast = c.role == 1 and not c.sampler and not c.tail
            if is_sender:
                tgt = c.chans[0] if target == "*" else target
                c.line = b"PRIVMSG " + tgt.encode() + b" :~T%d " + pad + b"\r\n"
                c.window = window
                c.batch = batch
                if mode == "paced":
                    c.interval = int(1e9 / rate)
                    c.next_send = t_start + int((phase0 + phase * len(active)) * 1e9)
                active.append(c)
        samples: list[int] = []
        latency_out = samples.append
        sent_total = 0
        closed_loop = mode == "closed"
        ping = b"PING :w\r\n"
        stop_at = t_stop

        def fill(c: Conn, t: int) -> None:
            # closed loop: top up to the window, one PING per batch
            nonlocal sent_total
            n = c.window - c.outstanding
            if n < c.batch or t >= stop_at:
                return
            nb = n // c.batch
            one = c.line % t
            data = (one * c.batch + ping) * nb
            c.outstanding += nb * c.batch
            c.sent += nb * c.batch
            sent_total += nb * c.batch
            self.send(c, data)

        def on_data(c: Conn, data: bytes, t: int) -> None:
            if not data:
                return
            if c.tail:
                data = c.tail + data
            end = data.rfind(b"\n") + 1
            c.tail = data[end:] if end < len(data) else b""
            if not end:
                return
            if w0 <= t <= w1:
                if c.role & 1:
                    c.count += data.count(PRIV, 0, end)
                else:
                    c.other += data.count(PRIV, 0, end)
            if c.sampler and len(samples) < max_samples:
                i = data.find(MARK, 0, end)
                while i >= 0:
                    j = data.find(b" ", i + 4, end)
                    try:
                        latency_out(t - int(data[i + 4:j]))
                    except ValueError:
                        pass
                    i = data.find(MARK, j, end)
            if c.role & 2 and closed_loop:
                k = data.count(PONG, 0, end)
                if k:
                    c.outstanding -= k * c.batch
                    fill(c, t)
            if data.find(b"PING ", 0, end) >= 0:
                self.answer_ping(c, data, end)

        buf = bytearray(RECV)

        def poll(timeout: float) -> None:
            self.poll_traffic(timeout, on_data, w0, w1, buf)

        # wait for the start
        while now_ns() < t_start:
            poll(max(0.0, min(0.05, (t_start - now_ns()) / 1e9)))
        t = now_ns()
        if closed_loop:
            for c in active:
                fill(c, t)
        deadline_ns = t_stop + int(drain * 1e9)
        if closed_loop:
            while True:
                t = now_ns()
                if t >= deadline_ns:
                    break
                if t >= t_stop and all(c.outstanding <= 0 or c.state == DEAD for c in active):
                    break
                poll(0.05)
        else:
            while True:
                t = now_ns()
                if t >= deadline_ns:
                    break
                nxt = deadline_ns
                for c in active:
                    if c.next_send <= t < t_stop:
                        n = 0
                        while c.next_send <= t and n < 100:
                            c.next_send += c.interval
                            n += 1
                        c.sent += n
                        sent_total += n
                        self.send(c, (c.line % t) * n)
                    if c.next_send < nxt and c.next_send < t_stop:
                        nxt = c.next_send
                poll(max(0.0, min(0.05, (nxt - now_ns()) / 1e9)))
        counted = sum(c.count for c in conns)
        other = sum(c.other for c in conns)
        unfinished = sum(1 for c in active if c.outstanding > 0) if closed_loop else 0
        for c in conns:
            c.tail = b""
            c.fast = False
        return {"counted": counted, "other": other, "sent": sent_total, "samples": samples,
                "receivers": sum(1 for c in conns if c.role & 1), "senders": len(active),
                "unfinished_senders": unfinished, "live": len(self.conns), "errors": dict(self.errors)}

    def cmd_churn(self, t_start: int, t_stop: int, concurrency: int, prefix: str, channels: int,
                  timeout: float) -> dict[str, Any]:
        """``concurrency`` clients each loop: connect, register, JOIN, wait for 366, PART+QUIT, wait for EOF."""
        cycles = 0
        cycle_lat: list[int] = []
        seq = 0
        active: dict[int, Conn] = {}
        hard_deadline = time.monotonic() + (t_stop - now_ns()) / 1e9 + timeout

        def start(k: int) -> None:
            nonlocal seq
            seq += 1
            c = self.open(f"{prefix}{k}n{seq}")
            if c is None:
                return
            c.cycler = k
            c.chans = [f"#churn{k % channels}"]
            active[k] = c

        def end(c: Conn, ok: bool) -> None:
            nonlocal cycles
            if active.get(c.cycler) is c:
                del active[c.cycler]
            if ok:
                cycles += 1
                cycle_lat.append(now_ns() - c.t_start)
            if now_ns() < t_stop:
                start(c.cycler)

        def on_data(c: Conn, data: bytes, t: int) -> None:
            if not data:
                if c.state == QUITTING:
                    self.kill(c)
                    end(c, True)
                else:
                    self.kill(c, "eof")
                    end(c, False)
                return
            data, end_ = self.frame(c, data)
            if not end_:
                return
            if c.state == REGISTERING:
                if data.find(b" 376 ", 0, end_) >= 0 or data.find(b" 422 ", 0, end_) >= 0:
                    c.state = JOINING
                    self.send(c, b"JOIN %s\r\n" % c.chans[0].encode())
                    i = max(data.find(b" 376 ", 0, end_), data.find(b" 422 ", 0, end_))
                    if data.find(b" 366 ", i, end_) >= 0:
                        c.state = QUITTING
                        self.send(c, b"PART %s\r\nQUIT :cycle\r\n" % c.chans[0].encode())
            elif c.state == JOINING:
                if data.find(b" 366 ", 0, end_) >= 0:
                    c.state = QUITTING
                    self.send(c, b"PART %s\r\nQUIT :cycle\r\n" % c.chans[0].encode())

        while now_ns() < t_start:
            self.poll(max(0.0, min(0.05, (t_start - now_ns()) / 1e9)), self.idle_data)
        for k in range(concurrency):
            start(k)
        while time.monotonic() < hard_deadline:
            if not active and now_ns() >= t_stop:
                break
            # a cycler whose connection failed to open: retry
            if now_ns() < t_stop and len(active) < concurrency:
                for k in range(concurrency):
                    if k not in active:
                        start(k)
            self.poll(0.05, on_data)
        stuck = len(active)
        for c in list(active.values()):
            self.kill(c, "churn-timeout")
        return {"cycles": cycles, "cycle_lat": cycle_lat, "stuck": stuck, "errors": dict(self.errors)}

    def cmd_close(self) -> dict[str, Any]:
        for c in list(self.conns.values()):
            self.kill(c)
        return {"live": 0}


def _worker_main(wid: int, ctrl: Any, host: str, port: int, cpu: Optional[int], src_ips: list[str]) -> None:
    from server import raise_nofile  # the bench directory is on sys.path

    raise_nofile()
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    try:
        Worker(wid, ctrl, host, port, src_ips).serve()
    except KeyboardInterrupt:
        pass


class Pool:
    """N worker processes driven over pipes; every call has a timeout."""

    def __init__(self, n: int, host: str, port: int, cpu: Optional[int], src_ips: list[str]) -> None:
        ctx = mp.get_context("fork")
        self.pipes = []
        self.procs = []
        for wid in range(n):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(wid, b, host, port, cpu, src_ips), daemon=True)
            p.start()
            b.close()
            self.pipes.append(a)
            self.procs.append(p)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def send(self, wids: list[int], cmd: str, args_per: list[dict[str, Any]]) -> None:
        for wid, args in zip(wids, args_per):
            self.pipes[wid].send((cmd, args))

    def gather(self, wids: list[int], timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        out = []
        for wid in wids:
            left = deadline - time.monotonic()
            if left <= 0 or not self.pipes[wid].poll(left):
                raise TimeoutError(f"worker {wid} did not answer within {timeout:.0f}s")
            try:
                status, result = self.pipes[wid].recv()
            except EOFError:
                raise RuntimeError(f"worker {wid} died") from None
            if status != "ok":
                raise RuntimeError(f"worker {wid} failed:\n{result}")
            out.append(result)
        return out

    def call(self, wids: list[int], cmd: str, args_per: list[dict[str, Any]], timeout: float) -> list[Any]:
        self.send(wids, cmd, args_per)
        return self.gather(wids, timeout)

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("exit", {}))
            except (OSError, BrokenPipeError):
                pass
        deadline = time.monotonic() + 5
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
