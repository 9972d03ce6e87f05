"""``consumers.reconcile``: records in, the domain's evidence out; repairs out as outcome records."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from adapters import wire
from consumers.reconcile import EvidenceIndex, repair_outcome
from domain.delivery import DeliveryResult
from domain.model import InvoiceState, idempotency_key
from domain.reconcile import DifferenceKind, RepairPlan
from domain.status import ReimburseStatus as S

CARD, CODE, APPID = "pjZ8Yt7Um2jYxzneP8GomnxoVFWo", "186921658591", "wx1234567890abcdef"
KEY = f"{CARD}/{CODE}"


def state(status: S, version: int) -> InvoiceState:
    return InvoiceState(CARD, CODE, status, version, APPID, updated_at="2026-11-23T10:00:00Z", recent_event_ids=("e1",))


def delivered(version: int, status: S) -> wire.DeliveryRecord:
    return wire.DeliveryRecord(
        idempotency_key=idempotency_key(CARD, CODE, version),
        card_id=CARD,
        code=CODE,
        appid=APPID,
        reimburse_status=status,
        version=version,
        result=DeliveryResult.DELIVERED,
        errcode=0,
        errmsg="ok",
        attempts=1,
        outcome_id="o",
        first_attempt_at=None,
        completed_at="2026-11-23T10:00:01Z",
        duration_ms=1.0,
    )


def test_the_repair_outcome_matches_the_outcome_schema() -> None:
    plan = RepairPlan(CARD, CODE, APPID, 2, 3, S.LOCK, S.CLOSURE, "LOCK", DifferenceKind.WECHAT_MISMATCH)
    value = wire.encode(repair_outcome(plan, "2026-11-23T11:00:00.000Z"))
    wire.validate_produced(value, "outcome")
    outcome = wire.decode_outcome(value)
    assert outcome.type == "invoice.status.repair" and outcome.subject == KEY
    d = outcome.data
    assert (d.event_id, d.event_type, d.trigger) == (f"repair:{KEY}#3~repair~LOCK", "invoice.reconcile.repair", "close")
    assert (d.from_status, d.requested_status, d.to_status, d.version) == (S.LOCK, S.CLOSURE, S.CLOSURE, 3)
    assert d.idempotency_key == f"{KEY}#3~repair~LOCK" and d.reason == "wechat_mismatch"


def rec(partition: int, key: str | None, value: bytes | None) -> SimpleNamespace:
    return SimpleNamespace(partition=partition, key=None if key is None else key.encode(), value=value)


def test_the_index_keeps_the_latest_state_per_key_and_honours_tombstones() -> None:
    index = EvidenceIndex()
    index.add_state_record(rec(2, KEY, wire.encode_state(state(S.LOCK, 1))))
    index.add_state_record(rec(2, KEY, wire.encode_state(state(S.INIT, 2))))
    index.add_state_record(rec(0, "a/b", wire.encode_state(state(S.LOCK, 1))))
    index.add_state_record(rec(0, "a/b", None))
    index.add_state_record(rec(1, "c/d", b"garbage"))
    ev = index.evidence[KEY]
    assert ev.live is not None and ev.live.status is S.INIT and ev.live_partition == 2
    assert index.evidence["a/b"].live is None
    assert index.evidence["c/d"].live_error is not None


def test_the_index_collects_accepted_outcomes_repairs_and_deliveries() -> None:
    index = EvidenceIndex()
    plan = RepairPlan(CARD, CODE, APPID, 0, 1, S.INIT, S.LOCK, "INIT", DifferenceKind.WECHAT_MISMATCH)
    accepted = wire.OutcomeEvent(
        specversion="1.0",
        id="t/0/0",
        source=wire.OUTCOME_SOURCE,
        type="invoice.status.accepted",
        time="2026-11-23T10:00:00Z",
        subject=KEY,
        data=wire.OutcomeData(
            card_id=CARD,
            code=CODE,
            appid=APPID,
            event_id="e1",
            event_type="invoice.reimbursement.locked",
            from_status=S.INIT,
            requested_status=S.LOCK,
            version=1,
            processed_at="2026-11-23T10:00:00Z",
            to_status=S.LOCK,
        ),
    )
    index.add_outcome_record(rec(0, KEY, wire.encode(accepted)))
    index.add_outcome_record(rec(0, KEY, wire.encode(repair_outcome(plan, "2026-11-23T11:00:00Z"))))
    index.add_outcome_record(rec(0, KEY, b"{}"))
    index.add_delivery_record(rec(0, KEY, wire.delivery_bytes(delivered(1, S.LOCK))))
    ev = index.evidence[KEY]
    assert ev.accepted[1].to_status is S.LOCK and ev.accepted[1].processed_at == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert set(ev.repairs) == {plan.idempotency_key}
    assert [d.version for d in ev.deliveries] == [1]
    assert index.undecodable == {"outcomes": 1}
