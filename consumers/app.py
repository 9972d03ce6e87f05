"""Process wiring shared by the long-running commands: logging, metrics,
health endpoints, signals. Nothing is created at import time."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from adapters.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    metrics: Any
    health: Any
    stop: asyncio.Event


def configure(settings: Settings) -> None:
    from adapters.logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    for secret in (settings.wechat_secret, settings.wechat_component_secret, settings.kafka_sasl_password):
        if secret is not None:
            _register_secret(secret.get_secret_value())
    for token in settings.wechat_authorizer_refresh_tokens.values():
        _register_secret(token.get_secret_value())


def _register_secret(value: str) -> None:
    from adapters.logging import register_secret

    if value:
        register_secret(value)


@contextlib.asynccontextmanager
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Metrics/health server (if a port is set) and a stop event set by SIGTERM/SIGINT."""
    from adapters.health import HealthServer
    from adapters.metrics import Metrics

    metrics = Metrics()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health = None
    if settings.metrics_port is not None:
        health = HealthServer(metrics, host=settings.metrics_host, port=settings.metrics_port)
        await health.start()
    try:
        yield Runtime(settings, metrics, health, stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if health is not None:
            await health.stop()


async def run_until_stopped(*jobs: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run jobs side by side; the first to fail (or a signal) stops them all."""
    tasks = [asyncio.create_task(job(stop)) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                stop.set()
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
