"""One test per WeChat fault: what the deliverer records, and what it sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.settings import Settings
from consumers.deliverer import Deliverer
from consumers.processor import Processor
from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import DEFAULT_ACCOUNTS
from domain.status import ReimburseStatus as S
from tests.factories import APPID, card, event
from tests.support.kafka_io import produce_events, values, wait_for_count

pytestmark = pytest.mark.broker


@dataclass
class Pipeline:
    settings: Settings
    sim: WeChatSimulator
    deliverer: Deliverer

    async def deliver(self, *statuses: S, n: int = 1) -> list[dict[str, Any]]:
        """Publish statuses for one invoice; wait for their final delivery records."""
        card_id, code = card(n)
        await produce_events(self.settings, [event(card_id, code, s) for s in statuses])
        records = await wait_for_count(self.settings, self.settings.topic_deliveries, len(statuses), timeout=60)
        return sorted(values(records), key=lambda d: d["version"])

    def updatestatus_calls(self) -> list[Any]:
        return [c for c in self.sim.calls() if "updatestatus" in c.path]


@pytest.fixture
async def pipeline(make_settings: Callable[..., Settings]) -> AsyncIterator[Pipeline]:
    with SimulatorServer(WeChatSimulator()) as server:
        settings = make_settings(
            topic_partitions=1,
            wechat_base_url=server.base_url,
            wechat_appid=APPID,
            wechat_secret=DEFAULT_ACCOUNTS[APPID],
            wechat_timeout_s=0.5,
            delivery_max_backoff_s=0.3,
            delivery_commit_interval_ms=50,
            minute_quota_wait_s=0.6,
            quota_park_s=1.5,
        )
        stop = asyncio.Event()
        processor, deliverer = Processor(settings), Deliverer(settings)
        tasks = [asyncio.create_task(processor.run(stop)), asyncio.create_task(deliverer.run(stop))]
        # Publish only once the deliverer owns its partition, so that nothing
        # counts as "consumed by a previous owner" (possibly applied).
        for _ in range(200):
            if deliverer.lanes:
                break
            await asyncio.sleep(0.05)
        try:
            yield Pipeline(settings, server.sim, deliverer)
        finally:
            stop.set()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result


@pytest.mark.parametrize(
    ("fault", "rule"),
    [
        ("http 502", {"kind": "http_status", "http_status": 502, "times": 2}),
        ("timeout before applying", {"kind": "timeout", "latency_ms": 2000, "times": 1}),
        ("connection reset", {"kind": "reset", "times": 1}),
        ("system busy -1", {"kind": "errcode", "errcode": -1, "times": 2}),
        ("invoice busy 72036", {"kind": "errcode", "errcode": 72036, "times": 2}),
    ],
)
async def test_transient_faults_delay_the_delivery_and_never_drop_it(pipeline: Pipeline, fault: str, rule: dict) -> None:
    pipeline.sim.add_fault(**rule)
    (record,) = await pipeline.deliver(S.LOCK)
    assert record["result"] == "delivered", fault
    assert record["attempts"] == rule["times"] + 1
    calls = pipeline.updatestatus_calls()
    assert {c.idempotency_key for c in calls} == {record["idempotency_key"]}
    assert pipeline.sim.card_status(APPID, record["card_id"], record["code"]) == S.LOCK


async def test_timeout_after_applying_is_recorded_already_applied(pipeline: Pipeline) -> None:
    pipeline.sim.add_fault("timeout", latency_ms=2000, apply=True, times=1)
    (record,) = await pipeline.deliver(S.LOCK)
    assert record["result"] == "already_applied" and record["errcode"] == 72024
    assert [c.errcode for c in pipeline.updatestatus_calls()][-1] == 72024


async def test_minute_quota_45011_waits_before_retrying(pipeline: Pipeline) -> None:
    pipeline.sim.add_fault("errcode", errcode=45011, times=1)
    (record,) = await pipeline.deliver(S.LOCK)
    assert record["result"] == "delivered" and record["attempts"] == 2
    first, second = pipeline.updatestatus_calls()[-2:]
    assert second.time - first.time >= 0.55  # minute_quota_wait_s, not a short backoff


@pytest.mark.parametrize("errcode", [40001, 42001])
async def test_a_token_error_refreshes_once_and_retries_once(pipeline: Pipeline, errcode: int) -> None:
    tokens_before = len(pipeline.sim.token_calls())
    pipeline.sim.add_fault("errcode", errcode=errcode, times=1)
    (record,) = await pipeline.deliver(S.LOCK)
    assert record["result"] == "delivered" and record["attempts"] == 1
    calls = pipeline.updatestatus_calls()
    assert [c.errcode for c in calls] == [errcode, 0]
    assert calls[0].token_fp != calls[1].token_fp  # the retry used a new token
    assert 1 <= len(pipeline.sim.token_calls()) - tokens_before <= 2


async def test_a_token_error_that_persists_backs_off_instead_of_recursing(pipeline: Pipeline) -> None:
    pipeline.sim.add_fault("errcode", errcode=40001, times=4)
    (record,) = await pipeline.deliver(S.LOCK)
    assert record["result"] == "delivered"
    # Two HTTP calls per delivery attempt at most: one retry after one refresh.
    assert record["attempts"] == 3 and len(pipeline.updatestatus_calls()) == 5


async def test_daily_quota_45009_parks_the_account_and_delivers_after_the_reset(pipeline: Pipeline) -> None:
    pipeline.sim.add_fault("errcode", errcode=45009, times=1)
    records = await pipeline.deliver(S.LOCK, S.CLOSURE)
    assert [r["result"] for r in records] == ["delivered", "delivered"]
    calls = pipeline.updatestatus_calls()
    assert [c.errcode for c in calls] == [45009, 0, 0]
    assert calls[1].time - calls[0].time >= 1.4  # parked for quota_park_s
    assert pipeline.sim.card_status(APPID, records[0]["card_id"], records[0]["code"]) == S.CLOSURE


@pytest.mark.parametrize("errcode", [72023, 72024])
async def test_a_conflict_is_recorded_not_retried(pipeline: Pipeline, errcode: int) -> None:
    pipeline.sim.add_fault("errcode", errcode=errcode, times=1)
    (record,) = await pipeline.deliver(S.LOCK)
    assert record["result"] == "conflict" and record["errcode"] == errcode
    assert len(pipeline.updatestatus_calls()) == 1


async def test_a_permanent_error_fails_the_delivery_with_its_errcode(pipeline: Pipeline) -> None:
    pipeline.sim.add_fault("errcode", errcode=40003, times=1)
    records = await pipeline.deliver(S.LOCK, S.INIT)
    assert records[0]["result"] == "failed" and records[0]["errcode"] == 40003 and records[0]["errmsg"]
    # Policy: later versions are still delivered; WeChat judges them.
    assert records[1]["version"] == 2 and records[1]["result"] in {"delivered", "conflict"}
