"""The pure domain of invoice-sm: statuses, the lifecycle Machine, decisions.

Imports nothing from ``adapters``/``consumers`` nor any I/O library, and
does no I/O (``tests/unit/test_architecture.py`` keeps it so).
"""

from domain.decide import decide, fold
from domain.errors import InvoiceSmError
from domain.lifecycle import LEGAL_MOVES, MACHINE, TRIGGER_FOR_TARGET
from domain.model import (
    RECENT_EVENT_IDS,
    Decision,
    DecisionKind,
    InvoiceState,
    LifecycleEvent,
    RejectReason,
    idempotency_key,
    invoice_key,
)
from domain.status import EVENT_TYPE_TARGETS, TERMINAL_STATUSES, ReimburseStatus

__all__ = [
    "EVENT_TYPE_TARGETS",
    "LEGAL_MOVES",
    "MACHINE",
    "RECENT_EVENT_IDS",
    "TERMINAL_STATUSES",
    "TRIGGER_FOR_TARGET",
    "Decision",
    "DecisionKind",
    "InvoiceSmError",
    "InvoiceState",
    "LifecycleEvent",
    "ReimburseStatus",
    "RejectReason",
    "decide",
    "fold",
    "idempotency_key",
    "invoice_key",
]
