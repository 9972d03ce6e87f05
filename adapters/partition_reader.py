"""The one way to read partitions from a start to their end.

Three things read a topic's partitions from some start up to where they end
now: the processor's restore (``invoice.state`` into its stores), ``replay``
and ``scan`` (``invoice.events``, to rebuild state) and :func:`read_to_end`
(the DLQ commands, reconcile, tools and tests). They all read through
``PartitionReader``, so they agree on where a read ends and how it gets there:

* each partition's range (``PartitionRange``) is fixed before the first
  fetch; a read_committed consumer is given the last stable offset as the
  end, so an open transaction never makes a read wait, and records appended
  meanwhile are left out;
* a partition is done when the consumer's position reaches its end, whether
  or not the last offsets held data: read_committed skips transaction
  markers and aborted records, which count as read;
* records come in offset order per partition, each batch with the position
  after it (``next_offset``): what a store checkpoints and a progress bar counts;
* a partition with nothing (more) to read is paused, so nothing is prefetched for it;
* a read that makes no progress for ``stall_timeout_s`` fails with
  ``BrokerError`` (``None``: wait, as the restore does during a broker outage).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from adapters import kafka
from adapters.settings import Settings
from domain.errors import BrokerError

#: What one fetch may return; large, so a restore writes large store batches.
DEFAULT_CHUNK = 20_000


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """Offsets ``[start, end)`` of one partition, and where its log starts now."""

    partition: int
    start: int
    end: int
    log_start: int

    @property
    def count(self) -> int:
        return max(0, self.end - self.start)

    def starting_at(self, offset: int) -> PartitionRange:
        """The same range from ``offset``, kept within the log."""
        return replace(self, start=min(max(offset, self.log_start), self.end))


class PartitionReader:
    """Reads planned ranges of ``topic`` through one started consumer (its own:
    the reader assigns, seeks and pauses its partitions)."""

    def __init__(
        self,
        consumer: Any,
        topic: str,
        *,
        chunk: int = DEFAULT_CHUNK,
        fetch_timeout_ms: int = 500,
        stall_timeout_s: float | None = 120.0,
    ) -> None:
        self.consumer = consumer
        self.topic = topic
        self.chunk = chunk
        self.fetch_timeout_ms = fetch_timeout_ms
        self.stall_timeout_s = stall_timeout_s

    async def plan(
        self,
        partitions: Iterable[int],
        *,
        start: Mapping[int, int] | None = None,
        from_time: datetime | None = None,
    ) -> dict[int, PartitionRange]:
        """Each partition's range: from the log start to the end offset now.

        ``from_time`` starts each partition at its first record at or after
        that time (at the end when there is none); ``start`` (partition ->
        offset, kept within the log) overrides it for the partitions it names.
        """
        tps = [TopicPartition(self.topic, p) for p in partitions]
        if not tps:
            return {}
        ends = await kafka.end_offsets(self.consumer, tps)
        begins = await kafka.beginning_offsets(self.consumer, tps)
        ranges = {tp.partition: PartitionRange(tp.partition, begins[tp], ends[tp], begins[tp]) for tp in tps}
        if from_time is not None:
            millis = int(from_time.timestamp() * 1000)
            with kafka.broker_errors("offsets for time"):
                found = await self.consumer.offsets_for_times(dict.fromkeys(tps, millis))
            for tp in tps:
                hit = found.get(tp)
                ranges[tp.partition] = ranges[tp.partition].starting_at(ends[tp] if hit is None else hit.offset)
        for partition, offset in (start or {}).items():
            if partition in ranges:
                ranges[partition] = ranges[partition].starting_at(offset)
        return ranges

    async def read(self, ranges: Mapping[int, PartitionRange]) -> AsyncGenerator[tuple[int, list[ConsumerRecord], int], None]:
        """Yield ``(partition, records, next_offset)`` until every range is read.

        ``next_offset`` is where the partition's read stands after ``records``
        (at most its end); the last yield of a partition has ``next_offset ==
        end``, with empty ``records`` when only markers were left.
        """
        consumer, topic = self.consumer, self.topic
        tps = {p: TopicPartition(topic, p) for p in ranges}
        consumer.assign(list(tps.values()))
        todo: dict[TopicPartition, int] = {}
        for partition, tp in tps.items():
            r = ranges[partition]
            if r.start < r.end:
                consumer.seek(tp, r.start)
                todo[tp] = r.end
            else:
                consumer.pause(tp)
        loop = asyncio.get_running_loop()
        patience = self.stall_timeout_s
        deadline = loop.time() + patience if patience is not None else None
        while todo:
            if deadline is not None and loop.time() > deadline:
                raise BrokerError(
                    f"reading {topic}: partitions {sorted(tp.partition for tp in todo)} made no progress for {patience:g} s"
                )
            with kafka.broker_errors(f"read {topic}"):
                fetched = await consumer.getmany(*todo, timeout_ms=self.fetch_timeout_ms, max_records=self.chunk)
            for tp, records in fetched.items():
                end = todo.get(tp)
                if end is None or not records:
                    continue
                if patience is not None:
                    deadline = loop.time() + patience
                if records[-1].offset >= end:
                    records = [r for r in records if r.offset < end]  # appended after the plan: outside it
                    position = end
                else:
                    with kafka.broker_errors(f"position in {topic}"):
                        position = min(await consumer.position(tp), end)
                if position >= end:
                    del todo[tp]
                    consumer.pause(tp)
                yield tp.partition, records, position
            for tp in list(todo):
                with kafka.broker_errors(f"position in {topic}"):
                    position = await consumer.position(tp)
                if position >= todo[tp]:
                    end = todo.pop(tp)
                    consumer.pause(tp)
                    yield tp.partition, [], end


@contextlib.asynccontextmanager
async def open_reader(
    settings: Settings,
    topic: str,
    *,
    read_committed: bool = True,
    consumer: Any = None,
    **options: Any,
) -> AsyncIterator[PartitionReader]:
    """A ``PartitionReader`` of ``topic`` over a consumer of no group (a new
    one unless ``consumer`` is given), started here and stopped on the way out.
    ``options`` are ``PartitionReader``'s."""
    if consumer is None:
        isolation = "read_committed" if read_committed else "read_uncommitted"
        consumer = kafka.new_consumer(settings, group_id=None, isolation_level=isolation)
    async with kafka.started(consumer):
        yield PartitionReader(consumer, topic, **options)


async def read_to_end(
    settings: Settings,
    topic: str,
    *,
    start: Mapping[int, int] | None = None,
    only: Iterable[int] | None = None,
    read_committed: bool = True,
    chunk: int = 10_000,
    timeout: float = 120.0,
) -> AsyncGenerator[list[ConsumerRecord], None]:
    """Yield batches of every record of ``topic`` up to its end at call time
    (nothing if the topic does not exist).

    ``start`` maps partitions to first offsets (default: the beginning; past
    the end: nothing of that partition); ``only`` reads just those partitions.
    """
    partitions = await kafka.partitions_of(settings, topic)
    if only is not None:
        wanted = set(only)
        partitions = [p for p in partitions if p in wanted]
    if not partitions:
        return
    async with open_reader(
        settings, topic, read_committed=read_committed, chunk=chunk, fetch_timeout_ms=300, stall_timeout_s=timeout
    ) as reader:
        ranges = await reader.plan(partitions, start=start)
        async with contextlib.aclosing(reader.read(ranges)) as batches:
            async for _, records, _ in batches:
                if records:
                    yield records
