"""One contender at one endpoint latency: how its worker starts, how its queue is filled,
and where its deliveries are counted.

A cell's `prepare(bids)` builds what the producer side would hold (outside the timing);
`enqueue(prepared)` puts it all on the queue at once and `enqueue_one(item)` puts one;
both return each message's key (what the endpoint records) and when it was enqueued.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness import BIN, PYTHON, REPO, Endpoint, FileSink, Proc, RedisServer, clean_env
from benchmarks.messages import FLOOR_TASK, NAIVE_TASK, celery_message, email_body
from emailq.enqueue import Producer
from emailq.settings import Settings

_CHUNK = 1000
CORES = 2


class Cell:
    name: str
    label: str
    proc: Proc | None = None

    def __init__(self, latency_ms: float, endpoint: Endpoint):
        self.latency_ms = latency_ms
        self.endpoint = endpoint
        self.sink: Any = endpoint

    @property
    def key(self) -> str:
        return f"{self.name}@{self.latency_ms:g}ms"

    def prepare(self, bids: list[str]) -> list[Any]:
        raise NotImplementedError

    def enqueue(self, prepared: list[Any]) -> tuple[list[str], float]:
        raise NotImplementedError

    def enqueue_one(self, item: Any) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class CeleryCell(Cell):
    """A `celery worker` for one of the benchmark's own apps, on its own Redis database."""

    task: str

    def __init__(
        self, latency_ms: float, endpoint: Endpoint, redis_server: RedisServer, db: int, workdir: Path, argv: list[str], env: dict[str, str]
    ):
        super().__init__(latency_ms, endpoint)
        self.queue = f"bench-{self.name}"
        self.redis = redis_server.client(db)
        env = clean_env(BENCH_REDIS_URL=redis_server.url(db), BENCH_QUEUE=self.queue, **env)
        self.proc = Proc(self.key, [str(BIN / "celery"), *argv, "--queues", self.queue], env, workdir)

    def prepare(self, bids: list[str]) -> list[Any]:
        return [(bid, celery_message(self.task, [email_body(bid, i)], self.queue)) for i, bid in enumerate(bids)]

    def enqueue(self, prepared: list[Any]) -> tuple[list[str], float]:
        at = time.time()
        with self.redis.pipeline(transaction=True) as pipe:
            for start in range(0, len(prepared), _CHUNK):
                pipe.lpush(self.queue, *(m for _, m in prepared[start : start + _CHUNK]))
            pipe.execute()
        return [bid for bid, _ in prepared], at

    def enqueue_one(self, item: Any) -> str:
        bid, message = item
        self.redis.lpush(self.queue, message)
        return bid


class Naive(CeleryCell):
    name = "naive"
    label = "naive (Celery prefork x2, httpx.post)"
    task = NAIVE_TASK

    def __init__(self, latency_ms, endpoint, redis_server, db, workdir):
        argv = ["-A", "benchmarks.naive:app", "worker", f"--concurrency={CORES}"]
        super().__init__(latency_ms, endpoint, redis_server, db, workdir, argv, {"BENCH_ENDPOINT_URL": endpoint.url})


class FloorPrefork(CeleryCell):
    name = "floor-prefork"
    label = "Celery floor, prefork x2 (no HTTP)"
    task = FLOOR_TASK

    def __init__(self, latency_ms, endpoint, redis_server, db, workdir):
        records = workdir / f"records-{self.name}-{latency_ms:g}"
        argv = ["-A", "benchmarks.floor:app", "worker", f"--concurrency={CORES}"]
        super().__init__(
            latency_ms,
            endpoint,
            redis_server,
            db,
            workdir,
            argv,
            {
                "BENCH_FLOOR_CONFIG": "celery",
                "BENCH_SLEEP_SECONDS": str(latency_ms / 1000),
                "BENCH_RECORD_DIR": str(records),
            },
        )
        self.sink = FileSink(records)


def emailq_env(redis_server: RedisServer, db: int, queue: str, workdir: Path, **extra: str) -> dict[str, str]:
    return {
        "EMAILQ_REDIS_URL": redis_server.url(db),
        "EMAILQ_QUEUE": queue,
        "EMAILQ_DATA_DIR": str(workdir / "emailq-data"),
        **extra,
    }


class FloorThreads(CeleryCell):
    """The floor on emailq's exact Celery setup, started with the argv `emailq worker` uses."""

    name = "floor-threads"
    label = "Celery floor, emailq's setup (no HTTP)"
    task = FLOOR_TASK

    def __init__(self, latency_ms, endpoint, redis_server, db, workdir, extra_env=None, extra_args=(), name=None, label=None):
        self.name, self.label = name or self.name, label or self.label
        records = workdir / f"records-{self.name}-{latency_ms:g}"
        concurrency = (extra_env or {}).get("EMAILQ_CONCURRENCY", "64")
        argv = [
            "-A",
            "benchmarks.floor:app",
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            "--without-gossip",
            "--without-mingle",
            *extra_args,
        ]
        # The endpoint only because emailq's runtime wants one; the floor's task never POSTs.
        env = emailq_env(redis_server, db, f"bench-{self.name}", workdir, EMAILQ_ENDPOINT_URL=endpoint.url, **(extra_env or {}))
        super().__init__(
            latency_ms,
            endpoint,
            redis_server,
            db,
            workdir,
            argv,
            {
                **env,
                "BENCH_FLOOR_CONFIG": "emailq",
                "BENCH_SLEEP_SECONDS": str(latency_ms / 1000),
                "BENCH_RECORD_DIR": str(records),
            },
        )
        self.sink = FileSink(records)


