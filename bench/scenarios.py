"""The benchmark scenarios. Each starts its own server and workers, returns one dict, and cleans up."""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional

from loadgen import Pool, now_ns, percentiles
from server import ServerProcess, core_busy, core_ticks, git_state, proc_cpu_seconds, thread_cpu_seconds

# Parameters: (full, quick).
PARAMS: dict[str, dict[str, tuple[Any, Any]]] = {
    "connect": {"clients": (10_000, 1_000), "workers": (4, 2), "inflight": (48, 32), "hold": (5.0, 1.0)},
    "fanout": {"receivers": (1_000, 200), "senders": (4, 4), "workers": (4, 2), "duration": (10.0, 3.0),
               "warmup": (2.0, 1.0), "window": (32, 32), "batch": (8, 8), "paced_rate": (50.0, 50.0),
               "paced_duration": (10.0, 3.0), "sample_every": (20, 10)},
    "channels": {"clients": (1_000, 200), "size": (4, 4), "workers": (4, 2), "duration": (10.0, 3.0),
                 "warmup": (2.0, 1.0), "window": (4, 4), "batch": (2, 2), "sample_every": (4, 4),
                 "paced_rate": (1000.0, 200.0), "paced_duration": (10.0, 3.0)},
    "churn": {"concurrency": (32, 16), "workers": (4, 2), "duration": (10.0, 3.0), "channels": (8, 4)},
}

