"""The delivery lane and the calls that drive it, with a fake WeChat (no broker)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition

from adapters import wire
from adapters.metrics import NullMetrics
from adapters.settings import Settings
from adapters.store import MemoryPartitionStore
from consumers.delivery_calls import Calls, Workers
from consumers.delivery_lane import Done, Job, PartitionLane, Waiting
from domain.delivery import DeliveryResult, WaitReason
from domain.errors import QuotaExhaustedError, UnknownResultError
from domain.model import idempotency_key
from domain.status import ReimburseStatus as S
from tests.support.fakes import job


@dataclass
class Answer:
    errcode: int = 0
    errmsg: str = "ok"


@dataclass
class FakeWeChat:
    """updatestatus: ``script[(appid, card_id, version)]`` is a list of exceptions to raise first."""

    script: dict[tuple[str, str, int], list[BaseException]] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    in_flight: set[str] = field(default_factory=set)
    overlaps: int = 0
    delay_s: float = 0.0

    async def update_status(self, *, appid: str, card_id: str, code: str, status: S, idempotency_key: str) -> Answer:
        if card_id in self.in_flight:
            self.overlaps += 1
        self.in_flight.add(card_id)
        try:
            self.calls.append((appid, card_id, idempotency_key))
            await asyncio.sleep(self.delay_s)
            version = int(idempotency_key.rsplit("#", 1)[-1])
            pending = self.script.get((appid, card_id, version)) or []
            if pending:
                raise pending.pop(0)
            return Answer()
        finally:
            self.in_flight.discard(card_id)


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"delivery_rate_limit": 10_000.0, "delivery_park_after_s": 5.0, "validate_produced": "all"}
    return Settings(**{**base, **overrides})


def lane() -> PartitionLane:
    return PartitionLane(TopicPartition("o", 0), producer=None, ledger=MemoryPartitionStore())


def commit(lane: PartitionLane, calls: Calls) -> None:
    """What delivery_commit.commit does around the transaction, without Kafka."""
    plan = lane.plan(done_value=b"1")
    lane.committed(plan)
    released, lane.released = lane.released, []
    for j in released:
        calls.resume(j)


async def drain(calls: Calls, until, timeout: float = 5.0, lanes: tuple[PartitionLane, ...] = ()) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not until():
        assert loop.time() < deadline, "the lane did not get there"
        await asyncio.sleep(0.01)
        for ln in lanes:
            commit(ln, calls)


def results(lane: PartitionLane) -> dict[int | str, str]:
    out: dict[int | str, str] = {}
    for offset, item in lane.work.items():
        out[offset] = type(item).__name__ if not isinstance(item, Done) else wire.decode_delivery(item.record or b"").result
    return out


async def test_a_parked_account_leaves_the_commit_path_and_takes_its_later_versions_along() -> None:
    wechat = FakeWeChat(script={("wxQ", "q1", 1): [QuotaExhaustedError(45009, "daily quota")]})
    calls = Calls(settings(quota_park_s=3600.0), wechat, NullMetrics())
    ln = lane()
    workers = Workers(calls, 1)  # one at a time: q2's turn comes after the park
    try:
        for j in (
            job(ln, 0, "q1", 1, "wxQ"),
            job(ln, 1, "h1", 1),
            job(ln, 2, "q1", 2, "wxQ"),
            job(ln, 3, "h2", 1),
            job(ln, 4, "q2", 1, "wxQ"),
        ):
            head = ln.add(j)
            if head is not None:
                calls.ready.put_nowait(head)
        await drain(calls, lambda: ln.unfinished == 0)
    finally:
        await workers.stop()
    # Healthy tenants are final; the parked tenant's three jobs wait, off the commit path.
    assert results(ln) == {0: "Waiting", 1: "delivered", 2: "Waiting", 3: "delivered", 4: "Waiting"}
    assert len(ln.finished_prefix()) == 5  # the whole partition can be committed
    assert ln.waiting_by_reason() == {"quota": 2, "behind": 1}
    # q2 never reached WeChat: the account was parked when its turn came.
    assert [c[1] for c in wechat.calls if c[0] == "wxQ"] == ["q1"]
    entries = {w.job.key: w.job.entry() for w in ln.work.values() if isinstance(w, Waiting)}
    assert entries[idempotency_key("q1", "c", 2)].reason is WaitReason.BEHIND


async def test_a_room_job_that_finishes_during_its_commit_goes_out_next_time_with_its_tombstone() -> None:
    ln = lane()
    j = job(ln, 0, "a", 1)
    assert ln.add(j) is j
    ln.wait(j, WaitReason.BACKOFF, until=100.0, now=1.0)
    assert [type(item) for _, item in ln.finished_prefix()] == [Waiting]
    plan = ln.plan(done_value=b"1")
    assert [k for k, _ in plan.room] == [b"w:" + j.key.encode()]
    # The transaction carrying its entry is in flight when the job finishes:
    ln.finish(j, wire.delivery_bytes(_record(j)))
    dropped = ln.committed(plan)
    assert dropped == [] and not ln.work
    assert [d.key for d in ln.finished_in_room] == [j.key] and j.in_room
    # The next commit writes it with a tombstone and drops it from the ledger.
    plan = ln.plan(done_value=b"1")
    assert len(plan.records) == 1 and plan.room == [(b"w:" + j.key.encode(), None)]
    assert ln.committed(plan) == [j.key.encode()]
    assert ln.finished_in_room == []


def _record(j: Job) -> wire.DeliveryRecord:
    return wire.DeliveryRecord(
        idempotency_key=j.key,
        card_id=j.card_id,
        code=j.code,
        appid=j.appid,
        reimburse_status=j.status,
        version=j.version,
        result=DeliveryResult.DELIVERED,
        errcode=0,
        errmsg="ok",
        attempts=1,
        outcome_id=j.outcome_id,
        first_attempt_at=None,
        completed_at="2026-12-02T10:00:00.000Z",
        duration_ms=1.0,
    )


async def test_a_crashing_call_is_retried_as_possibly_applied_and_the_invoice_moves_on() -> None:
    wechat = FakeWeChat(script={("wxA", "a", 1): [RecursionError("hostile body"), UnknownResultError(-1, "timeout")]})
    calls = Calls(settings(), wechat, NullMetrics())
    ln = lane()
    workers = Workers(calls, 2)
    try:
        for j in (job(ln, 0, "a", 1), job(ln, 1, "a", 2)):
            head = ln.add(j)
            if head is not None:
                calls.ready.put_nowait(head)
        await drain(calls, lambda: len(wechat.calls) == 4 and ln.unfinished == 0, lanes=(ln,))
    finally:
        await workers.stop()
    assert [c[2] for c in wechat.calls] == [idempotency_key("a", "c", v) for v in (1, 1, 1, 2)]
    assert wechat.overlaps == 0
    assert ln.invoices == {} and not ln.after_commit


async def test_no_call_on_a_fenced_lane_or_before_the_takeover_wait() -> None:
    wechat = FakeWeChat()
    calls = Calls(settings(), wechat, NullMetrics())
    fenced, fresh = lane(), PartitionLane(TopicPartition("o", 1), None, MemoryPartitionStore())
    fenced.fenced = True
    import time

    fresh.calls_allowed_at = time.time() + 0.5
    workers = Workers(calls, 2)
    try:
        calls.ready.put_nowait(fenced.add(job(fenced, 0, "f", 1)))  # type: ignore[arg-type]
        calls.ready.put_nowait(fresh.add(job(fresh, 0, "g", 1)))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        assert wechat.calls == []  # neither: one is fenced, the other waits out the old owner's calls
        await drain(calls, lambda: fresh.unfinished == 0)
    finally:
        await workers.stop()
    assert [c[1] for c in wechat.calls] == ["g"]
    assert fenced.unfinished == 1  # left for the new owner, which consumes it again


def test_restored_room_jobs_queue_by_invoice_in_version_order_and_count_as_possibly_applied() -> None:
    ln = lane()
    entries = []
    for card, version, reason in (("a", 2, WaitReason.BEHIND), ("b", 1, WaitReason.QUOTA), ("a", 1, WaitReason.BACKOFF)):
        j = job(ln, 0, card, version)
        j.waiting, j.waiting_since, j.resume_at = reason, 1.0, 2.0
        entries.append(j.entry())
    heads = ln.restore(entries)
    assert sorted((h.card_id, h.version) for h in heads) == [("a", 1), ("b", 1)]
    assert [j.version for j in ln.invoices["a/c"]] == [1, 2]
    assert all(j.possibly_applied and j.in_room and j.offset is None for j in ln.waiting)


@pytest.mark.parametrize("followers", [0, 2])
def test_a_job_consumed_behind_a_waiting_one_waits_too(followers: int) -> None:
    ln = lane()
    head = job(ln, 0, "a", 1)
    ln.add(head)
    ln.wait(head, WaitReason.QUOTA, until=50.0, now=1.0)
    for n in range(followers):
        assert ln.add(job(ln, n + 1, "a", n + 2)) is None
    assert ln.unfinished == 0
    assert all(isinstance(item, Waiting) for item in ln.work.values())
    assert ln.waiting_by_reason() == ({"quota": 1, "behind": followers} if followers else {"quota": 1})


def test_a_finished_record_beyond_the_prefix_is_committed_ahead_and_releases_the_next_version() -> None:
    ln = lane()
    blocker, v1, v2 = job(ln, 0, "b", 1), job(ln, 1, "a", 1), job(ln, 2, "a", 2)
    for j in (blocker, v1, v2):
        ln.add(j)
    ln.finish(v1, wire.delivery_bytes(_record(v1)))
    assert ln.after_commit == [v2]  # not callable before v1's record is durable
    plan = ln.plan(done_value=b"1")
    # offset 0 is unfinished: no offset, but v1's record goes out now, with its d: entry
    assert plan.offset is None and len(plan.records) == 1
    assert plan.room == [(b"d:" + v1.key.encode(), b"1")] and plan.released == [v2]
    ln.committed(plan)
    assert ln.released == [v2] and ln.after_commit == []
    # Once offset 0 finishes, the prefix passes v1: no second record, its d: entry dropped.
    ln.finish(blocker, wire.delivery_bytes(_record(blocker)))
    plan = ln.plan(done_value=b"1")
    assert plan.offset == 2 and len(plan.records) == 1
    assert (b"d:" + v1.key.encode(), None) in plan.room


def test_an_outcome_whose_record_a_previous_owner_committed_ahead_is_neither_called_nor_recorded() -> None:
    ln = lane()
    key = idempotency_key("a", "c", 1)
    ln.done_in_room = {key}
    assert ln.already_recorded(5, key, "a/c")
    plan = ln.plan(done_value=b"1")
    assert plan.records == [] and plan.room == [(b"d:" + key.encode(), None)] and plan.offset == 6
