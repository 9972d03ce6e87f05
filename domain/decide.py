"""Deciding events against invoice state: pure functions, no I/O.

``decide`` judges one event; ``decide_in_order`` is the one loop that decides
a partition's events in order against the state so far and stages each new
state. The processor, replay and the tests' oracle all run that loop (through
``consumers.processor.decide_records``, which decodes first), so "decided as
the processor decides" holds by construction rather than by keeping copies in
step. ``fold`` is the same loop over a plain dict.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

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
    ids = ids + (event_id,)  # noqa: RUF005 - hot path: twice as fast as (*ids, event_id)
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


_Staged_co = TypeVar("_Staged_co", covariant=True)
Staged = TypeVar("Staged")


class States(Protocol[_Staged_co]):
    """Where a batch is decided: the state so far per invoice key, and a place
    to stage each new one so later events of the batch see it.

    ``put`` returns what staging made of the state (the processor's store
    returns the encoded changelog value, which it writes to ``invoice.state``).
    """

    def get(self, key: str, /) -> InvoiceState | None: ...

    def put(self, key: str, state: InvoiceState, /) -> _Staged_co: ...


def decide_in_order(
    events: Iterable[LifecycleEvent], states: States[Staged], now: str | None = None
) -> list[tuple[Decision, Staged | None]]:
    """Decide ``events`` in order against ``states``, staging every new state.

    Every decision but ``duplicate`` stages the state it leaves the invoice
    in (what the processor writes to the changelog), so the duplicate-id
    window evolves the same way wherever this runs. Returns each decision
    with what ``states.put`` returned for it (``None`` for a duplicate).
    """
    duplicate = DecisionKind.DUPLICATE
    get, put = states.get, states.put
    decided: list[tuple[Decision, Staged | None]] = []
    append = decided.append
    for event in events:
        key = event.key
        decision = decide(get(key), event, now)
        append((decision, put(key, decision.state) if decision.kind is not duplicate else None))
    return decided


class DictStates:
    """A plain dict as ``States``: nothing encoded, nothing to commit (folds, tests)."""

    __slots__ = ("states",)

    def __init__(self, states: dict[str, InvoiceState] | None = None) -> None:
        self.states = {} if states is None else states

    def get(self, key: str, /) -> InvoiceState | None:
        return self.states.get(key)

    def put(self, key: str, state: InvoiceState, /) -> None:
        self.states[key] = state


def fold(events: Iterable[LifecycleEvent], states: dict[str, InvoiceState] | None = None) -> dict[str, InvoiceState]:
    """Rebuild states by deciding every event in order (on top of ``states``, which is updated)."""
    folded = DictStates(states)
    decide_in_order(events, folded)
    return folded.states