TEXT_LEN = 40  # filler bytes after the timestamp: a delivered line is ~95 bytes
ALL_CPUS = sorted(os.sched_getaffinity(0))  # before this process pins itself to the load-generator core
SRC_IPS = [f"127.0.{i // 250 + 1}.{i % 250 + 1}" for i in range(500)]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Env:
    """A server pinned to one core and a worker pool pinned to the other; ``close()`` always cleans up."""

    def __init__(self, name: str, workers: int, server_cpu: Optional[int], loadgen_cpu: Optional[int],
                 python: Optional[str], keep_log: Optional[str], profile_dir: Optional[str] = None,
                 server_dir: Optional[str] = None) -> None:
        self.name = name
        self.profile_dir = profile_dir
        self.profilers: list[subprocess.Popen] = []
        self.keep_log = keep_log
        self.server_cpu = server_cpu
        self.loadgen_cpu = loadgen_cpu
        self.server = ServerProcess(python=python, cpu=server_cpu, server_dir=server_dir)
        self.pool: Optional[Pool] = None
        self.server.start()
        self.pool = Pool(workers, self.server.host, self.server.port, loadgen_cpu, SRC_IPS)
        self.t0 = time.monotonic()

    def profile(self, label: str, seconds: float) -> None:
        """Sample the server with py-spy for ``seconds`` (only with --profile DIR)."""
        if not self.profile_dir:
            return
        os.makedirs(self.profile_dir, exist_ok=True)
        spy = os.path.join(os.path.dirname(self.server.python), "py-spy")
        if not os.path.exists(spy):
            spy = shutil.which("py-spy") or ""
        if not spy:
            log("py-spy not found: install it with .venv/bin/pip install py-spy")
            return
        out = os.path.join(self.profile_dir, f"{self.name}-{label}.txt")
        self.profilers.append(subprocess.Popen(
            [spy, "record", "--pid", str(self.server.pid), "--duration", str(max(1, int(seconds))), "--rate", "200",
             "--nonblocking", "--format", "raw", "--output", out],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def close(self) -> None:
        for prof in self.profilers:
            try:
                prof.wait(30)
            except subprocess.TimeoutExpired:
                prof.kill()
                prof.wait(5)
        if self.pool is not None:
            try:
                self.pool.close()
            except Exception:
                pass
        self.server.stop()
        self.server.cleanup(self.keep_log)

    # -- observation --------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        assert self.pool is not None
        lg = 0.0
        for pid in self.pool.pids:
            try:
                lg += proc_cpu_seconds(pid)
            except OSError:
                pass
        threads = thread_cpu_seconds(self.server.pid)
        return {"t": time.monotonic(), "server_cpu": self.server.cpu_seconds(), "loadgen_cpu": lg,
                "ticks": core_ticks(), "threads": threads}

    def usage(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """CPU use between two snapshots; ``other_load_on_server_core`` shows noise from other processes."""
        wall = b["t"] - a["t"]
        busy = core_busy(a["ticks"], b["ticks"])
        scpu = b["server_cpu"] - a["server_cpu"]
        out = {"server_cpu_s": round(scpu, 3), "server_cpu_util": round(scpu / wall, 3) if wall else None,
               "loadgen_cpu_s": round(b["loadgen_cpu"] - a["loadgen_cpu"], 3),
               "loadgen_cpu_util": round((b["loadgen_cpu"] - a["loadgen_cpu"]) / wall, 3) if wall else None}
        # the reactor thread versus the rest (the database thread, thread pools)
        pid = self.server.pid
        main = b["threads"].get(pid, 0.0) - a["threads"].get(pid, 0.0)
        out["server_main_thread_cpu_s"] = round(main, 3)
        out["server_other_threads_cpu_s"] = round(max(0.0, scpu - main), 3)
        if self.server_cpu is not None and self.server_cpu in busy:
            out["server_core_busy"] = busy[self.server_cpu]
            out["other_load_on_server_core"] = round(max(0.0, busy[self.server_cpu] - out["server_cpu_util"]), 3)
        if self.loadgen_cpu is not None and self.loadgen_cpu in busy:
            out["loadgen_core_busy"] = busy[self.loadgen_cpu]
            # a busy load-generator core means the figure may be the generator's limit, not the server's
            out["loadgen_saturated"] = busy[self.loadgen_cpu] >= 0.95
        return out

    def sleep_until(self, t_ns: int) -> None:
        while True:
            left = (t_ns - now_ns()) / 1e9
            if left <= 0:
                return
            time.sleep(min(left, 0.5))
            if not self.server.alive():
                raise RuntimeError(f"server died: {self.server.log_tail()}")

    def connect(self, wids: list[int], nicks: list[list[str]], chans: list[list[list[str]]], inflight: int,
                timeout: float) -> list[dict[str, Any]]:
        assert self.pool is not None
        args = [{"nicks": n, "chans": c, "inflight": inflight, "timeout": timeout} for n, c in zip(nicks, chans)]
        res = self.pool.call(wids, "connect", args, timeout + 30)
        failed = sum(r["failed"] for r in res)
        if failed:
            errors: dict[str, int] = {}
            for r in res:
                for k, v in r["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            log(f"{self.name}: {failed} connections failed: {errors}")
        return res

    def sync(self, wids: list[int], timeout: float = 120.0) -> int:
        assert self.pool is not None
        res = self.pool.call(wids, "sync", [{"timeout": timeout}] * len(wids), timeout + 30)
        return sum(r["answered"] for r in res)

    def errors(self) -> dict[str, int]:
        assert self.pool is not None
        res = self.pool.call(list(range(len(self.pool.pids))), "stats", [{}] * len(self.pool.pids), 30)
        errors: dict[str, int] = {}
        for r in res:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        return errors


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _traffic(env: Env, wids: list[int], per_worker: list[dict[str, Any]], common: dict[str, Any],
             duration: float, warmup: float, drain: float,
             label: str = "traffic") -> tuple[list[dict[str, Any]], dict[str, Any], float]:
    """Run one traffic phase; returns worker results, CPU usage in the counting window, and its length."""
    assert env.pool is not None
    t_start = now_ns() + 500_000_000
    w0 = t_start + int(warmup * 1e9)
    w1 = w0 + int(duration * 1e9)
    args = []
    for extra in per_worker:
        a = dict(common)
        a.update(t_start=t_start, t_stop=w1, w0=w0, w1=w1, drain=drain)
        a.update(extra)
        args.append(a)
    env.pool.send(wids, "traffic", args)
    env.sleep_until(w0)
    s0 = env.snapshot()
    env.profile(label, duration)
    env.sleep_until(w1)
    s1 = env.snapshot()
    res = env.pool.gather(wids, drain + 60)
    return res, env.usage(s0, s1), (w1 - w0) / 1e9


def scenario_connect(env: Env, p: dict[str, Any]) -> dict[str, Any]:
    n, nw = p["clients"], p["workers"]
    wids = list(range(nw))
    counts = split(n, nw)
    nicks = [[f"c{w}x{i}" for i in range(counts[w])] for w in wids]
    chans: list[list[list[str]]] = [[[] for _ in range(counts[w])] for w in wids]
    time.sleep(1.0)
    rss_before = env.server.rss()
    fds_before = env.server.fds()
    s0 = env.snapshot()
    env.profile("connect", n / 1000.0)
    res = env.connect(wids, nicks, chans, max(1, p["inflight"] // nw), timeout=300)
    s1 = env.snapshot()
    done = sum(r["done"] for r in res)
    span = (max(r["t_last"] for r in res) - min(r["t_first"] for r in res)) / 1e9
    lat = [x for r in res for x in r["reg_lat"]]
    log(f"connect: {done} registered in {span:.2f}s; idling")
    time.sleep(2.0)
    rss_after = env.server.rss()
    fds_after = env.server.fds()
    answered = env.sync(wids)
    time.sleep(p["hold"])
    held = env.sync(wids)
    usage = env.usage(s0, s1)
    out = {
        "clients": n, "registered": done, "failed": n - done,
        "registrations_per_s": round(done / span, 1) if span > 0 else None,
        "registration_latency": percentiles(lat, (50, 99)),
        "rss_before_bytes": rss_before, "rss_after_bytes": rss_after,
        "rss_per_conn_bytes": round((rss_after - rss_before) / done) if done else None,
        "server_fds_before": fds_before, "server_fds_after": fds_after,
        "answered_ping_after_connect": answered,
        "held_after_hold": held, "hold_s": p["hold"], "held_all": held == n,
        "server_cpu_ms_per_registration": round(usage["server_cpu_s"] * 1000 / done, 3) if done else None,
        "connect_phase_s": round(span, 3),
    }
    out.update(usage)
    return out


def scenario_fanout(env: Env, p: dict[str, Any]) -> dict[str, Any]:
    nr, ns, nw = p["receivers"], p["senders"], p["workers"]
    rw = list(range(nw))
    sw = nw  # the senders' own worker
    counts = split(nr, nw)
    t = time.monotonic()
    env.connect(rw, [[f"r{w}x{i}" for i in range(counts[w])] for w in rw],
                [[["#bench"]] * counts[w] for w in rw], 8, timeout=300)
    env.connect([sw], [[f"s{i}" for i in range(ns)]], [[["#bench"]] * ns], ns, timeout=60)
    answered = env.sync(rw + [sw])
    setup = time.monotonic() - t
    log(f"fanout: {answered} members joined and synced in {setup:.1f}s")
    if answered != nr + ns:
        raise RuntimeError(f"only {answered} of {nr + ns} members answered after joining")

    common = {"mode": "closed", "window": p["window"], "batch": p["batch"], "rate": 0.0, "phase": 0.0,
              "target": "#bench", "count_senders": False, "text_len": TEXT_LEN, "max_samples": 400_000}
    per = [{"senders": [], "sample_every": p["sample_every"]} for _ in rw]
    per.append({"senders": list(range(ns)), "sample_every": 0})
    res, usage, window = _traffic(env, rw + [sw], per, common, p["duration"], p["warmup"], drain=5.0,
                                  label="full")
    delivered = sum(r["counted"] for r in res)
    sent = sum(r["sent"] for r in res)
    lat = [x for r in res for x in r["samples"]]
    out: dict[str, Any] = {
        "receivers": nr, "senders": ns, "channel_members": nr + ns, "duration_s": window,
        "delivered_msgs_per_s": round(delivered / window),
        "sent_msgs_per_s": round(sent / (window + p["warmup"])),
        "delivered_per_server_cpu_s": round(delivered / usage["server_cpu_s"]) if usage["server_cpu_s"] else None,
        "latency_full_speed": percentiles(lat),
        "latency_samples": len(lat),
        "closed_loop_window": f"{p['window']} msgs in flight per sender, PING every {p['batch']}",
        "unfinished_senders": sum(r["unfinished_senders"] for r in res),
    }
    out.update(usage)

    # latency sub-run: paced senders, 50 msg/s in total, evenly staggered
    env.sync(rw + [sw])
    rate = p["paced_rate"]
    common.update(mode="paced", rate=rate / ns, phase=1.0 / rate, max_samples=2_000_000)
    per = [{"senders": [], "sample_every": 1} for _ in rw]
    per.append({"senders": list(range(ns)), "sample_every": 0})
    res, usage2, window2 = _traffic(env, rw + [sw], per, common, p["paced_duration"], 0.5, drain=3.0,
                                    label="paced")
    lat = [x for r in res for x in r["samples"]]
    sent = sum(r["sent"] for r in res)
    out["paced"] = {
        "rate_msgs_per_s": rate, "sent": sent, "latency": percentiles(lat), "latency_samples": len(lat),
        "delivered_msgs_per_s": round(sum(r["counted"] for r in res) / window2),
        "server_cpu_util": usage2["server_cpu_util"],
        "other_load_on_server_core": usage2.get("other_load_on_server_core"),
    }
    out["setup_s"] = round(setup, 1)
    out["client_errors"] = env.errors()
    return out


def scenario_channels(env: Env, p: dict[str, Any]) -> dict[str, Any]:
    n, size, nw = p["clients"], p["size"], p["workers"]
    wids = list(range(nw))
    nicks: list[list[str]] = [[] for _ in wids]
    chans: list[list[list[str]]] = [[] for _ in wids]
    for g in range(n):  # members of one channel are spread over the workers
        w = g % nw
        nicks[w].append(f"m{g}")
        chans[w].append([f"#ch{g // size}"])
    env.connect(wids, nicks, chans, 8, timeout=300)
    answered = env.sync(wids)
    if answered != n:
        raise RuntimeError(f"only {answered} of {n} clients answered after joining")
    common = {"mode": "closed", "window": p["window"], "batch": p["batch"], "rate": 0.0, "phase": 0.0,
              "target": "*", "count_senders": True, "text_len": TEXT_LEN, "max_samples": 400_000,
              "sample_every": p["sample_every"]}
    per = [{"senders": list(range(len(nicks[w])))} for w in wids]
    res, usage, window = _traffic(env, wids, per, common, p["duration"], p["warmup"], drain=5.0)
    delivered = sum(r["counted"] for r in res)
    sent = sum(r["sent"] for r in res)
    lat = [x for r in res for x in r["samples"]]
    out = {
        "clients": n, "channels": n // size, "channel_size": size, "duration_s": window,
        "delivered_msgs_per_s": round(delivered / window),
        "sent_msgs_per_s": round(sent / (window + p["warmup"])),
        "delivered_per_server_cpu_s": round(delivered / usage["server_cpu_s"]) if usage["server_cpu_s"] else None,
        "latency": percentiles(lat), "latency_samples": len(lat),
        "closed_loop_window": f"{p['window']} msgs in flight per client, PING every {p['batch']}",
    }
    out.update(usage)

    # paced sub-run: every client talks at the same low rate, evenly staggered over all clients
    env.sync(wids)
    rate = p["paced_rate"]
    common.update(mode="paced", rate=rate / n, phase=nw / rate, max_samples=2_000_000, sample_every=1)
    per = [{"senders": list(range(len(nicks[w]))), "phase0": w / rate} for w in wids]
    res, usage2, window2 = _traffic(env, wids, per, common, p["paced_duration"], 1.0, drain=3.0, label="paced")
    lat = [x for r in res for x in r["samples"]]
    out["paced"] = {
        "rate_msgs_per_s": rate, "per_client_msgs_per_s": rate / n, "sent": sum(r["sent"] for r in res),
        "delivered_msgs_per_s": round(sum(r["counted"] for r in res) / window2),
        "latency": percentiles(lat), "latency_samples": len(lat),
        "server_cpu_util": usage2["server_cpu_util"],
        "other_load_on_server_core": usage2.get("other_load_on_server_core"),
    }
    out["client_errors"] = env.errors()
    return out


def scenario_churn(env: Env, p: dict[str, Any]) -> dict[str, Any]:
    assert env.pool is not None
    nw = p["workers"]
    wids = list(range(nw))
    conc = split(p["concurrency"], nw)
    t_start = now_ns() + 500_000_000
    t_stop = t_start + int(p["duration"] * 1e9)
    args = [{"t_start": t_start, "t_stop": t_stop, "concurrency": conc[w], "prefix": f"k{w}x",
             "channels": p["channels"], "timeout": 20.0} for w in wids]
    env.pool.send(wids, "churn", args)
    env.sleep_until(t_start)
    s0 = env.snapshot()
    env.profile("churn", p["duration"])
    env.sleep_until(t_stop)
    s1 = env.snapshot()
    res = env.pool.gather(wids, 60)
    cycles = sum(r["cycles"] for r in res)
    lat = [x for r in res for x in r["cycle_lat"]]
    usage = env.usage(s0, s1)
    out = {
        "concurrency": p["concurrency"], "duration_s": p["duration"], "cycles": cycles,
        "cycles_per_s": round(cycles / p["duration"], 1),
        "cycle": "connect, NICK/USER, wait 376/422, JOIN, wait 366, PART+QUIT, wait for close",
        "cycle_latency": percentiles(lat, (50, 99)),
        "server_cpu_ms_per_cycle": round(usage["server_cpu_s"] * 1000 / cycles, 3) if cycles else None,
        "stuck": sum(r["stuck"] for r in res), "client_errors": env.errors(),
    }
    out.update(usage)
    return out


SCENARIOS: dict[str, Callable[[Env, dict[str, Any]], dict[str, Any]]] = {
    "connect": scenario_connect, "fanout": scenario_fanout, "channels": scenario_channels, "churn": scenario_churn,
}


def params(name: str, quick: bool, overrides: dict[str, Any]) -> dict[str, Any]:
    p = {k: v[1 if quick else 0] for k, v in PARAMS[name].items()}
    for k, v in overrides.items():
        if k in p:
            p[k] = type(p[k])(v)
    return p


def pick_cpus(server_cpu: Optional[int]) -> tuple[Optional[int], Optional[int]]:
    cpus = ALL_CPUS
    if len(cpus) < 2:
        return None, None
    s = server_cpu if server_cpu is not None else cpus[0]
    rest = [c for c in cpus if c != s]
    return s, rest[0]


def run_one(name: str, quick: bool, overrides: dict[str, Any], python: Optional[str], server_cpu: Optional[int],
            keep_log: Optional[str], profile_dir: Optional[str] = None,
            server_dir: Optional[str] = None) -> dict[str, Any]:
    p = params(name, quick, overrides)
    scpu, lcpu = pick_cpus(server_cpu)
    if lcpu is not None:
        os.sched_setaffinity(0, {lcpu})
    # the senders of fan-out get a worker of their own
    workers = p["workers"] + (1 if name == "fanout" else 0)
    t = time.monotonic()
    env = Env(name, workers, scpu, lcpu, python, keep_log, profile_dir, server_dir)
    try:
        result = SCENARIOS[name](env, p)
        if not env.server.alive():
            raise RuntimeError("server died")
        result["server_log_warnings"] = env.server.count_log("SendQ exceeded") + env.server.count_log("Traceback")
    finally:
        env.close()
    out = {"scenario": name, "quick": quick}
    out.update(result)
    out["params"] = p
    out["machine"] = {"cpus": len(ALL_CPUS), "server_cpu": scpu, "loadgen_cpu": lcpu}
    out["server_tree"] = git_state(env.server.server_dir)
    out["wall_s"] = round(time.monotonic() - t, 1)
    return out


HEADLINE = {
    "connect": ["registrations_per_s", "rss_per_conn_bytes", "held_after_hold", "server_cpu_ms_per_registration"],
    "fanout": ["delivered_msgs_per_s", "delivered_per_server_cpu_s", "latency_full_speed.p50_ms",
               "latency_full_speed.p99_ms", "paced.latency.p50_ms", "paced.latency.p99_ms"],
    "channels": ["delivered_msgs_per_s", "delivered_per_server_cpu_s", "latency.p50_ms", "latency.p99_ms",
                 "paced.latency.p50_ms", "paced.latency.p99_ms"],
    "churn": ["cycles_per_s", "server_cpu_ms_per_cycle", "cycle_latency.p50_ms", "cycle_latency.p99_ms"],
}


def _get(d: dict[str, Any], path: str) -> Any:
    for k in path.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(k)  # type: ignore[assignment]
    return d


def combine(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One line for N runs: ``median`` holds the median of every headline figure, ``per_run`` each
    run's value; every other field is the run with the median first headline figure, unaltered."""
    if len(runs) == 1:
        return runs[0]
    key = HEADLINE[name][0]
    ordered = sorted(runs, key=lambda r: _get(r, key) or 0)
    out: dict[str, Any] = {"scenario": name, "runs": len(runs), "median": {}, "per_run": {}}
    for path in HEADLINE[name]:
        vals = [_get(r, path) for r in runs]
        out["per_run"][path] = vals
        nums = [v for v in vals if isinstance(v, (int, float))]
        out["median"][path] = round(statistics.median(nums), 3) if nums else None
    for path in ("other_load_on_server_core", "loadgen_saturated"):  # noise, per run
        out["per_run"][path] = [_get(r, path) for r in runs]
    out["median_run"] = ordered[len(ordered) // 2]
    return out
