"""The peer: the same stateful job written with Quix Streams, exactly-once.

``Application(broker_address, consumer_group, auto_offset_reset="earliest",
processing_guarantee="exactly-once", state_dir, commit_interval=<Quix default 5 s>)``;
the input topic is read as raw bytes (key and value) and
``sdf.apply(step, stateful=True, metadata=True)`` does, per record, what the
processor does: ``adapters.wire.decode_event`` (the same validation), the
invoice's state from Quix's RocksDB state store (``state.get``: the
``StateRecord`` JSON text of ``adapters.wire.encode_state``, decoded with
``decode_state``), ``domain.decide.decide``, ``state.set`` of the new state
(unless a duplicate), and returns ``adapters.wire.outcome_bytes`` (the
same outcome bytes), which ``sdf.to_topic`` produces to the outcome topic.
Quix also writes every state change to its changelog topic, so it writes
the same two records per input as the processor (outcome + state).

Like the processor, the ``processed_at`` time is taken once per batch-ish
interval (here: refreshed every 100 ms) rather than per record.

Completion: the step function counts records and calls ``app.stop()`` at
``--count``; Quix then commits its last checkpoint (transaction + offsets)
and exits. The suite times it from outside, by the consumer group's
committed offsets, exactly like the processor and the ceiling.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from types import SimpleNamespace
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quix_peer")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--count", type=int, required=True, help="stop after this many input records")
    parser.add_argument("--commit-interval", type=float, default=5.0, help="Quix's checkpoint interval (its default: 5 s)")
    args = parser.parse_args(argv)

    from quixstreams import Application, message_context

    from adapters import wire
    from consumers.processor import utc_now
    from domain.decide import decide
    from domain.errors import InvalidEventError

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        state_dir=args.state_dir,
        commit_interval=args.commit_interval,
        loglevel="WARNING",
    )
    source = app.topic(args.input, key_deserializer="bytes", value_deserializer="bytes")
    sink = app.topic(args.output, key_serializer="bytes", value_serializer="bytes")

    decode_event, decode_state, encode_state = wire.decode_event, wire.decode_state, wire.encode_state
    outcome_bytes = wire.outcome_bytes
    counter: dict[str, Any] = {"n": 0, "invalid": 0, "clock": 0.0, "now": utc_now()}
    target = args.count

    def step(value: bytes, key: bytes, timestamp: int, headers: Any, state: Any) -> bytes | None:
        counter["n"] += 1
        if counter["n"] >= target:
            app.stop()
        t = time.monotonic()
        if t - counter["clock"] > 0.1:
            counter["clock"] = t
            counter["now"] = utc_now()
        now = counter["now"]
        try:
            event = decode_event(key, value, headers)
        except InvalidEventError:  # the benchmark input has none; kept for parity with the processor
            counter["invalid"] += 1
            return None
        invoice = event.key
        raw = state.get("s")
        current = decode_state(raw.encode()) if raw is not None else None
        decision = decide(current, event, now)
        if decision.changes_state:
            state.set("s", encode_state(decision.state).decode())
        ctx = message_context()
        record = SimpleNamespace(topic=ctx.topic, partition=ctx.partition, offset=ctx.offset)
        return outcome_bytes(decision, record, now, invoice)

    sdf = app.dataframe(source)
    sdf = sdf.apply(step, stateful=True, metadata=True)
    sdf.to_topic(sink)
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    started = time.monotonic()
    app.run()
    print(
        f"quix stopped, processed={counter['n']} invalid={counter['invalid']} seconds={time.monotonic() - started:.2f}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
