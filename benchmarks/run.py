"""Run the benchmark suite and print its Markdown table.

    .venv/bin/python -m benchmarks          # or: make bench
    .venv/bin/python -m benchmarks --quick  # one rep, fewer messages: a smoke test
    .venv/bin/python -m benchmarks --only priority,rate-limit   # some sections or cells
    .venv/bin/python -m benchmarks --only 'emailq@*,limit-aiohttp@250ms'

Every contender's worker runs at once (each idle but the one measured), each on its own
Redis database and queue; reps are interleaved (rep 1 of every cell, then rep 2, ...) so
that a noisy neighbour hits every contender alike, and each figure is the median of the
reps. Then emailq against partly failing endpoints, sign-in codes behind a bulk send, a rate
limit across three workers, and the cost of an enqueue. Writes
benchmarks/results/latest.json and latest.md (--quick: quick.*, --only: partial.*); a full
run also rewrites the tables in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

import psutil

from benchmarks import cells as c
from benchmarks import enqueue_cost, flow, ingest, outage, redis_cost, report
from benchmarks.endpoint import fails_forever
from benchmarks.harness import Endpoint, PeakRss, RedisServer, median, percentile

RESULTS = Path(__file__).resolve().parent / "results"
LATENCIES_MS = (0, 50, 250)
# The limit's requests in flight (DESIGN: the limit at 512 in flight).
LIMIT_IN_FLIGHT = 512
# Partly failing endpoints, at 0 ms: (name, label, share of requests answered 503, share of
# emails answered 500 forever, share of the emails whose delivery is timed).
FAILING = (
    ("third-failing", "a third of requests answered 503", 1 / 3, 0.0, 0.95),
    ("6pct-forever", "6% of emails answered 500 forever", 0.0, 0.06, None),
)
FAILING_MESSAGES = 2000
WARMUP = 64
PACED_SECONDS = 3.0
PACED_MAX_RATE = 200.0
STALL_SECONDS = 30.0
# What --only names: whole sections, or cells by key (shell-style patterns).
SECTIONS = ("throughput", "failing", "trace", "priority", "rate-limit", "outage", "enqueue", "ingest", "redis-cost")
# The trace's cost at 0 ms: emailq's defaults (trace on) beside the same with it off.
TRACE_CELLS = (
    ("emailq-trace-on", "emailq, defaults (trace on)", {}),
    ("emailq-trace-off", "emailq, EMAILQ_TRACE_SECONDS=0", {"EMAILQ_TRACE_SECONDS": "0"}),
)
# More reps than the others: a 5% difference needs them on a noisy machine.
TRACE_REPS = 7


def messages_for(cell: c.Cell, quick: bool) -> int:
    """Enough for a few seconds of each contender; the slow ones get fewer."""
    slow_at_50 = cell.latency_ms and cell.name in ("naive", "floor-prefork")
    if slow_at_50 and cell.latency_ms >= 250:
        return 40 if quick else 80
    if isinstance(cell, c.Limit) and cell.latency_ms >= 250 and cell.concurrency == LIMIT_IN_FLIGHT:
        # 512 in flight answer in waves of 512 every 250 ms: enough waves that the first
        # and the last answer of a burst measure the rate, not one wave's spread.
        return 4000 if quick else 10000
    n = 120 if slow_at_50 else 200 if cell.name == "naive" else 2000
    return max(100, n // 4) if quick else n


def wait_delivered(cell: c.Cell, n: int) -> int:
    """Poll the cell's sink until `n` arrived; give up after STALL_SECONDS without progress."""
    seen, since = -1, time.monotonic()
    while True:
        count = cell.sink.count()
        if count >= n:
            return count
        if count != seen:
            seen, since = count, time.monotonic()
        elif time.monotonic() - since > STALL_SECONDS:
            log(f"  {cell.key}: stalled at {count}/{n}")
            return count
        if cell.proc is not None and not cell.proc.alive() and not isinstance(cell, c.Limit):
            raise RuntimeError(f"{cell.key} died:\n{cell.proc.tail()}")
        time.sleep(0.02)


