"""`emailq trace ID|ADDRESS`: where an email is now, and every move and attempt it had,
from its trace (`emailq.store.trace`)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import click

from emailq.enqueue import connect
from emailq.errors import NotFound
from emailq.settings import get_settings
from emailq.store.keys import Keys
from emailq.store.trace import Trace, Whereabouts


@click.command()
@click.argument("id_or_address")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def trace(id_or_address: str, as_json: bool) -> None:
    """Where an email is now and every attempt it had (kept EMAILQ_TRACE_SECONDS).

    Give a message id, or an address for every email sent to it (newest first)."""
    settings = get_settings()
    found = _find(Trace(connect(settings, timeout=5), Keys.of(settings)), id_or_address)
    if not found:
        kept = f"{settings.trace_seconds:g}s" if settings.trace_seconds else "nothing: EMAILQ_TRACE_SECONDS is 0"
        raise NotFound(f"no trace of {id_or_address} (traces are kept {kept}, for the newest {settings.trace_max_emails} emails)")
    if as_json:
        click.echo(json.dumps([_as_dict(w) for w in found]))
        return
    for whereabouts in found:
        click.echo(f"{whereabouts.message_id}: {whereabouts.now}")
        for event in whereabouts.events:
            click.echo(f"  {_time(event.at)}  {event.what:<10}  {_detail(event.what, event.detail)}".rstrip())


def _find(store: Trace, id_or_address: str) -> list[Whereabouts]:
    if "@" in id_or_address:
        return store.sent_to(id_or_address)
    one = store.of(id_or_address)
    return [one] if one else []


def _detail(what: str, detail: str) -> str:
    if what == "retry":
        due, _, why = detail.partition(" ")
        return f"due {_time(int(due) / 1000)}  {why}"
    return detail


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _as_dict(whereabouts: Whereabouts) -> dict[str, Any]:
    return {
        "id": whereabouts.message_id,
        "now": whereabouts.now,
        "events": [{"at": e.at, "event": e.what, "detail": e.detail} for e in whereabouts.events],
    }
