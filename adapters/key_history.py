"""The latest records of one key in one topic partition, read backwards.

Kafka has no index by key, so the latest records of one invoice are found by
reading the partition from its end in widening windows (500 records, then 4x
each time) until enough are found, the partition's start is reached, or a
budget of records is spent. A support question costs at most that budget,
and the answer says whether it was cut (``complete``). The compacted state
topic holds one record per invoice (plus an uncompacted head), so its
budget covers a whole partition in practice; outcomes and deliveries keep
30 days, so an invoice quiet for long may lie beyond it.

Each window is a range read through the one partition reader
(``adapters.partition_reader``): read_committed, so what an aborted
transaction wrote is never shown, and a window ends where it was planned.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aiokafka.structs import ConsumerRecord

from adapters.partition_reader import PartitionRange, open_reader
from adapters.settings import Settings

__all__ = ["KeyRecords", "latest_records"]

FIRST_WINDOW = 500
_GROWTH = 4
#: Without progress for this long a read is given up (a broker gone mid-read).
_STALL_S = 30.0


@dataclass(frozen=True)
class KeyRecords:
    """Records of the key, newest first; ``complete`` unless the budget ran out
    before ``want`` were found and before the partition's start."""

    records: tuple[ConsumerRecord, ...]
    complete: bool
    scanned: int


async def latest_records(
    settings: Settings, topic: str, partition: int, key: bytes, *, want: int, budget: int, first_window: int = FIRST_WINDOW
) -> KeyRecords:
    """Up to ``want`` latest records of ``key`` in ``topic[partition]``, reading
    at most ``budget`` records back from the end. Raises ``BrokerError``."""
    found: list[ConsumerRecord] = []
    async with open_reader(settings, topic, stall_timeout_s=_STALL_S, fetch_timeout_ms=300) as reader:
        whole = (await reader.plan([partition]))[partition]
        high, window, scanned = whole.end, first_window, 0
        while high > whole.log_start and len(found) < want and scanned < budget:
            low = max(high - min(window, budget - scanned), whole.log_start)
            chunk: list[ConsumerRecord] = []
            async with contextlib.aclosing(
                reader.read({partition: PartitionRange(partition, low, high, whole.log_start)})
            ) as batches:
                async for _, records, _ in batches:
                    chunk.extend(records)
            found.extend(r for r in reversed(chunk) if r.key == key)
            scanned += high - low
            high, window = low, window * _GROWTH
        complete = len(found) >= want or high <= whole.log_start
    return KeyRecords(tuple(found[:want]), complete=complete, scanned=scanned)
