"""Commands: deliver, run, webhook. (The demo is a developer tool: ``python -m devtools demo``.)"""

from __future__ import annotations

import argparse
import asyncio

from adapters.settings import Settings
from consumers.cli import EXIT_OK


def run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in-memory-state", action="store_true", help="processor state in memory (trials only)")


def deliver(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.app import configure, run_until_stopped, runtime
    from consumers.deliverer import Deliverer

    settings.require_wechat()
    configure(settings)

    async def main() -> None:
        async with runtime(settings) as rt:
            deliverer = Deliverer(settings, metrics=rt.metrics)
            if rt.health is not None:
                rt.health.add_readiness_check("deliverer", deliverer.ready_flag.is_set)
            await run_until_stopped(deliverer.run, stop=rt.stop)

    asyncio.run(main())
    return EXIT_OK


def run(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.app import configure, run_until_stopped, runtime
    from consumers.deliverer import Deliverer
    from consumers.processor import Processor

    settings.require_wechat()
    if settings.webhook_port is not None:
        from consumers.webhook import build_config

        build_config(settings)  # the webhook's settings stop the start before anything runs
    configure(settings)

    async def main() -> None:
        async with runtime(settings) as rt:
            processor = Processor(settings, metrics=rt.metrics, in_memory_state=args.in_memory_state)
            deliverer = Deliverer(settings, metrics=rt.metrics)
            if rt.health is not None:
                rt.health.add_readiness_check("processor", processor.is_ready)
                rt.health.add_readiness_check("deliverer", deliverer.ready_flag.is_set)
            if rt.invoices is not None:
                rt.invoices.answer_from(processor)
            jobs = [processor.run, deliverer.run]
            if settings.webhook_port is not None:  # the webhook runs inside `run` once it has a port
                from consumers.webhook import run_webhook

                jobs.append(lambda stop: run_webhook(settings, stop, metrics=rt.metrics))
            await run_until_stopped(*jobs, stop=rt.stop)

    asyncio.run(main())
    return EXIT_OK


def webhook(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.app import configure, run_until_stopped, runtime
    from consumers.webhook import build_config, run_webhook

    build_config(settings)  # a missing or malformed setting stops the start, named
    configure(settings)

    async def main() -> None:
        async with runtime(settings) as rt:
            await run_until_stopped(lambda stop: run_webhook(settings, stop, metrics=rt.metrics), stop=rt.stop)

    asyncio.run(main())
    return EXIT_OK
