"""The processor's partition worker over fakes (tests/support/fakes.py): no broker.

What a batch commits and in which order, and what the worker does when a
batch cannot commit: a broker error (abort, rewind, retry), fencing by a
newer owner (pause, then take the partition back), a transaction the broker
timed out (take it back at once), a producer in aiokafka's fatal state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, ProducerFenced
from aiokafka.structs import ConsumerRecord

from adapters import wire
from adapters.metrics import Metrics
from adapters.native import NativeStep
from adapters.settings import Settings
from adapters.store import MemoryPartitionStore
from consumers.processor import KafkaClients, PartitionWorker, Processor, decide_records
from domain.decide import DictStates
from domain.model import DecisionKind
from domain.reconcile import same_state
from tests.factories import encode, random_stream
from tests.malformed import malformed_cases
from tests.support import fakes
from tests.support.fakes import FakeBroker

PARTITIONS = 3


def fake_settings(**overrides: Any) -> Settings:
    return fakes.fake_settings(**{"kafka_session_timeout_ms": 1000, "validate_produced": "all", **overrides})


class RecordingStore(MemoryPartitionStore):
    """A memory store that notes its writes and prefetches in the broker's call log."""

    def __init__(self, calls: list[tuple[str, str]]) -> None:
        super().__init__()
        self.calls = calls
        self.prefetched: list[list[bytes]] = []

    def prefetch(self, keys: list[bytes]) -> None:
        self.calls.append(("store", "prefetch"))
        self.prefetched.append(keys)

    def apply(self, items: Iterable[tuple[bytes, bytes | None]], changelog_offset: int | None) -> None:
        self.calls.append(("store", "apply"))
        super().apply(items, changelog_offset)


class Harness:
    """A processor over a fake broker, holding input partition 0."""

    def __init__(self, settings: Settings, broker: FakeBroker | None = None) -> None:
        self.settings = settings
        self.broker = broker or FakeBroker()
        self.metrics = Metrics()
        clients = KafkaClients(transactional_producer=self.broker.transactional_producer, consumer=self.broker.consumer)
        self.processor = Processor(settings, metrics=self.metrics, clients=clients)
        self.processor.open_store = lambda partition: RecordingStore(self.broker.calls)  # type: ignore[method-assign]  # a fake store per partition
        self.processor.partitions = dict.fromkeys(
            (settings.topic_events, settings.topic_outcomes, settings.topic_state, settings.topic_dlq), PARTITIONS
        )
        self.tp = TopicPartition(settings.topic_events, 0)
        self.consumer = self.broker.consumer(group_id=self.processor.group_id)
        self.consumer.assign([self.tp])
        self.processor.consumer = self.consumer

    async def assign(self) -> PartitionWorker:
        await self.processor.on_partitions_assigned([self.tp])
        return self.processor.workers[self.tp]

    def publish(self, records: Iterable[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]) -> list[ConsumerRecord]:
        for key, value, headers in records:
            self.broker.append(self.settings.topic_events, 0, key, value, headers)
        return self.broker.committed_records(self.settings.topic_events, 0)

    def outcomes(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(r.value) for r in self.broker.committed_records(self.settings.topic_outcomes)]

    def replaced(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "invoice_sm_producer_replacements_total", {"role": "processor", "reason": reason}
        )
        return value or 0.0

    def judged_by(self, step: str) -> float:
        value = self.metrics.registry.get_sample_value("invoice_sm_decision_steps_total", {"step": step})
        return value or 0.0

    async def close(self) -> None:
        await self.processor.on_partitions_revoked(list(self.processor.workers))


