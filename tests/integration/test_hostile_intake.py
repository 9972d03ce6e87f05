"""Issue 11 on a real broker: nothing an upstream publisher sends stops the processor.

An outside producer (confluent-kafka, i.e. librdkafka) writes valid events
with every codec Kafka has, in structured and binary mode, and between them,
in every partition, every kind of poison we know: the cases of
``tests/malformed.py``, an event nested 5,000 deep, binary mode with null
header values, a value near the broker's ``max.message.bytes``, a compressed
value over 1 MB uncompressed, and a record whose header key is not UTF-8
(which no ordinary client will write, so it is crafted byte by byte and sent
in a ProduceRequest of its own). A running processor must decide every valid
event exactly once (read_committed), put every poison record in the DLQ with
its reason, and stay up and ready.

Positions are what the producers' delivery reports (and the ProduceResponse)
say, so each expectation is checked at its own partition and offset.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.memory_records import MemoryRecords
from confluent_kafka import Producer

from adapters import topics, wire
from adapters.settings import Settings
from tests.factories import card, event
from tests.malformed import binary_mode_valid, malformed_cases, producible
from tests.support.hostile import binary_form
from tests.support.kafka_io import read_topic
from tests.support.record_batches import BAD_KEY_BYTES, BAD_KEY_MARKER, build_batch
from tests.support.services import running

pytestmark = pytest.mark.broker

PARTITIONS = 3
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
#: Kafka's codec ids in the batch attributes.
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
VALID_PER_CODEC_AND_PARTITION = 12
#: The broker's default max.message.bytes (the topics are created with it).
BROKER_MAX_MESSAGE_BYTES = 1048588

Headers = list[tuple[str, bytes | None]]


@dataclass
class Sent:
    """One record as produced, and what must become of it."""

    label: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    reason: str | None  # None: a valid event, must get exactly one outcome
    partition: int | None = None
    offset: int | None = None
    event_id: str | None = None


_numbers = iter(range(70_000, 10**6))


def _valid(mode: int) -> tuple[bytes, bytes, Headers, str, str]:
    """A valid event of a fresh invoice (so each is accepted), in one of four forms."""
    n = next(_numbers)
    ev = event(*card(n), "INVOICE_REIMBURSE_LOCK", event_id=f"hv-{n}")
    key = f"{ev['data']['card_id']}/{ev['data']['code']}".encode()
    if mode == 0:
        return key, json.dumps(ev).encode(), [("content-type", b"application/cloudevents+json")], "structured", ev["id"]
    if mode == 1:
        # Structured mode by content-type although ce_* headers are there too
        # (one of them null): the binding says content-type decides.
        headers: Headers = [
            ("content-type", b"application/cloudevents+json"),
            ("ce_specversion", b"1.0"),
            ("ce_type", b"bogus"),
            ("ce_id", None),
        ]
        return key, json.dumps(ev).encode(), headers, "structured with ce_specversion", ev["id"]
    value, headers = binary_form(ev)
    if mode == 2:
        return key, value, headers, "binary", ev["id"]
    return key, value, [*headers, ("traceparent", None)], "binary with a null non-ce header", ev["id"]


def _poisons(partition: int) -> list[Sent]:
    """Every poison that an ordinary client can send, for one partition."""
    out = [
        Sent(f"p{partition} {name}", key, value, list(headers), reason)
        for name, key, value, headers, reason in producible(malformed_cases())
    ]
    n = 940 + partition
    ev = event(*card(n), "INVOICE_REIMBURSE_LOCK", event_id=f"deep-{n}")
    key = f"{ev['data']['card_id']}/{ev['data']['code']}".encode()
    body = json.dumps({k: v for k, v in ev.items() if k != "data"}).encode()
    deep = body[:-1] + b', "data": ' + b'{"card_id": ' * 5000 + b'"x"' + b"}" * 5000 + b"}"
    out.append(
        Sent(f"p{partition} event nested 5,000 deep", key, deep, [("content-type", b"application/cloudevents+json")], "not_json")
    )
    bkey, bvalue, bheaders, _ = binary_mode_valid(950 + partition)
    for attr in ("ce_time", "ce_type", "ce_source"):
        headers = [(name, None if name == attr else value) for name, value in bheaders]
        out.append(Sent(f"p{partition} binary mode with a null {attr}", bkey, bvalue, headers, "bad_header"))
    return out


def _padded_event(size: int) -> tuple[bytes, bytes]:
    """A valid-looking event padded to exactly ``size`` bytes."""
    n = next(_numbers)
    ev = event(*card(n), "INVOICE_REIMBURSE_LOCK", event_id=f"big-{n}")
    key = f"{ev['data']['card_id']}/{ev['data']['code']}".encode()
    ev["pad"] = ""
    base = len(json.dumps(ev).encode())
    ev["pad"] = "x" * (size - base)
    value = json.dumps(ev).encode()
    assert len(value) == size
    return key, value


# ----------------------------------------------------------------- producing


def _produce_outside(settings: Settings, codec: str, records: list[Sent], **config: Any) -> None:
    """Send ``records`` with librdkafka (in order per partition) and note where each landed."""
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "compression.type": codec,
            "linger.ms": 20,
            "acks": "all",
            **config,
        }
    )
    errors: list[str] = []

    def delivered(sent: Sent, err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(f"{sent.label}: {err}")
            return
        sent.partition, sent.offset = msg.partition(), msg.offset()

    for sent in records:
        assert sent.partition is not None
        producer.produce(
            settings.topic_events,
            value=sent.value,
            key=sent.key,
            headers=sent.headers or None,
            partition=sent.partition,
            on_delivery=functools.partial(delivered, sent),
        )
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} records not delivered with {codec}"
    assert not errors, errors


async def _client(settings: Settings, topic: str) -> AIOKafkaClient:
    client = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await client.bootstrap()
    client.add_topic(topic)
    await client.force_metadata_update()
    return client


async def _produce_crafted(settings: Settings, partition: int, records: list[Sent], codec: str) -> None:
    """Send one crafted batch (``tests.support.record_batches``: aiokafka's
    pure-Python builder, header-key bytes patched, CRC recomputed) in a
    ProduceRequest of its own through aiokafka's client. The broker accepts
    it: Java reads header keys leniently, and keeps the batch's bytes."""
    batch = bytes(build_batch([(s.key, s.value, s.headers) for s in records], compression=codec))
    # The point of the exercise: aiokafka's own (C) parser refuses this
    # batch, although its CRC is right.
    assert DefaultRecordBatch(batch).validate_crc()
    with pytest.raises(UnicodeDecodeError):
        list(DefaultRecordBatch(batch))
    topic = settings.topic_events
    client = await _client(settings, topic)
    try:
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(transactional_id=None, required_acks=-1, timeout=30000, topics=[(topic, [(partition, batch)])])
        response = await client.send(leader, request)
    finally:
        await client.close()
    ((_, partitions),) = response.topics
    answer = partitions[0]
    assert answer[0] == partition and answer[1] == 0, f"the broker refused the crafted batch: {answer}"
    for i, sent in enumerate(records):
        sent.partition, sent.offset = partition, answer[2] + i


