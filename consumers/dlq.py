"""``invoice-sm dlq``: inspect ``invoice.events.dlq`` and re-inject its records.

A DLQ record is the original record (key, value and headers byte for byte)
plus ``dlq.*`` headers naming the error (``wire.DLQ_HEADERS``). ``list``
shows them as ``wire.DlqRecord``; ``reinject`` sends chosen ones back to
``invoice.events`` once the cause is fixed:

* the original key, value and headers, minus every ``dlq.*`` header, or
* with ``--from-file``, corrected event lines (one per chosen record, in
  DLQ order), keyed by their own invoice key as ``publish`` keys them.

Every re-injected record carries ``dlq.reinjected.from: TOPIC/PARTITION/OFFSET``
(its DLQ position). Before sending, ``invoice.events`` is scanned for that
header, and a DLQ record already re-injected is skipped with a warning
unless ``force``: the topic itself remembers what was re-injected, so the
guard holds across machines and operators. A record that would be refused
again (it still does not decode under the current settings) is not sent
unless ``allow_invalid``: it would only come back to the DLQ.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from adapters import kafka, partition_reader, wire
from adapters.settings import Settings
from consumers.publish import key_of
from domain.errors import ConfigurationError, InvalidEventError

REINJECTED_HEADER = "dlq.reinjected.from"
_DLQ_PREFIX = "dlq."
_ERROR_HEADERS = frozenset(wire.DLQ_HEADERS.values())


class _Record(Protocol):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def dlq_position(topic: str, partition: int, offset: int) -> str:
    """The value of ``dlq.reinjected.from``."""
    return f"{topic}/{partition}/{offset}"


def parse_positions(text: str) -> set[tuple[int, int]]:
    """``"0:12,2:7"`` -> ``{(0, 12), (2, 7)}`` (DLQ partition and offset)."""
    out: set[tuple[int, int]] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        p, sep, o = part.partition(":")
        if not sep or not p.strip().isdigit() or not o.strip().isdigit():
            raise ConfigurationError("--offsets", f"{part!r} is not PARTITION:OFFSET")
        out.add((int(p), int(o)))
    if not out:
        raise ConfigurationError("--offsets", "no PARTITION:OFFSET given")
    return out


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "backslashreplace")


def _int(raw: bytes | None, default: int = -1) -> int:
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return default


def to_dlq_record(record: _Record) -> wire.DlqRecord:
    """The printable view of a DLQ record. Headers hold the original headers
    (without the error headers); a value that is not UTF-8 comes as base64."""
    headers = list(record.headers or ())
    h = {k: v for k, v in headers if k in _ERROR_HEADERS}
    names = wire.DLQ_HEADERS
    value: str | None = None
    value_base64: str | None = None
    if record.value is not None:
        try:
            value = record.value.decode("utf-8")
        except UnicodeDecodeError:
            value_base64 = base64.b64encode(record.value).decode()
    failed_at = _text(h.get(names["failed_at"])) or (
        datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
    return wire.DlqRecord(
        reason=_text(h.get(names["reason"])) or "unknown",
        error_class=_text(h.get(names["error_class"])) or "",
        error_message=_text(h.get(names["error_message"])) or "",
        source_topic=_text(h.get(names["source_topic"])) or "",
        source_partition=_int(h.get(names["source_partition"])),
        source_offset=_int(h.get(names["source_offset"])),
        failed_at=failed_at,
        key=_text(record.key),
        value=value,
        value_base64=value_base64,
        headers={k: _text(v) or "" for k, v in headers if k not in _ERROR_HEADERS},
        partition=record.partition,
        offset=record.offset,
    )


def original_headers(headers: Iterable[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
    """The headers to re-send: every ``dlq.*`` header dropped (the error, and
    an earlier ``dlq.reinjected.from``), order and repeats kept."""
    return [(k, v) for k, v in headers or () if not k.startswith(_DLQ_PREFIX)]


@dataclass
class DlqEntry:
    """One DLQ record: the raw record and its printable view."""

    record: Any
    view: wire.DlqRecord

    @property
    def position(self) -> str:
        return dlq_position(self.record.topic, self.record.partition, self.record.offset)

    @property
    def short(self) -> str:
        return f"{self.record.partition}:{self.record.offset}"


async def read_dlq(
    settings: Settings,
    *,
    reason: str | None = None,
    positions: set[tuple[int, int]] | None = None,
    limit: int | None = None,
) -> list[DlqEntry]:
    """DLQ records (oldest first per partition, partitions in order), filtered."""
    entries: list[DlqEntry] = []
    async for records in partition_reader.read_to_end(settings, settings.topic_dlq):
        for record in records:
            if positions is not None and (record.partition, record.offset) not in positions:
                continue
            view = to_dlq_record(record)
            if reason is not None and view.reason != reason:
                continue
            entries.append(DlqEntry(record, view))
    entries.sort(key=lambda e: (e.record.partition, e.record.offset))
    return entries[:limit] if limit is not None else entries


async def reinjected_positions(settings: Settings) -> dict[str, tuple[int, int]]:
    """DLQ positions already re-injected -> where (events partition, offset)."""
    found: dict[str, tuple[int, int]] = {}
    async for records in partition_reader.read_to_end(settings, settings.topic_events):
        for record in records:
            for name, value in record.headers or ():
                if name == REINJECTED_HEADER:
                    found.setdefault(value.decode("utf-8", "replace"), (record.partition, record.offset))
    return found


@dataclass
class Reinjection:
    """What happened to one chosen DLQ record."""

    entry: DlqEntry
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    status: str = "pending"  # sent | would_send | skipped_already_reinjected | refused
    detail: str = ""
    sent_to: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "dlq": self.entry.short,
            "reason": self.entry.view.reason,
            "status": self.status,
            "detail": self.detail,
            "key": _text(self.key),
            "sent_to": None if self.sent_to is None else f"{self.sent_to[0]}:{self.sent_to[1]}",
        }


@dataclass
class ReinjectReport:
    items: list[Reinjection] = field(default_factory=list)
    dry_run: bool = False

    def count(self, status: str) -> int:
        return sum(1 for i in self.items if i.status == status)

    def summary(self) -> dict[str, Any]:
        return {
            "selected": len(self.items),
            "sent": self.count("sent"),
            "would_send": self.count("would_send"),
            "skipped_already_reinjected": self.count("skipped_already_reinjected"),
            "refused": self.count("refused"),
            "dry_run": self.dry_run,
        }


def plan_reinjection(
    entries: Sequence[DlqEntry],
    *,
    corrected: Sequence[bytes] | None,
    already: dict[str, tuple[int, int]],
    max_bytes: int,
    force: bool = False,
    allow_invalid: bool = False,
) -> list[Reinjection]:
    """Decide, per chosen DLQ record, what to send and whether to send it. Pure."""
    if corrected is not None and len(corrected) != len(entries):
        raise ConfigurationError(
            "--from-file", f"{len(corrected)} corrected lines for {len(entries)} chosen DLQ records; they pair up in order"
        )
    plans: list[Reinjection] = []
    for i, entry in enumerate(entries):
        marker = (REINJECTED_HEADER, entry.position.encode())
        record = entry.record
        if corrected is not None:
            line = corrected[i]
            item = Reinjection(entry, key_of(line), line, [("content-type", wire.STRUCTURED_CONTENT_TYPE.encode()), marker])
        else:
            item = Reinjection(entry, record.key, record.value, [*original_headers(record.headers), marker])
        previous = already.get(entry.position)
        if previous is not None and not force:
            item.status = "skipped_already_reinjected"
            item.detail = f"already re-injected as invoice.events {previous[0]}:{previous[1]}; --force sends it again"
        else:
            try:
                wire.decode_event(item.key, item.value, list(item.headers), max_bytes=max_bytes)
            except InvalidEventError as exc:
                if not allow_invalid:
                    item.status = "refused"
                    item.detail = f"would go to the DLQ again: {exc.reason}: {exc.detail}"
        plans.append(item)
    return plans


async def reinject(
    settings: Settings,
    entries: Sequence[DlqEntry],
    *,
    corrected: Sequence[bytes] | None = None,
    dry_run: bool = False,
    force: bool = False,
    allow_invalid: bool = False,
) -> ReinjectReport:
    """Send the chosen DLQ records (or their corrections) to ``invoice.events``."""
    already = await reinjected_positions(settings)
    items = plan_reinjection(
        entries,
        corrected=corrected,
        already=already,
        max_bytes=settings.max_event_bytes,
        force=force,
        allow_invalid=allow_invalid,
    )
    report = ReinjectReport(items, dry_run=dry_run)
    todo = [i for i in items if i.status == "pending"]
    if dry_run:
        for item in todo:
            item.status = "would_send"
        return report
    if not todo:
        return report
    producer = kafka.new_producer(settings)
    async with kafka.started(producer):
        futures = []
        for item in todo:
            with kafka.broker_errors(f"send to {settings.topic_events}"):
                # No partition given: the default partitioner hashes the key,
                # as upstream's producer does, so the invoice's order holds.
                futures.append(await producer.send(settings.topic_events, key=item.key, value=item.value, headers=item.headers))
        with kafka.broker_errors(f"send to {settings.topic_events}"):
            metadata = await asyncio.gather(*futures)
    for item, meta in zip(todo, metadata, strict=True):
        item.status = "sent"
        item.sent_to = (meta.partition, meta.offset)
    return report


def read_corrected(path: str) -> list[bytes]:
    """Non-blank lines of a JSONL file; each must at least be JSON."""
    lines: list[bytes] = []
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, 1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                raise ConfigurationError("--from-file", f"{path} line {number} is not JSON: {exc}") from None
            lines.append(line)
    return lines
