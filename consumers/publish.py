"""``invoice-sm publish``: send lifecycle events from JSONL (a file or stdin).

Each line is one CloudEvent. The Kafka key is the invoice key taken from
``data.card_id``/``data.code``, so events of one invoice land in one
partition in file order. Lines that would not pass the processor's
validation are refused (reported with their line number) unless
``--allow-invalid``, which sends them as they are, for trials of the DLQ.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import msgspec

from adapters import kafka, topics, wire
from adapters.settings import Settings
from domain.errors import InvalidEventError
from domain.model import invoice_key


@dataclass
class PublishReport:
    sent: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)


def key_of(line: bytes) -> bytes | None:
    """The invoice key of a JSON event line, or ``None`` if it has none."""
    try:
        raw = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None
    data = raw.get("data") if isinstance(raw, dict) else None
    if isinstance(data, dict) and isinstance(data.get("card_id"), str) and isinstance(data.get("code"), str):
        return invoice_key(data["card_id"], data["code"]).encode()
    return None


def read_lines(stream: IO[bytes]) -> Iterator[bytes]:
    for line in stream:
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield line


async def publish_lines(
    settings: Settings, lines: Iterable[bytes], *, allow_invalid: bool = False, ensure: bool = True
) -> PublishReport:
    report = PublishReport()
    if ensure:
        await topics.ensure_topics(settings)
    producer = kafka.new_producer(settings, linger_ms=20)
    pending = []
    async with kafka.started(producer):
        for number, line in enumerate(lines, 1):
            key = key_of(line)
            if not allow_invalid:
                try:
                    wire.decode_event(key, line, max_bytes=settings.max_event_bytes)
                except InvalidEventError as exc:
                    report.refused.append((number, f"{exc.reason}: {exc.detail}"))
                    continue
            with kafka.broker_errors("publish"):
                pending.append(
                    await producer.send(
                        settings.topic_events,
                        value=line,
                        key=key,
                        headers=[("content-type", wire.STRUCTURED_CONTENT_TYPE.encode())],
                    )
                )
            report.sent += 1
            if len(pending) >= 10_000:
                await _drain(pending)
        await _drain(pending)
    return report


async def _drain(pending: list[Any]) -> None:
    with kafka.broker_errors("publish"):
        for future in pending:
            await future
    pending.clear()


def open_input(path: str) -> IO[bytes]:
    return sys.stdin.buffer if path == "-" else open(path, "rb")