def mixed(n_events: int, n_invoices: int, seed: int) -> tuple[list[tuple[bytes | None, bytes | None, list[Any]]], int]:
    """Valid events with malformed records among them; returns them and how many are valid."""
    records: list[tuple[bytes | None, bytes | None, list[Any]]] = [
        (*encode(ev), []) for ev in random_stream(n_events, n_invoices, seed=seed)
    ]
    for i, (_, key, value, headers, _) in enumerate(malformed_cases()[:8]):
        records.insert(1 + i * (n_events // 8), (key, value, list(headers)))
    return records, n_events


@pytest.fixture(params=["on", "off"], ids=["native", "python"])
def harness(request: pytest.FixtureRequest, native_step: NativeStep) -> Harness:
    """Every worker test runs twice: the common valid event decided by the
    native step (``on``: the suite refuses to run without it), and every event
    on the Python path (``off``); the oracle is the Python path either way."""
    harness = Harness(fake_settings(native_step=request.param))
    assert (harness.processor.native is not None) is (request.param == "on")
    return harness


async def test_a_batch_commits_outcomes_state_dlq_copies_and_its_offset_together(harness: Harness) -> None:
    records = harness.publish(mixed(300, 40, seed=3)[0])
    worker = await harness.assign()
    stats = await worker.process(records)
    assert stats is not None
    s = harness.settings

    oracle = DictStates()
    expected = decide_records(records, oracle, max_bytes=s.max_event_bytes, now=None)
    outcomes = harness.outcomes()
    assert [(o["data"]["source_offset"], o["type"]) for o in outcomes] == [
        (r.offset, f"invoice.status.{d.kind.value}") for r, (d, _) in zip(expected.records, expected.decisions, strict=True)
    ]
    assert len(harness.broker.committed_records(s.topic_dlq)) == len(expected.invalid) == stats.dlq == 8
    assert harness.broker.group_offsets[(s.processor_group_id, harness.tp)] == records[-1].offset + 1

    changelog = {r.key.decode(): wire.decode_state(r.value) for r in harness.broker.committed_records(s.topic_state, 0)}
    assert changelog.keys() == oracle.states.keys()
    assert all(same_state(changelog[k], state) for k, state in oracle.states.items())
    non_duplicates = sum(1 for d, _ in expected.decisions if d.kind is not DecisionKind.DUPLICATE)
    assert len(harness.broker.committed_records(s.topic_state, 0)) == non_duplicates
    assert stats.by_kind[DecisionKind.DUPLICATE] == len(expected.decisions) - non_duplicates > 0
    # The native step judges every plain valid event; the Python path the 8 malformed records (or all, when off).
    python_path = 8 if harness.processor.native is not None else len(records)
    assert stats.python_path == harness.judged_by("python") == python_path
    assert harness.judged_by("native") == len(records) - python_path

    # The local store holds exactly the changelog's latest values, current to its end.
    assert worker.store is not None
    assert {k.decode(): wire.decode_state(v) for k, v in worker.store.items()} == changelog
    assert worker.store.changelog_offset == harness.broker.last_stable_offset(s.topic_state, 0) - 1  # before the marker
    await harness.close()


async def test_the_store_is_written_only_after_the_commit(harness: Harness) -> None:
    records = harness.publish((*encode(ev), []) for ev in random_stream(50, 10, seed=1))
    worker = await harness.assign()
    calls = harness.broker.calls
    del calls[:]
    assert await worker.process(records) is not None
    steps = [name for who, name in calls if who in (worker.txn_id, "store")]
    assert steps[:2] == ["prefetch", "begin_transaction"]
    assert set(steps[2:-3]) == {"send_batch"}
    assert steps[-3:] == ["send_offsets_to_transaction", "commit_transaction", "apply"]
    await harness.close()


async def test_a_batch_prefetches_once_each_invoice_that_is_neither_cached_nor_a_null_key(harness: Harness) -> None:
    events = list(random_stream(80, 60, seed=5))
    first = harness.publish((*encode(ev), []) for ev in events[:40])
    worker = await harness.assign()
    assert await worker.process(first) is not None
    # A later batch: invoices the first one cached, new ones, and records the decoder refuses.
    later = harness.publish([(*encode(ev), []) for ev in events[40:]] + [(None, b"{}", []), (b"\xff\xfe", b"{}", [])])[
        len(first) :
    ]
    assert await worker.process(later) is not None
    store = worker.store
    assert isinstance(store, RecordingStore)
    first_keys, later_keys = store.prefetched
    assert first_keys == list(dict.fromkeys(r.key for r in first))
    cached = set(first_keys)
    assert later_keys == [k for k in dict.fromkeys(r.key for r in later) if k not in cached and k is not None]
    assert later_keys  # the stream has invoices the first batch did not touch
    await harness.close()


async def test_a_batch_that_cannot_commit_leaves_no_trace_and_is_decided_once_on_retry(harness: Harness) -> None:
    records = harness.publish(mixed(120, 30, seed=4)[0])
    worker = await harness.assign()
    worker.producer.fail("commit_transaction", KafkaConnectionError())
    assert await worker.process(records) is None
    s = harness.settings
    assert harness.outcomes() == [] and harness.broker.committed_records(s.topic_dlq) == []
    assert worker.states is not None and worker.states.pending == {}
    assert worker.store is not None and worker.store.changelog_offset is None
    assert (worker.txn_id, "abort_transaction") in harness.broker.calls
    assert harness.consumer.seeks[-1] == (harness.tp, records[0].offset)  # rewound to the batch
    assert worker.stall == "broker_unavailable"

    assert await worker.process(records) is not None
    assert worker.stall is None
    valid = decide_records(records, DictStates(), max_bytes=s.max_event_bytes, now=None).records
    assert sorted(o["data"]["source_offset"] for o in harness.outcomes()) == [r.offset for r in valid]
    assert len(harness.broker.committed_records(s.topic_dlq)) == 8
    await harness.close()


async def test_a_fenced_worker_pauses_then_takes_its_partition_back_and_decides_the_batch_once(harness: Harness) -> None:
    records = harness.publish((*encode(ev), []) for ev in random_stream(80, 20, seed=5))
    worker = await harness.assign()
    first = worker.producer
    newer_owner = harness.broker.transactional_producer(worker.txn_id)
    await newer_owner.start()  # bumps the epoch: our producer is fenced

    assert await worker.process(records) is None
    assert harness.replaced("fenced") == 1
    assert newer_owner.epoch is not None
    assert newer_owner.epoch is not None
    assert worker.producer is not first and worker.producer.epoch == newer_owner.epoch + 1
    assert harness.consumer.paused == set()  # paused while waiting, resumed on taking it back
    assert harness.consumer.seeks[-1] == (harness.tp, 0)  # the committed offset: nothing yet
    assert harness.outcomes() == []

    assert await worker.process(records) is not None
    assert sorted(o["data"]["source_offset"] for o in harness.outcomes()) == [r.offset for r in records]
    await harness.close()


async def test_a_transaction_the_broker_timed_out_is_taken_back_at_once_not_treated_as_fencing() -> None:
    harness = Harness(fake_settings(kafka_transaction_timeout_ms=1000))
    records = harness.publish((*encode(ev), []) for ev in random_stream(60, 15, seed=6))
    worker = await harness.assign()
    # The commit answers "epoch bumped" after the transaction timeout has passed.
    worker.producer.fail("commit_transaction", ProducerFenced(), after_s=1.0)

    assert await worker.process(records) is None
    assert (harness.replaced("txn_timeout"), harness.replaced("fenced")) == (1, 0)
    assert harness.outcomes() == []  # the open transaction was aborted by the new producer's init

    assert await worker.process(records) is not None
    assert sorted(o["data"]["source_offset"] for o in harness.outcomes()) == [r.offset for r in records]
    await harness.close()


async def test_a_producer_in_the_fatal_state_is_replaced(harness: Harness) -> None:
    records = harness.publish((*encode(ev), []) for ev in random_stream(30, 10, seed=7))
    worker = await harness.assign()
    worker.producer.make_fatal()
    assert await worker.process(records) is None
    assert harness.replaced("producer_fatal") == 1
    assert await worker.process(records) is not None
    assert len(harness.outcomes()) == len(records)
    await harness.close()


async def test_a_partition_assigned_during_a_broker_outage_waits_for_the_broker_instead_of_stopping(harness: Harness) -> None:
    # A rebalance often comes because of an outage: the first two producers
    # cannot reach the broker (as aiokafka says when a connection drops).
    made: list[Any] = []

    def unreachable_at_first(txn_id: str, max_batch_bytes: int) -> Any:
        producer = harness.broker.transactional_producer(txn_id, max_batch_bytes)
        if len(made) < 2:
            producer.fail("start", KafkaConnectionError("Connection at 127.0.0.1:9 closed"))
        made.append(producer)
        return producer

    harness.processor.clients = KafkaClients(transactional_producer=unreachable_at_first, consumer=harness.broker.consumer)
    harness.processor.ready.set()
    assigning = asyncio.create_task(harness.assign())
    for _ in range(500):  # the first attempt fails at once; the retry waits ~0.5 s
        await asyncio.sleep(0.01)
        if harness.processor.stalled():
            break
    assert harness.processor.stalled() == {0: "broker_unavailable"}
    assert not harness.processor.is_ready()  # /readyz says so
    worker = await assigning
    assert harness.processor.is_ready() and not harness.processor.stalled()
    assert len(made) == 3 and made[0].stopped and made[1].stopped and worker.producer is made[2]
    assert harness.replaced("broker_unavailable") == 2
    records = harness.publish((*encode(ev), []) for ev in random_stream(20, 5, seed=4))
    assert await worker.process(records) is not None
    assert len(harness.outcomes()) == len(records)
    await harness.close()


async def test_a_new_owner_restores_the_state_and_starts_at_the_committed_offset(harness: Harness) -> None:
    records = harness.publish((*encode(ev), []) for ev in random_stream(200, 25, seed=8))
    worker = await harness.assign()
    await worker.process(records[:150])
    await harness.close()
    assert worker.producer.stopped

    successor = Harness(harness.settings, harness.broker)
    taken = await successor.assign()
    assert successor.consumer.seeks[-1] == (successor.tp, records[150].offset)
    assert taken.store is not None and worker.store is not None
    assert dict(taken.store.items()) == dict(worker.store.items())
    assert taken.store.changelog_offset == harness.broker.last_stable_offset(harness.settings.topic_state, 0)

    await taken.process(records[150:])
    oracle = DictStates()
    decide_records(records, oracle, max_bytes=harness.settings.max_event_bytes, now=None)
    assert {k.decode(): wire.decode_state(v) for k, v in taken.store.items()}.keys() == oracle.states.keys()
    assert all(same_state(wire.decode_state(taken.store.get(k.encode()) or b""), s) for k, s in oracle.states.items())
    assert sorted(o["data"]["source_offset"] for o in successor.outcomes()) == [r.offset for r in records]
    await successor.close()


async def test_restore_rebuilds_a_store_the_changelog_does_not_match_and_applies_tombstones() -> None:
    from adapters.store import InvoiceStates
    from consumers.processor import restore_states

    settings = fake_settings()
    broker = FakeBroker()
    topic = settings.topic_state
    broker.append_transaction(topic, 0, [(b"a", b"1"), (b"b", b"2")])  # offsets 0-1, marker 2
    broker.append_transaction(topic, 0, [(b"a", None)])  # a tombstone at 3, marker 4
    broker.append_transaction(topic, 1, [(b"c", b"3")])
    ahead = MemoryPartitionStore()
    ahead.apply([(b"stale", b"x")], 99)  # a checkpoint past the changelog's end: not this changelog's
    current = MemoryPartitionStore()
    current.apply([(b"c", b"3")], 2)  # already at the end
    states = {p: InvoiceStates(s, 10, wire.decode_state, wire.encode_state) for p, s in ((0, ahead), (1, current))}

    restored = await restore_states(settings, states, consumer=broker.consumer())
    assert restored == {0: 3, 1: 0}
    assert (dict(ahead.items()), ahead.changelog_offset) == ({b"b": b"2"}, 5)
    assert (dict(current.items()), current.changelog_offset) == ({b"c": b"3"}, 2)
