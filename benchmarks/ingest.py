"""The ingest under load, side by side with its limit, in one run.

Load: `CLIENTS` concurrent aiohttp clients on keep-alive connections, each POSTing Logto's
body with the Authorization header, for `SECONDS`, as Logto's connector does inside users'
sign-ins. Contenders, each a separate process on the same machine and Redis:

- `emailq serve` with its defaults (and an ingest token, as a deployment has);
- the limit: a bare ASGI app on the same server (uvicorn) that does one LPUSH of a prebuilt
  message per request and answers 202 (`python -m benchmarks.ingest limit PORT URL`).

Reps are interleaved (emailq, limit, emailq, limit, ...); each figure is the median of the
reps: requests per second, latency p50 and p99, and whether every answer was a 202.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Proc, RedisServer, clean_env, median, percentile
from benchmarks.messages import email_body
from tests.helpers import free_port, wait_for

CLIENTS = 64
SECONDS = 10.0
TOKEN = "Bearer bench-ingest-token"
QUEUE = "bench-ingest"


async def _load(url: str, seconds: float, clients: int) -> dict[str, Any]:
    import aiohttp

    # A distinct address and code each time, as real sign-ins are (nothing cached helps).
    bodies = [json.dumps(email_body("ingest", i)).encode() for i in range(10000)]
    headers = {"Authorization": TOKEN, "Content-Type": "application/json"}
    took: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        while time.perf_counter() < deadline:
            n += clients
            start = time.perf_counter()
            async with session.post(url, data=bodies[n % len(bodies)], headers=headers) as answer:
                await answer.read()
            took.append(time.perf_counter() - start)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session, n) for n in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "requests_per_s": len(took) / elapsed,
        "p50_ms": percentile(took, 50) * 1e3,
        "p99_ms": percentile(took, 99) * 1e3,
        "statuses": {str(k): v for k, v in statuses.items()},
    }


def load(url: str, seconds: float = SECONDS, clients: int = CLIENTS) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(_load(url, seconds, clients))
    except ImportError:
        return asyncio.run(_load(url, seconds, clients))


def _up(url: str, proc: Proc) -> Callable[[], bool]:
    import httpx

    def answers() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        try:
            return httpx.get(url + "/healthz").status_code == 200
        except httpx.TransportError:
            return False

    return answers


def measure(redis_server: RedisServer, workdir: Path, db: int, reps: int, seconds: float = SECONDS, log: Callable[[str], None] = print) -> dict:
    """Medians of `reps` interleaved runs of emailq's ingest and the limit."""
    client = redis_server.client(db)
    ports = {"emailq": free_port(), "limit": free_port()}
    env = clean_env(EMAILQ_REDIS_URL=redis_server.url(db), EMAILQ_QUEUE=QUEUE, EMAILQ_INGEST_AUTHORIZATION=TOKEN)
    emailq_bin = str(Path(sys.executable).with_name("emailq"))
    procs = {
        "emailq": Proc("ingest-emailq", [emailq_bin, "serve", "--port", str(ports["emailq"])], env, workdir),
        "limit": Proc("ingest-limit", [sys.executable, "-m", "benchmarks.ingest", "limit", str(ports["limit"]), redis_server.url(db)], env, workdir),
    }
    try:
        for name, proc in procs.items():
            wait_for(_up(f"http://127.0.0.1:{ports[name]}", proc), 30, f"{name} to listen")
        runs: dict[str, list[dict]] = {name: [] for name in procs}
        for rep in range(reps):
            for name in procs:
                result = load(f"http://127.0.0.1:{ports[name]}/", seconds)
                client.delete(QUEUE, f"{QUEUE}:wake", f"{QUEUE}:bulk")
                rate, p50, p99 = result["requests_per_s"], result["p50_ms"], result["p99_ms"]
                log(f"  ingest rep {rep + 1} {name}: {rate:.0f}/s p50 {p50:.1f} ms p99 {p99:.1f} ms {result['statuses']}")
                runs[name].append(result)
    finally:
        for proc in procs.values():
            proc.stop()
    summary = {
        name: {
            "requests_per_s": median([r["requests_per_s"] for r in results]),
            "p50_ms": median([r["p50_ms"] for r in results]),
            "p99_ms": median([r["p99_ms"] for r in results]),
            "all_202": all(set(r["statuses"]) == {"202"} for r in results),
            "runs": results,
        }
        for name, results in runs.items()
    }
    summary["ratio"] = summary["emailq"]["requests_per_s"] / summary["limit"]["requests_per_s"]
    summary["clients"], summary["seconds"] = CLIENTS, seconds
    return summary


def limit_app(redis_url: str) -> Any:
    """The bare ASGI app: one LPUSH of a prebuilt task message per POST, answered 202."""
    import redis.asyncio

    from emailq.message import Email, Envelope
    from emailq.task_message import task_message

    message = task_message(Envelope.wrap(Email.model_validate(email_body("limit", 0)), 900), QUEUE)
    answer = json.dumps({"id": "limit"}).encode()
    client = redis.asyncio.Redis.from_url(redis_url)

    async def app(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await client.lpush(QUEUE, message)
        await send({"type": "http.response.start", "status": 202, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})

    return app


if __name__ == "__main__" and sys.argv[1:2] == ["limit"]:
    import uvicorn

    uvicorn.run(limit_app(sys.argv[3]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
