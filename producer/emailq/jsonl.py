"""Reading many emails from JSONL: one Logto `SendMessageData` per line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from emailq.errors import InvalidMessage
from emailq.message import Email


def read_emails(lines: Iterable[bytes], validate: Callable[[Any], Email]) -> tuple[list[Email], list[str]]:
    """Every email in `lines`, and a problem for every bad line ("line N: ..."); blank
    lines are skipped. The caller enqueues nothing unless the problem list is empty."""
    emails: list[Email] = []
    problems: list[str] = []
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"line {number}: not valid UTF-8")
            continue
        if not text.strip():
            continue
        try:
            emails.append(validate(json.loads(text)))
        except json.JSONDecodeError as error:
            problems.append(f"line {number}: not JSON ({error.msg} at column {error.colno})")
        except RecursionError:
            problems.append(f"line {number}: JSON nested too deeply")
        except InvalidMessage as error:
            problems.extend(f"line {number}: {problem}" for problem in error.problems)
    return emails, problems
