"""The one partition-ownership sequence.

Every service that owns input partitions with a transactional producer and
local state takes a partition the same way: the processor's partition
workers (on assignment, and again after a fatal producer or a timed-out
transaction) and the deliverer's lanes (on assignment). The order is the
guarantee:

1. **fence**: start each partition's transactional producer. ``InitProducerId``
   fences any previous owner and waits until its open transaction is
   resolved (committed or aborted), so nothing it wrote can land later;
2. **restore**: bring local state up to the end of its changelog (read
   committed). Only after step 1: a read before the fence could miss a
   transaction the previous owner commits between the read and the fence;
3. **committed offsets**, fetched *now*: aiokafka fetched them at assignment,
   possibly before the previous owner's last commit landed;
4. **adopt** (optional): what the owner decides knowing the committed offsets
   (the deliverer: was the takeover clean, its ownership marker).

The caller then seeks each partition to its position and registers it,
with no ``await`` between the two (:func:`seek`): the main loop must never
hold records of a registered partition fetched from another position.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from adapters.kafka import beginning_offsets, broker_errors


@dataclass(frozen=True, slots=True)
class Committed:
    """Where a partition resumes: the group's committed offset (``None``: the
    group never committed one) and the position to read from."""

    offset: int | None
    position: int


async def committed_offsets(consumer: Any, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, Committed]:
    """Step 3: each partition's committed offset, or its beginning when there is none.

    aiokafka's public ``committed`` asks for one partition per request; the
    requests go out together, so a takeover of many partitions waits for one
    round trip, not one per partition.
    """
    begins = await beginning_offsets(consumer, list(partitions))
    with broker_errors("fetch committed offset"):
        offsets = await asyncio.gather(*(consumer.committed(tp) for tp in partitions))
    return {
        tp: Committed(offset, begins[tp] if offset is None else offset) for tp, offset in zip(partitions, offsets, strict=True)
    }


async def take_ownership(
    consumer: Any,
    partitions: Sequence[TopicPartition],
    *,
    fence: Callable[[TopicPartition], Awaitable[None]],
    restore: Callable[[list[TopicPartition]], Awaitable[None]],
    adopt: Callable[[dict[TopicPartition, Committed]], Awaitable[None]] | None = None,
) -> dict[TopicPartition, Committed]:
    """Steps 1-4 above, in order, for ``partitions`` together; returns where each resumes.

    ``fence`` runs for every partition at once (each init waits for the
    broker to resolve the old owner's transaction); ``restore`` and
    ``adopt`` see all partitions, so a changelog is read in one pass. An
    error stops the sequence where it is: the caller closes what it opened.
    """
    await asyncio.gather(*(fence(tp) for tp in partitions))  # step 1
    await restore(list(partitions))  # step 2
    committed = await committed_offsets(consumer, partitions)  # step 3
    if adopt is not None:
        await adopt(committed)  # step 4
    return committed


def seek(consumer: Any, committed: dict[TopicPartition, Committed], register: Callable[[TopicPartition], None]) -> None:
    """Seek each partition to its position and register it, with no await in between."""
    for tp, where in committed.items():
        consumer.seek(tp, where.position)
        register(tp)
