"""Taking a deliverer partition over, and committing its finished work.

Ownership sequence (``take_over``, the one sequence of ``adapters.ownership``),
per outcome partition:

1. start its transactional producer (transactional id = group-topic-partition):
   this fences the previous owner, whose next commit then fails;
2. read the partition's waiting room to its end (``adapters.waiting_room``):
   the waiting deliveries, and the marker the previous owner left. Only
   after step 1: a room read before the fence would miss the entries and
   the ``closed`` marker of a commit the previous owner makes in between,
   while that commit moves the offset past their outcomes (they would be lost);
3. decide the takeover: ``closed`` marker (or no marker and no committed
   offset: a partition nobody consumed yet) = clean (the previous owner's
   calls had ended; offsets it called but did not commit are below its
   ``attempted_below``); anything else = unclean (it died or was fenced: any
   uncommitted outcome may have been called, and a call of it may still be
   in flight, so this lane makes no call for ``takeover_wait_s``: the rule
   that keeps one call per invoice in flight across owners, whatever the
   session timeout);
4. keep the local ledger only if it belongs to the previous ownership (its
   token equals the marker's), else wipe it: another instance owned the
   partition meanwhile;
5. commit an ``open`` marker with a new token, then the caller seeks the
   committed offset (no await between the lookup and the registration).

Commit order, per partition (``commit``):

1. take the longest prefix of consumed offsets with nothing left to call;
2. in one transaction: the prefix's final delivery records and waiting-room
   entries; every finished record beyond the prefix too, with a ``d:`` entry
   (so it is never called or recorded again, whoever consumes its outcome
   next); the records of room jobs that finished with their entries'
   tombstones; the ``closed`` marker when leaving; the offset after the prefix;
3. after the commit, drop those records from the ledger and release the
   next version of each invoice whose record it made durable: an invoice's
   next version is called only once the previous result is committed, so no
   owner ever repeats an older version after a newer one reached WeChat.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from adapters import kafka, ownership, waiting_room, wire
from adapters.settings import Settings
from adapters.store import RocksPartitionStore
from consumers.delivery_lane import LEDGER_TOKEN_KEY, PartitionLane
from domain.errors import BrokerError, FencedError

log = structlog.get_logger("invoice_sm.deliverer")

#: Value of a ``d:<key>`` room entry (the key says everything).
DONE_VALUE = b"1"


def takeover_wait_s(settings: Settings) -> float:
    """The longest a call of a dead owner can still be in flight: one call may
    be a token refresh plus the request, each bounded by the HTTP timeout."""
    if settings.delivery_takeover_wait_s is not None:
        return settings.delivery_takeover_wait_s
    return settings.wechat_timeout_s * 2 + 1.0


@dataclass(frozen=True, slots=True)
class TakenOver:
    """Partitions taken over: their lanes, their rooms (as read after the
    fence) and where each resumes. The caller seeks and registers them."""

    lanes: dict[TopicPartition, PartitionLane]
    rooms: dict[int, waiting_room.PartitionRoom]
    committed: dict[TopicPartition, ownership.Committed]


RoomReader = Callable[[Settings, list[int]], Awaitable[dict[int, waiting_room.PartitionRoom]]]


async def take_over(
    settings: Settings,
    group_id: str,
    partitions: list[TopicPartition],
    consumer: AIOKafkaConsumer,
    instance: str,
    *,
    read_rooms: RoomReader = waiting_room.read_rooms,
) -> TakenOver:
    """Steps 1-5 above, but the seek, through ``adapters.ownership``'s one
    sequence: fence = the lanes' producers, restore = the rooms, adopt = the
    takeover's judgement and the ``open`` marker."""
    lanes = {tp: _open_lane(settings, group_id, tp) for tp in partitions}
    rooms: dict[int, waiting_room.PartitionRoom] = {}

    async def fence(tp: TopicPartition) -> None:  # step 1: fences the previous owner
        with kafka.broker_errors("init deliverer producer"):
            await lanes[tp].producer.start()

    async def restore(tps: list[TopicPartition]) -> None:  # step 2: after the fence
        rooms.update(await read_rooms(settings, [tp.partition for tp in tps]))

    async def adopt(committed: dict[TopicPartition, ownership.Committed]) -> None:  # steps 3-5
        ends = await kafka.end_offsets(consumer, list(committed))  # one request for every partition
        await asyncio.gather(
            *(
                _adopt(settings, lanes[tp], rooms[tp.partition], where.offset, ends[tp], instance)
                for tp, where in committed.items()
            )
        )

    try:
        committed = await ownership.take_ownership(consumer, partitions, fence=fence, restore=restore, adopt=adopt)
    except BaseException:
        for lane in lanes.values():
            with contextlib.suppress(Exception):
                await lane.producer.stop()
            lane.ledger.close()
        raise
    return TakenOver(lanes, rooms, committed)


def _open_lane(settings: Settings, group_id: str, tp: TopicPartition) -> PartitionLane:
    producer = kafka.new_transactional_producer(settings, kafka.transactional_id(group_id, tp.topic, tp.partition))
    ledger = RocksPartitionStore(Path(settings.state_dir) / "deliverer" / f"{tp.topic}-{tp.partition}")
    return PartitionLane(tp, producer, ledger)


