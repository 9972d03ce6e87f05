"""What the commands show a person: rich tables on stdout, progress on stderr.

Every command that renders does it here, so the modules that read topics and
decide stay free of presentation, and tables look alike across commands.
``rich`` is imported inside the functions: commands that print nothing (the
services) never load it. One-line messages (warnings, a command's one-line
answer) are printed plainly, not through rich: rich would wrap them at the
console's width and read any ``[...]`` in them as markup.

Progress goes to stderr, so stdout keeps only the result (``--json -`` pipes
cleanly): a rich bar on a terminal, a log line every ``LOG_EVERY_S`` off one
(CI, a pod), or nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import structlog

from domain.reconcile import DIFFERENCE_KINDS, ReconcileReport, short

if TYPE_CHECKING:
    from adapters.topics import Difference, TopicSpec
    from consumers.dlq import DlqEntry, Reinjection
    from consumers.replay import ReplayResult

log = structlog.get_logger("invoice_sm.render")

#: Off a terminal, one progress line this often.
LOG_EVERY_S = 5.0


def _console(console: Any) -> Any:
    from rich.console import Console

    return console if console is not None else Console()


def _wide_console(console: Any) -> Any:
    """``console``, or stdout's: wide enough for topic names and keys when piped (rich assumes 80 columns then)."""
    from rich.console import Console

    return console if console is not None else Console(width=None if sys.stdout.isatty() else 160)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], console: Any = None) -> None:
    """A plain table."""
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    _wide_console(console).print(table)


# ------------------------------------------------------------------ progress


class Progress(Protocol):
    def advance(self, offsets: int, records: int) -> None: ...
    def close(self) -> None: ...


class _Silent:
    def advance(self, offsets: int, records: int) -> None:
        pass

    def close(self) -> None:
        pass


class _Bar:
    """A rich progress bar on stderr."""

    def __init__(self, total: int, description: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rec/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total or None, rate="-")
        self._started = time.perf_counter()
        self._records = 0
        self._progress.start()

    def advance(self, offsets: int, records: int) -> None:
        self._records += records
        elapsed = time.perf_counter() - self._started
        rate = f"{self._records / elapsed:,.0f}" if elapsed > 0 else "-"
        self._progress.update(self._task, advance=offsets, rate=rate)

    def close(self) -> None:
        self._progress.stop()


class _LogLines:
    """Off a terminal, a ``progress`` log line every ``LOG_EVERY_S`` instead of a bar."""

    def __init__(self, total: int, what: str) -> None:
        self._total = total
        self._what = what
        self._done = 0
        self._records = 0
        self._started = self._last = time.perf_counter()

    def advance(self, offsets: int, records: int) -> None:
        self._done += offsets
        self._records += records
        now = time.perf_counter()
        if now - self._last >= LOG_EVERY_S:
            self._last = now
            elapsed = now - self._started
            rate = self._done / elapsed if elapsed > 0 else 0.0
            eta = (self._total - self._done) / rate if rate > 0 else None
            log.info(
                "progress",
                task=self._what,
                done=self._done,
                total=self._total,
                percent=round(100 * self._done / self._total, 1) if self._total else 100.0,
                rate=round(self._records / elapsed) if elapsed > 0 else None,
                eta_s=round(eta, 1) if eta is not None else None,
            )

    def close(self) -> None:
        pass


