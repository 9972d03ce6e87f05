"""``invoice-sm process``: events -> outcomes + state, exactly once.

A consumer group reads ``invoice.events`` (read_committed, no auto-commit).
Each assigned partition has a ``PartitionWorker`` that owns a transactional
producer (``transactional_id`` = group/topic/partition, so a new owner
fences the old one: aiokafka has no KIP-447), the partition's state store,
and its transactions. Records of one partition are decided in offset
order; partitions proceed concurrently.

Taking a partition (on assignment, and again after a fatal producer state
or a timed-out transaction) is the one sequence of ``adapters.ownership``
(the deliverer's too); its order is the guarantee and is written there.
The commit order of a batch is written in ``PartitionWorker.process``; what
happens when a batch cannot commit, in ``PartitionWorker._recover``.

``decide_batch`` is the processor's and ``replay``'s loop: the native step
(``adapters.native``) for the common valid event, and ``decide_records``
(decode -> decide -> stage), the Python path and the tests' exactly-once
oracle, for every other record. The Kafka clients
come from ``KafkaClients``, so the partition worker runs over fakes in unit
tests (``tests/support/fakes.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from adapters import kafka, kafka_records, native, ownership, topics, wire
from adapters.metrics import NULL_METRICS, Metrics
from adapters.native import NativeStep
from adapters.partition_reader import open_reader
from adapters.settings import Settings
from adapters.store import InvoiceStates, MemoryPartitionStore, PartitionStore, RocksPartitionStore
from domain.decide import States, decide_in_order
from domain.errors import (
    AccessDeniedError,
    BrokerError,
    FencedError,
    InvalidEventError,
    ProducerFailedError,
    TransactionTimedOutError,
)
from domain.model import Decision, DecisionKind, LifecycleEvent
from domain.status import Origin

log = structlog.get_logger("invoice_sm.processor")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: Retry backoff for a partition that cannot commit: doubles from the first, capped.
_RETRY_FIRST_S, _RETRY_MAX_S = 0.5, 10.0
#: An ACL refusal is retried too (an operator may grant it), but slowly.
_DENIED_RETRY_S = 30.0
#: How long a call on a producer that may be stuck behind a dead broker gets.
_PRODUCER_CALL_S = 10.0
#: A batch still open after this long (or half the transaction timeout) marks its partition stalled.
_STUCK_AFTER_S = 5.0
#: The transactional producer's batch size unless a topic's max.message.bytes is smaller.
_MAX_BATCH_BYTES = 512 * 1024


Staged = TypeVar("Staged")


@dataclass(frozen=True, slots=True)
class DecidedRecords(Generic[Staged]):
    """One partition's records, decoded and decided in offset order."""

    #: The records that decoded, in offset order.
    records: list[ConsumerRecord]
    #: One per record of ``records``: its decision, and what staging the new
    #: state returned (the encoded changelog value; ``None`` for a duplicate).
    decisions: list[tuple[Decision, Staged | None]]
    #: The records that did not decode, and why (the DLQ reason is ``error.reason``).
    invalid: list[tuple[ConsumerRecord, InvalidEventError]]


def decide_records(
    records: Iterable[ConsumerRecord], states: States[Staged], *, max_bytes: int, now: str | None
) -> DecidedRecords[Staged]:
    """Decode -> decide -> stage, for one partition's records in offset order.

    The Python path: ``decide_batch`` runs it for every record the native
    step declines (and for all of them without it), and the tests' oracle
    runs it whole, so the processor, ``replay`` and the oracle cannot drift apart. A record that does
    not decode (``wire.decode_record``) changes no state; the others are
    decided by ``domain.decide.decide_in_order`` against ``states``, which
    stages every state but a duplicate's.
    """
    decode = wire.decode_record
    decoded: list[ConsumerRecord] = []
    events: list[LifecycleEvent] = []
    invalid: list[tuple[ConsumerRecord, InvalidEventError]] = []
    for record in records:
        try:
            event = decode(record, max_bytes=max_bytes)
        except InvalidEventError as exc:
            invalid.append((record, exc))
            continue
        decoded.append(record)
        events.append(event)
    return DecidedRecords(decoded, decide_in_order(events, states, now), invalid)


