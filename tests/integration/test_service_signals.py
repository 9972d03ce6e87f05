"""A SIGTERM that reaches a service while it is still starting (a rolling
restart that does not wait for readiness) stops it in order, exit code 0,
instead of Python's default death by signal (-15) half way through its start."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.settings import Settings
from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import DEFAULT_ACCOUNTS
from tests.factories import APPID
from tests.support.processes import Service

pytestmark = [pytest.mark.broker]


# Early (still importing) and later (connecting, joining the group), across the three services.
@pytest.mark.parametrize(("command", "after_s"), [("process", 0.3), ("deliver", 1.0), ("run", 0.3), ("process", 1.0)])
def test_a_sigterm_during_start_up_stops_the_service_cleanly(
    make_settings: Callable[..., Settings], tmp_path: Path, command: str, after_s: float
) -> None:
    with SimulatorServer(WeChatSimulator()) as server:
        settings = make_settings(wechat_base_url=server.base_url, wechat_appid=APPID, wechat_secret=DEFAULT_ACCOUNTS[APPID])
        service = Service(command, settings, tmp_path / "service.log")
        try:
            # After the interpreter is up (the recorder is the first thing it
            # installs), before the service has finished importing or joining.
            time.sleep(after_s)
            assert service.alive(), service.log_text()[-2000:]
            assert service.terminate(timeout=60) == 0, service.log_text()[-3000:]
        finally:
            service.close()
