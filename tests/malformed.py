"""Malformed inputs, one per kind, with the DLQ reason each must get.

Shared by the unit test of the decoder and the broker test of the DLQ.
"""

from __future__ import annotations

import json
from typing import Any

from tests.factories import card, event

Headers = list[tuple[str, bytes]]


def _valid(n: int) -> dict[str, Any]:
    return event(*card(n), "INVOICE_REIMBURSE_LOCK", event_id=f"bad-{n}")


def _key(ev: dict[str, Any]) -> bytes:
    return f"{ev['data']['card_id']}/{ev['data']['code']}".encode()


def _mutate(n: int, fn: Any) -> tuple[bytes, bytes]:
    ev = _valid(n)
    fn(ev)
    return _key(_valid(n)), json.dumps(ev).encode()


def malformed_cases(max_bytes: int = 65536) -> list[tuple[str, bytes | None, bytes | None, Headers, str]]:
    """(name, key, value, headers, expected reason)."""
    cases: list[tuple[str, bytes | None, bytes | None, Headers, str]] = []

    def add(name: str, key: bytes | None, value: bytes | None, reason: str, headers: Headers | None = None) -> None:
        cases.append((name, key, value, headers or [], reason))

    k, v = _mutate(900, lambda e: None)
    add("null value", k, None, "empty_value")
    add("empty value", k, b"", "empty_value")
    add("oversized", k, v[:-1] + b', "pad": "' + b"x" * max_bytes + b'"}', "oversized")
    add("not utf-8", k, b'{"id": "\xff\xfe"}', "not_utf8")
    add("latin-1 bytes in a field", k, v.replace(b"/erp/reimbursement", b"/erp/r\xe9imbursement"), "not_utf8")
    add("not json", k, b"this is not json", "not_json")
    add("truncated json", k, v[: len(v) // 2], "not_json")
    add("json array", k, b"[1, 2, 3]", "not_cloudevent")
    add("json string", k, b'"invoice.reimbursement.locked"', "not_cloudevent")
    add("missing id", *_mutate(901, lambda e: e.pop("id")), "not_cloudevent")
    add("empty id", *_mutate(902, lambda e: e.update(id="")), "not_cloudevent")
    add("id is a number", *_mutate(903, lambda e: e.update(id=12345)), "not_cloudevent")
    add("missing specversion", *_mutate(904, lambda e: e.pop("specversion")), "not_cloudevent")
    add("specversion 0.3", *_mutate(905, lambda e: e.update(specversion="0.3")), "not_cloudevent")
    add("missing source", *_mutate(906, lambda e: e.pop("source")), "not_cloudevent")
    add("time not rfc3339", *_mutate(907, lambda e: e.update(time="yesterday")), "not_cloudevent")
    add("unknown type", *_mutate(908, lambda e: e.update(type="invoice.reimbursement.exploded")), "unknown_type")
    add("missing data", *_mutate(909, lambda e: e.pop("data")), "not_cloudevent")
    add("data is a list", *_mutate(910, lambda e: e.update(data=[1])), "invalid_data")
    add("missing card_id", *_mutate(911, lambda e: e["data"].pop("card_id")), "invalid_data")
    add("code is a number", *_mutate(912, lambda e: e["data"].update(code=186921658591)), "invalid_data")
    add("card_id with a slash", *_mutate(913, lambda e: e["data"].update(card_id="a/b")), "invalid_data")
    add(
        "status.set without status",
        *_mutate(914, lambda e: e.update(type="invoice.status.set")),
        "invalid_data",
    )
    add(
        "unknown reimburse_status",
        *_mutate(915, lambda e: e.update(type="invoice.status.set") or e["data"].update(reimburse_status="PAID")),
        "invalid_data",
    )
    add(
        "status contradicts type",
        *_mutate(916, lambda e: e["data"].update(reimburse_status="INVOICE_REIMBURSE_CLOSURE")),
        "invalid_data",
    )
    add("subject is another invoice", *_mutate(917, lambda e: e.update(subject="x/y")), "invalid_data")
    _, v918 = _mutate(918, lambda e: None)
    add("missing key", None, v918, "key_mismatch")
    _, v919 = _mutate(919, lambda e: None)
    add("key of another invoice", b"someone/else", v919, "key_mismatch")
    k920, v920 = _mutate(920, lambda e: None)
    add("xml content type", k920, v920, "unsupported_content_type", [("content-type", b"application/xml")])
    ev = _valid(921)
    add(
        "binary mode without ce_id",
        _key(ev),
        json.dumps(ev["data"]).encode(),
        "not_cloudevent",
        [("ce_specversion", b"1.0"), ("ce_type", ev["type"].encode()), ("ce_source", b"/erp")],
    )
    return cases


def binary_mode_valid(n: int) -> tuple[bytes, bytes, Headers, dict[str, Any]]:
    """A valid event in CloudEvents binary mode."""
    ev = _valid(n)
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", ev["id"].encode()),
        ("ce_source", ev["source"].encode()),
        ("ce_type", ev["type"].encode()),
        ("ce_time", ev["time"].encode()),
        ("content-type", b"application/json"),
    ]
    return _key(ev), json.dumps(ev["data"]).encode(), headers, ev