#: One decided record, as the transaction writes it: the record, its decision
#: kind, for a WeChat report that is not a duplicate whether its move was
#: legal (else ``None``), the outcome value, and the new state's changelog
#: value (``None`` for a duplicate: nothing to write).
Verdict = tuple[ConsumerRecord, DecisionKind, bool | None, bytes, bytes | None]


@dataclass(frozen=True, slots=True)
class Verdicts:
    """One partition's records decided and encoded, in offset order."""

    decided: list[Verdict]
    #: The records that did not decode, and why (the DLQ reason is ``error.reason``).
    invalid: list[tuple[ConsumerRecord, InvalidEventError]]
    #: How many records the Python path judged (the native step declined them, or is off).
    python_path: int


def decide_batch(
    records: Sequence[ConsumerRecord],
    states: InvoiceStates,
    *,
    native: NativeStep | None,
    max_bytes: int,
    now: str | None,
) -> Verdicts:
    """Decode -> decide -> stage -> encode, for one partition's records in offset order.

    The processor's and ``replay``'s loop. Each record goes to the native
    step first (``adapters.native``), which answers for the common valid
    event; any record it does not answer for (anything unusual, invalid
    ones included) takes the Python path (``_python_path``) at its turn,
    against the same staged states, and without the native step the whole
    batch does. Both paths give the same bytes
    (tests/fuzz/test_native_step.py), so which one decided a record changes
    nothing downstream.
    """
    if native is None:
        return _python_path(records, states, max_bytes=max_bytes, now=now)
    decided: list[Verdict] = []
    invalid: list[tuple[ConsumerRecord, InvalidEventError]] = []
    append = decided.append
    value_of, stage = states.value, states.stage
    unreadable = kafka_records.UnreadableRecord
    python_path = 0
    for record in records:
        key = record.key
        if type(key) is bytes and type(record) is not unreadable:
            verdict = native.decide(
                key,
                record.value,
                record.headers,
                value_of(key),
                now,
                record.topic,
                record.partition,
                record.offset,
                max_bytes,
            )
            if verdict is not None:
                kind, legal, outcome, state = verdict
                if state is not None:
                    stage(key, state)
                append((record, kind, legal, outcome, state))
                continue
        declined = _python_path((record,), states, max_bytes=max_bytes, now=now)
        decided += declined.decided
        invalid += declined.invalid
        python_path += 1
    return Verdicts(decided, invalid, python_path)


def _python_path(records: Sequence[ConsumerRecord], states: InvoiceStates, *, max_bytes: int, now: str | None) -> Verdicts:
    """``decide_records`` over ``records``, each decision with its outcome value: the verdicts the native step gives."""
    decided = decide_records(records, states, max_bytes=max_bytes, now=now)
    wechat, duplicate = Origin.WECHAT, DecisionKind.DUPLICATE
    outcome_bytes = wire.outcome_bytes
    verdicts: list[Verdict] = []
    for record, (decision, state) in zip(decided.records, decided.decisions, strict=True):
        event = decision.event
        legal = decision.legal if event.origin is wechat and decision.kind is not duplicate else None
        verdicts.append((record, decision.kind, legal, outcome_bytes(decision, record, now, event.key), state))  # type: ignore[arg-type]  # now is set in service
    return Verdicts(verdicts, decided.invalid, len(records))


@dataclass(frozen=True)
class KafkaClients:
    """How the processor makes its Kafka clients: aiokafka's from the settings,
    or fakes in unit tests (``tests/support/fakes.py``)."""

    #: ``(transactional_id, max_batch_bytes) -> producer``
    transactional_producer: Callable[[str, int], Any]
    #: ``(**consumer options) -> consumer`` (``kafka.new_consumer``'s options)
    consumer: Callable[..., Any]

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaClients:
        return cls(
            transactional_producer=lambda txn_id, batch_bytes: kafka.new_transactional_producer(
                settings, txn_id, max_batch_size=batch_bytes
            ),
            consumer=lambda **options: kafka.new_consumer(settings, **options),
        )


