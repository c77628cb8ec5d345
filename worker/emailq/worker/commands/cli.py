"""The `emailq` command. Every error reaches the user as one line, never a traceback."""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from emailq.store import census, embedded_redis
from emailq.enqueue import Producer, connect
from emailq.errors import ConfigError, EmailqError, InvalidMessage
from emailq.jsonl import read_emails
from emailq.store.keys import Keys
from emailq.store.redis_client import primary_address
from emailq.settings import Settings, get_settings
from emailq.worker.commands.dlq import dlq
from emailq.worker.commands.trace import trace

MAX_PROBLEMS_SHOWN = 1000


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="emailq")
# Given by `emailq dev` to the parts it starts: the read end of a pipe whose end-of-file
# means `emailq dev` is gone, however it died (`lifeline`).
@click.option("--lifeline", type=int, hidden=True)
def cli(lifeline: int | None) -> None:
    """emailq: a durable HTTP email dispatcher (Redis + Celery), configured by EMAILQ_* variables."""
    if lifeline is not None:
        from emailq.worker.commands import lifeline as tie

        tie.watch(lifeline)


cli.add_command(dlq)
cli.add_command(trace)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("-c", "--concurrency", type=click.IntRange(1, 1000), help="Deliveries in flight (default EMAILQ_CONCURRENCY).")
@click.option("-Q", "--queues", help="Comma-separated queues to consume (default EMAILQ_QUEUE).")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.pass_context
def worker(ctx: click.Context, concurrency: int | None, queues: str | None, loglevel: str) -> None:
    """Run a worker; any other Celery worker flag is passed through."""
    settings = get_settings()
    if settings.endpoint_url is None:
        raise ConfigError("EMAILQ_ENDPOINT_URL: required by 'emailq worker' (where to POST emails)")
    _require_redis_6_2(settings)
    from emailq.worker.celery_glue.app import app

    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency or settings.concurrency}",
        f"--queues={queues or settings.queue}",
        "--without-gossip",
        "--without-mingle",
        *ctx.args,
    ]
    app.worker_main(argv)


def _require_redis_6_2(settings: Settings) -> None:
    import redis

    try:
        version = connect(settings, timeout=2).info("server")["redis_version"]
    except redis.RedisError:
        return  # unreachable for now: the worker waits for it and says so
    if tuple(int(part) for part in version.split(".")[:2]) < (6, 2):
        # The moves use LMOVE and LPOS (emailq/store/lua), which came in Redis 6.2.
        raise ConfigError(f"EMAILQ_REDIS_URL: the worker needs Redis 6.2 or newer; this one is {version}")


@cli.command()
@click.option("--to", help="Recipient address.")
@click.option("--type", "type_", help="Logto template type, e.g. SignIn.")
@click.option("--payload", default="{}", show_default=True, help='JSON object, e.g. \'{"code": "123456"}\'.')
@click.option("--ip", help="Client IP to pass through.")
@click.option("--file", "file_", type=click.Path(dir_okay=False, path_type=Path), help="JSONL file, one SendMessageData a line ('-' for stdin).")
@click.option("--bulk", is_flag=True, help="The bulk lane, behind one-time codes (as EMAILQ_BULK_TYPES are).")
def send(to: str | None, type_: str | None, payload: str, ip: str | None, file_: Path | None, bulk: bool) -> None:
    """Enqueue one email from flags, or many from a JSONL file; prints the ids."""
    if file_ is not None:
        if to or type_:
            raise click.UsageError("use either --file or --to/--type, not both")
        _send_file(file_, bulk)
        return
    if not to or not type_:
        raise click.UsageError("--to and --type are required (or --file)")
    try:
        data: dict[str, Any] = {"to": to, "type": type_, "payload": json.loads(payload)}
    except json.JSONDecodeError as error:
        raise click.BadParameter(f"not JSON ({error.msg})", param_hint="--payload") from None
    if ip is not None:
        data["ip"] = ip
    producer = Producer(get_settings())
    producer.validate(data)
    click.echo(producer.send_many([data], bulk=bulk)[0])


