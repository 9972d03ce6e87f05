"""Deciding events against invoice state: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable

from msgspec.structs import replace

from domain.lifecycle import LEGAL_MOVES
from domain.model import (
    RECENT_EVENT_IDS,
    Decision,
    DecisionKind,
    InvoiceState,
    LifecycleEvent,
    RejectReason,
)
from domain.status import TERMINAL_STATUSES, Origin


def _remember(ids: tuple[str, ...], event_id: str) -> tuple[str, ...]:
    ids = ids + (event_id,)
    return ids[-RECENT_EVENT_IDS:] if len(ids) > RECENT_EVENT_IDS else ids


def decide(state: InvoiceState | None, event: LifecycleEvent, now: str | None = None) -> Decision:
    """Judge ``event`` against ``state`` (``None``: never seen, judged from INIT).

    Order matters and is part of the contract: a duplicate id is judged
    before anything else; then the same status again is ``unchanged``; then
    a WeChat report is accepted as the card's new status (``legal`` says
    whether the lifecycle allows the move); then a terminal state refuses
    every upstream move; then the lifecycle table.
    """
    if state is None:
        state = InvoiceState.initial(event.card_id, event.code)
    current = state.status
    requested = event.requested_status

    if event.event_id in state.recent_event_ids:
        return Decision(DecisionKind.DUPLICATE, event, current, requested, state)

    remembered = _remember(state.recent_event_ids, event.event_id)
    appid = state.appid or event.appid

    if state.appid and event.appid and event.appid != state.appid:
        kind, reason, trigger = DecisionKind.REJECTED, RejectReason.APPID_MISMATCH, None
    elif requested is current:
        kind, reason, trigger = DecisionKind.UNCHANGED, None, None
    elif event.origin is Origin.WECHAT:
        # A fact about the card, not a request: the state follows it, legal or
        # not, and the decision says whether we had diverged.
        trigger = None if current in TERMINAL_STATUSES else LEGAL_MOVES.get((current, requested))
        moved = replace(
            state, status=requested, version=state.version + 1, recent_event_ids=remembered, appid=appid, updated_at=now
        )
        return Decision(DecisionKind.ACCEPTED, event, current, requested, moved, trigger=trigger, legal=trigger is not None)
    elif current in TERMINAL_STATUSES:
        kind, reason, trigger = DecisionKind.REJECTED, RejectReason.TERMINAL_STATE, None
    else:
        trigger = LEGAL_MOVES.get((current, requested))
        if trigger is None:
            kind, reason = DecisionKind.REJECTED, RejectReason.ILLEGAL_TRANSITION
        else:
            moved = replace(
                state, status=requested, version=state.version + 1, recent_event_ids=remembered, appid=appid, updated_at=now
            )
            return Decision(DecisionKind.ACCEPTED, event, current, requested, moved, trigger=trigger)
    seen = replace(state, recent_event_ids=remembered, appid=appid, updated_at=now)
    return Decision(kind, event, current, requested, seen, reason, trigger)


def fold(events: Iterable[LifecycleEvent], states: dict[str, InvoiceState] | None = None) -> dict[str, InvoiceState]:
    """Rebuild states from scratch by deciding every event in order."""
    states = {} if states is None else states
    for event in events:
        decision = decide(states.get(event.key), event)
        if decision.changes_state:
            states[event.key] = decision.state
    return states
