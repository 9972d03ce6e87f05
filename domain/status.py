"""WeChat reimbursement statuses of an invoice card (DOMAIN.md)."""

from __future__ import annotations

from enum import StrEnum


class ReimburseStatus(StrEnum):
    INIT = "INVOICE_REIMBURSE_INIT"
    LOCK = "INVOICE_REIMBURSE_LOCK"
    CLOSURE = "INVOICE_REIMBURSE_CLOSURE"
    CANCEL = "INVOICE_REIMBURSE_CANCEL"


TERMINAL_STATUSES: frozenset[ReimburseStatus] = frozenset({ReimburseStatus.CLOSURE, ReimburseStatus.CANCEL})


class Origin(StrEnum):
    """Who moved the card: an upstream request, or WeChat reporting a fact."""

    UPSTREAM = "upstream"
    WECHAT = "wechat"


#: Written by the webhook when WeChat pushes a status change made elsewhere
#: (a reimburser): a fact about the card, not a request (DOMAIN.md).
WECHAT_STATUS_REPORTED = "invoice.wechat.status_reported"
#: An upstream request naming the status itself, in ``data.reimburse_status``.
SET_STATUS = "invoice.status.set"

#: CloudEvent ``type`` -> the status it asks for. ``invoice.status.set`` and
#: the WeChat report carry theirs in ``data.reimburse_status`` and so map to
#: ``None`` here.
EVENT_TYPE_TARGETS: dict[str, ReimburseStatus | None] = {
    "invoice.reimbursement.locked": ReimburseStatus.LOCK,
    "invoice.reimbursement.unlocked": ReimburseStatus.INIT,
    "invoice.reimbursement.closed": ReimburseStatus.CLOSURE,
    "invoice.red_flushed": ReimburseStatus.CANCEL,
    SET_STATUS: None,
    WECHAT_STATUS_REPORTED: None,
}

#: The origin of each event type (every type but WeChat's report is upstream's).
EVENT_TYPE_ORIGINS: dict[str, Origin] = dict.fromkeys(EVENT_TYPE_TARGETS, Origin.UPSTREAM) | {
    WECHAT_STATUS_REPORTED: Origin.WECHAT
}

#: The event type that asks for each status, derived (the inverse of the fixed targets).
STATUS_EVENT_TYPES: dict[ReimburseStatus, str] = {s: t for t, s in EVENT_TYPE_TARGETS.items() if s is not None}


class OutcomeType(StrEnum):
    """CloudEvent ``type`` of an ``invoice.outcomes`` record: one per decision kind
    (``invoice.status.{DecisionKind}``), and the repairs ``reconcile --repair`` writes."""

    ACCEPTED = "invoice.status.accepted"
    UNCHANGED = "invoice.status.unchanged"
    DUPLICATE = "invoice.status.duplicate"
    REJECTED = "invoice.status.rejected"
    REPAIR = "invoice.status.repair"


#: Outcomes the deliverer pushes to WeChat: accepted decisions and repairs.
DELIVERABLE_OUTCOME_TYPES: frozenset[OutcomeType] = frozenset({OutcomeType.ACCEPTED, OutcomeType.REPAIR})
