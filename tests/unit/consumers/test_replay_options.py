"""``replay``'s pure parts: option parsing, and deciding records with the processor's loop into its stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from adapters.native import NativeStep
from adapters.wire import decode_event
from consumers.replay import ReplayStore, count_decisions, parse_offsets, parse_time
from domain.decide import fold
from domain.errors import ConfigurationError
from domain.model import DecisionKind
from tests.factories import encode, random_stream
from tests.malformed import malformed_cases


def test_offsets_parse_and_refuse_garbage() -> None:
    assert parse_offsets("0:120, 3:7") == {0: 120, 3: 7}
    for bad in ("", "0", "a:1", "1:-2"):
        with pytest.raises(ConfigurationError):
            parse_offsets(bad)


def test_times_without_a_zone_are_utc() -> None:
    assert parse_time("2026-11-23T10:00:00") == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert parse_time("2026-11-23T18:00:00+08:00").utcoffset() == timedelta(hours=8)
    assert parse_time("2026-11-23T10:00:00Z").tzinfo is not None
    assert parse_time("2026-11-23T10:00:00+00:00").tzinfo == UTC
    with pytest.raises(ConfigurationError):
        parse_time("yesterday")


@pytest.mark.parametrize("step", ["native", "python"])
@pytest.mark.parametrize("on_disk", [False, True], ids=["memory", "rocksdb"])
def test_deciding_records_matches_folding_the_events_and_counts_bad_ones_by_reason(
    on_disk: bool, step: str, tmp_path: Path, native_step: NativeStep
) -> None:
    events = list(random_stream(3000, 100, seed=3))
    bad = malformed_cases()
    raw: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = [
        (k, v, []) for k, v in map(encode, events)
    ] + [(k, v, h) for _, k, v, h, _ in bad]
    records = [SimpleNamespace(topic="t", partition=0, offset=i, key=k, value=v, headers=h) for i, (k, v, h) in enumerate(raw)]
    store = ReplayStore(tmp_path if on_disk else None)
    states = store.partition(0)
    by_kind = {k.value: 0 for k in DecisionKind}
    invalid: dict[str, int] = {}
    count_decisions(
        records,
        states,
        by_kind,
        invalid,
        max_bytes=65536,
        now="2026-11-23T10:00:00Z",
        native_step=native_step if step == "native" else None,
    )
    states.commit(len(records))

    expected = fold(decode_event(*encode(ev)) for ev in events)
    rebuilt = {s.key: s for _, s in store.items()}
    assert {k: (s.status, s.version, s.recent_event_ids) for k, s in rebuilt.items()} == {
        k: (s.status, s.version, s.recent_event_ids) for k, s in expected.items()
    }
    assert sum(by_kind.values()) == len(events)
    expected_reasons: dict[str, int] = {}
    for *_, reason in bad:
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert invalid == expected_reasons
    store.close()
