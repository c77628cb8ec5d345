"""How close emailq's worker gets to its targets with settings alone, and what code changes
would buy: variants of `emailq worker` and of Celery's floor, side by side in one run.

    .venv/bin/python -m benchmarks.experiments.tune            # writes benchmarks/results/tune.{json,md}
    .venv/bin/python -m benchmarks.experiments.tune --quick

Variants marked "experiment" are not settings: they run `benchmarks.experiments.emailq_patched` (or the
floor with Celery settings emailq does not expose) to price a proposed change to worker/.
× naive uses the naive rates of benchmarks/results/latest.json (the last full run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from benchmarks import cells as c
from benchmarks.harness import Endpoint, RedisServer
from benchmarks.report import _num, _percent, _times, rep_ratio
from benchmarks.run import LATENCIES_MS, RESULTS, ForeignLoad, bench, log, machine

EVENTS_ALL = {"EMAILQ_TASK_EVENTS": "all"}

WARNING = ["--loglevel", "WARNING"]
MESSAGES = 1500  # per cell and rep: 32 cells x 3 reps stay near ten minutes


class Variant(NamedTuple):
    name: str
    label: str
    kind: str  # "emailq" or "floor"
    env: dict
    args: list
    experiment: bool = False  # needs a code change (runs benchmarks.experiments.emailq_patched)
    floor: str = "floor-threads"  # the floor with the same Celery setup


VARIANTS = [
    Variant("emailq", "emailq, defaults", "emailq", {}, []),
    Variant("eq-warning", "emailq --loglevel WARNING", "emailq", {}, WARNING, floor="floor-warning"),
    Variant("eq-prefetch4", "emailq --prefetch-multiplier 4", "emailq", {}, ["--prefetch-multiplier", "4"]),
    Variant("eq-c16", "emailq, EMAILQ_CONCURRENCY=16", "emailq", {"EMAILQ_CONCURRENCY": "16"}, [], floor="floor-c16"),
    Variant("eq-c32", "emailq, EMAILQ_CONCURRENCY=32", "emailq", {"EMAILQ_CONCURRENCY": "32"}, [], floor="floor-c32"),
    Variant("eq-events-all", "emailq, EMAILQ_TASK_EVENTS=all", "emailq", EVENTS_ALL, [], floor="floor-events-all"),
    Variant("floor-threads", "floor, emailq's setup", "floor", {}, []),
    Variant("floor-warning", "floor, -l WARNING", "floor", {}, ["--loglevel=WARNING"]),
    Variant("floor-c16", "floor, concurrency 16", "floor", {"EMAILQ_CONCURRENCY": "16"}, []),
    Variant("floor-c32", "floor, concurrency 32", "floor", {"EMAILQ_CONCURRENCY": "32"}, []),
    Variant("floor-events-all", "floor, every task event", "floor", EVENTS_ALL, []),
    Variant("eq-httpx-pool", "emailq, httpx's own shared pool", "emailq", {"BENCH_CLIENT": "httpx-pool"}, [], True),
    Variant("eq-httpx-local", "emailq, one httpx pool per thread", "emailq", {"BENCH_CLIENT": "httpx-local"}, [], True),
    Variant("eq-aiohttp", "emailq, POSTs on one aiohttp loop", "emailq", {"BENCH_CLIENT": "aiohttp"}, [], True),
    Variant("eq-aiohttp-warning", "emailq, aiohttp loop, -l WARNING", "emailq", {"BENCH_CLIENT": "aiohttp"}, WARNING, True, "floor-warning"),
]


def build(redis_server: RedisServer, endpoints: dict, workdir: Path, only: set[str] | None) -> list[c.Cell]:
    cells: list[c.Cell] = []
    db = 1
    for latency in LATENCIES_MS:
        for v in VARIANTS:
            if only and v.name not in only:
                continue
            label = f"{v.label} (experiment)" if v.experiment else v.label
            if v.kind == "emailq":
                cell: c.Cell = c.Emailq(
                    latency,
                    endpoints[latency],
                    redis_server,
                    db,
                    workdir,
                    extra_env=v.env,
                    extra_args=v.args,
                    name=v.name,
                    label=label,
                    patched=v.experiment,
                )
            else:
                cell = c.FloorThreads(
                    latency, endpoints[latency], redis_server, db, workdir, extra_env=v.env, extra_args=v.args, name=v.name, label=label
                )
            cells.append(cell)
            db += 1
    return cells


def naive_rates() -> dict[float, float]:
    try:
        data = json.loads((RESULTS / "latest.json").read_text())
    except (OSError, ValueError):
        return {}
    return {r["latency_ms"]: r["rate"] for r in data["results"] if r["contender"] == "naive"}


def markdown(data: dict) -> str:
    results, naive = data["results"], {float(k): v for k, v in data["naive"].items()}
    by = {(r["contender"], r["latency_ms"]): r for r in results}
    own_floor = {v.name: v.floor for v in VARIANTS}
    lines = [
        "# emailq worker: settings and experiments",
        "",
        f"{data['when']}; {data['machine']['cores']} cores; medians of {data['reps']} interleaved reps of "
        f"{results[0]['messages'] if results else 0} messages; other processes used "
        f"{100 * data.get('foreign_cpu_share', 0):.0f}% of the machine's CPU meanwhile.",
        "",
        "- floor: Celery's floor on emailq's default setup (the target's reference); own floor: the "
        "floor with the same Celery settings as the variant (e.g. events off, -l WARNING); "
        "both the median of per-rep ratios.",
        "- × naive: against the naive rate of the last full run (benchmarks/results/latest.json).",
        "- (experiment): not a setting; `benchmarks.experiments.emailq_patched` prices a code change.",
        "",
        "| variant | 0 ms /s | % of floor | % of own floor | 50 ms /s | % of floor | % of own floor "
        "| × naive @50 ms | peak RSS MB | CPU µs/msg 0 ms | CPU µs/msg 50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r["contender"] for r in results):
        cells = []
        for latency in LATENCIES_MS:
            row = by.get((name, latency))
            floor, own = by.get(("floor-threads", latency)), by.get((own_floor.get(name, ""), latency))
            cells.append((row, rep_ratio(row, floor), rep_ratio(row, own) if own is not row else float("nan")))
        (zero, f0, o0), (fifty, f50, o50) = cells
        row = zero or fifty
        assert row is not None
        rate50 = fifty["rate"] if fifty else float("nan")
        lines.append(
            f"| {row['label']} | {_num(zero['rate'] if zero else float('nan'))} | {_percent(f0)} | {_percent(o0)} "
            f"| {_num(rate50)} | {_percent(f50)} | {_percent(o50)} "
            f"| {_times(rate50 / naive[50]) if naive.get(50) else '–'} "
            f"| {_num(max(r['peak_rss_mb'] for r in (zero, fifty) if r))} "
            f"| {_num(zero['cpu_us_per_msg'] if zero else float('nan'))} "
            f"| {_num(fifty['cpu_us_per_msg'] if fifty else float('nan'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="emailq worker tuning")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="comma-separated variant names")
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    workdir = Path(tempfile.mkdtemp(prefix="emailq-tune-"))
    log(f"work directory: {workdir}")
    stoppable: list = []
    foreign = ForeignLoad()
    try:
        redis_server = RedisServer(workdir)
        stoppable.append(redis_server)
        endpoints = {ms: Endpoint(ms, workdir) for ms in LATENCIES_MS}
        stoppable.extend(endpoints.values())
        cells = build(redis_server, endpoints, workdir, set(args.only.split(",")) if args.only else None)
        stoppable.extend(cells)
        results = bench(cells, reps, args.quick, paced=False, count=None if args.quick else MESSAGES)
    finally:
        for item in reversed(stoppable):
            item.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    data = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "reps": reps,
        "foreign_cpu_share": foreign.share(),
        "naive": naive_rates(),
        "results": results,
    }
    RESULTS.mkdir(exist_ok=True)
    # A partial or quick run must not replace the full run's results.
    stem = "tune" if not (args.only or args.quick) else "tune-partial"
    (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2))
    text = markdown(data)
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    if not __package__:
        sys.exit("run as: python -m benchmarks.experiments.tune")
    main()
