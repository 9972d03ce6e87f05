"""``python -m devtools demo`` (``./dev demo``): everything locally, end to end, in one command.

Starts a real Kafka broker (``devtools.kafka_local``) and the WeChat
simulator, runs the processor and the deliverer, publishes a realistic
stream (legal and illegal moves, repeated events, malformed records), makes
WeChat fail a few times on the way, waits until every accepted status has
a final delivery record, and prints what happened, then where to look next.

The screen shows the demo's own lines and the service's warnings; the whole
log (JSON, INFO) goes to a file, named at the end with the metrics URL and
the commands to try (``--keep`` keeps everything up for them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shlex
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import msgspec
from rich.console import Console
from rich.table import Table

from adapters import wire
from adapters.settings import Settings, env_name, load_settings
from domain.model import invoice_key
from domain.status import STATUS_EVENT_TYPES, OutcomeType
from domain.status import ReimburseStatus as S

DEMO_APPID = "wx1234567890abcdef"


def demo_invoice(n: int) -> tuple[str, str]:
    """The card id and code of the demo's ``n``-th invoice."""
    return f"pDemoCard{n:06d}", f"{4400000000 + n}"


def demo_stream(n_invoices: int, seed: int = 2026) -> Iterator[bytes]:
    """Lifecycle stories, interleaved across invoices as upstream would send them."""
    rng = random.Random(seed)
    stories = [
        [S.LOCK, S.CLOSURE],  # reimbursed
        [S.LOCK, S.INIT, S.LOCK, S.CLOSURE],  # abandoned once, then reimbursed
        [S.CANCEL],  # red-flushed before anyone used it
        [S.LOCK, S.CANCEL],  # red-flushed while locked
        [S.CLOSURE],  # illegal: must lock first
        [S.LOCK, S.CLOSURE, S.CANCEL],  # red-flush after reimbursement: refused, terminal
        [S.LOCK, S.LOCK],  # same status twice: unchanged
    ]
    queues = []
    for n in range(n_invoices):
        card_id, code = demo_invoice(n)
        events = []
        for i, status in enumerate(rng.choice(stories)):
            event = {
                "specversion": "1.0",
                "id": f"demo-{n}-{i}",
                "source": "/erp/reimbursement",
                "type": STATUS_EVENT_TYPES[status],
                "time": "2026-11-25T08:00:00Z",
                "subject": invoice_key(card_id, code),
                "data": {"card_id": card_id, "code": code, "appid": DEMO_APPID},
            }
            events.append(json.dumps(event).encode())
            if rng.random() < 0.05:
                events.append(events[-1])  # upstream sent it twice
        queues.append(events)
    malformed = [
        b"not json at all",
        b'{"specversion": "1.0", "id": "x", "source": "/erp", "type": "invoice.reimbursement.locked"}',
        b'{"specversion": "1.0", "id": "y", "source": "/erp", "type": "invoice.exploded", "data": {"card_id": "a", "code": "1"}}',
        (
            b'{"specversion": "1.0", "id": "z", "source": "/erp", "type": "invoice.status.set", '
            b'"data": {"card_id": "a", "code": "1", "reimburse_status": "PAID"}}'
        ),
    ]
    while queues:
        i = rng.randrange(len(queues))
        yield queues[i].pop(0)
        if not queues[i]:
            queues.pop(i)
        if malformed and rng.random() < 0.01:
            yield malformed.pop()
    yield from malformed


class _LogTee:
    """Every log line to the file; warnings and errors also to the screen, short."""

    def __init__(self, file: IO[str], console: Console) -> None:
        self.file = file
        self.console = console
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.file.write(text)
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                level = str(entry.get("level", "")).lower()
                if level in ("warning", "error", "critical"):
                    colour = "yellow" if level == "warning" else "red"
                    self.console.print(f"[{colour}]{level}[/] {entry.get('event', '')}", highlight=False, markup=True)
        return len(text)

    def flush(self) -> None:
        self.file.flush()

    def isatty(self) -> bool:
        return False


