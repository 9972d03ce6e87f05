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

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta, Struct

from domain.delivery import DeliveryResult, FinalReason, WaitReason
from domain.errors import InvalidEventError
from domain.model import Decision, DecisionKind, InvoiceState, LifecycleEvent, invoice_key
from domain.status import EVENT_TYPE_ORIGINS, EVENT_TYPE_TARGETS, Origin, ReimburseStatus

#: Patterns are written once for both engines that read them: msgspec checks
#: them with Python's ``re.search`` and the JSON Schemas hand them to ECMA-262
#: validators. ``$(?!\n)`` is the true end in both (Python's bare ``$`` also
#: matches before a trailing newline), and ``[0-9]`` is ASCII where ``\d`` is not.
_END = r"$(?!\n)"
#: Card ids, codes and appids are short ASCII tokens; ``/`` would break the key.
_ID_PART = r"[A-Za-z0-9_-]{1,64}"
TOKEN_PATTERN = "^" + _ID_PART + _END
RFC3339_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})" + _END
#: Event ids are opaque but printable (no C0 or C1 control): a control character in an id would end
#: up in outcomes, logs and DLQ headers.
EVENT_ID_MAX_LENGTH = 256
EVENT_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]{1," + str(EVENT_ID_MAX_LENGTH) + "}" + _END
Token = Annotated[str, Meta(pattern=TOKEN_PATTERN)]
EventId = Annotated[str, Meta(pattern=EVENT_ID_PATTERN)]
Rfc3339 = Annotated[str, Meta(pattern=RFC3339_PATTERN)]
Version = Annotated[int, Meta(ge=0)]

SPECVERSION = "1.0"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
OUTCOME_SOURCE = "/invoice-sm/processor"
DELIVERY_SOURCE = "/invoice-sm/deliverer"
#: The CloudEvent type of every record on ``invoice.deliveries``.
DELIVERY_EVENT_TYPE: Final = "invoice.delivery.recorded"

DLQ_REASONS: dict[str, str] = {
    "empty_value": "the record has no value (null or empty)",
    "oversized": "the value is larger than INVOICE_SM_MAX_EVENT_BYTES",
    "not_utf8": "the value is not UTF-8",
    "not_json": "the value is not JSON",
    "not_cloudevent": "the JSON is not a CloudEvents 1.0 event (missing or mistyped attribute)",
    "unsupported_content_type": (
        "the content-type (header or datacontenttype) is not JSON, or names a CloudEvents mode other than structured JSON"
    ),
    "unknown_type": "the event type is not one invoice-sm knows",
    "invalid_data": "data is missing a field, has a malformed one, or contradicts the type",
    "key_mismatch": "the Kafka key (the CloudEvents partitionkey) is missing or not the invoice key card_id/code",
    "bad_header": "a header name is not UTF-8, or a ce_* header is empty or not UTF-8",
    "unreadable_record": "the Kafka client could not parse the record (kept by position, with raw bytes where they could be had)",
}


# --------------------------------------------------------------------- events


# ``gc=False`` on the types built once per event (decoded, or encoded and
# dropped): they hold strings, numbers and each other, frozen, so never a
# cycle, and the collector need not track hundreds of thousands of them.


class EventData(Struct, frozen=True, forbid_unknown_fields=False, gc=False):
    card_id: Token
    code: Token
    appid: Token | None = None
    reimburse_status: ReimburseStatus | None = None


class CloudEvent(Struct, frozen=True, forbid_unknown_fields=False, gc=False):
    """An upstream lifecycle event (``invoice.events``)."""

    specversion: Literal["1.0"]
    id: EventId
    source: Annotated[str, Meta(min_length=1, max_length=1024)]
    type: Annotated[str, Meta(max_length=256)]
    data: EventData | None = None
    time: Rfc3339 | None = None
    subject: Annotated[str, Meta(max_length=256)] | None = None
    datacontenttype: Annotated[str, Meta(max_length=256)] | None = None
    #: Structured mode may carry the data base64-encoded instead (the
    #: CloudEvents SDKs do so for bytes); it must decode to the same object.
    data_base64: Annotated[str, Meta(max_length=262144)] | None = None
    #: The CloudEvents Kafka binding's partitioning extension: when present
    #: it names the Kafka key, which must be the invoice key.
    partitionkey: Annotated[str, Meta(max_length=256)] | None = None


# ------------------------------------------------------------------- outcomes

OutcomeType = Literal[
    "invoice.status.accepted",
    "invoice.status.unchanged",
    "invoice.status.duplicate",
    "invoice.status.rejected",
    "invoice.status.repair",
]


