"""Fixtures: a real local Kafka broker for the session, fresh topics per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapters.settings import Settings, load_settings


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real broker, started by the project's own code (adapters.kafka_local).

    Set INVOICE_SM_TEST_BOOTSTRAP to reuse a running broker while iterating.
    """
    external = os.environ.get("INVOICE_SM_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    from adapters.kafka_local import LocalKafka

    broker = LocalKafka(heap="768m").start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture
def make_settings(kafka_bootstrap: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings with topic and group names unique to this test."""
    suffix = uuid.uuid4().hex[:8]

    def build(**overrides: object) -> Settings:
        base: dict[str, object] = {
            "kafka_bootstrap_servers": kafka_bootstrap,
            "topic_events": f"t{suffix}.events",
            "topic_outcomes": f"t{suffix}.outcomes",
            "topic_state": f"t{suffix}.state",
            "topic_deliveries": f"t{suffix}.deliveries",
            "topic_dlq": f"t{suffix}.dlq",
            "processor_group_id": f"g{suffix}.processor",
            "deliverer_group_id": f"g{suffix}.deliverer",
            "state_dir": tmp_path / "state",
            "topic_partitions": 3,
            "log_format": "json",
        }
        base.update(overrides)
        return load_settings(**base)

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()
