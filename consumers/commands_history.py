"""Commands: replay, reconcile, dlq. Each decodes its arguments and hands on
to ``consumers.replay``, ``consumers.reconcile`` or ``consumers.dlq``.

``--state-dir`` is the settings flag every command has (the processor's
``INVOICE_SM_STATE_DIR``); replay and reconcile honour it only when given on
their command line, and then build under ``DIR/replay/``, never in the
processor's stores. From the environment it is ignored here, so a replay
never touches a live store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from adapters.settings import Settings
from consumers.cli import (
    EXIT_CONFIG,
    EXIT_DIFFERENCES,
    EXIT_FAILED,
    EXIT_OK,
)


def _write_json(path: str, data: Any) -> None:
    target = sys.stdout if path == "-" else None
    text = json.dumps(data, indent=2, sort_keys=False, default=str)
    if target is not None:
        target.write(text + "\n")
    else:
        Path(path).write_text(text + "\n")


def _explicit_state_dir(args: argparse.Namespace) -> Path | None:
    value = getattr(args, "setting_state_dir", None)
    return Path(value) if value else None


# ------------------------------------------------------------------ replay


def replay_arguments(p: argparse.ArgumentParser) -> None:
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-time", metavar="ISO", help="start at the first event at or after this time (UTC if no zone)")
    start.add_argument(
        "--from-offset",
        metavar="P:O[,P:O...]",
        help="start these partitions at these offsets (partitions not named start at the beginning)",
    )
    p.add_argument("--in-memory", action="store_true", help="keep rebuilt states in memory (small topics)")
    p.add_argument(
        "--write-state-topic",
        metavar="TOPIC",
        help="write the rebuilt states (latest per invoice) to this compacted topic; the only side effect replay has",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="allow --write-state-topic to name a live topic, or to write from a history whose beginning is gone",
    )
    p.add_argument("--json", metavar="PATH", help="write the summary as JSON to PATH ('-' for stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress log lines")
    p.epilog = (
        "Rebuilt states go to a temporary directory (deleted at exit), to DIR/replay/ with an explicit "
        "--state-dir DIR, or to memory with --in-memory. No WeChat call and no write to a live topic is made."
    )


def replay_command(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.app import configure
    from consumers.render import print_replay_summary
    from consumers.replay import parse_offsets, parse_time, replay

    configure(settings)
    from_offsets = parse_offsets(args.from_offset) if args.from_offset else None
    from_time = parse_time(args.from_time) if args.from_time else None

    async def main() -> dict[str, Any]:
        result = await replay(
            settings,
            from_offsets=from_offsets,
            from_time=from_time,
            in_memory=args.in_memory,
            state_dir=_explicit_state_dir(args),
            write_state_topic=args.write_state_topic,
            allow_live_topic=args.force,
            allow_truncated=args.force,
            progress=not args.no_progress,
        )
        with result:
            if args.json != "-":
                print_replay_summary(result)
            return result.summary()

    summary = asyncio.run(main())
    if args.json:
        _write_json(args.json, summary)
    return EXIT_OK


# ------------------------------------------------------------------ reconcile


def reconcile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wechat-sim-url", metavar="URL", help="ask the WeChat simulator's control API for each card's status")
    p.add_argument("--repair", action="store_true", help="enqueue invoice.status.repair outcomes for what WeChat has wrong")
    p.add_argument(
        "--force",
        action="store_true",
        help="--repair even when invoice.events no longer holds its beginning (retention truncated it)",
    )
    p.add_argument("--json", metavar="PATH", help="write the report as JSON to PATH ('-' for stdout)")
    p.add_argument(
        "--grace-s",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="accepted outcomes younger than this without a delivery record are in flight, not missing (default 30)",
    )
    p.add_argument("--examples", type=int, default=5, metavar="N", help="examples shown per kind (default 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress log lines")
    p.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="write invoice_sm_divergences_total{kind} to PATH in the Prometheus text format "
        "(for node_exporter's textfile collector; deploy/alerts.yml alerts on it)",
    )
    p.epilog = (
        "Exit codes: 0 no differences, 3 differences found (also after --repair: they remain until delivered), "
        "1 failure, 2 configuration error. The replay is in memory, or on disk under DIR/replay/ with an explicit "
        "--state-dir DIR."
    )


def reconcile_command(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.metrics import NULL_METRICS, Metrics
    from consumers.app import configure
    from consumers.reconcile import reconcile
    from consumers.render import print_reconcile_report

    configure(settings)
    metrics = Metrics() if args.metrics_file else NULL_METRICS
    report = asyncio.run(
        reconcile(
            settings,
            wechat_sim_url=args.wechat_sim_url,
            repair=args.repair,
            grace_s=args.grace_s,
            state_dir=_explicit_state_dir(args),
            progress=not args.no_progress,
            metrics=metrics,
            force=args.force,
        )
    )
    if args.metrics_file:
        from prometheus_client import write_to_textfile

        write_to_textfile(args.metrics_file, metrics.registry)
    if args.json != "-":
        print_reconcile_report(report, examples=args.examples)
    if args.json:
        _write_json(args.json, report.to_json())
    return EXIT_OK if report.clean else EXIT_DIFFERENCES


# ------------------------------------------------------------------ dlq


def dlq_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "reinject"), help="list the DLQ, or re-inject records into invoice.events")
    p.add_argument("--reason", metavar="R", help="only records with this DLQ reason (list filter; reinject selection)")
    p.add_argument("--limit", type=int, metavar="N", help="list: at most N records, oldest first")
    p.add_argument("--json", action="store_true", help="list: JSON lines (DlqRecord); reinject: JSON lines of results")
    pick = p.add_argument_group("reinject: which records (one of)")
    pick.add_argument("--offsets", metavar="P:O[,P:O...]", help="DLQ partition:offset positions")
    pick.add_argument("--all", action="store_true", help="every record in the DLQ")
    p.add_argument(
        "--from-file",
        metavar="JSONL",
        help="reinject: corrected event lines instead of the originals, paired in DLQ order with the chosen records",
    )
    p.add_argument("--dry-run", action="store_true", help="reinject: show what would be sent, send nothing")
    p.add_argument("--force", action="store_true", help="reinject: send records already re-injected again")
    p.add_argument("--allow-invalid", action="store_true", help="reinject: send records that would fail again")


def dlq_command(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.app import configure

    configure(settings)
    if args.action == "list":
        return _dlq_list(settings, args)
    return _dlq_reinject(settings, args)


def _dlq_list(settings: Settings, args: argparse.Namespace) -> int:
    import msgspec

    from consumers.dlq import read_dlq
    from consumers.render import print_dlq_entries

    entries = asyncio.run(read_dlq(settings, reason=args.reason, limit=args.limit))
    if args.json:
        for entry in entries:
            sys.stdout.write(msgspec.json.encode(entry.view).decode() + "\n")
    else:
        print_dlq_entries(entries)
    return EXIT_OK


def _dlq_reinject(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.dlq import parse_positions, read_corrected, read_dlq, reinject
    from consumers.render import print_missing_dlq_records, print_reinjection

    chosen = [bool(args.offsets), bool(args.all), bool(args.reason)]
    if sum(chosen) != 1:
        print("invoice-sm dlq reinject: choose records with exactly one of --offsets, --reason, --all", file=sys.stderr)
        return EXIT_CONFIG
    positions = parse_positions(args.offsets) if args.offsets else None
    corrected = read_corrected(args.from_file) if args.from_file else None

    async def main() -> tuple[Any, list[tuple[int, int]]]:
        entries = await read_dlq(settings, reason=args.reason, positions=positions)
        found = {(e.record.partition, e.record.offset) for e in entries}
        absent = sorted((positions or set()) - found)
        report = await reinject(
            settings, entries, corrected=corrected, dry_run=args.dry_run, force=args.force, allow_invalid=args.allow_invalid
        )
        return report, absent

    report, absent = asyncio.run(main())
    print_missing_dlq_records(absent)
    for item in report.items:
        print_reinjection(item, settings.topic_events, line=not args.json)
        if args.json:
            print(json.dumps(item.to_json()))
    print(json.dumps(report.summary()))
    if absent or report.count("refused"):
        return EXIT_FAILED
    return EXIT_OK
