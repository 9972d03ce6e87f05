"""The pure parts of ``dlq``: the printable view, header stripping, the re-injection plan."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from adapters import wire
from consumers.dlq import (
    REINJECTED_HEADER,
    DlqEntry,
    original_headers,
    parse_positions,
    plan_reinjection,
    to_dlq_record,
)
from domain.errors import ConfigurationError
from tests.factories import card, encode, event

H = wire.DLQ_HEADERS


def dlq_record(
    value: bytes | None,
    key: bytes | None = b"k/1",
    extra: list[tuple[str, bytes]] | None = None,
    partition: int = 1,
    offset: int = 7,
) -> SimpleNamespace:
    headers = [
        *(extra or []),
        (H["reason"], b"invalid_data"),
        (H["error_class"], b"InvalidEventError"),
        (H["error_message"], b"invalid_data: boom"),
        (H["source_topic"], b"invoice.events"),
        (H["source_partition"], b"2"),
        (H["source_offset"], b"40"),
        (H["failed_at"], b"2026-11-23T10:00:00.000Z"),
    ]
    return SimpleNamespace(
        topic="invoice.events.dlq", partition=partition, offset=offset, timestamp=0, key=key, value=value, headers=headers
    )


def test_the_view_separates_error_headers_from_the_originals_and_matches_the_schema() -> None:
    view = to_dlq_record(dlq_record(b'{"a": 1}', extra=[("trace-id", b"t1")]))
    assert (view.reason, view.error_class, view.source_topic, view.source_partition, view.source_offset) == (
        "invalid_data",
        "InvalidEventError",
        "invoice.events",
        2,
        40,
    )
    assert view.headers == {"trace-id": "t1"} and view.value == '{"a": 1}' and view.value_base64 is None
    assert (view.partition, view.offset, view.key) == (1, 7, "k/1")
    msgspec.json.decode(msgspec.json.encode(view), type=wire.DlqRecord)


def test_a_value_that_is_not_utf8_is_shown_as_base64() -> None:
    view = to_dlq_record(dlq_record(b"\xff\xfe"))
    assert view.value is None and base64.b64decode(view.value_base64 or "") == b"\xff\xfe"
    assert to_dlq_record(dlq_record(None, key=None)).key is None


def test_every_dlq_header_is_dropped_before_resending() -> None:
    headers = [("a", b"1"), (H["reason"], b"x"), (REINJECTED_HEADER, b"old/0/1"), ("a", b"2")]
    assert original_headers(headers) == [("a", b"1"), ("a", b"2")]


def test_positions_parse_and_refuse_garbage() -> None:
    assert parse_positions("0:12, 2:7,") == {(0, 12), (2, 7)}
    with pytest.raises(ConfigurationError):
        parse_positions("0-12")


def _entry(ev: dict, **kw: Any) -> DlqEntry:
    key, value = encode(ev)
    record = dlq_record(value, key=key, extra=[("content-type", wire.STRUCTURED_CONTENT_TYPE.encode())], **kw)
    return DlqEntry(record, to_dlq_record(record))


def test_the_plan_resends_originals_marked_with_their_dlq_position() -> None:
    entry = _entry(event(*card(1), "INVOICE_REIMBURSE_LOCK"))
    [item] = plan_reinjection([entry], corrected=None, already={}, max_bytes=65536)
    assert item.status == "pending" and item.value == entry.record.value and item.key == entry.record.key
    assert item.headers == [
        ("content-type", wire.STRUCTURED_CONTENT_TYPE.encode()),
        (REINJECTED_HEADER, b"invoice.events.dlq/1/7"),
    ]


def test_the_plan_skips_what_was_already_reinjected_unless_forced() -> None:
    entry = _entry(event(*card(1), "INVOICE_REIMBURSE_LOCK"))
    already = {"invoice.events.dlq/1/7": (0, 99)}
    [item] = plan_reinjection([entry], corrected=None, already=already, max_bytes=65536)
    assert item.status == "skipped_already_reinjected" and "0:99" in item.detail
    [forced] = plan_reinjection([entry], corrected=None, already=already, max_bytes=65536, force=True)
    assert forced.status == "pending"


def test_the_plan_refuses_what_would_fail_again_unless_allowed() -> None:
    ev = event(*card(1), "INVOICE_REIMBURSE_LOCK")
    ev["type"] = "invoice.unknown"
    entry = _entry(ev)
    [item] = plan_reinjection([entry], corrected=None, already={}, max_bytes=65536)
    assert item.status == "refused" and "unknown_type" in item.detail
    [allowed] = plan_reinjection([entry], corrected=None, already={}, max_bytes=65536, allow_invalid=True)
    assert allowed.status == "pending"


def test_corrected_lines_pair_with_entries_in_order_and_are_keyed_by_their_invoice() -> None:
    bad = event(*card(1), "INVOICE_REIMBURSE_LOCK")
    bad["type"] = "invoice.unknown"
    entries = [_entry(bad, offset=3), _entry(bad, offset=4)]
    fixed = [json.dumps(event(*card(n), "INVOICE_REIMBURSE_LOCK")).encode() for n in (5, 6)]
    items = plan_reinjection(entries, corrected=fixed, already={}, max_bytes=65536)
    assert [i.status for i in items] == ["pending", "pending"]
    assert [i.key for i in items] == [encode(json.loads(f))[0] for f in fixed]
    assert [dict(i.headers)[REINJECTED_HEADER] for i in items] == [b"invoice.events.dlq/1/3", b"invoice.events.dlq/1/4"]
    with pytest.raises(ConfigurationError):
        plan_reinjection(entries, corrected=fixed[:1], already={}, max_bytes=65536)
