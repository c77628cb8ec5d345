"""emailq's pages in the Flower process that `emailq flower` runs: same origin, same auth.

Flower builds its Tornado app from the list `flower.urls.handlers` and the settings
dict `flower.urls.settings` when it starts; `install` adds to both before that:

- the dead letters page's routes (its trace search's too), inserted before Flower's catch-all 404 route;
- a template loader (Tornado's `template_loader` setting, which every handler then
  uses): emailq's templates (`templates/`, package data) beside Flower's, and Flower's
  `navbar.html` with one more link, "Dead letters", after its Broker link.

These are Flower internals: pyproject pins Flower to 2.2.x and
tests/unit/test_flower_contract.py checks each of them.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import tornado.template
from tornado.ioloop import IOLoop

from emailq.enqueue import connect
from emailq.settings import Settings
from emailq.store.keys import Keys
from emailq.worker.places.dead_letter_index import DeadLetterIndex

log = logging.getLogger("emailq.flower")

TEMPLATES = Path(__file__).with_name("templates")
NAV_ANCHOR = "reverse_url('broker')"  # the link the "Dead letters" link follows
NAV_ITEM = """
        <li class="nav-item">
          <a class="nav-link{% if active_tab == 'dead_letters' %} active{% end %}"
            href="{{ reverse_url('dead_letters') }}"
            {% if active_tab == 'dead_letters' %}aria-current="page"{% end %}>Dead letters</a>
        </li>"""


def with_dead_letters_link(navbar: str) -> str:
    """Flower's navbar with the Dead letters link after its Broker link."""
    anchor = navbar.index(NAV_ANCHOR)
    end = navbar.index("</li>", anchor) + len("</li>")
    return navbar[:end] + NAV_ITEM + navbar[end:]


class Templates(tornado.template.Loader):
    """Flower's templates, emailq's beside them (one namespace, so emailq's extend
    Flower's base.html), and Flower's navbar with emailq's link."""

    def _create_template(self, name: str) -> tornado.template.Template:
        own = TEMPLATES / name
        path = own if own.is_file() else Path(self.root) / name
        text = path.read_text(encoding="utf-8")
        if name == "navbar.html" and path != own:
            text = with_dead_letters_link(text)
        return tornado.template.Template(text, name=name, loader=self)


def install(settings: Settings) -> None:
    """Add the dead letters page to the Flower about to start in this process."""
    from flower.urls import handlers
    from flower.urls import settings as app_settings

    from emailq.worker.commands.bulk_actions import BulkActions
    from emailq.worker.commands.dead_letters_page import routes
    from emailq.worker.commands.dlq import dead_letters
    from emailq.store.trace import Trace
    from emailq.worker.commands.page_handler import Pages
    from emailq.worker.places.dead_letter_query import DeadLetterQuery

    client = connect(settings, timeout=5)
    keys = Keys.of(settings)
    store = dead_letters(client)
    query = DeadLetterQuery(client, keys)
    pages = Pages(settings, client, store, query, BulkActions(store, query, settings), Trace(client, keys))
    catch_all = next(i for i, h in enumerate(handlers) if isinstance(h, tuple) and h[0] == r".*")
    handlers[catch_all:catch_all] = routes(pages)
    app_settings["template_loader"] = Templates(app_settings["template_path"])
    # Once Flower's loop runs (its logging is set up by then, so the build's lines show).
    IOLoop.current().add_callback(ensure_indexes, query.index)


_indexing: threading.Thread | None = None
_last_rebuild = 0.0
REBUILD_EVERY_SECONDS = 600  # at most this often, should entries ever fail to index


def ensure_indexes(index: DeadLetterIndex, out_of_step: bool = False) -> None:
    """Index the DLQ on a thread unless it is being indexed here: at start, and when
    the page finds the indexes not ready (a builder in another process died, Redis was
    down) or `out_of_step` (an older emailq moved entries since they were built)."""
    global _indexing, _last_rebuild
    if _indexing is not None and _indexing.is_alive():
        return
    if out_of_step:
        if time.monotonic() - _last_rebuild < REBUILD_EVERY_SECONDS:
            return
        _last_rebuild = time.monotonic()
    _indexing = threading.Thread(target=_build_indexes, args=(index, out_of_step), name="emailq-dlq-index", daemon=True)
    _indexing.start()


def _build_indexes(index: DeadLetterIndex, out_of_step: bool) -> None:
    try:
        if out_of_step:
            log.warning("the dead-letter queue's indexes are out of step with it (an older emailq moved entries?): rebuilding them")
            index.rebuild()
        elif not index.ready():
            log.info("indexing the dead-letter queue by reason and type (once)")
            index.build()
    except Exception as error:  # Redis down: the page scans instead, and says so
        log.warning("could not index the dead-letter queue (%s); filters scan until it is", type(error).__name__)
