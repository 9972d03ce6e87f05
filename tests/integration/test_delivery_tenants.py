"""Tenants on the same partitions: one parked, one without credentials, the rest unharmed.

Real broker, real simulator (component mode: each authorizer appid is a
tenant). Issue 12's first must-show, and the ledger-return case.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.settings import Settings
from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import (
    DEMO_AUTHORIZER_APPIDS,
    DEMO_COMPONENT_APPID,
    DEMO_COMPONENT_SECRET,
    DEMO_VERIFY_TICKET,
)
from domain.status import ReimburseStatus as S
from tests.factories import card, event
from tests.integration.test_deliverer import services
from tests.support.kafka_io import produce_events, read_topic, values, wait_for_count

pytestmark = [pytest.mark.broker, pytest.mark.slow]

HEALTHY, PARKED = DEMO_AUTHORIZER_APPIDS
NO_CREDENTIALS = "wxb0000000000000b9"  # not among the service's authorizers
PARK_S = 6.0  # "an hour" of the parked tenant's quota, in simulated time
NO_CREDENTIALS_TIMEOUT_S = 8.0


def component_settings(make_settings: Callable[..., Settings], server: SimulatorServer, **overrides: object) -> Settings:
    refresh = {a: server.sim.current_refresh_token(a) for a in DEMO_AUTHORIZER_APPIDS}
    return make_settings(
        wechat_base_url=server.base_url,
        wechat_token_mode="component",
        wechat_component_appid=DEMO_COMPONENT_APPID,
        wechat_component_secret=DEMO_COMPONENT_SECRET,
        wechat_component_verify_ticket=DEMO_VERIFY_TICKET,
        wechat_authorizer_refresh_tokens=refresh,
        delivery_commit_interval_ms=50,
        **overrides,
    )


async def test_one_parked_tenant_and_one_without_credentials_never_stall_the_others(
    make_settings: Callable[..., Settings],
) -> None:
    with SimulatorServer(WeChatSimulator(keep_old_refresh_token=True)) as server:
        settings = component_settings(
            make_settings,
            server,
            quota_park_s=PARK_S,
            credential_park_s=1.0,
            delivery_no_credentials_timeout_s=NO_CREDENTIALS_TIMEOUT_S,
            delivery_concurrency=32,
        )
        # The parked tenant's daily quota is spent until we say it reset.
        server.sim.add_fault("errcode", errcode=45009, appid=PARKED, times=None)
        healthy = [event(*card(n), S.LOCK, appid=HEALTHY) for n in range(2000)]
        parked = [event(*card(5000 + n), s, appid=PARKED) for n in range(20) for s in (S.LOCK, S.INIT, S.LOCK, S.CLOSURE)]
        orphan = [event(*card(9000 + n), s, appid=NO_CREDENTIALS) for n in range(6) for s in (S.LOCK, S.INIT)]
        # Interleaved, so every partition carries all three tenants.
        stream = [e for group in zip(healthy[: len(parked)], parked, strict=True) for e in group] + healthy[len(parked) :]
        stream[100:100] = orphan
        total = len(healthy) + len(parked) + len(orphan)
        async with services(settings):
            started = time.time()
            await produce_events(settings, stream)
            # Healthy tenants: all recorded while the parked tenant is still parked.
            await _wait_results(settings, lambda d: d["appid"] == HEALTHY, len(healthy), timeout=60)
            healthy_done = time.time()
            assert healthy_done - started < PARK_S + 30
            assert not [c for c in server.sim.calls() if c.appid == PARKED and c.errcode == 0]
            # Its reset: the fault goes, the park ends, the tenant is delivered.
            server.sim.clear_faults()
            records = await wait_for_count(settings, settings.topic_deliveries, total, timeout=120)
        deliveries = values(records)

    # Nothing lost: one record per accepted outcome, for every tenant.
    keys = Counter(d["idempotency_key"] for d in deliveries)
    assert len(keys) == total and set(keys.values()) == {1}
    by_appid: dict[str, Counter[str]] = defaultdict(Counter)
    for d in deliveries:
        by_appid[d["appid"]][d["result"]] += 1
    assert by_appid[HEALTHY] == {"delivered": len(healthy)}
    assert by_appid[PARKED] == {"delivered": len(parked)}
    assert by_appid[NO_CREDENTIALS] == {"failed": len(orphan)}
    ended = [d for d in deliveries if d["appid"] == NO_CREDENTIALS]
    assert {(d["reason"], d["errcode"]) for d in ended} == {("no_credentials", 41001)}

    # Healthy records were committed within seconds of WeChat accepting them.
    accepted_at = {c.idempotency_key: c.time for c in server.sim.calls() if c.errcode == 0}
    lags = sorted(
        r.timestamp / 1000 - accepted_at[v["idempotency_key"]]
        for r, v in zip(records, deliveries, strict=True)
        if v["appid"] == HEALTHY
    )
    assert lags[-1] < 5.0, f"slowest healthy commit {lags[-1]:.1f} s after WeChat accepted it"

    # The parked tenant, after its reset: each card's versions in order.
    versions: dict[str | None, list[int]] = defaultdict(list)
    for c in server.sim.calls():
        if c.appid == PARKED and c.errcode == 0 and c.idempotency_key:
            versions[c.card_id].append(int(c.idempotency_key.rsplit("#", 1)[1]))
    assert len(versions) == 20 and all(v == [1, 2, 3, 4] for v in versions.values()), dict(versions)
    assert {c.reimburse_status for c in server.sim.cards() if c.appid == PARKED} == {S.CLOSURE}


async def _wait_results(settings: Settings, which: Callable[[dict], bool], n: int, *, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = [d for d in values(await read_topic(settings, settings.topic_deliveries)) if which(d)]
        if len(got) >= n:
            return
        assert loop.time() < deadline, f"{len(got)} of {n} delivery records after {timeout} s"
        await asyncio.sleep(0.5)


async def test_waiting_deliveries_survive_a_restart_and_resume_in_order(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    """A parked tenant's work is in the waiting room, not in memory: a new
    instance (no ledger: another host) picks it up and delivers it in order."""
    with SimulatorServer(WeChatSimulator(keep_old_refresh_token=True)) as server:
        # Parked for 10 s: longer than the first instance lives, so the work is
        # in the room when it stops; the second one resumes it at that time.
        settings = component_settings(make_settings, server, quota_park_s=10.0, state_dir=tmp_path / "a")
        server.sim.add_fault("errcode", errcode=45009, appid=PARKED, times=None)
        events = [event(*card(n), s, appid=PARKED) for n in range(10) for s in (S.LOCK, S.INIT, S.LOCK)]
        events += [event(*card(100 + n), S.LOCK, appid=HEALTHY) for n in range(50)]
        async with services(settings) as (deliverer,):
            await produce_events(settings, events)
            await wait_for_count(settings, settings.topic_deliveries, 50, timeout=60)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while sum(len(lane.waiting) for lane in deliverer.lanes.values()) < 30:
                assert loop.time() < deadline
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)  # a commit interval: the room entries are committed
        room = values(await read_topic(settings, settings.topic_delivery_waiting))
        # Waiting entries (objects), not the ``d:`` marks (``1``) of records committed beyond the commit point.
        assert sum(1 for r in room if isinstance(r, dict) and "idempotency_key" in r) >= 30
        server.sim.clear_faults()
        moved = settings.model_copy(update={"state_dir": tmp_path / "b"})
        async with services(moved):
            records = await wait_for_count(settings, settings.topic_deliveries, 80, timeout=60)
    deliveries = values(records)
    assert Counter(d["result"] for d in deliveries if d["appid"] == PARKED) == {"delivered": 30}
    versions: dict[str | None, list[int]] = defaultdict(list)
    for c in server.sim.calls():
        if c.appid == PARKED and c.errcode == 0 and c.idempotency_key:
            versions[c.card_id].append(int(c.idempotency_key.rsplit("#", 1)[1]))
    assert all(v == [1, 2, 3] for v in versions.values()) and len(versions) == 10
