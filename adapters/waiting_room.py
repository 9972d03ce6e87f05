"""The deliverer's waiting room: ``invoice.deliveries.waiting``, a compacted changelog.

Two kinds of record share a partition of it (the partition of the outcome
they came from):

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

Entries are JSON (msgspec); the room is read back only by the deliverer and
``reconcile``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from adapters import kafka
from adapters.settings import Settings
from domain.delivery import WaitReason
from domain.status import ReimburseStatus

ENTRY_PREFIX = b"w:"
DONE_PREFIX = b"d:"
OWNER_KEY = b"o:owner"


class WaitingEntry(msgspec.Struct, frozen=True):
    """One waiting delivery: enough to call WeChat again and record the result."""

    idempotency_key: str
    outcome_id: str
    card_id: str
    code: str
    appid: str
    reimburse_status: ReimburseStatus
    version: int
    repair: bool
    reason: WaitReason
    #: epoch seconds: when it first waited (bounds no_credentials) and when to try again
    waiting_since: float
    resume_at: float
    possibly_applied: bool
    attempts: int
    first_attempt: float | None = None


class OwnerMarker(msgspec.Struct, frozen=True):
    state: Literal["open", "closed"]
    #: one per ownership; the local ledger stores the token of the ownership it belongs to
    token: str
    instance: str
    at: float
    #: on ``closed``: offsets below this may have been called but not committed
    attempted_below: int = 0


_encoder = msgspec.json.Encoder()
_entry_decoder = msgspec.json.Decoder(WaitingEntry)
_marker_decoder = msgspec.json.Decoder(OwnerMarker)


def entry_key(idempotency_key: str) -> bytes:
    return ENTRY_PREFIX + idempotency_key.encode()


def done_key(idempotency_key: str) -> bytes:
    return DONE_PREFIX + idempotency_key.encode()


def encode(value: WaitingEntry | OwnerMarker) -> bytes:
    return _encoder.encode(value)


def decode_entry(value: bytes) -> WaitingEntry:
    return _entry_decoder.decode(value)


def decode_marker(value: bytes) -> OwnerMarker:
    return _marker_decoder.decode(value)


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
    async for batch in kafka.read_to_end(settings, settings.topic_delivery_waiting, start=skip):
        for record in batch:
            room = rooms.get(record.partition)
            if room is None or record.key is None:
                continue
            if record.key == OWNER_KEY:
                if record.value is not None:
                    room.marker = decode_marker(record.value)
            elif record.key.startswith(ENTRY_PREFIX):
                key = record.key[len(ENTRY_PREFIX) :].decode()
                if record.value is None:
                    room.entries.pop(key, None)
                else:
                    room.entries[key] = decode_entry(record.value)
            elif record.key.startswith(DONE_PREFIX):
                key = record.key[len(DONE_PREFIX) :].decode()
                if record.value is None:
                    room.done.discard(key)
                else:
                    room.done.add(key)
    return rooms


def json_schema() -> dict[str, object]:
    """The JSON Schema of the room's values: an entry or an owner marker, told apart by key."""
    components: dict[str, object]
    refs, components = msgspec.json.schema_components([WaitingEntry, OwnerMarker])
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://invoice-sm.example/schemas/waiting.v1.schema.json",
        "title": "WaitingRoomValue",
        "description": "A waiting delivery (key w:<idempotency key>) or the partition's owner marker (key o:owner).",
        "anyOf": list(refs),
        "$defs": components,
    }
