"""Processor benchmark: throughput beside a ceiling and a peer, restore, RSS.

Three parts (``--processor-parts throughput,restore,rss``), all on one local
broker (6 partitions everywhere):

**throughput** — ``E`` events over ``I`` invoices (every invoice touched at
least once; 3 % re-sent events, 20 % ``invoice.status.set``) are published
once to one input topic; then, in each round, three contenders read all of
it with fresh consumer groups, fresh output topics and fresh state, each in
its own child process:

- *processor*: ``python -m consumers.cli process`` (exactly-once, RocksDB
  state, default batching: ``getmany(max_records=batch_max_records)``);
- *ceiling*: ``python -m bench.ceiling``, the same consume -> produce
  transactional pipe without the domain (see that module's docstring for
  exactly what it does and does not do);
- *quix*: ``python -m bench.quix_peer``, the same decision logic as a Quix
  Streams ``Application`` in exactly-once mode with RocksDB state;
- *baseline* (only with ``--processor-baseline DIR``): the processor again,
  run from another copy of the tree (the code before a change), so that a
  change is measured before and after in the same run.

One ceiling run before round 1 warms the fresh broker and is not counted.
The order of the contenders alternates between rounds. **Timing rule, the
same for all of them:** from the first moment a record (committed or not)
appears on the contender's outcome topic (its first processed records) to
the first moment its consumer group's committed offsets reach the end of the
input (its last commit), both observed by the suite polling the broker every
50 ms. The rate is ``E / that window``. Also reported: the end-to-end rate
from process spawn to last commit (start-up, group join and topic checks
included), and the child's CPU time per event over the timing window
(user + system, all threads; less sensitive to the shared machine's noise).
After each run the outcome topic is read (read_committed) and must hold
exactly ``E`` outcomes (ceiling: ``E`` outcome-sized records).

With ``--processor-processes N`` (N > 1) two more contenders run in the same
rounds and order rotation: *processor xN* and *ceiling xN*, each as ``N``
child processes in one consumer group (the same settings; the processors
with separate state dirs), the way a Kafka processor scales out. Quix and the
baseline are not run this way. So that no rebalance lands inside the timing
window, each xN run gets its own copy of the input, published by the suite
inside one Kafka transaction that stays open while the members start: they
subscribe to it, but read_committed consumers see nothing of an open
transaction. Once every member logged an assignment, the latest assignments
cover the 6 partitions exactly once and no member's assignment changed for
3 s, the suite commits that transaction (the *gate*) and all ``E`` events
become readable at once. The timing rule is the same (first outcome seen ->
group committed the end of the input; the input's end is its data records,
not the commit marker after them); CPU per event is summed over the ``N``
processes; "end to end" runs from the gate's opening instead of the spawn.
The ratio reported is ``processor xN / max(ceiling x1, ceiling xN)``: the
best the raw pipe did with 1 or ``N`` processes on this machine.

**stages** — the per-record calls of the processor's transaction loop
(decode, decide, state get/put/commit over RocksDB and in memory, outcome
encode, the two ``TxnBatch`` appends) timed in-process on 50 000 of the same
events, to say where the processor's CPU goes beside the ceiling's.

**restore** — ``R`` valid ``StateRecord`` JSON values (3 remembered event
ids each), keyed by invoice key, are published to a compacted 6-partition
topic (non-transactional, big batches); then, alternately, a raw
``adapters.partition_reader.read_to_end`` of that topic (count only, chunk 20 000: the
restore's fetch size) and ``consumers.processor.restore_states`` into fresh
RocksDB stores are timed, in this process.

**rss** — for each size ``N`` (default 1M and 10M invoices): the
processor's per-partition RocksDB stores are pre-built directly with
``RocksPartitionStore.apply`` (50 000 puts per write batch) at the paths the
processor uses (``<state_dir>/<topic_events>-<p>``), with the changelog
checkpoint set to 0, the end offset of the (empty) changelog partition, so
the processor restores nothing and wipes nothing (checked in its log). The
processor is started as a child (``python -m consumers.cli process``) and its
RSS sampled every 50 ms with psutil; once its partitions are assigned the RSS
is noted ("loaded"), then ``V`` events (default 1M) on invoices drawn
uniformly among the ``N`` are published and processed to the end (peak RSS
over the whole life). The processor's LRU caches (``state_cache_size`` per
process, shared by its partitions) fill with the touched invoices, so the count of states cached at
the end and the RSS growth per cached state are reported too.
Every pre-built state has version >= 5, so the share of outcomes with
version >= 5 proves the decisions read the pre-built state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from adapters import partition_reader, topics
from bench import common
from bench.common import BenchContext, Child, GroupProgress

TITLE = "invoice-sm processor: throughput (exactly-once) vs ceiling and Quix Streams, restore, RSS"
PARTS = ("throughput", "stages", "restore", "rss")
PARTITIONS = 6
#: Issue 11's targets: processor / ceiling and processor / Quix Streams, same run.
TARGET_TO_CEILING = 0.5
TARGET_TO_QUIX = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("processor suite")
    g.add_argument("--processor-parts", default=",".join(PARTS), help="comma-separated subset of: " + ", ".join(PARTS))
    g.add_argument("--processor-events", type=int, help="input events (default 200000; quick 20000)")
    g.add_argument("--processor-invoices", type=int, help="invoices in the input (default 100000; quick 10000)")
    g.add_argument("--processor-rounds", type=int, help="rounds of the three contenders (default 2; quick 1)")
    g.add_argument("--processor-batch-max-records", type=int, help="INVOICE_SM_BATCH_MAX_RECORDS for processor and ceiling")
    g.add_argument("--processor-no-quix", action="store_true", help="skip the Quix Streams peer")
    g.add_argument(
        "--processor-processes",
        type=int,
        default=1,
        metavar="N",
        help="N > 1: also run, in the same rounds, the processor and the ceiling as N processes in one "
        "consumer group each (contenders 'processor xN' and 'ceiling xN'; default 1: not run)",
    )
    g.add_argument(
        "--processor-baseline",
        type=Path,
        metavar="DIR",
        help="also run, in the same rounds, the processor of another copy of "
        "the tree (the code before a change) as contender 'baseline'",
    )
    g.add_argument("--processor-restore-invoices", type=int, help="state records to restore (default 1000000; quick 50000)")
    g.add_argument("--processor-restore-rounds", type=int, help="raw read + restore pairs (default 2; quick 1)")
    g.add_argument(
        "--processor-rss-invoices",
        help="comma-separated invoice counts held by the processor (default 1000000,10000000; quick 50000,200000)",
    )
    g.add_argument("--processor-rss-events", type=int, help="events processed in each RSS run (default 1000000; quick 10000)")


def _params(ctx: BenchContext) -> dict[str, Any]:
    a = ctx.args
    quick = ctx.quick

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    rss = pick(a.processor_rss_invoices, "1000000,10000000", "50000,200000")
    if a.processor_processes < 1:
        raise SystemExit("--processor-processes must be >= 1")
    extra = {"processes": a.processor_processes} if a.processor_processes > 1 else {}
    return {
        "parts": [p.strip() for p in a.processor_parts.split(",") if p.strip()],
        "events": pick(a.processor_events, 200_000, 20_000),
        "invoices": pick(a.processor_invoices, 100_000, 10_000),
        "rounds": pick(a.processor_rounds, 2, 1),
        "batch_max_records": a.processor_batch_max_records,
        "quix": not a.processor_no_quix,
        "baseline": str(a.processor_baseline) if a.processor_baseline else None,
        "restore_invoices": pick(a.processor_restore_invoices, 1_000_000, 50_000),
        "restore_rounds": pick(a.processor_restore_rounds, 2, 1),
        "rss_invoices": [int(x) for x in str(rss).split(",") if x.strip()],
        "rss_events": pick(a.processor_rss_events, 1_000_000, 10_000),
        "partitions": PARTITIONS,
        "seed": 7,
        **extra,
    }


# ------------------------------------------------------------- throughput

TIMING_RULE_PROCESSES = (
    "xN contenders: N child processes in one consumer group on their own copy of the input, published inside one "
    "open transaction; the transaction is committed (the gate opens) once every member logged an assignment, the "
    "assignments cover the 6 partitions exactly once and none changed for 3 s; then the same rule (first outcome -> "
    "group committed the input's data records); CPU summed over the N processes; end to end from the gate's opening"
)


def output_sizes(records: list[tuple[bytes, bytes]], topic: str, partitions: int) -> dict[str, Any]:
    """Mean sizes of the processor's outcome and state values for ``records``,
    computed with its own encoders (decide in input order per partition)."""
    from adapters import wire
    from consumers.processor import utc_now
    from domain.decide import decide

    outcome_bytes = wire.outcome_bytes
    states: dict[str, Any] = {}
    offsets = [0] * partitions
    now = utc_now()
    outcome_total = state_total = state_count = 0
    for key, value in records:
        p = common.partition_for(key, partitions)
        offset = offsets[p]
        offsets[p] += 1
        event = wire.decode_event(key, value)
        decision = decide(states.get(event.key), event, now)
        outcome_total += len(outcome_bytes(decision, SimpleNamespace(topic=topic, partition=p, offset=offset), now, event.key))
        if decision.changes_state:
            states[event.key] = decision.state
            state_total += len(wire.encode_state(decision.state))
            state_count += 1
    n = len(records)
    return {
        "outcome_mean_bytes": round(outcome_total / n),
        "state_mean_bytes": round(state_total / max(1, state_count)),
        "state_records": state_count,
        "outcome_records": n,
        "event_mean_bytes": round(sum(len(v) for _, v in records) / n),
        "key_mean_bytes": round(sum(len(k) for k, _ in records) / n),
    }


async def _count_records(bootstrap: str, topic: str) -> int:
    settings = common.bench_settings(bootstrap, name="count", state_root=Path("/nonexistent"))
    count = 0
    async for records in partition_reader.read_to_end(settings, topic, chunk=20_000, timeout=60):
        count += len(records)
    return count


async def _measure(
    contender: str,
    child: Child | list[Child],
    *,
    bootstrap: str,
    group: str,
    input_topic: str,
    input_ends: dict[int, int],
    output_topic: str,
    expected_outputs: int,
    exits_by_itself: bool = False,
    gate: Any = None,
) -> dict[str, Any]:
    """Time one contender by the timing rule. ``child``: one child, or the
    members of one consumer group (CPU summed over them). ``gate``: an
    awaitable factory opening the input (see :class:`_GatedInput`), called
    once the watch has started; "end to end" then runs from its opening."""
    import psutil

    members = child if isinstance(child, list) else [child]
    child = members[0]
    procs = [psutil.Process(m.pid) for m in members]
    cpu: dict[str, float] = {}
    exited_at: list[float] = []
    polls: list[float] = []
    polling = asyncio.Event()  # set at the watch's second poll (one full poll done: its clients are up)

    def cpu_now() -> float:
        total = 0.0
        for proc in procs:
            t = proc.cpu_times()
            total += float(t.user + t.system)
        return total

    def alive() -> None:
        if not polling.is_set():
            polls.append(time.monotonic())
            if len(polls) >= 2:
                polling.set()
        if len(members) > 1:
            for m in members:
                m.check_alive()
            return
        code = child.proc.poll()
        if code is None:
            return
        if exits_by_itself and code == 0:
            if not exited_at:
                exited_at.append(time.monotonic())
            elif time.monotonic() - exited_at[0] > 15:
                raise RuntimeError(f"{contender} exited before its group committed the input:\n{child.log_tail()}")
            return
        child.check_alive()

    def on_first_output() -> None:
        with contextlib.suppress(Exception):
            cpu["first"] = cpu_now()

    n = sum(input_ends.values())
    watch = asyncio.ensure_future(
        common.watch_group(
            bootstrap,
            group=group,
            input_topic=input_topic,
            input_ends=input_ends,
            output_topic=output_topic,
            output_partitions=PARTITIONS,
            alive=alive,
            on_first_output=on_first_output,
        )
    )
    started = child.started
    try:
        if gate is not None:
            # Open the input only once the watch polls, so that it sees the first outcome.
            first_poll = asyncio.ensure_future(polling.wait())
            await asyncio.wait([watch, first_poll], return_when=asyncio.FIRST_COMPLETED)
            first_poll.cancel()
            if not watch.done():
                started = await gate()
        progress: GroupProgress = await watch
    finally:
        if not watch.done():
            watch.cancel()
            with contextlib.suppress(BaseException):
                await watch
    with contextlib.suppress(Exception):
        cpu["done"] = cpu_now()
    code = child.wait(60) if exits_by_itself else child.stop()
    if exits_by_itself:
        child.stop()
    codes = [code] + [m.stop() for m in members[1:]]
    code = next((c for c in codes if c not in (0, None)), code)
    assert progress.first_output is not None and progress.done is not None
    if gate is not None and progress.first_output < started:
        # Seen by the poll in flight when the gate opened, whose clock was read
        # before it: no outcome can exist before the input is readable.
        progress.first_output = started
    window = progress.done - progress.first_output
    outputs = await _count_records(bootstrap, output_topic)
    result: dict[str, Any] = {
        "contender": contender,
        "events": n,
        "window_seconds": round(window, 3),
        "events_per_s": round(n / window, 1) if window > 0 else None,
        "end_to_end_seconds": round(progress.done - started, 3),
        "end_to_end_events_per_s": round(n / (progress.done - started), 1),
        "startup_seconds": round(progress.first_output - started, 3),
        "cpu_seconds_in_window": round(cpu["done"] - cpu["first"], 3) if "done" in cpu and "first" in cpu else None,
        "outputs_read_committed": outputs,
        "outputs_expected": expected_outputs,
        "exit_code": code,
        "log": str(child.log_path),
    }
    if len(members) > 1:
        result["processes"] = len(members)
        result["logs"] = [str(m.log_path) for m in members]
        result["exit_codes"] = codes
    if result["cpu_seconds_in_window"] is not None:
        result["cpu_us_per_event"] = round(result["cpu_seconds_in_window"] / n * 1e6, 1)
    if outputs != expected_outputs:
        raise RuntimeError(f"{contender}: {outputs} records on {output_topic}, expected exactly {expected_outputs}")
    return result


def _batch_stats(*log_paths: Path) -> dict[str, Any]:
    """Batches committed by the processor, from its JSON log(s)."""
    sizes: list[int] = []
    durations: list[float] = []
    lines = [line for path in log_paths for line in path.read_text(errors="replace").splitlines()]
    for line in lines:
        if '"batch_committed"' not in line:
            continue
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            sizes.append(int(entry["records"]))
            durations.append(float(entry["duration_ms"]))
    if not sizes:
        return {}
    return {
        "batches": len(sizes),
        "mean_records_per_batch": round(sum(sizes) / len(sizes), 1),
        "mean_batch_ms": round(sum(durations) / len(durations), 2),
    }


async def _run_processor(
    ctx: BenchContext, bootstrap: str, input_topic: str, ends: dict[int, int], overrides: dict[str, Any], tree: Path | None = None
) -> dict[str, Any]:
    """``invoice-sm process`` as a child; ``tree``: run the copy of the code there instead (contender ``baseline``)."""
    contender = "processor" if tree is None else "baseline"
    name = common.unique("p" if tree is None else "bl")
    settings = common.bench_settings(
        bootstrap, name=name, state_root=ctx.workdir / "state", topic_events=input_topic, **overrides
    )
    await common.create_topics(settings)
    env = common.settings_env(settings)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)  # before the editable install of this tree
    child = Child(
        "consumers.cli",
        "process",
        env=env,
        log_path=ctx.workdir / "logs" / f"{name}-{contender}.log",
        **({"cwd": tree} if tree else {}),
    )
    result = await _measure(
        contender,
        child,
        bootstrap=bootstrap,
        group=settings.processor_group_id,
        input_topic=input_topic,
        input_ends=ends,
        output_topic=settings.topic_outcomes,
        expected_outputs=sum(ends.values()),
    )
    result.update(_batch_stats(child.log_path))
    shutil.rmtree(settings.state_dir, ignore_errors=True)
    return result


async def _run_ceiling(
    ctx: BenchContext, bootstrap: str, input_topic: str, ends: dict[int, int], sizes: dict[str, Any], overrides: dict[str, Any]
) -> dict[str, Any]:
    name = common.unique("c")
    settings = common.bench_settings(
        bootstrap, name=name, state_root=ctx.workdir / "state", topic_events=input_topic, **overrides
    )
    await common.create_topics(
        settings,
        topics.like(settings, "events", settings.topic_events, PARTITIONS),
        topics.like(settings, "outcomes", settings.topic_outcomes, PARTITIONS),
        topics.like(settings, "state", settings.topic_state, PARTITIONS),
    )
    child = Child(
        "bench.ceiling",
        "--outcome-bytes",
        str(sizes["outcome_mean_bytes"]),
        "--state-bytes",
        str(sizes["state_mean_bytes"]),
        env=common.settings_env(settings),
        log_path=ctx.workdir / "logs" / f"{name}-ceiling.log",
    )
    return await _measure(
        "ceiling",
        child,
        bootstrap=bootstrap,
        group=settings.processor_group_id,
        input_topic=input_topic,
        input_ends=ends,
        output_topic=settings.topic_outcomes,
        expected_outputs=sum(ends.values()),
    )


class _GatedInput:
    """A copy of the input on a fresh topic, published inside one Kafka
    transaction left open: read_committed consumers (processor, ceiling) see
    none of it until :meth:`open` commits it, then all of it at once.

    ``ends``: data records per partition, the offsets the group must commit
    (the commit marker after them takes one more offset, never consumed)."""

    def __init__(self, topic: str, producer: Any, ends: dict[int, int], seconds: float) -> None:
        self.topic = topic
        self.producer = producer
        self.ends = ends
        self.publish_seconds = seconds
        self.opened: float | None = None

    @classmethod
    async def publish(cls, settings: Any, records: list[tuple[bytes, bytes]]) -> _GatedInput:
        from adapters import kafka

        topic = f"{common.unique('gin')}.events"
        await common.create_topics(settings, topics.like(settings, "events", topic, PARTITIONS))
        producer = kafka.new_transactional_producer(
            settings,
            f"{topic}-gate",
            linger_ms=0,
            max_batch_size=1024 * 1024,
            max_request_size=4 * 1024 * 1024,
            request_timeout_ms=60_000,
            transaction_timeout_ms=600_000,  # the members start and settle meanwhile
        )
        started = time.perf_counter()
        await producer.start()
        try:
            await producer.begin_transaction()
            counts = dict.fromkeys(range(PARTITIONS), 0)
            builders = {p: producer.create_batch() for p in range(PARTITIONS)}
            futures: list[asyncio.Future[Any]] = []
            for key, value in records:
                p = common.partition_for(key, PARTITIONS)
                if builders[p].append(key=key, value=value, timestamp=None) is None:
                    builders[p].close()
                    futures.append(await producer.send_batch(builders[p], topic, partition=p))
                    builders[p] = producer.create_batch()
                    builders[p].append(key=key, value=value, timestamp=None)
                counts[p] += 1
            for p, builder in builders.items():
                if builder.record_count():
                    builder.close()
                    futures.append(await producer.send_batch(builder, topic, partition=p))
            await asyncio.gather(*futures)  # written (acked), still invisible to read_committed
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return cls(topic, producer, counts, time.perf_counter() - started)

    async def open(self) -> float:
        """Commit the transaction; returns the (monotonic) moment the commit was asked."""
        self.opened = time.monotonic()
        await self.producer.commit_transaction()
        return self.opened

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.opened is None:
                await self.producer.abort_transaction()
        with contextlib.suppress(Exception):
            await self.producer.stop()


def _held_partitions(child: Child) -> set[int] | None:
    """The partitions a member holds now, from the ``partitions_assigned`` /
    ``partitions_revoked`` JSON lines of its log (None: never assigned)."""
    held: set[int] | None = None
    for line in child.log_text().splitlines():
        if '"partitions_assigned"' not in line and '"partitions_revoked"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "partitions_assigned":
            held = (held or set()) | set(entry["partitions"])
        elif entry.get("event") == "partitions_revoked" and held is not None:
            held -= set(entry["partitions"])
    return held


async def _wait_members_settled(children: list[Child], partitions: int, quiet: float = 3.0, timeout: float = 180.0) -> float:
    """Until every member logged an assignment, the members' current
    assignments cover ``partitions`` exactly once, and none changed for
    ``quiet`` seconds. Returns the (monotonic) moment that state began."""
    deadline = time.monotonic() + timeout
    last: list[frozenset[int] | None] | None = None
    since = time.monotonic()
    while True:
        for ch in children:
            ch.check_alive()
        now = time.monotonic()
        held = [_held_partitions(ch) for ch in children]
        state = [None if h is None else frozenset(h) for h in held]
        if state != last:
            last, since = state, now
        covered = all(h is not None for h in held) and sorted(p for h in held if h for p in h) == list(range(partitions))
        if covered and now - since >= quiet:
            return since
        if now > deadline:
            raise TimeoutError(f"the {len(children)} members did not settle on {partitions} partitions: {state}")
        await asyncio.sleep(0.2)


async def _run_members(
    ctx: BenchContext,
    kind: str,
    processes: int,
    bootstrap: str,
    records: list[tuple[bytes, bytes]],
    sizes: dict[str, Any],
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """``kind`` ("processor" or "ceiling") as ``processes`` children in one
    consumer group on a gated copy of the input (:class:`_GatedInput`): the
    gate opens once the group has settled, so no rebalance falls in the window."""
    from adapters.settings import env_name

    contender = f"{kind}_xN"
    name = common.unique("pn" if kind == "processor" else "cn")
    input_settings = common.bench_settings(bootstrap, state_root=ctx.workdir)
    gated = await _GatedInput.publish(input_settings, records)
    try:
        settings = common.bench_settings(
            bootstrap, name=name, state_root=ctx.workdir / "state", topic_events=gated.topic, **overrides
        )
        if kind == "processor":
            await common.create_topics(settings)
        else:
            await common.create_topics(
                settings,
                topics.like(settings, "outcomes", settings.topic_outcomes, PARTITIONS),
                topics.like(settings, "state", settings.topic_state, PARTITIONS),
            )
        env = common.settings_env(settings)
        children: list[Child] = []
        try:
            for i in range(processes):
                log_path = ctx.workdir / "logs" / f"{name}-{kind}-{i}.log"
                if kind == "processor":
                    member_env = {**env, env_name("state_dir"): str(Path(settings.state_dir) / f"m{i}")}
                    children.append(Child("consumers.cli", "process", env=member_env, log_path=log_path))
                else:
                    children.append(
                        Child(
                            "bench.ceiling",
                            "--outcome-bytes",
                            str(sizes["outcome_mean_bytes"]),
                            "--state-bytes",
                            str(sizes["state_mean_bytes"]),
                            env=env,
                            log_path=log_path,
                        )
                    )
            settled = await _wait_members_settled(children, PARTITIONS)
        except BaseException:
            for ch in children:
                ch.stop()
            raise
        result = await _measure(
            contender,
            children,
            bootstrap=bootstrap,
            group=settings.processor_group_id,
            input_topic=gated.topic,
            input_ends=gated.ends,
            output_topic=settings.topic_outcomes,
            expected_outputs=sum(gated.ends.values()),
            gate=gated.open,
        )
        result["settle_seconds"] = round(settled - children[0].started, 3)
        result["input_topic"] = gated.topic
        result["input_publish_seconds"] = round(gated.publish_seconds, 2)
        if kind == "processor":
            result.update(_batch_stats(*(ch.log_path for ch in children)))
            shutil.rmtree(settings.state_dir, ignore_errors=True)
        return result
    finally:
        await gated.close()


async def _run_quix(ctx: BenchContext, bootstrap: str, input_topic: str, ends: dict[int, int]) -> dict[str, Any]:
    name = common.unique("q")
    settings = common.bench_settings(bootstrap, name=name, state_root=ctx.workdir / "state")
    output = f"{name}.outcomes"
    await common.create_topics(settings, topics.like(settings, "outcomes", output, PARTITIONS))
    state_dir = ctx.workdir / "state" / name
    child = Child(
        "bench.quix_peer",
        "--bootstrap",
        bootstrap,
        "--input",
        input_topic,
        "--output",
        output,
        "--group",
        f"{name}.quix",
        "--state-dir",
        str(state_dir),
        "--count",
        str(sum(ends.values())),
        log_path=ctx.workdir / "logs" / f"{name}-quix.log",
    )
    result = await _measure(
        "quix",
        child,
        bootstrap=bootstrap,
        group=f"{name}.quix",
        input_topic=input_topic,
        input_ends=ends,
        output_topic=output,
        expected_outputs=sum(ends.values()),
        exits_by_itself=True,
    )
    result["commit_interval_s"] = 5.0
    shutil.rmtree(state_dir, ignore_errors=True)
    return result


async def throughput(ctx: BenchContext, p: dict[str, Any]) -> dict[str, Any]:
    bootstrap = ctx.bootstrap()
    n_events, n_invoices = p["events"], p["invoices"]
    ctx.say(f"throughput: generating {n_events:,} events over {n_invoices:,} invoices")
    t = time.perf_counter()
    records = common.encoded_events(n_events, n_invoices, p["seed"])
    generate_s = time.perf_counter() - t
    input_topic = f"{common.unique('in')}.events"
    input_settings = common.bench_settings(bootstrap, state_root=ctx.workdir)
    await common.create_topics(input_settings, topics.like(input_settings, "events", input_topic, PARTITIONS))
    produced = await common.produce_fast(bootstrap, input_topic, records, PARTITIONS)
    ends = await common.end_offsets(bootstrap, input_topic, PARTITIONS)
    sizes = output_sizes(records, input_topic, PARTITIONS)
    stage_costs = None
    if "stages" in p["parts"]:
        ctx.say("stages: timing the per-record steps in-process")
        stage_costs = stages(records[:50_000], input_topic)
    processes = p.get("processes", 1)
    if processes == 1:
        del records  # else kept: each N-process run publishes its own gated copy
    ctx.say(f"throughput: published {produced.records:,} events in {produced.seconds:.1f} s; output sizes {sizes}")
    overrides: dict[str, Any] = {}
    if p["batch_max_records"]:
        overrides["batch_max_records"] = p["batch_max_records"]
    batch_max_records = common.bench_settings(bootstrap, state_root=ctx.workdir, **overrides).batch_max_records

    contenders = ["processor", "ceiling"] + (["quix"] if p["quix"] else []) + (["baseline"] if p["baseline"] else [])
    if processes > 1:
        contenders += ["processor_xN", "ceiling_xN"]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in contenders}
    # One ceiling run first, not counted: whichever contender ran first on the
    # broker fresh from its start was up to 2x slower (JIT, page cache, first
    # transactions), and by the order rule that was always the processor.
    ctx.say("throughput: warm-up run (ceiling, not counted)")
    warmup = await _run_ceiling(ctx, bootstrap, input_topic, ends, sizes, overrides)
    for r in range(p["rounds"]):
        order = contenders if r % 2 == 0 else list(reversed(contenders))
        for contender in order:
            ctx.say(f"throughput: round {r + 1}/{p['rounds']}: {contender}")
            if contender == "processor":
                result = await _run_processor(ctx, bootstrap, input_topic, ends, overrides)
            elif contender == "baseline":
                result = await _run_processor(ctx, bootstrap, input_topic, ends, overrides, tree=Path(p["baseline"]))
            elif contender == "ceiling":
                result = await _run_ceiling(ctx, bootstrap, input_topic, ends, sizes, overrides)
            elif contender in ("processor_xN", "ceiling_xN"):
                kind = contender.removesuffix("_xN")
                result = await _run_members(ctx, kind, processes, bootstrap, records, sizes, overrides)
            else:
                result = await _run_quix(ctx, bootstrap, input_topic, ends)
            result["round"] = r + 1
            runs[contender].append(result)
            ctx.say(
                f"throughput:   {contender}: {result['events_per_s']:,.0f} events/s over {result['window_seconds']:.2f} s"
                f" (end to end {result['end_to_end_events_per_s']:,.0f}/s, cpu {result.get('cpu_us_per_event')} us/event)"
                + (f" settled in {result['settle_seconds']:.1f} s" if "settle_seconds" in result else "")
            )

    def med(contender: str, key: str) -> float | None:
        values = [x[key] for x in runs.get(contender, []) if x.get(key) is not None]
        return round(common.median(values), 1) if values else None

    summary: dict[str, Any] = {
        c: {k: med(c, k) for k in ("events_per_s", "end_to_end_events_per_s", "cpu_us_per_event")} for c in contenders
    }
    ours = summary["processor"]["events_per_s"]
    summary["ratio_processor_to_ceiling"] = round(ours / summary["ceiling"]["events_per_s"], 3)
    summary["ratio_processor_to_ceiling_per_round"] = [
        round(a["events_per_s"] / b["events_per_s"], 3) for a, b in zip(runs["processor"], runs["ceiling"], strict=True)
    ]
    summary["target_ratio_to_ceiling"] = TARGET_TO_CEILING
    summary["target_ratio_to_quix"] = TARGET_TO_QUIX
    if p["quix"]:
        summary["ratio_processor_to_quix"] = round(ours / summary["quix"]["events_per_s"], 3)
        summary["ratio_processor_to_quix_per_round"] = [
            round(a["events_per_s"] / b["events_per_s"], 3) for a, b in zip(runs["processor"], runs["quix"], strict=True)
        ]
    if p["baseline"]:
        # The code before the change, against the same ceiling and peer in the same rounds.
        summary["baseline_tree"] = p["baseline"]
        summary["ratio_baseline_to_ceiling"] = round(summary["baseline"]["events_per_s"] / summary["ceiling"]["events_per_s"], 3)
        summary["ratio_baseline_to_ceiling_per_round"] = [
            round(a["events_per_s"] / b["events_per_s"], 3) for a, b in zip(runs["baseline"], runs["ceiling"], strict=True)
        ]
        if p["quix"]:
            summary["ratio_baseline_to_quix_per_round"] = [
                round(a["events_per_s"] / b["events_per_s"], 3) for a, b in zip(runs["baseline"], runs["quix"], strict=True)
            ]
            summary["ratio_baseline_to_quix"] = round(summary["baseline"]["events_per_s"] / summary["quix"]["events_per_s"], 3)
    if processes > 1:
        # N processes in one group each; against the best the raw pipe did with 1 or N processes.
        summary["processes"] = processes
        ceiling_1, ceiling_n = summary["ceiling"]["events_per_s"], summary["ceiling_xN"]["events_per_s"]
        summary["ceiling_best"] = "ceiling_xN" if ceiling_n > ceiling_1 else "ceiling"
        summary["ratio_processor_xN_to_ceiling_best"] = round(
            summary["processor_xN"]["events_per_s"] / max(ceiling_1, ceiling_n), 3
        )
        summary["ratio_processor_xN_to_ceiling_best_per_round"] = [
            round(a["events_per_s"] / max(b["events_per_s"], c["events_per_s"]), 3)
            for a, b, c in zip(runs["processor_xN"], runs["ceiling"], runs["ceiling_xN"], strict=True)
        ]
        summary["scaling_processor_xN_to_processor"] = round(summary["processor_xN"]["events_per_s"] / ours, 3)
        summary["scaling_ceiling_xN_to_ceiling"] = round(ceiling_n / ceiling_1, 3)
    return {
        "input": {
            "topic": input_topic,
            "events": n_events,
            "invoices": n_invoices,
            "partitions": PARTITIONS,
            "per_partition": produced.per_partition,
            "bytes": produced.bytes,
            "generate_seconds": round(generate_s, 2),
            "publish_seconds": round(produced.seconds, 2),
            **sizes,
        },
        "batch_max_records": batch_max_records,
        "timing_rule": "first record seen on the contender's outcome topic -> its group's committed offsets reach the input end; "
        "both observed by polling the broker every 50 ms; rate = events / window; median over rounds",
        **({"timing_rule_processes": TIMING_RULE_PROCESSES} if processes > 1 else {}),
        "runs": runs,
        "warmup_run": warmup,
        "summary": summary,
        "stages": stage_costs,
    }


# ------------------------------------------------------------------- stages


def stages(records: list[tuple[bytes, bytes]], topic: str, partitions: int = PARTITIONS) -> dict[str, Any]:
    """CPU cost per event of each step of the processor's per-record loop,
    measured in this process on the benchmark's events (best of 3 passes).

    The steps are the calls ``PartitionWorker._transact`` makes per record:
    ``decode_event``; ``decide`` (states in a dict); ``InvoiceStates.get`` +
    ``put`` (state encode) + ``commit`` per 5 000, over an in-memory store and
    over a fresh RocksDB store (the difference is RocksDB's share);
    ``outcome_bytes``; and appending the two records through ``TxnBatch``
    (the ceiling pays this one too) onto plain ``BatchBuilder``s.
    """
    import gc

    from aiokafka.producer.message_accumulator import BatchBuilder
    from aiokafka.structs import ConsumerRecord

    from adapters import native, wire
    from adapters.kafka import TxnBatch
    from adapters.store import InvoiceStates, MemoryPartitionStore, RocksPartitionStore
    from consumers.processor import decide_batch, utc_now
    from domain.decide import decide

    outcome_bytes = wire.outcome_bytes
    put = common.state_putter()
    now = utc_now()
    n = len(records)
    events = [wire.decode_event(k, v) for k, v in records]
    where = [
        SimpleNamespace(topic=topic, partition=common.partition_for(k, partitions), offset=i) for i, (k, _) in enumerate(records)
    ]

    def best(fn: Any) -> float:
        times = []
        for _ in range(3):
            gc.collect()
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return round(min(times) / n * 1e6, 2)

    def decode() -> None:
        for k, v in records:
            wire.decode_event(k, v)

    decisions: list[Any] = []

    def decide_all() -> None:
        decisions.clear()
        states: dict[str, Any] = {}
        for e in events:
            key = e.key
            d = decide(states.get(key), e, now)
            if d.changes_state:
                states[key] = d.state
            decisions.append(d)

    def state_ops(store: Any = None) -> None:
        states = InvoiceStates(store or MemoryPartitionStore(), 200_000, wire.decode_state, wire.encode_state)
        for i, d in enumerate(decisions):
            key = d.event.key
            states.get(key)
            if d.changes_state:
                put(states, key, d.state)
            if i % 5000 == 4999:
                states.commit(i)
        states.commit(n)

    def outcomes() -> None:
        for d, r in zip(decisions, where, strict=True):
            outcome_bytes(d, r, now, d.event.key)

    class _Producer:  # TxnBatch only calls create_batch() while appending
        def create_batch(self) -> Any:
            return BatchBuilder(512 * 1024, 0)

    values = [(k, b"o" * 713, b"s" * 244) for k, _ in records]

    def appends_sync() -> None:
        batch = TxnBatch(_Producer())
        for k, o, st in values:
            if not batch.append("o", 0, k, o):
                batch = TxnBatch(_Producer())
            if not batch.append("s", 0, k, st):
                batch = TxnBatch(_Producer())

    async def appends_awaited() -> None:
        a, b = BatchBuilder(512 * 1024, 0), BatchBuilder(512 * 1024, 0)

        async def add(builder: Any, k: bytes, v: bytes) -> Any:
            return builder.append(key=k, value=v, timestamp=None, headers=[])

        for k, o, st in values:
            if await add(a, k, o) is None:
                a = BatchBuilder(512 * 1024, 0)
            if await add(b, k, st) is None:
                b = BatchBuilder(512 * 1024, 0)

    def state_ops_rocksdb() -> None:
        with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
            store = RocksPartitionStore(Path(tmp) / "p0", write_ahead_log=False)  # as the processor opens it
            try:
                state_ops(store)
            finally:
                store.close()

    step = native.load()
    consumed = [
        ConsumerRecord(topic, r.partition, r.offset, 0, 0, k, v, None, len(k), len(v), ())
        for (k, v), r in zip(records, where, strict=True)
    ]

    def native_steps(store: Any = None) -> None:
        # The processor's own loop (decide_batch) over batches of 5,000, each committed.
        states = InvoiceStates(store or MemoryPartitionStore(), 200_000, wire.decode_state, wire.encode_state)
        for start in range(0, n, 5000):
            verdicts = decide_batch(consumed[start : start + 5000], states, native=step, max_bytes=65536, now=now)
            assert verdicts.python_path == 0, "the bench's events are plain: the native step must answer them all"
            states.commit(start + 5000)

    def native_steps_rocksdb() -> None:
        with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
            store = RocksPartitionStore(Path(tmp) / "p0", write_ahead_log=False)
            try:
                native_steps(store)
            finally:
                store.close()

    result: dict[str, Any] = {
        "events": n,
        "decode_event_us": best(decode),
        "decide_us": best(decide_all),
        "state_get_put_commit_us": best(state_ops),
        "state_get_put_commit_rocksdb_us": best(state_ops_rocksdb),
        "outcome_bytes_us": best(outcomes),
    }
    if hasattr(TxnBatch, "append"):
        result["two_appends_us"] = best(appends_sync)
        result["appends_via"] = "TxnBatch.append (sync)"
    else:
        result["two_appends_us"] = best(lambda: asyncio.run(appends_awaited()))
        result["appends_via"] = "awaited coroutine per record (TxnBatch.add)"
    if step is not None:
        # The native step does decode + decide + outcome + state encoding in one call.
        result["native_step_us"] = best(native_steps)
        result["native_step_rocksdb_us"] = best(native_steps_rocksdb)
    result["domain_total_us"] = round(
        result["decode_event_us"] + result["decide_us"] + result["state_get_put_commit_rocksdb_us"] + result["outcome_bytes_us"],
        2,
    )
    return result


# ------------------------------------------------------------------ restore


def state_values(count: int) -> Iterator[tuple[bytes, bytes]]:
    """(invoice key, StateRecord JSON) of invoices ``card(0..count-1)``: version >= 5, 3 remembered ids."""
    from adapters.wire import encode_state
    from domain.model import InvoiceState
    from domain.status import ReimburseStatus as S
    from tests.factories import APPID, card

    statuses = (S.LOCK, S.INIT, S.LOCK, S.INIT, S.CLOSURE)
    for n in range(count):
        card_id, code = card(n)
        state = InvoiceState(
            card_id,
            code,
            statuses[n % 5],
            5 + n % 5,
            APPID,
            "2026-11-23T10:00:00.000Z",
            (f"s-{n:09d}-1", f"s-{n:09d}-2", f"s-{n:09d}-3"),
        )
        yield f"{card_id}/{code}".encode(), encode_state(state)


async def _raw_read(settings: Any) -> tuple[int, float]:
    count = 0
    started = time.perf_counter()
    async for records in partition_reader.read_to_end(settings, settings.topic_state, chunk=20_000):
        count += len(records)
    return count, time.perf_counter() - started


async def _restore_fresh(settings: Any, root: Path) -> tuple[int, float, int]:
    from adapters.store import InvoiceStates, RocksPartitionStore
    from adapters.wire import decode_state, encode_state
    from consumers.processor import restore_states

    stores = {p: RocksPartitionStore(root / f"{settings.topic_events}-{p}") for p in range(PARTITIONS)}
    try:
        states = {p: InvoiceStates(s, settings.state_cache_size, decode_state, encode_state) for p, s in stores.items()}
        started = time.perf_counter()
        restored = await restore_states(settings, states)
        seconds = time.perf_counter() - started
        keys = sum(s.approximate_count() for s in stores.values())
    finally:
        for s in stores.values():
            s.close()
        shutil.rmtree(root, ignore_errors=True)
    return sum(restored.values()), seconds, keys


async def restore(ctx: BenchContext, p: dict[str, Any]) -> dict[str, Any]:
    bootstrap = ctx.bootstrap()
    n = p["restore_invoices"]
    settings = common.bench_settings(bootstrap, name=common.unique("r"), state_root=ctx.workdir / "state")
    await common.create_topics(
        settings,
        topics.like(settings, "events", settings.topic_events, PARTITIONS),
        topics.like(settings, "state", settings.topic_state, PARTITIONS),
    )
    ctx.say(f"restore: publishing {n:,} state records")
    produced = await common.produce_fast(bootstrap, settings.topic_state, state_values(n), PARTITIONS)
    ctx.say(f"restore: published in {produced.seconds:.1f} s ({produced.rate:,.0f}/s, {produced.bytes / n:.0f} B/record)")
    rounds = []
    for r in range(p["restore_rounds"]):
        count, raw_s = await _raw_read(settings)
        restored, restore_s, keys = await _restore_fresh(settings, ctx.workdir / "state" / f"restore-{r}")
        if count != n or restored != n:
            raise RuntimeError(f"restore: raw read {count}, restored {restored}, expected {n}")
        rounds.append(
            {
                "round": r + 1,
                "raw_seconds": round(raw_s, 3),
                "raw_records_per_s": round(n / raw_s),
                "restore_seconds": round(restore_s, 3),
                "restore_records_per_s": round(n / restore_s),
                "ratio": round(raw_s / restore_s, 3),
                "store_keys_estimate": keys,
            }
        )
        ctx.say(f"restore: round {r + 1}: raw {n / raw_s:,.0f}/s, restore {n / restore_s:,.0f}/s")
    raw = common.median([x["raw_records_per_s"] for x in rounds])
    rest = common.median([x["restore_records_per_s"] for x in rounds])
    return {
        "records": n,
        "record_mean_bytes": round(produced.bytes / n),
        "publish_seconds": round(produced.seconds, 2),
        "rounds": rounds,
        "summary": {
            "raw_records_per_s": round(raw),
            "restore_records_per_s": round(rest),
            "ratio_restore_to_raw": round(rest / raw, 3),
        },
        "method": "restore_states() into fresh RocksPartitionStores vs read_to_end() of the same topic counting records "
        "(read_committed, chunk 20000, no store writes); alternated, median over rounds",
    }


# ---------------------------------------------------------------------- RSS


def build_stores(state_dir: Path, topic_events: str, n_invoices: int, batch: int = 50_000) -> dict[str, Any]:
    """Pre-build the processor's RocksDB stores with ``n_invoices`` states, checkpoint 0."""
    from adapters.store import RocksPartitionStore

    stores = {p: RocksPartitionStore(state_dir / f"{topic_events}-{p}") for p in range(PARTITIONS)}
    pending: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in stores}
    started = time.perf_counter()
    try:
        for key, value in state_values(n_invoices):
            items = pending[common.partition_for(key, PARTITIONS)]
            items.append((key, value))
            if len(items) >= batch:
                stores[common.partition_for(key, PARTITIONS)].apply(items, 0)
                items.clear()
        for p, items in pending.items():
            stores[p].apply(items, 0)  # also writes the checkpoint where a partition got nothing
        written_s = time.perf_counter() - started
    finally:
        for s in stores.values():
            s.close()
    seconds = time.perf_counter() - started
    disk = sum(f.stat().st_size for f in state_dir.rglob("*") if f.is_file())
    return {
        "build_seconds": round(seconds, 2),
        "write_seconds": round(written_s, 2),
        "rate": round(n_invoices / seconds),
        "disk_bytes": disk,
    }


