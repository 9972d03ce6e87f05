"""The decoder's fast path judges every input exactly as the strict path does.

``wire.decode_event`` first tries ``wire._fast_event`` (the event's structure
without msgspec's per-field ``pattern`` checks, the patterned fields checked
by hand, and duplicate names ruled out by a length argument) and falls back
to the strict ``CloudEvent`` decoder. Here every input is decoded both ways,
the second time with the fast path switched off, and the results (the event,
or the refusal's reason and message) must be identical: for the fuzz suite's
hostile generators, for valid events written compactly or with spaces, and
for duplicate names whose earlier occurrence is invalid. Each test also
checks that the fast path really took the inputs it should, so it never
passes by testing the strict path against itself.
"""

from __future__ import annotations

import json
import re
from typing import Any
from unittest import mock

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import wire
from domain.errors import InvalidEventError
from domain.model import LifecycleEvent
from tests.fuzz.test_decode_fuzz import structured_events
from tests.support.hostile import cases, consumer_record, key_of, random_valid_event, valid_event

VOLUME = 30_000
MAX_BYTES = 65536

Result = LifecycleEvent | tuple[str, str]


def judged(record: Any) -> Result:
    try:
        return wire.decode_record(record, max_bytes=MAX_BYTES)
    except InvalidEventError as refused:
        return refused.reason, str(refused)


def judged_strictly(record: Any) -> Result:
    with mock.patch.object(wire, "_fast_event", return_value=None):
        return judged(record)


def took_fast_path(value: bytes | None) -> bool:
    return value is not None and wire._fast_event(value) is not None


def fields(event: Any) -> dict[str, Any]:
    out = msgspec.structs.asdict(event)
    if event.data is not None:
        out["data"] = msgspec.structs.asdict(event.data)
    return out


def assert_same_judgement(name: str, record: Any) -> bool:
    """Both paths agree on ``record``; returns whether the fast path accepted its value."""
    fast, strict = judged(record), judged_strictly(record)
    assert fast == strict, f"{name}: fast path {fast!r:.300} != strict {strict!r:.300} for {record!r:.400}"
    value = record.value
    if not took_fast_path(value):
        return False
    # Wherever the fast path accepts, the strict decoder accepts the same event.
    assert fields(wire._fast_event(value)) == fields(wire._event_decoder.decode(value)), name
    return True


def _without(schema: Any, drop: set[str]) -> Any:
    if isinstance(schema, dict):
        return {k: _without(v, drop) for k, v in schema.items() if k not in drop}
    if isinstance(schema, list):
        return [_without(v, drop) for v in schema]
    return schema


def test_the_fast_types_are_the_cloud_event_less_its_patterns() -> None:
    strict = json.dumps(_without(msgspec.json.schema(wire.CloudEvent), {"pattern", "description", "title"}))
    fast = json.dumps(_without(msgspec.json.schema(wire._FastCloudEvent), {"pattern", "description", "title"}))
    assert fast.replace("_FastCloudEvent", "CloudEvent").replace("_FastEventData", "EventData") == strict


def test_the_fuzz_generators_are_judged_the_same_by_both_paths() -> None:
    fast_accepted = 0
    for case in cases(seed=20261213, count=VOLUME):
        fast_accepted += assert_same_judgement(f"seed 20261213 {case.name}", case.record)
    # Valid events are a good share of the mix: the fast path must have taken them.
    assert fast_accepted > VOLUME // 10, fast_accepted


def test_valid_events_take_the_fast_path_compact_or_spaced() -> None:
    import random

    rng = random.Random(3)
    for i in range(2000):
        ev = random_valid_event(rng)
        ev.pop("extension_x", None)  # an unknown attribute is left to the strict path
        for value in (
            msgspec.json.encode(ev),
            json.dumps(ev, ensure_ascii=False).encode(),
            json.dumps(ev, ensure_ascii=False, indent=2).encode(),
        ):
            record = consumer_record(key_of(ev), value)
            assert assert_same_judgement(f"valid #{i}", record), value
        # \u escapes of non-ASCII text are longer than needed: those events take the strict path.
        assert_same_judgement(f"valid escaped #{i}", consumer_record(key_of(ev), json.dumps(ev).encode()))