class Emailq(Cell):
    """`emailq worker` as a user runs it (defaults unless `extra_env`/`extra_args` say)."""

    name = "emailq"
    label = "emailq worker (defaults)"

    def __init__(
        self, latency_ms, endpoint, redis_server, db, workdir, extra_env=None, extra_args=(), name=None, label=None, patched=False, queue=None
    ):
        super().__init__(latency_ms, endpoint)
        self.name, self.label = name or self.name, label or self.label
        # `queue`: several workers on one queue (a cluster) differ by name only.
        queue = queue or f"bench-{self.name}"
        env = emailq_env(redis_server, db, queue, workdir, EMAILQ_ENDPOINT_URL=endpoint.url, **(extra_env or {}))
        # The producer's settings are the worker's (the trace's, say), where the bench sets them.
        same = {name.removeprefix("EMAILQ_").lower(): value for name, value in (extra_env or {}).items()}
        self.producer = Producer(Settings(_env_file=None, **{**same, "redis_url": redis_server.url(db), "queue": queue}))
        # `patched`: benchmarks.experiments.emailq_patched, for experiments that no setting can make.
        command = [PYTHON, "-m", "benchmarks.experiments.emailq_patched"] if patched else [str(BIN / "emailq")]
        self.proc = Proc(self.key, [*command, "worker", *extra_args], clean_env(**env), workdir)

    def prepare(self, bids: list[str]) -> list[Any]:
        return [email_body(bid, i) for i, bid in enumerate(bids)]

    def enqueue(self, prepared: list[Any]) -> tuple[list[str], float]:
        at = time.time()
        return self.producer.send_many(prepared), at

    def enqueue_one(self, item: Any) -> str:
        return self.producer.send(item)


ARQ_VENV = REPO / "benchmarks" / ".arq-venv"
ARQ_REQUIREMENTS = ("arq==0.28.0", "aiohttp>=3.9")


def arq_venv() -> Path:
    """The arq peer's virtualenv (arq pins redis-py below 6), made once."""
    python = ARQ_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([PYTHON, "-m", "venv", str(ARQ_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *ARQ_REQUIREMENTS], check=True)
    return ARQ_VENV / "bin"


class Arq(Cell):
    """An arq worker (asyncio, aiohttp, 512 jobs at once), the asyncio job queue's peer.

    Jobs are written as arq's `ArqRedis.enqueue_job` writes them (a pickled job under
    `arq:job:<id>`, its id in the queue's sorted set scored by enqueue time), from this
    process: arq's own client cannot be imported beside the worker's redis-py."""

    name = "arq"
    label = "arq worker, aiohttp, max_jobs 512"

    def __init__(self, latency_ms: float, endpoint: Endpoint, redis_server: RedisServer, db: int, workdir: Path):
        super().__init__(latency_ms, endpoint)
        self.redis = redis_server.client(db)
        self.queue = f"bench-arq-{latency_ms:g}"
        env = clean_env(BENCH_REDIS_URL=redis_server.url(db), BENCH_QUEUE=self.queue, BENCH_ENDPOINT_URL=endpoint.url)
        self.proc = Proc(self.key, [str(arq_venv() / "arq"), "benchmarks.arq_worker.WorkerSettings"], env, workdir)

    def prepare(self, bids: list[str]) -> list[Any]:
        return [email_body(bid, i) for i, bid in enumerate(bids)]

    def _write(self, bodies: list[Any]) -> float:
        at = time.time()
        now_ms = int(at * 1000)
        pipe = self.redis.pipeline(transaction=True)
        jobs = {}
        for body in bodies:
            job_id = uuid.uuid4().hex
            data = {"t": None, "f": "send_email", "a": (body,), "k": {}, "et": now_ms}
            pipe.psetex(f"arq:job:{job_id}", 86_400_000, pickle.dumps(data))
            jobs[job_id] = now_ms
        pipe.zadd(self.queue, jobs)
        pipe.execute()
        return at

    def enqueue(self, prepared: list[Any]) -> tuple[list[str], float]:
        times = [self._write(prepared[i : i + _CHUNK]) for i in range(0, len(prepared), _CHUNK)]
        return [body["payload"]["bid"] for body in prepared], times[0]

    def enqueue_one(self, item: Any) -> str:
        self._write([item])
        return item["payload"]["bid"]


class Limit(Cell):
    """No worker: `benchmarks.limit` POSTs from memory, in a process started per run."""

    def __init__(self, latency_ms, endpoint, workdir, client: str, loop: str = "asyncio", concurrency: int = 64):
        super().__init__(latency_ms, endpoint)
        self.client, self.loop, self.concurrency = client, loop, concurrency
        self.name = f"limit-{client}" + ("-uvloop" if loop == "uvloop" else "")
        self.label = f"limit: {client}{' + uvloop' if loop == 'uvloop' else ''}, {concurrency} in flight"
        self.workdir = workdir

    def start(self, prefix: str, n: int, rate: float = 0.0) -> Proc:
        """Start one run; `result()` waits for it."""
        argv = [
            PYTHON,
            "-m",
            "benchmarks.limit",
            "--url",
            self.endpoint.url,
            "--n",
            str(n),
            "--prefix",
            prefix,
            "--client",
            self.client,
            "--loop",
            self.loop,
            "--concurrency",
            str(self.concurrency),
            "--rate",
            str(rate),
        ]
        self.proc = Proc(self.key, argv, clean_env(), self.workdir)
        return self.proc

    def result(self) -> dict:
        assert self.proc is not None
        self.proc.popen.wait(300)
        self.proc.stop()
        if self.proc.popen.returncode:
            raise RuntimeError(f"{self.key} failed:\n{self.proc.tail()}")
        return json.loads(self.proc.log.read_text().strip().splitlines()[-1])
