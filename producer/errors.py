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
    """Redis could not be reached in time: nothing was enqueued; retry later or check
    `EMAILQ_REDIS_URL`."""


class NotFound(EmailqError):
    """No dead-lettered email has that id."""
