"""The results as Markdown: contender x endpoint latency, partly failing endpoints, flow
control (sign-in codes behind a bulk send, a rate limit across workers), enqueue cost, and
the targets. A partial run (--only) shows only what it measured. A full run's report is
also written into docs/performance.md, between its markers (`embed`), so that the tables
live in one place.

Ratios are taken rep by rep (both rates from the same rep, a few seconds apart) and the
median of those is shown: on a shared machine that cancels much of the noise that a ratio
of medians would keep.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks import flow, outage
from benchmarks.harness import median

ORDER = ("naive", "floor-prefork", "floor-threads", "arq", "emailq")

# The page that shows the last full run, and the markers around the part `make bench`
# rewrites; everything outside them is written by hand.
PAGE = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BEGIN = "<!-- bench:begin"
END = "<!-- bench:end -->"
# And the README's line on how far one Redis goes, from the same run.
README = PAGE.parent.parent / "README.md"
CEILING_BEGIN = "<!-- bench:ceiling"
CEILING_END = "<!-- bench:ceiling-end -->"


def _num(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "–"
    return f"{value:,.{digits}f}"


def _pct(value: float, base: float | None) -> str:
    if not base or base != base or value != value:
        return "–"
    return f"{100 * value / base:.0f}%"


def rep_ratio(row: dict | None, base: dict | None) -> float:
    """The median over reps of row's rate / base's rate in the same rep."""
    if not row or not base:
        return float("nan")
    return median([a / b for a, b in zip(row["rates"], base["rates"]) if b and a == a and b == b])


def _times(ratio: float) -> str:
    return "–" if ratio != ratio else f"{ratio:.2f}×"


def _us(value: float) -> str:
    return f"{value:.1f} µs"


def _percent(ratio: float) -> str:
    return "–" if ratio != ratio else f"{100 * ratio:.0f}%"


def _find(rows: list[dict], name: str) -> dict | None:
    return next((r for r in rows if r["contender"] == name), None)


def best_limit(rows: list[dict]) -> dict | None:
    limits = [r for r in rows if r["contender"].startswith("limit")]
    return max(limits, key=lambda r: r["rate"], default=None)


def _sort_key(row: dict) -> tuple:
    name = row["contender"]
    return (row["latency_ms"], ORDER.index(name) if name in ORDER else len(ORDER), name)


def results_table(results: list[dict]) -> list[str]:
    lines = [
        "| endpoint | contender | deliveries/s | × naive | % of floor | % of limit | p50 ms | p99 ms | peak RSS MB | CPU µs/msg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for latency in sorted({r["latency_ms"] for r in results}):
        rows = sorted((r for r in results if r["latency_ms"] == latency), key=_sort_key)
        naive, floor, limit = _find(rows, "naive"), _find(rows, "floor-threads"), best_limit(rows)
        for row in rows:
            paced = row.get("paced") or {}
            name = row["label"] + (" **(the limit)**" if row is limit else "")
            lines.append(
                f"| {latency:g} ms | {name} | {_num(row['rate'])} | {_times(rep_ratio(row, naive))} "
                f"| {_percent(rep_ratio(row, floor))} | {_percent(rep_ratio(row, limit))} "
                f"| {_num(paced.get('latency_p50_ms', float('nan')), 1)} "
                f"| {_num(paced.get('latency_p99_ms', float('nan')), 1)} "
                f"| {_num(row['peak_rss_mb'], 0)} | {_num(row['cpu_us_per_msg'], 0)} |"
            )
    return lines


def failing_table(failing: list[dict]) -> list[str]:
    lines = [
        "| endpoint (0 ms), emailq worker with its defaults | emails | timed | seconds | deliveries/s | share of the healthy rate |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for row in failing:
        timed = f"first {100 * row['timed_share']:.0f}%" if row["timed_share"] else "every deliverable one"
        lines.append(
            f"| {row['label']} | {row['runs'][0]['n']:,} | {timed} | {_num(row['seconds'], 1)} "
            f"| {_num(row['rate'])} | {_percent(row['share_of_healthy'])} |"
        )
    return lines


def flow_table(priority: list[dict], rate: dict | None) -> list[str]:
    lines = [
        "| flow control, `emailq worker` with its defaults | endpoint | measured | target |",
        "|---|---:|---|---|",
    ]
    for row in priority:
        lines.append(
            f"| {row['codes']} sign-in codes, one at a time, behind {row['bulk']:,} bulk emails (one worker; "
            f"bulk queued {row['bulk_queued_at_first_code']:,} at the first code, {row['bulk_queued_after_last_code']:,} after the last) "
            f"| {row['latency_ms']:g} ms | enqueue to delivery p50 {_num(row['p50_s'] * 1000)} ms, max {_num(row['max_s'] * 1000)} ms "
            f"| max ≤ {flow.CODE_TARGET_SECONDS:g} s |"
        )
    if rate:
        paces = ", ".join(f"{p:.1f}" for p in rate["paces"])
        windows = ", ".join(str(r["busiest_1s"]) for r in rate["runs"])
        reps = len(rate["runs"])
        once = "every email delivered once"
        if rate["lost"] or rate["duplicates"]:
            once = f"**lost {rate['lost']}, duplicates {rate['duplicates']}**"
        lines.append(
            f"| `EMAILQ_RATE_LIMIT={rate['limit']:g}`, {rate['workers']} workers, {rate['emails']:,} emails at once "
            f"({reps} rep{'s' if reps > 1 else ''}) | 0 ms | pace {_num(rate['pace'], 1)}/s (reps: {paces}); "
            f"busiest 1-s window {rate['busiest_1s']} requests (reps: {windows}); {once} "
            f"| ≤ {flow.RATE_MAX_WINDOW} in any 1-s window, pace {rate['limit'] * (1 - flow.RATE_TOLERANCE):g}–"
            f"{rate['limit'] * (1 + flow.RATE_TOLERANCE):g}/s |"
        )
    return lines


def enqueue_table(enqueue: dict) -> list[str]:
    send, bulk, delay = enqueue["send"], enqueue["send_many"], enqueue["celery_delay"]
    return [
        "| enqueue from Python | p50 µs | p99 µs | emails/s |",
        "|---|---:|---:|---:|",
        f"| `Producer.send` (one at a time) | {_num(send['p50_us'])} | {_num(send['p99_us'])} | {_num(1e6 / send['mean_us'])} |",
        *(
            f"| `await AsyncProducer.send` ({one['n']:,} sequential awaits) | {_num(one['p50_us'])} | {_num(one['p99_us'])} "
            f"| {_num(1e6 / one['mean_us'])} |"
            for one in [enqueue.get("send_async")]
            if one
        ),
        f"| `Producer.send_many` ({bulk['batch']:,} per call) | – | – | {_num(bulk['emails_per_s'])} |",
        f"| naive: Celery `task.delay()` (one at a time) | {_num(delay['p50_us'])} | {_num(delay['p99_us'])} | {_num(1e6 / delay['mean_us'])} |",
    ]


def redis_cost_table(cost: dict) -> list[str]:
    rows = [
        f"| Redis per email ({cost['emails']:,} emails) | commands | Redis CPU µs | one Redis core's ceiling |",
        "|---|---:|---:|---:|",
    ]
    if ref := cost.get("reference"):
        rows += [
            f"| for scale: a bare `PING`, one at a time | 1 | {_num(ref['ping_us'], 1)} | |",
            f"| for scale: a bare `LPUSH` of a task message, pipelined | 1 | {_num(ref['lpush_us'], 1)} | |",
        ]
    for label in ("defaults", "trace off", "rate limit"):
        row = cost.get(label)
        if not row:
            continue
        one, batched, delivery = row["enqueue"], row["enqueue_batched"], row["delivery"]
        rows += [
            f"| {label}: enqueue, `send` one at a time | {_num(one['commands'], 1)} | {_num(one['cpu_us'], 1)} | |",
            f"| {label}: enqueue, `send_many` in batches | {_num(batched['commands'], 2)} | {_num(batched['cpu_us'], 1)} | |",
            f"| {label}: delivery | {_num(delivery['commands'], 1)} | {_num(delivery['cpu_us'], 1)} | |",
            f"| {label}: enqueue + delivery | | {_num(one['cpu_us'] + delivery['cpu_us'], 1)} "
            f"(batched {_num(batched['cpu_us'] + delivery['cpu_us'], 1)}) | {_num(row['ceiling_per_s'])}/s "
            f"(batched {_num(row['ceiling_batched_per_s'])}/s) |",
        ]
    return rows


def trace_table(trace: list[dict], cost: dict | None) -> list[str]:
    """The trace's cost: deliveries/s at 0 ms with it on and off (medians of interleaved
    reps), and Redis's CPU per email for each (from the Redis-cost run)."""
    rows = {r["contender"]: r for r in trace}
    on, off = rows.get("emailq-trace-on"), rows.get("emailq-trace-off")
    lines = ["| the trace, 0 ms endpoint | deliveries/s | Redis CPU µs per email (enqueue + delivery) |", "|---|---:|---:|"]
    for label, row, config in (("on (default)", on, "defaults"), ("off", off, "trace off")):
        spent = (cost or {}).get(config)
        cpu = spent["enqueue_batched"]["cpu_us"] + spent["delivery"]["cpu_us"] if spent else float("nan")
        lines.append(f"| {label} | {_num(row['rate']) if row else '—'} | {_num(cpu, 1)} |")
    if on and off:
        lines.append(f"| on / off | {_percent(on['rate'] / off['rate'])} | |")
    return lines


