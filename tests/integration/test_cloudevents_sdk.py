"""The official CloudEvents Python SDK (``cloudevents`` 2.2.0) against the
running service: events the SDK publishes are decided, or refused with a
DLQ message that tells the publisher what to fix; outcomes the service
writes, and the delivery records the deliverer writes, read back with the SDK.

The SDK 2.2.0 has two Kafka bindings, and both are exercised:

- ``cloudevents.v1.kafka`` (the 1.x ``cloudevents.kafka`` API, moved): its
  ``to_structured`` moves ``datacontenttype`` into a ``content-type:
  application/json`` header instead of ``application/cloudevents+json``, and
  its ``to_binary`` raises ``KeyError`` on an event without
  ``datacontenttype``;
- ``cloudevents.core.bindings.kafka`` (the new API): ``content-type:
  application/cloudevents+json`` in structured mode, ``ce_partitionkey`` as a
  header in binary mode.

Records go through librdkafka (confluent-kafka), an outside client, as an
upstream publisher's would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as core_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as CoreEvent
from cloudevents.v1 import kafka as v1_kafka
from cloudevents.v1.http import CloudEvent as V1Event
from confluent_kafka import Producer

from adapters import topics
from adapters.settings import Settings
from consumers.deliverer import Deliverer
from consumers.processor import Processor
from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import DEFAULT_ACCOUNTS
from domain.model import invoice_key
from tests.factories import APPID, card
from tests.support.kafka_io import read_topic, wait_for_count

pytestmark = pytest.mark.broker

LOCKED = "invoice.reimbursement.locked"


@dataclass(frozen=True)
class Case:
    """One way of publishing with the SDK, and what the service must make of it."""

    name: str
    sdk: str  # "v1" | "core"
    mode: str  # "structured" | "binary"
    partitionkey: bool
    data_as_bytes: bool = False  # the SDK then writes data_base64 (structured mode)

    @property
    def decided(self) -> bool:
        return self.partitionkey


CASES = [
    Case(f"{sdk} {mode}{' data_base64' if as_bytes else ''}{'' if pk else ' no partitionkey'}", sdk, mode, pk, as_bytes)
    for sdk in ("v1", "core")
    for mode in ("structured", "binary")
    for pk in (True, False)
    for as_bytes in ((False, True) if mode == "structured" else (False,))
]


def _message(case: Case, n: int) -> tuple[str, Any]:
    card_id, code = card(900 + n)
    key = invoice_key(card_id, code)
    event_id = f"sdk-{n}"
    attributes = {
        "id": event_id,
        "source": "/erp/reimbursement",
        "type": LOCKED,
        "subject": key,
        "datacontenttype": "application/json",
    }
    if case.partitionkey:
        attributes["partitionkey"] = key
    data: Any = {"card_id": card_id, "code": code, "appid": APPID}
    if case.data_as_bytes:
        data = json.dumps(data).encode()
    message: Any  # each SDK has its own KafkaMessage class
    if case.sdk == "v1":
        event = V1Event(attributes, data)
        message = v1_kafka.to_structured(event) if case.mode == "structured" else v1_kafka.to_binary(event)
    else:
        core_event = CoreEvent(attributes, data)
        convert = core_kafka.to_structured if case.mode == "structured" else core_kafka.to_binary
        message = convert(core_event, JSONFormat())
    return event_id, message


def _publish(settings: Settings, messages: list[Any]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers, "enable.idempotence": True})
    for message in messages:
        producer.produce(settings.topic_events, key=message.key, value=message.value, headers=list(message.headers.items()))
    assert producer.flush(30) == 0


@pytest.fixture
async def published(make_settings: Callable[..., Settings]) -> dict[str, Any]:
    """Every case published once (one invoice each) and its outcomes, DLQ records and deliveries."""
    with SimulatorServer(WeChatSimulator()) as server:
        settings = make_settings(
            wechat_base_url=server.base_url,
            wechat_appid=APPID,
            wechat_secret=DEFAULT_ACCOUNTS[APPID],
            delivery_commit_interval_ms=50,
        )
        await topics.ensure_topics(settings)
        stop = asyncio.Event()
        processor = Processor(settings)
        tasks = [asyncio.create_task(processor.run(stop)), asyncio.create_task(Deliverer(settings).run(stop))]
        try:
            ids, messages = zip(*(_message(case, n) for n, case in enumerate(CASES)), strict=True)
            await asyncio.to_thread(_publish, settings, list(messages))
            decided = sum(case.decided for case in CASES)
            outcomes = await wait_for_count(settings, settings.topic_outcomes, decided)
            dlq = await wait_for_count(settings, settings.topic_dlq, len(CASES) - decided)
            deliveries = await wait_for_count(settings, settings.topic_deliveries, decided)
        finally:
            stop.set()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
        assert len(await read_topic(settings, settings.topic_outcomes)) == decided
    return {
        "ids": dict(zip(CASES, ids, strict=True)),
        "messages": dict(zip(CASES, messages, strict=True)),
        "outcomes": outcomes,
        "dlq": dlq,
        "deliveries": deliveries,
        "judged_by": {
            step: processor.metrics.registry.get_sample_value("invoice_sm_decision_steps_total", {"step": step})
            for step in ("native", "python")
        },
    }


def _sdk_message(record: Any, cls: Any) -> Any:
    return cls(headers=dict(record.headers), key=record.key, value=record.value)


async def test_events_the_sdk_publishes_are_decided_or_refused_with_what_to_fix(published: dict[str, Any]) -> None:
    by_event_id = {json.loads(r.value)["data"]["event_id"]: json.loads(r.value) for r in published["outcomes"]}
    dlq_by_event_id: dict[str, dict[str, str]] = {}
    for r in published["dlq"]:
        headers = {k: (v or b"").decode() for k, v in r.headers}
        # Binary mode: the id is in ce_id; structured mode: in the (original) value.
        dlq_by_event_id[headers.get("ce_id") or json.loads(r.value)["id"]] = headers
    for n, (case, event_id) in enumerate(published["ids"].items()):
        if case.decided:
            outcome = by_event_id.get(event_id)
            assert outcome is not None, f"{case.name}: no outcome"
            assert outcome["type"] == "invoice.status.accepted", (case.name, outcome)
            assert outcome["data"]["to_status"] == "INVOICE_REIMBURSE_LOCK", case.name
        else:
            assert event_id not in by_event_id, f"{case.name}: decided without its key"
            dlq_headers = dlq_by_event_id.get(event_id)
            assert dlq_headers is not None, f"{case.name}: neither decided nor in the DLQ"
            assert dlq_headers["dlq.error.reason"] == "key_mismatch", case.name
            message = dlq_headers["dlq.error.message"]
            # What to fix: set the key, how (the SDK's partitionkey), and to what.
            assert "set the Kafka key" in message and "partitionkey" in message, (case.name, message)
            assert repr(invoice_key(*card(900 + n))) in message, (case.name, message)
    assert len(published["ids"]) == len(CASES) == 12
    assert len(by_event_id) == 6 and len(dlq_by_event_id) == 6


async def test_outcomes_read_back_with_both_sdk_bindings(published: dict[str, Any]) -> None:
    assert published["outcomes"]
    for record in published["outcomes"]:
        assert dict(record.headers)["content-type"] == b"application/cloudevents+json"
        raw = json.loads(record.value)
        key = record.key.decode()

        core = core_kafka.from_structured(_sdk_message(record, core_kafka.KafkaMessage), JSONFormat())
        assert core.get_specversion() == "1.0"
        assert core.get_type() == "invoice.status.accepted"
        assert core.get_id() == raw["id"] and core.get_source() == raw["source"]
        assert core.get_subject() == key
        assert core.get_extension("partitionkey") == key
        assert core.get_datacontenttype() == "application/json"
        core_data = core.get_data()
        assert isinstance(core_data, dict)
        assert core_data["event_id"] == raw["data"]["event_id"]

        v1 = v1_kafka.from_structured(_sdk_message(record, v1_kafka.KafkaMessage))
        assert (v1["specversion"], v1["type"], v1["id"], v1["subject"]) == ("1.0", raw["type"], raw["id"], key)
        assert v1["partitionkey"] == record.key  # the v1 binding keeps the key as bytes
        # The v1 binding overwrites datacontenttype with the record's content-type header.
        assert v1["datacontenttype"] == "application/cloudevents+json"
        assert v1.get_data() == raw["data"]


async def test_deliveries_read_back_with_both_sdk_bindings(published: dict[str, Any]) -> None:
    """invoice.deliveries records are CloudEvents too (ARCHITECTURE.md), structured
    mode: the SDK reads each as an ``invoice.delivery.recorded`` event whose data
    is the delivery record."""
    assert published["deliveries"]
    outcome_ids = {json.loads(r.value)["id"] for r in published["outcomes"]}
    for record in published["deliveries"]:
        assert dict(record.headers)["content-type"] == b"application/cloudevents+json"
        raw = json.loads(record.value)
        key = record.key.decode()

        core = core_kafka.from_structured(_sdk_message(record, core_kafka.KafkaMessage), JSONFormat())
        assert core.get_specversion() == "1.0"
        assert core.get_type() == "invoice.delivery.recorded"
        assert core.get_source() == "/invoice-sm/deliverer"
        assert core.get_subject() == key
        assert core.get_datacontenttype() == "application/json"
        data = core.get_data()
        assert isinstance(data, dict)
        assert data["result"] == "delivered" and data["reimburse_status"] == "INVOICE_REIMBURSE_LOCK"
        # Deterministic id: the idempotency key and the result.
        assert core.get_id() == raw["id"] == f"{data['idempotency_key']}@{data['result']}"
        assert data["idempotency_key"] == f"{key}#{data['version']}" and data["outcome_id"] in outcome_ids

        v1 = v1_kafka.from_structured(_sdk_message(record, v1_kafka.KafkaMessage))
        assert (v1["specversion"], v1["type"], v1["id"], v1["subject"]) == ("1.0", raw["type"], raw["id"], key)
        assert v1.get_data() == raw["data"]


async def test_the_sdks_plain_structured_events_take_the_native_step(published: dict[str, Any]) -> None:
    """What the SDKs write in structured mode with a key and JSON data is the
    common valid event: the native step decides it; data_base64, binary mode
    and keyless records go the Python path (decided or refused, as above)."""
    native = [c for c in CASES if c.mode == "structured" and c.partitionkey and not c.data_as_bytes]
    assert {c.sdk for c in native} == {"v1", "core"}
    assert published["judged_by"] == {"native": len(native), "python": len(CASES) - len(native)}
