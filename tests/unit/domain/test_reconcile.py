"""``domain.reconcile``: evidence in, differences and repairs out (no broker, no WeChat)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from domain.delivery import DeliveryResult, WaitReason
from domain.model import InvoiceState, idempotency_key
from domain.reconcile import (
    Accepted,
    Evidence,
    FinalDelivery,
    WaitingDelivery,
    build_report,
    examine,
    repair_key,
    same_state,
    state_differences,
    summarise_waiting,
)
from domain.status import ReimburseStatus as S

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(hours=1)
CARD, CODE, APPID = "pjZ8Yt7Um2jYxzneP8GomnxoVFWo", "186921658591", "wx1234567890abcdef"
KEY = f"{CARD}/{CODE}"


def state(status: S, version: int, ids: tuple[str, ...] = ("e1",), appid: str = APPID, card: str = CARD) -> InvoiceState:
    return InvoiceState(card, CODE, status, version, appid, updated_at="2026-11-23T10:00:00Z", recent_event_ids=ids)


def delivered(
    version: int,
    status: S,
    *,
    result: str = "delivered",
    key: str | None = None,
    repair: bool = False,
    errcode: int = 0,
    card: str = CARD,
) -> FinalDelivery:
    return FinalDelivery(
        key or idempotency_key(card, CODE, version),
        version,
        status,
        DeliveryResult(result),
        errcode,
        "ok" if not errcode else "refused",
        repair,
    )


def history(*statuses: S, at: datetime = LONG_AGO) -> dict[int, Accepted]:
    return {v: Accepted(v, s, at) for v, s in enumerate(statuses, 1)}


def consistent(*statuses: S, wechat: S | bool | None = False, card: str = CARD) -> Evidence:
    """An invoice moved through ``statuses``, every step delivered; WeChat asked
    (and agreeing) unless ``wechat`` is False."""
    final = state(statuses[-1], len(statuses), card=card)
    ev = Evidence(
        final.key,
        rebuilt=final,
        rebuilt_partition=1,
        live=final,
        live_partition=1,
        accepted=history(*statuses),
        deliveries=[delivered(v, s, card=card) for v, s in enumerate(statuses, 1)],
    )
    if wechat is not False:
        ev.wechat_asked, ev.wechat = True, (statuses[-1] if wechat is True else wechat)
    return ev


def kinds(ev: Evidence, **kw: Any) -> list[str]:
    return [d.kind for d in examine(ev, now=NOW, **kw).differences]


# ------------------------------------------------------------------ state


def test_a_consistent_invoice_has_no_difference() -> None:
    verdict = examine(consistent(S.LOCK, S.INIT, S.LOCK, wechat=True), now=NOW)
    assert verdict.differences == [] and verdict.repair is None and verdict.repair_status == "none"


def test_states_are_compared_without_updated_at() -> None:
    a = state(S.LOCK, 1)
    later = InvoiceState(a.card_id, a.code, a.status, a.version, a.appid, "2030-01-01T00:00:00Z", a.recent_event_ids)
    assert same_state(a, later)
    assert not same_state(a, state(S.LOCK, 1, ids=("e1", "e2")))


def test_a_live_state_that_differs_is_a_state_mismatch_naming_the_fields() -> None:
    ev = consistent(S.LOCK)
    ev.live = state(S.INIT, 5, ids=("e1", "e9"))
    [d] = examine(ev, now=NOW).differences
    assert d.kind == "state_mismatch" and (d.expected, d.observed) == ("LOCK v1", "INIT v5")
    assert "status" in d.detail and "version" in d.detail and "recent_event_ids" in d.detail
    assert state_differences(state(S.LOCK, 1), state(S.LOCK, 1)) == []


def test_missing_orphan_and_undecodable_live_states() -> None:
    ev = consistent(S.LOCK)
    ev.live, ev.live_partition = None, None
    assert kinds(ev) == ["state_missing"]
    ev = consistent(S.LOCK)
    ev.rebuilt, ev.rebuilt_partition = None, None
    assert kinds(ev) == ["state_orphan"]
    ev = consistent(S.LOCK)
    ev.live, ev.live_error = None, "live record does not decode: boom"
    assert kinds(ev) == ["state_mismatch"]


def test_an_invoice_known_only_from_deliveries_has_no_state() -> None:
    ev = Evidence(KEY, deliveries=[delivered(1, S.LOCK)])
    verdict = examine(ev, now=NOW)
    assert [d.kind for d in verdict.differences] == ["state_missing"] and verdict.repair is None


# ------------------------------------------------------------------ deliveries


def test_a_lost_delivery_of_an_old_version_is_missing_but_needs_no_repair() -> None:
    ev = consistent(S.LOCK, S.INIT, S.LOCK)
    del ev.deliveries[1]
    verdict = examine(ev, now=NOW)
    [d] = verdict.differences
    assert d.kind == "delivery_missing" and "[2]" in d.detail
    assert verdict.repair is None  # the last delivered status is right


def test_a_lost_delivery_of_the_current_version_asks_for_a_repair_from_the_last_delivered_status() -> None:
    ev = consistent(S.LOCK, S.CLOSURE)
    ev.deliveries.pop()
    verdict = examine(ev, now=NOW)
    assert [d.kind for d in verdict.differences] == ["delivery_missing"]
    plan = verdict.repair
    assert plan is not None and verdict.repair_status == "enqueue"
    assert (plan.from_status, plan.to_status, plan.version, plan.reason) == (S.LOCK, S.CLOSURE, 2, "delivery_missing")
    assert plan.idempotency_key == f"{KEY}#2~repair~LOCK" == repair_key(CARD, CODE, 2, "LOCK")
    assert plan.partition == 1 and plan.appid == APPID


def test_nothing_delivered_at_all_repairs_from_an_unknown_status() -> None:
    ev = consistent(S.LOCK)
    ev.deliveries.clear()
    plan = examine(ev, now=NOW).repair
    assert plan is not None and plan.idempotency_key.endswith("~repair~UNKNOWN")
    assert plan.from_status is S.LOCK  # unknown: the state's own status


def test_a_conflict_on_the_current_version_is_a_failed_delivery() -> None:
    ev = consistent(S.LOCK, S.CANCEL)
    ev.deliveries[-1] = delivered(2, S.CANCEL, result="conflict", errcode=72023)
    verdict = examine(ev, now=NOW)
    [d] = verdict.differences
    assert d.kind == "delivery_failed" and "72023" in d.detail
    assert verdict.repair is not None and verdict.repair.reason == "delivery_failed"


def test_a_recent_accepted_outcome_without_delivery_is_in_flight_not_missing() -> None:
    ev = consistent(S.LOCK, S.INIT, wechat=S.LOCK)
    ev.deliveries.pop()
    ev.accepted[2] = Accepted(2, S.INIT, NOW - timedelta(seconds=5))
    verdict = examine(ev, now=NOW, grace_s=30)
    assert verdict.differences == [] and verdict.in_flight and verdict.repair is None
    assert kinds(ev, grace_s=1) == ["delivery_missing", "wechat_mismatch"]


def test_a_delivered_repair_settles_the_versions_up_to_its_own() -> None:
    ev = consistent(S.LOCK, S.INIT, S.LOCK, wechat=True)
    del ev.deliveries[1:]
    ev.deliveries.append(delivered(3, S.LOCK, key=repair_key(CARD, CODE, 3, "LOCK"), repair=True))
    assert examine(ev, now=NOW).differences == []


# ------------------------------------------------------------------ WeChat


def test_a_card_moved_behind_our_back_is_a_wechat_mismatch_repaired_from_what_wechat_shows() -> None:
    ev = consistent(S.LOCK, S.INIT, wechat=S.LOCK)
    verdict = examine(ev, now=NOW)
    [d] = verdict.differences
    assert (d.kind, d.expected, d.observed) == ("wechat_mismatch", "INIT v2", "LOCK")
    plan = verdict.repair
    assert plan is not None and (plan.from_status, plan.to_status, plan.reason) == (S.LOCK, S.INIT, "wechat_mismatch")
    assert plan.idempotency_key == f"{KEY}#2~repair~LOCK"


def test_a_card_wechat_never_saw_is_wechat_missing_and_repaired_from_init() -> None:
    ev = consistent(S.LOCK, wechat=None)
    verdict = examine(ev, now=NOW)
    assert [d.kind for d in verdict.differences] == ["wechat_missing"]
    assert verdict.repair is not None and verdict.repair.idempotency_key.endswith("~repair~NONE")
    assert verdict.repair.from_status is S.INIT


def test_an_untouched_card_of_an_unmoved_invoice_is_fine() -> None:
    ev = Evidence(
        KEY,
        rebuilt=state(S.INIT, 0),
        rebuilt_partition=0,
        live=state(S.INIT, 0),
        live_partition=0,
        wechat_asked=True,
        wechat=None,
    )
    assert examine(ev, now=NOW).differences == []


@pytest.mark.parametrize(
    ("statuses", "card", "why"),
    [
        ((S.LOCK,), S.CLOSURE, "terminal"),
        ((S.LOCK, S.INIT), S.CANCEL, "terminal"),
        ((S.LOCK, S.CLOSURE), S.INIT, "locked first"),
    ],
)
def test_a_card_wechat_refuses_to_move_is_unrepairable(statuses: tuple[S, ...], card: S, why: str) -> None:
    verdict = examine(consistent(*statuses, wechat=card), now=NOW)
    assert [d.kind for d in verdict.differences] == ["wechat_mismatch", "unrepairable"]
    assert why in verdict.differences[-1].detail
    assert verdict.repair is None and verdict.repair_status == "unrepairable"


def test_a_card_the_service_never_moved_is_unrepairable() -> None:
    ev = Evidence(
        KEY,
        rebuilt=state(S.INIT, 0),
        rebuilt_partition=0,
        live=state(S.INIT, 0),
        live_partition=0,
        wechat_asked=True,
        wechat=S.LOCK,
    )
    verdict = examine(ev, now=NOW)
    assert [d.kind for d in verdict.differences] == ["wechat_mismatch", "unrepairable"] and verdict.repair is None


# ------------------------------------------------------------------ repeated repairs


def test_a_repair_already_enqueued_and_not_delivered_is_pending() -> None:
    ev = consistent(S.LOCK, S.INIT, wechat=S.LOCK)
    first = examine(ev, now=NOW).repair
    assert first is not None
    ev.repairs.add(first.idempotency_key)
    again = examine(ev, now=NOW)
    assert again.repair_status == "pending" and again.repair == first


def test_a_repair_wechat_refused_is_not_sent_again() -> None:
    ev = consistent(S.LOCK, S.INIT, wechat=S.LOCK)
    plan = examine(ev, now=NOW).repair
    assert plan is not None
    ev.repairs.add(plan.idempotency_key)
    ev.deliveries.append(delivered(2, S.INIT, key=plan.idempotency_key, repair=True, result="conflict", errcode=72023))
    verdict = examine(ev, now=NOW)
    assert verdict.repair_status == "unrepairable" and "refused this repair" in verdict.differences[-1].detail


def test_a_different_divergence_gets_a_new_key() -> None:
    ev = consistent(S.LOCK, S.INIT, S.LOCK, wechat=S.INIT)
    plan = examine(ev, now=NOW).repair
    assert plan is not None
    ev.repairs.add(plan.idempotency_key)
    ev.wechat = None
    other = examine(ev, now=NOW)
    assert other.repair_status == "enqueue" and other.repair is not None
    assert other.repair.idempotency_key != plan.idempotency_key


# ------------------------------------------------------------------ the report


def test_the_report_counts_every_kind_and_sorts_differences() -> None:
    a = consistent(S.LOCK, S.INIT, wechat=S.LOCK)
    b = consistent(S.LOCK, card="zzz")
    b.live = state(S.INIT, 4, card="zzz")
    c = consistent(S.LOCK, wechat=True, card="ccc")
    report = build_report([a, b, c], now=NOW)
    assert report.invoices == 3 and not report.clean
    assert [d.kind for d in report.differences] == ["state_mismatch", "wechat_mismatch"]
    assert report.counts["state_mismatch"] == 1 and report.counts["wechat_missing"] == 0
    assert [p.key for p in report.repairs] == [KEY]
    data = report.to_json()
    assert msgspec.json.decode(msgspec.json.encode(data)) == data
    assert data["counts"]["wechat_mismatch"] == 1 and len(data["differences"]) == 2
    assert build_report([c], now=NOW).clean


# ------------------------------------------------------------------ the waiting room


def waits(
    version: int, status: S, reason: WaitReason, *, since: datetime = LONG_AGO, appid: str = APPID, card: str = CARD
) -> WaitingDelivery:
    return WaitingDelivery(
        idempotency_key(card, CODE, version),
        version,
        status,
        appid,
        reason,
        waiting_since=since,
        resume_at=NOW + timedelta(hours=2),
        attempts=1,
        partition=2,
    )


def parked(*statuses: S, delivered_up_to: int, reason: WaitReason = WaitReason.QUOTA, card: str = CARD) -> Evidence:
    """An invoice moved through ``statuses`` long ago; versions after
    ``delivered_up_to`` are in the waiting room (the first for ``reason``,
    the rest behind it)."""
    ev = consistent(*statuses, card=card)
    ev.deliveries = ev.deliveries[:delivered_up_to]
    ev.waiting = [
        waits(v, s, reason if v == delivered_up_to + 1 else WaitReason.BEHIND, card=card)
        for v, s in enumerate(statuses, 1)
        if v > delivered_up_to
    ]
    return ev


def test_waiting_deliveries_are_neither_missing_nor_repaired_however_long_they_wait() -> None:
    ev = parked(S.LOCK, S.INIT, S.LOCK, delivered_up_to=1)
    ev.wechat_asked, ev.wechat = True, S.LOCK  # WeChat still has version 1
    verdict = examine(ev, now=NOW)
    assert verdict.differences == [] and verdict.repair is None
    assert [w.version for w in verdict.waiting] == [2, 3] and not verdict.in_flight


def test_a_version_below_the_first_waiting_one_without_a_record_is_still_missing() -> None:
    ev = parked(S.LOCK, S.INIT, S.LOCK, delivered_up_to=2)
    del ev.deliveries[0]  # version 1 never got its record: not held by anything
    verdict = examine(ev, now=NOW)
    [d] = verdict.differences
    assert d.kind == "delivery_missing" and "[1]" in d.detail


def test_a_waiting_entry_whose_final_record_is_there_is_not_waiting() -> None:
    ev = consistent(S.LOCK, S.INIT)
    ev.waiting = [waits(2, S.INIT, WaitReason.MINUTE_QUOTA)]  # the record's tombstone is read later
    verdict = examine(ev, now=NOW)
    assert verdict.waiting == [] and verdict.differences == []


def test_a_wait_that_ended_failed_is_a_delivery_failure() -> None:
    ev = consistent(S.LOCK)
    ev.deliveries = [delivered(1, S.LOCK, result="failed", errcode=-1)]
    assert kinds(ev) == ["delivery_failed"]
    assert examine(ev, now=NOW).waiting == []


def test_waiting_is_summarised_per_invoice_oldest_first_with_counts_by_reason_and_appid() -> None:
    old_since, new_since = NOW - timedelta(hours=3), NOW - timedelta(minutes=5)
    summary = summarise_waiting(
        [
            ("b/c", [waits(4, S.LOCK, WaitReason.NO_CREDENTIALS, since=new_since, appid="wxB", card="b")]),
            (
                KEY,
                [
                    waits(3, S.LOCK, WaitReason.BEHIND, since=old_since),
                    waits(2, S.INIT, WaitReason.QUOTA, since=old_since),
                ],
            ),
            ("empty/c", []),
        ],
        now=NOW,
    )
    assert [i.key for i in summary.invoices] == [KEY, "b/c"]
    first = summary.invoices[0]
    assert first.versions == [2, 3] and first.reason == "quota" and first.since == old_since and first.partition == 2
    assert summary.deliveries == 3 and summary.oldest == old_since
    assert summary.by_reason == {str(r): 0 for r in WaitReason} | {"quota": 1, "behind": 1, "no_credentials": 1}
    assert summary.by_appid == {APPID: 2, "wxB": 1}
    data = summary.to_json()
    assert data["invoices"] == 2 and data["deliveries"] == 3 and data["oldest_since"] == "2026-11-23T09:00:00.000Z"
    assert data["list"][0]["waiting_s"] == 3 * 3600 and data["list"][0]["versions"] == [2, 3]
    assert data["list"][1]["deliveries"][0]["reason"] == "no_credentials"
    assert msgspec.json.decode(msgspec.json.encode(data)) == data


def test_the_report_lists_waiting_invoices_and_stays_clean() -> None:
    quota = parked(S.LOCK, S.INIT, delivered_up_to=0, card="q")
    no_credentials = parked(S.LOCK, delivered_up_to=0, reason=WaitReason.NO_CREDENTIALS, card="n")
    report = build_report([consistent(S.LOCK), quota, no_credentials], now=NOW)
    assert report.clean and report.in_flight == 0
    assert report.waiting.deliveries == 3 and len(report.waiting.invoices) == 2
    data = report.to_json()
    assert data["clean"] and data["differences_total"] == 0
    assert data["waiting"]["by_reason"]["quota"] == 1 and data["waiting"]["by_reason"]["behind"] == 1
    assert data["waiting"]["by_reason"]["no_credentials"] == 1
    assert {i["key"] for i in data["waiting"]["list"]} == {"q/" + CODE, "n/" + CODE}
    assert build_report([consistent(S.LOCK)], now=NOW).to_json()["waiting"]["deliveries"] == 0
