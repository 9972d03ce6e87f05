"""The processor counts WeChat reports by legality (``invoice_sm_wechat_reports_total{legal}``).

An illegal report is a divergence the alert ``InvoiceSmWeChatReportDiverged``
fires on; a retried push (a duplicate) is the same report and is not counted
again; upstream events are not reports at all. Over the fake broker
(tests/support/fakes.py), no real Kafka.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiokafka import TopicPartition

from adapters.metrics import Metrics
from adapters.settings import load_settings
from adapters.store import MemoryPartitionStore
from consumers.processor import KafkaClients, Processor
from domain.model import invoice_key
from domain.status import WECHAT_STATUS_REPORTED
from domain.status import ReimburseStatus as S
from tests.factories import card, encode, event
from tests.support.fakes import FakeBroker


def reported(card_id: str, code: str, status: S, event_id: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "/wechat/push",
        "type": WECHAT_STATUS_REPORTED,
        "time": "2026-11-23T10:00:00Z",
        "subject": invoice_key(card_id, code),
        "data": {"card_id": card_id, "code": code, "reimburse_status": status.value},
    }


async def test_wechat_reports_are_counted_by_legality_and_duplicates_and_upstream_events_are_not() -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = load_settings(
        kafka_bootstrap_servers="127.0.0.1:9",  # never dialled: every client is a fake
        topic_events=f"u{suffix}.events",
        topic_outcomes=f"u{suffix}.outcomes",
        topic_state=f"u{suffix}.state",
        topic_dlq=f"u{suffix}.dlq",
        processor_group_id=f"u{suffix}.processor",
        kafka_session_timeout_ms=1000,
    )
    broker = FakeBroker()
    metrics = Metrics()
    clients = KafkaClients(transactional_producer=broker.transactional_producer, consumer=broker.consumer)
    processor = Processor(settings, metrics=metrics, clients=clients)
    processor.open_store = lambda partition: MemoryPartitionStore()  # type: ignore[method-assign]
    processor.partitions = dict.fromkeys(
        (settings.topic_events, settings.topic_outcomes, settings.topic_state, settings.topic_dlq), 1
    )
    tp = TopicPartition(settings.topic_events, 0)
    consumer = broker.consumer(group_id=processor.group_id)
    consumer.assign([tp])
    processor.consumer = consumer

    (a, a_code), (b, b_code) = card(1), card(2)
    stream = [
        event(a, a_code, S.LOCK),  # upstream: not a report
        reported(a, a_code, S.CLOSURE, "w-1"),  # LOCK -> CLOSURE: legal
        reported(a, a_code, S.CLOSURE, "w-2"),  # same status again: unchanged, legal
        reported(b, b_code, S.CLOSURE, "w-3"),  # INIT -> CLOSURE: illegal, a divergence
        reported(b, b_code, S.CLOSURE, "w-3"),  # WeChat's retry of that push: a duplicate, not counted
    ]
    for ev in stream:
        key, value = encode(ev) if ev["type"] != WECHAT_STATUS_REPORTED else (ev["subject"].encode(), json.dumps(ev).encode())
        broker.append(settings.topic_events, 0, key, value, [])

    def reports(legal: str) -> float | None:
        return metrics.registry.get_sample_value("invoice_sm_wechat_reports_total", {"legal": legal})

    assert (reports("true"), reports("false")) == (0, 0)  # pre-created: visible before the first report
    await processor.on_partitions_assigned([tp])
    stats = await processor.workers[tp].process(broker.committed_records(settings.topic_events, 0))
    assert stats is not None
    assert stats.wechat_reports == {True: 2, False: 1}
    assert (reports("true"), reports("false")) == (2, 1)
    await processor.on_partitions_revoked(list(processor.workers))
