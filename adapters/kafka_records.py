"""Keep aiokafka's consumer alive through records its own parser cannot read.

aiokafka's C record parser decodes header keys as strict UTF-8 and raises
from inside ``consumer.getmany()`` on anything it cannot parse. The fetcher
(``aiokafka.consumer.fetcher``) then loses the records it had already drained
in that call while the position moves past them, or the exception kills the
caller. Nothing an upstream publisher sends may do that to us.

``install()`` patches two things in ``aiokafka.consumer.fetcher``:

- ``MemoryRecords`` (the fetch response's record set) becomes
  ``TolerantMemoryRecords``, which slices batches as aiokafka does and still
  hands the fetcher aiokafka's own C ``DefaultRecordBatch`` for each one, but
  remembers the bytes of the batch it handed out last;
- ``PartitionRecords.__next__`` (already a Python frame per record) also
  catches what the C iterator raises. Only then is that batch parsed again
  by the pure-Python ``parse_batch`` below, from the first record not yet
  delivered, and aiokafka's own iteration resumes with the next batch.

Normal records therefore take exactly aiokafka's C path; the only cost is
slicing batches in Python (a few hundred per fetch at most). What the
re-parse does:

- a header key that is not UTF-8 is decoded with ``surrogateescape``, and the
  record is delivered normally (the decoder sends it to the DLQ as
  ``bad_header``);
- a record that cannot be parsed at all becomes an ``UnreadableRecord`` at its
  offset, with the raw key and value when they could be read; the rest of the
  batch continues. When even the framing is lost (or the batch cannot be
  decompressed), every remaining offset of the batch becomes one.

No offset is skipped or delivered twice, and the position ends at the
batch's ``next_offset`` as aiokafka's own bookkeeping does. Batches whose CRC
does not match (a damaged transfer: aiokafka raises and fetches again),
control batches and legacy (v0/v1) batches are left to aiokafka. Key and
value deserializers are not applied to an ``UnreadableRecord`` (ours
configure none).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from typing import Any

from aiokafka import codec
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.legacy_records import LegacyRecordBatch
from aiokafka.structs import ConsumerRecord

try:
    from aiokafka.record._crecords.default_records import DefaultRecordBatch as _FastBatch
except ImportError:  # pragma: no cover - aiokafka built without its C extension
    from aiokafka.record.default_records import DefaultRecordBatch as _FastBatch

__all__ = ["TolerantMemoryRecords", "UnreadableRecord", "install", "installed", "parse_batch"]


@dataclasses.dataclass
class UnreadableRecord(ConsumerRecord):  # type: ignore[misc]  # aiokafka ships no types: ConsumerRecord is Any
    """A record at ``offset`` the Kafka client could not parse; ``problem`` says why.

    ``key`` and ``value`` hold the raw bytes where they could be read, else None.
    """

    problem: str = "unreadable"


# v2 batch header (KIP-98): offsets of the fields this module reads.
_LOG_OVERHEAD = 12  # baseOffset int64 + batchLength int32
_MAGIC_AT = 16
_ATTRIBUTES_LOW_BYTE = 22  # attributes is a big-endian int16 at 21
_HEADER = struct.Struct(">qiibIhiqqqhii")  # up to and including the record count
_HEADER_SIZE = _HEADER.size  # 61
_MIN_V0_SLICE = _LOG_OVERHEAD + 14  # what aiokafka's MemoryRecords demands of any slice

_CODEC_MASK = 0x07
_TIMESTAMP_TYPE_BIT = 0x08
_CONTROL_BIT = 0x20
_LOG_APPEND_TIME = 1
_DECOMPRESS = {
    1: codec.gzip_decode,
    2: lambda data: codec.snappy_decode(bytes(data)),
    3: lambda data: codec.lz4_decode(bytes(data)),
    4: lambda data: codec.zstd_decode(bytes(data)),
}


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedRecord:
    """A record read by ``parse_batch``, shaped like aiokafka's ``DefaultRecord``."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    problem: str | None = None
    checksum: None = None


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """One zigzag varint (at most 10 bytes, as Kafka writes them) and the position after it."""
    result = shift = 0
    end = min(pos + 10, len(buf))
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
    raise ValueError("varint runs past the record")


def _bytes_field(buf: bytes | memoryview, pos: int, end: int) -> tuple[bytes | None, int]:
    length, pos = _varint(buf, pos)
    if length < 0:
        return None, pos
    if pos + length > end:
        raise ValueError(f"field of {length} bytes runs past the record")
    return bytes(buf[pos : pos + length]), pos + length


