"""``invoice-sm process``: events -> outcomes + state, exactly once.

A consumer group reads ``invoice.events`` (read_committed, no auto-commit).
Each assigned partition has a ``PartitionWorker`` that owns a transactional
producer (``transactional_id`` = group/topic/partition, so a new owner
fences the old one: aiokafka has no KIP-447), the partition's state store,
and its transactions. Records of one partition are decided in offset
order; partitions proceed concurrently.

On assignment, in this order (the order is the guarantee):

1. start the partition's transactional producer: ``InitProducerId`` fences
   any previous owner and waits until its open transaction is resolved;
2. restore the state store from the changelog partition (``invoice.state``,
   same partition number), from the store's checkpoint to the end;
3. fetch the committed offset *now* (aiokafka fetched one before step 1,
   possibly before the old owner's last commit landed) and seek to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from adapters import kafka, wire
from adapters.settings import Settings
from adapters.store import InvoiceStates, MemoryPartitionStore, PartitionStore, RocksPartitionStore
from domain.decide import decide
from domain.errors import BrokerError, FencedError, InvalidEventError
from domain.model import Decision, DecisionKind

log = structlog.get_logger("invoice_sm.processor")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: CloudEvent type of each decision kind (an enum's ``.value`` is a slow descriptor).
OUTCOME_TYPES = {kind: f"invoice.status.{kind.value}" for kind in DecisionKind}
_ACCEPTED = DecisionKind.ACCEPTED
_DUPLICATE = DecisionKind.DUPLICATE
_OutcomeData, _OutcomeEvent, _encode = wire.OutcomeData, wire.OutcomeEvent, wire.encode


def outcome_bytes(decision: Decision, record: ConsumerRecord, processed_at: str, key: str) -> bytes:
    """The outcome CloudEvent of ``decision`` (hot path: one call per event)."""
    event = decision.event
    state = decision.state
    reason = decision.reason
    data = _OutcomeData(
        card_id=event.card_id,
        code=event.code,
        appid=state.appid,
        event_id=event.event_id,
        event_type=event.event_type,
        from_status=decision.from_status,
        requested_status=decision.requested_status,
        version=state.version,
        processed_at=processed_at,
        to_status=state.status if decision.kind is _ACCEPTED else None,
        reason=reason,
        trigger=decision.trigger,
        source_partition=record.partition,
        source_offset=record.offset,
        event_time=event.time,
    )
    return _encode(
        _OutcomeEvent(
            specversion="1.0",
            # Derived from the input position: the same event re-decided after
            # an aborted transaction gets the same outcome id.
            id=f"{record.topic}/{record.partition}/{record.offset}",
            source=wire.OUTCOME_SOURCE,
            type=OUTCOME_TYPES[decision.kind],  # type: ignore[arg-type]
            time=processed_at,
            subject=key,
            data=data,
        )
    )


def dlq_headers(record: ConsumerRecord, error: BaseException, reason: str, failed_at: str) -> list[tuple[str, bytes]]:
    h = wire.DLQ_HEADERS
    message = str(error)[:1000]
    return [
        *(record.headers or ()),
        (h["reason"], reason.encode()),
        (h["error_class"], type(error).__name__.encode()),
        (h["error_message"], message.encode("utf-8", "replace")),
        (h["source_topic"], record.topic.encode()),
        (h["source_partition"], str(record.partition).encode()),
        (h["source_offset"], str(record.offset).encode()),
        (h["failed_at"], failed_at.encode()),
    ]


@dataclass
class BatchStats:
    records: int = 0
    dlq: int = 0
    by_kind: dict[DecisionKind, int] = field(default_factory=lambda: dict.fromkeys(DecisionKind, 0))
    dlq_reasons: dict[str, int] = field(default_factory=dict)


class PartitionWorker:
    """One input partition: its producer, its state, its transactions."""

    def __init__(self, processor: Processor, tp: TopicPartition) -> None:
        self.processor = processor
        self.settings = processor.settings
        self.tp = tp
        self.producer = kafka.new_transactional_producer(
            self.settings, kafka.transactional_id(processor.group_id, tp.topic, tp.partition)
        )
        self.store: PartitionStore | None = None
        self.states: InvoiceStates | None = None
        self.lock = asyncio.Lock()
        self.closed = False
        self.fenced = False

    async def open(self) -> None:
        with kafka.broker_errors(f"init producer for {self.tp.topic}[{self.tp.partition}]"):
            await self.producer.start()  # step 1: fences the previous owner
        self.store = self.processor.open_store(self.tp.partition)
        self.states = InvoiceStates(self.store, self.settings.state_cache_size, wire.decode_state, wire.encode_state)

    async def process(self, records: Sequence[ConsumerRecord]) -> BatchStats | None:
        """Decide one batch of this partition in one transaction.

        Commit order, step by step; reordering these lines breaks the guarantee:

        1. ``begin_transaction``.
        2. For each record in offset order: decode (bad -> a DLQ record), decide
           against pending/cached/stored state, stage the new state, append the
           outcome and the state record to the transaction's batches.
        3. Ship the batches and wait for the broker's acks (changelog offsets).
        4. ``send_offsets_to_transaction``: last offset + 1 for this partition.
        5. ``commit_transaction``: outcomes, state, DLQ and offsets appear
           together for read_committed readers, or not at all.
        6. Only now write the staged states to the local store, with the
           changelog offset they are current to. A crash before this line
           leaves the store behind the changelog, which the next restore fixes.

        Any failure in 1-5 aborts: staged state is dropped and the consumer
        seeks back to the batch's first offset, so the batch is decided again.
        """
        async with self.lock:
            if self.closed or self.fenced or self.states is None:
                return None
            started = time.perf_counter()
            stats = BatchStats(records=len(records))
            try:
                await self._transact(records, stats)
            except FencedError:
                self.fenced = True
                self.states.discard()
                log.warning("partition fenced by a newer owner", topic=self.tp.topic, partition=self.tp.partition)
                self.processor.consumer_pause(self.tp)
                return None
            except BrokerError as exc:
                self.states.discard()
                await self._abort()
                self.processor.seek(self.tp, records[0].offset)
                log.warning(
                    "batch aborted, will retry",
                    topic=self.tp.topic,
                    partition=self.tp.partition,
                    first_offset=records[0].offset,
                    error=str(exc),
                )
                await asyncio.sleep(0.5)
                return None
            self.processor.observe_batch(self.tp, records, stats, time.perf_counter() - started)
            return stats

    async def _transact(self, records: Sequence[ConsumerRecord], stats: BatchStats) -> None:
        assert self.states is not None
        settings = self.settings
        partition = self.tp.partition
        outcomes_partition = partition % self.processor.partitions[settings.topic_outcomes]
        dlq_partition = partition % self.processor.partitions[settings.topic_dlq]
        states = self.states
        now = utc_now()
        by_kind = stats.by_kind
        max_bytes = settings.max_event_bytes
        topic_outcomes, topic_state, topic_dlq = settings.topic_outcomes, settings.topic_state, settings.topic_dlq

        with kafka.broker_errors("begin transaction"):
            await self.producer.begin_transaction()  # step 1
        batch = kafka.TxnBatch(self.producer)
        check = settings.validate_produced
        for record in records:  # step 2
            try:
                event = wire.decode_event(record.key, record.value, record.headers, max_bytes=max_bytes)
            except InvalidEventError as exc:
                stats.dlq += 1
                stats.dlq_reasons[exc.reason] = stats.dlq_reasons.get(exc.reason, 0) + 1
                if not batch.append(topic_dlq, dlq_partition, record.key, record.value, dlq_headers(record, exc, exc.reason, now)):
                    await batch.ship_full()
                continue
            invoice = event.key
            decision = decide(states.get(invoice), event, now)
            kind = decision.kind
            by_kind[kind] += 1
            key = record.key
            outcome = outcome_bytes(decision, record, now, invoice)
            if not batch.append(topic_outcomes, outcomes_partition, key, outcome):
                await batch.ship_full()
            state = states.put(invoice, decision.state) if kind is not _DUPLICATE else None
            if state is not None and not batch.append(topic_state, partition, key, state):
                await batch.ship_full()
            if check == "all" or (check == "sample" and record is records[0]):
                # A bug that produced off-schema stops the processor here, before
                # the commit: nothing off-schema is ever committed.
                wire.validate_produced(outcome, "outcome")
                if state is not None:
                    wire.validate_produced(state, "state")
        last = await batch.flush()  # step 3
        with kafka.broker_errors("commit transaction"):
            await self.producer.send_offsets_to_transaction(  # step 4
                {self.tp: records[-1].offset + 1}, self.processor.group_id
            )
            await self.producer.commit_transaction()  # step 5
        changelog_last = last.get((topic_state, partition))
        if changelog_last is not None:
            states.commit(changelog_last + 1)  # step 6
        else:
            states.discard()

    async def _abort(self) -> None:
        with contextlib.suppress(Exception):
            await self.producer.abort_transaction()

    async def close(self) -> None:
        """Finish the in-flight batch (the lock), then release everything."""
        async with self.lock:
            self.closed = True
            with contextlib.suppress(Exception):
                await self.producer.stop()
            if self.store is not None:
                self.store.close()


class Processor(ConsumerRebalanceListener):
    """The ``process`` command: a consumer group and its partition workers."""

    def __init__(self, settings: Settings, *, metrics: Any = None, in_memory_state: bool = False) -> None:
        self.settings = settings
        self.group_id = settings.processor_group_id
        self.metrics = metrics
        self.in_memory_state = in_memory_state
        self.workers: dict[TopicPartition, PartitionWorker] = {}
        self.partitions: dict[str, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self._fatal: BaseException | None = None
        self.ready = asyncio.Event()
        self.processed = 0

    # -- wiring

    def open_store(self, partition: int) -> PartitionStore:
        if self.in_memory_state:
            return MemoryPartitionStore()
        path = Path(self.settings.state_dir) / f"{self.settings.topic_events}-{partition}"
        return RocksPartitionStore(path)

    def consumer_pause(self, tp: TopicPartition) -> None:
        if self.consumer is not None:
            self.consumer.pause(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self.consumer is not None and tp in self.consumer.assignment():
            self.consumer.seek(tp, offset)

    def observe_batch(self, tp: TopicPartition, records: Sequence[ConsumerRecord], stats: BatchStats, seconds: float) -> None:
        self.processed += stats.records
        log.info(
            "batch committed",
            partition=tp.partition,
            first_offset=records[0].offset,
            last_offset=records[-1].offset,
            records=stats.records,
            dlq=stats.dlq,
            duration_ms=round(seconds * 1000, 2),
            **{kind.value: n for kind, n in stats.by_kind.items()},
        )
        m = self.metrics
        if m is None:
            return
        observe_lag(m, self.consumer, self.group_id, tp, records[-1].offset + 1)
        m.batches_total.inc()
        m.batch_seconds.observe(seconds)
        for kind, n in stats.by_kind.items():
            if n:
                m.events_total.labels(outcome=kind.value).inc(n)
        if stats.dlq:
            m.events_total.labels(outcome="dlq").inc(stats.dlq)
            for reason, n in stats.dlq_reasons.items():
                m.dlq_total.labels(reason=reason).inc(n)

    # -- rebalance (awaited by aiokafka's coordinator)

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        gone = [self.workers.pop(tp) for tp in revoked if tp in self.workers]
        await asyncio.gather(*(w.close() for w in gone))
        if gone:
            log.info("partitions revoked", partitions=sorted(w.tp.partition for w in gone))
        self._gauge_assigned()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        new = [tp for tp in assigned if tp not in self.workers]
        if not new:
            return
        try:
            workers = {tp: PartitionWorker(self, tp) for tp in new}
            await asyncio.gather(*(w.open() for w in workers.values()))  # step 1
            await self._restore(workers)  # step 2
            assert self.consumer is not None
            positions: dict[TopicPartition, int] = {}
            begins = await kafka.beginning_offsets(self.consumer, new)
            for tp in new:  # step 3
                with kafka.broker_errors("fetch committed offset"):
                    committed = await self.consumer.committed(tp)
                positions[tp] = begins[tp] if committed is None else committed
            # No await from here to the registration: the main loop must never
            # hold records of a registered worker fetched from another position.
            for tp, position in positions.items():
                self.consumer.seek(tp, position)
            self.workers.update(workers)
        except BaseException as exc:
            # aiokafka logs and swallows callback errors; a partition we
            # failed to open would then be silently ignored. Stop instead.
            self._fatal = exc
            raise
        # The cache budget is per process: share it among the partitions held now.
        share = self.settings.state_cache_size // max(len(self.workers), 1)
        for worker in self.workers.values():
            if worker.states is not None:
                worker.states.resize(share)
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in new), cache_per_partition=share)
        self._gauge_assigned()

    def _gauge_assigned(self) -> None:
        if self.metrics is not None:
            self.metrics.assigned_partitions.labels(role="processor").set(len(self.workers))

    async def _restore(self, workers: dict[TopicPartition, PartitionWorker]) -> None:
        states = {tp.partition: w.states for tp, w in workers.items() if w.states is not None}
        await restore_states(self.settings, states, metrics=self.metrics)

    # -- main loop

    def _start_batch(self, tp: TopicPartition, records: Sequence[ConsumerRecord]) -> Any:
        worker = self.workers.get(tp)
        if worker is None:
            self.seek(tp, records[0].offset)  # fetched before the worker was ready: rewind, never drop
            return None
        return worker.process(records)

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        self.partitions = await kafka.ensure_topics(settings)
        consumer = kafka.new_consumer(
            settings,
            group_id=self.group_id,
            max_poll_interval_ms=300_000,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 5, 500),
        )
        self.consumer = consumer
        consumer.subscribe([settings.topic_events], listener=self)
        async with kafka.started(consumer):
            log.info("processor started", group=self.group_id, topic=settings.topic_events)
            self.ready.set()
            try:
                await kafka.pipeline_partitions(
                    consumer,
                    stop,
                    self._start_batch,
                    timeout_ms=settings.batch_timeout_ms,
                    max_records=settings.batch_max_records,
                    fatal=lambda: self._fatal,
                )
            finally:
                self.ready.clear()
                # stop() does not call on_partitions_revoked: finish and close here.
                await self.on_partitions_revoked(list(self.workers))
                log.info("processor stopped", processed=self.processed)


def observe_lag(metrics: Any, consumer: AIOKafkaConsumer | None, group: str, tp: TopicPartition, position: int) -> None:
    """Consumer lag from the high watermark the last fetch reported (no extra request)."""
    if consumer is None:
        return
    highwater = consumer.highwater(tp)
    if highwater is not None:
        metrics.consumer_lag.labels(group=group, topic=tp.topic, partition=str(tp.partition)).set(max(highwater - position, 0))


async def restore_states(
    settings: Settings, states: dict[int, InvoiceStates], *, metrics: Any = None, chunk: int = 20_000
) -> dict[int, int]:
    """Bring each partition's store up to the end of its changelog partition.

    Reads from the store's checkpoint (or the beginning) to the end offset
    (the last stable offset: read_committed), copying value bytes into the
    store in large write batches. Returns records restored per partition.
    """
    if not states:
        return {}
    topic = settings.topic_state
    consumer = kafka.new_consumer(settings, group_id=None, enable_auto_commit=False)
    restored = dict.fromkeys(states, 0)
    started = time.perf_counter()
    if metrics is not None:
        metrics.restore_in_progress.inc()
    try:
        async with kafka.started(consumer):
            tps = {p: TopicPartition(topic, p) for p in states}
            consumer.assign(list(tps.values()))
            ends = await kafka.end_offsets(consumer, list(tps.values()))
            begins = await kafka.beginning_offsets(consumer, list(tps.values()))
            todo: dict[TopicPartition, int] = {}
            for p, tp in tps.items():
                store = states[p].store
                start = store.changelog_offset
                if start is None or start < begins[tp] or start > ends[tp]:
                    if start is not None:
                        log.warning("state store does not match the changelog; rebuilding", partition=p, checkpoint=start)
                        store.wipe()
                    start = begins[tp]
                states[p].clear_cache()
                if start >= ends[tp]:
                    continue
                consumer.seek(tp, start)
                todo[tp] = ends[tp]
            while todo:
                with kafka.broker_errors("restore fetch"):
                    fetched = await consumer.getmany(*todo, timeout_ms=500, max_records=chunk)
                for tp, records in fetched.items():
                    if records:
                        states[tp.partition].store.apply(
                            ((r.key, r.value) for r in records if r.key is not None and r.value is not None),
                            records[-1].offset + 1,
                        )
                        restored[tp.partition] += len(records)
                        if metrics is not None:
                            metrics.restore_records_total.labels(partition=str(tp.partition)).inc(len(records))
                for tp in list(todo):
                    with kafka.broker_errors("restore position"):
                        position = await consumer.position(tp)
                    if position >= todo[tp]:
                        # The end may be a transaction marker: record it so the
                        # next restore starts after it.
                        store = states[tp.partition].store
                        if (store.changelog_offset or 0) < todo[tp]:
                            store.apply((), todo[tp])
                        del todo[tp]
    finally:
        if metrics is not None:
            metrics.restore_in_progress.dec()
    seconds = time.perf_counter() - started
    for p, n in restored.items():
        if metrics is not None:
            metrics.restore_seconds.labels(partition=str(p)).set(seconds)
    log.info(
        "state restored",
        partitions=sorted(states),
        records=sum(restored.values()),
        seconds=round(seconds, 3),
        rate=round(sum(restored.values()) / seconds) if seconds > 0 else None,
    )
    return restored
