"""`emailq dlq`: list, show, replay and purge dead-lettered emails.

Each command reads and moves the DLQ in batches (`DeadLetters` walks it `BATCH` ids a
round trip) and prints as it goes, so its memory stays flat however deep the DLQ is.
With `EMAILQ_REDIS_MIN_REPLICAS`, replay and purge then wait for that many replicas to
hold their moves, and say so when fewer do: a failover then may undo them (the emails
are back in the DLQ, nothing is lost).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import TextIO

import click
import redis

from emailq.enqueue import connect
from emailq.store.keys import Keys
from emailq.store.trace import TraceLimits
from emailq.store.redis_client import confirm_writes
from emailq.settings import get_settings
from emailq.worker.places.dead_letters import REASONS, DeadLetter, DeadLetters

TABLE_LIMIT = 50  # rows `dlq list` shows unless told otherwise
CONFIRM_SECONDS = 2.0  # how long replay and purge wait for replicas (EMAILQ_REDIS_MIN_REPLICAS)


def dead_letters(client: redis.Redis | None = None) -> DeadLetters:
    settings = get_settings()
    return DeadLetters(
        client or connect(settings, timeout=5),
        Keys.of(settings),
        max_entries=settings.dlq_max_entries,
        max_age_seconds=settings.dlq_max_age_seconds,
        trace=TraceLimits.of(settings),
    )


def _confirm(client: redis.Redis, what: str) -> None:
    """Warn when fewer replicas than EMAILQ_REDIS_MIN_REPLICAS hold this command's moves
    (the command runs on one thread: its one connection made them all)."""
    wanted = get_settings().redis_min_replicas
    confirmed = confirm_writes(client, wanted, CONFIRM_SECONDS)
    if confirmed < wanted:
        click.echo(
            f"warning: only {confirmed} of the {wanted} replica(s) EMAILQ_REDIS_MIN_REPLICAS asks for hold the {what} "
            f"after {CONFIRM_SECONDS:.0f}s: a failover now may undo it (nothing is lost); check 'emailq dlq list'",
            err=True,
        )


@click.group()
def dlq() -> None:
    """Inspect, replay and purge the dead-letter queue."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (every entry unless --limit), streamed.")
@click.option("--limit", type=click.IntRange(0), help=f"At most N entries; 0: all. Default: {TABLE_LIMIT}, or all with --json.")
@click.option("--after", metavar="ID", help="Only entries listed after ID (older ones): the next page.")
@click.option("--reason", "reasons", multiple=True, type=click.Choice(REASONS), help="Only this reason; repeatable.")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only this template type; repeatable.")
def dlq_list(as_json: bool, limit: int | None, after: str | None, reasons: tuple[str, ...], types: tuple[str, ...]) -> None:
    """Dead-lettered emails, newest first (codes and links masked)."""
    if limit is None:
        limit = 0 if as_json else TABLE_LIMIT
    entries = dead_letters().entries(after=after, reasons=set(reasons), types=set(types))
    shown = itertools.islice(entries, limit or None)
    with _stdout() as out:
        if as_json:
            _print_json(out, shown)
            return
        last = _print_table(out, shown)
        if last is None:
            out.write("no entries match\n" if after or reasons or types else "the dead-letter queue is empty\n")
        elif limit and next(entries, None) is not None:
            out.write(f"(the newest {limit} shown; next page: emailq dlq list --after {last.id})\n")


def _print_json(out: TextIO, entries: Iterable[DeadLetter]) -> None:
    # One valid array, written an entry at a time: "[", entries joined by ",", "]".
    out.write("[")
    for n, entry in enumerate(entries):
        row = entry.public()
        del row["raw"]
        out.write(("\n" if n == 0 else ",\n") + json.dumps(row))
    out.write("\n]\n")


def _print_table(out: TextIO, entries: Iterable[DeadLetter]) -> DeadLetter | None:
    last = None
    for e in entries:
        if last is None:
            out.write(f"{'ID':36}  {'FAILED AT (UTC)':19}  {'REASON':9}  {'STATUS':6}  {'ATT':>3}  {'TYPE':16}  TO\n")
        out.write(
            f"{e.id:36}  {_when(e.failed_at):19}  {e.reason:9}  {str(e.status or '-'):6}  {e.attempts:>3}  {str(e.type or '-'):16}  {e.to or '-'}\n"
        )
        last = e
    return last


@dlq.command("show")
@click.argument("message_id")
@click.option("--reveal", is_flag=True, help="Show one-time codes and links unmasked.")
def dlq_show(message_id: str, reveal: bool) -> None:
    """One entry in full, as JSON."""
    click.echo(json.dumps(dead_letters().get(message_id).public(reveal), indent=2))


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every entry.")
def dlq_replay(ids: tuple[str, ...], all_: bool) -> None:
    """Put entries back on the queue with a fresh attempt budget (same id)."""
    settings = get_settings()
    client = connect(settings, timeout=5)
    store = dead_letters(client)
    ttl, bulk_ttl = settings.message_ttl_seconds, settings.bulk_ttl_seconds
    if _all_or_known(store, ids, all_):
        replayed, skipped = store.replay_all(ttl, bulk_ttl)
    else:
        replayed, skipped = store.replay(ids, ttl, bulk_ttl)
    for message_id in skipped:
        click.echo(f"{message_id}: not replayable (what was kept of it is no whole message a worker could read); purge it", err=True)
    click.echo(f"replayed {replayed} email(s)")
    if replayed:
        _confirm(client, "replay")
    if skipped and not all_:
        sys.exit(1)


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Delete every entry.")
def dlq_purge(ids: tuple[str, ...], all_: bool) -> None:
    """Delete entries for good."""
    client = connect(get_settings(), timeout=5)
    store = dead_letters(client)
    removed = store.purge_all() if _all_or_known(store, ids, all_) else store.purge(ids)
    click.echo(f"purged {removed} email(s)")
    if removed:
        _confirm(client, "purge")


def _all_or_known(store: DeadLetters, ids: tuple[str, ...], all_: bool) -> bool:
    """True for --all; otherwise checks that every id is in the DLQ, before any move."""
    if all_ and ids:
        raise click.UsageError("give ids or --all, not both")
    if not all_ and not ids:
        raise click.UsageError("give one or more ids, or --all")
    for message_id in ids:
        store.get(message_id)  # NotFound names the first unknown id before any move
    return all_


@contextlib.contextmanager
def _stdout() -> Iterator[TextIO]:
    """stdout for a long listing; a reader that stops early (`| head`) ends it quietly."""
    try:
        yield sys.stdout
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
