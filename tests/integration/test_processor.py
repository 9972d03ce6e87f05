"""The status processor against a real broker."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import pytest

from adapters.settings import Settings
from adapters.wire import DLQ_HEADERS
from domain.status import ReimburseStatus as S
from tests.factories import card, encode, event
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
