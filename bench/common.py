"""Helpers shared by the benchmark suites.

- :func:`bench_kafka`: a local broker sized for benchmarks (1 GiB heap, full JIT).
- :func:`bench_settings` / :func:`unique`: ``Settings`` whose topics, groups and
  state dir are unique to one measurement, so runs never see each other's data.
- :func:`event_stream`, :func:`produce_fast`, :func:`produce_events`: build
  and publish large inputs quickly (per-partition ``BatchBuilder`` batches,
  acks=1, no idempotence), keyed and partitioned like upstream would.
- :class:`Child`: a command in a child process with its log in a file, stopped
  by SIGTERM (then SIGKILL) to its own pid only.
- :class:`RssSampler`: peak resident set size of a pid, sampled on a thread.
- :func:`watch_group`: timestamps of "first output record seen" and "group
  committed everything" for a consumer group, polled from the outside, the
  same way for every contender.
- :func:`write_results`, :func:`print_table`, :func:`markdown_table`,
  :func:`machine_info`: result files and tables.

Partitioning: benchmark inputs are partitioned by ``crc32(key) % partitions``
(:func:`partition_for`), a C-speed stable hash; the processor never re-hashes
(outputs go to the input's partition number), so any stable key hash is as
good as Kafka's murmur2 here, and this one lets the RSS suite place 10M
pre-built states in the same partitions as the events that touch them.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import bisect
import contextlib
import datetime as _dt
import hashlib
import itertools
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from adapters import kafka, topics
from adapters.settings import Settings, load_settings
from adapters.settings import settings_env as to_env

_json_encoder = msgspec.json.Encoder()

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# --------------------------------------------------------------------- broker


@contextlib.contextmanager
def bench_kafka(bootstrap: str | None = None, **kwargs: Any) -> Iterator[str]:
    """Yield bootstrap servers of a broker for benchmarks.

    ``bootstrap`` given: use that broker (e.g. one you keep running while
    iterating). Otherwise start a local one with the benchmark flags of
    KAFKA-LOCAL.md (``-Xmx1g``, full JIT) and stop it on exit.
    """
    if bootstrap:
        yield bootstrap
        return
    from devtools.kafka_local import LocalKafka

    options: dict[str, Any] = {"heap": "1g", "fast_jit": False, "log_level": "WARN"}
    options.update(kwargs)
    with LocalKafka(**options) as broker:
        yield broker.bootstrap_servers


# ---------------------------------------------------------------------- names


def unique(prefix: str = "b") -> str:
    """A short name unique to this call: ``<prefix><8 hex>``."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def bench_settings(bootstrap: str, *, name: str | None = None, state_root: Path | None = None, **overrides: Any) -> Settings:
    """Settings whose topics, group ids and state dir are unique to ``name``."""
    name = name or unique()
    state_root = state_root or Path(tempfile.mkdtemp(prefix="bench-state-"))
    base: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        **topics.topic_names(name),
        "processor_group_id": f"{name}.processor",
        "deliverer_group_id": f"{name}.deliverer",
        "state_dir": state_root / name,
        "topic_partitions": 6,
        "log_format": "json",
    }
    base.update(overrides)
    return load_settings(**base)


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that gives a child ``invoice-sm`` process these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICE_SM_")}
    env.update(to_env(settings))
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def create_topics(settings: Settings, *specs: topics.TopicSpec) -> dict[str, int]:
    """Create topics (all of ``settings``' topics when no spec is given)."""
    return await topics.ensure_topics(settings, list(specs) if specs else None)


# --------------------------------------------------------------------- inputs


def partition_for(key: bytes, partitions: int) -> int:
    return zlib.crc32(key) % partitions


_STATUS_WEIGHTS = (3, 5, 2, 1)  # INIT, LOCK, CLOSURE, CANCEL: as tests.factories.random_stream


def _status_picker(rng: random.Random) -> Any:
    from domain.status import ReimburseStatus as S

    statuses = list(S)
    cumulative = list(itertools.accumulate(_STATUS_WEIGHTS))
    total = cumulative[-1]
    return lambda: statuses[bisect.bisect_right(cumulative, rng.random() * total)]


def _encode_event(ev: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) as upstream publishes them; compact JSON (msgspec), which
    is several times faster to build than ``tests.factories.encode``'s json.dumps."""
    data = ev["data"]
    return f"{data['card_id']}/{data['code']}".encode(), _json_encoder.encode(ev)


