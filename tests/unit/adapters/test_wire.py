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
def test_malformed_input_is_refused_with_its_reason(
    name: str, key: bytes | None, value: bytes | None, headers: list, reason: str
) -> None:
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
    headers: list[tuple[str, bytes | None]] = [
        ("content-type", wire.STRUCTURED_CONTENT_TYPE.encode()),
        ("ce_specversion", b"1.0"),
    ]
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


# ------------------------------------------------------------- hot-path codecs


@pytest.mark.parametrize("field", ["id", "card_id", "time"])
def test_an_invalid_earlier_duplicate_of_a_checked_field_is_refused(field: str) -> None:
    """The last duplicate wins, but every occurrence is checked: a faster
    decoder that only checked the surviving value would accept these (a
    pattern-free decode plus regex checks did, and was dropped for it)."""
    ev = event(*card(11), S.LOCK)
    key = f"{ev['data']['card_id']}/{ev['data']['code']}".encode()
    bad = {"id": "e-1\\n", "card_id": "c\\n", "time": "2026-11-23T10:00:00Z\\n"}[field]  # JSON escapes of a newline
    text = encode(ev)[1].decode()
    if field == "card_id":
        text = text.replace('"card_id"', f'"card_id": "{bad}", "card_id"', 1)
    else:
        text = text.replace("{", f'{{"{field}": "{bad}", ', 1)
    with pytest.raises(InvalidEventError) as info:
        wire.decode_event(key, text.encode())
    assert info.value.reason == ("invalid_data" if field == "card_id" else "not_cloudevent"), str(info.value)


def test_state_is_encoded_as_the_state_record_it_stands_for() -> None:
    """``encode_state`` builds its ``StateRecord`` positionally from the state's fields."""
    import msgspec

    from domain.model import InvoiceState

    state = InvoiceState("c", "1", S.CLOSURE, 7, "wx1", None, ("a", 'b"c'))
    record = msgspec.json.decode(wire.encode_state(state), type=wire.StateRecord)
    assert record == wire.StateRecord(
        card_id="c", code="1", status=S.CLOSURE, version=7, appid="wx1", recent_event_ids=["a", 'b"c'], updated_at=None
    )
    assert set(msgspec.json.decode(wire.encode_state(state))) == set(wire.StateRecord.__struct_fields__)
    assert wire.StateRecord.__struct_fields__[:7] == (
        "card_id",
        "code",
        "status",
        "version",
        "appid",
        "recent_event_ids",
        "updated_at",
    )


def test_outcome_fields_are_in_the_order_outcome_bytes_passes_them() -> None:
    # outcome_bytes builds both structs positionally: a field moved here would
    # silently put a value under another name.
    assert wire.OutcomeData.__struct_fields__[:17] == (
        "card_id",
        "code",
        "appid",
        "event_id",
        "event_type",
        "from_status",
        "requested_status",
        "version",
        "processed_at",
        "to_status",
        "reason",
        "trigger",
        "source_partition",
        "source_offset",
        "event_time",
        "origin",
        "legal",
    )
    assert wire.OutcomeEvent.__struct_fields__[:7] == ("specversion", "id", "source", "type", "time", "subject", "data")


# ------------------------------------------------------------------ deliveries


def _delivery(result: str = "delivered", **changes: object) -> wire.DeliveryRecord:
    import msgspec

    record = wire.DeliveryRecord(
        idempotency_key="c1/1#2",
        card_id="c1",
        code="1",
        appid="wx1",
        reimburse_status=S.LOCK,
        version=2,
        result=result,  # type: ignore[arg-type]  # a plain str, written like the enum
        errcode=0,
        errmsg="ok",
        attempts=1,
        outcome_id="t.outcomes/0/5",
        first_attempt_at="2026-12-02T10:00:00.000Z",
        completed_at="2026-12-02T10:00:00.120Z",
        duration_ms=120.0,
    )
    return msgspec.structs.replace(record, **changes)


def test_a_delivery_record_is_a_cloudevent_whose_data_is_the_record() -> None:
    import json

    from domain.delivery import FinalReason

    record = _delivery("failed", errcode=-1, errmsg="no credentials for wx1", reason=FinalReason.NO_CREDENTIALS)
    value = wire.delivery_bytes(record)
    event = json.loads(value)
    assert {k: event[k] for k in ("specversion", "type", "source", "subject", "time", "datacontenttype")} == {
        "specversion": "1.0",
        "type": "invoice.delivery.recorded",
        "source": "/invoice-sm/deliverer",
        "subject": "c1/1",
        "time": "2026-12-02T10:00:00.120Z",
        "datacontenttype": "application/json",
    }
    assert event["id"] == "c1/1#2@failed"
    assert event["data"]["reason"] == "no_credentials" and event["data"]["idempotency_key"] == "c1/1#2"
    assert wire.decode_delivery(value) == record
    wire.validate_produced(value, "delivery")
    assert dict(wire.DELIVERY_HEADERS) == {"content-type": b"application/cloudevents+json"}


def test_the_same_delivery_committed_again_is_the_same_event() -> None:
    import json

    assert wire.delivery_bytes(_delivery()) == wire.delivery_bytes(_delivery())
    from domain.delivery import DeliveryResult

    ids = {json.loads(wire.delivery_bytes(_delivery(result)))["id"] for result in (DeliveryResult.DELIVERED, "conflict")}
    assert ids == {"c1/1#2@delivered", "c1/1#2@conflict"}


def test_deliveries_written_before_they_were_cloudevents_are_still_read() -> None:
    import msgspec

    record = _delivery()
    assert wire.decode_delivery(wire.encode(record)) == record  # reconcile reads 30 days of the topic
    with pytest.raises(msgspec.DecodeError):
        wire.decode_delivery(b'{"specversion": "1.0", "type": "invoice.delivery.recorded"}')
    with pytest.raises(msgspec.DecodeError):
        wire.decode_delivery(b"not json")


def test_delivery_events_validate_against_the_checked_in_schema() -> None:
    import json

    import jsonschema

    import schemas

    validator = jsonschema.Draft202012Validator(schemas.load("delivery"))
    validator.validate(json.loads(wire.delivery_bytes(_delivery())))
    record_schema = schemas.load("delivery")["$defs"]["DeliveryRecord"]
    assert "reason" in record_schema["properties"] and "reason" not in record_schema.get("required", [])
    assert not validator.is_valid(json.loads(wire.encode(_delivery())))  # the plain record is not the topic's shape
    bad = json.loads(wire.delivery_bytes(_delivery()))
    bad["data"]["reason"] = "because"
    assert not validator.is_valid(bad)


def test_the_cloudevents_sdk_reads_a_delivery() -> None:
    from cloudevents.core.bindings import kafka as core_kafka
    from cloudevents.core.formats.json import JSONFormat

    value = wire.delivery_bytes(_delivery())
    message = core_kafka.KafkaMessage(headers=dict(wire.DELIVERY_HEADERS), key=b"c1/1", value=value)
    event = core_kafka.from_structured(message, JSONFormat())
    assert (event.get_type(), event.get_id(), event.get_subject()) == ("invoice.delivery.recorded", "c1/1#2@delivered", "c1/1")
    data = event.get_data()
    assert isinstance(data, dict) and data["result"] == "delivered"


def test_a_plain_delivery_record_is_not_what_the_deliverer_may_produce() -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError):
        wire.validate_produced(wire.encode(_delivery()), "delivery")
