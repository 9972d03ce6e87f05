"""In-memory fakes of the Kafka parts the processor uses: a broker, its
transactional producers and its consumers (cosmicpython's ``Fake*`` beside
each real port), so the partition worker runs in unit tests without a broker.

``FakeBroker`` keeps per (topic, partition) an append-only log and each
group's committed offsets. Like Kafka:

* a transactional producer's records land in the log as they are sent, but
  a read_committed consumer sees them only after the commit, and never after
  an abort; every commit and abort also takes one offset for its marker;
* the end offset a read_committed consumer is given is the last stable
  offset (the first offset of an open transaction);
* ``start()`` of a producer with a transactional id fences the previous
  producer of that id (its next call raises ``ProducerFenced``) and aborts
  its open transaction;
* ``send_offsets_to_transaction`` commits the group's offsets with the
  transaction, atomically with its records.

``broker.calls`` records the producers' calls in order, so tests can check
the commit order; ``FakeTransactionalProducer.fail(...)`` makes a call
raise (after an optional wait), to drive the recovery paths.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import ProducerFenced
from aiokafka.structs import ConsumerRecord

from adapters.settings import Settings, load_settings
from adapters.topics import topic_names
from consumers.delivery_lane import Job, PartitionLane
from domain.model import idempotency_key
from domain.status import ReimburseStatus

_Slot = tuple[str, int]


@dataclass
class _Txn:
    state: str = "open"  # open | committed | aborted
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    group: str | None = None


@dataclass
class _Entry:
    """One offset of a partition's log: a record, or a transaction marker (``record is None``)."""

    record: ConsumerRecord | None
    txn: _Txn | None = None

    @property
    def committed_record(self) -> bool:
        return self.record is not None and (self.txn is None or self.txn.state == "committed")


class FakeBroker:
    """Topics, partition logs, committed group offsets, transactional epochs."""

    def __init__(self, partitions: dict[str, int] | None = None) -> None:
        self.partitions: dict[str, int] = dict(partitions or {})
        self.logs: dict[_Slot, list[_Entry]] = {}
        self.group_offsets: dict[tuple[str, TopicPartition], int] = {}
        self.epochs: dict[str, int] = {}
        self.open_txns: dict[str, _Txn] = {}
        self.calls: list[tuple[str, str]] = []
        self.producers: list[FakeTransactionalProducer] = []

    # -- writing

    def log(self, topic: str, partition: int) -> list[_Entry]:
        return self.logs.setdefault((topic, partition), [])

    def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes]] = (),
        txn: _Txn | None = None,
    ) -> int:
        """Append one record (non-transactional unless ``txn``); returns its offset."""
        entries = self.log(topic, partition)
        offset = len(entries)
        record = ConsumerRecord(
            topic, partition, offset, 0, 0, key, value, None, len(key or b""), len(value or b""), list(headers)
        )
        entries.append(_Entry(record, txn))
        return offset

    def append_transaction(
        self, topic: str, partition: int, records: Iterable[tuple[bytes | None, bytes | None]], *, commit: bool = True
    ) -> None:
        """Records written in one transaction of an outside producer, then its marker (committed or aborted)."""
        txn = _Txn()
        for key, value in records:
            self.append(topic, partition, key, value, txn=txn)
        self.end_transaction(txn, commit=commit)

    def end_transaction(self, txn: _Txn, *, commit: bool) -> None:
        txn.state = "committed" if commit else "aborted"
        touched = {slot for slot, entries in self.logs.items() if any(e.txn is txn for e in entries)}
        for slot in touched:
            self.logs[slot].append(_Entry(None, txn))  # the marker takes an offset
        if commit and txn.group is not None:
            for tp, offset in txn.offsets.items():
                self.group_offsets[(txn.group, tp)] = offset

    # -- reading (what a test asserts on)

    def committed_records(self, topic: str, partition: int | None = None) -> list[ConsumerRecord]:
        """What a read_committed reader sees, in offset order (all partitions unless one is named)."""
        out: list[ConsumerRecord] = []
        for (t, p), entries in sorted(self.logs.items()):
            if t == topic and (partition is None or p == partition):
                out.extend(e.record for e in entries if e.committed_record)
        return out

    def last_stable_offset(self, topic: str, partition: int) -> int:
        for i, entry in enumerate(self.log(topic, partition)):
            if entry.txn is not None and entry.txn.state == "open":
                return i
        return len(self.log(topic, partition))

    # -- clients

    def transactional_producer(self, transactional_id: str, max_batch_bytes: int = 512 * 1024) -> FakeTransactionalProducer:
        producer = FakeTransactionalProducer(self, transactional_id, max_batch_bytes)
        self.producers.append(producer)
        return producer

    def consumer(self, **options: Any) -> FakeConsumer:
        return FakeConsumer(self, group_id=options.get("group_id"))