async def _run(settings: Settings, sim: Any, n_invoices: int, console: Console, metrics: Any) -> dict[str, Any]:
    from adapters import topics
    from adapters.health import HealthServer
    from consumers.deliverer import Deliverer
    from consumers.processor import Processor
    from consumers.publish import publish_lines

    lines = list(demo_stream(n_invoices))
    await topics.ensure_topics(settings)
    stop = asyncio.Event()
    processor = Processor(settings, metrics=metrics)
    deliverer = Deliverer(settings, metrics=metrics)
    health = HealthServer(metrics, port=settings.metrics_port or 0)
    await health.start()
    health.add_readiness_check("processor", processor.is_ready)
    health.add_readiness_check("deliverer", deliverer.ready_flag.is_set)
    tasks = [asyncio.create_task(processor.run(stop)), asyncio.create_task(deliverer.run(stop))]
    started = time.perf_counter()
    try:
        # WeChat misbehaves now and then, as it does: the work is delayed, never lost.
        sim.add_fault("http_status", http_status=502, times=3)
        sim.add_fault("errcode", errcode=-1, times=3, after=50)
        sim.add_fault("timeout", latency_ms=800, apply=True, times=2, after=100)
        sim.add_fault("errcode", errcode=72036, times=2, after=150)
        report = await publish_lines(settings, lines, allow_invalid=True, ensure=False)
        console.print(f"[bold]published[/] {report.sent} events for {n_invoices} invoices")
        with console.status("processing and delivering…"):
            outcomes, deliveries = await _wait_until_delivered(settings, report.sent)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await health.stop()
    dlq = await _read(settings, settings.topic_dlq)
    return {
        "events": report.sent,
        "seconds": time.perf_counter() - started,
        "outcomes": outcomes,
        "deliveries": deliveries,
        "dlq": dlq,
    }


async def _read(settings: Settings, topic: str) -> list[Any]:
    from adapters import partition_reader

    out: list[Any] = []
    async for records in partition_reader.read_to_end(settings, topic):
        out.extend(records)
    return out


async def _wait_until_delivered(settings: Settings, sent: int, timeout: float = 300) -> tuple[list[dict], list[dict]]:
    deadline = time.monotonic() + timeout
    while True:
        outcomes = [json.loads(r.value) for r in await _read(settings, settings.topic_outcomes)]
        dlq = await _read(settings, settings.topic_dlq)
        accepted = sum(o["type"] == OutcomeType.ACCEPTED for o in outcomes)
        # Delivery records are CloudEvents; their data is the record.
        deliveries = [
            msgspec.to_builtins(wire.decode_delivery(r.value)) for r in await _read(settings, settings.topic_deliveries)
        ]
        if len(outcomes) + len(dlq) >= sent and len(deliveries) >= accepted:
            return outcomes, deliveries
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(outcomes)} outcomes, {len(deliveries)}/{accepted} deliveries after {timeout} s")
        await asyncio.sleep(0.5)


