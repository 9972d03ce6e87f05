"""Reading and writing test topics on the real broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka.structs import ConsumerRecord

from adapters import kafka, partition_reader, topics, wire
from adapters.settings import Settings
from tests.factories import encode


async def produce(
    settings: Settings,
    records: Iterable[tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes | None]]]],
    topic: str | None = None,
) -> int:
    await topics.ensure_topics(settings)
    producer = kafka.new_producer(settings, linger_ms=10)
    count = 0
    async with kafka.started(producer):
        futures = []
        for key, value, headers in records:
            futures.append(await producer.send(topic or settings.topic_events, value=value, key=key, headers=headers or None))
            count += 1
        for future in futures:
            await future
    return count


async def produce_events(settings: Settings, events: Iterable[dict[str, Any]]) -> int:
    return await produce(settings, ((*encode(ev), []) for ev in events))


async def read_topic(
    settings: Settings, topic: str, *, read_committed: bool = True, timeout: float = 30.0
) -> list[ConsumerRecord]:
    """Every record of ``topic`` up to its current end, in partition order."""
    out: list[ConsumerRecord] = []
    async for records in partition_reader.read_to_end(settings, topic, read_committed=read_committed, timeout=timeout):
        out.extend(records)
    return out


def values(records: Iterable[ConsumerRecord]) -> list[Any]:
    """The JSON values of ``records`` (objects mostly; a waiting room's ``d:`` marks are ``1``); of a
    delivery CloudEvent (``invoice.deliveries``), its data: the delivery record."""
    out = [json.loads(r.value) for r in records if r.value is not None]
    return [v["data"] if isinstance(v, dict) and v.get("type") == wire.DELIVERY_EVENT_TYPE else v for v in out]


async def wait_for_count(
    settings: Settings, topic: str, count: int, *, timeout: float = 60.0, key: Any = None
) -> list[ConsumerRecord]:
    """Poll ``topic`` (read_committed) until it holds at least ``count`` records."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        records = await read_topic(settings, topic)
        if key is not None:
            records = [r for r in records if key(r)]
        if len(records) >= count or loop.time() > deadline:
            return records
        await asyncio.sleep(0.5)