class FakeBatchBuilder:
    """aiokafka's ``BatchBuilder`` as ``TxnBatch`` uses it: append until full, then close."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        self.closed = False

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: Any, headers: list[tuple[str, bytes]]) -> Any:
        size = len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers) + 16
        if self.records and self.size + size > self.max_bytes:
            return None
        self.size += size
        self.records.append((key, value, list(headers)))
        return SimpleNamespace(size=size)

    def close(self) -> None:
        self.closed = True


class _TxnManager:
    """What ``adapters.kafka.producer_is_fatal`` looks at."""

    def __init__(self) -> None:
        self.fatal = False

    def is_fatal_error(self) -> bool:
        return self.fatal


class FakeTransactionalProducer:
    """An ``AIOKafkaProducer`` with a ``transactional_id``, as far as the processor calls it."""

    def __init__(self, broker: FakeBroker, transactional_id: str, max_batch_bytes: int) -> None:
        self.broker = broker
        self.transactional_id = transactional_id
        self.max_batch_bytes = max_batch_bytes
        self.epoch: int | None = None
        self.txn: _Txn | None = None
        self.stopped = False
        self._txn_manager = _TxnManager()
        self._faults: dict[str, tuple[BaseException, float]] = {}

    def fail(self, call: str, error: BaseException, *, after_s: float = 0.0) -> None:
        """The next ``call`` (e.g. ``"commit_transaction"``) waits ``after_s`` seconds, then raises ``error``."""
        self._faults[call] = (error, after_s)

    def make_fatal(self) -> None:
        """aiokafka's fatal state: ``producer_is_fatal`` says so from now on."""
        self._txn_manager.fatal = True

    async def _call(self, name: str) -> None:
        self.broker.calls.append((self.transactional_id, name))
        fault = self._faults.pop(name, None)
        if fault is not None:
            error, after_s = fault
            if after_s:
                await asyncio.sleep(after_s)
            raise error
        if name != "start" and self.broker.epochs.get(self.transactional_id) != self.epoch:
            raise ProducerFenced()

    async def start(self) -> None:
        await self._call("start")
        broker = self.broker
        # InitProducerId: a new epoch, and the previous producer's open transaction aborted.
        previous = broker.open_txns.pop(self.transactional_id, None)
        if previous is not None:
            broker.end_transaction(previous, commit=False)
        self.epoch = broker.epochs.get(self.transactional_id, -1) + 1
        broker.epochs[self.transactional_id] = self.epoch

    async def stop(self) -> None:
        self.broker.calls.append((self.transactional_id, "stop"))
        self.stopped = True

    async def begin_transaction(self) -> None:
        await self._call("begin_transaction")
        assert self.txn is None, "begin_transaction inside a transaction"
        self.txn = _Txn()
        self.broker.open_txns[self.transactional_id] = self.txn

    def create_batch(self) -> FakeBatchBuilder:
        return FakeBatchBuilder(self.max_batch_bytes)

    async def send_batch(self, builder: FakeBatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        await self._call("send_batch")
        assert self.txn is not None, "send outside a transaction"
        first = None
        for key, value, headers in builder.records:
            offset = self.broker.append(topic, partition, key, value, headers, txn=self.txn)
            first = offset if first is None else first
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(offset=first, topic=topic, partition=partition))
        return future

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Iterable[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """One record into the open transaction (the deliverer's owner marker); the future is already done."""
        await self._call("send")
        assert self.txn is not None, "send outside a transaction"
        assert partition is not None, "the fake needs an explicit partition"
        offset = self.broker.append(topic, partition, key, value, headers or (), txn=self.txn)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(offset=offset, topic=topic, partition=partition))
        return future

    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], group_id: str) -> None:
        await self._call("send_offsets_to_transaction")
        assert self.txn is not None
        self.txn.offsets.update(offsets)
        self.txn.group = group_id

    async def commit_transaction(self) -> None:
        await self._call("commit_transaction")
        self._end(commit=True)

    async def abort_transaction(self) -> None:
        await self._call("abort_transaction")
        self._end(commit=False)

    def _end(self, *, commit: bool) -> None:
        txn, self.txn = self.txn, None
        if txn is not None:
            self.broker.open_txns.pop(self.transactional_id, None)
            self.broker.end_transaction(txn, commit=commit)


