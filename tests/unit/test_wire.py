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
    # unreadable_record is given by the Kafka adapter before decoding (a record
    # aiokafka could not parse has no key/value/headers to hand over).
    assert {reason for *_, reason in CASES} == set(wire.DLQ_REASONS) - {"unreadable_record"}


def test_a_record_the_client_could_not_parse_is_refused_as_unreadable() -> None:
    class Unreadable:
        key, value, headers, problem = None, b"{}", (), "header key is not UTF-8 at byte 3"

    with pytest.raises(InvalidEventError) as info:
        wire.decode_record(Unreadable())
    assert info.value.reason == "unreadable_record" and "byte 3" in info.value.detail


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


def test_content_type_decides_the_mode_over_a_stray_ce_header() -> None:
    key, value = encode(event(*card(5), S.LOCK, event_id="e-5"))
    headers = [("content-type", wire.STRUCTURED_CONTENT_TYPE.encode()), ("ce_specversion", b"1.0")]
    assert wire.decode_event(key, value, headers).event_id == "e-5"


def test_null_content_type_in_binary_mode_means_json() -> None:
    key, value, headers, ev = binary_mode_valid(6)
    headers = [(k, v) for k, v in headers if k != "content-type"] + [("content-type", None)]
    assert wire.decode_event(key, value, headers).event_id == ev["id"]


def test_structured_data_base64_decodes_like_data() -> None:
    import base64
    import json

    ev = event(*card(7), S.LOCK, event_id="e-7")
    data = ev.pop("data")
    ev["data_base64"] = base64.b64encode(json.dumps(data).encode()).decode()
    key = f"{data['card_id']}/{data['code']}".encode()
    decoded = wire.decode_event(key, json.dumps(ev).encode())
    assert (decoded.card_id, decoded.requested_status) == (data["card_id"], S.LOCK)


def test_missing_key_says_how_to_set_it() -> None:
    _, value = encode(event(*card(8), S.LOCK))
    with pytest.raises(InvalidEventError) as info:
        wire.decode_event(None, value)
    assert info.value.reason == "key_mismatch" and "partitionkey" in info.value.detail


@pytest.mark.parametrize("event_type", sorted(__import__("domain.status", fromlist=["x"]).EVENT_TYPE_TARGETS))
def test_every_event_type_of_the_table_decodes_to_its_status_and_origin(event_type: str) -> None:
    from domain.status import EVENT_TYPE_ORIGINS, EVENT_TYPE_TARGETS

    ev = event(*card(9), S.CANCEL, event_id=f"t-{event_type}")
    ev["type"] = event_type
    target = EVENT_TYPE_TARGETS[event_type]
    if target is None:
        ev["data"]["reimburse_status"] = S.CANCEL.value
    else:
        ev["data"].pop("reimburse_status", None)
    decoded = wire.decode_event(*encode(ev))
    assert decoded.requested_status is (target or S.CANCEL)
    assert decoded.origin is EVENT_TYPE_ORIGINS[event_type]
