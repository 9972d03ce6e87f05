"""Producers must partition by murmur2, as the webhook does (README, "What a producer may send").

The webhook publishes WeChat's status reports keyed by the invoice key with
aiokafka's default partitioner: murmur2 of the key, the Java client's
default. An upstream publisher on librdkafka (confluent-kafka) with its own
default (``consistent_random``: CRC32 of the key) would put an invoice's
events on another partition than WeChat's reports of it, and the two would
no longer be decided in one order. With ``partitioner: murmur2_random`` the
partitions agree, key for key, on the real broker.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from adapters import topics
from adapters.owners import candidate_partitions
from adapters.settings import Settings
from adapters.webhook_messages import status_report
from adapters.webhook_publisher import KafkaPushPublisher
from domain.model import invoice_key
from tests.factories import card
from tests.support.kafka_io import read_topic

pytestmark = pytest.mark.broker

PARTITIONS = 12
INVOICES = 200
SOURCE = "test.producer"


def _produce_outside(settings: Settings, keys: list[str], partitioner: str | None) -> None:
    """Send one record per key with librdkafka, with ``partitioner`` (None: librdkafka's default)."""
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap_servers, "acks": "all", "linger.ms": 5}
    if partitioner is not None:
        config["partitioner"] = partitioner
    producer = Producer(config)
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    label = (partitioner or "default").encode()
    for key in keys:
        producer.produce(settings.topic_events, value=b"{}", key=key.encode(), headers=[(SOURCE, label)], on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []


async def test_librdkafka_with_murmur2_random_puts_each_key_where_the_webhook_does(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(topic_partitions=PARTITIONS)
    await topics.ensure_topics(settings)
    cards = [card(n) for n in range(INVOICES)]
    keys = [invoice_key(c, code) for c, code in cards]

    publisher = KafkaPushPublisher(settings)
    await publisher.start()
    try:
        for c, code in cards:
            push = {
                "ToUserName": "gh_9e1765b5568e",
                "FromUserName": "ojZ8Ytz4lESgdWZ34L_R1TvB2Kds",
                "CreateTime": "1478068440",
                "MsgType": "event",
                "Event": "update_invoice_status",
                "Status": "INVOICE_REIMBURSE_LOCK",
                "CardId": c,
                "Code": code,
            }
            await publisher.publish(status_report(push))
    finally:
        await publisher.stop()
    await asyncio.to_thread(_produce_outside, settings, keys, "murmur2_random")
    await asyncio.to_thread(_produce_outside, settings, keys, None)

    where: dict[str, dict[str, int]] = {"webhook": {}, "murmur2_random": {}, "default": {}}
    for record in await read_topic(settings, settings.topic_events):
        source = dict(record.headers).get(SOURCE, b"webhook").decode()
        where[source][record.key.decode()] = record.partition
    assert all(len(by_key) == INVOICES for by_key in where.values()), {s: len(k) for s, k in where.items()}

    # Our publisher, the project's partition function and librdkafka's murmur2_random agree on every key.
    assert where["webhook"] == {key: candidate_partitions(key, PARTITIONS)[0] for key in keys}
    assert where["murmur2_random"] == where["webhook"]
    # librdkafka's default is CRC32, which would split an invoice's events from WeChat's reports.
    assert where["default"] == {key: zlib.crc32(key.encode()) % PARTITIONS for key in keys}
    assert sum(where["default"][key] != where["webhook"][key] for key in keys) > INVOICES // 2