def _read_record(
    buf: bytes | memoryview, pos: int, end: int, base_offset: int, first_ts: int, max_ts: int, ts_type: int
) -> ParsedRecord:
    """One record's body (``pos`` after its length varint, ``end`` after its last byte)."""
    _attributes, pos = _varint(buf, pos)
    ts_delta, pos = _varint(buf, pos)
    offset_delta, pos = _varint(buf, pos)
    key, pos = _bytes_field(buf, pos, end)
    value, pos = _bytes_field(buf, pos, end)
    count, pos = _varint(buf, pos)
    if count < 0:
        raise ValueError(f"negative header count {count}")
    headers: list[tuple[str, bytes | None]] = []
    for _ in range(count):
        name, pos = _bytes_field(buf, pos, end)
        if name is None:
            raise ValueError("header key is null")
        header_value, pos = _bytes_field(buf, pos, end)
        # Undecodable names stay deliverable: the decoder refuses them by
        # name (bad_header) and the DLQ copy writes them back escaped.
        headers.append((name.decode("utf-8", "surrogateescape"), header_value))
    if pos != end:
        raise ValueError(f"record length says {end - pos} more bytes than its fields")
    timestamp = max_ts if ts_type == _LOG_APPEND_TIME else first_ts + ts_delta
    return ParsedRecord(base_offset + offset_delta, timestamp, ts_type, key, value, headers)


def _unreadable(
    offset: int, timestamp: int, ts_type: int, problem: str, key: bytes | None = None, value: bytes | None = None
) -> ParsedRecord:
    return ParsedRecord(offset, timestamp, ts_type, key, value, [], problem)


def _salvage(buf: bytes | memoryview, pos: int, end: int) -> tuple[bytes | None, bytes | None]:
    """Key and value of a record whose later fields are broken, where they can be had."""
    try:
        for _ in range(3):  # attributes, timestamp delta, offset delta
            _, pos = _varint(buf, pos)
        key, pos = _bytes_field(buf, pos, end)
    except (ValueError, IndexError):
        return None, None
    try:
        value, _ = _bytes_field(buf, pos, end)
    except (ValueError, IndexError):
        value = None
    return key, value


def parse_batch(batch: bytes | memoryview, after: int = -1) -> Iterator[ParsedRecord]:
    """The records of one v2 batch with offsets above ``after``, never raising.

    What cannot be parsed comes out as a ``ParsedRecord`` with ``problem`` set
    at the offset it occupies, so the offsets yielded are strictly increasing
    and end at the batch's last offset at most.
    """
    (base_offset, _length, _epoch, _magic, _crc, attributes, last_delta, first_ts, max_ts, _pid, _pepoch, _seq, count) = (
        _HEADER.unpack_from(batch, 0)
    )
    ts_type = _LOG_APPEND_TIME if attributes & _TIMESTAMP_TYPE_BIT else 0
    last_offset = base_offset + last_delta
    body: bytes | memoryview = memoryview(batch)[_HEADER_SIZE:]
    compression = attributes & _CODEC_MASK
    problem_prefix = ""
    if compression:
        try:
            body = _DECOMPRESS[compression](body)
        except Exception as exc:  # noqa: BLE001 - each codec library raises its own types
            problem_prefix = f"batch at {base_offset} cannot be decompressed (codec {compression}): {type(exc).__name__}: {exc}"
    expected = max(after + 1, base_offset)
    pos = 0
    if not problem_prefix:
        for _ in range(max(count, 0)):
            if expected > last_offset:
                break
            try:
                length, start = _varint(body, pos)
            except (ValueError, IndexError):
                problem_prefix = f"record framing lost at byte {pos} of the batch at {base_offset}"
                break
            end = start + length
            if length < 0 or end > len(body):
                problem_prefix = f"record length {length} at byte {pos} runs past the batch at {base_offset}"
                break
            pos = end
            try:
                record = _read_record(body, start, end, base_offset, first_ts, max_ts, ts_type)
            except (ValueError, IndexError) as exc:
                key, value = _salvage(body, start, end)
                offset = _offset_of(body, start, end, base_offset, expected, last_offset)
                if offset < expected:
                    continue
                yield _unreadable(offset, first_ts, ts_type, f"record at offset {offset} cannot be parsed: {exc}", key, value)
                expected = offset + 1
                continue
            if record.offset < expected:
                # Already delivered by the fast path (or out of order: a
                # position can be delivered once only).
                if record.offset <= after:
                    continue
                yield _unreadable(
                    expected,
                    record.timestamp,
                    ts_type,
                    f"record offset {record.offset} is not above {expected - 1}",
                    record.key,
                    record.value,
                )
                expected += 1
                continue
            if record.offset > last_offset:
                yield _unreadable(
                    expected,
                    record.timestamp,
                    ts_type,
                    f"record offset {record.offset} is past the batch's last offset {last_offset}",
                    record.key,
                    record.value,
                )
                expected += 1
                continue
            yield record
            expected = record.offset + 1
    if problem_prefix:
        for offset in range(expected, last_offset + 1):
            yield _unreadable(offset, first_ts, ts_type, problem_prefix)


def _offset_of(body: bytes | memoryview, start: int, end: int, base_offset: int, expected: int, last_offset: int) -> int:
    """The offset a broken record claims, when it is plausible; else the next expected one."""
    try:
        pos = start
        for _ in range(2):
            _, pos = _varint(body, pos)
        delta, _ = _varint(body, pos)
    except (ValueError, IndexError):
        return expected
    offset = base_offset + delta
    return offset if expected <= offset <= last_offset else expected