@dataclass
class BatchStats:
    records: int = 0
    dlq: int = 0
    dlq_truncated: int = 0
    by_kind: dict[DecisionKind, int] = field(default_factory=lambda: dict.fromkeys(DecisionKind, 0))
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    #: WeChat reports decided (duplicates aside), by ``legal``: ``False`` is a divergence.
    wechat_reports: dict[bool, int] = field(default_factory=dict)
    #: Records the Python path judged (``Verdicts.python_path``); the native step judged the rest.
    python_path: int = 0


class PartitionWorker:
    """One input partition: its producer, its state, its transactions.

    A batch that cannot commit never stops the partition for good; what the
    worker does next depends on why (``_recover``), and while it cannot make
    progress it says so once (log line, ``partition_stalled`` gauge, ``/readyz``).
    """

    def __init__(self, processor: Processor, tp: TopicPartition) -> None:
        self.processor = processor
        self.settings = processor.settings
        self.tp = tp
        self.txn_id = kafka.transactional_id(processor.group_id, tp.topic, tp.partition)
        self.producer = processor.clients.transactional_producer(self.txn_id, processor.batch_bytes)
        self.store: PartitionStore | None = None
        self.states: InvoiceStates | None = None
        self.lock = asyncio.Lock()
        self.closing = asyncio.Event()
        self.stall: str | None = None
        self._stalled_since = 0.0
        self._attempts = 0
        self._txn_began = 0.0

    async def start_producer(self) -> None:
        """Ownership step 1: ``InitProducerId`` fences any previous producer of
        this transactional id and resolves its open transaction."""
        with kafka.transaction_errors(f"init producer for {self.tp.topic}[{self.tp.partition}]"):
            await self.producer.start()

    def open_store(self) -> None:
        if self.store is None:
            self.store = self.processor.open_store(self.tp.partition)
            self.states = InvoiceStates(self.store, self.settings.state_cache_size, wire.decode_state, wire.encode_state)

    async def process(self, records: Sequence[ConsumerRecord]) -> BatchStats | None:
        """Decide one batch of this partition in one transaction.

        Commit order, step by step; reordering these lines breaks the guarantee:

        0. ``prefetch``: the store starts reading the batch's uncached states
           in the background. Only a read: the store forgets it at its next
           write, so it changes no answer, and it may go anywhere before 2.
        1. ``begin_transaction``.
        2. ``decide_batch``: decode each record (bad -> a DLQ record), decide
           the others in offset order against pending/cached/stored state,
           staging each new state; append the DLQ copies, outcomes and state
           records to the transaction's batches.
        3. Ship the batches and wait for the broker's acks (changelog offsets).
        4. ``send_offsets_to_transaction``: last offset + 1 for this partition.
        5. ``commit_transaction``: outcomes, state, DLQ and offsets appear
           together for read_committed readers, or not at all.
        6. Only now write the staged states to the local store, with the
           changelog offset they are current to. A crash before this line
           leaves the store behind the changelog, which the next restore fixes.

        Any failure in 1-5 drops the staged state and hands over to
        ``_recover``, which leaves the partition positioned where the committed
        history ends, so the batch is decided again, once.
        """
        async with self.lock:
            if self.closing.is_set() or self.states is None:
                return None
            started = time.perf_counter()
            stats = BatchStats(records=len(records))
            # aiokafka waits for a dead broker without raising: a batch open
            # this long says the partition is stuck before any error does.
            stuck_after = min(_STUCK_AFTER_S, self.settings.kafka_transaction_timeout_ms / 2000)
            watchdog = asyncio.get_running_loop().call_later(
                stuck_after, self._set_stall, "broker_unavailable", BrokerError(f"batch open for more than {stuck_after:g} s")
            )
            try:
                await self._transact(records, stats)
            except BrokerError as exc:
                self.states.discard()
                await self._recover(exc, records[0].offset)
                return None
            finally:
                watchdog.cancel()
            self._set_stall(None)
            self.processor.observe_batch(self.tp, records, stats, time.perf_counter() - started)
            return stats

    async def _transact(self, records: Sequence[ConsumerRecord], stats: BatchStats) -> None:
        assert self.states is not None
        settings = self.settings
        processor = self.processor
        partition = self.tp.partition
        outcomes_partition = partition % processor.partitions[settings.topic_outcomes]
        dlq_partition = partition % processor.partitions[settings.topic_dlq]
        dlq_limit = processor.dlq_record_bytes
        states = self.states
        now = utc_now()
        by_kind = stats.by_kind
        topic_outcomes, topic_state, topic_dlq = settings.topic_outcomes, settings.topic_state, settings.topic_dlq
        outcome_headers = wire.CLOUDEVENT_HEADERS

        if kafka.producer_is_fatal(self.producer):
            raise ProducerFailedError("producer is in a fatal state")
        # Step 0: the store reads the batch's uncached states on its own thread
        # (without the GIL) while this one begins the transaction and decodes.
        states.prefetch(record.key for record in records)
        self._txn_began = time.monotonic()
        with kafka.transaction_errors("begin transaction"):
            await self.producer.begin_transaction()  # step 1
        batch = kafka.TxnBatch(self.producer)
        verdicts = decide_batch(  # step 2
            records, states, native=processor.native, max_bytes=settings.max_event_bytes, now=now
        )
        stats.python_path = verdicts.python_path
        for record, exc in verdicts.invalid:
            stats.dlq += 1
            stats.dlq_reasons[exc.reason] = stats.dlq_reasons.get(exc.reason, 0) + 1
            key, value, headers, truncated = wire.dlq_copy(record, exc, exc.reason, now, max_record_bytes=dlq_limit)
            stats.dlq_truncated += truncated
            if not batch.append(topic_dlq, dlq_partition, key, value, headers):
                await batch.ship_full()
        # "sample" checks the batch's first record, "all" every one.
        validate_next = settings.validate_produced != "off"
        validate_all = settings.validate_produced == "all"
        append = batch.append
        wechat_reports = stats.wechat_reports
        for record, kind, legal, outcome, state in verdicts.decided:
            by_kind[kind] += 1
            if legal is not None:
                wechat_reports[legal] = wechat_reports.get(legal, 0) + 1
            key = record.key
            if not append(topic_outcomes, outcomes_partition, key, outcome, outcome_headers):
                await batch.ship_full()
            if state is not None and not append(topic_state, partition, key, state):
                await batch.ship_full()
            if validate_next:
                # A bug that produced off-schema stops the processor here, before
                # the commit: nothing off-schema is ever committed.
                validate_next = validate_all
                wire.validate_produced(outcome, "outcome")
                if state is not None:
                    wire.validate_produced(state, "state")
        last = await batch.flush()  # step 3
        with kafka.transaction_errors("commit transaction"):
            await self.producer.send_offsets_to_transaction(  # step 4
                {self.tp: records[-1].offset + 1}, processor.group_id
            )
            await self.producer.commit_transaction()  # step 5
        changelog_last = last.get((topic_state, partition))
        if changelog_last is not None:
            states.commit(changelog_last + 1)  # step 6
        else:
            states.discard()

    # -- when a batch cannot commit

    async def _recover(self, error: BrokerError, first_offset: int) -> None:
        """Put the partition back where it can commit, according to why it could not.

        - A bumped epoch while our transaction was young: a newer owner may
          have fenced us. Pause; after twice the session timeout (by then a
          zombie has learned it left the group and was revoked) a partition
          still assigned here is taken back through the ownership sequence.
        - A bumped epoch after the transaction was open for its timeout: the
          broker aborted it. Take ownership again at once (nobody else has it).
        - aiokafka's fatal state, or an abort that does not complete: a new
          producer with the same transactional id takes over (its init aborts
          the open transaction and fences only the old producer).
        - An ACL refusal: retried every 30 s, through a new producer.
        - Anything else (broker unavailable, timeouts): abort, rewind to the
          batch's first offset, retry with backoff.

        Taking ownership again re-reads the committed offset rather than
        trusting ``first_offset``: a commit whose answer was lost may have landed.
        """
        role = "processor"
        metrics = self.processor.metrics
        timeout_s = self.settings.kafka_transaction_timeout_ms / 1000
        if isinstance(error, FencedError) and time.monotonic() - self._txn_began >= 0.9 * timeout_s:
            error = TransactionTimedOutError(f"transaction open longer than {timeout_s:g} s was aborted by the broker")
        if isinstance(error, FencedError):
            reason, delay, retake = "fenced", 2 * self.settings.kafka_session_timeout_ms / 1000, True
            self.processor.consumer_pause(self.tp)
        elif isinstance(error, TransactionTimedOutError):
            reason, delay, retake = "txn_timeout", 0.0, True
        elif isinstance(error, AccessDeniedError):
            reason, delay, retake = "unauthorized", _DENIED_RETRY_S, True
        elif isinstance(error, ProducerFailedError) or kafka.producer_is_fatal(self.producer) or not await self._abort():
            reason, delay, retake = "producer_fatal", 0.0, True
        else:
            reason, delay, retake = "broker_unavailable", self._backoff(), False
        self._attempts += 1
        metrics.broker_retries_total.labels(role, reason).inc()
        self._set_stall(reason, error)
        if delay and await self._closed_within(delay):
            return
        if not retake:
            self.processor.seek(self.tp, first_offset)
            return
        while not self.closing.is_set():
            try:
                await self._retake(reason)
                self.processor.consumer_resume(self.tp)
                return
            except BrokerError as exc:
                self._attempts += 1
                metrics.broker_retries_total.labels(role, "broker_unavailable").inc()
                self._set_stall("broker_unavailable", exc)
                if await self._closed_within(self._backoff()):
                    return

    async def replace_producer(self, reason: str) -> None:
        """A new producer with the same transactional id (its init fences only the old one)."""
        old = self.producer
        self.producer = self.processor.clients.transactional_producer(self.txn_id, self.processor.batch_bytes)
        self.processor.metrics.producer_replacements_total.labels("processor", reason).inc()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.stop(), _PRODUCER_CALL_S)

    async def _retake(self, reason: str) -> None:
        """The ownership sequence again, for this one partition, with a new producer."""
        await self.replace_producer(reason)
        position = (await self.processor.take_ownership({self.tp: self}))[self.tp].position
        self.processor.seek(self.tp, position)
        log.info("partition_retaken", partition=self.tp.partition, reason=reason, position=position)

    async def _abort(self) -> bool:
        """Abort the open transaction; ``False`` when the producer could not."""
        try:
            await asyncio.wait_for(self.producer.abort_transaction(), _PRODUCER_CALL_S)
        except Exception:  # noqa: BLE001 - any failure here means: replace the producer
            return False
        return True

    def _backoff(self) -> float:
        base = min(_RETRY_FIRST_S * 2 ** min(self._attempts, 10), _RETRY_MAX_S)
        return base * random.uniform(0.75, 1.25)

    async def _closed_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)
        return self.closing.is_set()

    def mark_stalled(self, reason: str | None, error: BaseException | None = None) -> None:
        """Stalled for ``reason`` (``None``: resumed); said once per change of state."""
        self._set_stall(reason, error)

    def _set_stall(self, reason: str | None, error: BaseException | None = None) -> None:
        """Record a change of state once: a log line and the gauge, not one line per attempt."""
        if reason == self.stall:
            return
        gauge = self.processor.metrics.partition_stalled
        partition = str(self.tp.partition)
        if self.stall is not None:
            gauge.labels("processor", partition, self.stall).set(0)
        if reason is None:
            log.info(
                "partition_resumed",
                partition=self.tp.partition,
                was=self.stall,
                attempts=self._attempts,
                stalled_s=round(time.monotonic() - self._stalled_since, 1),
            )
            self._attempts = 0
        else:
            if self.stall is None:
                self._stalled_since = time.monotonic()
            gauge.labels("processor", partition, reason).set(1)
            log.warning("partition_stalled", partition=self.tp.partition, reason=reason, error=str(error), alert=True)
        self.stall = reason

    async def close(self) -> None:
        """Finish the in-flight batch (the lock), then release everything."""
        self.closing.set()
        async with self.lock:
            self._set_stall(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.stop(), _PRODUCER_CALL_S)
            if self.store is not None:
                self.store.close()


