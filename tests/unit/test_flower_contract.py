"""The Flower internals that emailq's pages rely on (emailq.worker.commands.flower_pages,
page_handler): a Flower release that renames or reshapes one of them fails here, in
seconds, before the browser tests say why less clearly. pyproject pins flower>=2.2,<2.3."""

from __future__ import annotations

import inspect
from pathlib import Path

import flower
import flower.app
import flower.command
import flower.urls
import tornado.template
import tornado.web
from flower.views import BaseHandler
from flower.views.error import NotFoundErrorHandler

from emailq.worker.commands.flower_pages import NAV_ANCHOR, TEMPLATES, Templates, with_dead_letters_link
from emailq.worker.commands.page_handler import PageHandler

FLOWER_TEMPLATES = Path(flower.urls.settings["template_path"])


def test_flower_is_the_minor_release_the_pages_were_built_on():
    assert flower.VERSION[:2] == (2, 2)


def test_flower_builds_its_app_from_the_handlers_list_emailq_extends():
    # The same list object: an insertion into flower.urls.handlers is what Flower serves.
    assert flower.app.default_handlers is flower.urls.handlers
    last = flower.urls.handlers[-1]
    assert isinstance(last, tuple) and last[0] == r".*" and last[1] is NotFoundErrorHandler
    assert "handlers" in inspect.getsource(flower.app.Flower.__init__)


def test_flower_passes_its_settings_dict_to_tornado():
    # `flower` (the command) builds Flower(capp, options, **flower.urls.settings).
    assert flower.command.settings is flower.urls.settings
    assert "**settings" in inspect.getsource(flower.command.flower.callback)
    assert {"template_path", "cookie_secret", "xsrf_cookies"} <= set(flower.urls.settings)
    assert "kwargs" in inspect.signature(flower.app.Flower.__init__).parameters


def test_a_url_prefix_keeps_named_routes_their_kwargs():
    route = tornado.web.url(r"/dead-letters", PageHandler, {"pages": None}, name="dead_letters")
    rewritten = flower.app.rewrite_handler(route, "/flower")
    assert rewritten.regex.pattern.startswith("/flower/dead-letters")
    assert rewritten.kwargs == {"pages": None} and rewritten.name == "dead_letters"


def test_the_base_handler_does_auth_and_skips_the_token_under_basic_auth():
    for name in ("get_current_user", "check_xsrf_cookie", "render", "write_error"):
        assert callable(getattr(BaseHandler, name)), name
    assert issubclass(PageHandler, BaseHandler)
    auth = inspect.getsource(BaseHandler.get_current_user)
    assert "basic_auth" in auth and "Authorization" in auth and "compare_digest" in auth
    # If Flower starts checking its own token under basic auth, our forms send it already
    # (xsrf_form_html); this test then only needs its expectation updated.
    assert "if not options.auth:" in inspect.getsource(BaseHandler.check_xsrf_cookie)


def test_tornado_logs_a_request_by_the_summary_the_pages_shorten():
    # PageHandler._request_summary drops the query string (it may hold an address): every
    # line Tornado writes about a request must come from it.
    assert "handler._request_summary()" in inspect.getsource(tornado.web.Application.log_request)
    assert "self._request_summary()" in inspect.getsource(tornado.web.RequestHandler.log_exception)
    assert "_request_summary" in vars(PageHandler) and "log_exception" in vars(PageHandler)


def test_flower_templates_emailq_extends_are_there():
    for name in ("base.html", "navbar.html", "404.html"):
        assert (FLOWER_TEMPLATES / name).is_file(), name
    base = (FLOWER_TEMPLATES / "base.html").read_text()
    for block in ("title", "navbar", "container", "extra_scripts"):
        assert "{% block " + block + " %}" in base, block


def test_the_navbar_gets_the_dead_letters_link_after_broker():
    navbar = (FLOWER_TEMPLATES / "navbar.html").read_text()
    assert NAV_ANCHOR in navbar
    patched = with_dead_letters_link(navbar)
    assert patched.index("reverse_url('dead_letters')") > patched.index(NAV_ANCHOR)
    tornado.template.Template(patched, name="navbar.html")  # still a valid template


def test_every_emailq_template_compiles_over_flowers():
    loader = Templates(str(FLOWER_TEMPLATES))
    names = sorted(p.name for p in TEMPLATES.glob("*.html"))
    assert names == [
        "dead_letter.html",
        "dead_letters.html",
        "dead_letters_action.html",
        "dead_letters_confirm.html",
        "trace_search.html",
        "trace_search_form.html",
    ]
    for name in [*names, "navbar.html", "broker.html"]:
        loader.load(name)
