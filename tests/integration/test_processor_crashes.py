"""Exactly once across instances, rebalances and kill -9, with real processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.settings import Settings
from tests.factories import random_stream
from tests.support.kafka_io import produce_events, read_topic
from tests.support.processes import Service
from tests.support.verify import assert_exactly_once

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def crash_settings(make_settings: Callable[..., Settings]) -> Settings:
    # Small batches so a kill lands in the middle of the stream, and a short
    # session so a killed member's partitions move quickly.
    return make_settings(topic_partitions=6, batch_max_records=300, kafka_session_timeout_ms=6000, log_format="json")


def processor(settings: Settings, tmp_path: Path, name: str) -> Service:
    return Service("process", settings, tmp_path / f"{name}.log", INVOICE_SM_STATE_DIR=str(tmp_path / f"state-{name}"))


async def wait_outcomes(settings: Settings, count: int, *running: Service, timeout: float = 120) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for service in running:
            assert service.alive(), f"{service.command} exited {service.proc.returncode}:\n{service.log_text()[-3000:]}"
        if len(await read_topic(settings, settings.topic_outcomes)) >= count:
            return
        await asyncio.sleep(1)
    raise AssertionError(f"fewer than {count} outcomes after {timeout} s")


async def wait_for_log(service: Service, needle: str, count: int, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while service.log_text().count(needle) < count:
        assert loop.time() < deadline, f"{service.command} never logged {needle} {count} times"
        await asyncio.sleep(0.02)


async def test_two_instances_over_six_partitions_decide_each_event_once(crash_settings: Settings, tmp_path: Path) -> None:
    events = list(random_stream(20_000, 2_000, seed=3))
    a, b = processor(crash_settings, tmp_path, "a"), processor(crash_settings, tmp_path, "b")
    try:
        # Both own partitions before any event exists, so both must do work.
        await wait_for_log(a, '"partitions_assigned"', 1)
        await wait_for_log(b, '"partitions_assigned"', 1)
        await produce_events(crash_settings, events)
        await wait_outcomes(crash_settings, len(events), a, b)
        assert a.terminate() == 0 and b.terminate() == 0
        summary = await assert_exactly_once(crash_settings)
        assert summary["events"] == 20_000
        # Both instances did work: the group really shared the partitions.
        assert "batch_committed" in a.log_text() and "batch_committed" in b.log_text()
    finally:
        a.close()
        b.close()


async def test_kill_9_mid_stream_and_during_a_rebalance_loses_and_repeats_nothing(
    crash_settings: Settings, tmp_path: Path
) -> None:
    events = list(random_stream(20_000, 2_000, seed=5))
    chunks = [events[i : i + 2000] for i in range(0, len(events), 2000)]
    a, b = processor(crash_settings, tmp_path, "a"), processor(crash_settings, tmp_path, "b")
    services = [a, b]
    try:
        await wait_for_log(a, '"partitions_assigned"', 1)
        await wait_for_log(b, '"partitions_assigned"', 1)
        for chunk in chunks[:4]:
            await produce_events(crash_settings, chunk)
        await wait_outcomes(crash_settings, 2000, a, b)
        a.kill()  # mid-stream: batches of 300 are being decided
        for chunk in chunks[4:6]:
            await produce_events(crash_settings, chunk)
        # b takes over a's partitions once a's session expires.
        await wait_for_log(b, '"partitions_assigned"', 2)
        revoked_before = b.log_text().count('"partitions_revoked"')
        a2 = processor(crash_settings, tmp_path, "a")  # same state dir: a store behind the changelog
        services.append(a2)
        # a2 joining makes b give up its partitions: kill b between revoke and assign.
        await wait_for_log(b, '"partitions_revoked"', revoked_before + 1)
        b.kill()  # during the rebalance
        for chunk in chunks[6:]:
            await produce_events(crash_settings, chunk)
        b2 = processor(crash_settings, tmp_path, "b")
        services.append(b2)
        await wait_outcomes(crash_settings, len(events), a2, b2, timeout=180)
        assert a2.terminate() == 0 and b2.terminate() == 0
        summary = await assert_exactly_once(crash_settings)
        assert summary["events"] == len(events)
    finally:
        for service in services:
            service.close()