def event_stream(n_events: int, n_invoices: int, seed: int = 7, *, dup_rate: float = 0.03) -> Iterator[dict[str, Any]]:
    """Like ``tests.factories.random_stream`` but every one of ``n_invoices`` is touched.

    The first ``n_invoices`` draws are a shuffled permutation of all invoices
    (so "N invoices" is exact); the remaining draws are uniform. Status
    weights, the ``invoice.status.set`` share (20 %) and re-sent events
    (``dup_rate``) follow ``random_stream``; events are built with
    ``tests.factories.event``.
    """
    from tests.factories import card, event

    rng = random.Random(seed)
    pick = _status_picker(rng)
    order = list(range(n_invoices))
    rng.shuffle(order)
    draws = itertools.chain(order[:n_events], (rng.randrange(n_invoices) for _ in range(max(0, n_events - n_invoices))))
    last: dict[int, dict[str, Any]] = {}
    for n in draws:
        if n in last and rng.random() < dup_rate:
            yield last[n]
            continue
        ev = event(*card(n), pick(), set_type=rng.random() < 0.2)
        last[n] = ev
        yield ev


def encoded_events(n_events: int, n_invoices: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of :func:`event_stream`."""
    return [_encode_event(ev) for ev in event_stream(n_events, n_invoices, seed)]


def random_touch_events(
    n_events: int, n_invoices: int, seed: int = 11, touched: set[int] | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """``n_events`` events on invoices drawn uniformly from ``card(0..n_invoices-1)``;
    the drawn invoice numbers are added to ``touched`` if given."""
    from tests.factories import card, event

    rng = random.Random(seed)
    pick = _status_picker(rng)
    for _ in range(n_events):
        n = rng.randrange(n_invoices)
        if touched is not None:
            touched.add(n)
        yield _encode_event(event(*card(n), pick()))


@dataclass
class Produced:
    records: int
    bytes: int
    seconds: float
    per_partition: dict[int, int]

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("nan")


async def produce_fast(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes, bytes]],
    partitions: int,
    *,
    max_batch_size: int = 1024 * 1024,
) -> Produced:
    """Publish ``records`` quickly: one non-idempotent producer (acks=1),
    per-partition ``BatchBuilder`` batches of ``max_batch_size`` bytes,
    partition = :func:`partition_for`. Returns counts per partition and timing.

    The topic must exist with ``partitions`` partitions.
    """
    settings = load_settings(kafka_bootstrap_servers=bootstrap)
    producer = kafka.new_producer(
        settings,
        enable_idempotence=False,
        acks=1,
        linger_ms=0,
        max_batch_size=max_batch_size,
        max_request_size=max(4 * 1024 * 1024, 2 * max_batch_size),
        request_timeout_ms=60_000,
    )
    counts = dict.fromkeys(range(partitions), 0)
    total_bytes = 0
    started = time.perf_counter()
    async with kafka.started(producer):
        builders = {p: producer.create_batch() for p in range(partitions)}
        futures: list[asyncio.Future[Any]] = []
        for key, value in records:
            p = zlib.crc32(key) % partitions
            builder = builders[p]
            if builder.append(key=key, value=value, timestamp=None) is None:
                builder.close()
                futures.append(await producer.send_batch(builder, topic, partition=p))
                builder = builders[p] = producer.create_batch()
                if builder.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"record of {len(value)} bytes does not fit a batch of {max_batch_size}")
            counts[p] += 1
            total_bytes += len(key) + len(value)
            if len(futures) > 64:
                await asyncio.gather(*futures[:32])
                del futures[:32]
        for p, builder in builders.items():
            if builder.record_count():
                builder.close()
                futures.append(await producer.send_batch(builder, topic, partition=p))
        await asyncio.gather(*futures)
    return Produced(sum(counts.values()), total_bytes, time.perf_counter() - started, counts)


# ------------------------------------------------- processor hot-path calls
# The processor's internals are being tuned while the benchmarks are written;
# these adapters follow the signatures of the current working tree so the
# suites (and the Quix peer, which reuses the processor's encoders) keep
# calling exactly what the processor calls.


def state_putter() -> Any:
    """``fn(states, invoice_key, state) -> bytes`` over ``InvoiceStates.put``."""
    import inspect

    from adapters.store import InvoiceStates

    if len(inspect.signature(InvoiceStates.put).parameters) >= 3:
        return lambda states, key, state: states.put(key, state)
    return lambda states, key, state: states.put(state)


# ------------------------------------------------------------------- offsets


async def end_offsets(bootstrap: str, topic: str, partitions: int, *, committed_only: bool = False) -> dict[int, int]:
    """End offset per partition: high watermark, or last stable offset if ``committed_only``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed" if committed_only else "read_uncommitted"
    )
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return {tp.partition: o for tp, o in ends.items()}
    finally:
        await consumer.stop()