def _summary(console: Console, result: dict[str, Any], sim: Any) -> None:
    outcomes, deliveries, dlq = result["outcomes"], result["deliveries"], result["dlq"]
    calls = sim.calls()
    table = Table(title="invoice-sm demo: what happened", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_column("detail")
    table.add_row("events in", str(result["events"]), "CloudEvents on invoice.events")
    kinds = Counter(o["type"].rsplit(".", 1)[1] for o in outcomes)
    reasons = Counter(o["data"]["reason"] for o in outcomes if o["data"].get("reason"))
    table.add_row(
        "outcomes",
        str(len(outcomes)),
        ", ".join(f"{k} {n}" for k, n in kinds.most_common())
        + (f"  (rejected: {', '.join(f'{r} {n}' for r, n in reasons.most_common())})" if reasons else ""),
    )
    dlq_reasons = Counter(dict(r.headers).get("dlq.error.reason", b"?").decode() for r in dlq)
    table.add_row("DLQ", str(len(dlq)), ", ".join(f"{k} {n}" for k, n in dlq_reasons.most_common()))
    results = Counter(d["result"] for d in deliveries)
    table.add_row("deliveries", str(len(deliveries)), ", ".join(f"{k} {n}" for k, n in results.most_common()))
    errcodes = Counter("HTTP error/reset" if c.errcode is None else f"errcode {c.errcode}" for c in calls)
    retried = sum(1 for d in deliveries if d["attempts"] > 1)
    table.add_row(
        "WeChat calls",
        str(len(calls)),
        ", ".join(f"{k} {n}" for k, n in errcodes.most_common()) + f"; {retried} deliveries needed a retry",
    )
    cards = Counter(c.reimburse_status.removeprefix("INVOICE_REIMBURSE_") for c in sim.cards())
    table.add_row("final card statuses", str(sum(cards.values())), ", ".join(f"{k} {n}" for k, n in cards.most_common()))
    console.print(table)
    keys = [c.idempotency_key for c in calls if c.idempotency_key]
    console.print(
        f"every call carried an Idempotency-Key: {len(keys) == len(calls)}; "
        f"keys sent more than once (retries of the same status): {len(keys) - len(set(keys))}; "
        f"took {result['seconds']:.1f} s"
    )


def _next_steps(console: Console, settings: Settings, sim_url: str, metrics_url: str, log_path: Path, keep: bool) -> None:
    prefix = f"{env_name('kafka_bootstrap_servers')}={shlex.quote(settings.kafka_bootstrap_servers)}"
    console.print()
    console.print("[bold]where to look next[/]")
    console.print(f"  metrics    {metrics_url}  (deploy/alerts.yml alerts on these)", highlight=False, soft_wrap=True)
    console.print(f"  logs       {log_path}  (JSON: every delivery, retry and committed batch)", highlight=False)
    console.print(f"  replay     {prefix} invoice-sm replay", highlight=False, soft_wrap=True)
    console.print(f"  reconcile  {prefix} invoice-sm reconcile --wechat-sim-url {sim_url}", highlight=False, soft_wrap=True)
    console.print(f"  DLQ        {prefix} invoice-sm dlq list", highlight=False, soft_wrap=True)
    console.print(
        f"  status     {prefix} invoice-sm status --direct {invoice_key(*demo_invoice(0))}", highlight=False, soft_wrap=True
    )
    if not keep:
        console.print(
            "  [dim]the broker, the simulator and the metrics stop now; `./dev demo --keep` leaves them up[/]", soft_wrap=True
        )


async def _serve_metrics(metrics: Any, port: int) -> None:
    from adapters.health import HealthServer

    async with HealthServer(metrics, port=port):
        await asyncio.Event().wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_demo(n_invoices: int = 300, bootstrap: str | None = None, keep: bool = False) -> int:
    from adapters.logging import configure_logging
    from adapters.metrics import Metrics
    from devtools.kafka_local import LocalKafka
    from devtools.simulator import SimulatorServer, WeChatSimulator
    from devtools.simulator.state import DEFAULT_ACCOUNTS

    console = Console()
    log_path = Path(tempfile.gettempdir()) / "invoice-sm-demo.log"
    metrics = Metrics()
    with contextlib.ExitStack() as stack:
        log_file = stack.enter_context(open(log_path, "w"))
        configure_logging("json", "INFO", stream=_LogTee(log_file, console))  # type: ignore[arg-type]  # a write/flush tee, all logging needs
        if bootstrap is None:
            with console.status("starting a local Apache Kafka broker (KRaft, from Maven Central jars)…"):
                broker = stack.enter_context(LocalKafka())
            bootstrap = broker.bootstrap_servers
        console.print(f"[bold]Kafka[/] {bootstrap}")
        server = stack.enter_context(SimulatorServer(WeChatSimulator()))
        console.print(f"[bold]WeChat simulator[/] {server.base_url}")
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="invoice-sm-demo-")))
        settings = load_settings(
            kafka_bootstrap_servers=bootstrap,
            wechat_base_url=server.base_url,
            wechat_appid=DEMO_APPID,
            wechat_secret=DEFAULT_ACCOUNTS[DEMO_APPID],
            wechat_timeout_s=0.5,
            delivery_max_backoff_s=1.0,
            state_dir=workdir / "state",
            topic_partitions=6,
            log_format="json",
            log_level="INFO",
            metrics_port=_free_port(),
        )
        metrics_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        console.print(f"[bold]metrics[/] {metrics_url}")
        result = asyncio.run(_run(settings, server.sim, n_invoices, console, metrics))
        _summary(console, result, server.sim)
        _next_steps(console, settings, server.base_url, metrics_url, log_path, keep)
        if keep:
            console.print("broker, simulator and metrics stay up; Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(_serve_metrics(metrics, settings.metrics_port or 0))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools demo``."""
    p = argparse.ArgumentParser(
        prog="python -m devtools demo",
        description="Everything locally: broker, WeChat simulator, processor, deliverer, a sample stream, a summary.",
    )
    p.add_argument("--invoices", type=int, default=300, help="how many invoices the sample stream covers")
    p.add_argument("--use-broker", metavar="HOST:PORT", help="use this broker instead of starting one")
    p.add_argument("--keep", action="store_true", help="keep broker and simulator running afterwards")
    args = p.parse_args(argv)
    return run_demo(args.invoices, args.use_broker, args.keep)