class Processor(ConsumerRebalanceListener):
    """The ``process`` command: a consumer group and its partition workers."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        in_memory_state: bool = False,
        clients: KafkaClients | None = None,
    ) -> None:
        self.settings = settings
        self.group_id = settings.processor_group_id
        # A private registry nobody scrapes (not NullMetrics): tests read the
        # figures of a processor they started without metrics.
        self.metrics = metrics if metrics is not None else Metrics()
        self.in_memory_state = in_memory_state
        self.clients = clients if clients is not None else KafkaClients.from_settings(settings)
        self.workers: dict[TopicPartition, PartitionWorker] = {}
        self.partitions: dict[str, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self._fatal: BaseException | None = None
        #: Partitions assigned and still being taken over (``on_partitions_assigned``).
        self._assigning: dict[TopicPartition, PartitionWorker] = {}
        self.ready = asyncio.Event()
        self.processed = 0
        self.batch_bytes = _MAX_BATCH_BYTES
        self.dlq_record_bytes = topics.DEFAULT_MAX_MESSAGE_BYTES
        self.native = native.for_setting(settings.native_step)

    # -- wiring

    def open_store(self, partition: int) -> PartitionStore:
        if self.in_memory_state:
            return MemoryPartitionStore()
        path = Path(self.settings.state_dir) / f"{self.settings.topic_events}-{partition}"
        return RocksPartitionStore(path, write_ahead_log=False)  # a cache of invoice.state

    def is_ready(self) -> bool:
        """Ready while consuming and no partition is stalled (``/readyz``)."""
        return self.ready.is_set() and not self.stalled()

    def stalled(self) -> dict[int, str]:
        """Partitions that cannot make progress, with the reason (assigned ones still being taken over too)."""
        return {tp.partition: w.stall for tp, w in (*self._assigning.items(), *self.workers.items()) if w.stall}

    def consumer_pause(self, tp: TopicPartition) -> None:
        if self.consumer is not None and tp in self.consumer.assignment():
            self.consumer.pause(tp)

    def consumer_resume(self, tp: TopicPartition) -> None:
        if self.consumer is not None and tp in self.consumer.assignment():
            self.consumer.resume(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if self.consumer is not None and tp in self.consumer.assignment():
            self.consumer.seek(tp, offset)

    def observe_batch(self, tp: TopicPartition, records: Sequence[ConsumerRecord], stats: BatchStats, seconds: float) -> None:
        self.processed += stats.records
        log.info(
            "batch_committed",
            partition=tp.partition,
            first_offset=records[0].offset,
            last_offset=records[-1].offset,
            records=stats.records,
            dlq=stats.dlq,
            python_path=stats.python_path,
            duration_ms=round(seconds * 1000, 2),
            **{kind.value: n for kind, n in stats.by_kind.items()},
        )
        m = self.metrics
        observe_lag(m, self.consumer, self.group_id, tp, records[-1].offset + 1)
        m.batches_total.inc()
        m.batch_seconds.observe(seconds)
        for kind, n in stats.by_kind.items():
            if n:
                m.events_total.labels(outcome=kind.value).inc(n)
        for legal, n in stats.wechat_reports.items():
            m.wechat_reports_total.labels(legal="true" if legal else "false").inc(n)
        m.decision_steps_total.labels(step="native").inc(stats.records - stats.python_path)
        m.decision_steps_total.labels(step="python").inc(stats.python_path)
        if stats.dlq:
            m.events_total.labels(outcome="dlq").inc(stats.dlq)
            for reason, n in stats.dlq_reasons.items():
                m.dlq_total.labels(reason=reason).inc(n)
            if stats.dlq_truncated:
                m.dlq_truncated_total.inc(stats.dlq_truncated)

    # -- ownership

    async def take_ownership(self, workers: dict[TopicPartition, PartitionWorker]) -> dict[TopicPartition, ownership.Committed]:
        """The partition-ownership sequence (``adapters.ownership``, where its
        order is written); returns where each partition resumes.

        Used on assignment and whenever a worker takes its partition back:
        fence = the workers' transactional producers; restore = each state
        store from its changelog partition (``invoice.state``, same number),
        from its checkpoint to the end.
        """

        async def fence(tp: TopicPartition) -> None:
            await workers[tp].start_producer()

        async def restore(partitions: list[TopicPartition]) -> None:
            states: dict[int, InvoiceStates] = {}
            for tp in partitions:
                workers[tp].open_store()
                if (worker_states := workers[tp].states) is not None:
                    states[tp.partition] = worker_states
            await restore_states(
                self.settings,
                states,
                metrics=self.metrics,
                consumer=self.clients.consumer(group_id=None),
            )

        assert self.consumer is not None
        return await ownership.take_ownership(self.consumer, list(workers), fence=fence, restore=restore)

    async def _take_ownership_through_outages(
        self, workers: dict[TopicPartition, PartitionWorker]
    ) -> dict[TopicPartition, ownership.Committed]:
        """``take_ownership``, waiting out a broker that cannot be reached.

        A rebalance often comes *because* of an outage (sessions expire while
        the broker is down), so the assignment is exactly when producers
        cannot be initialised. The process does not stop for that: the
        partitions count as stalled (``/readyz`` false, the gauge, one log
        line each), and the sequence starts again with new producers, with
        backoff, until the broker answers. Any other error still stops the
        process: a partition we cannot open must not be silently skipped.
        """
        attempts = 0
        while True:
            try:
                committed = await self.take_ownership(workers)
            except BrokerError as exc:
                if isinstance(exc, FencedError):
                    raise  # a newer producer of ours appeared during our own init: not an outage
                attempts += 1
                self.metrics.broker_retries_total.labels("processor", "broker_unavailable").inc()
                for worker in workers.values():
                    worker.mark_stalled("broker_unavailable", exc)
                await asyncio.sleep(min(_RETRY_FIRST_S * 2 ** min(attempts - 1, 10), _RETRY_MAX_S) * random.uniform(0.75, 1.25))
                for worker in workers.values():
                    await worker.replace_producer("broker_unavailable")
                continue
            for worker in workers.values():
                worker.mark_stalled(None)
            return committed

    # -- rebalance (awaited by aiokafka's coordinator)

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        gone = [self.workers.pop(tp) for tp in revoked if tp in self.workers]
        await asyncio.gather(*(w.close() for w in gone))
        if gone:
            log.info("partitions_revoked", partitions=sorted(w.tp.partition for w in gone))
        self._gauge_assigned()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        new = [tp for tp in assigned if tp not in self.workers]
        if not new:
            return
        workers = {tp: PartitionWorker(self, tp) for tp in new}
        self._assigning = workers
        try:
            committed = await self._take_ownership_through_outages(workers)
            assert self.consumer is not None

            def register(tp: TopicPartition) -> None:
                self.workers[tp] = workers[tp]

            ownership.seek(self.consumer, committed, register)
        except BaseException as exc:
            # aiokafka logs and swallows callback errors; a partition we
            # failed to open would then be silently ignored. Stop instead.
            self._fatal = exc
            await asyncio.gather(*(w.close() for w in workers.values()), return_exceptions=True)
            raise
        finally:
            self._assigning = {}
        # The cache budget is per process: share it among the partitions held now.
        share = self.settings.state_cache_size // max(len(self.workers), 1)
        for worker in self.workers.values():
            if worker.states is not None:
                worker.states.resize(share)
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in new), cache_per_partition=share)
        self._gauge_assigned()

    def _gauge_assigned(self) -> None:
        self.metrics.assigned_partitions.labels(role="processor").set(len(self.workers))

    # -- main loop

    def _start_batch(self, tp: TopicPartition, records: Sequence[ConsumerRecord]) -> Any:
        worker = self.workers.get(tp)
        if worker is None:
            self.seek(tp, records[0].offset)  # fetched before the worker was ready: rewind, never drop
            return None
        return worker.process(records)

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        self.partitions = await topics.ensure_topics(settings)
        limits = await topics.max_message_bytes(settings, [settings.topic_outcomes, settings.topic_state, settings.topic_dlq])
        # A batch the broker refuses can never commit: keep every batch, and so
        # every DLQ copy, under the smallest limit of the topics we write.
        smallest = min(limits.values())
        self.batch_bytes = max(min(_MAX_BATCH_BYTES, smallest - 1024), 16 * 1024)
        self.dlq_record_bytes = min(limits[settings.topic_dlq], self.batch_bytes)
        consumer = self.clients.consumer(
            group_id=self.group_id,
            max_poll_interval_ms=300_000,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 5, 500),
        )
        self.consumer = consumer
        consumer.subscribe([settings.topic_events], listener=self)
        async with kafka.started(consumer):
            log.info(
                "processor_started",
                group=self.group_id,
                topic=settings.topic_events,
                decision_step="python" if self.native is None else "native",
            )
            self.ready.set()
            try:
                await kafka.pipeline_partitions(
                    consumer,
                    stop,
                    self._start_batch,
                    timeout_ms=settings.batch_timeout_ms,
                    max_records=settings.batch_max_records,
                    fatal=lambda: self._fatal,
                    accepts=self.workers.__contains__,
                )
            finally:
                self.ready.clear()
                # stop() does not call on_partitions_revoked: finish and close here.
                await self.on_partitions_revoked(list(self.workers))
                log.info("processor_stopped", processed=self.processed)


def observe_lag(metrics: Metrics, consumer: AIOKafkaConsumer | None, group: str, tp: TopicPartition, position: int) -> None:
    """Consumer lag from the high watermark the last fetch reported (no extra request)."""
    if consumer is None:
        return
    highwater = consumer.highwater(tp)
    if highwater is not None:
        metrics.consumer_lag.labels(group=group, topic=tp.topic, partition=str(tp.partition)).set(max(highwater - position, 0))


async def restore_states(
    settings: Settings,
    states: dict[int, InvoiceStates],
    *,
    metrics: Metrics = NULL_METRICS,
    chunk: int = 20_000,
    consumer: Any = None,
) -> dict[int, int]:
    """Bring each partition's store up to the end of its changelog partition.

    Reads (``adapters.partition_reader``, read_committed: to the last stable
    offset) from the store's checkpoint, or the beginning when the store has
    none or one the changelog no longer matches, copying value bytes into the
    store in large write batches, each with the offset it is current to.
    ``consumer`` (default: a new one of no group) is started and stopped here.
    Returns records restored per partition.
    """
    if not states:
        return {}
    restored = dict.fromkeys(states, 0)
    started = time.perf_counter()
    metrics.restore_in_progress.inc()
    try:
        # No stall timeout: during a broker outage the restore waits for it.
        async with open_reader(settings, settings.topic_state, consumer=consumer, chunk=chunk, stall_timeout_s=None) as reader:
            ranges = await reader.plan(states)
            for p, r in ranges.items():
                store = states[p].store
                checkpoint = store.changelog_offset
                if checkpoint is not None and not r.log_start <= checkpoint <= r.end:
                    log.warning("state_store_rebuilt", reason="checkpoint_outside_changelog", partition=p, checkpoint=checkpoint)
                    store.wipe()
                    checkpoint = None
                states[p].clear_cache()
                ranges[p] = r.starting_at(r.log_start if checkpoint is None else checkpoint)
            async with contextlib.aclosing(reader.read(ranges)) as batches:
                async for p, records, next_offset in batches:
                    if (states[p].store.changelog_offset or 0) >= next_offset and not records:
                        continue
                    # A tombstone (value None) deletes: restore, replay and
                    # reconcile all read a compacted changelog the same way. The
                    # checkpoint may pass a final transaction marker, so the next
                    # restore starts after it.
                    states[p].store.apply(((r.key, r.value) for r in records if r.key is not None), next_offset)
                    restored[p] += len(records)
                    metrics.restore_records_total.labels(partition=str(p)).inc(len(records))
    finally:
        metrics.restore_in_progress.dec()
    seconds = time.perf_counter() - started
    for p in restored:
        metrics.restore_seconds.labels(partition=str(p)).set(seconds)
    log.info(
        "state_restored",
        partitions=sorted(states),
        records=sum(restored.values()),
        seconds=round(seconds, 3),
        rate=round(sum(restored.values()) / seconds) if seconds > 0 else None,
    )
    return restored
