"""The deliverer's waiting room, ``invoice.deliveries.waiting``, read back to its end.

The room is a compacted changelog (its records, keys and types are in
``adapters.wire``'s waiting-room section). A partition of it holds, for the
partition of the outcomes it came from:

- ``w:<idempotency key>`` -> a ``WaitingEntry``: a delivery that left its
  partition's commit path (``domain.delivery.Wait``). Written in the same
  transaction as the outcome offset it releases; a tombstone is written in
  the transaction that commits its final delivery record.
- ``d:<idempotency key>`` -> ``1``: the delivery's final record was committed
  before its outcome's offset could be (an earlier offset of the partition
  was still unfinished); tombstoned when the offset is committed. A new owner
  that consumes the outcome again neither calls nor records it again.
- ``o:owner`` -> an ``OwnerMarker``: who owns the partition and whether the
  last owner left cleanly. ``open`` is written when an owner takes the
  partition, ``closed`` when it leaves after its calls ended and its work
  was committed. A new owner that reads ``open`` knows the previous owner
  died (or was fenced) and may have calls in flight.

The room is read back only by the deliverer and ``reconcile``.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from adapters import kafka, partition_reader
from adapters.settings import Settings
from adapters.wire import (
    WAITING_DONE_PREFIX,
    WAITING_ENTRY_PREFIX,
    WAITING_OWNER_KEY,
    OwnerMarker,
    WaitingEntry,
    decode_owner_marker,
    decode_waiting_entry,
)


class PartitionRoom(msgspec.Struct):
    """What a partition of the room holds at its end: live entries and the marker."""

    entries: dict[str, WaitingEntry] = msgspec.field(default_factory=dict)
    #: keys whose delivery record was committed ahead of its outcome's offset
    done: set[str] = msgspec.field(default_factory=set)
    marker: OwnerMarker | None = None


async def read_rooms(settings: Settings, partitions: Iterable[int]) -> dict[int, PartitionRoom]:
    """Each partition's room as of its end (read_committed: only committed entries)."""
    wanted = set(partitions)
    rooms = {p: PartitionRoom() for p in wanted}
    if not wanted:
        return rooms
    # read_to_end starts each partition at ``start``; one past any real offset skips it.
    skip = {p: 2**62 for p in await kafka.partitions_of(settings, settings.topic_delivery_waiting) if p not in wanted}
    async for batch in partition_reader.read_to_end(settings, settings.topic_delivery_waiting, start=skip):
        for record in batch:
            room = rooms.get(record.partition)
            if room is None or record.key is None:
                continue
            if record.key == WAITING_OWNER_KEY:
                if record.value is not None:
                    room.marker = decode_owner_marker(record.value)
            elif record.key.startswith(WAITING_ENTRY_PREFIX):
                key = record.key[len(WAITING_ENTRY_PREFIX) :].decode()
                if record.value is None:
                    room.entries.pop(key, None)
                else:
                    room.entries[key] = decode_waiting_entry(record.value)
            elif record.key.startswith(WAITING_DONE_PREFIX):
                key = record.key[len(WAITING_DONE_PREFIX) :].decode()
                if record.value is None:
                    room.done.discard(key)
                else:
                    room.done.add(key)
    return rooms
