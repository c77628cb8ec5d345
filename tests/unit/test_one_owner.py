"""Every move between an email's places is written once: in `emailq.store.moves`, each
a `.lua` file that says what it moves, and the docs draw the same diagram as the code."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import emailq.store.moves as moves
from emailq.store.scripts import script

ROOT = Path(__file__).resolve().parents[2]
LUA = resources.files("emailq.store").joinpath("lua")


def _diagram(text: str) -> str:
    return text[text.index("```\n") : text.index("```\n", text.index("```\n") + 4)]


def test_the_guarantees_page_draws_the_places_exactly_as_the_owner_module_does() -> None:
    page = (ROOT / "docs" / "guarantees.md").read_text()
    block = page[page.index("<!-- places:begin -->") : page.index("<!-- places:end -->")]
    assert moves.__doc__ is not None
    assert _diagram(block) == _diagram(moves.__doc__)


def test_no_python_module_holds_lua_of_its_own() -> None:
    # A move written outside the owner is how copies drifted: every script is a .lua file.
    modules = [path for folder in ("producer", "worker") for path in (ROOT / folder).rglob("*.py")]
    offenders = [str(path.relative_to(ROOT)) for path in modules if "redis.call(" in path.read_text()]
    assert offenders == []


def test_every_script_says_what_it_moves_with_its_keys_and_arguments() -> None:
    for lua in sorted(LUA.iterdir(), key=lambda p: p.name):
        text = lua.read_text()
        header = "".join(line + "\n" for line in text.splitlines() if line.startswith("--"))
        if header.startswith("-- Library (included)"):
            assert re.search(r"^local function \w+", text, re.MULTILINE), lua.name
            continue
        name = lua.name.removesuffix(".lua")
        assert header.startswith(f"-- {name}: "), lua.name
        assert "KEYS" in header and ("ARGV" in header or name == "beat"), lua.name
        assert script(name).source.count(f"-- {name}: ") == 1


def test_every_move_back_onto_a_lane_goes_through_to_lane() -> None:
    for name in ("give_back", "reclaim", "move_due", "replay", "legacy_inbox_back", "legacy_unacked_back"):
        source = script(name).source
        assert source.count("local function to_lane(") == 1, name
        own = LUA.joinpath(f"{name}.lua").read_text()
        assert "to_lane(" in own and "'RPUSH'" not in own and "'LPUSH'" not in own and "LMOVE" not in own, name


def test_a_library_included_twice_is_defined_once() -> None:
    # replay includes dlq_index and to_lane, which includes wake.
    source = script("replay").source
    assert source.count("local function wake(") == 1
    assert source.count("local function index_entry(") == 1
