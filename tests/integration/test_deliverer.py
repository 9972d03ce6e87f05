"""The deliverer against a real broker and the WeChat simulator."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from adapters.settings import Settings
from consumers.deliverer import Deliverer
from consumers.processor import Processor
from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import DEFAULT_ACCOUNTS
from tests.factories import APPID, random_stream
from tests.support.kafka_io import produce_events, read_topic, values, wait_for_count

pytestmark = pytest.mark.broker

SECRET = DEFAULT_ACCOUNTS[APPID]


@pytest.fixture
def wechat() -> Iterator[SimulatorServer]:
    with SimulatorServer(WeChatSimulator()) as server:
        yield server


@pytest.fixture
def delivery_settings(make_settings: Callable[..., Settings], wechat: SimulatorServer) -> Settings:
    return make_settings(
        wechat_base_url=wechat.base_url,
        wechat_appid=APPID,
        wechat_secret=SECRET,
        wechat_timeout_s=2.0,
        delivery_concurrency=32,
        delivery_max_backoff_s=0.5,
        delivery_commit_interval_ms=50,
    )


@contextlib.asynccontextmanager
async def services(settings: Settings, *, deliverers: int = 1) -> AsyncIterator[list[Deliverer]]:
    stop = asyncio.Event()
    processor = Processor(settings)
    ds = [Deliverer(settings) for _ in range(deliverers)]
    tasks = [asyncio.create_task(processor.run(stop))] + [asyncio.create_task(d.run(stop)) for d in ds]
    try:
        yield ds
    finally:
        stop.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        for result in results:
            if isinstance(result, BaseException):
                raise result


def accepted(outcomes: list[dict]) -> list[dict]:
    return [o for o in outcomes if o["type"] == "invoice.status.accepted"]


async def test_every_accepted_status_reaches_wechat_in_order(delivery_settings: Settings, wechat: SimulatorServer) -> None:
    events = list(random_stream(6000, 2000, seed=11))
    await produce_events(delivery_settings, events)
    async with services(delivery_settings):
        outcomes = values(await wait_for_count(delivery_settings, delivery_settings.topic_outcomes, len(events), timeout=120))
        want = accepted(outcomes)
        deliveries = values(await wait_for_count(delivery_settings, delivery_settings.topic_deliveries, len(want), timeout=120))

    # Exactly one final delivery record per accepted outcome.
    keys = [d["idempotency_key"] for d in deliveries]
    assert len(keys) == len(set(keys)) == len(want)
    assert set(keys) == {f"{o['data']['card_id']}/{o['data']['code']}#{o['data']['version']}" for o in want}
    assert {d["result"] for d in deliveries} == {"delivered"}

    # WeChat's cards equal the processor's state.
    state = {}
    for record in await read_topic(delivery_settings, delivery_settings.topic_state):
        value = json.loads(record.value)
        state[(value["card_id"], value["code"])] = value
    cards = {(c.card_id, c.code): c.reimburse_status for c in wechat.sim.cards()}
    moved = {k: v["status"] for k, v in state.items() if v["version"] > 0}
    assert {k: cards.get(k) for k in moved} == moved

    # Per invoice, WeChat saw versions in increasing order, each once.
    seen: dict[tuple[str | None, str | None], list[int]] = defaultdict(list)
    for call in wechat.sim.calls():
        assert call.idempotency_key is not None, call
        seen[(call.card_id, call.code)].append(int(call.idempotency_key.rsplit("#", 1)[1]))
    for versions in seen.values():
        assert versions == sorted(versions) and len(versions) == len(set(versions))
