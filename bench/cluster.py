"""Processor throughput on a local 3-node KRaft cluster (replication factor 3,
min ISR 2, acks=all, transactions replicated) beside the shared single broker
(replication factor 1): what replication costs, as a ratio.

Same input on both (the same encoded events, 6 partitions), the same
``invoice-sm process`` child and the same timing rule as the processor suite
(``bench.processor._run_processor``: first outcome seen -> the group's
committed offsets reach the input end); rounds alternate the order; medians.
Both brokers run the full JIT. All four JVMs share the machine's cores with
the processor, so the ratio is a local one: on real hosts each broker has
its own CPU and disks, and the cost is mostly network round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from adapters import topics
from bench import common
from bench.common import BenchContext
from bench.processor import PARTITIONS, _run_processor
from devtools.kafka_local import LocalKafkaCluster

TITLE = "invoice-sm processor: 3-node cluster (RF 3, min ISR 2) beside a single broker (RF 1)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster suite")
    g.add_argument("--cluster-events", type=int, help="input events (default 100000; quick 10000)")
    g.add_argument("--cluster-rounds", type=int, help="rounds of the two contenders (default 3; quick 1)")


def _params(ctx: BenchContext) -> dict[str, Any]:
    a = ctx.args
    events = a.cluster_events if a.cluster_events is not None else (10_000 if ctx.quick else 100_000)
    rounds = a.cluster_rounds if a.cluster_rounds is not None else (1 if ctx.quick else 3)
    return {"events": events, "invoices": max(1, events // 2), "rounds": rounds, "partitions": PARTITIONS, "seed": 11}


async def _prepare(ctx: BenchContext, bootstrap: str, rf: int, records: list[tuple[bytes, bytes]]) -> tuple[str, dict[int, int]]:
    topic = f"{common.unique('cl')}.events"
    settings = common.bench_settings(bootstrap, state_root=ctx.workdir, topic_replication_factor=rf)
    await common.create_topics(settings, topics.like(settings, "events", topic, PARTITIONS))
    await common.produce_fast(bootstrap, topic, records, PARTITIONS)
    # produce_fast asks acks=1: on RF 3 the high watermark moves only once
    # the followers have fetched, a moment later.
    deadline = time.monotonic() + 60
    while sum((ends := await common.end_offsets(bootstrap, topic, PARTITIONS)).values()) < len(records):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{topic}: {sum(ends.values())} of {len(records)} events replicated after 60 s")
        await asyncio.sleep(0.2)
    return topic, ends


async def _bench(ctx: BenchContext, p: dict[str, Any], cluster: LocalKafkaCluster) -> dict[str, Any]:
    records = common.encoded_events(p["events"], p["invoices"], p["seed"])
    contenders = {"single": (ctx.bootstrap(), 1), "cluster": (cluster.bootstrap_servers, 3)}
    inputs = {}
    for name, (bootstrap, rf) in contenders.items():
        ctx.say(f"cluster: publishing {len(records):,} events to the {name} (RF {rf})")
        inputs[name] = await _prepare(ctx, bootstrap, rf, records)
    del records
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    for r in range(p["rounds"]):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            bootstrap, rf = contenders[name]
            topic, ends = inputs[name]
            result = await _run_processor(ctx, bootstrap, topic, ends, {"topic_replication_factor": rf})
            result["round"] = r + 1
            runs[name].append(result)
            ctx.say(f"cluster: round {r + 1}: {name}: {result['events_per_s']:,.0f} events/s")
    medians = {name: round(common.median([x["events_per_s"] for x in runs[name]]), 1) for name in contenders}
    return {
        "runs": runs,
        "summary": {
            "events_per_s": medians,
            "ratio_cluster_to_single": round(medians["cluster"] / medians["single"], 3),
            "ratio_per_round": [
                round(c["events_per_s"] / s["events_per_s"], 3) for c, s in zip(runs["cluster"], runs["single"], strict=True)
            ],
        },
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    p = _params(ctx)
    started = time.perf_counter()
    result: dict[str, Any] = {"suite": "cluster", "machine": common.machine_info(), "parameters": p, "quick": ctx.quick}
    ctx.say("cluster: starting a 3-node KRaft cluster")
    with LocalKafkaCluster(3, fast_jit=False, heap="768m") as cluster:
        result.update(asyncio.run(_bench(ctx, p, cluster)))
    result["suite_seconds"] = round(time.perf_counter() - started, 1)
    s = result["summary"]
    columns = ["broker", "replication", "events/s (median)", "per round"]
    rows = [
        [
            "single node",
            "RF 1, min ISR 1",
            f"{s['events_per_s']['single']:,.0f}",
            ", ".join(f"{x['events_per_s']:,.0f}" for x in result["runs"]["single"]),
        ],
        [
            "3-node cluster",
            "RF 3, min ISR 2",
            f"{s['events_per_s']['cluster']:,.0f}",
            ", ".join(f"{x['events_per_s']:,.0f}" for x in result["runs"]["cluster"]),
        ],
        ["cluster / single", "", f"{s['ratio_cluster_to_single']:.2f}", ", ".join(f"{x:.2f}" for x in s["ratio_per_round"])],
    ]
    title = (
        f"invoice-sm processor on a cluster ({'quick' if ctx.quick else 'full'}, "
        f"{result['machine']['cpu_count']} CPUs, {result['machine']['date']})"
    )
    json_path, md_path = ctx.write_results(
        "cluster",
        result,
        columns,
        rows,
        title=title,
        notes=(__doc__ or "").strip() + f"\n\n{p['events']:,} events, {p['invoices']:,} invoices, {PARTITIONS} partitions, "
        f"{p['rounds']} rounds. Suite runtime: {result['suite_seconds']} s.",
    )
    common.print_table(title, columns, rows)
    ctx.say(f"cluster: wrote {json_path} and {md_path} ({result['suite_seconds']} s)")
    return result
