"""``invoice-sm replay``: rebuild invoice state from ``invoice.events``.

The rebuild runs the live processor's own decision path, record by record:
``wire.decode_event`` (with ``INVOICE_SM_MAX_EVENT_BYTES``) and then
``domain.decide`` against the state so far. It must reproduce the
processor's decisions exactly, so it keeps the processor's rules:

* state is kept **per input partition**, as the processor keeps one store
  per partition; an invoice's events all live in one partition (the key is
  the invoice key) and each partition is decided in offset order;
* a record that does not decode is skipped and counted under the DLQ reason
  the processor would give it; it changes no state;
* every decision but ``duplicate`` replaces the state (what the processor
  writes to the changelog), so the duplicate-id window (the last
  ``RECENT_EVENT_IDS`` ids) evolves the same way;
* the reader is read_committed, as the processor's consumer is.

``decide`` stamps ``updated_at`` with the time of the decision, so a rebuilt
state differs from the live one in that field only; compare states with
``same_state``.

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
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

import structlog
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from adapters import kafka, topics, wire
from adapters.settings import Settings
from adapters.store import InvoiceStates, RocksPartitionStore
from domain.decide import decide
from domain.errors import BrokerError, ConfigurationError, InvalidEventError
from domain.model import DecisionKind, InvoiceState

log = structlog.get_logger("invoice_sm.replay")

#: A partition that makes no progress for this long fails the replay.
STALL_TIMEOUT_S = 120.0
#: Off a terminal, one progress line this often.
LOG_EVERY_S = 5.0


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def same_state(a: InvoiceState, b: InvoiceState) -> bool:
    """Equal on everything a decision depends on; ``updated_at`` is wall-clock time."""
    return (
        a.card_id == b.card_id
        and a.code == b.code
        and a.status is b.status
        and a.version == b.version
        and a.appid == b.appid
        and tuple(a.recent_event_ids) == tuple(b.recent_event_ids)
    )


def state_differences(live: InvoiceState, rebuilt: InvoiceState) -> list[str]:
    """Human-readable field differences, ``[]`` when ``same_state``."""
    out = []
    for name in ("status", "version", "appid"):
        lv, rv = getattr(live, name), getattr(rebuilt, name)
        if lv != rv:
            out.append(f"{name}: live {lv!s} != rebuilt {rv!s}")
    if tuple(live.recent_event_ids) != tuple(rebuilt.recent_event_ids):
        out.append(
            f"recent_event_ids: live has {len(live.recent_event_ids)} ids (last {live.recent_event_ids[-1:]}), "
            f"rebuilt {len(rebuilt.recent_event_ids)} (last {rebuilt.recent_event_ids[-1:]})"
        )
    return out


# ---------------------------------------------------------------- the store


class _States(Protocol):
    def get(self, key: str) -> InvoiceState | None: ...
    def put(self, key: str, state: InvoiceState) -> Any: ...
    def commit(self, changelog_offset: int) -> None: ...


class _DictStates:
    """In memory: no encoding at all, which is what makes small replays fast."""

    def __init__(self) -> None:
        self.states: dict[str, InvoiceState] = {}

    def get(self, key: str) -> InvoiceState | None:
        return self.states.get(key)

    def put(self, key: str, state: InvoiceState) -> None:
        self.states[key] = state

    def commit(self, changelog_offset: int) -> None:
        pass


class ReplayStore:
    """The rebuilt states, per input partition: dicts in memory, or one RocksDB
    store per partition under ``directory`` (the processor's own store type,
    so a 10M-invoice history does not need 10M states in memory).

    A store in a directory it created itself (``owns_directory``) is deleted
    by ``close``.
    """

    def __init__(self, directory: Path | None, *, cache_size: int = 200_000, owns_directory: bool = False) -> None:
        self.directory = directory
        self.owns_directory = owns_directory
        self._cache_size = cache_size
        self._partitions: dict[int, _DictStates | InvoiceStates] = {}

    @property
    def in_memory(self) -> bool:
        return self.directory is None

    def partition(self, partition: int) -> _DictStates | InvoiceStates:
        states = self._partitions.get(partition)
        if states is None:
            if self.directory is None:
                states = _DictStates()
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
            states = self._partitions[partition]
            if isinstance(states, _DictStates):
                for state in states.states.values():
                    yield partition, state
            else:
                # A RocksDB iterator, not a dict: values come with their keys.
                for _key, value in states.store.items():  # noqa: PERF102
                    yield partition, wire.decode_state(value)

    def close(self) -> None:
        for states in self._partitions.values():
            if isinstance(states, InvoiceStates):
                states.store.close()
        self._partitions.clear()
        if self.owns_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """Offsets ``[start, end)`` of one partition; ``end`` is the last stable
    offset when the replay began, so records appended meanwhile are left out."""

    partition: int
    start: int
    end: int
    log_start: int

    @property
    def count(self) -> int:
        return max(0, self.end - self.start)


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


# ---------------------------------------------------------------- progress


class _Progress(Protocol):
    def advance(self, offsets: int, records: int) -> None: ...
    def close(self) -> None: ...


class _Silent:
    def advance(self, offsets: int, records: int) -> None:
        pass

    def close(self) -> None:
        pass


class _Bar:
    """A rich progress bar on stderr, so stdout keeps only the summary."""

    def __init__(self, total: int, description: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rec/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total or None, rate="-")
        self._started = time.perf_counter()
        self._records = 0
        self._progress.start()

    def advance(self, offsets: int, records: int) -> None:
        self._records += records
        elapsed = time.perf_counter() - self._started
        rate = f"{self._records / elapsed:,.0f}" if elapsed > 0 else "-"
        self._progress.update(self._task, advance=offsets, rate=rate)

    def close(self) -> None:
        self._progress.stop()


class _LogLines:
    """Off a terminal, a log line every ``LOG_EVERY_S`` instead of a bar."""

    def __init__(self, total: int, what: str) -> None:
        self._total = total
        self._what = what
        self._done = 0
        self._records = 0
        self._started = self._last = time.perf_counter()

    def advance(self, offsets: int, records: int) -> None:
        self._done += offsets
        self._records += records
        now = time.perf_counter()
        if now - self._last >= LOG_EVERY_S:
            self._last = now
            elapsed = now - self._started
            rate = self._done / elapsed if elapsed > 0 else 0.0
            eta = (self._total - self._done) / rate if rate > 0 else None
            log.info(
                f"{self._what} progress",
                done=self._done,
                total=self._total,
                percent=round(100 * self._done / self._total, 1) if self._total else 100.0,
                rate=round(self._records / elapsed) if elapsed > 0 else None,
                eta_s=round(eta, 1) if eta is not None else None,
            )

    def close(self) -> None:
        pass


def progress_reporter(enabled: bool, total: int, what: str) -> _Progress:
    """A rich bar on a terminal, periodic log lines off one, or nothing."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        return _Bar(total, what)
    return _LogLines(total, what)


