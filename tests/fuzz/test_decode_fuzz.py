"""100,000+ generated hostile records through ``adapters.wire.decode_record``.

Each must end as a returned event or an ``InvalidEventError`` with a known
reason; anything else fails naming the input. A returned event must also be
really valid (tokens to the true end, ASCII RFC 3339 time, printable id, key
equal to the invoice key), so a decoder that is too lenient fails too; so
does one that accepts an input its generator knows no correct decoder may
accept (``Case.must_refuse``), or refuses for another reason than the one
that is certain (``Case.reason``). Every refusal's DLQ copy
(``wire.dlq_copy``) is checked as the processor would write it: header names
that encode as UTF-8, and a record batch, built with aiokafka's own builder,
no larger than the ``max_record_bytes`` it was given.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections import Counter
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import wire
from domain.errors import InvalidEventError
from domain.model import LifecycleEvent, invoice_key
from tests.support.hostile import Headers, cases, consumer_record, key_of, nested_json, unreadable_record, valid_event

VOLUME = 100_000
TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})")
MAX_BYTES = 65536
#: DLQ record budgets: the processor's floor (16 KiB), its batch size, the broker default.
DLQ_LIMITS = (16 * 1024, 512 * 1024 - 1024, 1048588)
_limits = random.Random(5)


def printable(text: str) -> bool:
    """What the contract calls printable: no control character (C0, DEL or
    C1: Unicode category Cc) and no lone surrogate."""
    return not any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


def check_decision(name: str, record: Any) -> LifecycleEvent:
    """Decode ``record``: a really valid event, or the ``InvalidEventError``
    (a known reason, a sound DLQ copy) re-raised; anything else fails naming the input."""
    try:
        decoded = wire.decode_record(record, max_bytes=MAX_BYTES)
    except InvalidEventError as refused:
        # A helper that checks the refusal and re-raises it, so not pytest.raises.
        assert refused.reason in wire.DLQ_REASONS, f"{name}: unknown reason {refused.reason!r} for {describe(record)}"  # noqa: PT017
        check_dlq_copy(name, record, refused)
        raise
    except Exception as exc:  # the point: nothing else may escape
        raise AssertionError(f"{name}: {type(exc).__name__}: {str(exc)[:200]} escaped for {describe(record)}") from exc
    assert_really_valid(name, record, decoded)
    return decoded


def decide(name: str, record: Any) -> LifecycleEvent | None:
    """``check_decision``, with a refusal as ``None``."""
    try:
        return check_decision(name, record)
    except InvalidEventError:
        return None


def check_dlq_copy(name: str, record: Any, refused: InvalidEventError) -> None:
    """The refused record's DLQ copy is writable and fits the budget it was given."""
    limit = _limits.choice(DLQ_LIMITS)
    try:
        key, value, headers, truncated = wire.dlq_copy(
            record, refused, refused.reason, "2026-12-02T00:00:00Z", max_record_bytes=limit
        )
    except Exception as exc:  # the point: nothing else may escape
        raise AssertionError(f"{name}: dlq_copy raised {type(exc).__name__}: {str(exc)[:200]} for {describe(record)}") from exc
    where = f"{name}: DLQ copy (limit {limit}) of {describe(record)}"
    for header_name, header_value in headers:
        try:
            header_name.encode("utf-8")
        except UnicodeEncodeError:
            raise AssertionError(f"{where}: header name {header_name!r} is not UTF-8") from None
        assert header_value is None or isinstance(header_value, bytes), where
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 30)
    builder.append(0, 1764000000000, key, value, headers)
    size = len(builder.build())
    assert size <= limit, f"{where}: {size} bytes"
    names = dict(headers)
    assert names["dlq.error.reason"] == refused.reason.encode(), where
    assert truncated == (names.get("dlq.value.truncated") == b"true"), where
    if not truncated:
        assert value == record.value, where


def describe(record: Any) -> str:
    return (
        f"key={record.key!r:.120} value={record.value!r:.200} "
        f"headers={record.headers!r:.200} problem={getattr(record, 'problem', None)!r:.80}"
    )


def assert_really_valid(name: str, record: Any, ev: LifecycleEvent) -> None:
    where = f"{name}: accepted {ev!r:.300} from {describe(record)}"
    assert getattr(record, "problem", None) is None, where
    for token in (ev.card_id, ev.code):
        assert TOKEN.fullmatch(token), where
    assert ev.appid == "" or TOKEN.fullmatch(ev.appid), where
    assert 1 <= len(ev.event_id) <= 256 and printable(ev.event_id), where
    assert ev.time is None or RFC3339.fullmatch(ev.time), where
    assert record.key == invoice_key(ev.card_id, ev.code).encode(), where
    assert record.value is not None and 0 < len(record.value) <= MAX_BYTES, where
    for header_name, _ in record.headers or ():
        header_name.encode("utf-8")  # a surrogate-escaped name must have been refused


def test_the_unmutated_event_is_decoded_so_the_fuzz_baseline_is_meaningful() -> None:
    ev = valid_event(1)
    decoded = decide("baseline", consumer_record(key_of(ev), json.dumps(ev).encode()))
    assert decoded is not None and decoded.event_id == "h-1"


