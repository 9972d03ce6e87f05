"""Checks shared by the crash tests: exactly one outcome per event, state = the processor's own loop replayed."""

from __future__ import annotations

import json
from collections import Counter

from adapters import wire
from adapters.settings import Settings
from consumers.processor import decide_records
from domain.decide import DictStates
from tests.support.kafka_io import read_topic


async def assert_exactly_once(settings: Settings) -> dict[str, int]:
    """Every input record has exactly one committed outcome, and the latest
    state of every invoice equals a from-scratch run of the processor's
    decision loop (``decide_records``) over the events, partition by partition."""
    events = await read_topic(settings, settings.topic_events)
    outcomes = await read_topic(settings, settings.topic_outcomes)
    sources = Counter(
        (o["data"]["source_partition"], o["data"]["source_offset"]) for o in (json.loads(r.value) for r in outcomes)
    )
    repeated = {k: n for k, n in sources.items() if n > 1}
    assert not repeated, f"{len(repeated)} events have more than one outcome, e.g. {list(repeated)[:3]}"
    inputs = {(r.partition, r.offset) for r in events}
    missing = inputs - set(sources)
    assert not missing, f"{len(missing)} events have no outcome, e.g. {sorted(missing)[:3]}"
    assert set(sources) == inputs

    by_partition: dict[int, list] = {}
    for r in events:
        by_partition.setdefault(r.partition, []).append(r)
    expected = DictStates()
    for records in by_partition.values():
        records.sort(key=lambda r: r.offset)
        decided = decide_records(records, expected, max_bytes=settings.max_event_bytes, now=None)
        assert not decided.invalid, f"{len(decided.invalid)} events do not decode, e.g. {decided.invalid[0][1]}"
    latest = {}
    for r in await read_topic(settings, settings.topic_state):
        latest[r.key.decode()] = wire.decode_state(r.value)
    assert set(latest) == set(expected.states)
    diffs = [
        k
        for k, s in expected.states.items()
        if (s.status, s.version, s.recent_event_ids) != (latest[k].status, latest[k].version, latest[k].recent_event_ids)
    ]
    assert not diffs, f"{len(diffs)} invoices differ from the processor's loop replayed, e.g. {diffs[:3]}"
    return {"events": len(events), "outcomes": len(outcomes), "invoices": len(expected.states)}