# ---------------------------------------------------------------- reading


async def _plan(
    consumer: Any,
    topic: str,
    partitions: Sequence[int],
    from_offsets: Mapping[int, int] | None,
    from_time: datetime | None,
) -> dict[int, PartitionRange]:
    """Start and end offset of each partition, fixed before the first fetch."""
    tps = [TopicPartition(topic, p) for p in partitions]
    ends = await kafka.end_offsets(consumer, tps)
    begins = await kafka.beginning_offsets(consumer, tps)
    starts = {tp: begins[tp] for tp in tps}
    if from_time is not None:
        millis = int(from_time.timestamp() * 1000)
        with kafka.broker_errors("offsets for time"):
            found = await consumer.offsets_for_times({tp: millis for tp in tps})
        for tp in tps:
            hit = found.get(tp)
            starts[tp] = ends[tp] if hit is None else max(hit.offset, begins[tp])
    if from_offsets:
        unknown = sorted(set(from_offsets) - set(partitions))
        if unknown:
            raise ConfigurationError("--from-offset", f"{topic} has no partition {unknown[0]} (it has {len(partitions)})")
        for tp in tps:
            if tp.partition in from_offsets:
                wanted = from_offsets[tp.partition]
                if wanted < begins[tp]:
                    log.warning("offset before the log start; starting there", partition=tp.partition,
                                offset=wanted, log_start=begins[tp])
                starts[tp] = min(max(wanted, begins[tp]), ends[tp])
    return {
        tp.partition: PartitionRange(tp.partition, starts[tp], ends[tp], begins[tp]) for tp in tps
    }


