"""`emailq dev`: the whole pipeline on one machine, for a first try.

The embedded Redis, one worker, the ingest and Flower, each an ordinary `emailq` process
(so what runs here is what runs in production), and, when `EMAILQ_ENDPOINT_URL` is unset,
a local endpoint that prints each email it receives. Everything listens on loopback.

The terminal shows where each part listens and one line per email (enqueued, retried,
delivered, dead-lettered); each part's whole log goes to `<data dir>/logs/<part>.log`
(`--verbose` shows them all instead). Ctrl-C, SIGTERM or SIGHUP stops every part within
seconds, and the embedded Redis too when this command started it; a `kill -9` of this
command takes them down as well (`dev_parts`, `lifeline`, `redis_guard`). A port already
taken is one line before anything starts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click

from emailq.settings import Settings
from emailq.store import embedded_redis
from emailq.worker.commands import dev_parts

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
    busy = _busy_port(settings, ingest_port, flower_port, endpoint_port)
    if busy is not None:
        click.secho(f"emailq dev: {busy}", fg="red", err=True)
        return 1
    _stop_on_signals()
    parts = dev_parts.Parts()
    redis_url, redis_note, started_redis = None, "EMAILQ_REDIS_URL", False
    endpoint, serving = None, False
    try:
        if settings.redis_url is None:
            started_redis = embedded_redis.running(settings.data_dir) is None
            redis_url = embedded_redis.ensure_running(settings.data_dir)
            redis_note = f"embedded, data in {settings.data_dir}"
        env = dict(os.environ)
        if settings.endpoint_url is None:
            endpoint = _printing_endpoint(endpoint_port)
            if endpoint is None:
                return 1
            env["EMAILQ_ENDPOINT_URL"] = f"http://{HOST}:{endpoint.server_address[1]}/"
        logs = settings.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name, args in _parts(ingest_port, flower_port).items():
            parts.start(name, args, env, None if verbose else (logs / f"{name}.log").open("wb"))
        if started_redis and redis_url is not None:
            parts.guard_redis(settings.data_dir, redis_url)
        # Threads only from here on: the parts are forked with a `preexec_fn`, which is not
        # safe while other threads run (one may hold a lock the child then waits on).
        if endpoint is not None:
            threading.Thread(target=endpoint.serve_forever, daemon=True).start()
            serving = True
        if not verbose:
            for name in _EVENTS:
                threading.Thread(target=_follow, args=(logs / f"{name}.log", _EVENTS[name]), daemon=True).start()
        _banner(settings, redis_note, env["EMAILQ_ENDPOINT_URL"], endpoint is not None, ingest_port, flower_port, None if verbose else logs)
        while (exited := parts.exited()) is None:
            time.sleep(0.5)
        name, status = exited
        where = "" if verbose else f" (see {logs / name}.log)"
        click.secho(f"emailq dev: the {name} exited ({status}){where}; stopping", fg="red", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("\nstopping ...", err=True)
        return 0
    finally:
        # Stopping takes seconds at most: a second Ctrl-C must not cut it short and leave
        # the parts or the embedded Redis behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        for name in parts.stop():
            click.secho(f"emailq dev: the {name} did not stop within {dev_parts.STOP_SECONDS:g}s of SIGTERM; killed it", fg="yellow", err=True)
        if endpoint is not None:
            if serving:
                endpoint.shutdown()
            endpoint.server_close()
        _leave_redis(settings, started_redis, redis_url)
        parts.release()


def _stop_on_signals() -> None:
    """Ctrl-C, SIGTERM (`kill`, `timeout`, a service manager) and SIGHUP (the terminal
    closed) all stop it as Ctrl-C does: the parts, and the embedded Redis when it started
    it, go too."""
    # Even when it was started with SIGINT ignored, as a script's `command &` and some CI
    # runners start commands: Python then leaves SIGINT ignored, and `emailq dev` ran on,
    # deaf to Ctrl-C (the tests' "did not exit within 40 s"). Its parts are in sessions of
    # their own, so SIGINT only ever reaches it through its own group.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # `nohup emailq dev` is to outlive its terminal
        signal.signal(signal.SIGHUP, signal.default_int_handler)


def _printing_endpoint(port: int) -> ThreadingHTTPServer | None:
    """The printing endpoint, listening but not serving yet; None, said in one line, when
    it cannot listen (the port was taken since `_busy_port` looked)."""
    try:
        endpoint = ThreadingHTTPServer((HOST, port), _PrintingEndpoint)
    except OSError as error:
        problem = f"the printing endpoint cannot listen on {HOST}:{port} ({error.strerror})"
        click.secho(f"emailq dev: {problem}: pass --endpoint-port PORT, or set EMAILQ_ENDPOINT_URL", fg="red", err=True)
        return None
    endpoint.daemon_threads = True  # a worker's keep-alive connection must not hold up the exit
    return endpoint


def _parts(ingest_port: int, flower_port: int) -> dict[str, list[str]]:
    return {
        "worker": ["worker", "--concurrency", "8"],
        "ingest": ["serve", "--host", HOST, "--port", str(ingest_port)],
        "flower": ["flower", "--address", HOST, "--port", str(flower_port)],
    }


def _busy_port(settings: Settings, ingest_port: int, flower_port: int, endpoint_port: int) -> str | None:
    """One line naming the first port a part could not listen on and what to do, or None.
    Asked before anything starts: a part that cannot listen only says so in its log."""
    wanted = [(ingest_port, "the ingest", "pass --ingest-port PORT"), (flower_port, "Flower", "pass --flower-port PORT")]
    if settings.endpoint_url is None:
        wanted.append((endpoint_port, "the printing endpoint", "pass --endpoint-port PORT, or set EMAILQ_ENDPOINT_URL"))
    for port, part, remedy in wanted:
        if dev_parts.port_in_use(HOST, port):
            return f"port {port} ({part}) is in use (another emailq dev?): stop it or {remedy}"
    if dev_parts.port_in_use(settings.metrics_host, settings.metrics_port):
        return f"port {settings.metrics_port} (the worker's metrics, EMAILQ_METRICS_PORT) is in use: stop what holds it or set EMAILQ_METRICS_PORT"
    return None


def _leave_redis(settings: Settings, started_redis: bool, url: str | None) -> None:
    if started_redis:
        if embedded_redis.stop(settings.data_dir, url):
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
