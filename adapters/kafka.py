"""Kafka through aiokafka: client settings, topics, transactional batches, errors.

aiokafka errors are translated here into ``BrokerError``/``FencedError`` so
the consumers never catch aiokafka types.

Partitioning: outcome, state and DLQ records are written to the *input
record's partition* (modulo the target topic's partition count). The input
is already partitioned by invoice key, so per-invoice order carries over
without re-hashing every key (aiokafka's murmur2 is pure Python, ~9 µs a
key); the changelog (``invoice.state``) must have exactly as many
partitions as ``invoice.events``, which ``adapters.topics.ensure_topics`` checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.helpers import create_ssl_context

from adapters import kafka_records
from adapters.settings import Settings
from domain.errors import AccessDeniedError, BrokerError, FencedError, ProducerFailedError

_FENCED = (ProducerFenced, InvalidProducerEpoch)
_DENIED = (TransactionalIdAuthorizationFailed, GroupAuthorizationFailedError, TopicAuthorizationFailedError)
kafka_records.install()  # every consumer of ours survives records aiokafka's C parser refuses (issue 11)


def translate(exc: BaseException, what: str) -> BrokerError:
    """An aiokafka exception as one of ours (the caller raises it ``from exc``).

    A bumped epoch reads as fencing here; whether a newer owner did it or the
    broker timed our transaction out is for the caller to tell (it knows how
    long the transaction was open).
    """
    if isinstance(exc, _FENCED):
        return FencedError(f"{what}: producer epoch bumped ({type(exc).__name__})")
    if isinstance(exc, _DENIED):
        return AccessDeniedError(f"{what}: refused by the cluster's ACLs ({type(exc).__name__})")
    if isinstance(exc, AssertionError):
        # aiokafka guards its transaction state machine with asserts
        # ("Invalid state transition FATAL_ERROR -> IN_TRANSACTION").
        return ProducerFailedError(f"{what}: producer unusable: {exc}")
    return BrokerError(f"{what}: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def broker_errors(what: str) -> Any:
    try:
        yield
    except (TimeoutError, KafkaError, OSError) as exc:
        raise translate(exc, what) from exc


@contextlib.contextmanager
def transaction_errors(what: str) -> Any:
    """``broker_errors`` for calls on a transactional producer, whose own state
    checks are assertions."""
    try:
        yield
    except (TimeoutError, KafkaError, OSError, AssertionError) as exc:
        raise translate(exc, what) from exc


def producer_is_fatal(producer: AIOKafkaProducer) -> bool:
    """Whether aiokafka put this transactional producer in its fatal state
    (after which every call fails and only a new producer helps)."""
    manager = getattr(producer, "_txn_manager", None)
    return bool(manager is not None and manager.is_fatal_error())


def _compression(settings: Settings) -> dict[str, Any]:
    codec = settings.kafka_compression_type
    return {} if codec == "none" else {"compression_type": codec}


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options shared by every client (security, client id)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        "client_id": settings.kafka_client_id,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def transactional_id(group_id: str, topic: str, partition: int) -> str:
    """One transactional id per input partition: a new owner fences the old one
    (aiokafka has no KIP-447, so the consumer generation cannot do it)."""
    return f"{group_id}-{topic}-{partition}"


def new_transactional_producer(settings: Settings, txn_id: str, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        "transactional_id": txn_id,
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": 5,
        "max_batch_size": 512 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        "request_timeout_ms": 30000,
        "transaction_timeout_ms": settings.kafka_transaction_timeout_ms,
    }
    options.update(_compression(settings))
    options.update(overrides)
    return AIOKafkaProducer(**client_options(settings), **options)


def new_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {"enable_idempotence": True, "acks": "all", "linger_ms": 5, "max_batch_size": 256 * 1024}
    options.update(_compression(settings))
    options.update(overrides)
    return AIOKafkaProducer(**client_options(settings), **options)


def new_consumer(settings: Settings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer with the defaults a processor wants (LIBRARY-NOTES.md):
    read_committed, no auto-commit, and an explicit reset to the earliest."""
    options: dict[str, Any] = {
        "isolation_level": "read_committed",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "fetch_max_bytes": 32 * 1024 * 1024,
        # read_committed data shows only after a commit marker: with aiokafka's
        # 500 ms default the broker's wait becomes end-to-end latency.
        "fetch_max_wait_ms": 100,
    }
    options.update(overrides)
    if options.get("group_id") == settings.processor_group_id and "partition_assignment_strategy" not in options:
        # Members of the processor group advertise their service URL, so any
        # instance can find the owner of an invoice (adapters/owners.py).
        from adapters.owners import AdvertisingAssignor, advertised_url  # owners imports this module

        url = advertised_url(settings)
        if url is not None:
            options["partition_assignment_strategy"] = (AdvertisingAssignor(url),)
    return AIOKafkaConsumer(*topics, **client_options(settings), **options)


#: The C record builder wants a list; one shared empty list, never mutated.
_NO_HEADERS: list[tuple[str, bytes]] = []


