"""The status processor against a real broker."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.native import NativeStep
from adapters.settings import Settings
from adapters.topics import topic_names
from adapters.wire import DLQ_HEADERS
from domain.status import WECHAT_STATUS_REPORTED
from domain.status import ReimburseStatus as S
from tests.factories import card, encode, event, random_stream
from tests.malformed import binary_mode_valid, malformed_cases, producible
from tests.support.kafka_io import produce, produce_events, read_topic, values, wait_for_count
from tests.support.services import running

pytestmark = pytest.mark.broker


async def test_lifecycle_of_one_invoice(settings: Settings) -> None:
    c, code = card(1)
    events = [
        event(c, code, S.LOCK, event_id="e1"),
        event(c, code, S.INIT, event_id="e2"),
        event(c, code, S.LOCK, event_id="e3"),
        event(c, code, S.CLOSURE, event_id="e4"),
        event(c, code, S.CANCEL, event_id="e5"),
    ]
    other_card, other_code = card(2)
    more = [
        event(other_card, other_code, S.CLOSURE, event_id="f1"),  # INIT -> CLOSURE
        event(other_card, other_code, S.LOCK, event_id="f2"),
        event(other_card, other_code, S.LOCK, event_id="f2"),  # same id again
        event(other_card, other_code, S.LOCK, event_id="f3"),  # same status again
    ]
    await produce_events(settings, events + more)
    async with running(settings):
        records = await wait_for_count(settings, settings.topic_outcomes, len(events) + len(more))
    outcomes = values(records)
    first = [o for o in outcomes if o["data"]["card_id"] == c]
    assert [o["type"] for o in first] == ["invoice.status.accepted"] * 4 + ["invoice.status.rejected"]
    assert [o["data"]["version"] for o in first] == [1, 2, 3, 4, 4]
    assert first[-1]["data"]["reason"] == "terminal_state"
    assert [o["data"]["to_status"] for o in first[:4]] == [S.LOCK, S.INIT, S.LOCK, S.CLOSURE]
    second = [o for o in outcomes if o["data"]["card_id"] == other_card]
    assert [(o["type"].rsplit(".", 1)[1], o["data"]["reason"]) for o in second] == [
        ("rejected", "illegal_transition"),
        ("accepted", None),
        ("duplicate", None),
        ("unchanged", None),
    ]
    assert all(r.key == f"{o['data']['card_id']}/{o['data']['code']}".encode() for r, o in zip(records, outcomes, strict=True))

    state = {json.loads(r.value)["card_id"]: json.loads(r.value) for r in await read_topic(settings, settings.topic_state)}
    assert state[c]["status"] == S.CLOSURE and state[c]["version"] == 4
    assert state[other_card]["status"] == S.LOCK and state[other_card]["recent_event_ids"] == ["f1", "f2", "f3"]


async def test_malformed_input_goes_to_the_dlq_and_valid_events_around_it_are_decided(settings: Settings) -> None:
    cases = producible(malformed_cases(settings.max_event_bytes))
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = []
    for i, (name, key, value, headers, _) in enumerate(cases):
        ok = event(*card(100 + i), S.LOCK, event_id=f"ok-{i}")
        records.append((*encode(ok), []))
        records.append((key, value, [*headers, ("test-case", name.encode())]))
    bkey, bvalue, bheaders, _ = binary_mode_valid(500)
    records.append((bkey, bvalue, bheaders))
    await produce(settings, records)
    async with running(settings):
        outcomes = await wait_for_count(settings, settings.topic_outcomes, len(cases) + 1)
        dlq = await wait_for_count(settings, settings.topic_dlq, len(cases))
    assert Counter(o["type"] for o in values(outcomes)) == {"invoice.status.accepted": len(cases) + 1}
    assert len(dlq) == len(cases)
    by_case = {dict(r.headers)["test-case"].decode(): r for r in dlq}
    for name, key, value, headers, reason in cases:
        record = by_case[name]
        h = dict(record.headers)
        assert h[DLQ_HEADERS["reason"]].decode() == reason, name
        assert record.key == key and (record.value or b"") == (value or b""), name
        assert h[DLQ_HEADERS["source_topic"]].decode() == settings.topic_events
        assert h[DLQ_HEADERS["error_message"]], name
        for original in headers:
            assert original in record.headers, name


async def test_state_survives_a_restart_through_the_changelog(make_settings: Callable[..., Settings], tmp_path) -> None:
    settings = make_settings()
    c, code = card(7)
    await produce_events(settings, [event(c, code, S.LOCK, event_id="a")])
    async with running(settings):
        await wait_for_count(settings, settings.topic_outcomes, 1)
    # A fresh, empty state dir: everything must come back from invoice.state.
    fresh = make_settings(
        state_dir=tmp_path / "elsewhere",
        topic_events=settings.topic_events,
        topic_outcomes=settings.topic_outcomes,
        topic_state=settings.topic_state,
        topic_dlq=settings.topic_dlq,
        processor_group_id=settings.processor_group_id,
    )
    await produce_events(fresh, [event(c, code, S.CLOSURE, event_id="b"), event(c, code, S.LOCK, event_id="a")])
    async with running(fresh):
        outcomes = values(await wait_for_count(fresh, fresh.topic_outcomes, 3))
    assert [(o["type"], o["data"]["version"]) for o in outcomes] == [
        ("invoice.status.accepted", 1),
        ("invoice.status.accepted", 2),
        ("invoice.status.duplicate", 2),
    ]


def _outcomes_by_source(records: list[Any]) -> dict[tuple[int, int], Any]:
    """Outcomes by the input position they answer, less the wall-clock fields."""
    out: dict[tuple[int, int], Any] = {}
    for record in records:
        body = json.loads(record.value)
        body.pop("time")
        data = body["data"]
        data.pop("processed_at")
        out[(data["source_partition"], data["source_offset"])] = (record.key, body)
    return out


def _dlq_by_source(records: list[Any]) -> dict[tuple[int, int], Any]:
    """DLQ copies by the input position they keep: the record and why."""
    out: dict[tuple[int, int], Any] = {}
    for record in records:
        h = dict(record.headers)
        where = (int(h[DLQ_HEADERS["source_partition"]]), int(h[DLQ_HEADERS["source_offset"]]))
        out[where] = (record.key, record.value, h[DLQ_HEADERS["reason"]])
    return out


async def test_the_native_step_and_the_python_path_write_the_same_records(
    make_settings: Callable[..., Settings], tmp_path: Path, native_step: NativeStep
) -> None:
    """One input, two processors: the native step on (what runs by default)
    and off. Outcomes, state records and DLQ records must be the same,
    wall-clock fields aside, for requests, WeChat reports, repeats, events
    the native step declines (non-ASCII ids, spaced JSON with unknown
    attributes, binary mode) and malformed records."""
    fast = make_settings(native_step="on")
    slow = make_settings(
        **{**topic_names(f"{fast.topic_events}.py"), "topic_events": fast.topic_events},
        processor_group_id=f"{fast.processor_group_id}.py",
        state_dir=tmp_path / "python-path",
        native_step="off",
    )
    rng = random.Random(11)
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = []
    for i, ev in enumerate(random_stream(1500, 120, seed=11)):
        if rng.random() < 0.1:
            ev = {**ev, "type": WECHAT_STATUS_REPORTED, "data": {**ev["data"], "reimburse_status": rng.choice(list(S)).value}}
        if rng.random() < 0.05:
            ev = {**ev, "id": f"事件-{i}", "extension_x": 1}
        records.append((*encode(ev), []))
    malformed = producible(malformed_cases(fast.max_event_bytes))
    for _, key, value, headers, _ in malformed:
        records.insert(rng.randrange(len(records)), (key, value, list(headers)))
    bkey, bvalue, bheaders, _ = binary_mode_valid(900)
    records.append((bkey, bvalue, bheaders))
    await produce(fast, records)

    written = {}
    for name, settings in (("native", fast), ("python", slow)):
        async with running(settings) as processor:
            dlq = await wait_for_count(settings, settings.topic_dlq, len(malformed))
            outcomes = await wait_for_count(settings, settings.topic_outcomes, len(records) - len(dlq))
            judged = {
                step: processor.metrics.registry.get_sample_value("invoice_sm_decision_steps_total", {"step": step}) or 0.0
                for step in ("native", "python")
            }
        state = await read_topic(settings, settings.topic_state)
        written[name] = (
            _outcomes_by_source(outcomes),
            # Each partition's state records in order (offsets differ: batches, and so commit markers, may).
            [
                (r.partition, r.key, {k: v for k, v in json.loads(r.value).items() if k != "updated_at"})
                for r in sorted(state, key=lambda r: (r.partition, r.offset))
            ],
            _dlq_by_source(dlq),
            judged,
        )
    assert written["native"][:3] == written["python"][:3]
    assert len(written["native"][0]) == len(records) - len(written["native"][2]) > 1400
    # Which step judged them: most natively with it on, none with it off.
    native_judged, python_judged = written["native"][3], written["python"][3]
    assert native_judged["native"] > 1000 and native_judged["python"] >= len(written["native"][2]) + 50
    assert python_judged["native"] == 0 and python_judged["python"] == len(records)
