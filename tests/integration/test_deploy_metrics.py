"""The operators' kit finds its metrics: every metric deploy/alerts.yml and
the Grafana dashboard use is on a running service's /metrics (or, for
``divergences_total``, in what ``invoice-sm reconcile --metrics-file``
writes for node_exporter's textfile collector)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.settings import Settings
from consumers.reconcile import DIFFERENCE_KINDS
from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import DEFAULT_ACCOUNTS
from tests.factories import APPID, card, event
from tests.support.deploy_kit import family, metrics_used
from tests.support.kafka_io import produce, produce_events, wait_for_count
from tests.support.processes import Service
from tests.support.services import free_port, run_cli, wait_ready

pytestmark = pytest.mark.broker


def _families(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


async def _scrape_when_ready(service: Service, url: str) -> None:
    async with httpx.AsyncClient() as client:
        ready = await wait_ready(client, service, url)
    if ready is None or ready.status_code != 200:
        pytest.fail("the service never became ready")


async def test_every_metric_of_the_alerts_and_the_dashboard_is_exposed(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with SimulatorServer(WeChatSimulator()) as server:
        settings = make_settings(
            wechat_base_url=server.base_url,
            wechat_appid=APPID,
            wechat_secret=DEFAULT_ACCOUNTS[APPID],
            metrics_port=port,
            delivery_commit_interval_ms=50,
        )
        service = Service("run", settings, tmp_path / "run.log")
        try:
            await _scrape_when_ready(service, url)
            c, code = card(7)
            await produce_events(settings, [event(c, code, "INVOICE_REIMBURSE_LOCK")])
            await produce(settings, [(f"{c}/{code}".encode(), b"not json", [])])
            await wait_for_count(settings, settings.topic_deliveries, 1)
            await wait_for_count(settings, settings.topic_dlq, 1)
            await asyncio.sleep(0.3)
            async with httpx.AsyncClient() as client:
                scraped = (await client.get(f"{url}/metrics")).text
            assert service.terminate() == 0
        finally:
            service.close()
        metrics_file = tmp_path / "reconcile.prom"
        result = await run_cli(settings, "reconcile", "--no-progress", "--metrics-file", str(metrics_file))
        assert result.returncode in (0, 3), result.stdout + result.stderr

    exposed = _families(scraped)
    reconciled = _families(metrics_file.read_text())
    used = metrics_used()
    missing = {name: sorted(where) for name, where in used.items() if family(name) not in exposed | reconciled}
    assert missing == {}

    # Not only declared: the series the alerts read on a healthy run have samples.
    def value(families: dict, name: str, **labels: str) -> float | None:
        for sample_name, sample_labels, v in families.get(family(name), []):
            if sample_name == name and all(sample_labels.get(k) == want for k, want in labels.items()):
                return v
        return None

    assert value(exposed, "invoice_sm_dlq_total", reason="not_json") == 1
    assert value(exposed, "invoice_sm_deliveries_total", result="delivered") == 1
    assert value(exposed, "invoice_sm_deliveries_total", result="failed") == 0
    assert value(exposed, "invoice_sm_token_refresh_failures_total", appid=APPID, mode="stable") == 0
    assert value(exposed, "invoice_sm_consumer_lag") is not None
    assert value(exposed, "invoice_sm_restore_seconds") is not None
    assert value(exposed, "invoice_sm_batches_total") is not None
    assert value(exposed, "invoice_sm_restore_in_progress") == 0
    assert value(exposed, "invoice_sm_wechat_reports_total", legal="false") == 0
    for kind in DIFFERENCE_KINDS:
        assert value(reconciled, "invoice_sm_divergences_total", kind=kind) is not None, kind