class TolerantMemoryRecords:
    """Drop-in for aiokafka's ``MemoryRecords`` (the fetch response's record set).

    It slices batches as aiokafka's ``_MemoryRecordsPy`` does (the same
    incomplete-tail rule: a batch cut off by the fetch size is left for the
    next fetch) and keeps the last batch's bytes in ``current``.
    """

    __slots__ = ("_buffer", "_next_slice", "_pos", "current")

    def __init__(self, bytes_data: bytes) -> None:
        self._buffer = memoryview(bytes_data)
        self._pos = 0
        self._next_slice: memoryview | None = None
        #: The bytes of the batch last handed out: what is parsed again when
        #: iterating it fails.
        self.current: memoryview | None = None
        self._cache_next()

    def _cache_next(self) -> None:
        buffer, pos = self._buffer, self._pos
        if len(buffer) - pos < _LOG_OVERHEAD:
            self._next_slice = None
            return
        (length,) = struct.unpack_from(">i", buffer, pos + 8)
        end = pos + _LOG_OVERHEAD + length
        if length < 0 or end > len(buffer):
            self._next_slice = None
            return
        self._next_slice = buffer[pos:end]
        self._pos = end

    def size_in_bytes(self) -> int:
        return len(self._buffer)

    def has_next(self) -> bool:
        return self._next_slice is not None

    def next_batch(self) -> Any:
        piece = self._next_slice
        if piece is None:
            return None
        if len(piece) < _MIN_V0_SLICE:
            raise CorruptRecordException(
                f"Record size is less than the minimum record overhead ({_MIN_V0_SLICE - _LOG_OVERHEAD})"
            )
        self._cache_next()
        self.current = piece
        magic = piece[_MAGIC_AT]
        if magic < 2:
            return LegacyRecordBatch(piece, magic)
        return _FastBatch(piece)


def _recoverable(partition_records: Any, batch: memoryview | None) -> bool:
    """Whether a failure while reading ``batch`` is one of its records' (not aiokafka's own checks)."""
    if batch is None or len(batch) < _HEADER_SIZE or batch[_MAGIC_AT] < 2:
        return False  # legacy formats: nothing upstream writes them any more
    if batch[_ATTRIBUTES_LOW_BYTE] & _CONTROL_BIT:
        return False  # transaction markers are the broker's, not a publisher's
    if getattr(partition_records, "_tolerant_batch", None) is batch:
        return False  # it failed again after being parsed again: not a parse error
    # A CRC mismatch is a damaged transfer: aiokafka raises and fetches again.
    return bool(_FastBatch(batch).validate_crc())


def _resume(partition_records: Any, batch: memoryview) -> Iterator[ConsumerRecord]:
    """The rest of ``batch`` parsed in Python, then aiokafka's own iteration of the batches after it."""
    tp = partition_records._tp
    for parsed in parse_batch(batch, after=partition_records.next_fetch_offset - 1):
        if parsed.problem is None:
            record = partition_records._consumer_record(tp, parsed)
        else:
            record = UnreadableRecord(
                tp.topic,
                tp.partition,
                parsed.offset,
                parsed.timestamp,
                parsed.timestamp_type,
                parsed.key,
                parsed.value,
                None,
                len(parsed.key) if parsed.key is not None else -1,
                len(parsed.value) if parsed.value is not None else -1,
                (),
                problem=parsed.problem,
            )
        partition_records.next_fetch_offset = parsed.offset + 1
        yield record
    # As aiokafka does after each batch: its last offset survives compaction.
    partition_records.next_fetch_offset = _FastBatch(batch).next_offset
    # The record set is a cursor, already past ``batch``: a fresh generator
    # continues with the next batch (the aborted-transaction state lives on
    # the instance, not in the generator).
    yield from partition_records._unpack_records()


def _tolerant_next(self: Any) -> ConsumerRecord:
    """``PartitionRecords.__next__``, plus: a batch whose records the C parser
    refuses is parsed again from the first record not yet delivered."""
    while True:
        try:
            return next(self._records_iterator)
        except StopIteration:
            self._records_iterator = None
            raise
        except Exception:
            batch = getattr(self._records, "current", None)
            if not _recoverable(self, batch):
                raise
            assert batch is not None
            self._tolerant_batch = batch
            self._records_iterator = _resume(self, batch)


_original_next = fetcher.PartitionRecords.__next__


def installed() -> bool:
    return fetcher.MemoryRecords is TolerantMemoryRecords


def install() -> None:
    """Make aiokafka's fetcher tolerant (idempotent; adapters.kafka calls it once at import)."""
    if installed():
        return
    fetcher.MemoryRecords = TolerantMemoryRecords
    fetcher.PartitionRecords.__next__ = _tolerant_next


def uninstall() -> None:
    """Undo ``install()`` (tests and the overhead measurement compare both)."""
    from aiokafka.record.memory_records import MemoryRecords

    fetcher.MemoryRecords = MemoryRecords
    fetcher.PartitionRecords.__next__ = _original_next
