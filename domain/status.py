"""WeChat reimbursement statuses of an invoice card (DOMAIN.md)."""

from __future__ import annotations

from enum import StrEnum


class ReimburseStatus(StrEnum):
    INIT = "INVOICE_REIMBURSE_INIT"
    LOCK = "INVOICE_REIMBURSE_LOCK"
    CLOSURE = "INVOICE_REIMBURSE_CLOSURE"
    CANCEL = "INVOICE_REIMBURSE_CANCEL"


TERMINAL_STATUSES: frozenset[ReimburseStatus] = frozenset({ReimburseStatus.CLOSURE, ReimburseStatus.CANCEL})

#: CloudEvent ``type`` -> the status it asks for. ``invoice.status.set`` carries
#: its target in ``data.reimburse_status`` and so maps to ``None`` here.
EVENT_TYPE_TARGETS: dict[str, ReimburseStatus | None] = {
    "invoice.reimbursement.locked": ReimburseStatus.LOCK,
    "invoice.reimbursement.unlocked": ReimburseStatus.INIT,
    "invoice.reimbursement.closed": ReimburseStatus.CLOSURE,
    "invoice.red_flushed": ReimburseStatus.CANCEL,
    "invoice.status.set": None,
}
