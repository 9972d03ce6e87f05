"""Issue 11: a broker outage longer than the transaction timeout, with a
transaction open, is survived without a restart; the partition reports itself
stuck while it is, and the log says so once per change, not per attempt."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adapters.settings import Settings, load_settings
from devtools.kafka_local import LocalKafka
from tests.factories import random_stream
from tests.support.kafka_io import produce_events, read_topic
from tests.support.processes import Service
from tests.support.services import free_port
from tests.support.verify import assert_exactly_once

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TXN_TIMEOUT_MS = 4000
OUTAGE_S = 12.0  # three transaction timeouts


@pytest.fixture(scope="module")
def own_broker() -> Iterator[LocalKafka]:
    """A broker of this test's own; it aborts timed-out transactions within a
    second (the default check runs every 10 s) and re-registers fast."""
    broker = LocalKafka(
        extra_properties={
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
        }
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _one_partition(broker: LocalKafka, tmp_path: Path, prefix: str, **overrides: object) -> Settings:
    """Settings with topics of their own (the module's broker is shared) and one partition."""
    topics = {
        f"topic_{role}": f"{prefix}.{role}"
        for role in ("events", "outcomes", "state", "deliveries", "delivery_waiting", "component", "dlq")
    }
    return load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        topic_partitions=1,
        state_dir=tmp_path / "state",
        log_format="json",
        **topics,
        **overrides,
    )