class OutcomeData(Struct, frozen=True, omit_defaults=False, gc=False):
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
    #: ``upstream`` (a request judged) or ``wechat`` (WeChat reported a status
    #: change made elsewhere; the state followed it and it is never sent back).
    origin: Literal["upstream", "wechat"] = "upstream"
    #: On WeChat reports only: whether the move was legal from our previous
    #: state (``false``: we had diverged; alert, reconcile shows it).
    legal: bool | None = None
    #: Only on ``invoice.status.repair`` (written by ``reconcile --repair``):
    #: the delivery's idempotency key, stable for the same divergence.
    idempotency_key: str | None = None


class OutcomeEvent(Struct, frozen=True, gc=False):
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


class StateRecord(Struct, frozen=True, gc=False):
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


class DeliveryRecord(Struct, frozen=True):
    """The final record of one accepted outcome's delivery: the data of a ``DeliveryEvent``."""

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
    #: Why a delivery ended without WeChat judging it (``no_credentials``, ``unauthorized``).
    reason: FinalReason | None = None


class DeliveryEvent(Struct, frozen=True):
    """One final delivery record (``invoice.deliveries``), a CloudEvent 1.0 in structured mode.

    Built only by ``delivery_bytes``: ``id`` is the idempotency key and the
    result, and ``time`` the record's ``completed_at``, so the same record
    committed again (a retried transaction) is the same event, byte for byte.
    """

    specversion: Literal["1.0"]
    id: str
    source: str
    type: Literal["invoice.delivery.recorded"]
    time: Rfc3339
    #: The invoice key, ``card_id/code`` (also the Kafka key).
    subject: str
    data: DeliveryRecord
    datacontenttype: Literal["application/json"] = "application/json"


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
    # Only on a copy cut to fit the broker's limit: the original size and
    # SHA-256 let anyone match it with the producer's own copy.
    "value_truncated": "dlq.value.truncated",
    "value_original_size": "dlq.value.original.size",
    "value_sha256": "dlq.value.sha256",
    "headers_dropped": "dlq.headers.dropped",
}

#: Per-record framing of the v2 record format beyond key, value and header
#: bytes (length, attributes, deltas, varints), and a batch header: generous.
_RECORD_OVERHEAD = 64
_BATCH_OVERHEAD = 128
#: Original headers keep at most this share of a DLQ record's budget.
_HEADER_BUDGET_SHARE = 4