async def _adopt(
    settings: Settings,
    lane: PartitionLane,
    room: waiting_room.PartitionRoom,
    committed: int | None,
    end: int,
    instance: str,
) -> None:
    marker = room.marker
    # Step 3. No marker: never owned under this scheme; clean only if nothing
    # was ever consumed (a new group), otherwise an older version owned it.
    clean = committed is None if marker is None else marker.state == "closed"
    kept = lane.ledger.get(LEDGER_TOKEN_KEY)
    if marker is None or kept is None or kept.decode() != marker.token:
        lane.ledger.wipe()  # step 4: not the ledger of the previous ownership
    if clean:
        lane.possibly_applied_below = marker.attempted_below if marker is not None else 0
    else:
        lane.possibly_applied_below = end  # the partition's end at the takeover
        lane.calls_allowed_at = time.time() + takeover_wait_s(settings)
    # Carried forward: what earlier owners may have called stays "possibly
    # applied" for the next owner too, not only what this one calls.
    lane.attempted_below = lane.possibly_applied_below
    lane.token = uuid.uuid4().hex
    lane.ledger.apply([(LEDGER_TOKEN_KEY, lane.token.encode())], None)
    await _write_open_marker(settings, lane, instance)  # step 5
    log.info(
        "deliverer_partition_taken_over",
        partition=lane.partition,
        clean=clean,
        waiting=len(room.entries),
        calls_after_s=0.0 if clean else round(takeover_wait_s(settings), 1),
    )


def _marker(lane: PartitionLane, state: Literal["open", "closed"], instance: str) -> bytes:
    """The partition's owner marker, as this lane's ownership leaves it."""
    marker = wire.OwnerMarker(
        state=state, token=lane.token, instance=instance, at=time.time(), attempted_below=lane.attempted_below
    )
    return wire.encode(marker)


async def _write_open_marker(settings: Settings, lane: PartitionLane, instance: str) -> None:
    with kafka.broker_errors("begin marker transaction"):
        await lane.producer.begin_transaction()
    try:
        with kafka.broker_errors("write owner marker"):
            await lane.producer.send(
                settings.topic_delivery_waiting,
                _marker(lane, "open", instance),
                key=wire.WAITING_OWNER_KEY,
                partition=lane.partition,
            )
            await lane.producer.commit_transaction()
    except BrokerError:
        with contextlib.suppress(Exception):
            await lane.producer.abort_transaction()
        raise


async def commit(
    settings: Settings,
    group_id: str,
    lane: PartitionLane,
    deliveries_partitions: int,
    *,
    closing_as: str | None = None,
) -> int | None:
    """Steps 1-3 of the commit order; returns the number of offsets committed,
    ``None`` when the transaction failed. ``closing_as`` (the instance name)
    adds the ``closed`` marker."""
    async with lane.commit_lock:
        if lane.fenced:
            return None
        plan = lane.plan(done_value=DONE_VALUE)
        if not plan and closing_as is None:
            return 0
        deliveries = settings.topic_deliveries
        room = settings.topic_delivery_waiting
        out = lane.partition % deliveries_partitions
        try:
            with kafka.broker_errors("begin delivery transaction"):
                await lane.producer.begin_transaction()
            batch = kafka.TxnBatch(lane.producer)
            for invoice, record in plan.records:
                await batch.add(deliveries, out, invoice.encode(), record, wire.DELIVERY_HEADERS)
            for key, value in plan.room:
                await batch.add(room, lane.partition, key, value)
            if closing_as is not None:
                await batch.add(room, lane.partition, wire.WAITING_OWNER_KEY, _marker(lane, "closed", closing_as))
            await batch.flush()
            with kafka.broker_errors("commit delivery transaction"):
                if plan.offset is not None:
                    await lane.producer.send_offsets_to_transaction({lane.tp: plan.offset}, group_id)
                await lane.producer.commit_transaction()
        except FencedError:
            lane.fenced = True  # no call starts for it from now on
            log.warning("deliverer_partition_fenced", partition=lane.partition, alert=True)
            return None
        except BrokerError as exc:
            with contextlib.suppress(Exception):
                await lane.producer.abort_transaction()
            log.warning("delivery_commit_failed", partition=lane.partition, error=str(exc))
            return None
        lane.ledger.delete(lane.committed(plan))  # step 3: committed, never needed again
        return len(plan.prefix)


async def close(settings: Settings, group_id: str, lane: PartitionLane, deliveries_partitions: int, instance: str) -> bool:
    """Leave a partition cleanly: no new call, calls in flight end (bounded by
    the HTTP timeout), finished work and the ``closed`` marker committed.
    Returns whether the marker was committed."""
    lane.revoked = True
    await lane.idle.wait()
    committed = await commit(settings, group_id, lane, deliveries_partitions, closing_as=instance) is not None
    with contextlib.suppress(Exception):
        await lane.producer.stop()
    lane.ledger.close()
    return committed
