"""`emailq trace ID|ADDRESS`: where an email is now, and every move and attempt it had,
from its trace (`emailq.store.trace`, which also words each fact: the dead letters page's
search shows the same)."""

from __future__ import annotations

import json
from typing import Any

import click

from emailq.enqueue import connect
from emailq.errors import NotFound
from emailq.settings import get_settings
from emailq.store.keys import Keys
from emailq.store.trace import Trace, TraceLimits, Whereabouts


@click.command()
@click.argument("id_or_address")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def trace(id_or_address: str, as_json: bool) -> None:
    """Where an email is now and every attempt it had (kept EMAILQ_TRACE_SECONDS).

    Give a message id, or an address for every email sent to it (newest first)."""
    settings = get_settings()
    found = Trace(connect(settings, timeout=5), Keys.of(settings)).find(id_or_address)
    if not found:
        raise NotFound(f"no trace of {id_or_address} ({TraceLimits.of(settings).kept})")
    if as_json:
        click.echo(json.dumps([_as_dict(w) for w in found]))
        return
    for whereabouts in found:
        click.echo(f"{whereabouts.message_id}: {whereabouts.now}")
        for event in whereabouts.events:
            click.echo(f"  {event.when}  {event.what:<10}  {event.said}".rstrip())


def _as_dict(whereabouts: Whereabouts) -> dict[str, Any]:
    return {
        "id": whereabouts.message_id,
        "now": whereabouts.now,
        "events": [{"at": e.at, "event": e.what, "detail": e.detail} for e in whereabouts.events],
    }
