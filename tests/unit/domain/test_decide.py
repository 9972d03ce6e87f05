from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from domain import DecisionKind, InvoiceState, LifecycleEvent, RejectReason, decide, fold
from domain.lifecycle import LEGAL_MOVES
from domain.model import RECENT_EVENT_IDS
from domain.status import TERMINAL_STATUSES
from domain.status import ReimburseStatus as S


def ev(status: S, event_id: str, card_id: str = "c1", appid: str = "wx1") -> LifecycleEvent:
    return LifecycleEvent(event_id, "invoice.status.set", card_id, "1", status, appid)


def run(*steps: tuple[S, str]) -> list:
    state = None
    out = []
    for status, event_id in steps:
        d = decide(state, ev(status, event_id))
        out.append(d)
        state = d.state
    return out


def test_lock_unlock_lock_close_then_red_flush_is_refused_as_terminal() -> None:
    ds = run((S.LOCK, "1"), (S.INIT, "2"), (S.LOCK, "3"), (S.CLOSURE, "4"), (S.CANCEL, "5"))
    assert [d.kind for d in ds] == [DecisionKind.ACCEPTED] * 4 + [DecisionKind.REJECTED]
    assert [d.version for d in ds] == [1, 2, 3, 4, 4]
    assert ds[-1].reason is RejectReason.TERMINAL_STATE
    assert ds[-1].state.status is S.CLOSURE


def test_init_to_closure_is_an_illegal_transition() -> None:
    (d,) = run((S.CLOSURE, "1"))
    assert d.kind is DecisionKind.REJECTED and d.reason is RejectReason.ILLEGAL_TRANSITION
    assert d.state.status is S.INIT and d.version == 0


def test_same_event_id_again_is_a_duplicate_whatever_it_asks() -> None:
    ds = run((S.LOCK, "1"), (S.CLOSURE, "1"))
    assert ds[1].kind is DecisionKind.DUPLICATE and ds[1].state == ds[0].state


def test_duplicate_of_a_rejected_event_is_still_a_duplicate() -> None:
    ds = run((S.CLOSURE, "1"), (S.CLOSURE, "1"))
    assert [d.kind for d in ds] == [DecisionKind.REJECTED, DecisionKind.DUPLICATE]


def test_same_status_again_is_unchanged_and_keeps_the_version() -> None:
    ds = run((S.LOCK, "1"), (S.LOCK, "2"))
    assert ds[1].kind is DecisionKind.UNCHANGED and ds[1].version == 1 and ds[1].to_status is None


def test_a_new_invoice_is_judged_from_init() -> None:
    assert decide(None, ev(S.INIT, "1")).kind is DecisionKind.UNCHANGED
    assert decide(None, ev(S.CANCEL, "2")).kind is DecisionKind.ACCEPTED


def test_an_event_naming_another_appid_is_refused() -> None:
    first = decide(None, ev(S.LOCK, "1", appid="wxA"))
    second = decide(first.state, ev(S.INIT, "2", appid="wxB"))
    assert second.reason is RejectReason.APPID_MISMATCH and second.state.status is S.LOCK


def test_only_the_last_ids_are_remembered() -> None:
    state = None
    for i in range(RECENT_EVENT_IDS + 5):
        state = decide(state, ev(S.INIT, f"id-{i}")).state
    assert state is not None
    assert len(state.recent_event_ids) == RECENT_EVENT_IDS
    assert decide(state, ev(S.INIT, f"id-{RECENT_EVENT_IDS + 4}")).kind is DecisionKind.DUPLICATE


statuses = st.sampled_from(list(S))
events = st.lists(
    st.tuples(st.integers(0, 3), statuses, st.integers(0, 40)).map(
        lambda t: LifecycleEvent(f"e{t[2]}", "invoice.status.set", f"c{t[0]}", "1", t[1], "wx1")
    ),
    max_size=80,
)


def _reachable_with_legal_moves(target: S) -> bool:
    seen, todo = {S.INIT}, deque([S.INIT])
    while todo:
        s = todo.popleft()
        for a, b in LEGAL_MOVES:
            if a is s and b not in seen:
                seen.add(b)
                todo.append(b)
    return target in seen


