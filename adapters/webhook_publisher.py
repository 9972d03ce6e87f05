"""Kafka side of the webhook: one idempotent producer (acks=all) for every push.

``publish`` returns only once the broker acknowledged the record, so the
webhook answers WeChat ``success`` only for what is on the topic. The
producer is not transactional: a push is one record, and a retry that lands
twice (a timeout after the broker took it) carries the same CloudEvent id,
which the processor decides once.
"""

from __future__ import annotations

from aiokafka import AIOKafkaProducer

from adapters import kafka
from adapters.settings import Settings
from adapters.webhook_messages import EventRecord

__all__ = ["KafkaPushPublisher"]


class KafkaPushPublisher:
    """``publish(record)`` to the topic of ``record.topic_role`` (events or component)."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer | None = None) -> None:
        self._topics = {"events": settings.topic_events, "component": settings.topic_component}
        # A push waits for nobody: no linger. Kafka's own retries stay inside
        # the webhook's publish timeout (the server stops waiting at it).
        self._producer = producer or kafka.new_producer(
            settings, linger_ms=0, request_timeout_ms=int(settings.webhook_publish_timeout_s * 1000) + 1000
        )

    async def start(self) -> None:
        with kafka.broker_errors("start the webhook's producer"):
            await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(self, record: EventRecord) -> None:
        with kafka.broker_errors(f"publish a push to {self._topics[record.topic_role]}"):
            await self._producer.send_and_wait(
                self._topics[record.topic_role], value=record.value, key=record.key, headers=list(record.headers)
            )
