"""Deciding events against invoice state: pure functions, no I/O.

``decide`` judges one event; ``decide_in_order`` is the one loop that decides
a partition's events in order against the state so far and stages each new
state. Replay, the tests' oracle and the processor's Python path run that
loop (through ``consumers.processor.decide_records``, which decodes first).
The processor's native step (``native/``) decides the common valid event
with tables taken from here, in ``decide``'s order; a fuzz suite holds it to
this code byte for byte (tests/fuzz/test_native_step.py). ``fold`` is the
same loop over a plain dict.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

from domain.lifecycle import LEGAL_MOVES
from domain.model import (
    RECENT_EVENT_IDS,
    Decision,
    DecisionKind,
    InvoiceState,
    LifecycleEvent,
    RejectReason,
)
from domain.status import TERMINAL_STATUSES, Origin, ReimburseStatus


def _remember(ids: tuple[str, ...], event_id: str) -> tuple[str, ...]:
    ids = ids + (event_id,)  # noqa: RUF005 - hot path: twice as fast as (*ids, event_id)
    return ids[-RECENT_EVENT_IDS:] if len(ids) > RECENT_EVENT_IDS else ids


#: Hot-path aliases: a module global is one lookup, an enum member two, a
#: mappingproxy's ``get`` a slower call than a dict's.
_ACCEPTED, _REJECTED, _UNCHANGED, _DUPLICATE = (
    DecisionKind.ACCEPTED,
    DecisionKind.REJECTED,
    DecisionKind.UNCHANGED,
    DecisionKind.DUPLICATE,
)
_APPID_MISMATCH, _TERMINAL_STATE, _ILLEGAL_TRANSITION = (
    RejectReason.APPID_MISMATCH,
    RejectReason.TERMINAL_STATE,
    RejectReason.ILLEGAL_TRANSITION,
)
_WECHAT = Origin.WECHAT
_MOVES: dict[tuple[ReimburseStatus, ReimburseStatus], str] = dict(LEGAL_MOVES)


def decide(state: InvoiceState | None, event: LifecycleEvent, now: str | None = None) -> Decision:
    """Judge ``event`` against ``state`` (``None``: never seen, judged from INIT).

    Order matters and is part of the contract: a duplicate id is judged
    before anything else; then the same status again is ``unchanged``; then
    a WeChat report is accepted as the card's new status (``legal`` says
    whether the lifecycle allows the move); then a terminal state refuses
    every upstream move; then the lifecycle table.

    States and decisions are built positionally (``InvoiceState``: card_id,
    code, status, version, appid, updated_at, recent_event_ids; ``Decision``:
    kind, event, from_status, requested_status, state, reason, trigger,
    legal): msgspec parses keywords at a cost of a third of this function.
    """
    if state is None:
        state = InvoiceState(event.card_id, event.code)
    current = state.status
    requested = event.requested_status
    event_id = event.event_id

    if event_id in state.recent_event_ids:
        return Decision(_DUPLICATE, event, current, requested, state)

    remembered = _remember(state.recent_event_ids, event_id)
    appid = state.appid or event.appid

    if state.appid and event.appid and event.appid != state.appid:
        kind, reason, trigger = _REJECTED, _APPID_MISMATCH, None
    elif requested is current:
        kind, reason, trigger = _UNCHANGED, None, None
    elif event.origin is _WECHAT:
        # A fact about the card, not a request: the state follows it, legal or
        # not, and the decision says whether we had diverged.
        trigger = None if current in TERMINAL_STATUSES else _MOVES.get((current, requested))
        moved = InvoiceState(state.card_id, state.code, requested, state.version + 1, appid, now, remembered)
        return Decision(_ACCEPTED, event, current, requested, moved, None, trigger, trigger is not None)
    elif current in TERMINAL_STATUSES:
        kind, reason, trigger = _REJECTED, _TERMINAL_STATE, None
    else:
        trigger = _MOVES.get((current, requested))
        if trigger is None:
            kind, reason = _REJECTED, _ILLEGAL_TRANSITION
        else:
            moved = InvoiceState(state.card_id, state.code, requested, state.version + 1, appid, now, remembered)
            return Decision(_ACCEPTED, event, current, requested, moved, None, trigger)
    seen = InvoiceState(state.card_id, state.code, current, state.version, appid, now, remembered)
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