def ingest_table(ingest: dict) -> list[str]:
    rows = ["| the ingest, 64 clients | requests/s | p50 ms | p99 ms | every answer 202 |", "|---|---:|---:|---:|:---:|"]
    for name, label in (("emailq", "`emailq serve`, defaults"), ("limit", "limit: bare ASGI app, one LPUSH")):
        row = ingest[name]
        rows.append(
            f"| {label} | {_num(row['requests_per_s'])} | {_num(row['p50_ms'], 1)} | {_num(row['p99_ms'], 1)} | {'yes' if row['all_202'] else 'no'} |"
        )
    rows.append(f"| emailq / limit | {_percent(ingest['ratio'])} | | | |")
    return rows


def targets_table(
    results: list[dict],
    enqueue: dict | None,
    priority: list[dict] = (),
    rate: dict | None = None,
    ingest: dict | None = None,
    cost: dict | None = None,
    trace: list[dict] = (),
) -> list[str]:
    """Each target of what this run measured: (what, value, bound, shown as); a negative
    bound is an upper one (value < -bound), a positive one a lower one (value ≥ bound)."""

    def at(name: str, latency: float) -> dict | None:
        return next((r for r in results if r["contender"] == name and r["latency_ms"] == latency), None)

    checks: list[tuple] = []
    if results:
        emailq = [r for r in results if r["contender"] == "emailq"]
        rss = max((r["peak_rss_mb"] for r in emailq), default=float("nan"))
        checks += [
            ("50 ms: emailq ≥ 20× naive", rep_ratio(at("emailq", 50), at("naive", 50)), 20, _times),
            ("50 ms: emailq ≥ 90% of floor", rep_ratio(at("emailq", 50), at("floor-threads", 50)), 0.9, _percent),
            ("0 ms: emailq ≥ 85% of floor", rep_ratio(at("emailq", 0), at("floor-threads", 0)), 0.85, _percent),
            ("250 ms: emailq ≥ 40% of the limit", rep_ratio(at("emailq", 250), at("limit-aiohttp", 250)), 0.4, _percent),
            ("250 ms: emailq ≥ arq", rep_ratio(at("emailq", 250), at("arq", 250)), 1.0, _percent),
            ("50 ms: emailq ≥ arq", rep_ratio(at("emailq", 50), at("arq", 50)), 1.0, _percent),
            ("worker peak RSS < 150 MB", rss, -150, lambda v: f"{v:.0f} MB"),
        ]
    for row in priority:
        checks.append(
            (
                f"{row['latency_ms']:g} ms: sign-in codes behind {row['bulk']:,} bulk arrive within {flow.CODE_TARGET_SECONDS:g} s",
                row["max_s"],
                -flow.CODE_TARGET_SECONDS - 1e-9,
                lambda v: f"max {v:.2f} s",
            )
        )
    if rate:
        low, high = rate["limit"] * (1 - flow.RATE_TOLERANCE), rate["limit"] * (1 + flow.RATE_TOLERANCE)
        checks += [
            (f"rate limit {rate['limit']:g}/s: no 1-s window above {flow.RATE_MAX_WINDOW}", rate["busiest_1s"], -flow.RATE_MAX_WINDOW - 0.5, str),
            (f"rate limit {rate['limit']:g}/s: pace ≥ {low:g}/s", rate["pace"], low, lambda v: f"{v:.1f}/s"),
            (f"rate limit {rate['limit']:g}/s: pace ≤ {high:g}/s", rate["pace"], -high - 1e-9, lambda v: f"{v:.1f}/s"),
        ]
    if enqueue:
        checks += [
            ("`Producer.send` p99 < 1 ms", enqueue["send"]["p99_us"], -1000, lambda v: f"{v:.0f} µs"),
            ("`send_many` ≥ 10k emails/s", enqueue["send_many"]["emails_per_s"], 10000, lambda v: f"{v:,.0f}/s"),
        ]
        if enqueue.get("send_async"):
            checks.append(("`await AsyncProducer.send` p99 < 1 ms", enqueue["send_async"]["p99_us"], -1000, lambda v: f"{v:.0f} µs"))
    if cost and cost.get("defaults"):
        row = cost["defaults"]
        checks += [
            ("Redis CPU ≤ 30 µs per email, enqueue (batched) + delivery", row["enqueue_batched"]["cpu_us"] + row["delivery"]["cpu_us"], -30, _us),
        ]
    on, off = (next((r for r in trace if r["contender"] == name), None) for name in ("emailq-trace-on", "emailq-trace-off"))
    if on and off:
        checks.append(("0 ms: trace on within 5% of off (deliveries/s)", on["rate"] / off["rate"], 0.95, _percent))
    if ingest:
        checks += [
            ("ingest ≥ 70% of the bare ASGI limit's requests/s", ingest["ratio"], 0.7, _percent),
            ("ingest p99 < 50 ms", ingest["emailq"]["p99_ms"], -50, lambda v: f"{v:.0f} ms"),
            ("ingest: every answer 202", 1.0 if ingest["emailq"]["all_202"] else 0.0, 1.0, lambda v: "yes" if v else "no"),
        ]
    lines = ["| target | measured | met |", "|---|---:|:---:|"]
    for what, value, bound, show in checks:
        if value != value:
            lines.append(f"| {what} | – | – |")
            continue
        met = value < -bound if bound < 0 else value >= bound
        lines.append(f"| {what} | {show(value)} | {'yes' if met else '**no**'} |")
    if cost and cost.get("defaults") and cost.get("reference"):
        lines += ["", one_at_a_time_floor(cost)]
    return lines


