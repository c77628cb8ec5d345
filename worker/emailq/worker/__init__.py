"""The emailq worker: the Celery app, delivery, the dead-letter queue, the `emailq` command."""

from emailq.worker.celery_glue.app import app
from emailq.worker.places.dead_letters import DeadLetter, DeadLetters

__all__ = ["DeadLetter", "DeadLetters", "app"]
