"""The base of emailq's pages inside Flower: Flower's own handler (so its basic auth or
OAuth applies unchanged), plus the operator's name and a CSRF check of emailq's own.

Flower checks no CSRF token under basic auth (its `check_xsrf_cookie` only compares
origins there), so every POST here also carries `_csrf`: an HMAC of the operator's user
name with Flower's cookie secret (random per process unless Flower's --cookie-secret
is set: a restart asks for a reload). A cross-site page cannot read it; a request
without it, or with another operator's, is refused with 403 before the handler runs.
Tornado checks it before the method's `@authenticated`, so the operator is read here
first: a request without credentials is a 401 either way.

A query string here can hold an address (a recipient filter, a search), so what Tornado
logs of a request (refusals, errors; every request under Flower's --debug) names its
path only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import redis
import tornado.web
from flower.views import BaseHandler

from emailq.settings import Settings
from emailq.store.trace import Trace
from emailq.worker.commands.bulk_actions import BulkActions
from emailq.worker.places.dead_letter_query import DeadLetterQuery
from emailq.worker.places.dead_letters import DeadLetters

log = logging.getLogger("emailq.flower")
T = TypeVar("T")


@dataclass
class Pages:
    """What every page handler works with, built once by `flower_pages.install`."""

    settings: Settings
    client: redis.Redis
    store: DeadLetters
    query: DeadLetterQuery
    bulk: BulkActions
    trace: Trace


class PageHandler(BaseHandler):
    def initialize(self, pages: Pages) -> None:
        self.pages = pages

    @property
    def operator(self) -> str:
        """Who is asking: the basic-auth user name, the OAuth user, or "anonymous" on a
        Flower without auth. Reading it authenticates (a 401 without credentials)."""
        user = self.current_user
        if not user:
            raise tornado.web.HTTPError(401)
        if self.application.options.basic_auth:
            # Flower's get_current_user accepted this header; only the name is kept.
            credentials = base64.b64decode(self.request.headers["Authorization"].split()[1]).decode()
            return credentials.partition(":")[0]
        return user if isinstance(user, str) else "anonymous"

    @property
    def csrf_token(self) -> str:
        secret = self.application.settings["cookie_secret"]
        secret = secret.encode() if isinstance(secret, str) else secret
        return hmac.new(secret, b"emailq-page-csrf\0" + self.operator.encode(), hashlib.sha256).hexdigest()

    def check_xsrf_cookie(self) -> None:
        super().check_xsrf_cookie()  # Flower's origin checks (and its own token under OAuth)
        sent = self.get_body_argument("_csrf", "") or self.request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(sent.encode(), self.csrf_token.encode()):
            log.warning("refused a POST to %s by %s without a valid CSRF token", self.request.path, self.operator)
            raise tornado.web.HTTPError(403, "CSRF token missing or wrong: reload the page and try again")

    def get_template_namespace(self) -> dict[str, Any]:
        namespace: dict[str, Any] = super().get_template_namespace()
        namespace["csrf_token"] = self.csrf_token
        namespace["operator"] = self.operator
        namespace["when"] = when
        return namespace

    def _request_summary(self) -> str:
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError):
            super().log_exception(typ, value, tb)  # one line, with the summary above
        else:  # Tornado's own line would add the request's repr, query string and all
            log.error("uncaught exception in %s", self._request_summary(), exc_info=(typ, value, tb))

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on Flower's thread pool: Redis round trips never stall its loop."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def when(timestamp: float | None) -> str:
    """A time as the pages show it: UTC, to the second."""
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