def one_at_a_time_floor(cost: dict) -> str:
    """Why enqueues one at a time are reported beside the 30 µs target, not held to it: a
    send that waits for Redis's answer costs Redis at least a round trip, and on a slow
    machine a bare `PING`'s round trip plus a delivery is over 30 µs by itself."""
    row, ping = cost["defaults"], cost["reference"]["ping_us"]
    one = row["enqueue"]["cpu_us"] + row["delivery"]["cpu_us"]
    return (
        f"Enqueued one at a time (`send`, a round trip each) and delivered, an email cost Redis {_us(one)}; "
        f"a bare `PING` one at a time costs it {_us(ping)}, so no enqueue that waits for Redis's answer "
        f"could cost less than {_us(ping + row['delivery']['cpu_us'])} with this delivery, "
        f"and emailq's enqueue spends {_us(row['enqueue']['cpu_us'] - ping)} beyond that round trip."
    )


def integrity(results: list[dict]) -> str:
    lost = {f"{r['contender']}@{r['latency_ms']:g}ms": r["lost"] for r in results if r["lost"]}
    dupes = {f"{r['contender']}@{r['latency_ms']:g}ms": r["duplicates"] for r in results if r["duplicates"]}
    if not lost and not dupes:
        return "Every message of every run arrived exactly once."
    return f"**Not delivered**: {lost or 'none'}; **duplicates**: {dupes or 'none'}."