def run_once(cell: c.Cell, prefix: str, n: int, rate: float = 0.0) -> dict:
    """One run: n messages, all at once (rate 0) or paced at `rate`/s; what arrived, and when."""
    bids = [f"{prefix}{i}" for i in range(n)]
    cpu = 0.0
    if isinstance(cell, c.Limit):
        proc = cell.start(prefix, n, rate)
        with PeakRss(proc.rss) as memory:
            result = cell.result()
        keys, created, enqueued_at, cpu = bids, result["created"], result["start"], result["cpu"]
    else:
        assert cell.proc is not None
        prepared = cell.prepare(bids)
        cpu0 = cell.proc.cpu_seconds()
        with PeakRss(cell.proc.rss) as memory:
            if rate:
                keys, created, enqueued_at = [], [], time.time()
                for i, item in enumerate(prepared):
                    delay = enqueued_at + i / rate - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    created.append(time.time())
                    keys.append(cell.enqueue_one(item))
            else:
                keys, enqueued_at = cell.enqueue(prepared)
                created = [enqueued_at] * n
            wait_delivered(cell, n)
        cpu = cell.proc.cpu_seconds() - cpu0
    got, times = cell.sink.collect()
    arrived = dict(zip(got, times))
    when = [arrived[k] for k in keys if k in arrived]
    latencies = [arrived[k] - t for k, t in zip(keys, created) if k in arrived]
    span = max(when) - min(when) if len(when) > 1 else float("nan")
    return {
        "n": n,
        "delivered": len(when),
        "duplicates": len(got) - len(arrived),
        "strays": len(set(got) - set(keys)),
        "rate": (len(when) - 1) / span if span and span == span else float("nan"),
        "rate_from_enqueue": len(when) / (max(when) - enqueued_at) if when else float("nan"),
        "latency_p50_ms": percentile(latencies, 50) * 1000,
        "latency_p99_ms": percentile(latencies, 99) * 1000,
        "latency_max_ms": max(latencies) * 1000 if latencies else float("nan"),
        "peak_rss_mb": memory.peak / 2**20,
        "cpu_us_per_msg": cpu / max(1, len(when)) * 1e6,
    }


def summarize(cell: c.Cell, runs: list[dict], paced: dict | None) -> dict:
    def med(field: str) -> float:
        return median([r[field] for r in runs])

    return {
        "contender": cell.name,
        "label": cell.label,
        "latency_ms": cell.latency_ms,
        "messages": runs[0]["n"] if runs else 0,
        "rate": med("rate"),
        "rates": [r["rate"] for r in runs],
        "rate_from_enqueue": med("rate_from_enqueue"),
        "burst_latency_p50_ms": med("latency_p50_ms"),
        "burst_latency_p99_ms": med("latency_p99_ms"),
        "peak_rss_mb": max((r["peak_rss_mb"] for r in runs), default=float("nan")),
        "cpu_us_per_msg": med("cpu_us_per_msg"),
        "lost": sum(r["n"] - r["delivered"] for r in runs),
        "duplicates": sum(r["duplicates"] for r in runs),
        "paced": paced,
        "runs": runs,
    }


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


THROUGHPUT_KINDS = (c.Naive, c.FloorPrefork, c.FloorThreads, c.Arq, c.Emailq)
# The limit's clients: httpx's async pool times out connecting at 512 in flight
# (encode/httpx#3215): it runs at 64, for the comparison only.
LIMIT_CLIENTS = (("aiohttp", LIMIT_IN_FLIGHT), ("httpx", 64))


def throughput_names() -> list[str]:
    return [k.name for k in THROUGHPUT_KINDS] + [f"limit-{client}" for client, _ in LIMIT_CLIENTS]


def throughput_keys() -> list[str]:
    return [f"{name}@{latency:g}ms" for latency in LATENCIES_MS for name in throughput_names()]


def failing_keys() -> list[str]:
    return [f"emailq-{spec[0]}@0ms" for spec in FAILING]


