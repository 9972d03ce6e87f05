"""Every codec Kafka has is written too (INVOICE_SM_KAFKA_COMPRESSION_TYPE):
what the processor writes compressed, an outside reader (librdkafka) reads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, TopicPartition

from adapters.settings import Settings
from tests.factories import random_stream
from tests.support.kafka_io import produce_events, wait_for_count
from tests.support.services import running
from tests.support.verify import assert_exactly_once

pytestmark = pytest.mark.broker


def _outside_read(settings: Settings, topic: str, partitions: int, expected: int) -> int:
    """Count committed records of ``topic`` with librdkafka (read_committed)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"{topic}.outside",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen = 0
    try:
        for _ in range(200):
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                assert message.error() is None, message.error()
                seen += 1
            if seen >= expected:
                break
    finally:
        consumer.close()
    return seen


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_processor_writes_with_each_codec_and_librdkafka_reads_it(
    make_settings: Callable[..., Settings], codec: str
) -> None:
    settings = make_settings(kafka_compression_type=codec)
    events = list(random_stream(300, 60, seed=3))
    await produce_events(settings, events)
    async with running(settings):
        await wait_for_count(settings, settings.topic_outcomes, len(events))
    summary = await assert_exactly_once(settings)
    assert summary["events"] == len(events)
    outside = await asyncio.to_thread(_outside_read, settings, settings.topic_outcomes, settings.topic_partitions, len(events))
    assert outside == len(events)
