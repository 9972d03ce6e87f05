"""Per-delivery work of ``consumers/delivery_calls.py`` that is cheap on purpose:
the record's timestamps and the sampled schema check of produced records."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters import wire
from adapters.metrics import NullMetrics
from adapters.settings import Settings
from consumers import delivery_calls
from consumers.delivery_calls import Calls, utc_iso
from domain.delivery import DeliveryResult, Final
from tests.support.fakes import job
from tests.unit.consumers.test_delivery_lane import lane


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_utc_iso_writes_what_datetime_writes(ts: float) -> None:
    expected = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert utc_iso(ts) == expected


@pytest.mark.parametrize("ts", [1_765_000_000.9999996, 1_765_000_000.0005, 1_700_000_000.4999995, 0.0])
def test_utc_iso_rounds_to_the_microsecond_first_as_datetime_does(ts: float) -> None:
    assert utc_iso(ts) == datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize(("mode", "checked"), [("all", 600), ("sample", 3), ("off", 0)])
def test_produced_records_are_checked_every_one_one_in_256_or_never(
    mode: Literal["all", "sample", "off"], checked: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bytes] = []
    monkeypatch.setattr(wire, "validate_produced", lambda value, kind: seen.append(value))
    calls = Calls(Settings(validate_produced=mode), client=None, metrics=NullMetrics())  # no call is made
    ln = lane()
    records = [calls.record(job(ln, i, f"c{i}", 1), _final()) for i in range(600)]
    assert len(seen) == checked
    if mode == "sample":
        assert seen == records[:: delivery_calls._SAMPLE_EVERY]


def _final(**overrides: Any) -> Final:
    base: dict[str, Any] = {"result": DeliveryResult.DELIVERED, "errcode": 0, "errmsg": "ok"}
    return Final(**{**base, **overrides})
