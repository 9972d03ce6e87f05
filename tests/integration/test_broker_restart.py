"""Guarantee 4: a broker restart delays work and never drops it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.settings import Settings, load_settings
from devtools.kafka_local import LocalKafka
from tests.factories import random_stream
from tests.support.kafka_io import produce_events, read_topic, wait_for_count
from tests.support.processes import Service
from tests.support.verify import assert_exactly_once

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def own_broker() -> Iterator[LocalKafka]:
    """A broker of this test's own, so killing it disturbs no other test.
    Short broker sessions: a restarted node re-registers in seconds."""
    broker = LocalKafka(extra_properties={"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"})
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_processor_survives_a_broker_kill_and_decides_each_event_once(own_broker: LocalKafka, tmp_path: Path) -> None:
    settings: Settings = load_settings(
        kafka_bootstrap_servers=own_broker.bootstrap_servers,
        topic_partitions=3,
        batch_max_records=200,
        kafka_session_timeout_ms=6000,
        state_dir=tmp_path / "state",
        log_format="json",
    )
    events = list(random_stream(6000, 600, seed=9))
    processor = Service("process", settings, tmp_path / "process.log")
    try:
        await produce_events(settings, events[:3000])
        # The kill must come while the processor is deciding, not while it is
        # still starting (a start that cannot reach the broker fails, naming it).
        assert await wait_for_count(settings, settings.topic_outcomes, 1, timeout=60), processor.log_text()[-3000:]
        await asyncio.to_thread(own_broker.kill)  # SIGKILL: log recovery on restart
        await asyncio.sleep(2.0)
        await asyncio.to_thread(own_broker.restart)
        await produce_events(settings, events[3000:])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 150
        while len(await read_topic(settings, settings.topic_outcomes)) < len(events):
            assert processor.alive(), processor.log_text()[-3000:]
            assert loop.time() < deadline, "the processor did not catch up after the broker came back"
            await asyncio.sleep(1)
        assert processor.terminate() == 0
    finally:
        processor.close()
    summary = await assert_exactly_once(settings)
    assert summary["events"] == len(events)
