"""The simulator's side of the pushes against the real webhook server (a fake
publisher behind it, no broker): all three modes, WeChat's retries, verify
tickets that rotate on simulated time and expire after 12 hours."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx
import pytest

from adapters import wire
from adapters.webhook_server import WebhookConfig, WebhookServer
from adapters.wechat_crypto import PushCipher
from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import DEMO_COMPONENT_APPID, DEMO_COMPONENT_SECRET, DEMO_VERIFY_TICKET, Outcome
from domain.errors import BrokerError
from domain.status import ReimburseStatus as S
from tests.unit.adapters.test_webhook import FakePublisher

TOKEN = "sim-push-token"
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wx1234567890abcdef"
CARD, CODE = "pjZ8Yt7Um2jYxzneP8GomnxoVFWo", "186921658591"


@pytest.fixture
def wechat() -> Iterator[SimulatorServer]:
    with SimulatorServer(WeChatSimulator()) as server:
        yield server


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


async def _webhook(publisher: FakePublisher, *, key: str | None) -> WebhookServer:
    events, component = (PushCipher(key, APPID), PushCipher(key, DEMO_COMPONENT_APPID)) if key else (None, None)
    server = WebhookServer(WebhookConfig(TOKEN, events, component, publish_timeout_s=0.5), publisher.publish)
    await server.start()
    return server


@pytest.fixture
async def sim_client(wechat: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=wechat.base_url, timeout=30) as client:
        yield client


async def _reimburse(sim: httpx.AsyncClient, status: str) -> Any:
    """WeChat's user reimburses (or locks) the card: the simulator pushes and waits for the answer."""
    answer = await sim.post(
        "/_sim/reimburse",
        json={"appid": APPID, "card_id": CARD, "code": CODE, "reimburse_status": status, "wait": True},
    )
    return answer.json()


async def _configure(sim: httpx.AsyncClient, server: WebhookServer, mode: str, **extra: object) -> None:
    answer = await sim.post(
        "/_sim/pushes/config",
        json={
            "events_url": f"{server.url}/wechat/events",
            "component_url": f"{server.url}/wechat/component",
            "token": TOKEN,
            "encoding_aes_key": KEY,
            "appid": APPID,
            "component_appid": DEMO_COMPONENT_APPID,
            "mode": mode,
            **extra,
        },
    )
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("mode", ["plaintext", "compatible", "safe"])
async def test_a_reimburser_s_lock_is_pushed_signed_and_encrypted_in_every_mode(
    wechat: SimulatorServer, sim_client: httpx.AsyncClient, publisher: FakePublisher, mode: str
) -> None:
    server = await _webhook(publisher, key=None if mode == "plaintext" else KEY)
    try:
        await _configure(sim_client, server, mode)
        answer = await _reimburse(sim_client, "INVOICE_REIMBURSE_LOCK")
    finally:
        await server.stop()
    assert answer["errcode"] == 0 and answer["delivered"] == [True]
    assert wechat.sim.card_status(APPID, CARD, CODE) is S.LOCK
    (record,) = publisher.records
    event = wire.decode_event(record.key, record.value)
    assert (event.requested_status, event.card_id, event.code) == (S.LOCK, CARD, CODE)


