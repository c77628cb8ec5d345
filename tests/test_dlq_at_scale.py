"""A deep DLQ, as after a long outage: `emailq dlq` pages through it, filters it, replays
and purges it in batches, in bounded memory and a few seconds, against a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
from conftest import EMAILQ, run_emailq
from helpers import KEYS

from emailq.message import Email, Envelope
from emailq.worker.places import dead_letters as dl
from emailq.worker.places.dead_letters import DeadLetter, DeadLetters

pytestmark = pytest.mark.slow

SIGN_IN = {"to": "foo@logto.io", "type": "SignIn", "payload": {"code": "918273", "locale": "en"}}
MAX_RSS_MB = 150


def fill(client, n: int, start: float | None = None, change=None, step: float = 1e-3) -> list[str]:
    """n entries written straight into Redis in the layout `DeadLetters.add` writes (hash +
    index), as the worker builds them, `step` seconds apart, the newest last;
    `change(i, entry)` may alter one. Returns the ids, newest first (as listed)."""
    start = time.time() - 3600 if start is None else start
    template = asdict(
        DeadLetter(
            id="",
            reason="rejected",
            detail="HTTP 422",
            status=422,
            response_excerpt='{"error":"template not found"}',
            attempts=1,
            envelope=Envelope.wrap(Email(**SIGN_IN), 900, id="x").dump(),
        )
    )
    ids = [f"dl-{i:07d}" for i in range(n)]
    for first in range(0, n, 10000):
        entries, index = {}, {}
        for i in range(first, min(n, first + 10000)):
            failed_at = start + i * step
            message = {**SIGN_IN, "to": f"user{i}@example.com"}
            entry = {**template, "id": ids[i], "failed_at": failed_at, "first_attempt_at": failed_at}
            entry["envelope"] = {**template["envelope"], "id": ids[i], "message": message}
            if change:
                change(i, entry)
            entries[ids[i]], index[ids[i]] = json.dumps(entry), failed_at
        with client.pipeline(transaction=False) as pipe:
            pipe.hset("emailq:dlq", mapping=entries)
            pipe.zadd("emailq:dlq:index", index)
            pipe.execute()
    return ids[::-1]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float


# Runs the command and reports its peak RSS. A wrapper of its own, because a child's
# ru_maxrss starts from its parent's high-water mark (kept across exec), and the test
# process is big; this wrapper is small.
_WRAPPER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def measured(args: list[str], env: dict[str, str], cwd: Path) -> Run:
    """`emailq ARGS` with its wall time and peak RSS (the kernel's account, in KiB on Linux)."""
    out, err, rss = cwd / "stdout", cwd / "stderr", cwd / "maxrss"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        began = time.monotonic()
        code = subprocess.call(
            [sys.executable, "-c", _WRAPPER, str(rss), EMAILQ, *args],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=stdout,
            stderr=stderr,
            timeout=120,
        )
        seconds = time.monotonic() - began
    run = Run(code, out.read_text(), err.read_text(), seconds, int(rss.read_text()) / 1024)
    print(f"emailq {' '.join(args)}: {run.seconds:.2f} s, peak RSS {run.peak_rss_mb:.0f} MB")
    return run


def listed(result) -> list[dict]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def table_ids(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines() if line.startswith("dl-")]


# --- 100,000 entries ------------------------------------------------------------------


def test_a_dlq_of_100000_is_listed_and_purged_in_bounded_memory(settings_env, redis_client, tmp_path):
    ids = fill(redis_client, 100_000)

    everything = measured(["dlq", "list", "--json"], settings_env, tmp_path)
    rows = listed(everything)
    assert [row["id"] for row in rows] == ids
    assert {"id", "to", "type", "reason", "status", "attempts", "failed_at"} <= set(rows[0])
    assert rows[0]["envelope"]["message"]["payload"]["code"] == "***"
    del rows

    newest = measured(["dlq", "list", "--limit", "20"], settings_env, tmp_path)
    assert newest.returncode == 0, newest.stderr
    assert table_ids(newest.stdout) == ids[:20]

    purge = measured(["dlq", "purge", "--all"], settings_env, tmp_path)
    assert purge.returncode == 0, purge.stderr
    assert "purged 100000 email(s)" in purge.stdout
    assert redis_client.zcard("emailq:dlq:index") == redis_client.hlen("emailq:dlq") == 0

    for run in (everything, newest, purge):
        assert run.peak_rss_mb < MAX_RSS_MB, run
    # Generous: the machine is shared. These took 6–9, 0.7 and 2–3 s.
    assert newest.seconds < 5
    assert everything.seconds < 30 and purge.seconds < 30


def test_a_dlq_of_100000_is_replayed_in_bounded_memory(settings_env, redis_client, tmp_path):
    ids = fill(redis_client, 100_000)

    replay = measured(["dlq", "replay", "--all"], settings_env, tmp_path)

    assert replay.returncode == 0, replay.stderr
    assert "replayed 100000 email(s)" in replay.stdout
    assert redis_client.zcard("emailq:dlq:index") == redis_client.hlen("emailq:dlq") == 0
    on_queue = [json.loads(raw)["headers"]["id"] for raw in redis_client.lrange("emailq", 0, -1)]
    assert sorted(on_queue) == sorted(ids)
    assert replay.peak_rss_mb < MAX_RSS_MB, replay
    assert replay.seconds < 60  # it took 15–25 s


# --- paging and filters ---------------------------------------------------------------


def test_list_pages_newest_first_with_limit_and_after(settings_env, redis_client, tmp_path):
    ids = fill(redis_client, 1234)  # more than two of the store's batches

    first = listed(run_emailq(["dlq", "list", "--json", "--limit", "600"], settings_env, tmp_path))
    rest = listed(run_emailq(["dlq", "list", "--json", "--after", first[-1]["id"]], settings_env, tmp_path))

    assert [row["id"] for row in first] == ids[:600]
    assert [row["id"] for row in rest] == ids[600:]


def test_the_table_shows_50_and_says_how_to_get_the_next_page(settings_env, redis_client, tmp_path):
    ids = fill(redis_client, 120)

    page = run_emailq(["dlq", "list"], settings_env, tmp_path)
    assert page.returncode == 0, page.stderr
    assert table_ids(page.stdout) == ids[:50]
    assert f"emailq dlq list --after {ids[49]}" in page.stdout

    following = run_emailq(["dlq", "list", "--after", ids[49], "--limit", "100"], settings_env, tmp_path)
    assert table_ids(following.stdout) == ids[50:120]
    assert "--after" not in following.stdout  # the last page says nothing more

    everything = run_emailq(["dlq", "list", "--limit", "0"], settings_env, tmp_path)
    assert table_ids(everything.stdout) == ids


def test_list_filters_by_reason_and_type(settings_env, redis_client, tmp_path):
    def change(i: int, entry: dict) -> None:
        if i % 10 == 0:
            entry.update(reason="expired", status=None)
        if i % 4 == 0:
            entry["envelope"]["message"] = {**entry["envelope"]["message"], "type": "Register"}

    ids = fill(redis_client, 1500, change=change)
    number = {message_id: int(message_id.removeprefix("dl-")) for message_id in ids}

    def ids_of(*args: str) -> list[str]:
        return [row["id"] for row in listed(run_emailq(["dlq", "list", "--json", *args], settings_env, tmp_path))]

    assert ids_of("--reason", "expired") == [i for i in ids if number[i] % 10 == 0]
    assert ids_of("--type", "Register") == [i for i in ids if number[i] % 4 == 0]
    assert ids_of("--reason", "expired", "--type", "Register") == [i for i in ids if number[i] % 20 == 0]
    assert ids_of("--reason", "expired", "--reason", "rejected") == ids
    assert ids_of("--reason", "expired", "--limit", "3") == [i for i in ids if number[i] % 10 == 0][:3]
    assert ids_of("--type", "Nothing") == []
    table = run_emailq(["dlq", "list", "--type", "Nothing"], settings_env, tmp_path)
    assert table.returncode == 0 and table.stdout.strip() == "no entries match"


def test_list_after_an_unknown_id_is_one_line(settings_env, redis_client, tmp_path):
    fill(redis_client, 3)
    result = run_emailq(["dlq", "list", "--after", "nope"], settings_env, tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip() == "emailq: no dead-lettered email with id nope"


def test_a_reader_that_stops_early_gets_no_traceback(settings_env, redis_client, tmp_path):
    fill(redis_client, 5000)
    reader = subprocess.Popen(
        [EMAILQ, "dlq", "list", "--json"],
        env={**os.environ, **settings_env},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout.read(100).startswith(b"[")
    reader.stdout.close()  # as `| head` does
    assert reader.wait(30) == 0
    assert reader.stderr.read() == b""


def test_replay_all_passes_over_the_unreplayable_and_replays_the_rest(settings_env, redis_client, tmp_path):
    def malformed(i: int, entry: dict) -> None:
        if i % 100 == 0:
            entry.update(reason="malformed", envelope=None, raw="not json")

    ids = fill(redis_client, 1200, change=malformed)
    bad = [i for i in ids if int(i.removeprefix("dl-")) % 100 == 0]

    result = run_emailq(["dlq", "replay", "--all"], settings_env, tmp_path)

    assert result.returncode == 0, result.stderr
    assert f"replayed {len(ids) - len(bad)} email(s)" in result.stdout
    assert [line.split(":")[0] for line in result.stderr.splitlines()] == bad
    assert DeadLetters(redis_client, KEYS).ids() == bad
    assert redis_client.llen("emailq") == len(ids) - len(bad)


# --- the walk under the verbs ---------------------------------------------------------


def test_entries_with_the_same_failure_time_are_each_listed_once(redis_client):
    ids = fill(redis_client, 1300, step=0)  # one score for all: pages cannot split on it
    store = DeadLetters(redis_client, KEYS)

    listed_ids = [e.id for e in store.entries()]
    assert listed_ids == ids  # ties: by id, descending, as Redis orders them
    assert [e.id for e in store.entries(after=ids[700])] == ids[701:]


def test_a_walk_is_not_disturbed_by_what_it_removed_or_what_failed_since(redis_client):
    ids = fill(redis_client, 1600)
    store = DeadLetters(redis_client, KEYS)

    walk = store.entries()
    seen = [next(walk).id for _ in range(dl.BATCH)]
    store.purge(seen)  # what a purge --all does behind the walk
    for n in range(3):  # failed after the walk began
        store.add(DeadLetter(id=f"late-{n}", reason="expired"))
    seen += [e.id for e in walk]

    assert seen == ids
    assert store.count() == len(ids) - dl.BATCH + 3
