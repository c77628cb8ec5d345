"""The error tree drawn in `emailq.worker.delivery.errors`' docstring is the one the code has."""

from __future__ import annotations

import importlib
import re

import pytest

from emailq.errors import EmailqError
from emailq.worker.delivery import errors

# "    │   ├── ConnectError         refused, ..." or "    ├── ConfigError    (emailq.errors) ..."
_NODE = re.compile(r"^(?P<indent>[ │]*)(?:[├└]── )?(?P<name>[A-Z]\w+)\s+(?:\((?P<module>emailq[\w.]*)\))?")


def drawn() -> list[tuple[str, str, str | None]]:
    """(name, module, parent name) for every class in the drawing, in order."""
    lines = errors.__doc__.split("\n\n")[1].splitlines()
    nodes: list[tuple[str, str, str | None]] = []
    parents: dict[int, str] = {}
    for line in lines:
        match = _NODE.match(line)
        if not match:
            continue  # a description running onto a second line
        depth = match.start("name") // 4  # each level is drawn four columns further in
        parents[depth] = match["name"]
        parent = parents.get(depth - 1)
        nodes.append((match["name"], match["module"] or errors.__name__, parent))
    return nodes


def resolve(name: str, module: str) -> type:
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("module", ["emailq.worker.delivery.errors", "emailq.errors"])
def test_the_drawing_names_every_error_of_both_error_modules(module):
    named = {name for name, where, _ in drawn() if where == module}
    defined = {
        name
        for name, value in vars(importlib.import_module(module)).items()
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == module
    }
    assert named == defined


def test_every_drawn_error_derives_from_its_parent_in_the_drawing():
    modules = {name: module for name, module, _ in drawn()}
    for name, module, parent in drawn():
        if name == "DeadLettered":
            continue  # below, until its module derives it from EmailqError
        cls = resolve(name, module)
        assert issubclass(cls, EmailqError), name
        if parent is not None:
            assert issubclass(cls, resolve(parent, modules[parent])), f"{name} under {parent}"


def test_dead_lettered_is_an_emailq_error():
    assert issubclass(resolve("DeadLettered", "emailq.worker.celery_glue.tasks"), EmailqError)
