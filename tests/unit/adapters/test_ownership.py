"""The one partition-ownership sequence (adapters/ownership.py), over the fake broker.

Its order is the guarantee: fence, then restore, then the committed offsets,
then adopt; a failing step stops the sequence before the next one.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from adapters import ownership
from domain.errors import BrokerError
from tests.support.fakes import FakeBroker, FakeConsumer

GROUP = "g"
TPS = [TopicPartition("t", 0), TopicPartition("t", 1)]


def consumer_with_offsets(broker: FakeBroker, offsets: dict[TopicPartition, int]) -> FakeConsumer:
    for tp, offset in offsets.items():
        broker.group_offsets[(GROUP, tp)] = offset
    consumer = broker.consumer(group_id=GROUP)
    consumer.assign(TPS)
    return consumer


async def test_the_steps_run_in_order_and_the_committed_offset_is_read_after_the_restore() -> None:
    broker = FakeBroker()
    consumer = consumer_with_offsets(broker, {TPS[0]: 7})
    steps: list[str] = []

    async def fence(tp: TopicPartition) -> None:
        steps.append(f"fence {tp.partition}")

    async def restore(tps: list[TopicPartition]) -> None:
        assert sorted(steps) == ["fence 0", "fence 1"], "restore only after every partition is fenced"
        steps.append(f"restore {[tp.partition for tp in tps]}")
        # The previous owner's last commit lands while we restore: step 3 must see it.
        broker.group_offsets[(GROUP, TPS[1])] = 3

    async def adopt(committed: dict[TopicPartition, ownership.Committed]) -> None:
        steps.append(f"adopt {sorted(tp.partition for tp in committed)}")

    committed = await ownership.take_ownership(consumer, TPS, fence=fence, restore=restore, adopt=adopt)

    assert steps[2:] == ["restore [0, 1]", "adopt [0, 1]"]
    assert committed == {TPS[0]: ownership.Committed(7, 7), TPS[1]: ownership.Committed(3, 3)}


async def test_a_partition_never_committed_resumes_at_its_beginning_and_says_so() -> None:
    broker = FakeBroker()
    consumer = consumer_with_offsets(broker, {})

    async def nothing(_: object) -> None:
        return None

    committed = await ownership.take_ownership(consumer, TPS[:1], fence=nothing, restore=nothing)

    assert committed == {TPS[0]: ownership.Committed(None, 0)}


async def test_a_failed_fence_stops_the_sequence_before_anything_is_restored() -> None:
    broker = FakeBroker()
    consumer = consumer_with_offsets(broker, {})
    restored: list[object] = []

    async def fence(tp: TopicPartition) -> None:
        if tp.partition == 1:
            raise BrokerError("init producer: broker unavailable")

    async def restore(tps: list[TopicPartition]) -> None:
        restored.append(tps)

    with pytest.raises(BrokerError, match="broker unavailable"):
        await ownership.take_ownership(consumer, TPS, fence=fence, restore=restore)
    assert restored == []


def test_seek_registers_each_partition_right_after_seeking_it() -> None:
    broker = FakeBroker()
    consumer = broker.consumer(group_id=GROUP)
    consumer.assign(TPS)
    registered: list[TopicPartition] = []

    def register(tp: TopicPartition) -> None:
        assert consumer.positions[tp] == {0: 5, 1: 0}[tp.partition], "registered before its seek"
        registered.append(tp)

    ownership.seek(consumer, {TPS[0]: ownership.Committed(5, 5), TPS[1]: ownership.Committed(None, 0)}, register)

    assert registered == TPS
    assert consumer.seeks == [(TPS[0], 5), (TPS[1], 0)]


async def test_the_committed_offsets_of_all_partitions_are_asked_for_together() -> None:
    broker = FakeBroker()
    consumer = consumer_with_offsets(broker, {TPS[0]: 4, TPS[1]: 9})
    asked = consumer.committed
    in_flight, most = 0, 0

    async def committed(tp: TopicPartition) -> int | None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)  # a round trip
        in_flight -= 1
        return await asked(tp)

    consumer.committed = committed  # type: ignore[method-assign]
    found = await ownership.committed_offsets(consumer, TPS)
    assert found == {TPS[0]: ownership.Committed(4, 4), TPS[1]: ownership.Committed(9, 9)}
    assert most == len(TPS)
