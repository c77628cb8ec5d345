"""The arq peer: an arq worker whose job POSTs the email with aiohttp, `max_jobs` raised to
512 as the asyncio limit keeps 512 requests in flight. arq pins redis-py below 6 and the
worker needs 6 or newer, so it runs from a virtualenv of its own (`benchmarks/.arq-venv`,
made by `cells.Arq` on first use). Configured by BENCH_REDIS_URL, BENCH_QUEUE and
BENCH_ENDPOINT_URL.

    benchmarks/.arq-venv/bin/arq benchmarks.arq_worker.WorkerSettings
"""

from __future__ import annotations

import json
import os
from typing import Any

import aiohttp
from arq.connections import RedisSettings

JOB = "send_email"


async def startup(ctx: dict[str, Any]) -> None:
    ctx["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    ctx["url"] = os.environ["BENCH_ENDPOINT_URL"]


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["session"].close()


async def send_email(ctx: dict[str, Any], message: dict[str, Any]) -> None:
    # Compact JSON, as httpx and emailq send it (the benchmark's endpoint reads `"bid":"`).
    body = json.dumps(message, separators=(",", ":"))
    async with ctx["session"].post(ctx["url"], data=body, headers={"Content-Type": "application/json"}) as answer:
        answer.raise_for_status()


class WorkerSettings:
    functions = [send_email]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0"))
    queue_name = os.environ.get("BENCH_QUEUE", "arq:queue")
    max_jobs = 512
    keep_result = 0
    handle_signals = True
