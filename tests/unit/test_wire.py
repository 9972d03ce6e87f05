from __future__ import annotations

import pytest

from adapters import wire
from domain.errors import InvalidEventError
from domain.status import ReimburseStatus as S
from tests.factories import card, encode, event
from tests.malformed import binary_mode_valid, malformed_cases

CASES = malformed_cases()


def test_there_are_at_least_twenty_kinds_of_malformed_input() -> None:
    assert len({name for name, *_ in CASES}) >= 20
    assert {reason for *_, reason in CASES} == set(wire.DLQ_REASONS)


@pytest.mark.parametrize(("name", "key", "value", "headers", "reason"), CASES, ids=[c[0] for c in CASES])
def test_malformed_input_is_refused_with_its_reason(name: str, key: bytes | None, value: bytes | None, headers: list, reason: str) -> None:
    with pytest.raises(InvalidEventError) as info:
        wire.decode_event(key, value, headers)
    assert info.value.reason == reason, str(info.value)


def test_structured_event_decodes_to_the_domain_event() -> None:
    ev = event(*card(1), S.LOCK, event_id="e-1")
    decoded = wire.decode_event(*encode(ev))
    assert (decoded.event_id, decoded.requested_status, decoded.appid) == ("e-1", S.LOCK, ev["data"]["appid"])
    assert decoded.key == f"{ev['data']['card_id']}/{ev['data']['code']}"


def test_status_set_takes_its_target_from_data() -> None:
    ev = event(*card(2), S.CANCEL, set_type=True)
    assert wire.decode_event(*encode(ev)).requested_status is S.CANCEL


def test_binary_mode_event_decodes_like_structured() -> None:
    key, value, headers, ev = binary_mode_valid(3)
    decoded = wire.decode_event(key, value, headers)
    assert decoded.event_id == ev["id"] and decoded.requested_status is S.LOCK


def test_unknown_extension_attributes_are_accepted() -> None:
    ev = event(*card(4), S.LOCK)
    ev["traceparent"] = "00-abc-def-01"
    assert wire.decode_event(*encode(ev)).event_id == ev["id"]


def test_state_round_trips_through_its_wire_form() -> None:
    from domain.model import InvoiceState

    state = InvoiceState("c", "1", S.LOCK, 3, "wx1", "2026-11-23T10:00:00Z", ("a", "b"))
    assert wire.decode_state(wire.encode_state(state)) == state
    wire.validate_produced(wire.encode_state(state), "state")
