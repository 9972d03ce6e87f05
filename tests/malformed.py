"""Malformed inputs, one per kind, with the DLQ reason each must get.

Shared by the unit test of the decoder and the broker test of the DLQ.
"""

from __future__ import annotations

import json
from typing import Any

from tests.factories import card, event

Headers = list[tuple[str, bytes | None]]  # Kafka header values may be null


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
    add("missing data", *_mutate(909, lambda e: e.pop("data")), "invalid_data")
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
    add(
        "card_id with a trailing newline",
        *_mutate(922, lambda e: e["data"].update(card_id=e["data"]["card_id"] + "\n")),
        "invalid_data",
    )
    add("appid with a trailing newline", *_mutate(923, lambda e: e["data"].update(appid="wx1234567890abcdef\n")), "invalid_data")
    add("time with non-ASCII digits", *_mutate(924, lambda e: e.update(time="２０２６-11-23T10:00:00Z")), "not_cloudevent")
    add("time with a trailing newline", *_mutate(925, lambda e: e.update(time="2026-11-23T10:00:00Z\n")), "not_cloudevent")
    add("control character in id", *_mutate(926, lambda e: e.update(id="e-\x00-1")), "not_cloudevent")
    k927, _ = _mutate(927, lambda e: None)
    add("json nested 5,000 deep", k927, b'{"specversion": "1.0", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "not_json")
    add("number out of range", k927, b"1e999", "not_json")
    add("data and data_base64", *_mutate(928, lambda e: e.update(data_base64="e30=")), "not_cloudevent")
    add("data_base64 not base64", *_mutate(929, lambda e: e.pop("data") and e.update(data_base64="%%%")), "invalid_data")
    add("datacontenttype xml", *_mutate(930, lambda e: e.update(datacontenttype="application/xml")), "unsupported_content_type")
    add("partitionkey of another invoice", *_mutate(931, lambda e: e.update(partitionkey="x/y")), "key_mismatch")
    k932, v932 = _mutate(932, lambda e: None)
    add(
        "batch mode content type",
        k932,
        v932,
        "unsupported_content_type",
        [("content-type", b"application/cloudevents-batch+json")],
    )
    add("header name not UTF-8", k932, v932, "bad_header", [("\udcff\udcfe", b"x")])
    ev = _valid(933)
    add(
        "binary mode with a null ce_specversion",
        _key(ev),
        json.dumps(ev["data"]).encode(),
        "bad_header",
        [("ce_specversion", None), ("ce_id", b"x"), ("ce_type", ev["type"].encode()), ("ce_source", b"/erp")],
    )
    add(
        "binary mode with a null ce_id",
        _key(ev),
        json.dumps(ev["data"]).encode(),
        "bad_header",
        [("ce_specversion", b"1.0"), ("ce_id", None), ("ce_type", ev["type"].encode()), ("ce_source", b"/erp")],
    )
    return cases


def producible(
    cases: list[tuple[str, bytes | None, bytes | None, Headers, str]],
) -> list[tuple[str, bytes | None, bytes | None, Headers, str]]:
    """The cases an ordinary client can send (header names must be UTF-8 there;
    a record with a non-UTF-8 name is crafted byte by byte in the intake tests)."""

    def sendable(name: str) -> bool:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True

    return [case for case in cases if all(sendable(name) for name, _ in case[3])]


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
