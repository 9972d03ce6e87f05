"""WeChat as a second writer, end to end on the real broker: the simulator's
reimburser closes a card, WeChat's push reaches the webhook, the processor
follows it, the deliverer sends nothing back, a later upstream red-flush is
refused, and reconcile finds nothing to say.

The simulator runs in its own thread; the webhook, the processor and the
deliverer in the test's loop, so the simulator's control API is called with
an async client (a blocking call would hold up the webhook it is pushing to).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from adapters.settings import Settings
from consumers.deliverer import Deliverer
from consumers.processor import Processor
from consumers.reconcile import reconcile
from consumers.webhook import run_webhook
from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import DEFAULT_ACCOUNTS
from domain.status import ReimburseStatus as S
from tests.factories import APPID, card, event
from tests.support.kafka_io import produce_events, read_topic, values, wait_for_count
from tests.support.services import free_port, live_states

pytestmark = pytest.mark.broker

TOKEN = "e2e-push-token"
KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"


@pytest.fixture
def wechat() -> Iterator[SimulatorServer]:
    with SimulatorServer(WeChatSimulator()) as server:
        yield server


@contextlib.asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[None]:
    stop, started = asyncio.Event(), asyncio.Event()
    tasks = [
        asyncio.create_task(Processor(settings, in_memory_state=True).run(stop)),
        asyncio.create_task(Deliverer(settings).run(stop)),
        asyncio.create_task(run_webhook(settings, stop, started=started)),
    ]
    await asyncio.wait([asyncio.create_task(started.wait()), tasks[2]], return_when=asyncio.FIRST_COMPLETED)
    if tasks[2].done():
        tasks[2].result()
    try:
        yield
    finally:
        stop.set()
        for result in await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60):
            if isinstance(result, BaseException):
                raise result


async def deliverer_caught_up(settings: Settings, *, timeout: float = 60) -> None:
    """Until the deliverer's committed offsets pass the last outcome of each
    partition: it has judged every outcome (and sent anything it meant to)."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from adapters import kafka

    # Offsets after the last record (the end offset also counts transaction markers).
    wanted: dict[TopicPartition, int] = {}
    for r in await read_topic(settings, settings.topic_outcomes):
        tp = TopicPartition(r.topic, r.partition)
        wanted[tp] = max(wanted.get(tp, 0), r.offset + 1)
    admin = AIOKafkaAdminClient(**kafka.client_options(settings))
    await admin.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            committed = await admin.list_consumer_group_offsets(settings.deliverer_group_id)
            if all(tp in committed and committed[tp].offset >= offset for tp, offset in wanted.items()):
                return
            assert loop.time() < deadline, f"deliverer did not catch up: {committed} < {wanted}"
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def e2e_settings(make_settings: Callable[..., Settings], wechat: SimulatorServer, mode: str) -> Settings:
    return make_settings(
        topic_component=f"t{uuid.uuid4().hex[:8]}.component",
        wechat_base_url=wechat.base_url,
        wechat_appid=APPID,
        wechat_secret=DEFAULT_ACCOUNTS[APPID],
        wechat_timeout_s=2.0,
        delivery_max_backoff_s=0.5,
        delivery_commit_interval_ms=50,
        delivery_takeover_wait_s=0,
        webhook_port=free_port(),
        wechat_push_token=TOKEN,
        wechat_encoding_aes_key=None if mode == "plaintext" else KEY,
    )


async def lock_then_reimburser_closes_then_red_flush(
    settings: Settings, wechat: SimulatorServer, mode: str, card_id: str, code: str
) -> tuple[list[dict], list[dict], list[dict]]:
    """Steps 1 to 4; returns (outcomes, deliveries, push attempts)."""
    async with httpx.AsyncClient(base_url=wechat.base_url, timeout=30) as sim, service(settings):
        answer = await sim.post(
            "/_sim/pushes/config",
            json={
                "events_url": f"http://127.0.0.1:{settings.webhook_port}/wechat/events",
                "token": TOKEN,
                "encoding_aes_key": KEY,
                "appid": APPID,
                "mode": mode,
            },
        )
        assert answer.status_code == 200, answer.text
        # 1. upstream LOCK, delivered to WeChat
        await produce_events(settings, [event(card_id, code, S.LOCK)])
        (delivered,) = values(await wait_for_count(settings, settings.topic_deliveries, 1))
        assert delivered["result"] == "delivered"
        assert wechat.sim.card_status(APPID, card_id, code) is S.LOCK
        # 2. the reimburser closes the card at WeChat, which pushes it to the webhook
        closed = (
            await sim.post(
                "/_sim/reimburse",
                json={
                    "appid": APPID,
                    "card_id": card_id,
                    "code": code,
                    "reimburse_status": "INVOICE_REIMBURSE_CLOSURE",
                    "wait": True,
                },
            )
        ).json()
        assert closed["errcode"] == 0 and closed["delivered"] == [True], closed
        # 3. our state follows (outcome 2); 4. a later upstream red-flush (outcome 3)
        await wait_for_count(settings, settings.topic_outcomes, 2)
        await produce_events(settings, [event(card_id, code, S.CANCEL)])
        outcomes = values(await wait_for_count(settings, settings.topic_outcomes, 3))
        await deliverer_caught_up(settings)
        deliveries = values(await read_topic(settings, settings.topic_deliveries))
        pushes = (await sim.get("/_sim/pushes")).json()["pushes"]
    return outcomes, deliveries, pushes


@pytest.mark.parametrize("mode", ["plaintext", "compatible", "safe"])
async def test_a_reimburser_s_closure_is_followed_and_never_echoed(
    make_settings: Callable[..., Settings], wechat: SimulatorServer, mode: str
) -> None:
    settings = e2e_settings(make_settings, wechat, mode)
    card_id, code = card(7)
    outcomes, deliveries, pushes = await lock_then_reimburser_closes_then_red_flush(settings, wechat, mode, card_id, code)

    assert [(o["type"], o["data"]["origin"]) for o in outcomes] == [
        ("invoice.status.accepted", "upstream"),
        ("invoice.status.accepted", "wechat"),
        ("invoice.status.rejected", "upstream"),
    ]
    assert outcomes[1]["data"]["to_status"] == "INVOICE_REIMBURSE_CLOSURE" and outcomes[1]["data"]["legal"] is True
    assert outcomes[2]["data"]["reason"] == "terminal_state"
    # No updatestatus echo: WeChat saw the LOCK only, and only the LOCK has a delivery record.
    assert [c.reimburse_status for c in wechat.sim.calls() if c.card_id == card_id] == ["INVOICE_REIMBURSE_LOCK"]
    assert [d["reimburse_status"] for d in deliveries] == ["INVOICE_REIMBURSE_LOCK"]
    assert [p["ok"] for p in pushes] == [True]
    state = (await live_states(settings))[f"{card_id}/{code}"]
    assert (state.status, state.version) == (S.CLOSURE, 2)
    assert wechat.sim.card_status(APPID, card_id, code) is S.CLOSURE


async def test_reconcile_finds_no_difference_after_a_wechat_report(
    make_settings: Callable[..., Settings], wechat: SimulatorServer
) -> None:
    settings = e2e_settings(make_settings, wechat, "safe")
    card_id, code = card(9)
    await lock_then_reimburser_closes_then_red_flush(settings, wechat, "safe", card_id, code)
    # 5. reconcile: the log, the state, the deliveries and WeChat agree.
    report = await reconcile(settings, wechat_sim_url=wechat.base_url, grace_s=0, progress=False)
    assert report.differences == []