def markdown(data: dict) -> str:
    m = data["machine"]
    results = data["results"]
    priority, rate, enqueue, ingest = data.get("priority") or [], data.get("rate_limit"), data.get("enqueue"), data.get("ingest")
    cost = data.get("redis_cost")
    lines = [
        "# emailq benchmark results",
        "",
        f"{data['when']}; {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}, "
        f"{m['system']}; medians of {data['reps']} interleaved reps; the suite took {data['seconds']:.0f} s; "
        f"other processes used {100 * data.get('foreign_cpu_share', 0):.0f}% of the machine's CPU meanwhile."
        + (f" A partial run: `--only {data['only']}`." if data.get("only") else ""),
        "",
        *((results_table(results) + ["", integrity(results), ""]) if results else []),
        *(failing_table(data["failing"]) + [""] if data.get("failing") else []),
        *(trace_table(data["trace"], cost) + [""] if data.get("trace") else []),
        *(flow_table(priority, rate) + [""] if priority or rate else []),
        *(outage.table(data["outage"]) + [""] if data.get("outage") else []),
        *(enqueue_table(enqueue) + [""] if enqueue else []),
        *(ingest_table(ingest) + [""] if ingest else []),
        *(redis_cost_table(cost) + [""] if cost else []),
        "Targets:",
        "",
        *targets_table(results, enqueue, priority, rate, ingest, cost, data.get("trace") or []),
        "",
        "How to read it:",
        "",
    ]
    if results:
        lines += [
            "- deliveries/s: emails the endpoint answered 2xx, from the first to the last answer of "
            "a burst (the whole batch enqueued at once, in one round trip); "
            + ", ".join(
                f"{r['contender']}@{r['latency_ms']:g}ms {r['messages']}"
                for r in results
                if not r["contender"].startswith("limit") and r["messages"] != 2000
            )
            + ", every other cell 2,000 messages per rep.",
            "- × naive, % of floor, % of limit: against the naive pattern, against Celery's floor on "
            "emailq's own setup (threads pool, same concurrency, same Celery config, a task that "
            "sleeps the endpoint's latency instead of POSTing), and against the faster asyncio "
            "client, at the same endpoint latency; each is the median of per-rep ratios.",
            "- p50/p99: enqueue-to-delivery latency at half of that contender's measured rate "
            "(capped at 200/s), emails enqueued one at a time (emailq: `Producer.send`).",
            "- peak RSS: the worker's whole process tree (prefork: parent and children), sampled "
            "every 50 ms; CPU µs/msg: that tree's user+system CPU per delivery.",
        ]
    lines.append(
        "- The endpoint is a raw asyncio (uvloop) server in its own process that answers 200 "
        "after 0, 50 or 250 ms; Redis is the suite's own redis-server, persistence off. The "
        "limit keeps 512 requests in flight."
    )
    if data.get("failing"):
        lines.append(
            "- Partly failing endpoints: 2,000 emails enqueued at once; the time from the enqueue "
            "to the delivery of the first 95% (a third of requests failing at random: the rest "
            "wait out their backoff) or of every email that can be delivered (6% failing forever), "
            "as a rate, against the healthy 0 ms run's rate measured the same way."
        )
    if priority:
        lines.append(
            f"- Sign-in codes behind a bulk send: {priority[0]['bulk']:,} `OrganizationInvitation`s (a bulk type) "
            "enqueued in one `send_many`, then one `emailq worker` with its defaults started; once it "
            f"delivered {flow.UNDER_WAY} of them, {flow.CODES} `SignIn` emails sent one at a time with `Producer.send`, "
            f"each {flow.CODE_GAP_SECONDS * 1000:.0f} ms after the one before arrived; from just before the send "
            "to the endpoint's 2xx answer. One run per endpoint latency, on an endpoint of its own."
        )
    if rate:
        lines.append(
            f"- Rate limit: {rate['workers']} `emailq worker`s with `EMAILQ_RATE_LIMIT={rate['limit']:g}` and "
            "otherwise defaults, on one queue, against an endpoint of their own answering at once (so "
            "nothing but the limit slows them); per rep, all emails enqueued at once; pace: from the first "
            "to the last answer; busiest window: the most requests the endpoint answered in any 1 s (it "
            "answers every request 200, so requests = deliveries); the median pace and the worst window "
            "over the reps; the workers' CPU per rep in `results/latest.json` shows each took part."
        )
    if data.get("outage"):
        row = data["outage"]
        lines.append(
            f"- The primary endpoint down: one `emailq worker` with its defaults and `EMAILQ_FALLBACK_ENDPOINT_URL`, two "
            f"endpoints of {row['latency_ms']:g} ms in processes of their own; {row['emails']:,} bulk emails at once (from the "
            f"enqueue to the last 2xx), then {row['codes']} sign-in codes one at a time behind as many bulk ones; first with both "
            "up (on the primary), then with the primary's process killed (on the fallback, without a restart: the worker "
            "fails over on its own). One run of each, not the reps' median."
        )
    return "\n".join(lines) + "\n"


