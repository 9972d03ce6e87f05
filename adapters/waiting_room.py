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

from adapters import partition_reader
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

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Fold one record of the room's partition in (``None`` value: a tombstone)."""
        if key is None:
            return
        if key == WAITING_OWNER_KEY:
            if value is not None:
                self.marker = decode_owner_marker(value)
        elif key.startswith(WAITING_ENTRY_PREFIX):
            name = key[len(WAITING_ENTRY_PREFIX) :].decode()
            if value is None:
                self.entries.pop(name, None)
            else:
                self.entries[name] = decode_waiting_entry(value)
        elif key.startswith(WAITING_DONE_PREFIX):
            name = key[len(WAITING_DONE_PREFIX) :].decode()
            if value is None:
                self.done.discard(name)
            else:
                self.done.add(name)


async def read_rooms(settings: Settings, partitions: Iterable[int]) -> dict[int, PartitionRoom]:
    """Each partition's room as of its end (read_committed: only committed entries)."""
    wanted = set(partitions)
    rooms = {p: PartitionRoom() for p in wanted}
    if not wanted:
        return rooms
    async for batch in partition_reader.read_to_end(settings, settings.topic_delivery_waiting, only=wanted):
        for record in batch:
            room = rooms.get(record.partition)
            if room is not None:
                room.apply(record.key, record.value)
    return rooms