def _send_file(path: Path, bulk: bool) -> None:
    producer = Producer(get_settings())
    try:
        stream = sys.stdin.buffer if str(path) == "-" else path.open("rb")
    except OSError as error:
        raise click.BadParameter(error.strerror or str(error), param_hint="--file") from None
    with stream:
        lines = stream.readlines()
    with click.progressbar(lines, label="validating", file=sys.stderr, hidden=not sys.stderr.isatty()) as bar:
        emails, problems = read_emails(bar, producer.validate)
    if problems:
        for problem in problems[:MAX_PROBLEMS_SHOWN]:
            click.echo(f"{path}: {problem}", err=True)
        if len(problems) > MAX_PROBLEMS_SHOWN:
            click.echo(f"{path}: ... and {len(problems) - MAX_PROBLEMS_SHOWN} more", err=True)
        raise InvalidMessage([f"{path}: {len(problems)} bad line(s); nothing was enqueued"])
    ids = producer.send_many(emails, bulk=bulk)
    for message_id in ids:
        click.echo(message_id)
    click.echo(f"enqueued {len(ids)} email(s)", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--check", is_flag=True, help="Read every email and check each is in exactly one place.")
def status(as_json: bool, check: bool) -> None:
    """Queue depth, in-flight deliveries, DLQ depth and workers online."""
    from emailq.worker.celery_glue.app import app

    settings = get_settings()
    client = connect(settings, timeout=30 if check else 5)
    # Redis first: if it is down, this fails fast with one clear line.
    if check:
        _check(census.audit(client, Keys.of(settings)), as_json)
        return
    now = census.count(client, Keys.of(settings))
    report: dict[str, Any] = {"queue": settings.queue, **now.as_dict()}
    primary = primary_address(client)
    if primary is not None:
        report["primary"] = primary
    replies = app.control.ping(timeout=1.0) or []
    report["workers"] = sorted(name for reply in replies for name in reply)
    if settings.fallback_endpoint_url is not None:
        report["endpoints"] = _endpoints(app)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"queue {report['queue']}: {report['queued']} queued ({report['queued_bulk']} bulk), {report['in_flight']} in flight, "
        f"{report['scheduled']} scheduled for retry"
    )
    click.echo(f"dead-letter queue: {report['dead_lettered']}")
    if primary is not None:
        click.echo(f"Redis primary: {primary} (Sentinel service {settings.redis_sentinel_master})")
    click.echo(f"workers online: {len(report['workers'])} {' '.join(report['workers'])}".rstrip())
    for worker, state in sorted(report.get("endpoints", {}).items()):
        click.echo(f"{worker}: primary {state['primary']}, fallback {state['fallback']}: sending to {state['sending_to']}")


def _endpoints(app: Any) -> dict[str, dict[str, str]]:
    """Each worker's breakers and where it sends emails (`endpoint_control.py`)."""
    from emailq.worker.celery_glue.endpoint_control import COMMAND

    replies = app.control.broadcast(COMMAND, reply=True, timeout=1.0) or []
    return {name: state for reply in replies for name, state in reply.items() if isinstance(state, dict) and "primary" in state}


def _check(audit: census.Audit, as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": audit.ok,
                    **audit.census.as_dict(),
                    "in_two_places": audit.in_two_places,
                    "orphans": audit.orphans,
                    "awaiting_reclaim": audit.awaiting_reclaim,
                    "unreadable": audit.unreadable,
                }
            )
        )
    else:
        now = audit.census
        click.echo(
            f"{now.queued} queued, {now.in_flight} in flight ({now.owners} workers registered), "
            f"{now.scheduled} scheduled, {now.dead_lettered} dead-lettered"
        )
        for message_id, places in sorted(audit.in_two_places.items()):
            click.echo(f"in two places: {message_id}: {', '.join(places)}")
        for key, n in sorted(audit.orphans.items()):
            click.echo(f"orphan: {key} holds {n} email(s) and no worker is registered for it")
        for key, n in sorted(audit.awaiting_reclaim.items()):
            click.echo(f"awaiting reclaim: {key} holds {n} email(s) of a worker whose heartbeat lapsed")
        if audit.unreadable:
            click.echo(f"{audit.unreadable} item(s) without a readable message id (dead-lettered when taken)")
        click.echo("ok: every email is in exactly one place" if audit.ok else "NOT ok")
    if not audit.ok:
        sys.exit(1)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8025, show_default=True, type=click.IntRange(0, 65535))
