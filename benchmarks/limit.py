"""The limit: an asyncio HTTP client POSTing the same messages straight from memory.

No queue, no Celery: `concurrency` requests in flight on one keep-alive pool, the same
headers emailq sends (`Content-Type`, `Idempotency-Key`). Runs in its own process and
prints one JSON line: start and end times and, per message, when it was due (its
"created" time: all at start for a burst, the schedule for a paced run).

    python -m benchmarks.limit --url http://127.0.0.1:8000/send --n 2000 --client aiohttp
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from benchmarks.messages import email_body

CLIENTS = ("aiohttp", "httpx")


def _bodies(prefix: str, n: int) -> list[tuple[str, bytes]]:
    return [(f"{prefix}{i}", json.dumps(email_body(f"{prefix}{i}", i), separators=(",", ":")).encode()) for i in range(n)]


def _poster(client: str, url: str, concurrency: int):
    """An async context manager yielding `post(key, body)`, for the chosen client."""
    if client == "aiohttp":
        import aiohttp

        class Aiohttp:
            async def __aenter__(self):
                self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
                return self.post

            async def __aexit__(self, *exc):
                await self.session.close()

            async def post(self, key: str, body: bytes) -> None:
                headers = {"Content-Type": "application/json", "Idempotency-Key": key}
                async with self.session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    response.raise_for_status()

        return Aiohttp()
    import httpx

    class Httpx:
        async def __aenter__(self):
            self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
            return self.post

        async def __aexit__(self, *exc):
            await self.client.aclose()

        async def post(self, key: str, body: bytes) -> None:
            headers = {"Content-Type": "application/json", "Idempotency-Key": key}
            response = await self.client.post(url, content=body, headers=headers)
            response.raise_for_status()

    return Httpx()


async def burst(args: argparse.Namespace) -> dict:
    bodies = _bodies(args.prefix, args.n)
    async with _poster(args.client, args.url, args.concurrency) as post:
        queue = iter(bodies)
        cpu0, start = time.process_time(), time.time()

        async def lane() -> None:
            for key, body in queue:
                await post(key, body)

        await asyncio.gather(*(lane() for _ in range(args.concurrency)))
        end = time.time()
    return {"start": start, "end": end, "created": [start] * args.n, "cpu": time.process_time() - cpu0}


async def paced(args: argparse.Namespace) -> dict:
    bodies = _bodies(args.prefix, args.n)
    limit = asyncio.Semaphore(args.concurrency)
    created: list[float] = []
    tasks = []
    async with _poster(args.client, args.url, args.concurrency) as post:

        async def one(key: str, body: bytes) -> None:
            async with limit:
                await post(key, body)

        cpu0, start = time.process_time(), time.time()
        for i, (key, body) in enumerate(bodies):
            due = start + i / args.rate
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            created.append(time.time())
            tasks.append(asyncio.create_task(one(key, body)))
        await asyncio.gather(*tasks)
        end = time.time()
    return {"start": start, "end": end, "created": created, "cpu": time.process_time() - cpu0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--prefix", default="limit-")
    parser.add_argument("--client", choices=CLIENTS, default="aiohttp")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s; 0: all at once")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    work = paced(args) if args.rate else burst(args)
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(work)
    else:
        result = asyncio.run(work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
