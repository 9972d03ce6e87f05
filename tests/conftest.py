"""Fixtures: a real local Kafka broker for the session, fresh topics per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from adapters import native
from adapters.native import NativeStep
from adapters.settings import Settings, load_settings
from adapters.topics import topic_names
from tests.support.scheduling import longest_modules_first

if TYPE_CHECKING:
    from devtools.kafka_local import LocalKafkaCluster


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real broker, started by the project's own code (devtools.kafka_local).

    Set INVOICE_SM_TEST_BOOTSTRAP to reuse a running broker while iterating.
    """
    external = os.environ.get("INVOICE_SM_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    from devtools.kafka_local import LocalKafka

    broker = LocalKafka(heap="768m").start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[LocalKafkaCluster]:
    """A 3-node KRaft cluster (replication factor 3, min ISR 2) of the module's
    own, started only for tests that ask for it (marker ``cluster``): they
    kill its nodes."""
    from devtools.kafka_local import LocalKafkaCluster

    with LocalKafkaCluster(3) as cluster:
        yield cluster


@pytest.fixture
def make_settings(kafka_bootstrap: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings with topic and group names unique to this test."""
    suffix = uuid.uuid4().hex[:8]

    def build(**overrides: object) -> Settings:
        base: dict[str, object] = {
            "kafka_bootstrap_servers": kafka_bootstrap,
            **topic_names(f"t{suffix}"),
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


@pytest.fixture(scope="session")
def native_step() -> NativeStep:
    """The native per-record step: ``./dev`` builds it, and the suite tests it
    rather than skip (the service runs without it, but the suite checks both)."""
    step = native.load()
    if step is None:
        pytest.fail("the native step (invoice_sm_native) is not installed: ./dev builds it from native/ (needs cargo)")
    return step


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back for the other tests."""
    import logging

    import structlog

    from adapters.logging import NOISY_LOGGERS

    saved_structlog = structlog.get_config()
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_level = root.level
    saved_noisy = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    structlog.configure(**saved_structlog)
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in saved_noisy.items():
        logging.getLogger(name).setLevel(level)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items[:] = longest_modules_first(items)
