"""The dead letters page, inside Flower: list and filter the DLQ, show one entry with its
attempts, reveal its codes on purpose, replay or purge a selection or everything that
matches a filter, and follow that action's progress.

Each handler is a small action over the same classes `emailq dlq` uses (`DeadLetters`,
plus `DeadLetterQuery` and `BulkActions`), as Sidekiq's Web UI is over its API, with one
template each, as Flower's are. Reads are GETs; every change (and a reveal) is a POST
checked by `PageHandler`'s CSRF token, and logged with the operator's name and a count.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any

import tornado.web
from tornado.web import url

from emailq.worker.commands.bulk_actions import ACTIONS, Busy
from emailq.worker.commands.flower_pages import ensure_indexes
from emailq.worker.commands.page_handler import PageHandler, Pages, log
from emailq.worker.commands.trace_search import TraceSearch
from emailq.worker.places.dead_letter_query import Cursor, Filter
from emailq.worker.places.dead_letters import REASONS, DeadLetter

PAGE_SIZE = 50
MAX_SELECTED = 1000  # ids one POST may carry (a page shows 50)


class DeadLettersList(PageHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        flt = filter_from(self.get_query_argument)
        after = _cursor(self.get_query_argument("after", ""))
        pages = self.pages

        def read() -> dict[str, Any]:
            entries, next_after = pages.query.page(flt, after, PAGE_SIZE)
            reasons, types, total = pages.query.index.counts_and_total()
            indexed = pages.query.index.ready()
            if not indexed or sum(reasons.values()) != total:
                ensure_indexes(pages.query.index, out_of_step=indexed)
            return {
                "entries": entries,
                "next_after": next_after,
                "matching": pages.query.count(flt),
                "total": total,
                "reason_counts": reasons,
                "type_counts": types,
                "indexed": indexed,
                "progress": pages.bulk.progress(),
            }

        self.render("dead_letters.html", active_tab="dead_letters", flt=flt, query=filter_query(flt), reasons=REASONS, **await self.blocking(read))


class DeadLetterEntry(PageHandler):
    @tornado.web.authenticated
    async def get(self, message_id: str) -> None:
        await self.show(message_id, reveal=False)

    @tornado.web.authenticated
    async def post(self, message_id: str) -> None:
        # Only a reveal comes here: a POST, so it is deliberate, CSRF-checked and logged.
        log.info("operator %s revealed the codes and links of 1 dead letter (id %s)", self.operator, message_id)
        await self.show(message_id, reveal=True)

    async def show(self, message_id: str, reveal: bool) -> None:
        store = self.pages.store
        row = await self.blocking(store.redis.hget, store.key, message_id)
        shown = None if row is None else _entry(row).public(reveal)
        self.set_status(200 if shown else 404)
        self.render("dead_letter.html", active_tab="dead_letters", message_id=message_id, entry=shown, revealed=reveal)


class ConfirmAction(PageHandler):
    """Says how many entries an action will touch, and asks to confirm it."""

    @tornado.web.authenticated
    async def get(self) -> None:  # everything matching a filter (from a link)
        action = self.action(self.get_query_argument)
        flt = filter_from(self.get_query_argument)
        count = await self.blocking(self.pages.query.count, flt)
        self.render_confirm(action, count, filter_query(flt), [])

    @tornado.web.authenticated
    async def post(self) -> None:  # the selected entries (a form of checkboxes)
        action = self.action(self.get_body_argument)
        ids = self.get_body_arguments("id")[:MAX_SELECTED]
        if not ids:
            raise tornado.web.HTTPError(400, "select one or more entries first")
        scores = await self.blocking(self.pages.client.zmscore, self.pages.store.index_key, ids)
        present = [i for i, score in zip(ids, scores) if score is not None]
        self.render_confirm(action, len(present), None, present)

    def render_confirm(self, action: str, count: int, query: dict[str, str] | None, ids: list[str]) -> None:
        self.render("dead_letters_confirm.html", active_tab="dead_letters", action=action, count=count, query=query, ids=ids)

    @staticmethod
    def action(argument: Any) -> str:
        action = argument("action", "")
        if action not in ACTIONS:
            raise tornado.web.HTTPError(400, "action must be replay or purge")
        return str(action)


class StartAction(PageHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        action = ConfirmAction.action(self.get_body_argument)
        ids = self.get_body_arguments("id")[:MAX_SELECTED]
        flt = None if ids else filter_from(self.get_body_argument)
        try:
            await self.blocking(lambda: self.pages.bulk.start(action, self.operator, flt, ids or None))
        except Busy as busy:
            self.set_status(409)
            self.render("dead_letters_action.html", active_tab="dead_letters", refused=str(busy))
            return
        self.redirect(self.reverse_url("dead_letters_action"), status=303)


class ActionProgress(PageHandler):
    @tornado.web.authenticated
    def get(self) -> None:
        self.render("dead_letters_action.html", active_tab="dead_letters", refused=None)


class ActionProgressJson(PageHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        self.write(await self.blocking(self.pages.bulk.progress))


def routes(pages: Pages) -> list[url]:
    """Named routes (so Flower's --url_prefix rewrites them, kwargs kept)."""
    kwargs = {"pages": pages}
    return [
        url(r"/dead-letters", DeadLettersList, kwargs, name="dead_letters"),
        url(r"/dead-letters/entry/([^/]+)", DeadLetterEntry, kwargs, name="dead_letter"),
        url(r"/dead-letters/confirm", ConfirmAction, kwargs, name="dead_letters_confirm"),
        url(r"/dead-letters/actions", StartAction, kwargs, name="dead_letters_start"),
        url(r"/dead-letters/action", ActionProgress, kwargs, name="dead_letters_action"),
        url(r"/dead-letters/action/progress\.json", ActionProgressJson, kwargs, name="dead_letters_progress"),
        url(r"/dead-letters/search", TraceSearch, kwargs, name="trace_search"),
    ]


def filter_from(argument: Any) -> Filter:
    """The filter in the request's arguments (a query string or a form)."""
    reason = argument("reason", "") or None
    if reason is not None and reason not in REASONS:
        raise tornado.web.HTTPError(400, f"unknown reason {reason!r}")
    type_ = argument("type", None)
    status = argument("status", "").strip()
    if status and not status.isdigit():
        raise tornado.web.HTTPError(400, "status must be an HTTP status code")
    return Filter(
        reason=reason,
        type=None if type_ in (None, "*") else type_,
        status=int(status) if status else None,
        recipient=argument("recipient", "").strip() or None,
        since=_time(argument("since", "")),
        until=_time(argument("until", ""), end_of_minute=True),
    )


def filter_query(flt: Filter) -> dict[str, str]:
    """The filter as form fields (to repeat it in links and hidden inputs)."""
    return {
        "reason": flt.reason or "",
        "type": "*" if flt.type is None else flt.type,
        "status": "" if flt.status is None else str(flt.status),
        "recipient": flt.recipient or "",
        "since": _minute(flt.since),
        "until": _minute(flt.until),
    }


def _entry(row: bytes | str) -> DeadLetter:
    return DeadLetter(**json.loads(row))


def _time(text: str, end_of_minute: bool = False) -> float | None:
    """A datetime-local field's value (minutes, read as UTC) as a timestamp."""
    if not text.strip():
        return None
    try:
        moment = datetime.fromisoformat(text.strip()).replace(tzinfo=timezone.utc)
    except ValueError:
        raise tornado.web.HTTPError(400, "since and until are times like 2026-12-02T08:30 (UTC)") from None
    return moment.timestamp() + (59.999999 if end_of_minute else 0)


def _minute(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(math.floor(timestamp), timezone.utc).strftime("%Y-%m-%dT%H:%M")


def _cursor(text: str) -> Cursor | None:
    score, _, message_id = text.partition(":")
    try:
        return (float(score), message_id) if message_id else None
    except ValueError:
        raise tornado.web.HTTPError(400, "bad page cursor") from None