async def test_a_change_wechat_refuses_is_not_applied_and_not_pushed(
    wechat: SimulatorServer, sim_client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    server = await _webhook(publisher, key=KEY)
    try:
        await _configure(sim_client, server, "safe")
        answer = await _reimburse(sim_client, "INVOICE_REIMBURSE_CLOSURE")
    finally:
        await server.stop()
    assert answer["errcode"] == 72039  # INIT -> CLOSURE: must lock first
    assert publisher.records == []
    assert (await sim_client.get("/_sim/pushes")).json()["pushes"] == []


async def test_a_push_without_success_is_retried_three_times_like_wechat(
    sim_client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    server = await _webhook(publisher, key=KEY)
    publisher.fail = BrokerError("Kafka is down")  # the webhook answers 503 every time
    try:
        await _configure(sim_client, server, "safe", retries=3, answer_timeout_s=2.0)
        answer = await _reimburse(sim_client, "INVOICE_REIMBURSE_LOCK")
        attempts = (await sim_client.get("/_sim/pushes")).json()["pushes"]
    finally:
        await server.stop()
    assert answer["delivered"] == [False]
    assert [(a["attempt"], a["http_status"], a["ok"]) for a in attempts] == [(n, 503, False) for n in (1, 2, 3, 4)]
    assert server.metrics.pushes_total.labels("events", "unavailable")._value.get() == 4


async def test_a_retried_push_that_finally_lands_is_one_record(sim_client: httpx.AsyncClient, publisher: FakePublisher) -> None:
    server = await _webhook(publisher, key=KEY)
    calls = 0
    real = publisher.publish

    async def flaky(record):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BrokerError("a broker hiccup")
        await real(record)

    server._publish = flaky  # a publisher that fails once
    try:
        await _configure(sim_client, server, "safe")
        answer = await _reimburse(sim_client, "INVOICE_REIMBURSE_LOCK")
        attempts = (await sim_client.get("/_sim/pushes")).json()["pushes"]
    finally:
        await server.stop()
    assert answer["delivered"] == [True]
    assert [a["ok"] for a in attempts] == [False, True]
    assert len(publisher.records) == 1


async def test_verify_tickets_rotate_on_simulated_time_and_are_pushed(
    wechat: SimulatorServer, sim_client: httpx.AsyncClient, publisher: FakePublisher
) -> None:
    server = await _webhook(publisher, key=KEY)
    try:
        await _configure(sim_client, server, "safe")
        early = (await sim_client.post("/_sim/clock/advance", json={"seconds": 60, "wait": True})).json()
        due = (await sim_client.post("/_sim/clock/advance", json={"seconds": 600, "wait": True})).json()
    finally:
        await server.stop()
    assert early["push_ids"] == []  # a ticket lives 10 minutes before the next one is pushed
    assert due["delivered"] == [True]
    (record,) = publisher.records
    pushed = wire.decode_component_record(record.value)
    assert pushed.info_type == "component_verify_ticket"
    assert pushed.ticket == wechat.sim.current_ticket(DEMO_COMPONENT_APPID) != DEMO_VERIFY_TICKET


def _json(outcome: Outcome) -> Mapping[str, Any]:
    assert outcome.body is not None, outcome
    return outcome.body


def _component_token(sim: WeChatSimulator, ticket: str) -> int:
    payload = {
        "component_appid": DEMO_COMPONENT_APPID,
        "component_appsecret": DEMO_COMPONENT_SECRET,
        "component_verify_ticket": ticket,
    }
    return int(_json(sim.get_component_token(payload)).get("errcode", 0))


def test_a_verify_ticket_older_than_12_hours_is_refused() -> None:
    sim = WeChatSimulator()
    assert _component_token(sim, DEMO_VERIFY_TICKET) == 0
    sim.advance_clock(6 * 3600)
    newer = sim.rotate_ticket(DEMO_COMPONENT_APPID)
    sim.advance_clock(6 * 3600 + 1)
    assert _component_token(sim, DEMO_VERIFY_TICKET) == 61006  # 12 h and a second old
    assert _component_token(sim, newer) == 0  # 6 h old: still good
    assert _component_token(sim, "ticket@@@never-issued") == 61006


def test_an_unauthorized_authorizer_gets_no_token_until_it_authorizes_again() -> None:
    from devtools.simulator.state import DEFAULT_AUTHORIZERS

    sim = WeChatSimulator()
    authorizer, (_, refresh) = next(iter(DEFAULT_AUTHORIZERS.items()))
    payload = {
        "component_appid": DEMO_COMPONENT_APPID,
        "component_appsecret": DEMO_COMPONENT_SECRET,
        "component_verify_ticket": DEMO_VERIFY_TICKET,
    }
    component = _json(sim.get_component_token(payload))["component_access_token"]
    ask = {"component_appid": DEMO_COMPONENT_APPID, "authorizer_appid": authorizer, "authorizer_refresh_token": refresh}
    sim.unauthorize(authorizer)
    assert _json(sim.get_authorizer_token(component, ask))["errcode"] == 61003
    sim.authorize(authorizer)
    assert "authorizer_access_token" in _json(sim.get_authorizer_token(component, ask))
