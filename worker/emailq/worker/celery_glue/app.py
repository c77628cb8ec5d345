"""The Celery app, configured for at-least-once delivery on Redis.

Configuration is applied lazily (on first use), from the one settings object, so that
importing this module costs nothing and `celery -A emailq.worker` (or `emailq.worker.celery_glue.app`) works as users expect.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from emailq.store.redis_client import resolve_redis_url, sentinel_options, tls_options
from emailq.settings import SentinelUrl, Settings, get_settings

# Seconds to open a TCP connection to a Redis server or a Sentinel before trying the next.
CONNECT_TIMEOUT_SECONDS = 2

# The pool module too: it checks, as the worker starts, that no other pool was asked for.
app = Celery(
    "emailq",
    include=[
        "emailq.worker.celery_glue.tasks",
        "emailq.worker.celery_glue.pool",
        "emailq.worker.observability",
        "emailq.worker.celery_glue.endpoint_control",
    ],
)


def celery_config(settings: Settings) -> dict[str, Any]:
    url = resolve_redis_url(settings)
    return {
        **_broker(settings, url),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a Redis restart must not stop workers
        "task_default_queue": settings.queue,
        # Remote control (`emailq status` pings) and task events on exchanges of emailq's
        # own: Celery's defaults (`celery.pidbox`, `celeryev`) are shared with every other
        # Celery app on the same Redis, whose workers would answer emailq's pings.
        "control_exchange": settings.queue,
        "event_exchange": f"{settings.queue}.ev",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_ignore_result": True,
        "worker_prefetch_multiplier": 1,
        # Celery's threads pool (`pool.py`).
        "worker_pool": "emailq.worker.celery_glue.pool:ThreadPool",
        "worker_concurrency": settings.concurrency,
        # Flower still lists every dead letter: see worker.failure_events.
        "worker_send_task_events": settings.task_events == "all",
        "worker_consumer": "emailq.worker.celery_glue.consumer:Consumer",
        "worker_hijack_root_logger": True,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_serializer": "json",
        "accept_content": ["json"],
    }


def _broker(settings: Settings, url: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        # In-flight emails and their recovery are emailq's own (worker/emailq/worker/places/in_flight.py);
        # kombu's visibility timeout and unacked sweep are not used.
        "socket_keepalive": True,
        "health_check_interval": 10,
        # A dead server's address must cost one short wait, not the kernel's two minutes
        # of SYN retries: a worker tries again every RECONNECT_SECONDS (consumer.py).
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
    }
    if settings.redis_key_prefix:
        # kombu's own keys (bindings, remote-control replies) and the pub/sub channels of
        # events and remote control under emailq's prefix, so that deployments sharing a
        # database neither see each other's workers nor answer each other's pings.
        # emailq's own keys carry it already (`emailq.store.keys`); the channel sends them raw.
        options["global_keyprefix"] = settings.redis_key_prefix
    # TLS options for kombu (`rediss://`, or the Sentinel primary: kombu then picks its
    # TLS connection class, which emailq's Sentinel channel keeps); the same as every
    # other client's (`redis_client.tls_options`).
    use_ssl = tls_options(settings) if settings.redis_server_tls() else None
    sentinel = settings.redis_url
    if not isinstance(sentinel, SentinelUrl):
        return {
            "broker_url": url,
            "broker_transport": "emailq.worker.celery_glue.transport:Transport",
            "broker_use_ssl": use_ssl,
            "broker_transport_options": options,
        }
    # One Sentinel in the URL that kombu sees: given several (`a;b`), kombu's Connection
    # "fails over" to the next one on an error, with kombu's own transport in place of
    # emailq's. emailq's transport asks every Sentinel of the settings itself; `emailq
    # flower` (kombu's transport) sets the whole URL back (`flower_broker_url`) and reads
    # `sentinel_kwargs` (the Sentinels' password and TLS).
    options["master_name"] = settings.redis_sentinel_master
    options["sentinel_kwargs"] = sentinel_options(settings, {"socket_timeout": 5, "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS})
    return {
        "broker_url": sentinel.text.split(";")[0].strip(),
        "broker_transport": "emailq.worker.celery_glue.transport:SentinelTransport",
        "broker_use_ssl": use_ssl,
        "broker_transport_options": options,
    }


def flower_broker_url(settings: Settings) -> str:
    """The broker URL for kombu's own transport (Flower): on Sentinel, every Sentinel."""
    return resolve_redis_url(settings)


@app.on_configure.connect
def _configure(sender: Celery, **_: Any) -> None:
    sender.conf.update(celery_config(get_settings()))
