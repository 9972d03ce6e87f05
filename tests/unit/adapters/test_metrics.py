"""Tests for adapters.metrics and adapters.health: the registry and the HTTP endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from adapters.health import HealthServer
from adapters.metrics import DELIVERY_RESULTS, ERRCODE_CLASSES, EVENT_OUTCOMES, Metrics


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a text exposition, or None if it is absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def server(metrics: Metrics) -> AsyncIterator[HealthServer]:
    async with HealthServer(metrics) as srv:
        yield srv


@pytest.fixture
async def client(server: HealthServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as c:
        yield c


# --- Metrics -------------------------------------------------------------------


def test_every_metric_is_registered_under_the_invoice_sm_prefix() -> None:
    metrics = Metrics()
    names = {family.name for family in text_string_to_metric_families(metrics.render().decode())}

    expected = {
        "events",
        "dlq",
        "batches",
        "batch_seconds",
        "deliveries",
        "wechat_calls",
        "wechat_latency_seconds",
        "consumer_lag",
        "restore_records",
        "restore_seconds",
        "restore_in_progress",
        "token_refreshes",
        "parked_appids",
        "parked_appid",
        "delivery_queue_depth",
        "deliveries_in_flight",
        "delivery_attempts",
        "assigned_partitions",
        "ready",
        "partition_stalled",
        "token_refresh_failures",
        "divergences",
    }
    assert {f"invoice_sm_{n}" for n in expected} <= names
    assert all(n.startswith("invoice_sm_") for n in names)


def test_closed_label_sets_start_at_zero() -> None:
    text = Metrics().render().decode()

    for outcome in EVENT_OUTCOMES:
        assert sample(text, "invoice_sm_events_total", outcome=outcome) == 0
    for result in DELIVERY_RESULTS:
        assert sample(text, "invoice_sm_deliveries_total", result=result) == 0
    for errcode_class in ERRCODE_CLASSES:
        assert sample(text, "invoice_sm_wechat_calls_total", errcode_class=errcode_class) == 0


def test_two_metrics_objects_have_independent_registries() -> None:
    a, b = Metrics(), Metrics()
    a.batches_total.inc()

    assert sample(a.render().decode(), "invoice_sm_batches_total") == 1
    assert sample(b.render().decode(), "invoice_sm_batches_total") == 0


def test_a_given_registry_is_used_and_cannot_be_registered_twice() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    assert metrics.registry is registry
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(registry)


def test_wechat_latency_buckets_span_5ms_to_10s() -> None:
    metrics = Metrics()
    metrics.wechat_latency_seconds.observe(0.004)
    text = metrics.render().decode()

    assert sample(text, "invoice_sm_wechat_latency_seconds_bucket", le="0.005") == 1
    assert sample(text, "invoice_sm_wechat_latency_seconds_bucket", le="10.0") == 1


# --- HealthServer --------------------------------------------------------------


async def test_metrics_endpoint_shows_counters_move(metrics: Metrics, client: httpx.AsyncClient) -> None:
    before = (await client.get("/metrics")).text
    metrics.events_total.labels("accepted").inc(3)
    metrics.consumer_lag.labels("g", "invoice.events", "0").set(42)
    metrics.wechat_latency_seconds.observe(0.03)
    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert sample(before, "invoice_sm_events_total", outcome="accepted") == 0
    assert sample(response.text, "invoice_sm_events_total", outcome="accepted") == 3
    assert sample(response.text, "invoice_sm_consumer_lag", group="g", topic="invoice.events", partition="0") == 42
    assert sample(response.text, "invoice_sm_wechat_latency_seconds_count") == 1


async def test_metrics_endpoint_speaks_openmetrics_when_asked(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})

    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_healthz_is_ok_while_the_loop_runs(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_503_naming_the_failing_check_until_it_passes(server: HealthServer, client: httpx.AsyncClient) -> None:
    state = {"restored": False}
    server.add_readiness_check("state_restored", lambda: state["restored"])
    server.add_readiness_check("kafka", lambda: True)

    not_ready = await client.get("/readyz")
    scraped = (await client.get("/metrics")).text
    state["restored"] = True
    ready = await client.get("/readyz")

    assert not_ready.status_code == 503
    assert not_ready.json() == {
        "status": "not_ready",
        "checks": {"state_restored": False, "kafka": True},
        "failing": ["state_restored"],
    }
    assert sample(scraped, "invoice_sm_ready") == 0
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert sample((await client.get("/metrics")).text, "invoice_sm_ready") == 1


async def test_a_readiness_check_that_raises_counts_as_failing(server: HealthServer, client: httpx.AsyncClient) -> None:
    def broken() -> bool:
        raise RuntimeError("no partitions yet")

    server.add_readiness_check("broken", broken)
    response = await client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["failing"] == ["broken"]


async def test_readyz_is_200_with_no_checks(client: httpx.AsyncClient) -> None:
    assert (await client.get("/readyz")).status_code == 200


async def test_async_readiness_checks_are_refused(server: HealthServer) -> None:
    async def check() -> bool:
        return True

    with pytest.raises(TypeError, match="plain function"):
        server.add_readiness_check("async", check)  # type: ignore[arg-type]  # an async check, refused on purpose


async def test_port_zero_binds_a_free_port_and_stop_releases_it() -> None:
    srv = HealthServer(Metrics(), port=0)
    with pytest.raises(RuntimeError):
        _ = srv.port
    await srv.start()
    port = srv.port
    assert port > 0
    assert srv.url == f"http://127.0.0.1:{port}"
    await srv.stop()
    await srv.stop()

    with pytest.raises(RuntimeError):
        _ = srv.url
    async with httpx.AsyncClient() as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(f"http://127.0.0.1:{port}/healthz")


async def test_a_second_server_on_a_taken_port_fails_to_start(server: HealthServer) -> None:
    other = HealthServer(Metrics(), port=server.port)

    with pytest.raises(OSError, match=r"(?i)address already in use"):
        await other.start()
