"""Commands: deliver, run, demo."""

from __future__ import annotations

import argparse
import asyncio

from adapters.settings import Settings
from consumers.cli import EXIT_OK, arguments, command


def _service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in-memory-state", action="store_true", help="processor state in memory (trials only)")


@command("deliver", "Push accepted statuses to WeChat updatestatus: in order per invoice, with idempotency keys.")
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


@command("run", "Run the processor and the deliverer in one process.")
@arguments(_service_args)
def run(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.app import configure, run_until_stopped, runtime
    from consumers.deliverer import Deliverer
    from consumers.processor import Processor

    settings.require_wechat()
    configure(settings)

    async def main() -> None:
        async with runtime(settings) as rt:
            processor = Processor(settings, metrics=rt.metrics, in_memory_state=args.in_memory_state)
            deliverer = Deliverer(settings, metrics=rt.metrics)
            if rt.health is not None:
                rt.health.add_readiness_check("processor", processor.is_ready)
                rt.health.add_readiness_check("deliverer", deliverer.ready_flag.is_set)
            await run_until_stopped(processor.run, deliverer.run, stop=rt.stop)

    asyncio.run(main())
    return EXIT_OK


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--invoices", type=int, default=300, help="how many invoices the sample stream covers")
    p.add_argument("--use-broker", metavar="HOST:PORT", help="use this broker instead of starting one")
    p.add_argument("--keep", action="store_true", help="keep broker and simulator running afterwards")


@command("demo", "Everything locally: broker, WeChat simulator, processor, deliverer, a sample stream, a summary.")
@arguments(_demo_args)
def demo(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.demo import run_demo

    return run_demo(args.invoices, args.use_broker, args.keep)
