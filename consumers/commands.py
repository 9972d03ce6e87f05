"""The commands of ``invoice-sm``: each decodes its arguments and hands on."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from adapters.settings import Settings
from consumers.cli import EXIT_FAILED, EXIT_OK


def process_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in-memory-state", action="store_true", help="keep state in memory (tests and trials only)")


def process(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.app import configure, run_until_stopped, runtime
    from consumers.processor import Processor

    configure(settings)

    async def main() -> None:
        async with runtime(settings) as rt:
            processor = Processor(settings, metrics=rt.metrics, in_memory_state=args.in_memory_state)
            if rt.health is not None:
                rt.health.add_readiness_check("processor", processor.is_ready)
            if rt.invoices is not None:
                rt.invoices.answer_from(processor)
            await run_until_stopped(processor.run, stop=rt.stop)

    asyncio.run(main())
    return EXIT_OK


def publish_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", default="-", help="JSONL file of CloudEvents (default: stdin)")
    p.add_argument("--allow-invalid", action="store_true", help="send lines that would go to the DLQ too (trials)")


def publish(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.publish import open_input, publish_lines, read_lines

    with open_input(args.input) as stream:
        report = asyncio.run(publish_lines(settings, read_lines(stream), allow_invalid=args.allow_invalid))
    for number, why in report.refused:
        print(f"line {number}: refused: {why}", file=sys.stderr)
    print(json.dumps({"sent": report.sent, "refused": len(report.refused)}))
    return EXIT_FAILED if report.refused else EXIT_OK


def schemas_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--write", action="store_true", help="write schemas/*.schema.json and schemas/asyncapi.json")
    p.add_argument("--check", action="store_true", help="exit 1 if the checked-in files differ")


def schemas(settings: Settings, args: argparse.Namespace) -> int:
    from schemas import generated_files, schema_dir

    files = generated_files(settings)
    if args.write:
        for name, text in files.items():
            (schema_dir() / name).write_text(text)
        print(f"wrote {len(files)} files to {schema_dir()}")
        return EXIT_OK
    if args.check:
        stale = [n for n, text in files.items() if not (schema_dir() / n).exists() or (schema_dir() / n).read_text() != text]
        for name in stale:
            print(f"stale: schemas/{name}", file=sys.stderr)
        return EXIT_FAILED if stale else EXIT_OK
    for name, text in files.items():
        print(f"# {name}\n{text}")
    return EXIT_OK