def ceiling(data: dict) -> str:
    """The README's sentence on how far one Redis goes, from a full run's Redis-cost
    figures ('' when the run had none)."""
    row = (data.get("redis_cost") or {}).get("defaults")
    if not row:
        return ""
    m = data["machine"]
    return (
        f"One Redis core carries about {_num(row['ceiling_batched_per_s'])} emails/s enqueued in batches and delivered, "
        f"{_num(row['ceiling_per_s'])}/s sent one at a time, every feature at its default (Redis's CPU per email, "
        f"[docs/performance.md](docs/performance.md): `make bench` of {data['when'][:10]}, {m['cores']} cores, {m['cpu']}); "
        "past that, Redis is the bound, not the workers."
    )


def embed(text: str, page: Path = PAGE, begin: str = BEGIN, end_marker: str = END) -> None:
    """Replace what lies between the markers of `page` with `text`, a full run's report
    (`markdown`), less its title. Raises ValueError, changing nothing, when `page` lacks
    the markers, so that a moved page is noticed rather than silently left stale."""
    current = page.read_text()
    start, end = current.find(begin), current.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"{page}: no {begin} ... {end_marker} markers to write the results between")
    start = current.index("\n", start) + 1  # the begin marker's line stays, comment and all
    body = text.split("\n", 1)[1].lstrip("\n") if text.startswith("# ") else text
    page.write_text(current[:start] + "\n" + body.rstrip("\n") + "\n\n" + current[end:])