class FakeConsumer:
    """An ``AIOKafkaConsumer`` (read_committed), as far as the processor and
    ``adapters.partition_reader`` call it: manual assignment, seek, pause,
    ``getmany``, positions, offsets and the group's committed offsets."""

    def __init__(self, broker: FakeBroker, *, group_id: str | None = None) -> None:
        self.broker = broker
        self.group_id = group_id
        self.assigned: set[TopicPartition] = set()
        self.paused: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self.assigned = set(partitions)

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions.get(tp, 0)

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.broker.log(tp.topic, tp.partition))

    async def end_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.broker.last_stable_offset(tp.topic, tp.partition) for tp in tps}

    async def beginning_offsets(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def offsets_for_times(self, timestamps: dict[TopicPartition, int]) -> dict[TopicPartition, Any]:
        return dict.fromkeys(timestamps)

    async def committed(self, tp: TopicPartition) -> int | None:
        assert self.group_id is not None, "committed() needs a group"
        return self.broker.group_offsets.get((self.group_id, tp))

    async def getmany(
        self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        """Committed records from each partition's position; the position then
        passes markers and aborted records up to the next visible one."""
        await asyncio.sleep(0)
        out: dict[TopicPartition, list[ConsumerRecord]] = {}
        for tp in tps or tuple(self.assigned):
            if tp not in self.assigned or tp in self.paused:
                continue
            entries = self.broker.log(tp.topic, tp.partition)
            end = self.broker.last_stable_offset(tp.topic, tp.partition)
            position = self.positions.get(tp, 0)
            records: list[ConsumerRecord] = []
            while position < end and (max_records is None or len(records) < max_records):
                entry = entries[position]
                position += 1
                if entry.committed_record:
                    records.append(entry.record)
            while position < end and not entries[position].committed_record:
                position += 1
            self.positions[tp] = position
            if records:
                out[tp] = records
        return out


def fake_settings(**overrides: Any) -> Settings:
    """Settings for clients that are all fakes: topic and group names unique to the test."""
    suffix = uuid.uuid4().hex[:8]
    base: dict[str, Any] = {
        "kafka_bootstrap_servers": "127.0.0.1:9",  # never dialled: every client is a fake
        **topic_names(f"u{suffix}"),
        "processor_group_id": f"u{suffix}.processor",
        "deliverer_group_id": f"u{suffix}.deliverer",
    }
    base.update(overrides)
    return load_settings(**base)


def job(lane: PartitionLane, offset: int, card: str, version: int, appid: str = "wxA") -> Job:
    """A delivery of outcome ``offset`` of ``lane``: invoice ``card``/``c`` at ``version``
    (odd versions lock, even ones unlock)."""
    return Job(
        lane=lane,
        offset=offset,
        outcome_id=f"o-{offset}",
        card_id=card,
        code="c",
        appid=appid,
        status=ReimburseStatus.LOCK if version % 2 else ReimburseStatus.INIT,
        version=version,
        key=idempotency_key(card, "c", version),
        repair=False,
        possibly_applied=False,
    )
