"""`emailq dlq`: list, show, replay and purge dead-lettered emails."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

import click

from emailq.enqueue import connect
from emailq.settings import get_settings
from emailq.worker.dead_letters import DeadLetters


def dead_letters() -> DeadLetters:
    settings = get_settings()
    return DeadLetters(connect(settings, timeout=5), settings.queue)


@click.group()
def dlq() -> None:
    """Inspect, replay and purge the dead-letter queue."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--limit", type=click.IntRange(1), help="Newest N only.")
def dlq_list(as_json: bool, limit: int | None) -> None:
    """Dead-lettered emails, newest first (codes and links masked)."""
    entries = dead_letters().list(limit)
    if as_json:
        rows = []
        for entry in entries:
            row = entry.public()
            row.pop("raw")
            rows.append(row)
        click.echo(json.dumps(rows, indent=2))
        return
    if not entries:
        click.echo("the dead-letter queue is empty")
        return
    click.echo(f"{'ID':36}  {'FAILED AT (UTC)':19}  {'REASON':9}  {'STATUS':6}  {'ATT':>3}  {'TYPE':16}  TO")
    for e in entries:
        click.echo(
            f"{e.id:36}  {_when(e.failed_at):19}  {e.reason:9}  {str(e.status or '-'):6}  "
            f"{e.attempts:>3}  {str(e.type or '-'):16}  {e.to or '-'}"
        )


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
    store = dead_letters()
    targets = _targets(store, ids, all_)
    replayed, skipped = store.replay(targets, get_settings().message_ttl_seconds)
    for message_id in skipped:
        click.echo(f"{message_id}: not replayable (the original message was malformed); purge it", err=True)
    click.echo(f"replayed {len(replayed)} email(s)")
    if skipped and not all_:
        sys.exit(1)


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Delete every entry.")
def dlq_purge(ids: tuple[str, ...], all_: bool) -> None:
    """Delete entries for good."""
    store = dead_letters()
    if all_:
        if ids:
            raise click.UsageError("give ids or --all, not both")
        removed = store.purge_all()
    else:
        for message_id in _targets(store, ids, all_):
            store.get(message_id)  # NotFound before anything is deleted
        removed = store.purge(ids)
    click.echo(f"purged {removed} email(s)")


def _targets(store: DeadLetters, ids: tuple[str, ...], all_: bool) -> list[str]:
    if all_ and ids:
        raise click.UsageError("give ids or --all, not both")
    if not all_ and not ids:
        raise click.UsageError("give one or more ids, or --all")
    if all_:
        return store.ids()
    for message_id in ids:
        store.get(message_id)  # NotFound names the first unknown id before any move
    return list(ids)


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