def test_100k_seeded_hostile_records_end_as_an_event_or_a_refusal() -> None:
    failures: list[str] = []
    decided = 0
    reasons: Counter[str] = Counter()
    for case in cases(seed=20261202, count=VOLUME):
        name = f"seed 20261202 {case.name}"
        try:
            event = check_decision(name, case.record)
        except InvalidEventError as refused:
            reasons[refused.reason] += 1
            if case.reason is not None and refused.reason != case.reason:
                failures.append(f"{name}: refused as {refused.reason}, must be {case.reason} ({refused})")
            continue
        except AssertionError as failure:
            failures.append(str(failure))
            continue
        decided += 1
        if case.must_refuse:
            failures.append(f"{name}: accepted {event!r:.300}, which no correct decoder may accept, from {describe(case.record)}")
    assert not failures, f"{len(failures)} of {VOLUME} inputs failed; first ones:\n" + "\n".join(failures[:15])
    # The mix holds valid events and harmless mutations: if few are decided
    # the generator lost its valid base and tests nothing; and every reason
    # the DLQ knows must have been reached.
    assert decided > VOLUME // 20, decided
    assert set(reasons) == set(wire.DLQ_REASONS), reasons


def test_nesting_5000_deep_is_refused_as_not_json_in_both_modes() -> None:
    ev = valid_event(2)
    key = key_of(ev)
    deep = b"[" * 5000 + b"]" * 5000
    binary = [("ce_specversion", b"1.0"), ("ce_id", b"x"), ("ce_source", b"/erp"), ("ce_type", ev["type"].encode())]
    for name, record in [
        ("structured", consumer_record(key, nested_json(5000))),
        ("structured data", consumer_record(key, json.dumps(ev).encode()[:-1] + b', "data": ' + deep + b"}")),
        ("binary", consumer_record(key, deep, binary)),
    ]:
        with pytest.raises(InvalidEventError) as refused:
            wire.decode_record(record)
        assert refused.value.reason == "not_json", name


def test_none_header_values_are_refusals_not_crashes() -> None:
    ev = valid_event(3)
    key, data = key_of(ev), json.dumps(ev["data"]).encode()
    header_cases: tuple[Headers, ...] = (
        [("ce_specversion", None), ("content-type", None)],
        [("content-type", None), ("ce_specversion", b"1.0"), ("ce_id", None)],
        [("ce_specversion", b"1.0"), ("ce_id", b"x"), ("ce_source", b"/e"), ("ce_type", ev["type"].encode()), ("ce_time", None)],
    )
    for headers in header_cases:
        decide(f"headers {headers}", consumer_record(key, data, headers))


def test_ids_with_a_trailing_newline_are_refused() -> None:
    for field in ("id", "card_id", "code", "appid"):
        ev = valid_event(4)
        target = ev if field == "id" else ev["data"]
        target[field] += "\n"
        key = key_of(valid_event(4)) if field != "id" else key_of(ev)
        assert decide(f"{field} + newline", consumer_record(key, json.dumps(ev).encode())) is None, field


def test_unreadable_records_are_refused_as_unreadable_record() -> None:
    for problem in ("bad varint", "x" * 5000, "\udcff"):
        with pytest.raises(InvalidEventError) as refused:
            wire.decode_record(unreadable_record(problem, b"k", b"v"))
        assert refused.value.reason == "unreadable_record", problem


_text = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["1.0", "invoice.reimbursement.locked", "invoice.status.set", "2026-11-23T10:00:00Z", "\ud800", "a\n"]),
)
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), _text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)),
    max_leaves=20,
)


@st.composite
def structured_events(draw: st.DrawFn) -> tuple[bytes | None, bytes, list[tuple[str, bytes | None]]]:
    ev = valid_event(draw(st.integers(0, 50)))
    key = key_of(ev)
    for field in draw(
        st.lists(
            st.sampled_from(
                [
                    "specversion",
                    "id",
                    "source",
                    "type",
                    "time",
                    "subject",
                    "data",
                    "data_base64",
                    "partitionkey",
                    "datacontenttype",
                ]
            ),
            max_size=3,
        )
    ):
        ev[field] = draw(_json)
    for field in draw(st.lists(st.sampled_from(["card_id", "code", "appid", "reimburse_status"]), max_size=2)):
        if isinstance(ev.get("data"), dict):
            ev["data"][field] = draw(_json)
    value = json.dumps(ev, allow_nan=True).encode("utf-8", "surrogatepass")
    headers = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["content-type", "ce_specversion", "ce_id", "x", "\udcff"]),
                st.one_of(st.none(), st.binary(max_size=40)),
            ),
            max_size=3,
        )
    )
    return draw(st.sampled_from([key, None, b"x/y"])), value, headers


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structured_events())
def test_structure_aware_hostile_events_end_as_an_event_or_a_refusal(
    case: tuple[bytes | None, bytes, list[tuple[str, bytes | None]]],
) -> None:
    key, value, headers = case
    decide("hypothesis", consumer_record(key, value, headers))


_header_names = st.one_of(
    st.sampled_from(
        [
            "content-type",
            "Content-Type",
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_subject",
            "ce_partitionkey",
        ]
    ),
    st.text(max_size=20),
    # A name that is not UTF-8 on the wire, as aiokafka (adapters.kafka_records) delivers it.
    st.binary(min_size=1, max_size=8).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.one_of(st.none(), st.binary(max_size=80), st.just(b"pjZ8Yt7Um2jYxzneP8Gom0000001/186921658592")),
    value=st.one_of(
        st.none(), st.binary(max_size=300), _json.map(lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass"))
    ),
    headers=st.lists(
        st.tuples(
            _header_names,
            st.one_of(
                st.none(), st.binary(max_size=40), st.sampled_from([b"1.0", b"application/cloudevents+json", b"application/json"])
            ),
        ),
        max_size=6,
    ),
)
def test_arbitrary_bytes_and_headers_end_as_an_event_or_a_refusal(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> None:
    decide("hypothesis binary", consumer_record(key, value, headers))