async def rss_one(ctx: BenchContext, n_invoices: int, n_events: int) -> dict[str, Any]:
    bootstrap = ctx.bootstrap()
    name = common.unique("m")
    settings = common.bench_settings(bootstrap, name=name, state_root=ctx.workdir / "state")
    await common.create_topics(settings)
    state_ends = await common.end_offsets(bootstrap, settings.topic_state, PARTITIONS, committed_only=True)
    if any(state_ends.values()):
        raise RuntimeError(f"changelog {settings.topic_state} is not empty: {state_ends}")
    ctx.say(f"rss: building stores for {n_invoices:,} invoices")
    build = build_stores(Path(settings.state_dir), settings.topic_events, n_invoices)
    ctx.say(f"rss: built in {build['build_seconds']} s ({build['rate']:,}/s), {build['disk_bytes'] / 2**20:,.0f} MiB on disk")
    touched: set[int] = set()
    child = Child(
        "consumers.cli", "process", env=common.settings_env(settings), log_path=ctx.workdir / "logs" / f"{name}-rss.log"
    )
    sampler = common.RssSampler(child.pid, interval=0.05).start()
    try:
        await child.wait_for_log('"partitions_assigned"', timeout=300)
        await asyncio.sleep(1.0)
        loaded = sampler.mark("loaded")
        log = child.log_text()
        if "rebuilding" in log:
            raise RuntimeError("the processor wiped a pre-built store (checkpoint mismatch):\n" + child.log_tail())
        await common.produce_fast(
            bootstrap, settings.topic_events, common.random_touch_events(n_events, n_invoices, touched=touched), PARTITIONS
        )
        ends = await common.end_offsets(bootstrap, settings.topic_events, PARTITIONS)
        started = time.monotonic()
        progress = await common.watch_group(
            bootstrap,
            group=settings.processor_group_id,
            input_topic=settings.topic_events,
            input_ends=ends,
            output_topic=settings.topic_outcomes,
            output_partitions=PARTITIONS,
            alive=child.check_alive,
            timeout=1800,
        )
        processing_peak = sampler.peak_since("loaded")
        peak = sampler.peak
        end_rss = sampler.current()
    finally:
        sampler.stop()
        child.stop()
    window = (progress.done or 0) - (progress.first_output or started)
    prebuilt = await _share_from_prebuilt(settings)
    cached = _cached_states(touched, settings.state_cache_size)
    shutil.rmtree(settings.state_dir, ignore_errors=True)
    result = {
        "invoices": n_invoices,
        "events": n_events,
        "method": "stores pre-built with RocksPartitionStore.apply at <state_dir>/<topic_events>-<p>, checkpoint 0 = end of the "
        "empty changelog (no restore, no wipe); processor = python -m consumers.cli process; RSS sampled every 50 ms",
        "build": build,
        "rss_loaded_bytes": loaded,
        "rss_peak_processing_bytes": processing_peak,
        "rss_peak_bytes": peak,
        "rss_end_bytes": end_rss,
        "rss_samples": sampler.samples,
        "events_per_s": round(n_events / window, 1) if window > 0 else None,
        "outcomes_from_prebuilt_state_share": prebuilt,
        "state_cache_size": settings.state_cache_size,
        "invoices_touched": len(touched),
        "states_cached_at_end": cached,
        "rss_growth_per_cached_state_bytes": round((processing_peak - loaded) / cached) if cached else None,
        "log": str(child.log_path),
    }
    ctx.say(
        f"rss: {n_invoices:,} invoices: loaded {loaded / 2**20:,.0f} MiB, peak {peak / 2**20:,.0f} MiB, "
        f"{result['events_per_s']:,} events/s, {prebuilt:.3f} of outcomes from pre-built state, {cached:,} states cached"
    )
    return result