def progress_reporter(enabled: bool, total: int, what: str) -> Progress:
    """A rich bar on a terminal, periodic log lines off one, or nothing."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        return _Bar(total, what)
    return _LogLines(total, what)


# ------------------------------------------------------------------ replay


def print_replay_summary(result: ReplayResult, console: Any = None) -> None:
    """The replay summary as a person reads it."""
    from rich.table import Table

    console = _console(console)
    s = result.summary()
    table = Table(title=f"replay of {result.topic}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("records read", f"{s['records']:,}")
    for kind, n in s["by_kind"].items():
        table.add_row(f"  {kind}", f"{n:,}")
    table.add_row("invalid (would go to the DLQ)", f"{s['invalid']:,}")
    for reason, n in s["invalid_by_reason"].items():
        table.add_row(f"  {reason}", f"{n:,}")
    table.add_row("invoices", f"{s['invoices']:,}")
    table.add_row("seconds", f"{s['seconds']:.2f}")
    table.add_row("rate", f"{s['rate_per_s']:,.0f} records/s")
    if result.state_topic:
        table.add_row("state records written", f"{result.state_records_written:,} -> {result.state_topic}")
    console.print(table)
    if not result.from_beginning:
        console.print("[yellow]replayed from a later offset: states hold only what followed it[/yellow]")
    if result.truncated_partitions:
        console.print(
            f"[yellow]partitions {result.truncated_partitions} no longer hold their first events (retention): "
            "states of their oldest invoices may be incomplete[/yellow]"
        )


# ------------------------------------------------------------------ reconcile


def print_reconcile_report(report: ReconcileReport, console: Any = None, *, examples: int = 5) -> None:
    """Counts by kind, then a few examples of each kind, then the repairs."""
    from rich.table import Table

    console = _console(console)
    verdict = "[bold green]clean[/]" if report.clean else f"[bold red]{len(report.differences):,} differences[/]"
    console.print(f"reconcile of {report.invoices:,} invoices: {verdict}")
    counts = Table(title="differences by kind", title_justify="left")
    counts.add_column("kind", style="bold")
    counts.add_column("count", justify="right")
    counts.add_column("meaning")
    for kind, meaning in DIFFERENCE_KINDS.items():
        n = report.counts[kind]
        counts.add_row(kind, f"{n:,}", meaning, style=None if n else "dim")
    console.print(counts)
    for kind, items in report.by_kind().items():
        if not items:
            continue
        table = Table(title=f"{kind}: {len(items):,} (first {min(examples, len(items))})", title_justify="left")
        table.add_column("invoice")
        table.add_column("partition", justify="right")
        table.add_column("expected")
        table.add_column("observed")
        table.add_column("detail")
        for d in items[:examples]:
            table.add_row(d.key, "" if d.partition is None else str(d.partition), d.expected or "", d.observed or "", d.detail)
        console.print(table)
    _print_waiting(report, console, examples=examples)
    for title, plans in (
        ("repairs enqueued" if report.repair_requested else "repairs --repair would enqueue", report.repairs),
        ("repairs still pending (not sent again)", report.pending),
    ):
        if not plans:
            continue
        table = Table(title=f"{title}: {len(plans):,} (first {min(examples, len(plans))})", title_justify="left")
        for name in ("invoice", "partition", "move", "reason", "idempotency key"):
            table.add_column(name)
        for p in plans[:examples]:
            table.add_row(
                p.key,
                str(p.partition),
                f"{short(p.from_status)} -> {short(p.to_status)} (v{p.version})",
                p.reason,
                p.idempotency_key,
            )
        console.print(table)
    for note in _reconcile_notes(report):
        console.print(f"- {note}")


def _print_waiting(report: ReconcileReport, console: Any, *, examples: int) -> None:
    """The deliverer's waiting room: counts by reason, then the longest-waiting
    invoices (partition and next try are in the JSON report)."""
    from rich.table import Table

    waiting = report.waiting
    if not waiting.invoices:
        return
    counts = Table(
        title=f"waiting deliveries (delayed, not differences): {waiting.deliveries:,} in {len(waiting.invoices):,} invoices",
        title_justify="left",
    )
    counts.add_column("reason", style="bold")
    counts.add_column("deliveries", justify="right")
    for reason, n in waiting.by_reason.items():
        counts.add_row(reason, f"{n:,}", style=None if n else "dim")
    console.print(counts)
    shown = waiting.invoices[:examples]
    table = Table(title=f"waiting invoices, longest first (first {len(shown)})", title_justify="left")
    for name in ("invoice", "appid", "reason", "versions", "waiting since", "for"):
        table.add_column(name, overflow="fold")
    for invoice in shown:
        table.add_row(
            invoice.key,
            invoice.appid,
            invoice.reason,
            ", ".join(f"v{v}" for v in invoice.versions),
            _moment(invoice.since),
            _duration((waiting.now - invoice.since).total_seconds()),
        )
    console.print(table)


def _moment(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _reconcile_notes(report: ReconcileReport) -> list[str]:
    notes = []
    unrepairable = report.counts["unrepairable"]
    if report.in_flight:
        notes.append(f"{report.in_flight:,} invoices have a delivery in flight (not counted as differences)")
    if report.waiting.invoices:
        reasons = ", ".join(f"{r} {n:,}" for r, n in report.waiting.by_reason.items() if n)
        notes.append(
            f"{len(report.waiting.invoices):,} invoices have deliveries waiting in the deliverer's waiting room "
            f"({reasons}; not counted as differences: they are delayed, not lost)"
        )
    if report.wechat_asked and report.wechat_unchecked:
        notes.append(f"{report.wechat_unchecked:,} cards not asked (no appid in state nor INVOICE_SM_WECHAT_APPID)")
    elif not report.wechat_asked:
        notes.append("WeChat not asked (give --wechat-sim-url): repairs judged from the last delivered status")
    for topic, n in report.undecodable.items():
        notes.append(f"{n:,} undecodable records in {topic} ignored")
    truncated = (report.replay or {}).get("truncated_partitions")
    if truncated:
        notes.append(f"[yellow]invoice.events partitions {truncated} lost their first events to retention[/]")
    if report.repair_requested:
        notes.append(
            f"repair: {report.enqueued:,} enqueued, {len(report.pending):,} already pending, {unrepairable:,} unrepairable"
        )
    elif report.repairs:
        notes.append(f"{len(report.repairs):,} repairs would be enqueued by --repair ({len(report.pending):,} already pending)")
    return notes


# ------------------------------------------------------------------ dlq


def print_dlq_entries(entries: Sequence[DlqEntry], console: Any = None, *, width: int = 60) -> None:
    """DLQ records, one row each (value and error cut to ``width``), then counts by reason."""
    from rich.table import Table

    console = _console(console)
    table = Table(title=f"{len(entries)} DLQ records", title_justify="left")
    for name in ("dlq", "reason", "source", "failed at", "key", "error", "value"):
        table.add_column(name, overflow="fold")
    for e in entries:
        v = e.view
        value = v.value if v.value is not None else (f"base64:{v.value_base64}" if v.value_base64 else "(null)")
        table.add_row(
            e.short,
            v.reason,
            f"{v.source_partition}:{v.source_offset}",
            v.failed_at,
            v.key or "(none)",
            v.error_message[:width],
            value[:width] + ("…" if len(value) > width else ""),
        )
    console.print(table)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.view.reason] = counts.get(e.view.reason, 0) + 1
    if counts:
        console.print("by reason: " + ", ".join(f"{r} {n}" for r, n in sorted(counts.items())))


def print_missing_dlq_records(positions: Sequence[tuple[int, int]], err: TextIO | None = None) -> None:
    """A warning on stderr per chosen DLQ position that holds no record."""
    for partition, offset in positions:
        print(f"warning: no DLQ record at {partition}:{offset}", file=err or sys.stderr)


def print_reinjection(
    item: Reinjection, topic: str, *, line: bool = True, out: TextIO | None = None, err: TextIO | None = None
) -> None:
    """One chosen DLQ record: a warning on stderr when it was skipped or refused,
    then (``line``: not in ``--json`` mode) where it went, or would go, on stdout."""
    if item.status in ("skipped_already_reinjected", "refused"):
        print(f"warning: dlq {item.entry.short} ({item.entry.view.reason}) {item.status}: {item.detail}", file=err or sys.stderr)
    if not line:
        return
    if item.status == "sent" and item.sent_to is not None:
        print(f"dlq {item.entry.short} -> {topic} {item.sent_to[0]}:{item.sent_to[1]}", file=out)
    elif item.status == "would_send":
        print(f"dlq {item.entry.short} would be sent (key {item.key!r})", file=out)


# ------------------------------------------------------------------ topics


def _retention(ms: int | None) -> str:
    """A topic's retention as the table shows it."""
    if ms is None:
        return "compacted"
    if ms < 0:
        return "never"
    return f"{ms / 86_400_000:g} d" if ms >= 86_400_000 else f"{ms} ms"


