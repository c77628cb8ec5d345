"""A slow network in front of a server: a TCP proxy on loopback that holds every byte for
a fixed time in each direction, as a Redis in another region (or behind a busy network)
answers. Commands still run at once on the server: only round trips grow, so a chatty
client (a SCAN of a large keyspace, page after page) slows down and a terse one does not."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class SlowLink:
    """Listens on a free loopback port (`port`) and forwards to `host:upstream_port`, each
    direction `delay` seconds late; order and content are kept."""

    def __init__(self, upstream_port: int, delay: float, host: str = "127.0.0.1"):
        self.upstream = (host, upstream_port)
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server
        self._thread = threading.Thread(target=self._serve, name="slow-link", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        """Close the listener and every connection through it."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        self._server.close()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer),
                self._pipe(upstream_reader, client_writer),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            # The link is stopping: both ends hang up, as when a network goes away.
            client_writer.close()
            upstream_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A delay line: each chunk is stamped when read and written `delay` after; a
        # chunk read meanwhile waits its own turn, so the link is slow, not narrow.
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, chunk = await line.get()
                if not chunk:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(forward())
        try:
            while chunk := await reader.read(65536):
                line.put_nowait((time.monotonic() + self.delay, chunk))
        except OSError:
            pass
        line.put_nowait((0.0, b""))
        await asyncio.gather(sender, return_exceptions=True)


@contextmanager
def slow_link(upstream_port: int, delay: float) -> Iterator[SlowLink]:
    link = SlowLink(upstream_port, delay)
    link.start()
    try:
        yield link
    finally:
        link.stop()
