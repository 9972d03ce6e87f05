"""The one partition reader over a fake broker: where a read ends and how it gets there."""

from __future__ import annotations

from typing import Any

from adapters.partition_reader import PartitionRange, PartitionReader
from tests.support.fakes import FakeBroker, FakeConsumer

TOPIC = "t"


async def read_all(reader: PartitionReader, ranges: dict[int, PartitionRange]) -> list[tuple[int, list[int], int]]:
    return [(p, [r.offset for r in records], next_offset) async for p, records, next_offset in reader.read(ranges)]


async def test_a_read_ends_at_the_end_even_when_only_markers_and_aborted_records_are_left() -> None:
    broker = FakeBroker()
    broker.append_transaction(TOPIC, 0, [(b"k", b"v")] * 3)  # offsets 0-2, marker 3
    broker.append_transaction(TOPIC, 0, [(b"k", b"v")] * 2, commit=False)  # aborted 4-5, marker 6
    reader = PartitionReader(FakeConsumer(broker), TOPIC, stall_timeout_s=5)
    ranges = await reader.plan([0])
    assert ranges == {0: PartitionRange(0, 0, 7, 0)}
    assert await read_all(reader, ranges) == [(0, [0, 1, 2], 7)]


async def test_records_appended_after_the_plan_are_left_out() -> None:
    broker = FakeBroker()
    for _ in range(5):
        broker.append(TOPIC, 0, b"k", b"v")
    consumer = FakeConsumer(broker)
    reader = PartitionReader(consumer, TOPIC, chunk=2)
    ranges = await reader.plan([0, 1])
    for _ in range(3):
        broker.append(TOPIC, 0, b"k", b"late")
    read = await read_all(reader, ranges)
    assert [o for _, offsets, _ in read for o in offsets] == [0, 1, 2, 3, 4]
    assert [n for *_, n in read] == [2, 4, 5]  # the position after each chunk, the end last
    assert consumer.paused >= set(consumer.assigned)  # done, and the empty partition never fetched


async def test_starts_are_kept_within_the_log() -> None:
    broker = FakeBroker()
    for p in (0, 1, 2):
        for _ in range(4):
            broker.append(TOPIC, p, b"k", b"v")
    reader = PartitionReader(FakeConsumer(broker), TOPIC)
    ranges = await reader.plan([0, 1, 2], start={0: 2, 1: 99, 2: -5})
    assert {p: (r.start, r.end, r.count) for p, r in ranges.items()} == {0: (2, 4, 2), 1: (4, 4, 0), 2: (0, 4, 4)}
    read: dict[int, Any] = {}
    for p, offsets, _ in await read_all(reader, ranges):
        read.setdefault(p, []).extend(offsets)
    assert read == {0: [2, 3], 2: [0, 1, 2, 3]}