def _cached_states(touched: set[int], cache_size: int) -> int:
    """States the processor's LRU caches hold at the end: the process's
    ``state_cache_size`` is shared evenly by the partitions it holds."""
    from tests.factories import card

    per_partition = [0] * PARTITIONS
    for n in touched:
        c, code = card(n)
        per_partition[common.partition_for(f"{c}/{code}".encode(), PARTITIONS)] += 1
    return sum(min(x, cache_size // PARTITIONS) for x in per_partition)


async def _share_from_prebuilt(settings: Any) -> float:
    import msgspec

    total = from_prebuilt = 0
    async for records in partition_reader.read_to_end(settings, settings.topic_outcomes, chunk=20_000):
        for r in records:
            total += 1
            if msgspec.json.decode(r.value)["data"]["version"] >= 5:
                from_prebuilt += 1
    return round(from_prebuilt / total, 4) if total else 0.0


async def rss(ctx: BenchContext, p: dict[str, Any]) -> dict[str, Any]:
    runs = [await rss_one(ctx, n, p["rss_events"]) for n in p["rss_invoices"]]
    return {"runs": runs}


# ------------------------------------------------------------------- report


def _mib(x: float | None) -> str:
    return common.fmt_bytes(x)


def table(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    columns = ["measure", "value", "detail"]
    rows: list[list[Any]] = []
    t = result.get("throughput")
    if t:
        s = t["summary"]
        n = t["input"]["events"]
        inv = t["input"]["invoices"]
        rounds = len(t["runs"]["processor"])

        def per_round(c: str) -> str:
            return ", ".join(f"{x['events_per_s']:,.0f}" for x in t["runs"][c])

        rows.append(
            [
                f"processor (EOS) events/s, {n:,} events / {inv:,} invoices",
                common.fmt_rate(s["processor"]["events_per_s"]),
                f"median of {rounds}: {per_round('processor')}; {s['processor']['cpu_us_per_event']} CPU us/event",
            ]
        )
        rows.append(
            [
                "ceiling (raw txn pipe) events/s",
                common.fmt_rate(s["ceiling"]["events_per_s"]),
                f"{per_round('ceiling')}; {s['ceiling']['cpu_us_per_event']} CPU us/event",
            ]
        )
        ratio = s["ratio_processor_to_ceiling"]
        rows.append(
            [
                "processor / ceiling",
                common.fmt_ratio(ratio),
                (
                    f"target >= {TARGET_TO_CEILING}: {'met' if ratio >= TARGET_TO_CEILING else 'NOT met'}; "
                    f"per round {s['ratio_processor_to_ceiling_per_round']}"
                ),
            ]
        )
        if "quix" in s:
            rows.append(
                [
                    "Quix Streams (EOS) events/s",
                    common.fmt_rate(s["quix"]["events_per_s"]),
                    f"{per_round('quix')}; {s['quix']['cpu_us_per_event']} CPU us/event",
                ]
            )
            q = s["ratio_processor_to_quix"]
            rows.append(
                [
                    "processor / Quix",
                    common.fmt_ratio(q),
                    (
                        f"target >= {TARGET_TO_QUIX}: {'met' if q >= TARGET_TO_QUIX else 'NOT met'}; "
                        f"per round {s['ratio_processor_to_quix_per_round']}"
                    ),
                ]
            )
        if "baseline" in s:
            rows.append(
                [
                    "baseline (code before the change) events/s",
                    common.fmt_rate(s["baseline"]["events_per_s"]),
                    f"{per_round('baseline')}; {s['baseline']['cpu_us_per_event']} CPU us/event; tree {s['baseline_tree']}",
                ]
            )
            rows.append(
                [
                    "baseline / ceiling",
                    common.fmt_ratio(s["ratio_baseline_to_ceiling"]),
                    f"per round {s['ratio_baseline_to_ceiling_per_round']}"
                    + (
                        f"; baseline / Quix {s['ratio_baseline_to_quix']} per round {s['ratio_baseline_to_quix_per_round']}"
                        if "ratio_baseline_to_quix" in s
                        else ""
                    ),
                ]
            )
        if "processes" in s:
            k = s["processes"]
            rows.append(
                [
                    f"processor x{k} ({k} processes, one group) events/s",
                    common.fmt_rate(s["processor_xN"]["events_per_s"]),
                    (
                        f"{per_round('processor_xN')}; {s['processor_xN']['cpu_us_per_event']} CPU us/event "
                        f"(sum over processes); x{s['scaling_processor_xN_to_processor']} of processor x1"
                    ),
                ]
            )
            rows.append(
                [
                    f"ceiling x{k} ({k} processes, one group) events/s",
                    common.fmt_rate(s["ceiling_xN"]["events_per_s"]),
                    (
                        f"{per_round('ceiling_xN')}; {s['ceiling_xN']['cpu_us_per_event']} CPU us/event "
                        f"(sum over processes); x{s['scaling_ceiling_xN_to_ceiling']} of ceiling x1"
                    ),
                ]
            )
            best = s["ratio_processor_xN_to_ceiling_best"]
            rows.append(
                [
                    f"processor x{k} / max(ceiling x1, ceiling x{k})",
                    common.fmt_ratio(best),
                    (
                        f"best ceiling: {'x' + str(k) if s['ceiling_best'] == 'ceiling_xN' else 'x1'}; "
                        f"target >= {TARGET_TO_CEILING}: {'met' if best >= TARGET_TO_CEILING else 'NOT met'}; "
                        f"per round {s['ratio_processor_xN_to_ceiling_best_per_round']}"
                    ),
                ]
            )
        e2e = " / ".join(
            f"{c} {common.fmt_rate(s[c]['end_to_end_events_per_s'])}"
            for c in ("processor", "ceiling", "quix", "baseline")
            if c in s
        )
        rows.append(["end to end incl. start, events/s", "", e2e])
    st = result.get("stages")
    if st:
        rows.append(
            [
                "processor per-record CPU in-process, us/event",
                f"{st['domain_total_us']} + {st['two_appends_us']}",
                (
                    f"domain: decode {st['decode_event_us']}, decide {st['decide_us']}, state get/put/commit "
                    f"{st['state_get_put_commit_rocksdb_us']} (RocksDB; {st['state_get_put_commit_us']} in memory), "
                    f"outcome {st['outcome_bytes_us']}; + 2 appends ({st['appends_via']}), which the ceiling also does"
                ),
            ]
        )
        if "native_step_us" in st:
            rows.append(
                [
                    "native step per record in-process, us/event",
                    f"{st['native_step_rocksdb_us']} + {st['two_appends_us']}",
                    (
                        f"decode + decide + state + outcome in one call (adapters.native), state get/stage/commit "
                        f"included: {st['native_step_rocksdb_us']} on RocksDB, {st['native_step_us']} in memory; "
                        f"the Python path above decides what it declines (nothing here)"
                    ),
                ]
            )
    r = result.get("restore")
    if r:
        s = r["summary"]
        rows.append(
            [
                f"restore {r['records']:,} states (restore_states, RocksDB)",
                common.fmt_rate(s["restore_records_per_s"]),
                f"{r['record_mean_bytes']} B/record",
            ]
        )
        rows.append(["raw read_to_end of the same topic", common.fmt_rate(s["raw_records_per_s"]), ""])
        rows.append(["restore / raw read", common.fmt_ratio(s["ratio_restore_to_raw"]), f"median of {len(r['rounds'])}"])
    m = result.get("rss")
    if m:
        for run in m["runs"]:
            rows.append(
                [
                    f"processor peak RSS, {run['invoices']:,} invoices",
                    _mib(run["rss_peak_bytes"]),
                    (
                        f"after load {_mib(run['rss_loaded_bytes'])}; {run['events']:,} events "
                        f"on {run['invoices_touched']:,} of them at "
                        f"{common.fmt_rate(run['events_per_s'])}, {run['states_cached_at_end']:,} states cached; "
                        f"store {_mib(run['build']['disk_bytes'])} on disk, built in {run['build']['build_seconds']} s"
                    ),
                ]
            )
    return columns, rows


NOTES = """\
Timing rule (all three contenders): from the first record seen on the contender's outcome topic to the moment its
consumer group's committed offsets reach the end of the input, both polled from the broker every 50 ms; rate =
events / window, median over rounds; contender order alternates between rounds. Each contender is a child process
with a fresh consumer group, output topics and state. The ceiling (bench/ceiling.py) is the processor's transactional
pipe without the domain: same consumer settings and getmany batching, one transactional producer per input
partition, TxnBatch/BatchBuilder appends of two constant records per input (outcome-sized to the outcomes topic,
state-sized to the compacted state topic), flush, send_offsets_to_transaction, commit per partition batch; no decode,
no decide, no store, no per-batch log. Quix Streams (bench/quix_peer.py) runs the same decode/decide/encode with its
RocksDB state store, exactly-once, its default 5 s checkpoint interval, and stops itself at the last record.
With --processor-baseline DIR a fourth contender, baseline, is the same `python -m consumers.cli process` run from
another copy of the tree (the code before a change), in the same rounds and the same order rotation.
Restore: restore_states into fresh RocksDB stores vs a raw read_to_end count of the same compacted topic.
RSS: stores pre-built with RocksPartitionStore.apply (checkpoint = end of the empty changelog), processor run as
`python -m consumers.cli process`, RSS sampled every 50 ms with psutil."""

NOTES_PROCESSES = """N processes (--processor-processes N): "processor xN" and "ceiling xN" are N child processes in one consumer
group (same settings; the processors with separate state dirs), in the same rounds and order rotation; Quix and
the baseline are not run this way. Each xN run reads its own copy of the input, published beforehand inside one Kafka
transaction left open: the members subscribe and join, but read_committed consumers see none of it. The suite
commits that transaction (opens the gate) only once every member has logged an assignment, the members' current
assignments cover the 6 partitions exactly once, and none changed for 3 s, so no rebalance falls inside the window.
Timing rule unchanged: from the first record seen on the outcome topic to the moment the group's committed offsets
reach the end of the input's data records (the commit marker after them is not counted), polled every 50 ms. CPU
us/event is the sum over the N processes. "End to end" for xN runs from the gate's opening, not from the spawn.
The ratio is processor xN / max(ceiling x1, ceiling xN): the best the raw pipe did with 1 or N processes."""


def run(ctx: BenchContext) -> dict[str, Any]:
    p = _params(ctx)
    started = time.perf_counter()
    result: dict[str, Any] = {"suite": "processor", "machine": common.machine_info(), "parameters": p, "quick": ctx.quick}

    async def main() -> None:
        if "throughput" in p["parts"]:
            result["throughput"] = await throughput(ctx, p)
            result["stages"] = result["throughput"].pop("stages")
        elif "stages" in p["parts"]:
            records = common.encoded_events(min(p["events"], 50_000), min(p["invoices"], 25_000), p["seed"])
            result["stages"] = stages(records, "stages.events")
        if "restore" in p["parts"]:
            result["restore"] = await restore(ctx, p)
        if "rss" in p["parts"]:
            result["rss"] = await rss(ctx, p)

    asyncio.run(main())
    result["suite_seconds"] = round(time.perf_counter() - started, 1)
    columns, rows = table(result)
    title = (
        f"invoice-sm processor benchmark ({'quick' if ctx.quick else 'full'}, "
        f"{result['machine']['cpu_count']} CPUs, {result['machine']['date']})"
    )
    # A run of some parts only must not overwrite the figures of a full run.
    name = "processor" if set(p["parts"]) >= set(PARTS) else "processor-" + "-".join(p["parts"])
    json_path, md_path = ctx.write_results(
        name,
        result,
        columns,
        rows,
        title=title,
        notes=NOTES
        + (f"\n\n{NOTES_PROCESSES}" if p.get("processes", 1) > 1 else "")
        + f"\n\nSuite runtime: {result['suite_seconds']} s.",
    )
    common.print_table(title, columns, rows)
    ctx.say(f"processor: wrote {json_path} and {md_path} ({result['suite_seconds']} s)")
    return result
