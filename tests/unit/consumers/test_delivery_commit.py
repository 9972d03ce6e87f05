"""Taking a deliverer partition over and committing it, over the fakes (tests/support/fakes.py): no broker.

``take_over`` judges the previous ownership from the room's owner marker
(clean: ``closed``, or a partition nobody consumed; unclean: anything else);
``commit`` writes records, room entries and the offset in one transaction;
``close`` adds the ``closed`` marker once calls have ended; a lane whose
producer was fenced stops calling. The ledger is a real RocksDB in tmp_path.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from adapters import kafka, waiting_room, wire
from adapters.settings import Settings
from consumers import delivery_commit
from consumers.deliverer import Deliverer
from consumers.delivery_lane import LEDGER_TOKEN_KEY, Job, PartitionLane
from domain.delivery import WaitReason
from tests.support import fakes
from tests.support.fakes import FakeBroker, FakeConsumer, FakeTransactionalProducer, job

INSTANCE = "host-a:1"


def fake_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = {"state_dir": tmp_path / "state", "wechat_timeout_s": 2.0, "delivery_commit_interval_ms": 10}
    return fakes.fake_settings(**{**base, **overrides})


class Harness:
    """One outcome partition (0) of a fake broker, and the deliverer's clients for it."""

    def __init__(self, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
        self.settings = settings
        self.broker = FakeBroker()
        self.group = settings.deliverer_group_id
        self.tp = TopicPartition(settings.topic_outcomes, 0)
        self.consumer = self._consumer()
        self.producers: list[FakeTransactionalProducer] = []
        self.rooms_read_after_fence = False

        def new_producer(_settings: Settings, txn_id: str, **_: Any) -> FakeTransactionalProducer:
            producer = self.broker.transactional_producer(txn_id)
            self.producers.append(producer)
            return producer

        monkeypatch.setattr(kafka, "new_transactional_producer", new_producer)

    def _consumer(self) -> FakeConsumer:
        consumer = self.broker.consumer(group_id=self.group)
        consumer.assign([self.tp])
        return consumer

    def outcomes(self, n: int) -> None:
        """``n`` outcome records on partition 0 (their content does not matter here)."""
        for i in range(n):
            self.broker.append(self.tp.topic, 0, b"card/c", f"outcome {i}".encode())

    def room(self) -> waiting_room.PartitionRoom:
        """The room's partition 0 as a read_committed reader sees it at its end (as ``read_rooms``)."""
        room = waiting_room.PartitionRoom()
        for record in self.broker.committed_records(self.settings.topic_delivery_waiting, 0):
            room.apply(record.key, record.value)
        return room

    def markers(self) -> list[wire.OwnerMarker]:
        return [
            wire.decode_owner_marker(r.value)
            for r in self.broker.committed_records(self.settings.topic_delivery_waiting, 0)
            if r.key == wire.WAITING_OWNER_KEY and r.value is not None
        ]

    def delivered(self) -> list[bytes]:
        return [r.value for r in self.broker.committed_records(self.settings.topic_deliveries) if r.value is not None]

    def move_to_host(self, name: str) -> None:
        """The next ``take_over`` runs on another host: its own state dir (ledger)."""
        self.settings = self.settings.model_copy(update={"state_dir": self.settings.state_dir.parent / name})

    def committed_offset(self) -> int | None:
        return self.broker.group_offsets.get((self.group, self.tp))

    async def read_rooms(self, _settings: Settings, partitions: list[int]) -> dict[int, waiting_room.PartitionRoom]:
        assert partitions == [0]
        self.rooms_read_after_fence = bool(self.producers) and self.producers[-1].epoch is not None
        return {0: self.room()}

    async def take_over(self, instance: str = INSTANCE) -> PartitionLane:
        taken = await delivery_commit.take_over(
            self.settings, self.group, [self.tp], self.consumer, instance, read_rooms=self.read_rooms
        )
        assert self.rooms_read_after_fence, "the room must be read after the producer fenced the previous owner"
        assert taken.committed[self.tp].offset == self.committed_offset()
        return taken.lanes[self.tp]

    async def commit(self, lane: PartitionLane) -> int | None:
        return await delivery_commit.commit(self.settings, self.group, lane, 1)

    async def close(self, lane: PartitionLane, instance: str = INSTANCE) -> bool:
        return await delivery_commit.close(self.settings, self.group, lane, 1, instance)


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    return Harness(fake_settings(tmp_path), monkeypatch)


def added(j: Job) -> Job:
    j.lane.add(j)
    return j


def record(j: Job) -> bytes:
    return f'{{"idempotency_key": "{j.key}", "result": "delivered"}}'.encode()


def finish(lane: PartitionLane, j: Job) -> bytes:
    """A call of ``j`` that started and ended with a final record."""
    lane.call_started(j)
    data = record(j)
    lane.finish(j, data)
    lane.call_ended()
    return data


# ------------------------------------------------------------------ take_over


async def test_a_partition_nobody_consumed_is_taken_over_cleanly_and_marked_open(harness: Harness) -> None:
    harness.outcomes(3)
    before = time.time()
    lane = await harness.take_over()
    assert lane.possibly_applied_below == 0 and lane.attempted_below == 0
    assert lane.calls_allowed_at <= before  # no wait: nobody can have a call in flight
    (marker,) = harness.markers()
    assert marker.state == "open" and marker.instance == INSTANCE and marker.token == lane.token
    assert lane.ledger.get(LEDGER_TOKEN_KEY) == lane.token.encode()
    await harness.close(lane)


async def test_a_partition_left_closed_is_taken_over_cleanly_keeping_the_ledger_and_what_was_attempted(
    harness: Harness,
) -> None:
    harness.outcomes(5)
    first = await harness.take_over()
    finish(first, added(job(first, 0, "A", 1)))
    # Called but not committed: its record is only in the ledger when the owner leaves.
    ahead = job(first, 3, "B", 1)
    first.add(ahead)
    first.call_started(ahead)
    first.ledger.apply([(ahead.key.encode(), record(ahead))], None)
    first.call_ended()
    assert await harness.close(first)
    marker = harness.markers()[-1]
    assert marker.state == "closed" and marker.attempted_below == 4

    second = await harness.take_over("host-a:2")
    assert second.possibly_applied_below == 4 and second.attempted_below == 4
    assert second.calls_allowed_at == 0.0
    assert second.token != first.token
    assert second.known_record(ahead.key) == record(ahead)  # same ownership chain: the ledger is kept
    assert harness.markers()[-1].state == "open"
    await harness.close(second)


async def test_an_open_marker_means_the_owner_died_so_the_new_owner_waits_and_treats_every_uncommitted_outcome_as_applied(
    harness: Harness,
) -> None:
    harness.outcomes(6)
    first = await harness.take_over()
    finish(first, added(job(first, 0, "A", 1)))
    assert await harness.commit(first) == 1
    # first dies here (kill -9): no closed marker; a new owner takes over.
    first.ledger.close()  # what the kill does to its database lock
    before = time.time()
    second = await harness.take_over("host-b:1")
    assert second.possibly_applied_below == 6  # the partition's end at the takeover
    assert second.calls_allowed_at >= before + delivery_commit.takeover_wait_s(harness.settings)
    assert delivery_commit.takeover_wait_s(harness.settings) == 2 * 2.0 + 1.0
    assert harness.markers()[-1].instance == "host-b:1"
    await harness.close(second)


async def test_a_partition_consumed_before_owner_markers_existed_is_an_unclean_takeover(harness: Harness) -> None:
    harness.outcomes(4)
    harness.broker.group_offsets[(harness.group, harness.tp)] = 2  # committed by an owner that left no marker
    lane = await harness.take_over()
    assert lane.possibly_applied_below == 4 and lane.calls_allowed_at > time.time()
    await harness.close(lane)


async def test_the_ledger_is_wiped_when_another_instance_owned_the_partition_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = Harness(fake_settings(tmp_path), monkeypatch)
    host_a = harness.settings
    harness.outcomes(2)
    a = await harness.take_over("host-a:1")
    stale = job(a, 1, "B", 1)
    a.ledger.apply([(stale.key.encode(), record(stale))], None)
    assert await harness.close(a, "host-a:1")
    # Host b (its own state dir) owns it next and leaves cleanly.
    harness.move_to_host("b")
    b = await harness.take_over("host-b:1")
    assert await harness.close(b, "host-b:1")
    # Back at host a: its ledger belongs to an ownership before b's.
    harness.settings = host_a
    again = await harness.take_over("host-a:2")
    assert again.known_record(stale.key) is None
    await harness.close(again, "host-a:2")


# ------------------------------------------------------------------ commit


async def test_commit_writes_the_finished_prefix_and_its_offset_in_one_transaction(harness: Harness) -> None:
    harness.outcomes(3)
    lane = await harness.take_over()
    jobs = [job(lane, i, f"C{i}", 1) for i in range(3)]
    for j in jobs:
        lane.add(j)
    data = [finish(lane, j) for j in jobs[:2]]
    harness.broker.calls.clear()
    assert await harness.commit(lane) == 2
    assert harness.committed_offset() == 2
    assert harness.delivered() == data
    txn = [name for _, name in harness.broker.calls]
    assert txn[0] == "begin_transaction" and txn[-2:] == ["send_offsets_to_transaction", "commit_transaction"]
    assert lane.known_record(jobs[0].key) is None  # committed: dropped from the ledger
    assert await harness.commit(lane) == 0  # nothing new: no transaction
    finish(lane, jobs[2])
    assert await harness.commit(lane) == 1 and harness.committed_offset() == 3
    assert await harness.close(lane)


async def test_a_record_finished_behind_an_unfinished_offset_is_written_ahead_with_a_done_entry(harness: Harness) -> None:
    harness.outcomes(2)
    lane = await harness.take_over()
    slow, fast = job(lane, 0, "A", 1), job(lane, 1, "B", 1)
    lane.add(slow)
    lane.add(fast)
    data = finish(lane, fast)
    assert await harness.commit(lane) == 0  # offset 0 pins the commit point
    assert harness.committed_offset() is None
    assert harness.delivered() == [data]
    assert harness.room().done == {fast.key}
    # Once the offset passes it, the d: entry is tombstoned and the record not written again.
    finish(lane, slow)
    assert await harness.commit(lane) == 2
    assert harness.committed_offset() == 2
    assert harness.delivered() == [data, record(slow)]
    assert harness.room().done == set()
    assert await harness.close(lane)


async def test_a_waiting_job_leaves_the_commit_path_as_a_room_entry_committed_with_its_offset(harness: Harness) -> None:
    harness.outcomes(3)
    lane = await harness.take_over()
    parked, behind, other = job(lane, 0, "A", 1), job(lane, 1, "A", 2), job(lane, 2, "B", 1)
    for j in (parked, behind, other):
        lane.add(j)
    lane.call_started(parked)
    lane.wait(parked, WaitReason.QUOTA, until=time.time() + 3600, now=time.time())
    lane.call_ended()
    finish(lane, other)
    assert await harness.commit(lane) == 3
    assert harness.committed_offset() == 3
    entries = harness.room().entries
    assert {k: e.reason for k, e in entries.items()} == {parked.key: WaitReason.QUOTA, behind.key: WaitReason.BEHIND}
    assert harness.delivered() == [record(other)]
    # The parked job finishes later: its record goes out with its entry's tombstone.
    finish(lane, parked)
    assert await harness.commit(lane) == 0
    assert set(harness.room().entries) == {behind.key}
    assert harness.delivered()[-1] == record(parked)
    assert await harness.close(lane)


async def test_a_broker_error_aborts_the_transaction_and_the_next_commit_writes_the_same_work(harness: Harness) -> None:
    harness.outcomes(1)
    lane = await harness.take_over()
    j = job(lane, 0, "A", 1)
    lane.add(j)
    data = finish(lane, j)
    producer = harness.producers[-1]
    producer.fail("commit_transaction", KafkaConnectionError())
    assert await harness.commit(lane) is None
    assert "abort_transaction" in [name for _, name in harness.broker.calls]
    assert not lane.fenced and harness.delivered() == [] and harness.committed_offset() is None
    assert await harness.commit(lane) == 1
    assert harness.delivered() == [data] and harness.committed_offset() == 1
    assert await harness.close(lane)


# ------------------------------------------------------------------ close and fencing


async def test_close_waits_for_calls_in_flight_then_commits_their_records_with_the_closed_marker(harness: Harness) -> None:
    harness.outcomes(1)
    lane = await harness.take_over()
    j = job(lane, 0, "A", 1)
    lane.add(j)
    lane.call_started(j)
    closing = asyncio.create_task(harness.close(lane))
    await asyncio.sleep(0.05)
    assert not closing.done() and not lane.calling  # revoked: no new call; waiting for the one in flight
    lane.finish(j, record(j))
    lane.call_ended()
    assert await closing
    assert harness.delivered() == [record(j)] and harness.committed_offset() == 1
    marker = harness.markers()[-1]
    assert marker.state == "closed" and marker.token == lane.token and marker.attempted_below == 1
    assert harness.producers[-1].stopped


async def test_a_fenced_lane_stops_calling_and_commits_nothing_more(harness: Harness) -> None:
    harness.outcomes(2)
    old = await harness.take_over("host-a:1")
    j = job(old, 0, "A", 1)
    old.add(j)
    finish(old, j)
    # Another instance takes the partition (its producer start fences ours).
    harness.move_to_host("b")
    new = await harness.take_over("host-b:1")
    assert old.calling
    assert await harness.commit(old) is None
    assert old.fenced and not old.calling
    assert harness.delivered() == []
    assert await harness.commit(old) is None  # stays fenced: no further transaction is tried
    assert not await harness.close(old, "host-a:1")  # no closed marker from a fenced owner
    assert [m.instance for m in harness.markers()] == ["host-a:1", "host-b:1"]
    assert await harness.close(new, "host-b:1")


# ------------------------------------------------------------------ the committer at shutdown


async def test_shutdown_lets_a_commit_in_progress_finish_so_the_closed_marker_commits(
    harness: Harness,
) -> None:
    harness.outcomes(2)
    deliverer = Deliverer(harness.settings)
    deliverer.calls = SimpleNamespace(resume=lambda job: None)  # type: ignore[assignment]  # the committer only resumes released jobs
    lane = await harness.take_over()
    deliverer.lanes[lane.tp] = lane
    j = job(lane, 0, "A", 1)
    lane.add(j)
    finish(lane, j)
    # A slow broker: the commit is in its transaction when the shutdown comes.
    producer = harness.producers[-1]
    real_commit = producer.commit_transaction
    in_commit = asyncio.Event()

    async def slow_commit() -> None:
        in_commit.set()
        await asyncio.sleep(0.2)
        await real_commit()

    producer.commit_transaction = slow_commit  # type: ignore[method-assign]  # a slower fake, this test only
    # (close's own commit is slow too; only the committer's may not be cut short.)
    stop = asyncio.Event()
    committer = asyncio.create_task(deliverer.committer(stop))
    await asyncio.wait_for(in_commit.wait(), 5)
    await asyncio.wait_for(deliverer.close_lanes(stop, committer), 5)
    assert committer.done() and not committer.cancelled()
    assert producer.txn is None and producer.stopped  # no transaction left open
    assert harness.committed_offset() == 1 and harness.delivered() == [record(j)]
    assert harness.markers()[-1].state == "closed"
    assert deliverer.lanes == {}


async def test_shutdown_waits_for_a_lane_a_revocation_is_closing_before_it_returns(harness: Harness) -> None:
    harness.outcomes(1)
    deliverer = Deliverer(harness.settings)
    deliverer.calls = SimpleNamespace(resume=lambda job: None)  # type: ignore[assignment]  # the committer only resumes released jobs
    lane = await harness.take_over()
    deliverer.lanes[lane.tp] = lane
    j = added(job(lane, 0, "A", 1))
    lane.call_started(j)
    # A rebalance revokes the partition while its call is in flight; then SIGTERM.
    revoking = asyncio.create_task(deliverer.on_partitions_revoked([lane.tp]))
    await asyncio.sleep(0.01)
    assert deliverer.lanes == {}
    stop = asyncio.Event()
    shutting_down = asyncio.create_task(deliverer.close_lanes(stop, asyncio.create_task(deliverer.committer(stop))))
    await asyncio.sleep(0.1)
    # Returning now would let the workers be stopped under the call in flight.
    assert not shutting_down.done()
    lane.finish(j, record(j))
    lane.call_ended()
    await asyncio.wait_for(shutting_down, 5)
    await revoking
    assert harness.delivered() == [record(j)] and harness.markers()[-1].state == "closed"


async def test_a_rebalance_that_completes_during_shutdown_takes_no_partition(harness: Harness) -> None:
    deliverer = Deliverer(harness.settings)
    deliverer.calls = SimpleNamespace(resume=lambda job: None)  # type: ignore[assignment]  # the committer only resumes released jobs
    stop = asyncio.Event()
    await deliverer.close_lanes(stop, asyncio.create_task(deliverer.committer(stop)))
    await deliverer.on_partitions_assigned([harness.tp])
    assert deliverer.lanes == {} and harness.producers == [] and harness.markers() == []