def section_keys() -> dict[str, list[str]]:
    """Every cell's key, by section."""
    return {
        "throughput": throughput_keys(),
        "failing": failing_keys(),
        "trace": [f"{name}@0ms" for name, _, _ in TRACE_CELLS],
        "priority": [flow.priority_key(ms) for ms in flow.PRIORITY_LATENCIES_MS],
        "rate-limit": [flow.RATE_KEY],
        "outage": [outage.KEY],
        "enqueue": ["enqueue"],
        "ingest": ["ingest"],
        "redis-cost": ["redis-cost"],
    }


def selector(only: str | None) -> Callable[[str, str], bool]:
    """`want(section, key)` for --only's comma-separated sections and key patterns."""
    if not only:
        return lambda section, key: True
    items = [item.strip() for item in only.split(",") if item.strip()]
    known = section_keys()
    every_key = [key for keys in known.values() for key in keys]
    for item in items:
        if item not in known and not any(fnmatch(key, item) for key in every_key):
            raise SystemExit(f"--only: {item!r} names no section ({', '.join(SECTIONS)}) and no cell ({', '.join(every_key)})")
    return lambda section, key: any(item == section or fnmatch(key, item) for item in items)


def build_cells(redis_server: RedisServer, endpoints: dict, workdir: Path, want: Callable[[str], bool] = lambda key: True) -> list[c.Cell]:
    """The throughput cells `want` picks (by key); only theirs start."""
    cells: list[c.Cell] = []
    db = 1
    for latency in LATENCIES_MS:
        endpoint = endpoints.get(latency)
        if endpoint is None:
            db += len(THROUGHPUT_KINDS)
            continue
        for kind in THROUGHPUT_KINDS:
            if want(f"{kind.name}@{latency:g}ms"):
                cells.append(kind(latency, endpoint, redis_server, db, workdir))
            db += 1
        for client, in_flight in LIMIT_CLIENTS:
            cell = c.Limit(latency, endpoint, workdir, client, concurrency=in_flight)
            if want(cell.key):
                cells.append(cell)
    return cells


def failing_cells(
    redis_server: RedisServer, workdir: Path, first_db: int, want: Callable[[str], bool] = lambda key: True
) -> list[tuple[c.Emailq, Endpoint, tuple]]:
    """emailq's worker, with its defaults, against each partly failing endpoint (those `want` picks)."""
    made = []
    for db, spec in enumerate(FAILING, start=first_db):
        name, label, fail_share, fail_key_share, _ = spec
        if not want(f"emailq-{name}@0ms"):
            continue
        endpoint = Endpoint(0, workdir, fail_share=fail_share, fail_key_share=fail_key_share)
        cell = c.Emailq(0, endpoint, redis_server, db, workdir, name=f"emailq-{name}", label=label)
        made.append((cell, endpoint, spec))
    return made


def run_failing(cell: c.Emailq, spec: tuple, prefix: str, n: int) -> dict:
    """n emails at once; the time until the share timed (95%, or every email that can be
    delivered) arrived, as a rate comparable to a healthy run's `rate_from_enqueue`."""
    _, _, _, fail_key_share, share = spec
    keys, enqueued_at = cell.enqueue(cell.prepare([f"{prefix}{i}" for i in range(n)]))
    deliverable = [k for k in keys if not fails_forever(k, fail_key_share)]
    need = int(len(deliverable) * share) if share else len(deliverable)
    # Count only this rep's emails: the last rep's stragglers still arrive on their backoff.
    mine, arrived = set(keys), []
    since = time.monotonic()
    while len(arrived) < need and time.monotonic() - since < STALL_SECONDS * 4:
        got, times = cell.sink.collect()
        arrived += [t for k, t in zip(got, times) if k in mine]
        time.sleep(0.05)
    arrived.sort()
    seconds = arrived[need - 1] - enqueued_at if len(arrived) >= need else float("nan")
    return {"n": n, "timed": need, "seconds": seconds, "rate": need / seconds}


