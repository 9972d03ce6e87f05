"""What the component-mode tests share: the push configuration of the
simulated third-party platform, its simulator, and a polling helper."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

from adapters.settings import Settings
from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import DEFAULT_AUTHORIZERS, DEMO_COMPONENT_APPID

#: The platform's push Token and EncodingAESKey (test values).
TOKEN = "component-push-token"
KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
AUTHORIZER, OTHER = list(DEFAULT_AUTHORIZERS)
HOURS_5 = 5 * 3600


@contextmanager
def component_simulator() -> Iterator[SimulatorServer]:
    # Every instance holds the configured refresh tokens: the old one keeps
    # working after a rotation (how WeChat treats authorizer_refresh_token).
    with SimulatorServer(WeChatSimulator(keep_old_refresh_token=True)) as server:
        yield server


async def push_to_webhook(sim: httpx.AsyncClient, settings: Settings) -> None:
    """Have the simulated platform push its component events to the webhook of ``settings``."""
    await sim.post(
        "/_sim/pushes/config",
        json={
            "component_url": f"http://127.0.0.1:{settings.webhook_port}/wechat/component",
            "token": TOKEN,
            "encoding_aes_key": KEY,
            "component_appid": DEMO_COMPONENT_APPID,
        },
    )


async def until(predicate: Callable[[], bool], what: str, *, timeout: float = 30) -> None:
    """Poll ``predicate`` every 50 ms; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