#: Values each patterned field must refuse (and one it accepts).
_BAD = {
    "id": ["", "a\n", "x\u0085", "\x00", "i" * 257],
    "time": ["2026-11-23T10:00:00Z\n", "2026-11-23 10:00:00Z", "\uff12\uff10\uff12\uff16-11-23T10:00:00Z", ""],
    "card_id": ["", "a/b", "a\n", "é", "c" * 65],
    "code": ["", "a b", "1\n", "c" * 65],
    "appid": ["", "wx\n", "wx ü"],
}
_DATA_FIELDS = ("card_id", "code", "appid")


def _name(name: str, escaped: bool) -> str:
    return '"' + "".join(f"\\u{ord(c):04x}" for c in name) + '"' if escaped else json.dumps(name)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 50),
    field=st.sampled_from(sorted(_BAD)),
    bad=st.integers(0, 4),
    first=st.booleans(),
    sep=st.sampled_from([(",", ":"), (", ", ": "), (",\n  ", ": "), ("\t,", ":\r\n")]),
    escaped=st.booleans(),
    also_valid=st.booleans(),
)
def test_an_invalid_occurrence_of_a_duplicate_name_is_refused_by_both_paths(
    n: int, field: str, bad: int, first: bool, sep: tuple[str, str], escaped: bool, also_valid: bool
) -> None:
    ev = valid_event(n)
    values = _BAD[field]
    duplicate = json.dumps(values[bad % len(values)])

    def members(obj: dict[str, Any]) -> list[str]:
        return [f"{_name(k, escaped)}{sep[1]}{json.dumps(v)}" for k, v in obj.items() if k != field or also_valid]

    data = members(ev["data"])
    top = members({k: v for k, v in ev.items() if k != "data"})
    target = data if field in _DATA_FIELDS else top
    # The invalid occurrence before or after the valid one, or the only one.
    target.insert(0 if first else len(target), f"{_name(field, escaped)}{sep[1]}{duplicate}")
    top.append(f'"data"{sep[1]}{{{sep[0].join(data)}}}')
    record = consumer_record(key_of(ev), f"{{{sep[0].join(top)}}}".encode())
    assert_same_judgement(f"{field} = {duplicate} ({'first' if first else 'last'}, {sep!r})", record)
    # msgspec checks every occurrence: the last one wins only once all are valid.
    assert isinstance(judged(record), tuple), record.value


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structured_events())
def test_structure_aware_hostile_events_are_judged_the_same_by_both_paths(
    case: tuple[bytes | None, bytes, list[tuple[str, bytes | None]]],
) -> None:
    key, value, headers = case
    assert_same_judgement("hypothesis", consumer_record(key, value, headers))


def test_the_fast_path_checks_are_the_schema_patterns() -> None:
    # The hand checks stand in for these exact patterns (msgspec applies them with re.search).
    assert wire._TOKEN_RE.pattern == wire.TOKEN_PATTERN
    assert wire._EVENT_ID_RE.pattern == wire.EVENT_ID_PATTERN
    assert wire._RFC3339_RE.pattern == wire.RFC3339_PATTERN
    tokens = ("a", "A-z_9", "x" * 64, "x" * 65, "", "a\n", "é", "a b", "\u0661", "\uff21")  # non-ASCII digit and letter
    for card_id in tokens:
        for code in tokens:
            for appid in (None, *tokens):
                expected = all(re.search(wire.TOKEN_PATTERN, t) for t in (card_id, code, appid) if t is not None)
                assert wire._tokens_ok(card_id, code, appid) == expected, (card_id, code, appid)