async def _read(
    settings: Settings,
    topic: str,
    *,
    from_offsets: Mapping[int, int] | None = None,
    from_time: datetime | None = None,
    chunk: int = 20_000,
    ranges_out: dict[int, PartitionRange] | None = None,
) -> AsyncGenerator[tuple[int, list[ConsumerRecord], int], None]:
    """Yield ``(partition, records, next_offset)`` in offset order per partition,
    up to the end offsets fixed at the start.

    ``next_offset`` is the consumer's position after the batch: with
    read_committed it can jump past transaction markers and aborted records,
    which count as read for the progress.
    """
    partitions = await kafka.partitions_of(settings, topic)
    if not partitions:
        raise ConfigurationError("INVOICE_SM_TOPIC_EVENTS", f"topic {topic!r} does not exist")
    consumer = kafka.new_consumer(settings, group_id=None, isolation_level="read_committed")
    async with kafka.started(consumer):
        ranges = await _plan(consumer, topic, partitions, from_offsets, from_time)
        if ranges_out is not None:
            ranges_out.update(ranges)
        todo: dict[TopicPartition, int] = {}
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        for tp in tps:
            r = ranges[tp.partition]
            if r.start < r.end:
                consumer.seek(tp, r.start)
                todo[tp] = r.end
            else:
                consumer.pause(tp)  # nothing to read: no prefetch either
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STALL_TIMEOUT_S
        while todo:
            if loop.time() > deadline:
                raise BrokerError(f"replay of {topic}: partitions {sorted(tp.partition for tp in todo)} stalled")
            with kafka.broker_errors(f"read {topic}"):
                fetched = await consumer.getmany(*todo, timeout_ms=500, max_records=chunk)
            for tp, records in fetched.items():
                end = todo.get(tp)
                if end is None or not records:
                    continue
                deadline = loop.time() + STALL_TIMEOUT_S
                if records[-1].offset >= end:
                    # Appended after the replay began: outside the snapshot.
                    records = [r for r in records if r.offset < end]
                    yield tp.partition, records, end
                    del todo[tp]
                    consumer.pause(tp)
                else:
                    with kafka.broker_errors(f"position in {topic}"):
                        position = await consumer.position(tp)
                    yield tp.partition, records, min(position, end)
            for tp in list(todo):
                with kafka.broker_errors(f"position in {topic}"):
                    position = await consumer.position(tp)
                if position >= todo[tp]:
                    del todo[tp]


# ---------------------------------------------------------------- deciding