@settings(max_examples=300, deadline=None)
@given(events)
def test_any_sequence_moves_only_by_legal_steps(sequence: list[LifecycleEvent]) -> None:
    states: dict[str, InvoiceState] = {}
    for e in sequence:
        before = states.get(e.key)
        d = decide(before, e)
        prior = before.status if before else S.INIT
        if d.kind is DecisionKind.ACCEPTED:
            assert (prior, d.state.status) in LEGAL_MOVES
            assert d.version == (before.version if before else 0) + 1
        else:
            assert d.state.status is prior
        if d.changes_state:
            states[e.key] = d.state
    for state in states.values():
        assert _reachable_with_legal_moves(state.status)


@settings(max_examples=300, deadline=None)
@given(events)
def test_terminal_states_never_change(sequence: list[LifecycleEvent]) -> None:
    states: dict[str, InvoiceState] = {}
    for e in sequence:
        before = states.get(e.key)
        d = decide(before, e)
        if before is not None and before.status in TERMINAL_STATUSES:
            assert d.state.status is before.status and d.version == before.version
        if d.changes_state:
            states[e.key] = d.state


@settings(max_examples=200, deadline=None)
@given(events)
def test_folding_the_same_events_twice_gives_the_same_state(sequence: list[LifecycleEvent]) -> None:
    assert fold(sequence) == fold(sequence)
    once = fold(sequence)
    # Replaying the same events on top of the result: every id is a duplicate
    # (within the remembered window), so nothing moves.
    again = fold(sequence, dict(once))
    assert {k: (s.status, s.version) for k, s in again.items()} == {k: (s.status, s.version) for k, s in once.items()}


# --- WeChat as a second writer ----------------------------------------------


def reported(status: S, event_id: str, appid: str = "wx1") -> LifecycleEvent:
    from domain.status import WECHAT_STATUS_REPORTED, Origin

    return LifecycleEvent(event_id, WECHAT_STATUS_REPORTED, "c1", "1", status, appid, origin=Origin.WECHAT)


def test_a_wechat_report_is_a_fact_the_state_follows_and_later_requests_are_judged_against_it() -> None:
    locked = decide(None, ev(S.LOCK, "u1"))
    closed = decide(locked.state, reported(S.CLOSURE, "w1"))
    assert (closed.kind, closed.state.status, closed.state.version, closed.legal) == (DecisionKind.ACCEPTED, S.CLOSURE, 2, True)
    flushed = decide(closed.state, ev(S.CANCEL, "u2"))
    assert (flushed.kind, flushed.reason) == (DecisionKind.REJECTED, RejectReason.TERMINAL_STATE)


def test_an_illegal_wechat_report_is_still_followed_and_flagged_as_divergence() -> None:
    closed = decide(None, reported(S.CLOSURE, "w1"))  # INIT -> CLOSURE: must lock first
    assert (closed.kind, closed.state.status, closed.legal, closed.trigger) == (DecisionKind.ACCEPTED, S.CLOSURE, False, None)
    reopened = decide(closed.state, reported(S.INIT, "w2"))  # out of a terminal status
    assert (reopened.kind, reopened.state.status, reopened.legal) == (DecisionKind.ACCEPTED, S.INIT, False)


def test_the_same_status_reported_again_is_unchanged_and_a_retried_push_is_a_duplicate() -> None:
    locked = decide(None, reported(S.LOCK, "w1"))
    again = decide(locked.state, reported(S.LOCK, "w2"))
    assert (again.kind, again.state.version) == (DecisionKind.UNCHANGED, 1)
    retried = decide(locked.state, reported(S.LOCK, "w1"))
    assert retried.kind is DecisionKind.DUPLICATE


def test_a_wechat_report_outcome_says_its_origin_and_legality() -> None:
    import msgspec

    from adapters import wire

    where = type("Where", (), {"topic": "t", "partition": 0, "offset": 7})()
    closed = decide(None, reported(S.CLOSURE, "w1"))
    data = msgspec.json.decode(wire.outcome_bytes(closed, where, "2026-12-02T00:00:00Z", "c1/1"))["data"]
    assert (data["origin"], data["legal"], data["to_status"]) == ("wechat", False, "INVOICE_REIMBURSE_CLOSURE")
    upstream = decide(None, ev(S.LOCK, "u1"))
    data = msgspec.json.decode(wire.outcome_bytes(upstream, where, "2026-12-02T00:00:00Z", "c1/1"))["data"]
    assert (data["origin"], data["legal"]) == ("upstream", None)