def print_topic_table(specs: Sequence[TopicSpec], console: Any = None) -> None:
    """``topics describe``: the table the settings give."""
    print_table(
        "topics",
        ["topic", "role", "key", "cleanup", "retention", "partitions", "replication", "min ISR"],
        [
            [
                s.name,
                s.role,
                s.key,
                s.cleanup,
                _retention(s.retention_ms),
                str(s.partitions),
                str(s.replication_factor),
                str(s.min_insync_replicas),
            ]
            for s in specs
        ],
        console,
    )


def print_partition_counts(counts: Mapping[str, int], out: TextIO | None = None) -> None:
    """``topics create``: each topic's partitions."""
    for name, n in counts.items():
        print(f"{name}: {n} partitions", file=out)


def print_topic_check(topics: int, differences: Sequence[Difference], console: Any = None, out: TextIO | None = None) -> None:
    """``topics check``: the differences as a table, or one line saying there are none."""
    if differences:
        print_table(
            "topics differing from the table",
            ["topic", "setting", "table", "cluster"],
            [[d.topic, d.setting, d.expected, d.actual] for d in differences],
            console,
        )
    else:
        print(f"{topics} topics as the table says", file=out)


# ------------------------------------------------------------------ status


def print_no_service(url: str, error: str, err: TextIO | None = None) -> None:
    """``status``: no service answered at ``url``; the command reads the topics itself."""
    print(f"invoice-sm status: no service answers at {url} ({error}); reading the topics directly", file=err or sys.stderr)


