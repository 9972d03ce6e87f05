"""Component (third-party platform) mode through real deliverers, on the real broker.

Two ``Deliverer`` instances in one consumer group, in token mode
``component``, each following the component topic the webhook writes
(``Deliverer._follow_component_feed``), deliver for two authorizers across
three verify-ticket rotations (15 simulated hours: the configured ticket is
long dead at the simulator, so only the tickets the webhook published keep
token refresh working). Then an ``unauthorized`` push for one authorizer ends
that authorizer's pending deliveries with a final record (``failed``, reason
``unauthorized``), while the other authorizer keeps delivering.

The deliverers' token caches run on the real clock, the simulator's on
simulated time: after each 5-hour jump every cached token is expired at the
simulator, so the next call is answered 42001 and the deliverer refreshes
its authorizer token and, through it, its component token, with the
newest ticket it has followed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from adapters.settings import Settings
from consumers.deliverer import Deliverer
from consumers.processor import Processor
from consumers.webhook import run_webhook
from devtools.simulator import SimulatorServer
from devtools.simulator.state import (
    DEFAULT_AUTHORIZERS,
    DEMO_COMPONENT_APPID,
    DEMO_COMPONENT_SECRET,
    DEMO_VERIFY_TICKET,
)
from domain.status import ReimburseStatus as S
from tests.factories import card, event
from tests.support.component import AUTHORIZER, HOURS_5, KEY, OTHER, TOKEN, component_simulator, push_to_webhook, until
from tests.support.kafka_io import produce_events, read_topic, values, wait_for_count
from tests.support.services import free_port

pytestmark = pytest.mark.broker

INVOICES = 8  # per authorizer: enough that every partition, so each instance, has deliveries each round
#: One accepted upstream move per round for every invoice.
ROUNDS = (S.LOCK, S.INIT, S.LOCK, S.INIT, S.LOCK, S.CLOSURE)


@pytest.fixture
def wechat() -> Iterator[SimulatorServer]:
    with component_simulator() as server:
        yield server


@asynccontextmanager
async def pipeline(settings: Settings) -> AsyncIterator[list[Deliverer]]:
    """The webhook, a processor and two deliverers in one group, as tasks of this loop."""
    stop, started = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(run_webhook(settings, stop, started=started))]
    await asyncio.wait_for(started.wait(), 30)
    deliverers = [Deliverer(settings) for _ in range(2)]
    tasks.append(asyncio.create_task(Processor(settings).run(stop)))
    tasks += [asyncio.create_task(d.run(stop)) for d in deliverers]
    try:
        yield deliverers
    finally:
        stop.set()
        for result in await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60):
            if isinstance(result, BaseException):
                raise result


def invoices(appid: str) -> list[tuple[str, str]]:
    first = 0 if appid == AUTHORIZER else INVOICES
    return [card(n) for n in range(first, first + INVOICES)]


def round_events(n: int, appids: tuple[str, ...] = (AUTHORIZER, OTHER)) -> list[dict[str, Any]]:
    return [event(c, code, ROUNDS[n], appid=appid) for appid in appids for c, code in invoices(appid)]


def by_key(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["idempotency_key"]: d for d in records}


def keys_of(appid: str, version: int) -> set[str]:
    return {f"{c}/{code}#{version}" for c, code in invoices(appid)}


async def test_two_deliverers_deliver_across_three_ticket_rotations_and_an_unauthorized_push_ends_pending_work(
    make_settings: Callable[..., Settings], wechat: SimulatorServer
) -> None:
    settings = make_settings(
        webhook_port=free_port(),
        wechat_push_token=TOKEN,
        wechat_encoding_aes_key=KEY,
        wechat_base_url=wechat.base_url,
        wechat_token_mode="component",
        wechat_component_appid=DEMO_COMPONENT_APPID,
        wechat_component_secret=DEMO_COMPONENT_SECRET,
        wechat_component_verify_ticket=DEMO_VERIFY_TICKET,
        wechat_authorizer_refresh_tokens={a: r for a, (_, r) in DEFAULT_AUTHORIZERS.items()},
        delivery_commit_interval_ms=50,
        delivery_max_backoff_s=0.5,  # a failing call is retried (not parked) while it waits for the push
    )
    sim = wechat.sim
    delivered = 0
    async with pipeline(settings) as deliverers, httpx.AsyncClient(base_url=wechat.base_url, timeout=30) as control:
        await push_to_webhook(control, settings)
        await until(lambda: all(d.lanes for d in deliverers), "both deliverers owning partitions")

        async def deliver_round(n: int) -> dict[str, dict[str, Any]]:
            nonlocal delivered
            events = round_events(n)
            await produce_events(settings, events)
            delivered += len(events)
            return by_key(values(await wait_for_count(settings, settings.topic_deliveries, delivered, timeout=30)))

        records = await deliver_round(0)
        assert {records[k]["result"] for k in keys_of(AUTHORIZER, 1) | keys_of(OTHER, 1)} == {"delivered"}
        for rotation in range(1, 4):
            answer = (await control.post("/_sim/clock/advance", json={"seconds": HOURS_5, "wait": True})).json()
            assert answer["delivered"] == [True], answer  # the new ticket is on the component topic
            records = await deliver_round(rotation)
            version = rotation + 1
            assert {records[k]["result"] for k in keys_of(AUTHORIZER, version) | keys_of(OTHER, version)} == {"delivered"}

        # Every instance refreshed its component token once per rotation (the
        # cached one was expired at WeChat each time), and no refresh was ever
        # refused: at 15 simulated hours only a followed ticket is accepted.
        component_calls = [c for c in sim.token_calls() if c.kind == "component_token"]
        assert component_calls and all(not c.errcode for c in component_calls), component_calls
        assert all(d.counts["delivered"] > 0 for d in deliverers), [d.counts for d in deliverers]
        assert all(d.client.tokens.component_refreshes >= 4 for d in deliverers), [
            d.client.tokens.component_refreshes for d in deliverers
        ]

        # AUTHORIZER's calls fail (system busy, retried) until it revokes us.
        sim.add_fault("errcode", errcode=-1, appid=AUTHORIZER, times=None)
        await produce_events(settings, round_events(4))
        records = by_key(values(await wait_for_count(settings, settings.topic_deliveries, delivered + INVOICES, timeout=30)))
        assert {records[k]["result"] for k in keys_of(OTHER, 5)} == {"delivered"}
        assert not keys_of(AUTHORIZER, 5) & records.keys()  # still pending
        await until(lambda: all(f.fired >= INVOICES for f in sim.faults()), "every pending delivery tried and failing")

        answer = (await control.post(f"/_sim/authorizers/{AUTHORIZER}/unauthorize", json={"wait": True})).json()
        assert answer["delivered"] == [True], answer
        delivered += 2 * INVOICES
        records = by_key(values(await wait_for_count(settings, settings.topic_deliveries, delivered, timeout=30)))
        ended = [records[k] for k in keys_of(AUTHORIZER, 5)]
        assert {(d["result"], d["reason"]) for d in ended} == {("failed", "unauthorized")}
        assert all(d["attempts"] >= 2 for d in ended)  # they were pending, not refused at the first try

        # The other authorizer keeps delivering; new work for the revoked one ends at once.
        records = await deliver_round(5)
        assert {records[k]["result"] for k in keys_of(OTHER, 6)} == {"delivered"}
        assert {(records[k]["result"], records[k]["reason"]) for k in keys_of(AUTHORIZER, 6)} == {("failed", "unauthorized")}

    # Exactly one final record per delivery: nothing repeated across the two instances.
    final = values(await read_topic(settings, settings.topic_deliveries))
    assert len(final) == len(by_key(final)) == delivered