@dataclass
class GroupProgress:
    """What :func:`watch_group` saw, on the caller's ``time.monotonic()`` clock."""

    first_output: float | None = None  # first poll that saw a record (committed or not) on the output topic
    done: float | None = None  # first poll that saw the group's offsets at the input's end
    polls: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)  # (t, committed input records)


async def watch_group(
    bootstrap: str,
    *,
    group: str,
    input_topic: str,
    input_ends: dict[int, int],
    output_topic: str,
    output_partitions: int,
    interval: float = 0.05,
    timeout: float = 600.0,
    alive: Any = None,
    on_first_output: Any = None,
) -> GroupProgress:
    """Poll until ``group`` has committed ``input_ends`` on ``input_topic``.

    Records when a first record appears on ``output_topic`` (high watermark,
    so before its transaction commits) and when the committed offsets reach
    the end. ``alive`` (a callable) is checked every poll; it raises if the
    process doing the work died; ``on_first_output`` is called once when the
    first output record is seen.
    """
    progress = GroupProgress()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    out_tps = [TopicPartition(output_topic, p) for p in range(output_partitions)]
    in_tps = [TopicPartition(input_topic, p) for p in sorted(input_ends)]
    target = sum(input_ends.values())
    await consumer.start()
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            if alive is not None:
                alive()
            now = time.monotonic()
            if progress.first_output is None:
                with contextlib.suppress(Exception):  # the topic may not exist yet
                    ends = await consumer.end_offsets(out_tps)
                    if sum(ends.values()) > 0:
                        progress.first_output = now
                        if on_first_output is not None:
                            on_first_output()
            try:
                offsets = await admin.list_consumer_group_offsets(group, partitions=in_tps)
            except Exception:  # noqa: BLE001 - a poll that fails counts nothing; the next one retries
                offsets = {}
            committed = sum(max(0, o.offset) for o in offsets.values())
            progress.polls += 1
            if not progress.samples or progress.samples[-1][1] != committed:
                progress.samples.append((now, committed))
            if committed >= target and all(
                offsets.get(tp) is not None and offsets[tp].offset >= input_ends[tp.partition] for tp in in_tps
            ):
                progress.done = now
                if progress.first_output is None:
                    progress.first_output = now
                return progress
            if now > deadline:
                raise TimeoutError(f"group {group} committed {committed}/{target} after {timeout} s")
            await asyncio.sleep(interval)
    finally:
        await consumer.stop()
        await admin.close()


# -------------------------------------------------------------- suite context


@dataclass
class BenchContext:
    """What ``python -m bench`` hands each suite's ``run(ctx)``.

    ``bootstrap()`` starts the shared benchmark broker on first use (or
    returns ``--bootstrap``); ``workdir`` is a scratch folder for this run
    (state dirs, child logs), removed afterwards unless ``--keep``.
    """

    args: argparse.Namespace
    quick: bool
    results_dir: Path
    workdir: Path
    _bootstrap: Any = None  # a callable starting the broker, or the address
    verbose: bool = True

    def bootstrap(self) -> str:
        if callable(self._bootstrap):
            self._bootstrap = self._bootstrap()
        return str(self._bootstrap)

    def write_results(
        self, name: str, data: dict[str, Any], columns: Sequence[str], rows: Sequence[Sequence[Any]], **kwargs: Any
    ) -> tuple[Path, Path]:
        """:func:`write_results` into ``results_dir``; a ``--quick`` run writes
        ``<name>-quick.*`` so it never overwrites the figures of a full run."""
        return write_results(f"{name}-quick" if self.quick else name, data, columns, rows, results_dir=self.results_dir, **kwargs)

    def say(self, message: str) -> None:
        if self.verbose:
            stamp = time.strftime("%H:%M:%S")
            print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------- child processes

_children: set[Child] = set()


