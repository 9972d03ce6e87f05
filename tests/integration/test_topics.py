"""The topic table on a real broker: topics are created as it says, an events
topic whose records expire is refused at start, ``invoice-sm topics check``
reports what differs, and a repair refuses a truncated history."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.records_to_delete import RecordsToDelete

from adapters import kafka, topics
from adapters.logging import configure_logging
from adapters.settings import Settings, settings_env
from consumers.cli import EXIT_CONFIG, EXIT_DIFFERENCES, EXIT_OK, main
from consumers.reconcile import reconcile
from consumers.replay import replay
from domain.errors import ConfigurationError
from tests.factories import random_stream
from tests.support.kafka_io import produce_events
from tests.support.processes import Service

pytestmark = [pytest.mark.broker]

SEVEN_DAYS_MS = 7 * 86_400_000


async def _create_events_topic_expiring_after_seven_days(settings: Settings) -> None:
    """The events topic as a cluster's defaults would make it: records expire after 7 days."""
    spec = topics.spec_of(settings, "events")
    configs = {**spec.configs(), "retention.ms": str(SEVEN_DAYS_MS)}
    admin = AIOKafkaAdminClient(**kafka.client_options(settings))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=1, topic_configs=configs)]
        )
    finally:
        await admin.close()


def _cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    try:
        return main(list(argv))
    finally:
        # The command pointed the process's logging at this test's captured
        # stderr, which is closed once the test ends.
        configure_logging("json", "INFO", stream=sys.__stderr__)


async def test_topics_are_created_with_the_tables_retention_cleanup_and_min_isr(settings: Settings) -> None:
    await topics.ensure_topics(settings)
    specs = topics.topic_table(settings)
    configs = await topics.topic_configs(settings, [s.name for s in specs])
    for spec in specs:
        for key, value in spec.configs().items():
            assert configs[spec.name][key] == value, (spec.name, key)
    assert configs[settings.topic_events]["retention.ms"] == "-1"
    assert configs[settings.topic_state]["cleanup.policy"] == "compact"
    assert configs[settings.topic_deliveries]["retention.ms"] == str(settings.topic_deliveries_retention_ms)
    _, _, differences = await topics.check(settings)
    assert differences == []


async def test_an_events_topic_expiring_after_seven_days_is_refused_naming_the_setting(settings: Settings) -> None:
    await _create_events_topic_expiring_after_seven_days(settings)
    with pytest.raises(ConfigurationError) as info:
        await topics.ensure_topics(settings)
    assert info.value.setting == "INVOICE_SM_ALLOW_FINITE_EVENT_RETENTION"
    assert f"retention.ms={SEVEN_DAYS_MS} (7 days)" in str(info.value)
    with pytest.raises(ConfigurationError) as replayed:
        await replay(settings, in_memory=True, progress=False)
    assert replayed.value.setting == "INVOICE_SM_ALLOW_FINITE_EVENT_RETENTION"


async def test_the_process_command_exits_2_naming_the_setting_on_an_expiring_events_topic(
    settings: Settings, tmp_path: Path
) -> None:
    await _create_events_topic_expiring_after_seven_days(settings)
    service = Service("process", settings, tmp_path / "process.log")
    try:
        code = await asyncio.to_thread(service.proc.wait, 60)
        text = service.log_text()
    finally:
        service.close()
    assert code == EXIT_CONFIG, text[-2000:]
    assert "configuration error: INVOICE_SM_ALLOW_FINITE_EVENT_RETENTION" in text
    assert settings.topic_events in text


async def test_an_expiring_events_topic_is_allowed_when_the_setting_says_so(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(allow_finite_event_retention=True)
    await _create_events_topic_expiring_after_seven_days(settings)
    counts = await topics.ensure_topics(settings)
    assert counts[settings.topic_events] == settings.topic_partitions
    await produce_events(settings, random_stream(50, 10, seed=3))
    with await replay(settings, in_memory=True, progress=False) as result:
        assert result.records == 50


def test_topics_check_reports_the_expiring_events_topic_and_exits_3(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_create_events_topic_expiring_after_seven_days(settings))
    assert _cli(settings, monkeypatch, "topics", "check", "--json") == EXIT_DIFFERENCES
    report = json.loads(capsys.readouterr().out)
    assert report["clean"] is False
    assert {"topic": settings.topic_events, "setting": "retention.ms", "expected": "-1", "actual": str(SEVEN_DAYS_MS)} in (
        report["differences"]
    )
    missing = {d["topic"] for d in report["differences"] if d["setting"] == "exists"}
    # Every other topic of the one table (outcomes, state, deliveries, the waiting room, DLQ, component feed).
    assert missing == {spec.name for spec in topics.topic_table(settings)} - {settings.topic_events}
    assert settings.topic_delivery_waiting in missing and settings.topic_component in missing
    assert _cli(settings, monkeypatch, "topics", "check") == EXIT_DIFFERENCES
    assert "retention.ms" in capsys.readouterr().out


def test_topics_create_then_check_is_clean(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_auto = settings.model_copy(update={"create_topics": False})
    assert _cli(no_auto, monkeypatch, "topics", "check") == EXIT_DIFFERENCES
    assert _cli(no_auto, monkeypatch, "topics", "create") == EXIT_OK
    capsys.readouterr()
    assert _cli(no_auto, monkeypatch, "topics", "check", "--json") == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {
        "clean": True,
        "differences": [],
        "topics": json.loads(json.dumps(_expected_actuals(no_auto))),
    }


def _expected_actuals(settings: Settings) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for spec in topics.topic_table(settings):
        configs = spec.configs()
        if spec.retention_ms is None:
            # A compacted topic still has the broker's default retention values.
            configs = {**configs, "retention.ms": "604800000", "retention.bytes": "-1"}
        out[spec.name] = {"partitions": spec.partitions, "replication_factor": spec.replication_factor, **configs}
    return out


async def _truncate_partition_zero(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_options(settings))
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(settings.topic_events, 0): RecordsToDelete(before_offset=1)})
    finally:
        await admin.close()


async def test_a_repair_refuses_a_truncated_history_unless_forced(settings: Settings) -> None:
    await produce_events(settings, random_stream(200, 20, seed=5))
    assert await topics.truncated_partitions(settings) == {}
    await _truncate_partition_zero(settings)
    assert await topics.truncated_partitions(settings) == {0: 1}
    target = f"{settings.topic_state}.rebuilt"
    with pytest.raises(ConfigurationError) as info:
        await replay(settings, in_memory=True, progress=False, write_state_topic=target)
    assert info.value.setting == "--force" and "log start offsets 0:1" in str(info.value)
    with pytest.raises(ConfigurationError) as repaired:
        await reconcile(settings, repair=True, progress=False)
    assert repaired.value.setting == "--force"
    # A replay that writes nothing may read what is left.
    with await replay(settings, in_memory=True, progress=False) as result:
        assert result.truncated_partitions == [0]
    with await replay(settings, in_memory=True, progress=False, write_state_topic=target, allow_truncated=True) as forced:
        assert forced.state_records_written > 0
