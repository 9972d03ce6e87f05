"""Operating the service: metrics and health endpoints, clean shutdown."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from adapters.settings import Settings
from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import DEFAULT_ACCOUNTS
from tests.factories import APPID, card, event
from tests.support.kafka_io import produce_events, wait_for_count
from tests.support.processes import Service
from tests.support.services import free_port, wait_ready

pytestmark = pytest.mark.broker


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


async def scrape(url: str) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{url}/metrics")).text


async def test_metrics_move_health_answers_and_sigterm_stops_cleanly(
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
            async with httpx.AsyncClient() as client:
                ready = await wait_ready(client, service, url)
                assert ready is not None and ready.status_code == 200, ready and ready.text
                assert (await client.get(f"{url}/healthz")).status_code == 200
            before = await scrape(url)
            c, code = card(42)
            events = [
                event(c, code, "INVOICE_REIMBURSE_LOCK"),
                event(c, code, "INVOICE_REIMBURSE_CLOSURE"),
                event(*card(43), "INVOICE_REIMBURSE_CLOSURE"),
            ]
            await produce_events(settings, events)
            await wait_for_count(settings, settings.topic_deliveries, 2)
            await asyncio.sleep(0.3)
            after = await scrape(url)
            assert service.terminate() == 0  # SIGTERM: clean shutdown
        finally:
            service.close()
    moved = {
        ("invoice_sm_events_total", "accepted"): 2,
        ("invoice_sm_events_total", "rejected"): 1,
        ("invoice_sm_deliveries_total", "delivered"): 2,
    }
    for (name, value), want in moved.items():
        label = "outcome" if "events" in name else "result"
        assert metric(after, name, **{label: value}) - metric(before, name, **{label: value}) == want, (name, value)
    assert (
        metric(after, "invoice_sm_wechat_latency_seconds_count") - metric(before, "invoice_sm_wechat_latency_seconds_count") == 2
    )
    assert metric(after, "invoice_sm_batches_total") > metric(before, "invoice_sm_batches_total")
    assert metric(after, "invoice_sm_token_refreshes_total", appid=APPID, mode="stable") >= 1
    assert metric(after, "invoice_sm_assigned_partitions", role="processor") == settings.topic_partitions
    assert metric(after, "invoice_sm_assigned_partitions", role="deliverer") == settings.topic_partitions
    assert "invoice_sm_consumer_lag{" in after
    assert "invoice_sm_restore_seconds{" in after
    log = (tmp_path / "run.log").read_text()
    assert '"processor_stopped"' in log and '"deliverer_stopped"' in log
