"""Raw Kafka v2 record batches that aiokafka's own client would refuse to write.

Built with aiokafka's pure-Python builder, then patched byte by byte (a header
name that is not UTF-8), recompressed with aiokafka's codec functions, and
given a correct CRC-32C, so the broker accepts them as any producer's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from aiokafka import codec
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.record.util import calc_crc32c

_CRC_AT, _ATTRIBUTES_AT, _RECORDS_AT = 17, 21, 61
BAD_KEY_MARKER = "~~bad-key~~"
#: Same length as the marker, and no UTF-8 decoder accepts 0xff or 0xfe.
BAD_KEY_BYTES = b"\xff\xfe" + BAD_KEY_MARKER.encode()[2:-2] + b"\xff\xfe"
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_ENCODE: dict[int, Callable[[bytes], bytes]] = {
    1: codec.gzip_encode,
    2: codec.snappy_encode,
    3: codec.lz4_encode,
    4: codec.zstd_encode,
}

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]


def fix_crc(batch: bytearray) -> bytearray:
    """Recompute a v2 batch's CRC-32C (it covers attributes to the end)."""
    struct.pack_into(">I", batch, _CRC_AT, calc_crc32c(bytes(batch[_ATTRIBUTES_AT:])))
    return batch


def build_batch(
    records: Sequence[Record], *, base_offset: int = 0, compression: str = "none", timestamp: int = 1_700_000_000_000
) -> bytearray:
    """A v2 batch of ``records``; header names equal to ``BAD_KEY_MARKER``
    become bytes that are not UTF-8, then the records are compressed."""
    builder = _DefaultRecordBatchBuilderPy(2, 0, 0, -1, -1, -1, 1 << 30)
    for delta, (key, value, headers) in enumerate(records):
        builder.append(delta, timestamp + delta, key, value, headers)
    batch = bytearray(builder.build())
    batch[_RECORDS_AT:] = batch[_RECORDS_AT:].replace(BAD_KEY_MARKER.encode(), BAD_KEY_BYTES)
    struct.pack_into(">q", batch, 0, base_offset)
    codec_id = CODECS[compression]
    if codec_id:
        body = _ENCODE[codec_id](bytes(batch[_RECORDS_AT:]))
        (attributes,) = struct.unpack_from(">h", batch, _ATTRIBUTES_AT)
        batch = batch[:_RECORDS_AT] + bytearray(body)
        struct.pack_into(">h", batch, _ATTRIBUTES_AT, attributes | codec_id)
    struct.pack_into(">i", batch, 8, len(batch) - 12)
    return fix_crc(batch)


def record_start(batch: bytes | bytearray, index: int) -> int:
    """Byte position of record ``index`` in an uncompressed batch."""
    pos = _RECORDS_AT
    for _ in range(index):
        length, after = _varint(batch, pos)
        pos = after + length
    return pos


def _varint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
