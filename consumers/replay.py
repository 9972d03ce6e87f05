"""``invoice-sm replay``: rebuild invoice state from ``invoice.events``.

The rebuild runs the live processor's own decision loop,
``consumers.processor.decide_batch`` (decode with
``INVOICE_SM_MAX_EVENT_BYTES``, decide against the state so far, stage every
state but a duplicate's), so it reproduces the processor's decisions by
construction. Around that loop it keeps the processor's other rules:

* state is kept **per input partition**, in the processor's own store type
  (``adapters.store``: a ``PartitionStore`` behind ``InvoiceStates``, in
  memory or RocksDB); an invoice's events all live in one partition (the key
  is the invoice key) and each partition is decided in offset order;
* a record that does not decode is counted under the DLQ reason the
  processor would give it; it changes no state;
* the reader (``adapters.partition_reader``, the restore's too) is
  read_committed, as the processor's consumer is.

``decide`` stamps ``updated_at`` with the time of the decision, so a rebuilt
state differs from the live one in that field only; compare states with
``same_state`` (``domain.reconcile``).

Nothing is written anywhere (no WeChat calls, no live topic) unless
``write_state_topic`` is given: the rebuilt states then go, latest per
invoice, to that (compacted) topic.

``replay()`` is the API (``reconcile`` and the benchmarks call it);
``scan()`` reads the same records through the same reader without deciding,
so "replay rate vs raw read rate" compares like with like.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import structlog
from aiokafka.structs import ConsumerRecord

from adapters import kafka, native, topics, wire
from adapters.native import NativeStep
from adapters.partition_reader import PartitionRange, PartitionReader, open_reader
from adapters.settings import Settings, env_name
from adapters.store import InvoiceStates, MemoryPartitionStore, PartitionStore, RocksPartitionStore
from consumers.processor import decide_batch, utc_now
from consumers.render import Progress, progress_reporter
from domain.errors import ConfigurationError
from domain.model import DecisionKind, InvoiceState

# Re-exported: tests and benchmarks compare replays with them from here.
from domain.reconcile import same_state as same_state
from domain.reconcile import state_differences as state_differences

log = structlog.get_logger("invoice_sm.replay")

#: A partition that makes no progress for this long fails the replay.
STALL_TIMEOUT_S = 120.0


# ---------------------------------------------------------------- the store


class ReplayStore:
    """The rebuilt states: one ``adapters.store`` partition store per input
    partition, behind ``InvoiceStates`` as in the processor. In memory
    (``MemoryPartitionStore``) when ``directory`` is ``None``, otherwise a
    ``RocksPartitionStore`` per partition under it, so a 10M-invoice history
    does not need 10M states in memory.

    A store in a directory it created itself (``owns_directory``) is deleted
    by ``close``.
    """

    def __init__(self, directory: Path | None, *, cache_size: int = 200_000, owns_directory: bool = False) -> None:
        self.directory = directory
        self.owns_directory = owns_directory
        self._cache_size = cache_size
        self._partitions: dict[int, InvoiceStates] = {}

    @property
    def in_memory(self) -> bool:
        return self.directory is None

    def partition(self, partition: int) -> InvoiceStates:
        states = self._partitions.get(partition)
        if states is None:
            store: PartitionStore
            if self.directory is None:
                store = MemoryPartitionStore()
            else:
                # A "replay-" prefix: never the path of a processor's live store.
                store = RocksPartitionStore(self.directory / f"replay-{partition}")
                store.wipe()  # a replay always starts from nothing
            states = InvoiceStates(store, self._cache_size, wire.decode_state, wire.encode_state)
            self._partitions[partition] = states
        return states

    def items(self) -> Iterator[tuple[int, InvoiceState]]:
        """``(input partition, state)`` of every rebuilt invoice."""
        for partition in sorted(self._partitions):
            # A store iterator, not a dict: values come with their keys.
            for _key, value in self._partitions[partition].store.items():
                yield partition, wire.decode_state(value)

    def close(self) -> None:
        for states in self._partitions.values():
            states.store.close()
        self._partitions.clear()
        if self.owns_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


# ---------------------------------------------------------------- results


@dataclass
class ReplayResult:
    """What a replay read, decided and rebuilt. Close it (or use ``with``)."""

    topic: str
    ranges: dict[int, PartitionRange]
    store: ReplayStore
    records: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in DecisionKind})
    invalid: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    state_topic: str | None = None
    state_records_written: int = 0
    _states: dict[str, InvoiceState] | None = None
    _partition_of: dict[str, int] | None = None

    @property
    def decided(self) -> int:
        return sum(self.by_kind.values())

    @property
    def invalid_total(self) -> int:
        return sum(self.invalid.values())

    @property
    def rate(self) -> float:
        """Records read and decided per second."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def from_beginning(self) -> bool:
        return all(r.start <= r.log_start for r in self.ranges.values())

    @property
    def truncated_partitions(self) -> list[int]:
        """Partitions whose earliest events are gone (retention): a rebuild
        from there cannot know those invoices' earlier history."""
        return sorted(p for p, r in self.ranges.items() if r.log_start > 0 and r.start <= r.log_start)

    @property
    def states(self) -> dict[str, InvoiceState]:
        """Rebuilt state per invoice key (loaded from the store once when on disk)."""
        self._load()
        assert self._states is not None
        return self._states

    @property
    def partition_of(self) -> dict[str, int]:
        """The ``invoice.events`` partition each invoice was rebuilt from."""
        self._load()
        assert self._partition_of is not None
        return self._partition_of

    def _load(self) -> None:
        if self._states is None:
            states: dict[str, InvoiceState] = {}
            partition_of: dict[str, int] = {}
            for partition, state in self.store.items():
                # An invoice in two partitions (a producer that chose partitions
                # by hand) has two independent states in the processor too; the
                # higher partition wins here, and the reconcile reports the other.
                states[state.key] = state
                partition_of[state.key] = partition
            self._states, self._partition_of = states, partition_of

    def summary(self) -> dict[str, Any]:
        """The JSON summary (``--json``)."""
        return {
            "topic": self.topic,
            "partitions": {
                str(p): {"start": r.start, "end": r.end, "log_start": r.log_start} for p, r in sorted(self.ranges.items())
            },
            "from_beginning": self.from_beginning,
            "truncated_partitions": self.truncated_partitions,
            "records": self.records,
            "decided": self.decided,
            "by_kind": dict(self.by_kind),
            "invalid": self.invalid_total,
            "invalid_by_reason": dict(sorted(self.invalid.items())),
            "invoices": len(self.states),
            "seconds": round(self.seconds, 3),
            "rate_per_s": round(self.rate, 1),
            "store": "memory" if self.store.in_memory else str(self.store.directory),
            "state_topic": self.state_topic,
            "state_records_written": self.state_records_written,
        }

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ScanResult:
    """A read without deciding: the baseline a replay's rate compares with."""

    records: int
    seconds: float
    ranges: dict[int, PartitionRange]

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------- options


