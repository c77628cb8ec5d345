"""kombu's Redis transport, made safe against a worker killed at the wrong moment.

Two changes to how kombu's Redis channel consumes a queue:

- No message is lost between the pop and the bookkeeping. kombu pops with BRPOP, then
  records the message as unacked in a second command: a worker killed in between (the
  reply already in its socket) loses the message for good. Here the pop is a BLMOVE
  onto this consumer's own inbox list, and the unacked record and the removal from the
  inbox are one MULTI. Inboxes of consumers that stopped refreshing their `alive` key are
  moved back onto their queue by any live worker's periodic sweep.
- No worker dies on a bad item. An item that is not JSON, or not a kombu message, goes to
  the DLQ as `malformed` and the worker carries on.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str

INBOXES = "_emailq.inboxes"  # set of JSON [queue, inbox key, alive key]


def _park(raw: str, detail: str) -> None:
    from emailq.worker.consumer import dead_letter_raw

    dead_letter_raw(raw, detail)


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        raw = self.channel._popped
        if raw is None:
            return super().append(message, delivery_tag)
        inbox, item = raw
        with self.pipe_or_acquire() as pipe:
            # Unacked record and removal from the inbox in one transaction: the message
            # is always in exactly one of them.
            pipe.multi()
            pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
            pipe.hset(
                self.unacked_key,
                delivery_tag,
                json.dumps([message._raw, message.delivery_info["exchange"], message.delivery_info["routing_key"]]),
            )
            pipe.lrem(inbox, 1, item)
            pipe.execute()
        # kombu's own bookkeeping in memory, skipping its Redis write done above.
        virtual.QoS.append(self, message, delivery_tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        self.channel.sweep_inboxes()
        super().restore_visible(*args, **kwargs)


class Channel(kombu_redis.Channel):
    QoS = QoS
    # emailq sends no priorities; one list per queue lets the pop be a BLMOVE.
    priority_steps = [0]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._consumer_id = uuid.uuid4().hex
        self._alive_key = f"_emailq.alive:{self._consumer_id}"
        self._inboxes: dict[str, str] = {}  # inbox key -> its member of INBOXES
        self._popped: tuple[str, bytes] | None = None
        self._brpop_queue: str | None = None
        # Refreshed on every restore tick; a few missed ticks mean the consumer is dead,
        # so its inbox comes back about as fast as its unacked messages do.
        self._alive_seconds = max(10, 3 * int(self.unacked_restore_interval))

    def _inbox(self, queue: str) -> str:
        inbox = f"{queue}:inbox:{self._consumer_id}"
        if inbox not in self._inboxes:
            member = json.dumps([queue, inbox, self._alive_key])
            with self.conn_or_acquire() as client:
                client.set(self._alive_key, 1, ex=self._alive_seconds)
                client.sadd(INBOXES, member)
            self._inboxes[inbox] = member
        return inbox

    def _brpop_start(self, timeout: Any = None) -> None:
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        queue = queues[0]
        self._queue_cycle.rotate(queue)  # several queues take turns, one blocking pop each
        self._brpop_queue = queue
        inbox = self._inbox(queue)
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command("BLMOVE", queue, inbox, "RIGHT", "LEFT", timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not item:
                raise Empty()
            queue = self._brpop_queue
            inbox = self._inbox(queue)
            try:
                message = json.loads(bytes_to_str(item))
            except json.JSONDecodeError as error:
                _park(error.doc, f"not JSON: {error.msg}")
                self.client.lrem(inbox, 1, item)
                return True
            self._popped = (inbox, item)
            try:
                self.connection._deliver(message, queue)
            finally:
                self._popped = None
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _get(self, queue: str) -> Any:
        try:
            return super()._get(queue)
        except json.JSONDecodeError as error:
            _park(error.doc, f"not JSON: {error.msg}")
            raise Empty() from None

    def sweep_inboxes(self) -> None:
        """Refresh this consumer's `alive` key; move dead consumers' inboxes back."""
        with self.conn_or_acquire() as client:
            if self._inboxes:
                client.set(self._alive_key, 1, ex=self._alive_seconds)
                # Again each time: a consumer stalled past its key's expiry was swept and
                # unregistered, and a Redis restored without this set forgot it.
                client.sadd(INBOXES, *self._inboxes.values())
            for member in client.smembers(INBOXES):
                queue, inbox, alive = json.loads(member)
                if client.exists(alive):
                    continue
                while client.lmove(inbox, queue, "RIGHT", "RIGHT") is not None:
                    pass
                client.srem(INBOXES, member)


class Transport(kombu_redis.Transport):
    Channel = Channel

    def _deliver(self, message: Any, queue: str | None) -> None:
        if not (
            isinstance(message, dict)
            and isinstance(message.get("properties"), dict)
            and isinstance(message.get("headers", {}), dict)
            and "body" in message
        ):
            _park(json.dumps(message), "not a kombu message")
            self._drop_popped()
            return
        super()._deliver(message, queue)

    def _drop_popped(self) -> None:
        for channel in self.channels:
            if channel._popped is not None:
                inbox, item = channel._popped
                with channel.conn_or_acquire() as client:
                    client.lrem(inbox, 1, item)
