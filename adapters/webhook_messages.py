"""What WeChat's pushes become on our topics (pure: no I/O).

**Invoice status push** (invoicing platform guide, section 7; the XML as
wechatpy's ``UpdateInvoiceStatusEvent`` test, wechatpy/wechatpy
``tests/test_parser.py::test_parse_update_invoice_status_event``, and
``wechatpy/events.py`` read it)::

    <xml>
      <ToUserName><![CDATA[gh_9e1765b5568e]]></ToUserName>
      <FromUserName><![CDATA[ojZ8Ytz4lESgdWZ34L_R1TvB2Kds]]></FromUserName>
      <CreateTime>1478068440</CreateTime>
      <MsgType><![CDATA[event]]></MsgType>
      <Event><![CDATA[update_invoice_status]]></Event>
      <Status><![CDATA[INVOICE_REIMBURSE_INIT]]></Status>
      <CardId><![CDATA[pjZ8Yt7Um2jYxzneP8GomnxoVFWo]]></CardId>
      <Code><![CDATA[186921658591]]></Code>
    </xml>

becomes a CloudEvent of type ``invoice.wechat.status_reported`` on
``invoice.events``, keyed by the invoice key ``CardId/Code`` (the default
partitioner, as ``invoice-sm publish`` keys upstream events, so it is
ordered with the invoice's other events).

**Component (third-party platform) pushes** (``InfoType``
``component_verify_ticket``, ``authorized``, ``updateauthorized``,
``unauthorized``; fields as wechatpy's ``wechatpy/messages.py`` component
messages read them) become a ``ComponentRecord`` (``adapters.wire``) on the
compacted component topic. A ticket is keyed by the component appid (compaction keeps the newest
ticket); an authorization event by ``component_appid/authorizer_appid``
(compaction keeps each authorizer's latest authorization state).

**Retries are the same event.** WeChat retries a push it got no answer for
(three times, five seconds apart) with the same body. The id is a hash of
the fields that identify the push (WeChat's own advice for events without a
``MsgId``: ``FromUserName`` + ``CreateTime``, plus what it says), so every
retry carries the same CloudEvent id and the processor decides it once (a
repeat is ``duplicate``).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import get_args

import msgspec
from msgspec import Struct

from adapters import wire
from adapters.wire import ComponentInfoType, ComponentRecord
from domain.errors import InvalidEventError, PushRefusedError
from domain.model import invoice_key
from domain.status import WECHAT_STATUS_REPORTED

__all__ = [
    "COMPONENT_INFO_TYPES",
    "STATUS_EVENT",
    "EventRecord",
    "component_record",
    "status_report",
]

#: ``Event`` of WeChat's invoice status push.
STATUS_EVENT = "update_invoice_status"
#: ``source`` of the CloudEvents the webhook writes.
WEBHOOK_SOURCE = "/invoice-sm/webhook"

COMPONENT_INFO_TYPES: frozenset[str] = frozenset(get_args(ComponentInfoType))


class EventRecord(Struct, frozen=True):
    """A record ready for a topic: key, value and headers."""

    topic_role: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    event_id: str


def _push_id(prefix: str, *parts: str) -> str:
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
    return f"{prefix}-{digest}"


def _create_time(fields: dict[str, str]) -> int:
    raw = fields.get("CreateTime", "")
    if not raw.isdigit() or len(raw) > 12:
        raise PushRefusedError("malformed", "CreateTime is missing or not a number")
    return int(raw)


def _rfc3339(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_report(fields: dict[str, str], *, appid: str = "") -> EventRecord:
    """The ``invoice.wechat.status_reported`` CloudEvent of an ``update_invoice_status`` push.

    ``appid`` is the account the card belongs to when known (component
    mode: the authorizer appid in the push URL). Raises
    ``PushRefusedError("malformed")`` when the push would not pass the
    processor's validation (it would only end in the DLQ).
    """
    created = _create_time(fields)
    card_id, code, status = fields.get("CardId", ""), fields.get("Code", ""), fields.get("Status", "")
    event_id = _push_id(
        "wechat", fields.get("ToUserName", ""), fields.get("FromUserName", ""), str(created), STATUS_EVENT, card_id, code, status
    )
    key = invoice_key(card_id, code)
    data: dict[str, str] = {"card_id": card_id, "code": code, "reimburse_status": status}
    if appid:
        data["appid"] = appid
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": WEBHOOK_SOURCE,
        "type": WECHAT_STATUS_REPORTED,
        "time": _rfc3339(created),
        "subject": key,
        "datacontenttype": "application/json",
        "data": data,
    }
    value = msgspec.json.encode(event)
    try:
        wire.decode_event(key.encode(), value)
    except InvalidEventError as exc:
        raise PushRefusedError("malformed", f"status push does not make a valid event: {exc.reason}") from None
    return EventRecord("events", key.encode(), value, (("content-type", wire.STRUCTURED_CONTENT_TYPE.encode()),), event_id)


def component_record(fields: dict[str, str], *, component_appid: str, received_at: str) -> EventRecord | None:
    """The component-topic record of a component push, or ``None`` for an
    ``InfoType`` this service does not use (answered ``success``, kept nowhere)."""
    info_type = fields.get("InfoType", "")
    if info_type not in COMPONENT_INFO_TYPES:
        return None
    if fields.get("AppId") not in (None, component_appid):
        raise PushRefusedError("bad_appid", "AppId is not this platform's component appid")
    created = _create_time(fields)
    ticket = fields.get("ComponentVerifyTicket") or None
    authorizer = fields.get("AuthorizerAppid") or None
    if info_type == "component_verify_ticket":
        if ticket is None:
            raise PushRefusedError("malformed", "component_verify_ticket push without ComponentVerifyTicket")
        key = component_appid
    else:
        if authorizer is None or "/" in authorizer or len(authorizer) > 64:
            raise PushRefusedError("malformed", f"{info_type} push without a valid AuthorizerAppid")
        key = f"{component_appid}/{authorizer}"
    expired = fields.get("AuthorizationCodeExpiredTime", "")
    record = ComponentRecord(
        id=_push_id("wechat-component", component_appid, str(created), info_type, authorizer or "", ticket or ""),
        info_type=info_type,  # type: ignore[arg-type]
        component_appid=component_appid,
        create_time=created,
        received_at=received_at,
        ticket=ticket,
        authorizer_appid=authorizer,
        authorization_code_expired_time=int(expired) if expired.isdigit() else None,
    )
    return EventRecord("component", key.encode(), wire.encode(record), (("content-type", b"application/json"),), record.id)
