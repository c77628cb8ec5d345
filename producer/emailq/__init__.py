"""What a web app imports to send email through emailq (no worker code needed)."""

from emailq.enqueue import Producer, send_email, send_many
from emailq.enqueue_async import AsyncProducer, send_email_async, send_many_async
from emailq.errors import (
    ConfigError,
    EmailqError,
    InvalidMessage,
    NotFound,
    QueueUnavailable,
)
from emailq.message import TEMPLATE_TYPES, Email, Envelope
from emailq.settings import Settings, get_settings

__all__ = [
    "AsyncProducer",
    "TEMPLATE_TYPES",
    "ConfigError",
    "Email",
    "EmailqError",
    "Envelope",
    "InvalidMessage",
    "NotFound",
    "Producer",
    "QueueUnavailable",
    "Settings",
    "get_settings",
    "send_email",
    "send_email_async",
    "send_many",
    "send_many_async",
]