async def _codecs_on_the_wire(settings: Settings) -> Counter[int]:
    """Batches of the events topic by codec id, read raw (FetchRequest): proves
    each codec really reached the broker, not just that it was configured."""
    topic = settings.topic_events
    client = await _client(settings, topic)
    seen: Counter[int] = Counter()
    try:
        for partition in range(PARTITIONS):
            leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            position, end = 0, None
            while end is None or position < end:
                request = FetchRequest(100, 1, 64 * 1024 * 1024, 0, [(topic, [(partition, position, 16 * 1024 * 1024)])])
                response = await client.send(leader, request)
                ((_, partitions),) = response.topics
                _, error, highwater, *_, raw = partitions[0]
                assert error == 0
                end = highwater
                records = MemoryRecords(raw)
                while records.has_next():
                    batch = records.next_batch()
                    seen[batch.compression_type] += 1
                    position = batch.next_offset
    finally:
        await client.close()
    return seen


# ---------------------------------------------------------------------- test


async def test_outside_producers_every_codec_and_every_poison_in_every_partition(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(topic_partitions=PARTITIONS)
    await topics.ensure_topics(settings)
    everything: list[Sent] = []

    def valid(partition: int, mode: int) -> Sent:
        key, value, headers, label, event_id = _valid(mode)
        return Sent(f"p{partition} valid {label}", key, value, headers, None, partition, event_id=event_id)

    # 1. librdkafka, one producer per codec, each flushed before the next:
    #    valid events of all four forms, the poison spread over the codecs,
    #    each poison between two valid events.
    poisons = {p: _poisons(p) for p in range(PARTITIONS)}
    for index, codec in enumerate(CODECS):
        batch: list[Sent] = []
        for p in range(PARTITIONS):
            batch += [valid(p, i % 4) for i in range(VALID_PER_CODEC_AND_PARTITION)]
            for poison in poisons[p][index :: len(CODECS)]:
                poison.partition = p
                batch += [poison, valid(p, len(batch) % 4)]
        await asyncio.to_thread(_produce_outside, settings, codec, batch)
        everything += batch

    # 2. A header key that is not UTF-8, in the middle of a batch of three,
    #    uncompressed or compressed (the consumer must decompress to re-read it).
    for p, codec in zip(range(PARTITIONS), ["none", "zstd", "gzip"], strict=True):
        before, after = valid(p, 0), valid(p, 2)
        key, value, *_ = _valid(0)
        headers: Headers = [("content-type", b"application/cloudevents+json"), (BAD_KEY_MARKER, b"x")]
        bad = Sent(f"p{p} header key not UTF-8 ({codec})", key, value, headers, "bad_header", p)
        await _produce_crafted(settings, p, [before, bad, after], codec)
        everything += [before, bad, after]

    # 3. Values at the size limits: near the broker's max.message.bytes
    #    uncompressed, and 2 MB that zstd makes small enough to be accepted.
    near_max = BROKER_MAX_MESSAGE_BYTES - 512
    big: dict[str, list[Sent]] = {"none": [], "zstd": []}
    for p in range(PARTITIONS):
        key, value = _padded_event(near_max)
        big["none"] += [Sent(f"p{p} value near max.message.bytes", key, value, [], "oversized", p), valid(p, 0)]
        key, value = _padded_event(2 * 1024 * 1024)
        big["zstd"] += [
            Sent(f"p{p} 2 MB value, zstd", key, value, [("content-type", b"application/cloudevents+json")], "oversized", p),
            valid(p, 3),
        ]
    for codec, records in big.items():
        # librdkafka checks the uncompressed size against its own limit.
        await asyncio.to_thread(_produce_outside, settings, codec, records, **{"message.max.bytes": 4 * 1024 * 1024})
        everything += records

    assert all(s.offset is not None for s in everything)
    positions = Counter((s.partition, s.offset) for s in everything)
    assert max(positions.values()) == 1
    wire_codecs = await _codecs_on_the_wire(settings)
    assert all(wire_codecs[CODEC_IDS[c]] > 0 for c in CODECS), f"batches by codec id: {dict(wire_codecs)}"

    valid_sent = {(s.partition, s.offset): s for s in everything if s.reason is None}
    poison_sent = {(s.partition, s.offset): s for s in everything if s.reason is not None}
    reasons_sent = Counter(s.reason for s in poison_sent.values())
    assert set(reasons_sent) >= set(wire.DLQ_REASONS) - {"unreadable_record"}, reasons_sent
    for p in range(PARTITIONS):
        assert sum(1 for (part, _) in poison_sent if part == p) == len(poison_sent) // PARTITIONS

    # Per partition: the first step's poison, each followed by a valid event;
    # one crafted batch (valid, poison, valid); two big values, each followed by a valid event.
    first_step = len(producible(malformed_cases())) + 4
    assert len(poison_sent) == PARTITIONS * (first_step + 1 + 2)
    assert len(valid_sent) == PARTITIONS * (len(CODECS) * VALID_PER_CODEC_AND_PARTITION + first_step + 2 + 2)

    async with running(settings) as processor:
        (task,) = [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", None) == "Processor.run"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            # Fail at once, with the processor's own error, if it stopped.
            assert not task.done(), f"the processor stopped: {task.exception()!r}"
            outcomes = await read_topic(settings, settings.topic_outcomes)
            dlq = await read_topic(settings, settings.topic_dlq)
            if len(outcomes) >= len(valid_sent) and len(dlq) >= len(poison_sent):
                break
            assert loop.time() < deadline, (
                f"{len(outcomes)}/{len(valid_sent)} outcomes, "
                f"{len(dlq)}/{len(poison_sent)} DLQ records; stalled: {processor.stalled()}"
            )
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # anything extra (a repeat) would have landed by now
        assert not task.done(), f"the processor stopped: {task.exception()!r}"
        assert processor.is_ready(), f"not ready; stalled: {processor.stalled()}"
        assert not processor.stalled()
        outcomes = await read_topic(settings, settings.topic_outcomes)
        dlq = await read_topic(settings, settings.topic_dlq)

    # Every valid event: exactly one outcome, accepted (each is a fresh invoice).
    decided: Counter[tuple[int, int]] = Counter()
    for record in outcomes:
        outcome = json.loads(record.value)
        position = (outcome["data"]["source_partition"], outcome["data"]["source_offset"])
        decided[position] += 1
        assert position in valid_sent, f"an outcome for {poison_sent[position].label}" if position in poison_sent else position
        assert outcome["type"] == "invoice.status.accepted", (valid_sent[position].label, outcome)
        assert outcome["data"]["event_id"] == valid_sent[position].event_id, valid_sent[position].label
    assert set(decided) == set(valid_sent), [valid_sent[p].label for p in set(valid_sent) - set(decided)][:10]
    assert max(decided.values()) == 1, [valid_sent[p].label for p, n in decided.items() if n > 1][:10]

    # Every poison record: exactly one DLQ copy, with its reason.
    copies: dict[tuple[int | None, int | None], Any] = {}
    for record in dlq:
        dlq_headers = dict(record.headers)
        position = (int(dlq_headers["dlq.source.partition"]), int(dlq_headers["dlq.source.offset"]))
        assert position not in copies, f"two DLQ copies of {position}"
        assert position in poison_sent, (
            f"a valid event in the DLQ: {valid_sent[position].label if position in valid_sent else position} "
            f"({dlq_headers['dlq.error.message']!r})"
        )
        copies[position] = record
        sent = poison_sent[position]
        reason = dlq_headers["dlq.error.reason"].decode()
        assert reason == sent.reason, (
            f"{sent.label}: reason {reason}, expected {sent.reason} ({dlq_headers['dlq.error.message']!r})"
        )
        for name, _ in record.headers:
            name.encode("utf-8")
    assert set(copies) == set(poison_sent), [poison_sent[p].label for p in set(poison_sent) - set(copies)][:10]

    # The DLQ copies of the records too big to keep whole: cut, and say so.
    for position, sent in poison_sent.items():
        copy_headers = dict(copies[position].headers)
        if sent.reason == "oversized" and len(sent.value or b"") > 512 * 1024:
            assert copy_headers.get("dlq.value.truncated") == b"true", sent.label
            assert copy_headers["dlq.value.original.size"] == str(len(sent.value or b"")).encode(), sent.label
            assert copy_headers["dlq.value.sha256"] == hashlib.sha256(sent.value or b"").hexdigest().encode(), sent.label
            assert (sent.value or b"").startswith(copies[position].value), sent.label
        else:
            assert "dlq.value.truncated" not in copy_headers, sent.label
            assert copies[position].value == sent.value, sent.label
        if "header key not UTF-8" in sent.label:
            # The name is written back escaped, the value kept.
            escaped = BAD_KEY_BYTES.decode("ascii", "backslashreplace")
            assert (escaped, b"x") in copies[position].headers, copies[position].headers
