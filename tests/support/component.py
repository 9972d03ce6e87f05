"""What the component-mode tests share: the push configuration of the
simulated third-party platform, its simulator, and a polling helper."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import DEFAULT_AUTHORIZERS

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


async def until(predicate: Callable[[], bool], what: str, *, timeout: float = 30) -> None:
    """Poll ``predicate`` every 50 ms; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
