"""Running the service's parts from tests: in-process loops and the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

from adapters import wire
from adapters.settings import Settings
from consumers.processor import Processor
from domain.model import InvoiceState
from tests.support.kafka_io import read_topic
from tests.support.processes import REPO, settings_env


@contextlib.asynccontextmanager
async def running(settings: Settings, **kwargs: Any) -> AsyncIterator[Processor]:
    """A processor running in the test's event loop until the block ends."""
    processor = Processor(settings, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        yield processor
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def run_cli(settings: Settings, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``invoice-sm ARGS`` in a child process without blocking the test's loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumers",
        *args,
        cwd=REPO,
        env=settings_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())


async def live_states(settings: Settings) -> dict[str, InvoiceState]:
    """The latest invoice.state record per key."""
    out: dict[str, InvoiceState] = {}
    for record in await read_topic(settings, settings.topic_state):
        assert record.key is not None and record.value is not None
        out[record.key.decode()] = wire.decode_state(record.value)
    return out


def free_port() -> int:
    """A port on 127.0.0.1 free right now (for a service's metrics port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(client: Any, service: Any, url: str, *, attempts: int = 300) -> Any:
    """Poll ``url``/readyz until it answers 200 while ``service`` stays alive;
    returns the last answer (``None`` when none came)."""
    import httpx

    answer = None
    for _ in range(attempts):
        assert service.alive(), service.log_text()[-3000:]
        try:
            answer = await client.get(f"{url}/readyz")
            if answer.status_code == 200:
                return answer
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    return answer