def bench_failing(made: list, reps: int, healthy: dict | None) -> list[dict]:
    rows = []
    for cell, _, spec in made:
        runs = []
        for rep in range(reps):
            runs.append(run_failing(cell, spec, f"{cell.key}-r{rep}-", FAILING_MESSAGES))
            log(f"rep {rep + 1}/{reps} {cell.key:28} {runs[-1]['rate']:8.0f}/s to {runs[-1]['timed']} delivered")
        rate = median([r["rate"] for r in runs])
        base = healthy["rate_from_enqueue"] if healthy else float("nan")
        rows.append(
            {
                "contender": cell.name,
                "label": spec[1],
                "timed_share": spec[4],
                "rate": rate,
                "seconds": median([r["seconds"] for r in runs]),
                "healthy_rate": base,
                "share_of_healthy": rate / base if base else float("nan"),
                "runs": runs,
            }
        )
    return rows


def bench(cells: list[c.Cell], reps: int, quick: bool, paced: bool = True, count: int | None = None) -> list[dict]:
    """Warm every cell up, run the interleaved reps, then one paced run each."""
    for cell in cells:
        log(f"warming up {cell.key}")
        result = run_once(cell, f"{cell.key}-warm-", WARMUP)
        if result["delivered"] < WARMUP:
            raise RuntimeError(f"{cell.key} did not warm up:\n{cell.proc.tail() if cell.proc else ''}")
    runs: dict[str, list[dict]] = {cell.key: [] for cell in cells}
    for rep in range(reps):
        for cell in cells:
            result = run_once(cell, f"{cell.key}-r{rep}-", count or messages_for(cell, quick))
            runs[cell.key].append(result)
            log(
                f"rep {rep + 1}/{reps} {cell.key:28} {result['rate']:8.0f}/s  "
                f"rss {result['peak_rss_mb']:6.1f} MB  cpu {result['cpu_us_per_msg']:6.0f} us/msg"
                + (f"  LOST {result['n'] - result['delivered']}" if result["delivered"] < result["n"] else "")
            )
            time.sleep(0.3)
    summaries = []
    for cell in cells:
        paced_result = None
        if paced:
            rate = min(PACED_MAX_RATE, median([r["rate"] for r in runs[cell.key]]) / 2)
            n = max(20, int(rate * PACED_SECONDS))
            paced_result = run_once(cell, f"{cell.key}-paced-", n, rate)
            paced_result["offered_rate"] = rate
            log(
                f"paced {cell.key:28} {rate:6.0f}/s offered  p50 {paced_result['latency_p50_ms']:7.1f} ms"
                f"  p99 {paced_result['latency_p99_ms']:7.1f} ms"
            )
        summaries.append(summarize(cell, runs[cell.key], paced_result))
    return summaries


