"""Wire formats of every topic, as msgspec types, and their codecs.

These types are the source of the JSON Schemas in ``schemas/`` (``invoice-sm
schemas --write`` regenerates them; a test checks the checked-in files
match). Decoding validates against them; encoding goes through the same
types, so what we produce matches the schema by construction, and
``validate_produced`` re-checks it cheaply where a bug would be costly.

Input events are CloudEvents 1.0, structured (``application/cloudevents+json``)
or binary (``ce_*`` headers, the CloudEvents Kafka binding). A record that
cannot be decided raises ``InvalidEventError`` whose ``reason`` is one of
``DLQ_REASONS``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from domain.errors import InvalidEventError
from domain.model import InvoiceState, LifecycleEvent, invoice_key
from domain.status import EVENT_TYPE_TARGETS, ReimburseStatus

#: Card ids, codes and appids are short tokens; ``/`` would break the key.
Token = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]
EventId = Annotated[str, Meta(min_length=1, max_length=256)]
Rfc3339 = Annotated[
    str, Meta(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
]
Version = Annotated[int, Meta(ge=0)]

SPECVERSION = "1.0"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
OUTCOME_SOURCE = "/invoice-sm/processor"

DLQ_REASONS: dict[str, str] = {
    "empty_value": "the record has no value (null or empty)",
    "oversized": "the value is larger than INVOICE_SM_MAX_EVENT_BYTES",
    "not_utf8": "the value is not UTF-8",
    "not_json": "the value is not JSON",
    "not_cloudevent": "the JSON is not a CloudEvents 1.0 event (missing or mistyped attribute)",
    "unsupported_content_type": "the content-type header is not JSON",
    "unknown_type": "the event type is not one invoice-sm knows",
    "invalid_data": "data is missing a field, has a malformed one, or contradicts the type",
    "key_mismatch": "the Kafka key is missing or is not the invoice key card_id/code",
}


# --------------------------------------------------------------------- events


class EventData(Struct, frozen=True, forbid_unknown_fields=False):
    card_id: Token
    code: Token
    appid: Token | None = None
    reimburse_status: ReimburseStatus | None = None


class CloudEvent(Struct, frozen=True, forbid_unknown_fields=False):
    """An upstream lifecycle event (``invoice.events``)."""

    specversion: Literal["1.0"]
    id: EventId
    source: Annotated[str, Meta(min_length=1, max_length=1024)]
    type: str
    data: EventData
    time: Rfc3339 | None = None
    subject: str | None = None
    datacontenttype: str | None = None


# ------------------------------------------------------------------- outcomes

OutcomeType = Literal[
    "invoice.status.accepted",
    "invoice.status.unchanged",
    "invoice.status.duplicate",
    "invoice.status.rejected",
    "invoice.status.repair",
]


class OutcomeData(Struct, frozen=True, omit_defaults=False):
    card_id: Token
    code: Token
    appid: str
    event_id: EventId
    event_type: str
    from_status: ReimburseStatus
    requested_status: ReimburseStatus
    version: Version
    processed_at: Rfc3339
    to_status: ReimburseStatus | None = None
    reason: str | None = None
    trigger: str | None = None
    #: Where the deciding event was read: lets anyone trace an outcome back.
    source_partition: int | None = None
    source_offset: int | None = None
    #: When upstream says the event happened (for end-to-end latency).
    event_time: Rfc3339 | None = None
    #: Only on ``invoice.status.repair`` (written by ``reconcile --repair``):
    #: the delivery's idempotency key, stable for the same divergence.
    idempotency_key: str | None = None


class OutcomeEvent(Struct, frozen=True):
    """One decision per valid event (``invoice.outcomes``), a CloudEvent.

    ``invoice.status.repair`` records are not decisions: ``reconcile --repair``
    writes them to ask the deliverer to push ``to_status`` again.
    """

    specversion: Literal["1.0"]
    id: EventId
    source: str
    type: OutcomeType
    time: Rfc3339
    subject: str
    data: OutcomeData
    datacontenttype: str = "application/json"


# ---------------------------------------------------------------------- state


class StateRecord(Struct, frozen=True):
    """Latest state of one invoice (``invoice.state``, compacted)."""

    card_id: Token
    code: Token
    status: ReimburseStatus
    version: Version
    appid: str
    recent_event_ids: list[EventId]
    updated_at: Rfc3339 | None = None
    schema_version: Literal[1] = 1


# ----------------------------------------------------------------- deliveries

DeliveryResult = Literal["delivered", "already_applied", "conflict", "failed"]


class DeliveryRecord(Struct, frozen=True):
    """The final record of one accepted outcome's delivery (``invoice.deliveries``)."""

    idempotency_key: str
    card_id: Token
    code: Token
    appid: str
    reimburse_status: ReimburseStatus
    version: Annotated[int, Meta(ge=1)]
    result: DeliveryResult
    errcode: int
    errmsg: str
    attempts: Annotated[int, Meta(ge=0)]
    outcome_id: str
    first_attempt_at: Rfc3339 | None
    completed_at: Rfc3339
    duration_ms: float
    error_class: str | None = None
    #: Set when the record comes from ``reconcile --repair``.
    repair: bool = False


