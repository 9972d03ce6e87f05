"""Process wiring shared by the long-running commands: logging, metrics,
health endpoints, signals. Nothing is created at import time."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapters.settings import Settings
from consumers import early_stop

if TYPE_CHECKING:
    from adapters.health import HealthServer
    from adapters.metrics import Metrics
    from consumers.commands_status import InvoiceQuery


@dataclass(frozen=True)
class Runtime:
    """What a long-running command is handed: its metrics, the health server
    (``None`` without ``INVOICE_SM_METRICS_PORT``) and the stop event."""

    metrics: Metrics
    health: HealthServer | None
    stop: asyncio.Event
    #: Behind ``GET /invoices/{card_id}/{code}`` (``None`` without a health server);
    #: a command that runs a processor hands it over with ``invoices.answer_from``.
    invoices: InvoiceQuery | None = None


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


#: Young-generation threshold of the cyclic garbage collector for the
#: long-running commands (CPython's default is 700). Every consumed record
#: allocates a handful of tracked objects (aiokafka's ConsumerRecord and its
#: headers list, the batch's lists and tuples), so at the default the
#: processor ran ~750 young, ~70 middle and 6 full collections per 200,000
#: benchmark events: 0.53 s of its 9.2 s CPU. At 10,000 that was 0.24 s, at
#: 50,000 0.14 s (with pauses of ~27 ms); 20,000 sits between. Side by side
#: with the code before (``./dev bench --processor-baseline``) the processor
#: went from 32.3 to 30.0 CPU us/event. Nothing relies on cycles being
#: collected early: a young generation of 20,000 objects is a few MiB.
GC_YOUNG_THRESHOLD = 20_000


def tune_garbage_collector() -> None:
    """Steady-state collector settings for a long-running command.

    ``gc.freeze`` moves everything alive now (modules, classes, settings:
    hundreds of thousands of objects) to a generation no collection scans
    again, so full collections only walk what the service made since; the
    thresholds make young collections rare. Called once the command's code is
    imported and before its loop starts (``runtime``; the benchmark's ceiling
    calls it too, so the two are compared under the same collector).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


@contextlib.asynccontextmanager
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """Metrics/health server (if a port is set) and a stop event set by SIGTERM/SIGINT."""
    from adapters.health import HealthServer
    from adapters.metrics import Metrics

    tune_garbage_collector()
    metrics = Metrics()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if early_stop.take():
        stop.set()  # asked to stop while starting: start, then stop in order
    health = None
    invoices = None
    if settings.metrics_port is not None:
        from adapters.owners import advertised_url
        from consumers.commands_status import InvoiceQuery

        health = HealthServer(metrics, host=settings.metrics_host, port=settings.metrics_port)
        await health.start()
        # Every instance with a port answers about any invoice (forwarding or
        # reading the topics); one with a processor, from its stores too.
        invoices = InvoiceQuery(settings, url=advertised_url(settings) or health.url)
        health.set_invoice_query(invoices.handle)
    try:
        yield Runtime(metrics, health, stop, invoices)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if health is not None:
            await health.stop()
        if invoices is not None:
            await invoices.close()


async def run_until_stopped(*jobs: Callable[[asyncio.Event], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run jobs side by side; the first to fail (or a signal) stops them all."""
    tasks: list[asyncio.Future[None]] = [asyncio.ensure_future(job(stop)) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                stop.set()
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
