"""Frozen value types: lifecycle events, invoice state, decisions.

These are the domain's own types; the wire formats (CloudEvents JSON) live
in ``adapters.wire`` and are converted at the boundary. They are frozen
``msgspec.Struct``s rather than dataclasses: a pure data library (no I/O),
whose C ``__init__`` and ``replace`` cost a tenth of a frozen dataclass's on
the hot path, where one event builds three of them. ``gc=False``: they hold
no reference cycles, and the state cache holds hundreds of thousands.
"""

from __future__ import annotations

from enum import StrEnum

from msgspec import Struct

from domain.status import Origin, ReimburseStatus

#: How many event ids each invoice remembers for duplicate detection
#: (ARCHITECTURE.md: "at least the last 32").
RECENT_EVENT_IDS = 32


def invoice_key(card_id: str, code: str) -> str:
    """The Kafka key of an invoice: ``"{card_id}/{code}"``."""
    return f"{card_id}/{code}"


def idempotency_key(card_id: str, code: str, version: int) -> str:
    """Stable across replays: the same accepted transition always has the same key."""
    return f"{card_id}/{code}#{version}"


class LifecycleEvent(Struct, frozen=True, gc=False):
    """Something that happened to an invoice upstream, asking for a status."""

    event_id: str
    event_type: str
    card_id: str
    code: str
    requested_status: ReimburseStatus
    appid: str = ""
    time: str | None = None
    origin: Origin = Origin.UPSTREAM

    @property
    def key(self) -> str:
        return invoice_key(self.card_id, self.code)


class InvoiceState(Struct, frozen=True, gc=False):
    """What the service knows of one invoice. ``version`` counts accepted transitions."""

    card_id: str
    code: str
    status: ReimburseStatus = ReimburseStatus.INIT
    version: int = 0
    appid: str = ""
    updated_at: str | None = None
    recent_event_ids: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return invoice_key(self.card_id, self.code)


class DecisionKind(StrEnum):
    ACCEPTED = "accepted"
    UNCHANGED = "unchanged"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class RejectReason(StrEnum):
    ILLEGAL_TRANSITION = "illegal_transition"
    TERMINAL_STATE = "terminal_state"
    APPID_MISMATCH = "appid_mismatch"


class Decision(Struct, frozen=True, gc=False):
    """The verdict on one event, and the state it leaves the invoice in.

    ``state`` is the invoice after the decision; for a duplicate it is the
    unchanged state (nothing needs writing). ``version`` is the invoice's
    transition count after the decision.
    """

    kind: DecisionKind
    event: LifecycleEvent
    from_status: ReimburseStatus
    requested_status: ReimburseStatus
    state: InvoiceState
    reason: RejectReason | None = None
    trigger: str | None = None
    #: For a WeChat report: whether the move was legal from what we held
    #: (``False`` means we had diverged: alert, and reconcile shows it).
    legal: bool = True

    @property
    def origin(self) -> Origin:
        return self.event.origin

    @property
    def version(self) -> int:
        return self.state.version

    @property
    def to_status(self) -> ReimburseStatus | None:
        return self.state.status if self.kind is DecisionKind.ACCEPTED else None

    @property
    def changes_state(self) -> bool:
        """Whether a new state record must be written (every kind but duplicate)."""
        return self.kind is not DecisionKind.DUPLICATE