def decide_records(
    records: Sequence[ConsumerRecord],
    states: _States,
    by_kind: dict[str, int],
    invalid: dict[str, int],
    *,
    max_bytes: int,
    now: str,
) -> None:
    """Decide one partition's records in offset order, as ``PartitionWorker._transact`` does.

    Kept line for line in step with the processor: decode (bad -> counted
    under its DLQ reason, no state change), decide against the state so far,
    replace the state unless the decision is a duplicate.
    """
    decode_event = wire.decode_event
    duplicate = DecisionKind.DUPLICATE
    for record in records:
        try:
            event = decode_event(record.key, record.value, record.headers, max_bytes=max_bytes)
        except InvalidEventError as exc:
            invalid[exc.reason] = invalid.get(exc.reason, 0) + 1
            continue
        invoice = event.key
        decision = decide(states.get(invoice), event, now)
        kind = decision.kind
        by_kind[kind] += 1
        if kind is not duplicate:
            states.put(invoice, decision.state)


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

    ``in_memory`` keeps states in dicts; otherwise one RocksDB store per
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
        live = {settings.topic_events, settings.topic_outcomes, settings.topic_state, settings.topic_deliveries,
                settings.topic_dlq}
        if write_state_topic in live:
            raise ConfigurationError(
                "--write-state-topic", f"{write_state_topic!r} is a live topic; pass --force to write there anyway"
            )
    if in_memory:
        store = ReplayStore(None)
    elif state_dir is not None:
        store = ReplayStore(Path(state_dir) / "replay" / topic, cache_size=settings.state_cache_size)
    else:
        store = ReplayStore(Path(tempfile.mkdtemp(prefix="invoice-sm-replay-")), cache_size=settings.state_cache_size,
                            owns_directory=True)
    ranges: dict[int, PartitionRange] = {}
    result = ReplayResult(topic=topic, ranges=ranges, store=store)
    max_bytes = settings.max_event_bytes
    started = time.perf_counter()
    bar: _Progress = _Silent()
    try:
        reader = _read(settings, topic, from_offsets=from_offsets, from_time=from_time, ranges_out=ranges)
        positions: dict[int, int] = {}
        # aclosing: on an error the reader (and its consumer) stop here, not at
        # garbage collection inside some later event loop iteration.
        async with contextlib.aclosing(reader):
            async for partition, records, next_offset in reader:
                if not positions:
                    positions = {p: r.start for p, r in ranges.items()}
                    bar = progress_reporter(progress, sum(r.count for r in ranges.values()), "replay")
                states = store.partition(partition)
                decide_records(records, states, result.by_kind, result.invalid, max_bytes=max_bytes, now=utc_now())
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
        "replay finished",
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
    reader = _read(settings, topic, from_offsets=from_offsets, from_time=from_time, ranges_out=ranges)
    async with contextlib.aclosing(reader):
        async for _, batch, _ in reader:
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
                    await producer.send(topic, key=state.key.encode(), value=wire.encode_state(state),
                                        partition=partition % size)
                )
            written += 1
            if len(pending) >= 10_000:
                with kafka.broker_errors(f"write {topic}"):
                    await asyncio.gather(*pending)
                pending.clear()
        with kafka.broker_errors(f"write {topic}"):
            await asyncio.gather(*pending)
    return written


# ---------------------------------------------------------------- report


def print_summary(result: ReplayResult, console: Any = None) -> None:
    """The summary as a person reads it (rich tables on stdout)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    s = result.summary()
    table = Table(title=f"replay of {result.topic}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("records read", f"{s['records']:,}")
    for kind, n in s["by_kind"].items():
        table.add_row(f"  {kind}", f"{n:,}")
    table.add_row("invalid (would go to the DLQ)", f"{s['invalid']:,}")
    for reason, n in s["invalid_by_reason"].items():
        table.add_row(f"  {reason}", f"{n:,}")
    table.add_row("invoices", f"{s['invoices']:,}")
    table.add_row("seconds", f"{s['seconds']:.2f}")
    table.add_row("rate", f"{s['rate_per_s']:,.0f} records/s")
    if result.state_topic:
        table.add_row("state records written", f"{result.state_records_written:,} -> {result.state_topic}")
    console.print(table)
    if not result.from_beginning:
        console.print("[yellow]replayed from a later offset: states hold only what followed it[/yellow]")
    if result.truncated_partitions:
        console.print(
            f"[yellow]partitions {result.truncated_partitions} no longer hold their first events (retention): "
            "states of their oldest invoices may be incomplete[/yellow]"
        )
