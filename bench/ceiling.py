"""The throughput ceiling: a raw aiokafka transactional consume -> produce pipe.

It is the processor with the domain taken out, so ``processor / ceiling``
is the share of the achievable rate that decoding, deciding and the state
store leave us. What it does, line for line like ``consumers/processor.py``:

- one consumer in a consumer group (``adapters.kafka.new_consumer``:
  read_committed, no auto-commit, earliest; the processor's poll/session
  settings), subscribed to the input topic;
- on assignment, one transactional producer per input partition
  (``adapters.kafka.new_transactional_producer`` with
  ``transactional_id(group, topic, partition)``), started (InitProducerId)
  before any record of that partition is handled; seek to the committed offset;
  one JSON line on stderr per assignment and revocation (``partitions_assigned``
  / ``partitions_revoked``, like the processor's log), which the suite reads to
  know when several ceiling processes in one group have settled;
- main loop: the processor's ``adapters.kafka.pipeline_partitions`` (fetch for
  partitions with no batch in flight, each batch its own task), and per batch:
  ``begin_transaction``; for each record append an *outcome* record to the
  outcomes topic and a *state* record to the state topic, both keyed by the
  input key, on the input's partition number, through ``adapters.kafka.TxnBatch``
  (the same ``BatchBuilder`` path); ``flush`` (wait for acks);
  ``send_offsets_to_transaction({tp: last + 1}, group)``; ``commit_transaction``.

It runs under the processor's garbage-collector settings
(``consumers.app.tune_garbage_collector``). What it does not do: decode the event, decide, encode an outcome or a state,
read or write a state store, log per batch, export metrics. The values are
constant byte strings whose sizes are the mean sizes of the processor's
outcome and state records for the same input (computed by the suite from the
same events with the same encoders), so both write the same bytes; it writes
a state record for every input, where the processor skips duplicates (3 %).

Run as ``python -m bench.ceiling --outcome-bytes N --state-bytes N`` with the
``INVOICE_SM_*`` environment of the processor run it is compared with; SIGTERM
stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition

from adapters import kafka
from adapters.settings import Settings, load_settings
from consumers.app import tune_garbage_collector


class CeilingPipe(ConsumerRebalanceListener):
    def __init__(self, settings: Settings, outcome_bytes: int, state_bytes: int) -> None:
        self.settings = settings
        self.group_id = settings.processor_group_id
        self.outcome = b"o" * outcome_bytes
        self.state = b"s" * state_bytes
        self.producers: dict[TopicPartition, Any] = {}  # aiokafka's producers (untyped)
        self.consumer = kafka.new_consumer(
            settings,
            group_id=self.group_id,
            max_poll_interval_ms=300_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
        )
        self.processed = 0

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            producer = self.producers.pop(tp, None)
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.stop()
        if revoked:
            _log("partitions_revoked", revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        new = {
            tp: kafka.new_transactional_producer(self.settings, kafka.transactional_id(self.group_id, tp.topic, tp.partition))
            for tp in assigned
            if tp not in self.producers
        }
        await asyncio.gather(*(p.start() for p in new.values()))
        begins = await self.consumer.beginning_offsets(list(new))
        for tp in new:
            committed = await self.consumer.committed(tp)
            self.consumer.seek(tp, begins[tp] if committed is None else committed)
        self.producers.update(new)
        if new:
            _log("partitions_assigned", list(new))

    async def pipe(self, tp: TopicPartition, records: list) -> None:
        producer = self.producers[tp]
        settings = self.settings
        partition = tp.partition
        outcome, state = self.outcome, self.state
        topic_outcomes, topic_state = settings.topic_outcomes, settings.topic_state
        await producer.begin_transaction()
        batch = kafka.TxnBatch(producer)
        for record in records:
            await batch.add(topic_outcomes, partition, record.key, outcome)
            await batch.add(topic_state, partition, record.key, state)
        await batch.flush()
        await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, self.group_id)
        await producer.commit_transaction()
        self.processed += len(records)

    def _start_batch(self, tp: Any, records: Any) -> Any:
        if tp in self.producers:
            return self.pipe(tp, records)
        self.consumer.seek(tp, records[0].offset)
        return None

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        consumer = self.consumer
        consumer.subscribe([settings.topic_events], listener=self)
        async with kafka.started(consumer):
            try:
                # The processor's own loop (adapters.kafka.pipeline_partitions):
                # the ceiling pipelines partitions exactly as the processor does.
                await kafka.pipeline_partitions(
                    consumer,
                    stop,
                    self._start_batch,
                    timeout_ms=settings.batch_timeout_ms,
                    max_records=settings.batch_max_records,
                )
            finally:
                await self.on_partitions_revoked(list(self.producers))


def _log(event: str, tps: list[TopicPartition]) -> None:
    print(json.dumps({"partitions": sorted(tp.partition for tp in tps), "event": event}), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--outcome-bytes", type=int, required=True)
    parser.add_argument("--state-bytes", type=int, required=True)
    args = parser.parse_args(argv)
    settings = load_settings()

    async def run() -> None:
        tune_garbage_collector()  # as the processor's runtime does
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        pipe = CeilingPipe(settings, args.outcome_bytes, args.state_bytes)
        await pipe.run(stop)
        print(f"ceiling stopped, processed={pipe.processed}", file=sys.stderr)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
