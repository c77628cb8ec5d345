"""`emailq dev`: the whole pipeline on one machine, for a first try.

The embedded Redis, one worker, the ingest and Flower, each an ordinary `emailq` process
(so what runs here is what runs in production), and, when `EMAILQ_ENDPOINT_URL` is unset,
a local endpoint that prints each email it receives. Everything listens on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import click

from emailq import embedded_redis
from emailq.settings import Settings

HOST = "127.0.0.1"


class _PrintingEndpoint(BaseHTTPRequestHandler):
    """Stands in for the email API: prints what it would send, answers 200."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            email = json.loads(body)
            line = f"to={email.get('to')} type={email.get('type')} payload={json.dumps(email.get('payload'))}"
        except ValueError:
            line = f"(not JSON) {body[:200]!r}"
        click.secho(f"[endpoint] email {self.headers.get('Idempotency-Key')}: {line}", fg="green")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def run(settings: Settings, ingest_port: int, flower_port: int, endpoint_port: int) -> int:
    redis_note = "EMAILQ_REDIS_URL"
    if settings.redis_url is None:
        embedded_redis.ensure_running(settings.data_dir)
        redis_note = f"embedded, data in {settings.data_dir}"
    env = dict(os.environ)
    endpoint = None
    if settings.endpoint_url is None:
        endpoint = ThreadingHTTPServer((HOST, endpoint_port), _PrintingEndpoint)
        threading.Thread(target=endpoint.serve_forever, daemon=True).start()
        env["EMAILQ_ENDPOINT_URL"] = f"http://{HOST}:{endpoint.server_address[1]}/"
    emailq = [sys.executable, "-m", "emailq.worker"]
    processes = {
        "worker": [*emailq, "worker", "--concurrency", "8"],
        "ingest": [*emailq, "serve", "--host", HOST, "--port", str(ingest_port)],
        "flower": [*emailq, "flower", "--address", HOST, "--port", str(flower_port)],
    }
    # Each in its own session: Ctrl-C reaches only this process, which then stops each
    # child once, in order, rather than every process catching the signal at once.
    running = {name: subprocess.Popen(argv, env=env, start_new_session=True) for name, argv in processes.items()}
    auth = f" -H 'Authorization: {'<EMAILQ_INGEST_AUTHORIZATION>'}'" if settings.ingest_authorization else ""
    click.secho("\nemailq dev is running (Ctrl-C stops everything):", bold=True)
    click.echo(f"  redis     {redis_note}")
    click.echo(f"  endpoint  {env['EMAILQ_ENDPOINT_URL']}" + ("  (prints each email)" if endpoint else ""))
    click.echo(f"  ingest    http://{HOST}:{ingest_port}/   (API docs: /docs, metrics: /metrics)")
    click.echo(f"  flower    http://{HOST}:{flower_port}/")
    click.echo("\nSend a first email:")
    click.echo("  emailq send --to you@example.com --type SignIn --payload '{\"code\": \"123456\"}'")
    click.echo(
        f"  curl -X POST http://{HOST}:{ingest_port}/ -H 'Content-Type: application/json'{auth} "
        "-d '{\"to\": \"you@example.com\", \"type\": \"SignIn\", \"payload\": {\"code\": \"123456\"}}'\n"
    )
    try:
        while True:
            for name, process in running.items():
                if process.poll() is not None:
                    click.secho(f"emailq dev: the {name} exited ({process.returncode}); stopping", fg="red", err=True)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("\nstopping ...", err=True)
        return 0
    finally:
        _stop(running.values())
        if endpoint is not None:
            endpoint.shutdown()


def _stop(processes) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