def serve(host: str, port: int) -> None:
    """Run the HTTP ingest that Logto's HTTP email connector POSTs to."""
    settings = get_settings()
    try:
        import uvicorn

        from emailq.ingest.app import serve_app
    except ImportError:
        raise ConfigError("'emailq serve' needs the ingest extra: pip install 'emailq[ingest]'") from None
    # The ingest's own lines (one per email enqueued), beside uvicorn's.
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        from emailq.worker.observability import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ingest_log = logging.getLogger("emailq.ingest")
    ingest_log.addHandler(handler)
    ingest_log.setLevel(logging.INFO)
    ingest_log.propagate = False
    app = serve_app(settings)
    # What is loaded by now (FastAPI, pydantic, the app) lives as long as the process: out
    # of the collector's sight, a full collection no longer walks it all while every
    # request waits (measured under load: pauses of 50-100 ms, then under 15 ms).
    gc.freeze()
    # No access log: the ingest writes its own line per email (`SampledLog`); uvicorn's would
    # double the cost. No proxy headers either: nothing in the ingest reads the client's address.
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, proxy_headers=False, server_header=False)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5555, show_default=True, type=click.IntRange(0, 65535))
@click.pass_context
def flower(ctx: click.Context, address: str, port: int) -> None:
    """Run Flower on the same broker; any other Flower flag is passed through."""
    settings = get_settings()
    try:
        import flower as _  # noqa: F401
    except ImportError:
        raise ConfigError("'emailq flower' needs the flower extra: pip install 'emailq[flower]'") from None
    if settings.flower_basic_auth:
        # Through the environment, not argv, so the password stays out of `ps`.
        os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
    else:
        click.secho("emailq flower: EMAILQ_FLOWER_BASIC_AUTH is not set: the dashboard is open to anyone who can reach it", fg="yellow", err=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from emailq.worker.celery_glue.app import app, flower_broker_url

    # Flower only watches (events, queue lengths); it needs kombu's own transport, whose
    # URL scheme it recognises (sentinel:// too: kombu's Sentinel transport, given every
    # Sentinel), not the worker's dead-lettering one. Reading a setting first applies the
    # lazy configuration, so that it cannot overwrite this change.
    assert app.conf.broker_url
    app.conf.broker_transport = None
    app.conf.broker_url = flower_broker_url(settings)
    from emailq.worker.commands.flower_broker import ask_every_sentinel
    from emailq.worker.commands.flower_pages import install
    from emailq.worker.commands.flower_queues import show_dead_letters
    from emailq.worker.commands.flower_shutdown import stop_within_seconds

    show_dead_letters(Keys.of(settings))
    ask_every_sentinel(settings)
    install(settings)  # the dead letters page, same origin and auth
    stop_within_seconds()
    app.start(
        [
            "flower",
            f"--address={address}",
            f"--port={port}",
            "--persistent=True",
            f"--db={settings.data_dir / 'flower.db'}",
            *ctx.args,
        ]
    )


@cli.command()
@click.option("--ingest-port", default=8025, show_default=True, type=click.IntRange(0, 65535))
@click.option("--flower-port", default=5555, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--endpoint-port",
    default=8026,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="The printing endpoint's port, when EMAILQ_ENDPOINT_URL is unset.",
)
@click.option("--verbose", is_flag=True, help="Show every part's whole log here, not one line per email.")
def dev(ingest_port: int, flower_port: int, endpoint_port: int, verbose: bool) -> None:
    """Everything on this machine for a first try: Redis, a worker, the ingest, Flower."""
    from emailq.worker.commands import dev as dev_mode

    sys.exit(dev_mode.run(get_settings(), ingest_port, flower_port, endpoint_port, verbose))


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the CLI and turns every expected error into one line on stderr."""
    import redis

    unreachable: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
    try:
        from kombu.exceptions import OperationalError

        unreachable += (OperationalError,)
    except ImportError:  # `emailq serve` with the ingest extra alone: no kombu, no Celery
        pass

    # An `emailq` command may start the embedded Redis when EMAILQ_REDIS_URL is unset; a
    # web app calling the library may not (it would queue where no worker looks).
    embedded_redis.allow_start()
    try:
        code = cli.main(args=argv, prog_name="emailq", standalone_mode=False)
    except click.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
        click.echo(f"emailq: error: {error.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as error:
        click.echo(f"emailq: error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("emailq: aborted", err=True)
        sys.exit(130)
    except EmailqError as error:
        click.echo(f"emailq: {error}", err=True)
        sys.exit(1)
    except unreachable as error:
        click.echo(f"emailq: Redis is unreachable ({error}); check EMAILQ_REDIS_URL", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    if isinstance(code, int):
        sys.exit(code)