def parse_offsets(text: str) -> dict[int, int]:
    """``"0:120,3:7"`` -> ``{0: 120, 3: 7}``."""
    out: dict[int, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        p, sep, o = part.partition(":")
        if not sep or not p.strip().isdigit() or not o.strip().isdigit():
            raise ConfigurationError("--from-offset", f"{part!r} is not PARTITION:OFFSET")
        out[int(p)] = int(o)
    if not out:
        raise ConfigurationError("--from-offset", "no PARTITION:OFFSET given")
    return out


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationError("--from-time", f"{text!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# ---------------------------------------------------------------- reading


@contextlib.asynccontextmanager
async def _snapshot(
    settings: Settings,
    topic: str,
    from_offsets: Mapping[int, int] | None,
    from_time: datetime | None,
) -> AsyncIterator[tuple[PartitionReader, dict[int, PartitionRange]]]:
    """A reader of ``topic`` and each partition's range, fixed before the first
    fetch (records appended meanwhile are left out)."""
    partitions = await kafka.partitions_of(settings, topic)
    if not partitions:
        raise ConfigurationError(env_name("topic_events"), f"topic {topic!r} does not exist")
    unknown = sorted(set(from_offsets or ()) - set(partitions))
    if unknown:
        raise ConfigurationError("--from-offset", f"{topic} has no partition {unknown[0]} (it has {len(partitions)})")
    async with open_reader(settings, topic, stall_timeout_s=STALL_TIMEOUT_S) as reader:
        ranges = await reader.plan(partitions, start=from_offsets, from_time=from_time)
        for partition, wanted in (from_offsets or {}).items():
            if wanted < ranges[partition].log_start:
                log.warning("offset_before_log_start", partition=partition, offset=wanted, log_start=ranges[partition].log_start)
        yield reader, ranges


# ---------------------------------------------------------------- deciding


def count_decisions(
    records: Sequence[ConsumerRecord],
    states: InvoiceStates,
    by_kind: dict[str, int],
    invalid: dict[str, int],
    *,
    max_bytes: int,
    now: str,
    native_step: NativeStep | None,
) -> None:
    """Decide one partition's records with the processor's own loop
    (``consumers.processor.decide_batch``, native step included when
    installed), counting decisions by kind and the records that did not
    decode by DLQ reason."""
    verdicts = decide_batch(records, states, native=native_step, max_bytes=max_bytes, now=now)
    for _, exc in verdicts.invalid:
        invalid[exc.reason] = invalid.get(exc.reason, 0) + 1
    for _, kind, _, _, _ in verdicts.decided:
        by_kind[kind] += 1


async def replay(
    settings: Settings,
    *,
    topic: str | None = None,
    from_offsets: Mapping[int, int] | None = None,
    from_time: datetime | None = None,
    in_memory: bool = False,
    state_dir: Path | None = None,
    write_state_topic: str | None = None,
    allow_live_topic: bool = False,
    allow_truncated: bool = False,
    progress: bool = True,
) -> ReplayResult:
    """Rebuild every invoice's state from ``topic`` (default ``settings.topic_events``).

    ``in_memory`` keeps states in memory stores; otherwise one RocksDB store per
    partition under ``state_dir`` (default: a temporary directory, deleted
    when the result is closed). ``from_offsets`` (partition -> offset;
    partitions not named start at the beginning) or ``from_time`` replay a
    suffix only: the states are then built from that point, not the whole
    history. ``write_state_topic`` writes the rebuilt states there at the
    end; a live topic's name is refused unless ``allow_live_topic``, and a
    history whose beginning is gone unless ``allow_truncated``. An events
    topic whose records expire is refused (``adapters.topics``) unless
    ``INVOICE_SM_ALLOW_FINITE_EVENT_RETENTION``.

    Returns the result with its store open; close it when done.
    """
    topic = topic or settings.topic_events
    await topics.guard_event_retention(settings, topic)
    if write_state_topic is not None:
        await topics.refuse_truncated_history(settings, "--write-state-topic", force=allow_truncated, topic=topic)
    if write_state_topic is not None and not allow_live_topic:
        live = {
            settings.topic_events,
            settings.topic_outcomes,
            settings.topic_state,
            settings.topic_deliveries,
            settings.topic_dlq,
        }
        if write_state_topic in live:
            raise ConfigurationError(
                "--write-state-topic", f"{write_state_topic!r} is a live topic; pass --force to write there anyway"
            )
    if in_memory:
        store = ReplayStore(None)
    elif state_dir is not None:
        store = ReplayStore(Path(state_dir) / "replay" / topic, cache_size=settings.state_cache_size)
    else:
        store = ReplayStore(
            Path(tempfile.mkdtemp(prefix="invoice-sm-replay-")), cache_size=settings.state_cache_size, owns_directory=True
        )
    ranges: dict[int, PartitionRange] = {}
    result = ReplayResult(topic=topic, ranges=ranges, store=store)
    max_bytes = settings.max_event_bytes
    native_step = native.for_setting(settings.native_step)
    started = time.perf_counter()
    bar: Progress = progress_reporter(False, 0, "replay")
    try:
        async with _snapshot(settings, topic, from_offsets, from_time) as (reader, planned):
            ranges.update(planned)
            positions = {p: r.start for p, r in ranges.items()}
            bar = progress_reporter(progress, sum(r.count for r in ranges.values()), "replay")
            # aclosing: on an error the read stops here, not at garbage
            # collection inside some later event loop iteration.
            async with contextlib.aclosing(reader.read(ranges)) as batches:
                async for partition, records, next_offset in batches:
                    states = store.partition(partition)
                    count_decisions(
                        records,
                        states,
                        result.by_kind,
                        result.invalid,
                        max_bytes=max_bytes,
                        now=utc_now(),
                        native_step=native_step,
                    )
                    states.commit(next_offset)
                    result.records += len(records)
                    bar.advance(next_offset - positions[partition], len(records))
                    positions[partition] = next_offset
        result.seconds = time.perf_counter() - started
        bar.close()
        if write_state_topic is not None:
            result.state_topic = write_state_topic
            result.state_records_written = await _write_states(settings, write_state_topic, store, len(ranges))
    except BaseException:
        bar.close()
        store.close()
        raise
    log.info(
        "replay_finished",
        topic=topic,
        records=result.records,
        invalid=result.invalid_total,
        seconds=round(result.seconds, 3),
        rate=round(result.rate),
        **result.by_kind,
    )
    return result


async def scan(
    settings: Settings,
    *,
    topic: str | None = None,
    from_offsets: Mapping[int, int] | None = None,
    from_time: datetime | None = None,
) -> ScanResult:
    """Read what ``replay`` would read, through the same reader, deciding nothing."""
    topic = topic or settings.topic_events
    ranges: dict[int, PartitionRange] = {}
    records = 0
    started = time.perf_counter()
    async with _snapshot(settings, topic, from_offsets, from_time) as (reader, planned):
        ranges.update(planned)
        async with contextlib.aclosing(reader.read(ranges)) as batches:
            async for _, batch, _ in batches:
                records += len(batch)
    return ScanResult(records=records, seconds=time.perf_counter() - started, ranges=ranges)


async def _write_states(settings: Settings, topic: str, store: ReplayStore, partitions: int) -> int:
    """Latest state per invoice to ``topic``, to the invoice's input partition
    (modulo the topic's size), as the processor's changelog is laid out."""
    counts = await topics.ensure_topics(settings, [topics.like(settings, "state", topic, max(partitions, 1))])
    size = counts[topic]
    producer = kafka.new_producer(settings, linger_ms=20)
    written = 0
    async with kafka.started(producer):
        pending = []
        for partition, state in store.items():
            with kafka.broker_errors(f"write {topic}"):
                pending.append(
                    await producer.send(topic, key=state.key.encode(), value=wire.encode_state(state), partition=partition % size)
                )
            written += 1
            if len(pending) >= 10_000:
                with kafka.broker_errors(f"write {topic}"):
                    await asyncio.gather(*pending)
                pending.clear()
        with kafka.broker_errors(f"write {topic}"):
            await asyncio.gather(*pending)
    return written