def _safe_header_name(name: str) -> str:
    """A header name the producer can write back: one aiokafka read with
    ``surrogateescape`` (not UTF-8 on the wire) is written escaped."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
    return name


def dlq_copy(
    record: object, error: BaseException, reason: str, failed_at: str, *, max_record_bytes: int
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], bool]:
    """The DLQ record of a refused input: ``(key, value, headers, truncated)``.

    The original key, value and headers are kept byte for byte when they fit
    ``max_record_bytes`` (the DLQ topic's ``max.message.bytes`` less framing);
    otherwise the value is cut and its original size and SHA-256 recorded, and
    original headers beyond a quarter of the budget are dropped (and counted):
    a copy the broker refuses would abort the batch forever.
    """
    topic, partition, offset = record.topic, record.partition, record.offset  # type: ignore[attr-defined]
    key: bytes | None = record.key  # type: ignore[attr-defined]
    value: bytes | None = record.value  # type: ignore[attr-defined]
    h = DLQ_HEADERS
    ours: list[tuple[str, bytes | None]] = [
        (h["reason"], reason.encode()),
        (h["error_class"], type(error).__name__.encode()),
        (h["error_message"], str(error)[:1000].encode("utf-8", "replace")),
        (h["source_topic"], topic.encode()),
        (h["source_partition"], str(partition).encode()),
        (h["source_offset"], str(offset).encode()),
        (h["failed_at"], failed_at.encode()),
    ]
    budget = max_record_bytes - _BATCH_OVERHEAD - _RECORD_OVERHEAD - 512  # 512: room for the truncation headers
    budget -= sum(len(k) + len(v or b"") + 8 for k, v in ours)
    originals: list[tuple[str, bytes | None]] = []
    header_budget = budget // _HEADER_BUDGET_SHARE
    dropped = 0
    for name, header_value in record.headers or ():  # type: ignore[attr-defined]
        safe = _safe_header_name(name)
        size = len(safe.encode()) + len(header_value or b"") + 8
        if size > header_budget:
            dropped += 1
            continue
        header_budget -= size
        budget -= size
        originals.append((safe, header_value))
    if key is not None and len(key) > budget // 2:
        key = key[: budget // 2]
    budget -= len(key or b"")
    truncated = value is not None and len(value) > budget
    if truncated:
        assert value is not None
        ours += [
            (h["value_truncated"], b"true"),
            (h["value_original_size"], str(len(value)).encode()),
            (h["value_sha256"], hashlib.sha256(value).hexdigest().encode()),
        ]
        value = value[: max(budget, 0)]
    if dropped:
        ours.append((h["headers_dropped"], str(dropped).encode()))
    return key, value, originals + ours, truncated


# --------------------------------------------------------------- waiting room

# The deliverer's changelog, ``invoice.deliveries.waiting`` (compacted), whose
# records are told apart by key: ``w:<idempotency key>`` -> a ``WaitingEntry``,
# ``d:<idempotency key>`` -> ``1``, ``o:owner`` -> an ``OwnerMarker``.
# ``adapters.waiting_room`` reads it back and says what each one means.

WAITING_ENTRY_PREFIX = b"w:"
WAITING_DONE_PREFIX = b"d:"
WAITING_OWNER_KEY = b"o:owner"


class WaitingEntry(Struct, frozen=True):
    """One waiting delivery: enough to call WeChat again and record the result."""

    idempotency_key: str
    outcome_id: str
    card_id: str
    code: str
    appid: str
    reimburse_status: ReimburseStatus
    version: int
    repair: bool
    reason: WaitReason
    #: epoch seconds: when it first waited (bounds no_credentials) and when to try again
    waiting_since: float
    resume_at: float
    possibly_applied: bool
    attempts: int
    first_attempt: float | None = None


class OwnerMarker(Struct, frozen=True):
    """Who owns a partition of the waiting room, and whether the last owner left cleanly (``closed``)."""

    state: Literal["open", "closed"]
    #: one per ownership; the local ledger stores the token of the ownership it belongs to
    token: str
    instance: str
    at: float
    #: on ``closed``: offsets below this may have been called but not committed
    attempted_below: int = 0


_waiting_entry_decoder = msgspec.json.Decoder(WaitingEntry)
_owner_marker_decoder = msgspec.json.Decoder(OwnerMarker)


def waiting_entry_key(idempotency_key: str) -> bytes:
    return WAITING_ENTRY_PREFIX + idempotency_key.encode()


def waiting_done_key(idempotency_key: str) -> bytes:
    return WAITING_DONE_PREFIX + idempotency_key.encode()


def decode_waiting_entry(value: bytes) -> WaitingEntry:
    return _waiting_entry_decoder.decode(value)


def decode_owner_marker(value: bytes) -> OwnerMarker:
    return _owner_marker_decoder.decode(value)


# ------------------------------------------------------------------ component

#: The ``InfoType`` of the component pushes the webhook keeps.
ComponentInfoType = Literal["component_verify_ticket", "authorized", "updateauthorized", "unauthorized"]


class ComponentRecord(Struct, frozen=True, omit_defaults=True):
    """One component push, as the webhook keeps it on the component topic.

    ``ticket`` is a credential (it buys a ``component_access_token``): never
    logged; the topic is read only by this service's deliverers.
    """

    id: str
    info_type: ComponentInfoType
    component_appid: str
    create_time: int
    received_at: str
    ticket: str | None = None
    authorizer_appid: str | None = None
    authorization_code_expired_time: int | None = None


_component_decoder = msgspec.json.Decoder(ComponentRecord)


def decode_component_record(value: bytes) -> ComponentRecord:
    """A component-topic record; ``msgspec.ValidationError``/``DecodeError`` when it is not one."""
    return _component_decoder.decode(value)


# -------------------------------------------------------------- the formats

#: The invoice key, ``card_id/code``: two tokens.
INVOICE_KEY_PATTERN = "^" + _ID_PART + "/" + _ID_PART + _END


@dataclass(frozen=True, slots=True)
class WireFormat:
    """A row of ``SCHEMA_TYPES``: one record format of the topics.

    Its JSON Schema (``json_schemas``: ``schemas/<row>.v1.schema.json``) comes
    from ``types``; the rest is its AsyncAPI message (``schemas.asyncapi``,
    named as the row), for any topic of ``adapters.topics`` that names it.
    """

    #: The value's msgspec type; several when the record key tells them apart
    #: (the schema is then their ``anyOf``, titled by ``schema_title``).
    types: tuple[type, ...]
    title: str
    #: One line; ``description`` when more must be said.
    summary: str = ""
    description: str = ""
    content_type: str = "application/json"
    #: Why the writer sets a ``content-type`` header of ``content_type``
    #: (empty: it sets none).
    content_type_header: str = ""
    #: The Kafka key: what it is, and its pattern when it has one.
    key: str = "the invoice key: card_id/code"
    key_pattern: str | None = INVOICE_KEY_PATTERN
    #: The JSON Schema's title and description; by default the type's name
    #: and the first line of its docstring.
    schema_title: str = ""
    schema_description: str = ""


_CLOUDEVENTS_HEADER = "CloudEvents Kafka binding, structured mode"

#: Every record format, by name: the source of ``schemas/`` (the JSON Schema
#: files and the AsyncAPI messages; ``invoice-sm schemas --write``).
SCHEMA_TYPES: dict[str, WireFormat] = {
    # Its messages (structured and binary mode) are written in ``schemas``.
    "event": WireFormat((CloudEvent,), "Lifecycle event", content_type=STRUCTURED_CONTENT_TYPE),
    "outcome": WireFormat(
        (OutcomeEvent,),
        "Decision",
        "Exactly one per valid event: a CloudEvent 1.0, structured mode.",
        content_type=STRUCTURED_CONTENT_TYPE,
        content_type_header=_CLOUDEVENTS_HEADER,
    ),
    "state": WireFormat((StateRecord,), "Latest state of an invoice"),
    "delivery": WireFormat(
        (DeliveryEvent,),
        "Final WeChat delivery record",
        "One per accepted outcome (and repair): a CloudEvent 1.0 of type invoice.delivery.recorded, "
        "structured mode; id = idempotency key @ result, subject = the invoice key, data = the "
        "delivery record (result, errcode, attempts, timings, reason).",
        content_type=STRUCTURED_CONTENT_TYPE,
        content_type_header=_CLOUDEVENTS_HEADER,
    ),
    # Its headers and payload (the original bytes) are written in ``schemas``.
    "dlq": WireFormat(
        (DlqRecord,),
        "Refused input",
        "The original record byte for byte (value cut to fit the broker's limit, then marked), "
        "its original headers, and dlq.* headers naming the error and the source position.",
        content_type="application/octet-stream",
        key="the original key, byte for byte",
        key_pattern=None,
    ),
    "waiting": WireFormat(
        (WaitingEntry, OwnerMarker),
        "Waiting delivery or partition owner marker",
        "Key `w:<idempotency key>`: a delivery waiting off the commit path (tombstone when it ends); "
        "key `o:owner`: the partition's ownership marker (open/closed).",
        key="w:<idempotency key> or o:owner",
        key_pattern=None,
        schema_title="WaitingRoomValue",
        schema_description="A waiting delivery (key w:<idempotency key>) or the partition's owner marker (key o:owner).",
    ),
    "component": WireFormat(
        (ComponentRecord,),
        "WeChat component push (third-party platform)",
        "Written by the webhook: the newest component_verify_ticket (key: the component appid) and each "
        "authorizer's latest authorized/updateauthorized/unauthorized (key: component_appid/authorizer_appid). "
        "Every deliverer reads all of it from the beginning, without a consumer group.",
        "`ticket` is a credential: the topic is for this service's deliverers only (ACLs), and it is never logged.",
        content_type_header="a plain JSON record",
        key="component_appid or component_appid/authorizer_appid",
        key_pattern=None,
    ),
}

# ------------------------------------------------------------------- decoding

_event_decoder = msgspec.json.Decoder(CloudEvent)
_data_decoder = msgspec.json.Decoder(EventData)
_any_decoder = msgspec.json.Decoder()
_state_decoder = msgspec.json.Decoder(StateRecord)
_invoice_state_decoder = msgspec.json.Decoder(InvoiceState)
_outcome_decoder = msgspec.json.Decoder(OutcomeEvent)
_delivery_decoder = msgspec.json.Decoder(DeliveryEvent)
_legacy_delivery_decoder = msgspec.json.Decoder(DeliveryRecord)
_encoder = msgspec.json.Encoder()

_CE_HEADERS = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject", "ce_partitionkey")
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)

# The valid event's fast path. msgspec checks a ``pattern`` by calling
# Python's ``re`` for each field: three quarters of the strict decode of a
# valid event. ``_fast_event`` decodes into the same structure without the
# patterns and checks those fields itself, mostly without ``re``; whatever it
# cannot vouch for goes to the strict decoder (``CloudEvent``), which alone
# judges and explains refusals. tests/fuzz/test_decode_fast_path.py holds
# both paths to the same result on valid and hostile inputs, and these types
# to ``CloudEvent``'s schema less its patterns.


class _FastEventData(Struct, frozen=True, forbid_unknown_fields=False, gc=False, omit_defaults=True):
    card_id: str
    code: str
    appid: str | None = None
    reimburse_status: ReimburseStatus | None = None


class _FastCloudEvent(Struct, frozen=True, forbid_unknown_fields=False, gc=False, omit_defaults=True):
    specversion: Literal["1.0"]
    id: str
    source: Annotated[str, Meta(min_length=1, max_length=1024)]
    type: Annotated[str, Meta(max_length=256)]
    data: _FastEventData | None = None
    time: str | None = None
    subject: Annotated[str, Meta(max_length=256)] | None = None
    datacontenttype: Annotated[str, Meta(max_length=256)] | None = None
    data_base64: Annotated[str, Meta(max_length=262144)] | None = None
    partitionkey: Annotated[str, Meta(max_length=256)] | None = None


_fast_event_decoder = msgspec.json.Decoder(_FastCloudEvent)
#: The very patterns msgspec applies (with ``re.search``), for the fields the
#: cheap checks below cannot vouch for.
_TOKEN_RE = re.compile(TOKEN_PATTERN)
_EVENT_ID_RE = re.compile(EVENT_ID_PATTERN)
_RFC3339_RE = re.compile(RFC3339_PATTERN)
#: Event times already matched against ``RFC3339_PATTERN``: a batch's events
#: mostly share a few (whole seconds or milliseconds). Cleared when full.
_matched_times: set[str] = set()
_MATCHED_TIMES_MAX = 4096


def _tokens_ok(card_id: str, code: str, appid: str | None) -> bool:
    """``TOKEN_PATTERN`` for each, without ``re`` when all are letters and digits (the usual case)."""
    if 0 < len(card_id) <= 64 and 0 < len(code) <= 64 and (appid is None or 0 < len(appid) <= 64):
        joined = f"{card_id}{code}{appid or ''}"
        # bytes.isalnum() is ASCII only, and several times faster than str's.
        if joined.isascii() and joined.encode().isalnum():
            return True
    search = _TOKEN_RE.search
    return bool(search(card_id) and search(code) and (appid is None or search(appid)))


def _significant_length(text: bytes) -> int:
    """Bytes that are not JSON whitespace (space, tab, LF, CR)."""
    return len(text) - text.count(b" ") - text.count(b"\t") - text.count(b"\n") - text.count(b"\r")


def _fast_event(value: bytes) -> _FastCloudEvent | None:
    """``value`` as an event, or ``None``: then only the strict decoder may judge it.

    Accepts exactly what the strict decoder accepts, with the same fields,
    or less. The patterned fields are checked here against the same
    patterns. A duplicate name is the one subtlety: the strict decoder
    checks every occurrence, this one sees the last. So the input must hold
    nothing but what was decoded: the canonical encoding of the decoded event
    (compact, each field once, the shortest escapes) is never longer than
    any input that decodes to it, and as long only when the input has no
    second occurrence, no unknown field and no explicit null. Or as long
    once JSON whitespace is left out of both (``json.dumps`` writes ``", "``):
    a space inside a string counts on both sides alike, and msgspec refuses
    a raw tab, CR or LF inside a string, so those are only ever whitespace.
    """
    try:
        event = _fast_event_decoder.decode(value)
    except _DECODE_ERRORS:
        return None
    canonical = _encoder.encode(event)
    if len(canonical) != len(value) and _significant_length(canonical) != _significant_length(value):
        return None
    data = event.data
    if data is not None and not _tokens_ok(data.card_id, data.code, data.appid):
        return None
    event_id = event.id
    # isprintable() is stricter than the pattern (no C0/C1 control): a miss goes to ``re``.
    if not (0 < len(event_id) <= EVENT_ID_MAX_LENGTH and event_id.isprintable()) and _EVENT_ID_RE.search(event_id) is None:
        return None
    event_time = event.time
    if event_time is not None and event_time not in _matched_times:
        if _RFC3339_RE.search(event_time) is None:
            return None
        if len(_matched_times) >= _MATCHED_TIMES_MAX:
            _matched_times.clear()
        _matched_times.add(event_time)
    return event


Headers = list[tuple[str, bytes | None]] | tuple[tuple[str, bytes | None], ...] | None


def _header_map(headers: Headers) -> dict[str, bytes | None]:
    """Headers by lower-case name (the binding's names are case-insensitive).

    A name aiokafka could only read with ``surrogateescape`` (not UTF-8 on
    the wire) makes the record undecidable: which header was meant is unknowable.
    """
    out: dict[str, bytes | None] = {}
    for name, value in headers or ():
        if not name.isascii():
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidEventError(
                    "bad_header", f"header name {name.encode('utf-8', 'backslashreplace')[:80]!r} is not UTF-8"
                ) from None
        out[name.lower()] = value
    return out


def _diagnose(value: bytes, exc: Exception) -> InvalidEventError:
    """Name the first thing wrong with a value the typed decoder refused.

    Only runs for bad input, so it may take the slow way: the valid event
    never pays for this.
    """
    if isinstance(exc, RecursionError):
        return InvalidEventError("not_json", "JSON nested too deeply to decode")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as err:
        return InvalidEventError("not_utf8", f"invalid UTF-8 at byte {err.start}")
    try:
        raw = _any_decoder.decode(value)
    except RecursionError:
        return InvalidEventError("not_json", "JSON nested too deeply to decode")
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        return InvalidEventError("not_json", str(err)[:500])
    if not isinstance(raw, dict):
        return InvalidEventError("not_cloudevent", f"expected a JSON object, got {type(raw).__name__}")
    message = str(exc)[:500]
    if "$.data" in message:
        return InvalidEventError("invalid_data", message)
    return InvalidEventError("not_cloudevent", message)


def _decode_data_base64(encoded: str) -> EventData:
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise InvalidEventError("invalid_data", "data_base64 is not base64") from None
    try:
        return _data_decoder.decode(raw)
    except _DECODE_ERRORS as exc:
        raise InvalidEventError("invalid_data", f"data_base64 does not hold the data object: {str(exc)[:300]}") from None


def _to_domain(event: CloudEvent | _FastCloudEvent, key: bytes | None) -> LifecycleEvent:
    target: ReimburseStatus | type[KeyError] | None = EVENT_TYPE_TARGETS.get(event.type, KeyError)
    if target is KeyError:
        raise InvalidEventError("unknown_type", f"type {event.type[:100]!r} is not an invoice lifecycle event")
    data = event.data
    if data is None:
        if event.data_base64 is None:
            raise InvalidEventError("invalid_data", "the event has neither data nor data_base64")
        data = _decode_data_base64(event.data_base64)
    elif event.data_base64 is not None:
        raise InvalidEventError("not_cloudevent", "the event has both data and data_base64")
    content_type = event.datacontenttype
    if content_type is not None and "json" not in content_type.lower():
        raise InvalidEventError("unsupported_content_type", f"datacontenttype {content_type[:80]!r} is not JSON")
    requested = data.reimburse_status
    if target is None:
        if requested is None:
            raise InvalidEventError("invalid_data", "invoice.status.set needs data.reimburse_status")
    elif requested is not None and requested is not target:
        raise InvalidEventError("invalid_data", f"data.reimburse_status {requested} contradicts type {event.type}")
    else:
        requested = target  # type: ignore[assignment]  # KeyError was refused above
    expected = invoice_key(data.card_id, data.code)
    if key is None:
        raise InvalidEventError(
            "key_mismatch",
            f"record has no key; set the Kafka key (with the CloudEvents SDK: the partitionkey extension) to {expected!r}",
        )
    if key != expected.encode():
        raise InvalidEventError("key_mismatch", f"key {key[:140]!r} is not the invoice key {expected!r}")
    if event.partitionkey is not None and event.partitionkey != expected:
        raise InvalidEventError("key_mismatch", f"partitionkey {event.partitionkey[:140]!r} is not the invoice key {expected!r}")
    if event.subject is not None and event.subject != expected:
        raise InvalidEventError("invalid_data", f"subject {event.subject[:140]!r} is not the invoice key {expected!r}")
    # Positional (event_id, event_type, card_id, code, requested_status, appid,
    # time, origin): msgspec's keyword parsing is a fifth of this function.
    return LifecycleEvent(
        event.id,
        event.type,
        data.card_id,
        data.code,
        requested,  # type: ignore[arg-type]
        data.appid or "",
        event.time,
        EVENT_TYPE_ORIGINS[event.type],
    )


def decode_event(key: bytes | None, value: bytes | None, headers: Headers = None, *, max_bytes: int = 65536) -> LifecycleEvent:
    """Decode and validate one ``invoice.events`` record, or raise ``InvalidEventError``.

    The mode follows the CloudEvents Kafka binding: a ``content-type`` of
    ``application/cloudevents...`` is structured mode whatever other headers
    say; otherwise ``ce_specversion`` means binary mode; a record with
    neither is read as structured JSON (producers that set no headers).
    """
    if not value:
        raise InvalidEventError("empty_value", "record value is null or empty")
    if len(value) > max_bytes:
        raise InvalidEventError("oversized", f"{len(value)} bytes > limit {max_bytes} (INVOICE_SM_MAX_EVENT_BYTES)")
    if headers:
        hdrs = _header_map(headers)
        content_type = hdrs.get("content-type")
        if content_type is not None:
            lowered = content_type.lower()
            if lowered.startswith(b"application/cloudevents"):
                if not lowered.startswith(STRUCTURED_CONTENT_TYPE.encode()) or lowered.startswith(
                    b"application/cloudevents-batch"
                ):
                    raise InvalidEventError(
                        "unsupported_content_type", f"content-type {content_type[:80]!r}: only structured JSON mode is read"
                    )
            elif "ce_specversion" in hdrs:
                return _decode_binary(key, value, hdrs)
            elif b"json" not in lowered:
                raise InvalidEventError("unsupported_content_type", f"content-type {content_type[:80]!r}")
        elif "ce_specversion" in hdrs:
            return _decode_binary(key, value, hdrs)
    event: CloudEvent | _FastCloudEvent | None = _fast_event(value)
    if event is None:
        try:
            event = _event_decoder.decode(value)
        except _DECODE_ERRORS as exc:
            raise _diagnose(value, exc) from None
    return _to_domain(event, key)


def decode_record(record: object, *, max_bytes: int = 65536) -> LifecycleEvent:
    """The processor's one decode path for a consumed record (what the fuzz suite drives).

    ``record`` has ``key``, ``value`` and ``headers`` (an aiokafka
    ``ConsumerRecord``); a record the client library could not parse arrives
    as an ``adapters.kafka_records.UnreadableRecord`` whose ``problem`` says why.
    Returns the event or raises ``InvalidEventError``; nothing else.
    """
    problem = getattr(record, "problem", None)
    if problem is not None:
        raise InvalidEventError("unreadable_record", str(problem)[:500])
    return decode_event(record.key, record.value, record.headers, max_bytes=max_bytes)  # type: ignore[attr-defined]


def _decode_binary(key: bytes | None, value: bytes, hdrs: dict[str, bytes | None]) -> LifecycleEvent:
    """CloudEvents Kafka binding, binary mode: attributes in ``ce_*`` headers."""
    attrs: dict[str, str] = {}
    for name in _CE_HEADERS:
        if name in hdrs:
            raw = hdrs[name]
            if raw is None:
                raise InvalidEventError("bad_header", f"header {name} has no value")
            try:
                attrs[name[3:]] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidEventError("bad_header", f"header {name} is not UTF-8") from None
    content_type = hdrs.get("content-type") or b"application/json"
    if b"json" not in content_type.lower():
        raise InvalidEventError("unsupported_content_type", f"content-type {content_type[:80]!r}")
    try:
        data = _any_decoder.decode(value)
    except _DECODE_ERRORS as exc:
        raise _diagnose(value, exc) from None
    try:
        event = msgspec.convert({**attrs, "data": data}, CloudEvent)
    except (msgspec.ValidationError, RecursionError) as exc:
        reason = "invalid_data" if "$.data" in str(exc) else "not_cloudevent"
        raise InvalidEventError(reason, f"binary mode: {str(exc)[:500]}") from None
    return _to_domain(event, key)


# ------------------------------------------------------------------- encoding


def encode(obj: Struct) -> bytes:
    return _encoder.encode(obj)


def decode_state(value: bytes) -> InvoiceState:
    """A changelog value as the domain's state, decoded straight into it.

    The changelog is written only by the processor (and checked against
    ``StateRecord`` when produced), so reading it skips the pattern checks:
    a sixth of the cost of decoding a ``StateRecord`` and copying it over,
    on every cache miss and after every restore.
    """
    return _invoice_state_decoder.decode(value)


def encode_state(state: InvoiceState) -> bytes:
    """The changelog value of ``state``: a ``StateRecord`` in JSON.

    Built positionally (field order: card_id, code, status, version, appid,
    recent_event_ids, updated_at) and handed the state's tuple of ids as is
    (msgspec writes a tuple as an array, and checks nothing on construction):
    once per accepted event, this is a quarter cheaper than keywords and a copy.
    """
    return _encoder.encode(
        StateRecord(
            state.card_id,
            state.code,
            state.status,
            state.version,
            state.appid,
            state.recent_event_ids,  # type: ignore[arg-type]
            state.updated_at,
        )
    )


#: Structured-mode CloudEvents carry their content type (the Kafka binding):
#: readers that detect the mode from headers (Java SDK, Knative) need it.
#: One shared list: the record builder only reads it.
CLOUDEVENT_HEADERS: list[tuple[str, bytes]] = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
#: The headers of every delivery record (``delivery_bytes``): CloudEvents, structured mode, like outcomes.
DELIVERY_HEADERS: list[tuple[str, bytes]] = CLOUDEVENT_HEADERS
#: CloudEvent type of each decision kind (an enum's ``.value`` is a slow descriptor).
OUTCOME_TYPES = {kind: f"invoice.status.{kind.value}" for kind in DecisionKind}
_ACCEPTED = DecisionKind.ACCEPTED
_UPSTREAM = Origin.UPSTREAM


def outcome_bytes(decision: Decision, record: object, processed_at: str, key: str) -> bytes:
    """The outcome CloudEvent of ``decision`` (hot path: one call per event)."""
    event = decision.event
    state = decision.state
    upstream = event.origin is _UPSTREAM
    partition, offset = record.partition, record.offset  # type: ignore[attr-defined]
    # Positional, in field order: msgspec parses keywords at a cost of a
    # third of this function. tests/unit/adapters/test_wire.py pins the field order.
    data = OutcomeData(
        event.card_id,
        event.code,
        state.appid,
        event.event_id,
        event.event_type,
        decision.from_status,
        decision.requested_status,
        state.version,
        processed_at,
        state.status if decision.kind is _ACCEPTED else None,  # to_status
        decision.reason,
        decision.trigger,
        partition,  # source_partition
        offset,  # source_offset
        event.time,  # event_time
        "upstream" if upstream else event.origin.value,
        None if upstream else decision.legal,
    )
    return _encoder.encode(
        OutcomeEvent(
            "1.0",
            # Derived from the input position: the same event re-decided after
            # an aborted transaction gets the same outcome id.
            f"{record.topic}/{partition}/{offset}",  # type: ignore[attr-defined]
            OUTCOME_SOURCE,
            OUTCOME_TYPES[decision.kind],  # type: ignore[arg-type]
            processed_at,  # time
            key,  # subject
            data,
        )
    )


def decode_outcome(value: bytes) -> OutcomeEvent:
    return _outcome_decoder.decode(value)


def delivery_bytes(record: DeliveryRecord) -> bytes:
    """The ``invoice.deliveries`` value of ``record``: a ``DeliveryEvent`` (send it with ``DELIVERY_HEADERS``)."""
    return _encoder.encode(
        DeliveryEvent(
            specversion="1.0",
            id=f"{record.idempotency_key}@{record.result}",
            source=DELIVERY_SOURCE,
            type=DELIVERY_EVENT_TYPE,
            time=record.completed_at,
            subject=invoice_key(record.card_id, record.code),
            data=record,
        )
    )


def decode_delivery(value: bytes) -> DeliveryRecord:
    """The delivery record of an ``invoice.deliveries`` value; raises ``msgspec.DecodeError``.

    Reads the CloudEvent (``delivery_bytes``) and, so that ``reconcile`` still
    sees what was delivered before deliveries were CloudEvents (the topic
    keeps 30 days), the plain ``DeliveryRecord`` JSON written until then.
    """
    try:
        return _delivery_decoder.decode(value).data
    except msgspec.DecodeError as exc:
        try:
            return _legacy_delivery_decoder.decode(value)
        except msgspec.DecodeError:
            raise exc from None


def validate_produced(value: bytes, kind: str) -> None:
    """Decode ``value`` as the format ``kind`` (any of its types); raises on a mismatch."""
    *others, last = SCHEMA_TYPES[kind].types
    for typ in others:
        try:
            msgspec.json.decode(value, type=typ)
        except msgspec.ValidationError:
            continue
        return
    msgspec.json.decode(value, type=last)


def json_schemas() -> dict[str, dict[str, object]]:
    """The JSON Schema (draft 2020-12) of every format of ``SCHEMA_TYPES``, by name."""
    out: dict[str, dict[str, object]] = {}
    for name, wire_format in SCHEMA_TYPES.items():
        types = wire_format.types
        schema: dict[str, object]
        if len(types) == 1:
            schema = msgspec.json.schema(types[0])
        else:
            refs, components = msgspec.json.schema_components(types)
            schema = {"anyOf": list(refs), "$defs": components}
        out[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://invoice-sm.example/schemas/{name}.v1.schema.json",
            "title": wire_format.schema_title or types[0].__name__,
            "description": wire_format.schema_description or (types[0].__doc__ or "").strip().splitlines()[0],
            **schema,
        }
    return out