async def test_a_transaction_the_broker_timed_out_is_taken_over_and_decided_once(
    own_broker: LocalKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch's records are on the broker, then the batch stalls past
    the transaction timeout: the broker aborts it and bumps the epoch. That
    must read as a timeout (re-initialise and carry on), not as fencing."""
    from adapters import kafka
    from consumers.processor import PartitionWorker
    from tests.support.services import running

    settings = _one_partition(own_broker, tmp_path, "timeout", kafka_transaction_timeout_ms=TXN_TIMEOUT_MS)
    original_flush = kafka.TxnBatch.flush
    stalled_once: list[bool] = []

    async def flush_after_a_stall(self: kafka.TxnBatch) -> dict[tuple[str, int], int]:
        if not stalled_once:
            stalled_once.append(True)
            for slot in list(self._builders):
                await self._ship(slot)  # the records reach the broker: the transaction is open there
            await asyncio.sleep(TXN_TIMEOUT_MS / 1000 * 2.5)
        return await original_flush(self)

    monkeypatch.setattr(kafka.TxnBatch, "flush", flush_after_a_stall)
    events = list(random_stream(300, 60, seed=5))
    await produce_events(settings, events)
    async with running(settings) as processor:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while len(await read_topic(settings, settings.topic_outcomes)) < len(events):
            assert loop.time() < deadline, f"stalled: {processor.stalled()}"
            await asyncio.sleep(0.5)
        worker: PartitionWorker = next(iter(processor.workers.values()))
        assert worker.stall is None
        replaced = processor.metrics.producer_replacements_total.labels("processor", "txn_timeout")._value.get()
        assert replaced >= 1, "the timed-out transaction was not told apart from fencing"
    assert stalled_once
    summary = await assert_exactly_once(settings)
    assert summary["events"] == len(events)


async def _ready(client: httpx.AsyncClient, url: str) -> bool | None:
    try:
        return (await client.get(url, timeout=2)).status_code == 200
    except httpx.HTTPError:
        return None


async def test_processor_rides_out_an_outage_longer_than_its_transaction_timeout(own_broker: LocalKafka, tmp_path: Path) -> None:
    port = free_port()
    settings: Settings = load_settings(
        kafka_bootstrap_servers=own_broker.bootstrap_servers,
        topic_partitions=3,
        batch_max_records=50,
        kafka_session_timeout_ms=6000,
        kafka_transaction_timeout_ms=TXN_TIMEOUT_MS,
        state_dir=tmp_path / "state",
        metrics_port=port,
        log_format="json",
    )
    events = list(random_stream(8000, 800, seed=11))
    processor = Service("process", settings, tmp_path / "process.log")
    readyz = f"http://127.0.0.1:{port}/readyz"
    try:
        await produce_events(settings, events[:2000])
        async with httpx.AsyncClient() as client:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while not await _ready(client, readyz):
                assert processor.alive(), processor.log_text()[-3000:]
                assert loop.time() < deadline, "the processor never became ready"
                await asyncio.sleep(0.3)
            # Keep batches flowing so that one is open when the broker dies.
            feeder = asyncio.create_task(produce_events(settings, events[2000:4000]))
            await asyncio.sleep(0.3)
            lines_before = processor.log_text().count("\n")
            await asyncio.to_thread(own_broker.kill)
            feeder.cancel()
            seen_not_ready = False
            outage_end = loop.time() + OUTAGE_S
            while loop.time() < outage_end:
                assert processor.alive(), processor.log_text()[-3000:]
                if await _ready(client, readyz) is False:
                    seen_not_ready = True
                await asyncio.sleep(0.5)
            outage_lines = processor.log_text().count("\n") - lines_before
            await asyncio.to_thread(own_broker.restart)
            sent = await read_topic(settings, settings.topic_events)
            remaining = events[len(sent) :]
            await produce_events(settings, remaining)
            deadline = loop.time() + 150
            while len(await read_topic(settings, settings.topic_outcomes)) < len(events):
                assert processor.alive(), processor.log_text()[-3000:]
                assert loop.time() < deadline, "the processor did not catch up after the broker came back"
                await asyncio.sleep(1)
            deadline = loop.time() + 30
            while not await _ready(client, readyz):
                assert loop.time() < deadline, "readiness did not come back after the outage"
                await asyncio.sleep(0.5)
        assert seen_not_ready, "/readyz stayed green while the partitions could not commit"
        # aiokafka alone tried to reconnect hundreds of times a second; what the
        # operator reads is one line per change of state (and a few per client).
        assert outage_lines < 200, processor.log_text()[-5000:]
        assert processor.terminate() == 0
    finally:
        processor.close()
    summary = await assert_exactly_once(settings)
    assert summary["events"] == len(events)


async def test_a_fenced_partition_reports_itself_and_is_taken_back_while_still_assigned(
    own_broker: LocalKafka, tmp_path: Path
) -> None:
    """Another producer with our transactional id (a zombie, an operator's
    tool) fences us. The partition says so (gauge, readiness); since the group
    still assigns it here after the grace, the worker takes it back and every
    event is decided once."""
    from adapters import kafka
    from tests.support.services import running

    # 6 s: the broker's group.min.session.timeout.ms
    settings = _one_partition(own_broker, tmp_path, "fenced", kafka_session_timeout_ms=6000)
    events = list(random_stream(400, 80, seed=6))
    await produce_events(settings, events[:200])
    async with running(settings) as processor:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while len(await read_topic(settings, settings.topic_outcomes)) < 200:
            assert loop.time() < deadline
            await asyncio.sleep(0.3)
        intruder = kafka.new_transactional_producer(
            settings, kafka.transactional_id(settings.processor_group_id, settings.topic_events, 0)
        )
        await intruder.start()  # InitProducerId: bumps the epoch, fencing the worker's producer
        await intruder.stop()
        await produce_events(settings, events[200:])
        saw_fenced = False
        deadline = loop.time() + 90
        while len(await read_topic(settings, settings.topic_outcomes)) < len(events):
            if processor.stalled().get(0) == "fenced":
                saw_fenced = True
                assert not processor.is_ready()
            assert loop.time() < deadline, f"never taken back: {processor.stalled()}"
            await asyncio.sleep(0.2)
        assert saw_fenced, "the fence was not reported"
        assert processor.is_ready()
        retaken = processor.metrics.producer_replacements_total.labels("processor", "fenced")._value.get()
        assert retaken == 1
    summary = await assert_exactly_once(settings)
    assert summary["events"] == len(events)