class TxnBatch:
    """Records of one transaction, appended into per-partition batch builders.

    ``BatchBuilder.append`` is C code; ``producer.send`` per record would cost
    a coroutine and a metadata check each.
    """

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._builders: dict[tuple[str, int], Any] = {}
        self._counts: dict[tuple[str, int], int] = {}
        self._futures: list[tuple[tuple[str, int], int, asyncio.Future[Any]]] = []
        self._full: tuple[tuple[str, int], bytes | None, bytes | None, Sequence[tuple[str, bytes | None]] | None] | None = None

    def append(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
    ) -> bool:
        """Append a record; ``False`` when its batch is full: ``await ship_full()``,
        which ships that batch and appends the record to a fresh one.

        Synchronous on purpose: an ``await`` per record costs a coroutine each.
        """
        slot = (topic, partition)
        builder = self._builders.get(slot)
        if builder is None:
            builder = self._builders[slot] = self._producer.create_batch()
            self._counts[slot] = 0
        if builder.append(key=key, value=value, timestamp=None, headers=headers or _NO_HEADERS) is None:
            self._full = (slot, key, value, headers)
            return False
        self._counts[slot] += 1
        return True

    async def ship_full(self) -> None:
        assert self._full is not None
        slot, key, value, headers = self._full
        self._full = None
        await self._ship(slot)
        if not self.append(slot[0], slot[1], key, value, headers):
            raise BrokerError(f"record of {len(value or b'')} bytes does not fit a batch for {slot[0]}")

    async def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
    ) -> None:
        if not self.append(topic, partition, key, value, headers):
            await self.ship_full()

    async def _ship(self, slot: tuple[str, int]) -> None:
        builder = self._builders.pop(slot)
        count = self._counts.pop(slot)
        if count:
            builder.close()
            with transaction_errors(f"send to {slot[0]}"):
                future = await self._producer.send_batch(builder, slot[0], partition=slot[1])
            self._futures.append((slot, count, future))

    async def flush(self) -> dict[tuple[str, int], int]:
        """Ship everything and wait; returns the last offset written per (topic, partition)."""
        for slot in list(self._builders):
            await self._ship(slot)
        last: dict[tuple[str, int], int] = {}
        with transaction_errors("deliver batch"):
            for slot, count, future in self._futures:
                metadata = await future
                last[slot] = max(last.get(slot, -1), metadata.offset + count - 1)
        self._futures.clear()
        return last


@contextlib.asynccontextmanager
async def started(*clients: Any) -> AsyncIterator[None]:
    """Start clients, translating connection errors; stop them whatever happens."""
    started_clients: list[Any] = []
    try:
        for client in clients:
            with broker_errors(f"start {type(client).__name__}"):
                await client.start()
            started_clients.append(client)
        yield
    finally:
        for client in reversed(started_clients):
            with contextlib.suppress(Exception):
                await client.stop()


async def end_offsets(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    with broker_errors("end offsets"):
        return dict(await consumer.end_offsets(partitions))


async def beginning_offsets(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    with broker_errors("beginning offsets"):
        return dict(await consumer.beginning_offsets(partitions))


async def partitions_of(settings: Settings, topic: str) -> list[int]:
    """Partition numbers of ``topic`` (empty if it does not exist)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    with broker_errors("connect to Kafka"):
        await admin.start()
    try:
        with broker_errors("describe topic"):
            described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for d in described:
        if d["topic"] == topic and not d.get("error_code"):
            return sorted(p["partition"] for p in d["partitions"])
    return []


async def pipeline_partitions(
    consumer: AIOKafkaConsumer,
    stop: asyncio.Event,
    start_batch: Any,
    *,
    timeout_ms: int,
    max_records: int,
    fatal: Any = lambda: None,
    accepts: Any = lambda tp: True,
) -> None:
    """Fetch for the partitions with no batch in flight; each fetched batch runs
    as its own task, so one partition's commit never holds up the others.

    ``start_batch(tp, records)`` returns an awaitable for the batch, or
    ``None`` when the partition is not ready (it must rewind the records
    itself). At most one batch per partition is in flight, so each
    partition's records are still decided strictly in offset order.
    ``fatal()`` returns an exception to raise, if any; ``accepts(tp)``
    whether a partition may be fetched now. On return no batch is in flight.
    """
    busy: dict[TopicPartition, asyncio.Task[Any]] = {}
    try:
        while not stop.is_set():
            error = fatal()
            if error is not None:
                raise error
            for tp, task in list(busy.items()):
                if task.done():
                    del busy[tp]
                    task.result()  # a batch's unexpected error stops the loop
            # Only partitions whose owner is ready: fetching the others would
            # only throw the records away and fetch them again, in a hot loop
            # for as long as a restore takes.
            idle = [tp for tp in consumer.assignment() if tp not in busy and accepts(tp)]
            if not idle:
                if busy:
                    await asyncio.wait(busy.values(), timeout=timeout_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.sleep(max(timeout_ms, 10) / 1000)
                continue
            with broker_errors("fetch"):
                fetched = await consumer.getmany(*idle, timeout_ms=timeout_ms, max_records=max_records)
            for tp, records in fetched.items():
                if records:
                    job = start_batch(tp, records)
                    if job is not None:
                        busy[tp] = asyncio.ensure_future(job)
    finally:
        if busy:
            await asyncio.gather(*busy.values(), return_exceptions=True)
