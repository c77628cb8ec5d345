"""The emailq worker: the Celery app, delivery, the dead-letter queue, the `emailq` command.

`app` is imported on first use, so that the operator commands that need no Celery (`emailq
dlq`, `emailq serve`) run without it, while `celery -A emailq.worker` still finds it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emailq.worker.celery_glue.app import app
    from emailq.worker.places.dead_letters import DeadLetter, DeadLetters

__all__ = ["DeadLetter", "DeadLetters", "app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from emailq.worker.celery_glue.app import app

        return app
    if name in ("DeadLetter", "DeadLetters"):
        from emailq.worker.places import dead_letters

        return getattr(dead_letters, name)
    raise AttributeError(f"module 'emailq.worker' has no attribute {name!r}")
