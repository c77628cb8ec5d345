"""The dead letters page's "where is my email" search: `emailq trace ID|ADDRESS` in the
browser, for any email enqueued in the last EMAILQ_TRACE_SECONDS, read from the same
trace (`emailq.store.trace`, which words each fact for both).

A GET (it changes nothing), behind Flower's auth like every page. What the operator typed
goes back to that operator's page only: `PageHandler` keeps query strings out of the log,
and the answer is neither cached nor sent on as a referrer.
"""

from __future__ import annotations

import tornado.web

from emailq.store.trace import TraceLimits
from emailq.worker.commands.page_handler import PageHandler

LONGEST_QUERY = 320  # an address is at most 254 characters; an id far less
MOST_SHOWN = 100  # emails to one address on one page; `emailq trace ADDRESS` lists them all


class TraceSearch(PageHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        asked = self.get_query_argument("q", "").strip()
        if len(asked) > LONGEST_QUERY:
            raise tornado.web.HTTPError(400, "give one message id or one address")
        found = await self.blocking(self.pages.trace.find, asked, MOST_SHOWN) if asked else []
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_status(200 if found or not asked else 404)
        kept = TraceLimits.of(self.pages.settings).kept
        self.render("trace_search.html", active_tab="dead_letters", asked=asked, found=found, kept=kept, most_shown=MOST_SHOWN)
