"""aiokafka's fetcher with adapters.kafka_records installed: records its C
parser refuses are delivered (or kept as UnreadableRecord) at their offsets,
in order, exactly once, and the position ends where aiokafka's would."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from collections.abc import Set as AbstractSet

import pytest
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord, TopicPartition

from adapters import kafka_records, wire
from adapters.kafka_records import TolerantMemoryRecords, UnreadableRecord
from domain.errors import InvalidEventError
from tests.support.record_batches import BAD_KEY_MARKER, CODECS, build_batch, fix_crc, record_start

TP = TopicPartition("invoice.events", 0)


@pytest.fixture(autouse=True)
def _restore_install_state() -> Iterator[None]:
    """adapters.kafka installs the patch at import: whatever a test here
    does, the tests after it (broker tests in the same session) must see the
    state it found."""
    was = kafka_records.installed()
    yield
    if was:
        kafka_records.install()
    else:
        kafka_records.uninstall()


@pytest.fixture
def tolerant() -> None:
    kafka_records.install()


@pytest.fixture
def restored() -> Iterator[None]:
    """Leave the fetcher as the test found it: adapters.kafka installs the patch
    at import, and later tests in the session rely on it."""
    was = kafka_records.installed()
    yield
    (kafka_records.install if was else kafka_records.uninstall)()


def records(
    n: int, bad: AbstractSet[int] = frozenset(), start: int = 0
) -> list[tuple[bytes, bytes, list[tuple[str, bytes | None]]]]:
    return [
        (
            f"k{start + i}".encode(),
            f"v{start + i}".encode(),
            [(BAD_KEY_MARKER if i in bad else "content-type", b"application/json")],
        )
        for i in range(n)
    ]


def drain(buffer: bytes, fetch_offset: int = 0) -> tuple[list[ConsumerRecord], int]:
    partition_records = fetcher.PartitionRecords(TP, fetcher.MemoryRecords(buffer), [], fetch_offset, None, None, True, 0)
    out = list(partition_records)
    return out, partition_records.next_fetch_offset


def test_install_is_idempotent_and_uninstall_restores_aiokafka(restored: None) -> None:
    kafka_records.install()
    kafka_records.install()
    assert fetcher.MemoryRecords is TolerantMemoryRecords
    kafka_records.uninstall()
    assert fetcher.MemoryRecords is MemoryRecords
    assert not kafka_records.installed()


def test_without_install_a_non_utf8_header_key_breaks_aiokafka(restored: None) -> None:
    kafka_records.uninstall()
    with pytest.raises(UnicodeDecodeError):
        drain(bytes(build_batch(records(5, bad={2}))))


@pytest.mark.parametrize("compression", list(CODECS))
def test_non_utf8_header_key_is_delivered_with_surrogateescape(tolerant: None, compression: str) -> None:
    batch = build_batch(records(5, bad={2}), base_offset=10, compression=compression)
    out, position = drain(bytes(batch), fetch_offset=10)
    assert [r.offset for r in out] == [10, 11, 12, 13, 14]
    assert [r.value for r in out] == [b"v0", b"v1", b"v2", b"v3", b"v4"]
    assert not any(isinstance(r, UnreadableRecord) for r in out)
    name = out[2].headers[0][0]
    assert name.encode("utf-8", "surrogateescape").startswith(b"\xff\xfe")
    assert out[1].headers == (("content-type", b"application/json"),)
    assert position == 15
    with pytest.raises(InvalidEventError) as refused:
        wire.decode_record(out[2])
    assert refused.value.reason == "bad_header"


def test_records_of_the_batches_around_a_failing_one_are_delivered_once(tolerant: None) -> None:
    buffer = (
        bytes(build_batch(records(3), base_offset=0))
        + bytes(build_batch(records(4, bad={0, 3}, start=3), base_offset=3, compression="gzip"))
        + bytes(build_batch(records(2, start=7), base_offset=7))
    )
    out, position = drain(buffer)
    assert [r.offset for r in out] == list(range(9))
    assert [r.key for r in out] == [f"k{i}".encode() for i in range(9)]
    assert position == 9


def test_records_below_the_fetch_offset_are_not_delivered_again(tolerant: None) -> None:
    out, position = drain(bytes(build_batch(records(6, bad={1, 4}), base_offset=100)), fetch_offset=103)
    assert [r.offset for r in out] == [103, 104, 105]
    assert position == 106


def test_a_record_that_cannot_be_parsed_is_kept_at_its_offset_with_its_key_and_value(tolerant: None) -> None:
    batch = build_batch(records(4))
    at = record_start(batch, 2)
    # Record 2's header count sits after its length, attributes, deltas,
    # key and value; make it negative (-1 as a zigzag varint is 0x01).
    length, body = batch[at] >> 1, at + 1
    header_count_at = body + 1 + 1 + 1 + 1 + 2 + 1 + 2
    assert batch[header_count_at] == 2  # one header, zigzag-encoded
    batch[header_count_at] = 0x01
    assert length > 0
    out, position = drain(bytes(fix_crc(batch)))
    assert [r.offset for r in out] == [0, 1, 2, 3]
    broken = out[2]
    assert isinstance(broken, UnreadableRecord) and isinstance(broken, ConsumerRecord)
    assert (broken.key, broken.value) == (b"k2", b"v2")
    assert "header count" in broken.problem
    assert [type(r) for r in (out[0], out[1], out[3])] == [ConsumerRecord] * 3
    assert position == 4
    with pytest.raises(InvalidEventError) as refused:
        wire.decode_record(broken)
    assert refused.value.reason == "unreadable_record"


def test_a_batch_that_cannot_be_decompressed_is_unreadable_at_every_offset(tolerant: None) -> None:
    batch = build_batch(records(3), base_offset=50, compression="zstd")
    batch[65:75] = b"\x00" * 10
    following = build_batch(records(1, start=53), base_offset=53)
    out, position = drain(bytes(fix_crc(batch)) + bytes(following), fetch_offset=50)
    assert [r.offset for r in out] == [50, 51, 52, 53]
    assert all(isinstance(r, UnreadableRecord) and "decompressed" in r.problem for r in out[:3])
    assert out[3].key == b"k53" and not isinstance(out[3], UnreadableRecord)
    assert position == 54


def test_lost_framing_makes_the_rest_of_the_batch_unreadable_not_skipped(tolerant: None) -> None:
    batch = build_batch(records(5))
    at = record_start(batch, 3)
    batch[at] = 0x7E  # record 3 claims 63 bytes: runs into and past record 4
    out, position = drain(bytes(fix_crc(batch)))
    assert [r.offset for r in out] == [0, 1, 2, 3, 4]
    assert [isinstance(r, UnreadableRecord) for r in out] == [False, False, False, True, True]
    assert position == 5


def test_a_crc_mismatch_is_still_left_to_aiokafka(tolerant: None) -> None:
    batch = build_batch(records(3, bad={1}))
    struct.pack_into(">I", batch, 17, 0)
    with pytest.raises(CorruptRecordException):
        drain(bytes(batch))


def test_parse_batch_yields_every_offset_of_a_valid_batch_once() -> None:
    batch = build_batch(records(300), base_offset=7, compression="lz4")
    parsed = list(kafka_records.parse_batch(bytes(batch)))
    assert [r.offset for r in parsed] == list(range(7, 307))
    assert all(r.problem is None for r in parsed)
    assert parsed[5].headers == [("content-type", b"application/json")]