def print_invoice_answers(answers: Sequence[tuple[int, Mapping[str, Any]]], console: Any = None) -> None:
    """``status``: per key, what the service knows (a table), its last events
    (oldest first), whether the history was cut, and the notes; a key not
    answered gets one line and its notes."""
    console = _wide_console(console)
    for code, body in answers:
        if code == 200:
            _print_invoice(body, console)
        else:
            _print_unanswered(code, body, console)


def _print_unanswered(code: int, body: Mapping[str, Any], console: Any) -> None:
    from rich.markup import escape

    what = "not found" if code == 404 else f"error {code}: {escape(str(body.get('error')))}"
    console.print(f"[bold]{escape(str(body.get('key', '?')))}[/]: {what}", highlight=False)
    _print_status_notes(body, console)


def _print_invoice(body: Mapping[str, Any], console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(str(body.get("key", "?"))), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    for field, value in _invoice_fields(body):
        table.add_row(field, escape(value))
    console.print(table)
    events = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
    for column in ("processed", "event", "type", "decision", "from -> to", "v", "reason"):
        events.add_column(column)
    for event in body["events"]:
        events.add_row(*(escape(cell) for cell in _event_row(event)))
    console.print(events)
    if not body.get("history_complete", True):
        console.print("  [yellow]history cut: older records were not read[/]")
    _print_status_notes(body, console)


def _print_status_notes(body: Mapping[str, Any], console: Any) -> None:
    from rich.markup import escape

    for note in body.get("notes", []):
        console.print(f"  [dim]{escape(note)}[/]", highlight=False)


def _invoice_fields(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The rows of a found invoice's table, as (field, plain text)."""
    answered = body["source"] + (f" {body['answered_by']}" if body.get("answered_by") else "")
    delivery = body.get("last_delivery")
    rows = [
        ("status", f"{body['status']}  (version {body['version']})"),
        ("appid", body["appid"] or "-"),
        ("updated", body.get("updated_at") or "-"),
        ("from", f"{answered}, partition {body['partition']}"),
        (
            "last delivery",
            f"v{delivery['version']} {delivery['reimburse_status']}: {delivery['result']} "
            f"(errcode {delivery['errcode']}, {delivery['attempts']} attempts, {delivery['completed_at']})"
            if delivery
            else "none found",
        ),
    ]
    if body.get("delivery_pending"):
        rows.append(("", "a newer accepted status is on its way to WeChat"))
    return rows


def _event_row(event: Mapping[str, Any]) -> tuple[str, ...]:
    """One row of the events table, as plain text."""
    move = f"{event['from_status']} -> {event['to_status'] or event['requested_status']}"
    cells = (
        event["processed_at"],
        event["event_id"],
        event["event_type"],
        event["decision"],
        move,
        event["version"],
        event["reason"] or "",
    )
    return tuple(str(cell) for cell in cells)
