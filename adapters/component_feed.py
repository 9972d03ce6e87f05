"""The component topic, followed by every deliverer instance (third-party platform mode).

The webhook writes WeChat's component pushes to one compacted topic
(``INVOICE_SM_TOPIC_COMPONENT``, ``adapters.wire.ComponentRecord``): the newest
``component_verify_ticket`` keyed by the component appid, each authorizer's
latest ``authorized``/``updateauthorized``/``unauthorized`` keyed by
``component_appid/authorizer_appid``. Every instance must see all of it, so
this reader joins no consumer group: it assigns itself every partition,
reads from the beginning (compaction keeps that short) and keeps following.

What it applies to the ``ComponentTokenProvider``:

- a ticket: ``set_verify_ticket`` when it is at least as new (``CreateTime``)
  as the newest applied, so a stale record (a webhook instance that
  published late) never replaces a fresher ticket; the next
  ``component_access_token`` refresh uses it, on every instance, for as long
  as WeChat keeps pushing (a ticket lives 12 hours; WeChat pushes a new one
  every 10 minutes);
- ``authorized``/``updateauthorized``: ``authorization_changed`` (served
  again; the next call fetches a fresh token);
- ``unauthorized``: ``revoke_authorizer``; from then on ``get`` for that
  authorizer raises ``AuthorizerUnauthorizedError`` and the deliverer ends
  its pending deliveries ``failed`` with reason ``unauthorized``.

Per authorizer, likewise, an event older than the one applied is skipped.
Records of another component appid, and records that do not decode, are
skipped with a log line. A broker outage is logged and waited out: the
provider keeps its last ticket meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import msgspec
from aiokafka import TopicPartition

from adapters import kafka, topics
from adapters.logging import get_logger
from adapters.settings import Settings
from adapters.wire import ComponentRecord, decode_component_record
from domain.errors import BrokerError

__all__ = ["ComponentFeed", "ComponentFeedTarget", "follow_component_feed"]

log = get_logger("invoice_sm.component_feed")

_RETRY_S = 2.0


class ComponentFeedTarget(Protocol):
    """What the feed drives (``adapters.tokens.ComponentTokenProvider``)."""

    def set_verify_ticket(self, ticket: str) -> None: ...
    def revoke_authorizer(self, appid: str) -> None: ...
    def authorization_changed(self, appid: str) -> None: ...


class ComponentFeed:
    """Applies the component topic to ``target``; ``caught_up`` is set once
    everything that was on the topic at start has been applied."""

    def __init__(self, settings: Settings, target: ComponentFeedTarget, *, component_appid: str | None = None) -> None:
        self._settings = settings
        self._target = target
        self._component_appid = component_appid or settings.wechat_component_appid
        self.caught_up = asyncio.Event()
        self.applied = 0
        self._ticket_time = -1
        self._authorizer_times: dict[str, int] = {}
        # Next offset per partition, kept across reconnects: nothing is applied twice.
        self._positions: dict[TopicPartition, int] = {}

    def apply(self, record: ComponentRecord) -> bool:
        """Apply one record; ``False`` when it is skipped (another component, or older than what was applied)."""
        if record.component_appid != self._component_appid:
            return False
        if record.info_type == "component_verify_ticket":
            if record.ticket is None or record.create_time < self._ticket_time:
                return False
            self._ticket_time = record.create_time
            self._target.set_verify_ticket(record.ticket)
            log.info("wechat_component_ticket_applied", component_appid=record.component_appid, create_time=record.create_time)
        else:
            appid = record.authorizer_appid
            if appid is None or record.create_time < self._authorizer_times.get(appid, -1):
                return False
            self._authorizer_times[appid] = record.create_time
            if record.info_type == "unauthorized":
                self._target.revoke_authorizer(appid)
            else:
                self._target.authorization_changed(appid)
        self.applied += 1
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the topic until ``stop``; broker errors are waited out."""
        topic = self._settings.topic_component
        while not stop.is_set():
            try:
                await self._follow(topic, stop)
            except BrokerError as exc:
                log.warning("wechat_component_feed_broker_error", topic=topic, error=str(exc)[:200], retry_in_s=_RETRY_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), _RETRY_S)

    async def _follow(self, topic: str, stop: asyncio.Event) -> None:
        await topics.ensure_topics(self._settings, [topics.spec_of(self._settings, "component")])
        partitions = [TopicPartition(topic, p) for p in await kafka.partitions_of(self._settings, topic)]
        consumer = kafka.new_consumer(self._settings, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=200)
        async with kafka.started(consumer):
            consumer.assign(partitions)
            starts = {tp: self._positions.get(tp, 0) for tp in partitions}
            begins = await kafka.beginning_offsets(consumer, partitions)
            for tp in partitions:
                self._positions[tp] = max(starts[tp], begins[tp])
                consumer.seek(tp, self._positions[tp])
            ends = await kafka.end_offsets(consumer, partitions)
            self._check_caught_up(ends)
            while not stop.is_set():
                with kafka.broker_errors(f"read {topic}"):
                    batches = await consumer.getmany(timeout_ms=500, max_records=1000)
                for tp, records in batches.items():
                    for record in records:
                        self._apply_raw(record)
                        self._positions[tp] = record.offset + 1
                if not self.caught_up.is_set():
                    self._check_caught_up(ends)

    def _check_caught_up(self, ends: dict[TopicPartition, int]) -> None:
        if all(self._positions.get(tp, 0) >= end for tp, end in ends.items()):
            self.caught_up.set()
            log.info("wechat_component_feed_caught_up", applied=self.applied)

    def _apply_raw(self, record: object) -> None:
        value = getattr(record, "value", None)
        try:
            decoded = decode_component_record(value or b"")
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning(
                "wechat_component_record_unreadable",
                offset=getattr(record, "offset", None),
                partition=getattr(record, "partition", None),
            )
            return
        self.apply(decoded)


async def follow_component_feed(
    settings: Settings, provider: ComponentFeedTarget, stop: asyncio.Event, *, caught_up: asyncio.Event | None = None
) -> None:
    """Keep ``provider`` (a ``ComponentTokenProvider``) in step with the component
    topic until ``stop`` is set; ``caught_up`` (optional) is set once the
    topic's content at start is applied (the deliverer may wait for it before
    its first delivery, so it never starts with an expired configured ticket)."""
    feed = ComponentFeed(settings, provider)
    if caught_up is not None:
        feed.caught_up = caught_up
    await feed.run(stop)