# ------------------------------------------------------------------------ DLQ


class DlqRecord(Struct, frozen=True):
    """A DLQ record as ``invoice-sm dlq list`` prints it. On the topic the
    original key, value and headers are kept byte for byte and the error is
    in ``dlq.*`` headers (``DLQ_HEADERS``)."""

    reason: str
    error_class: str
    error_message: str
    source_topic: str
    source_partition: int
    source_offset: int
    failed_at: Rfc3339
    key: str | None
    value: str | None
    value_base64: str | None
    headers: dict[str, str]
    partition: int | None = None
    offset: int | None = None


DLQ_HEADERS = {
    "reason": "dlq.error.reason",
    "error_class": "dlq.error.class",
    "error_message": "dlq.error.message",
    "source_topic": "dlq.source.topic",
    "source_partition": "dlq.source.partition",
    "source_offset": "dlq.source.offset",
    "failed_at": "dlq.failed.at",
}

SCHEMA_TYPES: dict[str, type] = {
    "event": CloudEvent,
    "outcome": OutcomeEvent,
    "state": StateRecord,
    "delivery": DeliveryRecord,
    "dlq": DlqRecord,
}

# ------------------------------------------------------------------- decoding

_event_decoder = msgspec.json.Decoder(CloudEvent)
_data_decoder = msgspec.json.Decoder(EventData)
_any_decoder = msgspec.json.Decoder()
_state_decoder = msgspec.json.Decoder(StateRecord)
_outcome_decoder = msgspec.json.Decoder(OutcomeEvent)
_delivery_decoder = msgspec.json.Decoder(DeliveryRecord)
_encoder = msgspec.json.Encoder()

_CE_HEADERS = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject")


def _header_dict(headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...] | None) -> dict[str, bytes]:
    return {k.lower(): v for k, v in headers} if headers else {}


def _diagnose(value: bytes, exc: Exception) -> InvalidEventError:
    """Name the first thing wrong with a value the typed decoder refused.

    Only runs for bad input, so it may take the slow way.
    """
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as err:
        return InvalidEventError("not_utf8", f"invalid UTF-8 at byte {err.start}")
    try:
        raw = _any_decoder.decode(value)
    except msgspec.DecodeError as err:
        return InvalidEventError("not_json", str(err))
    if not isinstance(raw, dict):
        return InvalidEventError("not_cloudevent", f"expected a JSON object, got {type(raw).__name__}")
    message = str(exc)
    if "$.data" in message:
        return InvalidEventError("invalid_data", message)
    return InvalidEventError("not_cloudevent", message)


def _to_domain(event: CloudEvent, key: bytes | None) -> LifecycleEvent:
    target = EVENT_TYPE_TARGETS.get(event.type, KeyError)
    if target is KeyError:
        raise InvalidEventError("unknown_type", f"type {event.type[:100]!r} is not an invoice lifecycle event")
    data = event.data
    requested = data.reimburse_status
    if target is None:
        if requested is None:
            raise InvalidEventError("invalid_data", "invoice.status.set needs data.reimburse_status")
    elif requested is not None and requested is not target:
        raise InvalidEventError("invalid_data", f"data.reimburse_status {requested} contradicts type {event.type}")
    else:
        requested = target
    expected = invoice_key(data.card_id, data.code)
    if key is None:
        raise InvalidEventError("key_mismatch", f"record has no key; expected {expected!r}")
    if key != expected.encode():
        raise InvalidEventError("key_mismatch", f"key {key[:140]!r} is not the invoice key {expected!r}")
    if event.subject is not None and event.subject != expected:
        raise InvalidEventError("invalid_data", f"subject {event.subject[:140]!r} is not the invoice key {expected!r}")
    return LifecycleEvent(
        event_id=event.id,
        event_type=event.type,
        card_id=data.card_id,
        code=data.code,
        requested_status=requested,  # type: ignore[arg-type]
        appid=data.appid or "",
        time=event.time,
    )


