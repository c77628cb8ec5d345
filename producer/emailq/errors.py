"""The exceptions emailq raises, each saying what the caller must do about it."""


class EmailqError(Exception):
    """Base of every error emailq raises on purpose; its message is one line for a user."""


class ConfigError(EmailqError):
    """A setting is missing or invalid: fix the named `EMAILQ_*` variable and start again."""


class InvalidMessage(EmailqError):
    """The email is not acceptable: nothing was enqueued; correct the input and send again.

    `problems` lists every fault found, each naming the field (and, for a file, the line).
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class QueueUnavailable(EmailqError):
    """Redis could not take the email(s); retry later or check `EMAILQ_REDIS_URL`.

    `maybe_enqueued` False: nothing was sent to Redis, so nothing was enqueued. True: the
    write was sent but its answer never came (a timeout, a dropped connection), so the
    email(s) may be on the queue; sending again may deliver twice. `ids` are the ids the
    email(s) were given (queued under them if they did land).
    """

    def __init__(self, message: str, *, maybe_enqueued: bool = False, ids: list[str] | None = None):
        self.maybe_enqueued = maybe_enqueued
        self.ids = list(ids or [])
        super().__init__(message)


class IdempotencyConflict(EmailqError):
    """The idempotency key was already used for a different email: nothing was enqueued;
    use a fresh key for a new email."""


class NotFound(EmailqError):
    """Nothing of that id (or address) is there: no dead letter, or no trace within
    EMAILQ_TRACE_SECONDS; check the id."""
