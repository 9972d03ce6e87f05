"""The topic table and its comparison with a cluster (pure: no broker)."""

from __future__ import annotations

import pytest

from adapters.settings import Settings, load_settings
from adapters.topics import Difference, compare, finite_retention, topic_table
from domain.errors import ConfigurationError


def test_the_default_table_keeps_events_forever_and_compacts_state() -> None:
    table = {spec.role: spec for spec in topic_table(Settings.model_construct())}
    assert list(table) == ["events", "outcomes", "state", "deliveries", "waiting", "dlq", "component"]
    assert table["component"].name == "invoice.wechat.component" and table["component"].cleanup == "compact"
    assert table["events"].name == "invoice.events" and table["events"].retention_ms == -1
    assert table["events"].configs() == {
        "cleanup.policy": "delete",
        "min.insync.replicas": "1",
        "retention.ms": "-1",
        "retention.bytes": "-1",
    }
    assert table["state"].cleanup == "compact" and table["state"].retention_ms is None
    assert "retention.ms" not in table["state"].configs()
    assert table["deliveries"].retention_ms == 30 * 86_400_000
    assert table["dlq"].key == "original key"
    assert all(spec.description for spec in table.values())


@pytest.mark.parametrize(("rf", "isr"), [(1, 1), (2, 1), (3, 2), (5, 2)])
def test_min_insync_replicas_is_2_from_replication_factor_3(rf: int, isr: int) -> None:
    specs = topic_table(load_settings(topic_replication_factor=rf))
    assert {(s.replication_factor, s.min_insync_replicas) for s in specs} == {(rf, isr)}


def test_retention_and_min_isr_settings_reach_the_table() -> None:
    settings = load_settings(
        topic_replication_factor=3,
        topic_min_insync_replicas=3,
        topic_deliveries_retention_ms=-1,
        topic_outcomes_retention_ms=3_600_000,
        topic_dlq_retention_ms=86_400_000,
    )
    table = {spec.role: spec for spec in topic_table(settings)}
    assert table["deliveries"].configs()["retention.ms"] == "-1"
    assert table["outcomes"].retention_ms == 3_600_000 and table["dlq"].retention_ms == 86_400_000
    assert {s.min_insync_replicas for s in table.values()} == {3}


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"topic_replication_factor": 1, "topic_min_insync_replicas": 2}, "INVOICE_SM_TOPIC_MIN_INSYNC_REPLICAS"),
        ({"topic_deliveries_retention_ms": 0}, "INVOICE_SM_TOPIC_DELIVERIES_RETENTION_MS"),
        ({"topic_outcomes_retention_ms": -5}, "INVOICE_SM_TOPIC_OUTCOMES_RETENTION_MS"),
        ({"allow_finite_event_retention": "perhaps"}, "INVOICE_SM_ALLOW_FINITE_EVENT_RETENTION"),
    ],
)
def test_a_wrong_topic_setting_stops_the_start_naming_it(overrides: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(**overrides)
    assert info.value.setting == setting


def _as_created(settings: Settings) -> dict[str, dict[str, object]]:
    return {
        s.name: {"partitions": s.partitions, "replication_factor": s.replication_factor, "configs": s.configs()}
        for s in topic_table(settings)
    }


def test_a_cluster_as_the_table_says_has_no_differences() -> None:
    settings = load_settings()
    assert compare(topic_table(settings), _as_created(settings)) == []


def test_compare_names_every_setting_that_differs() -> None:
    settings = load_settings()
    cluster = _as_created(settings)
    del cluster["invoice.events.dlq"]
    cluster["invoice.events"]["configs"] = {**cluster["invoice.events"]["configs"], "retention.ms": "604800000"}  # type: ignore[dict-item]  # the fixture types its values as object
    cluster["invoice.state"].update(partitions=3, configs={"cleanup.policy": "delete"})
    cluster["invoice.outcomes"]["replication_factor"] = 2
    found = compare(topic_table(settings), cluster)
    assert set(found) == {
        Difference("invoice.events.dlq", "exists", "yes", "no"),
        Difference("invoice.events", "retention.ms", "-1", "604800000"),
        Difference("invoice.state", "partitions", "6", "3"),
        Difference("invoice.state", "cleanup.policy", "compact", "delete"),
        Difference("invoice.outcomes", "replication.factor", "1", "2"),
    }


def test_finite_retention_names_what_bounds_the_records() -> None:
    assert finite_retention({"retention.ms": "-1", "retention.bytes": "-1"}) is None
    assert finite_retention({"retention.ms": "604800000"}) == "retention.ms=604800000 (7 days)"
    assert finite_retention({"retention.ms": "-1", "retention.bytes": "1073741824"}) == "retention.bytes=1073741824"