def decode_event(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...] | None = None,
    *,
    max_bytes: int = 65536,
) -> LifecycleEvent:
    """Decode and validate one ``invoice.events`` record, or raise ``InvalidEventError``."""
    if not value:
        raise InvalidEventError("empty_value", "record value is null or empty")
    if len(value) > max_bytes:
        raise InvalidEventError("oversized", f"{len(value)} bytes > limit {max_bytes}")
    hdrs = _header_dict(headers) if headers else None
    if hdrs and "ce_specversion" in hdrs:
        return _decode_binary(key, value, hdrs)
    if hdrs:
        content_type = hdrs.get("content-type")
        if content_type is not None and b"json" not in content_type.lower():
            raise InvalidEventError("unsupported_content_type", f"content-type {content_type[:80]!r}")
    try:
        event = _event_decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise _diagnose(value, exc) from None
    return _to_domain(event, key)


def _decode_binary(key: bytes | None, value: bytes, hdrs: dict[str, bytes]) -> LifecycleEvent:
    """CloudEvents Kafka binding, binary mode: attributes in ``ce_*`` headers."""
    try:
        attrs = {name[3:]: hdrs[name].decode("utf-8") for name in _CE_HEADERS if name in hdrs}
    except UnicodeDecodeError:
        raise InvalidEventError("not_utf8", "a ce_* header is not UTF-8") from None
    content_type = hdrs.get("content-type", b"application/json")
    if b"json" not in content_type.lower():
        raise InvalidEventError("unsupported_content_type", f"content-type {content_type[:80]!r}")
    try:
        data = _any_decoder.decode(value)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _diagnose(value, exc) from None
    try:
        event = msgspec.convert({**attrs, "data": data}, CloudEvent)
    except msgspec.ValidationError as exc:
        reason = "invalid_data" if "$.data" in str(exc) else "not_cloudevent"
        raise InvalidEventError(reason, f"binary mode: {exc}") from None
    return _to_domain(event, key)


# ------------------------------------------------------------------- encoding


def encode(obj: Struct) -> bytes:
    return _encoder.encode(obj)


def decode_state(value: bytes) -> InvoiceState:
    record = _state_decoder.decode(value)
    return InvoiceState(
        card_id=record.card_id,
        code=record.code,
        status=record.status,
        version=record.version,
        appid=record.appid,
        updated_at=record.updated_at,
        recent_event_ids=tuple(record.recent_event_ids),
    )


def encode_state(state: InvoiceState) -> bytes:
    return _encoder.encode(
        StateRecord(
            card_id=state.card_id,
            code=state.code,
            status=state.status,
            version=state.version,
            appid=state.appid,
            recent_event_ids=list(state.recent_event_ids),
            updated_at=state.updated_at,
        )
    )


def decode_outcome(value: bytes) -> OutcomeEvent:
    return _outcome_decoder.decode(value)


def decode_delivery(value: bytes) -> DeliveryRecord:
    return _delivery_decoder.decode(value)


def validate_produced(value: bytes, kind: str) -> None:
    """Decode ``value`` as the schema type ``kind``; raises on a mismatch."""
    msgspec.json.decode(value, type=SCHEMA_TYPES[kind])


def json_schemas() -> dict[str, dict[str, object]]:
    """The JSON Schema (draft 2020-12) of every topic's records, by name."""
    out: dict[str, dict[str, object]] = {}
    for name, typ in SCHEMA_TYPES.items():
        schema = msgspec.json.schema(typ)
        out[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://invoice-sm.example/schemas/{name}.v1.schema.json",
            "title": typ.__name__,
            "description": (typ.__doc__ or "").strip().splitlines()[0],
            **schema,
        }
    return out
