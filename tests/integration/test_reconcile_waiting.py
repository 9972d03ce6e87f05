"""``reconcile`` reports the deliverer's waiting room (issue 12: parked work is visible).

Real broker, real simulator, the real processor and deliverer (component
mode: each authorizer appid is a tenant). One tenant is parked by 45009, one
appid has no credentials: their deliveries sit in ``invoice.deliveries.waiting``,
and ``reconcile`` lists them per invoice with reason and age, counts them by
reason, and does not call them differences (they are delayed, not lost).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters import kafka, waiting_room
from adapters.settings import Settings
from devtools.simulator import SimulatorServer, WeChatSimulator
from domain.model import invoice_key
from domain.status import ReimburseStatus as S
from tests.factories import card, event
from tests.integration.test_deliverer import services
from tests.integration.test_delivery_tenants import HEALTHY, NO_CREDENTIALS, PARKED, component_settings
from tests.support.kafka_io import produce_events, wait_for_count
from tests.support.services import run_cli

pytestmark = [pytest.mark.broker, pytest.mark.slow]


async def _room_entries(settings: Settings) -> int:
    partitions = await kafka.partitions_of(settings, settings.topic_delivery_waiting)
    rooms = await waiting_room.read_rooms(settings, partitions)
    return sum(len(room.entries) for room in rooms.values())


async def test_reconcile_lists_a_parked_tenants_waiting_deliveries_by_reason_without_calling_them_differences(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    with SimulatorServer(WeChatSimulator(keep_old_refresh_token=True)) as server:
        settings = component_settings(
            make_settings,
            server,
            # Both waits outlast the test: their work is in the room when reconcile looks.
            quota_park_s=3600.0,
            credential_park_s=3600.0,
            delivery_no_credentials_timeout_s=7200.0,
        )
        server.sim.add_fault("errcode", errcode=45009, appid=PARKED, times=None)
        healthy = [event(*card(n), S.LOCK, appid=HEALTHY) for n in range(30)]
        parked = [event(*card(500 + n), s, appid=PARKED) for n in range(5) for s in (S.LOCK, S.INIT, S.LOCK)]
        orphan = [event(*card(900 + n), S.LOCK, appid=NO_CREDENTIALS) for n in range(2)]
        waiting = len(parked) + len(orphan)
        async with services(settings):
            await produce_events(settings, healthy + parked + orphan)
            await wait_for_count(settings, settings.topic_deliveries, len(healthy), timeout=60)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while await _room_entries(settings) < waiting:
                assert loop.time() < deadline, "the parked work never reached the waiting room"
                await asyncio.sleep(0.2)

        out = tmp_path / "report.json"
        done = await run_cli(
            settings,
            "reconcile",
            "--wechat-sim-url",
            server.base_url,
            # Nothing is "in flight" by age: only the waiting room keeps these from being missing.
            "--grace-s",
            "0",
            "--json",
            str(out),
            "--no-progress",
        )
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert data["clean"] is True and data["differences_total"] == 0, data["differences"][:5]

    room = data["waiting"]
    assert room["deliveries"] == waiting and room["invoices"] == 5 + 2
    # Per reason, as the deliverer's gauge counts: each parked invoice's first
    # version waits for the quota, its later versions behind it.
    assert room["by_reason"]["quota"] == 5 and room["by_reason"]["behind"] == 10
    assert room["by_reason"]["no_credentials"] == 2
    assert room["by_appid"] == {PARKED: len(parked), NO_CREDENTIALS: len(orphan)}
    listed = {item["key"]: item for item in room["list"]}
    for n in range(5):
        item = listed[invoice_key(*card(500 + n))]
        assert item["appid"] == PARKED and item["reason"] == "quota" and item["versions"] == [1, 2, 3]
        assert [d["reason"] for d in item["deliveries"]] == ["quota", "behind", "behind"]
        assert item["waiting_s"] >= 0 and item["waiting_since"] <= data["checked_at"]
    assert {listed[invoice_key(*card(900 + n))]["reason"] for n in range(2)} == {"no_credentials"}
    assert room["oldest_since"] is not None

    # The person's view says the same, in a table and a note (rich wraps lines at 80 columns).
    text = " ".join(done.stdout.split())
    assert "clean" in text and "waiting deliveries (delayed, not differences): 17 in 7 invoices" in text
    assert "7 invoices have deliveries waiting" in text and "quota 5" in text, text