class ForeignLoad:
    """How busy the machine is with processes other than the suite's (a shared machine is noisy).

    Counts the suite's own CPU through `os.times()`, which includes every child once reaped.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        system = psutil.cpu_times()
        busy = sum(system) - system.idle - getattr(system, "iowait", 0.0)
        own = os.times()
        return time.monotonic(), busy, own.user + own.system + own.children_user + own.children_system

    def share(self) -> float:
        """The others' CPU since creation, as a share of all cores' time."""
        (t0, busy0, mine0), (t1, busy1, mine1) = self._start, self._sample()
        capacity = (t1 - t0) * (os.cpu_count() or 1)
        return max(0.0, (busy1 - busy0) - (mine1 - mine0)) / capacity if capacity else 0.0


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="emailq benchmarks")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one rep, fewer messages")
    parser.add_argument("--no-paced", action="store_true", help="skip the paced latency runs")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--only",
        metavar="ITEMS",
        help=f"comma-separated sections ({', '.join(SECTIONS)}) and/or cell keys, shell patterns allowed "
        "(e.g. 'emailq@*', 'priority@250ms'); writes results/partial.*",
    )
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    want = selector(args.only)

    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="emailq-bench-"))
    log(f"work directory: {workdir}")
    stoppable: list = []
    foreign = ForeignLoad()
    try:
        redis_server = RedisServer(workdir)
        stoppable.append(redis_server)
        results: list[dict] = []
        latencies = [ms for ms in LATENCIES_MS if any(want("throughput", f"{name}@{ms:g}ms") for name in throughput_names())]
        if latencies:
            endpoints = {ms: Endpoint(ms, workdir) for ms in latencies}
            stoppable.extend(endpoints.values())
            cells = build_cells(redis_server, endpoints, workdir, lambda key: want("throughput", key))
            stoppable.extend(cells)
            results = bench(cells, reps, args.quick, paced=not args.no_paced)
        failing: list[dict] = []
        made = failing_cells(redis_server, workdir, first_db=40, want=lambda key: want("failing", key))
        if made:
            log("partly failing endpoints")
            stoppable.extend(item for cell, endpoint, _ in made for item in (endpoint, cell))
            healthy = next((r for r in results if r["contender"] == "emailq" and r["latency_ms"] == 0), None)
            failing = bench_failing(made, reps, healthy)
        trace: list[dict] = []
        trace_cells = [
            c.Emailq(0, Endpoint(0, workdir), redis_server, db, workdir, extra_env=env, name=name, label=label)
            for db, (name, label, env) in enumerate(TRACE_CELLS, start=45)
            if want("trace", f"{name}@0ms")
        ]
        if trace_cells:
            log("the trace's cost at 0 ms, on and off")
            stoppable.extend(item for cell in trace_cells for item in (cell.endpoint, cell))
            trace = bench(trace_cells, 1 if args.quick else TRACE_REPS, args.quick, paced=False)
        priority = []
        for latency in flow.PRIORITY_LATENCIES_MS:
            if want("priority", flow.priority_key(latency)):
                log(f"sign-in codes behind a bulk send, {latency:g} ms endpoint")
                bulk = 5000 if args.quick else flow.BULK_EMAILS
                priority.append(flow.priority(redis_server, workdir, 50, latency, bulk, log))
        rate_limit = None
        if want("rate-limit", flow.RATE_KEY):
            log(f"a rate limit of {flow.RATE_LIMIT}/s across {flow.RATE_WORKERS} workers")
            emails = 200 if args.quick else flow.RATE_EMAILS
            rate_limit = flow.rate_limit(redis_server, workdir, 51, reps, emails, log)
        outage_result = None
        if want("outage", outage.KEY):
            log("the primary endpoint down, with a fallback")
            outage_result = outage.measure(redis_server, workdir, 52, 1000 if args.quick else outage.BURST, log)
        enqueue = None
        if want("enqueue", "enqueue"):
            log("measuring enqueue cost")
            enqueue = enqueue_cost.measure(redis_server, db=60)
        ingest_result = None
        if want("ingest", "ingest"):
            log(f"the ingest under {ingest.CLIENTS} clients, beside a bare ASGI app")
            ingest_result = ingest.measure(redis_server, workdir, db=61, reps=reps, seconds=3.0 if args.quick else ingest.SECONDS, log=log)
        cost = None
        if want("redis-cost", "redis-cost"):
            log("Redis's cost per email, on a Redis of its own")
            cost = redis_cost.measure(workdir, emails=4000 if args.quick else redis_cost.EMAILS, log=log)
    finally:
        for item in reversed(stoppable):
            item.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    data = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": round(time.time() - started, 1),
        "machine": machine(),
        "foreign_cpu_share": foreign.share(),
        "reps": reps,
        "results": results,
        "failing": failing,
        "trace": trace,
        "priority": priority,
        "rate_limit": rate_limit,
        "outage": outage_result,
        "enqueue": enqueue,
        "ingest": ingest_result,
        "redis_cost": cost,
        "only": args.only,
    }
    # A smoke test or a partial run must not replace the last full run's results.
    stem = "partial" if args.only else "quick" if args.quick else "latest"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2))
    text = report.markdown(data)
    (RESULTS / f"{stem}.md").write_text(text)
    if stem == "latest":
        report.embed(text)  # docs/performance.md shows the last full run
        if line := report.ceiling(data):
            report.embed(line, report.README, report.CEILING_BEGIN, report.CEILING_END)
    print(text)


if __name__ == "__main__":
    main()
