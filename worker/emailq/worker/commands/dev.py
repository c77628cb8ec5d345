"""`emailq dev`: the whole pipeline on one machine, for a first try.

The embedded Redis, one worker, the ingest and Flower, each an ordinary `emailq` process
(so what runs here is what runs in production), and, when `EMAILQ_ENDPOINT_URL` is unset,
a local endpoint that prints each email it receives. Everything listens on loopback.

The terminal shows where each part listens and one line per email (enqueued, retried,
delivered, dead-lettered); each part's whole log goes to `<data dir>/logs/<part>.log`
(`--verbose` shows them all instead). Ctrl-C stops every part, and the embedded Redis
too when this command started it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click

from emailq.store import embedded_redis
from emailq.settings import Settings

HOST = "127.0.0.1"

# The log lines worth one terminal line each, by part: (pattern, how to show it).
_EVENTS = {
    "ingest": [(re.compile(r"enqueued (\S+)"), "[ingest]   enqueued {0}")],
    "worker": [
        (re.compile(r"delivered (\S+) in (\d+) attempt"), "[worker]   delivered {0} (attempt {1})"),
        (re.compile(r"attempt (\d+) of (\S+) failed \((.*)\): retrying in (\S+)"), "[worker]   {1}: attempt {0} failed ({2}), retrying in {3}"),
        (re.compile(r"dead-lettered (\S+): (.*)"), "[worker]   dead-lettered {0}: {1}"),
        (re.compile(r"(endpoint looks down.*|endpoint answered again.*|Redis is full.*|Redis has room again.*)"), "[worker]   {0}"),
    ],
}


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


def run(settings: Settings, ingest_port: int, flower_port: int, endpoint_port: int, verbose: bool = False) -> int:
    redis_note, started_redis = "EMAILQ_REDIS_URL", False
    if settings.redis_url is None:
        started_redis = embedded_redis.running(settings.data_dir) is None
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
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running = {}
    for name, argv in processes.items():
        out = None if verbose else (logs / f"{name}.log").open("wb")
        # Each in its own session: Ctrl-C reaches only this process, which then stops each
        # child once, in order, rather than every process catching the signal at once.
        running[name] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True)
    if not verbose:
        for name in _EVENTS:
            threading.Thread(target=_follow, args=(logs / f"{name}.log", _EVENTS[name]), daemon=True).start()
    _banner(settings, redis_note, env["EMAILQ_ENDPOINT_URL"], endpoint is not None, ingest_port, flower_port, None if verbose else logs)
    try:
        while True:
            for name, process in running.items():
                if process.poll() is not None:
                    where = "" if verbose else f" (see {logs / name}.log)"
                    click.secho(f"emailq dev: the {name} exited ({process.returncode}){where}; stopping", fg="red", err=True)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("\nstopping ...", err=True)
        return 0
    finally:
        _stop(running.values())
        if endpoint is not None:
            endpoint.shutdown()
        if started_redis:
            embedded_redis.stop(settings.data_dir)
            click.echo("stopped the embedded Redis (its data stays in the data directory)", err=True)
        elif settings.redis_url is None:
            click.echo(
                f"the embedded Redis keeps running (it was running before); stop it with: "
                f"redis-cli -u {embedded_redis.running(settings.data_dir)} shutdown",
                err=True,
            )


def _banner(settings: Settings, redis_note: str, endpoint_url: str, printing: bool, ingest_port: int, flower_port: int, logs: Path | None) -> None:
    auth = " -H 'Authorization: <EMAILQ_INGEST_AUTHORIZATION>'" if settings.ingest_authorization else ""
    click.secho("\nemailq dev is running (Ctrl-C stops everything):", bold=True)
    click.echo(f"  redis     {redis_note}")
    click.echo(f"  endpoint  {endpoint_url}" + ("  (prints each email)" if printing else ""))
    click.echo(f"  ingest    http://{HOST}:{ingest_port}/   (API docs: /docs, metrics: /metrics)")
    click.echo(f"  flower    http://{HOST}:{flower_port}/")
    if logs is not None:
        click.echo(f"  logs      {logs}/   (--verbose shows them here)")
    click.echo("\nSend a first email:")
    click.echo('  emailq send --to you@example.com --type SignIn --payload \'{"code": "123456"}\'')
    click.echo(
        f"  curl -X POST http://{HOST}:{ingest_port}/ -H 'Content-Type: application/json'{auth} "
        '-d \'{"to": "you@example.com", "type": "SignIn", "payload": {"code": "123456"}}\'\n'
    )


def _follow(path: Path, events: list[tuple[re.Pattern[str], str]]) -> None:
    """Print one line per event found in a growing log file (from its current end)."""
    with path.open("r", errors="replace") as log:
        log.seek(0, os.SEEK_END)
        while True:
            line = log.readline()
            if not line:
                time.sleep(0.1)
                continue
            for pattern, show in events:
                found = pattern.search(line)
                if found:
                    click.echo(show.format(*found.groups()))
                    break


def _stop(processes: Iterable[subprocess.Popen]) -> None:
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
