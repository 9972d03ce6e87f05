"""Component (third-party platform) mode on the real broker: WeChat's verify
tickets and authorization events go through the webhook to the compacted
component topic, and two token owners (as in two deliverer instances) follow
it, across three ticket rotations and more than 12 hours of simulated time.

The deliverer's own hook (``follow_component_feed`` started beside it) is
the lead's; this test drives the follower and ``ComponentTokenProvider``
directly, which is what the hook runs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from adapters.component_feed import ComponentFeed
from adapters.settings import Settings
from adapters.tokens import ComponentTokenProvider
from consumers.webhook import run_webhook
from devtools.simulator import SimulatorServer
from devtools.simulator.state import (
    DEFAULT_AUTHORIZERS,
    DEMO_COMPONENT_APPID,
    DEMO_COMPONENT_SECRET,
    DEMO_VERIFY_TICKET,
)
from domain.errors import AuthorizerUnauthorizedError
from tests.support.component import AUTHORIZER, HOURS_5, KEY, OTHER, TOKEN, component_simulator, push_to_webhook, until
from tests.support.kafka_io import read_topic
from tests.support.services import free_port

pytestmark = pytest.mark.broker


@pytest.fixture
def wechat() -> Iterator[SimulatorServer]:
    with component_simulator() as server:
        yield server


class Clock:
    """The token owners' clock, moved forward with the simulator's."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


async def test_two_token_owners_follow_three_ticket_rotations_and_an_unauthorized_push(
    make_settings: Callable[..., Settings], wechat: SimulatorServer
) -> None:
    settings = make_settings(
        topic_component=f"t{uuid.uuid4().hex[:8]}.component",
        webhook_port=free_port(),
        wechat_push_token=TOKEN,
        wechat_encoding_aes_key=KEY,
        wechat_token_mode="component",
        wechat_component_appid=DEMO_COMPONENT_APPID,
        wechat_component_secret=DEMO_COMPONENT_SECRET,
        wechat_component_verify_ticket=DEMO_VERIFY_TICKET,
        wechat_authorizer_refresh_tokens={a: r for a, (_, r) in DEFAULT_AUTHORIZERS.items()},
        wechat_base_url=wechat.base_url,
    )
    clock = Clock()
    stop, started = asyncio.Event(), asyncio.Event()
    async with httpx.AsyncClient(timeout=30) as http, httpx.AsyncClient(base_url=wechat.base_url, timeout=30) as sim:
        providers = [
            ComponentTokenProvider(
                http,
                component_appid=DEMO_COMPONENT_APPID,
                component_secret=DEMO_COMPONENT_SECRET,
                verify_ticket=DEMO_VERIFY_TICKET,
                refresh_tokens=settings.wechat_authorizer_refresh_tokens,
                base_url=wechat.base_url,
                clock=clock,
            )
            for _ in range(2)
        ]
        feeds = [ComponentFeed(settings, p) for p in providers]
        tasks = [asyncio.create_task(run_webhook(settings, stop, started=started))]
        await started.wait()
        tasks += [asyncio.create_task(f.run(stop)) for f in feeds]
        try:
            await push_to_webhook(sim, settings)
            for feed in feeds:
                await asyncio.wait_for(feed.caught_up.wait(), 30)
            for p in providers:
                await p.get(AUTHORIZER)  # both start on the configured ticket

            for rotation in range(1, 4):
                answer = (await sim.post("/_sim/clock/advance", json={"seconds": HOURS_5, "wait": True})).json()
                assert answer["delivered"] == [True], answer
                clock.offset += HOURS_5  # every cached token is past its 2 h now

                def all_applied(n: int = rotation) -> bool:
                    return all(f.applied >= n for f in feeds)

                await until(all_applied, f"rotation {rotation} on both instances")
                before = [p.component_refreshes for p in providers]
                tokens = [await p.get(AUTHORIZER) for p in providers]
                assert [p.component_refreshes for p in providers] == [b + 1 for b in before]
                assert all(t.value for t in tokens)

            # 15 simulated hours: the configured ticket is long dead at WeChat,
            # so only the followed tickets kept the refreshes working.
            refused = await http.post(
                f"{wechat.base_url}/cgi-bin/component/api_component_token",
                json={
                    "component_appid": DEMO_COMPONENT_APPID,
                    "component_appsecret": DEMO_COMPONENT_SECRET,
                    "component_verify_ticket": DEMO_VERIFY_TICKET,
                },
            )
            assert refused.json()["errcode"] == 61006

            answer = (await sim.post(f"/_sim/authorizers/{AUTHORIZER}/unauthorize", json={"wait": True})).json()
            assert answer["delivered"] == [True], answer
            await until(lambda: all(p.is_unauthorized(AUTHORIZER) for p in providers), "unauthorized on both instances")
            for p in providers:
                with pytest.raises(AuthorizerUnauthorizedError, match=AUTHORIZER):
                    await p.get(AUTHORIZER)
                assert (await p.get(OTHER)).value  # another authorizer is not affected
        finally:
            stop.set()
            for result in await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60):
                if isinstance(result, BaseException):
                    raise result

    # The compacted topic: tickets under the component appid, authorizations per authorizer.
    keys = {r.key.decode() for r in await read_topic(settings, settings.topic_component, read_committed=False)}
    assert keys == {DEMO_COMPONENT_APPID, f"{DEMO_COMPONENT_APPID}/{AUTHORIZER}"}


async def test_a_new_instance_starts_from_the_newest_ticket_on_the_topic(
    make_settings: Callable[..., Settings], wechat: SimulatorServer
) -> None:
    settings = make_settings(
        topic_component=f"t{uuid.uuid4().hex[:8]}.component",
        webhook_port=free_port(),
        wechat_push_token=TOKEN,
        wechat_encoding_aes_key=KEY,
        wechat_component_appid=DEMO_COMPONENT_APPID,
    )
    stop, started = asyncio.Event(), asyncio.Event()
    webhook = asyncio.create_task(run_webhook(settings, stop, started=started))
    await started.wait()
    try:
        async with httpx.AsyncClient(base_url=wechat.base_url, timeout=30) as sim:
            await push_to_webhook(sim, settings)
            for _ in range(3):
                assert (await sim.post("/_sim/clock/advance", json={"seconds": 600, "wait": True})).json()["delivered"] == [True]
    finally:
        stop.set()
        await asyncio.wait_for(webhook, 30)

    class Recorder:
        def __init__(self) -> None:
            self.tickets: list[str] = []

        def set_verify_ticket(self, ticket: str) -> None:
            self.tickets.append(ticket)

        def revoke_authorizer(self, appid: str) -> None:
            raise AssertionError(appid)

        def authorization_changed(self, appid: str) -> None:
            raise AssertionError(appid)

    recorder = Recorder()
    feed = ComponentFeed(settings, recorder)
    feed_stop = asyncio.Event()
    task = asyncio.create_task(feed.run(feed_stop))
    await asyncio.wait_for(feed.caught_up.wait(), 30)  # a late joiner: everything on the topic is applied
    feed_stop.set()
    await asyncio.wait_for(task, 30)
    assert recorder.tickets[-1] == wechat.sim.current_ticket(DEMO_COMPONENT_APPID)
    assert len(recorder.tickets) == 3  # not compacted yet: every push, oldest first, newest last