@atexit.register
def _kill_children() -> None:
    for child in list(_children):
        with contextlib.suppress(Exception):
            child.stop(timeout=5)


class Child:
    """``python -m <module> <args>`` in a child process (own session), log in a file."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None, log_path: Path, cwd: Path = REPO) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - the log outlives this call; closed when the child is
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=env if env is not None else {**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _children.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"child {self.proc.args!r} exited with {code}; last lines of its log:\n{self.log_tail()}")

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    async def wait_for_log(self, needle: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log_text():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not in the log of {self.proc.args!r} after {timeout} s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM this child (clean stop), SIGKILL after ``timeout``; returns its exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            return self.proc.returncode
        finally:
            _children.discard(self)
            self._log.close()


# ----------------------------------------------------------------------- RSS


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds on a daemon thread.

    ``peak`` is the largest sample; ``mark(label)`` records the current RSS
    under a label; ``peak_since(label)`` the peak after a mark.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.marks: dict[str, int] = {}
        self._peaks_since: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def current(self) -> int:
        try:
            return int(self._proc.memory_info().rss)
        except Exception:  # noqa: BLE001 - the process may be gone; psutil raises several types
            return 0

    def _record(self, rss: int) -> None:
        with self._lock:
            self.samples += 1
            self.peak = max(self.peak, rss)
            for label, value in self._peaks_since.items():
                if rss > value:
                    self._peaks_since[label] = rss

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self.current()
            if rss:
                self._record(rss)
            self._stop.wait(self.interval)

    def mark(self, label: str) -> int:
        rss = self.current()
        self._record(rss)
        with self._lock:
            self.marks[label] = rss
            self._peaks_since[label] = rss
        return rss

    def peak_since(self, label: str) -> int:
        with self._lock:
            return self._peaks_since[label]

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


# ------------------------------------------------------------------- results


def machine_info() -> dict[str, Any]:
    """CPU count, platform, Python and library versions, the date."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for package in ("aiokafka", "quixstreams", "confluent-kafka", "rocksdict", "msgspec", "psutil", "transitions", "invoice-sm"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    with contextlib.suppress(Exception):
        import confluent_kafka

        versions["librdkafka"] = confluent_kafka.libversion()[0]
    from devtools.kafka_local import KAFKA_VERSION

    versions["kafka_broker"] = KAFKA_VERSION
    java = None
    with contextlib.suppress(Exception):
        out = subprocess.run(["java", "-version"], check=False, capture_output=True, text=True, timeout=20)
        java = (out.stderr or out.stdout).splitlines()[0]
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "java": java,
        "versions": versions,
    }
    with contextlib.suppress(Exception):
        import psutil

        info["memory_total_bytes"] = psutil.virtual_memory().total
        info["load_avg_at_start"] = list(os.getloadavg())
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=REPO, capture_output=True, text=True, timeout=10)
        info["git_commit"] = commit.stdout.strip() or None
        # Figures depend on uncommitted work too: name the files that differ.
        status = subprocess.run(
            ["git", "status", "--porcelain"], check=False, cwd=REPO, capture_output=True, text=True, timeout=10
        )
        info["git_uncommitted"] = [line[3:] for line in status.stdout.splitlines() if not line[3:].startswith("bench/")]
        diff = subprocess.run(["git", "diff", "HEAD"], check=False, cwd=REPO, capture_output=True, timeout=10)
        info["git_diff_sha1"] = hashlib.sha1(diff.stdout, usedforsecurity=False).hexdigest() if diff.stdout else None
    return info


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a dependency
        print(title)
        print(markdown_table(columns, rows))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console().print(table)


def write_results(
    name: str,
    data: dict[str, Any],
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str,
    notes: str = "",
    results_dir: Path = RESULTS_DIR,
) -> tuple[Path, Path]:
    """Write ``<name>.json`` (``data``) and ``<name>.md`` (title, table, notes)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{name}.json"
    md_path = results_dir / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    md = f"# {title}\n\n{markdown_table(columns, rows)}\n"
    if notes:
        md += f"\n{notes.strip()}\n"
    md_path.write_text(md)
    return json_path, md_path


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}/s"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / (1024 * 1024):,.0f} MiB"


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@contextlib.asynccontextmanager
async def timed() -> AsyncIterator[dict[str, float]]:
    """``async with timed() as t: ...`` then ``t["seconds"]``."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - start
