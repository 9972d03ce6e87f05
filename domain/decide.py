"""Deciding events against invoice state: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from domain.lifecycle import LEGAL_MOVES
from domain.model import (
    RECENT_EVENT_IDS,
    Decision,
    DecisionKind,
    InvoiceState,
    LifecycleEvent,
    RejectReason,
)
from domain.status import TERMINAL_STATUSES


def _remember(ids: tuple[str, ...], event_id: str) -> tuple[str, ...]:
    ids = ids + (event_id,)
    return ids[-RECENT_EVENT_IDS:] if len(ids) > RECENT_EVENT_IDS else ids


def decide(state: InvoiceState | None, event: LifecycleEvent, now: str | None = None) -> Decision:
    """Judge ``event`` against ``state`` (``None``: never seen, judged from INIT).

    Order matters and is part of the contract: a duplicate id is judged
    before anything else; then the same status again is ``unchanged``; then
    a terminal state refuses every move; then the lifecycle table.
    """
    if state is None:
        state = InvoiceState.initial(event.card_id, event.code)
    current = state.status
    requested = event.requested_status

    if event.event_id in state.recent_event_ids:
        return Decision(DecisionKind.DUPLICATE, event, current, requested, state)

    remembered = _remember(state.recent_event_ids, event.event_id)
    appid = state.appid or event.appid
    seen = replace(state, recent_event_ids=remembered, appid=appid, updated_at=now)

    if state.appid and event.appid and event.appid != state.appid:
        return Decision(DecisionKind.REJECTED, event, current, requested, seen, RejectReason.APPID_MISMATCH)
    if requested is current:
        return Decision(DecisionKind.UNCHANGED, event, current, requested, seen)
    if current in TERMINAL_STATUSES:
        return Decision(DecisionKind.REJECTED, event, current, requested, seen, RejectReason.TERMINAL_STATE)
    trigger = LEGAL_MOVES.get((current, requested))
    if trigger is None:
        return Decision(DecisionKind.REJECTED, event, current, requested, seen, RejectReason.ILLEGAL_TRANSITION)
    moved = replace(seen, status=requested, version=state.version + 1)
    return Decision(DecisionKind.ACCEPTED, event, current, requested, moved, trigger=trigger)


def fold(events: Iterable[LifecycleEvent], states: dict[str, InvoiceState] | None = None) -> dict[str, InvoiceState]:
    """Rebuild states from scratch by deciding every event in order."""
    states = {} if states is None else states
    for event in events:
        decision = decide(states.get(event.key), event)
        if decision.changes_state:
            states[event.key] = decision.state
    return states
