"""``invoice-sm deliver``: accepted outcomes -> WeChat ``updatestatus``.

A consumer group reads ``invoice.outcomes`` (read_committed). Accepted
outcomes (and ``invoice.status.repair`` records from ``reconcile --repair``)
become deliveries; every other outcome is finished work at once.

Order and concurrency. Every version of an invoice is in one outcome
partition, in version order. Each partition keeps a queue per invoice; an
invoice is in the ready queue at most once, so it has at most one call in
flight and its versions go out in order. ``delivery_concurrency`` workers
take invoices from the ready queue, so different invoices proceed
concurrently. A worker never sleeps on a backoff or a parked account: the
invoice is put back later (``call_later``) or parked with its account, and
the worker moves on.

What a failure does (DOMAIN.md):

- token (40001/40014/42001): the client refreshes once and retries once;
  if that fails too, back off and retry.
- transient (-1, 72036, 5xx, connection errors): back off with jitter, forever:
  an outage delays work and never drops it. 45011 waits for the next minute.
- timeout after sending (``UnknownResultError``): the call may have been
  applied: retried with the same idempotency key, and a refusal with 72024
  (status already set) is then recorded ``already_applied``.
- 45009 (daily quota): the account is parked until the quota resets
  (``quota_reset_hour``, Asia/Shanghai), its work kept in memory, with a
  metric and a warning an operator alerts on.
- credentials refused by the token endpoint: parked likewise (never
  dropped; a config error would otherwise fail every delivery).
- conflict (72023/72024/72039): recorded ``conflict``, no blind retry.
- permanent: recorded ``failed`` with the errcode.

Policy after a conflict or failure: the invoice's later versions are still
delivered in order. WeChat judges each against the card's real status, so a
later version may bring the card back in step; ``reconcile`` reports what
stays out of step and ``reconcile --repair`` fixes it.

Commit order, per partition (``PartitionLane.commit``):

1. take the longest prefix of consumed offsets whose work is finished;
2. in one transaction: the final delivery records of that prefix, and the
   offset after it;
3. after the commit, drop those keys from the lane's ledger.

Before each call the idempotency key is marked in-flight in the lane's
ledger (a small RocksDB in the state dir), and the final record is written
there as soon as it is known. After a crash, outcomes after the committed
offset are consumed again: a key with a final record in the ledger is not
called again; a key marked in-flight is called again (same key) and may be
``already_applied``. So repeats after a crash are bounded by the calls in
flight at the crash. When a partition moves to an instance without its
ledger, outcomes consumed but not committed by the old owner are treated as
possibly applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from aiolimiter import AsyncLimiter

from adapters import kafka, topics, wire
from adapters.settings import Settings
from adapters.store import PartitionStore, RocksPartitionStore
from consumers.processor import observe_lag
from domain.errors import (
    BrokerError,
    ConfigurationError,
    ConflictError,
    CredentialError,
    FencedError,
    PermanentWeChatError,
    QuotaExhaustedError,
    TokenInvalidError,
    TransientWeChatError,
    UnknownResultError,
    WeChatError,
)
from domain.model import idempotency_key, invoice_key
from domain.status import ReimburseStatus
from domain.wechat_errors import MINUTE_QUOTA_ERRCODE, STATUS_ERRCODE, ErrorClass, classify

log = structlog.get_logger("invoice_sm.deliverer")

CHINA = timezone(timedelta(hours=8))  # no DST: a fixed offset is exact
DELIVERABLE = frozenset({"invoice.status.accepted", "invoice.status.repair"})
_INFLIGHT = b"inflight"


def utc_iso(ts: float | None = None) -> str:
    moment = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def next_quota_reset(now: datetime, hour: int) -> datetime:
    """The next ``hour``:00 in China time after ``now`` (WeChat quotas reset daily)."""
    local = now.astimezone(CHINA)
    reset = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    if reset <= local:
        reset += timedelta(days=1)
    return reset


@dataclass(eq=False)
class Job:
    """One delivery: a status for a card, with its stable idempotency key."""

    lane: PartitionLane
    offset: int
    outcome_id: str
    card_id: str
    code: str
    appid: str
    status: ReimburseStatus
    version: int
    key: str
    repair: bool
    possibly_applied: bool
    attempts: int = 0
    first_attempt: float | None = None
    started: float = 0.0

    @property
    def invoice(self) -> str:
        return invoice_key(self.card_id, self.code)


class AccountGate:
    """Per appid: the rate limit, and the park (45009 or refused credentials)."""

    def __init__(self, appid: str, rate: float) -> None:
        self.appid = appid
        # A bucket of one second's calls: bursts up to ``rate``, never above it on average.
        self.limiter = AsyncLimiter(max(rate, 1.0), 1.0)
        self.parked_until: float | None = None
        self.parked: list[Job] = []
        self.reason = ""

    def is_parked(self, now: float) -> bool:
        return self.parked_until is not None and now < self.parked_until


class PartitionLane:
    """One outcome partition: its producer, ledger, queues and commit point."""

    def __init__(self, deliverer: Deliverer, tp: TopicPartition) -> None:
        self.deliverer = deliverer
        self.tp = tp
        settings = deliverer.settings
        self.producer = kafka.new_transactional_producer(
            settings, kafka.transactional_id(deliverer.group_id, tp.topic, tp.partition)
        )
        self.ledger: PartitionStore | None = None
        self.fresh_ledger = True
        self.possibly_applied_below = 0
        #: offset -> Job (not finished) or the final record (bytes) or None (nothing to deliver)
        self.work: OrderedDict[int, Job | bytes | None] = OrderedDict()
        self.unfinished = 0
        self.invoices: dict[str, deque[Job]] = {}
        self.revoked = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.commit_lock = asyncio.Lock()
        self.paused = False
        self.fenced = False

    async def open(self, consumer: AIOKafkaConsumer) -> None:
        settings = self.deliverer.settings
        with kafka.broker_errors("init deliverer producer"):
            await self.producer.start()  # fences the partition's previous owner
        path = Path(settings.state_dir) / "deliverer" / f"{self.tp.topic}-{self.tp.partition}"
        self.fresh_ledger = not path.exists()
        self.ledger = RocksPartitionStore(path)
        # Outcomes below the end offset at assignment may have been called by
        # the previous owner; without its ledger we cannot tell which.
        ends = await kafka.end_offsets(consumer, [self.tp])
        self.possibly_applied_below = ends[self.tp] if self.fresh_ledger else 0

    def add(self, record: ConsumerRecord) -> Job | None:
        """Register a consumed outcome; returns the job if it needs a call."""
        outcome = wire.decode_outcome(record.value) if record.value else None
        # A WeChat-reported status is already on the card: never echoed back.
        if outcome is None or outcome.type not in DELIVERABLE or outcome.data.to_status is None or outcome.data.origin == "wechat":
            self.work[record.offset] = None
            return None
        data = outcome.data
        key = data.idempotency_key or idempotency_key(data.card_id, data.code, data.version)
        assert self.ledger is not None
        known = self.ledger.get(key.encode())
        if known is not None and known != _INFLIGHT:
            # Finished before a crash, not committed: reuse the record, no call.
            self.work[record.offset] = known
            return None
        job = Job(
            lane=self,
            offset=record.offset,
            outcome_id=outcome.id,
            card_id=data.card_id,
            code=data.code,
            appid=data.appid or self.deliverer.default_appid,
            status=data.to_status,
            version=data.version,
            key=key,
            repair=outcome.type == "invoice.status.repair",
            possibly_applied=known == _INFLIGHT or (self.fresh_ledger and record.offset < self.possibly_applied_below),
        )
        self.work[record.offset] = job
        self.unfinished += 1
        queue = self.invoices.get(job.invoice)
        if queue is None:
            self.invoices[job.invoice] = deque([job])
            return job
        queue.append(job)
        return None  # its turn comes when the version before it finishes

    def mark_in_flight(self, job: Job) -> None:
        assert self.ledger is not None
        self.ledger.apply([(job.key.encode(), _INFLIGHT)], None)
        self.in_flight += 1
        self.idle.clear()

    def call_done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    def finish(self, job: Job, record: bytes) -> Job | None:
        """Record the final result; returns the invoice's next job, if any."""
        assert self.ledger is not None
        self.ledger.apply([(job.key.encode(), record)], None)
        self.work[job.offset] = record
        self.unfinished -= 1
        queue = self.invoices[job.invoice]
        queue.popleft()
        if queue:
            return queue[0]
        del self.invoices[job.invoice]
        return None

    async def commit(self) -> int:
        """Commit the finished prefix: delivery records + offsets, one transaction."""
        async with self.commit_lock:
            if self.fenced or not self.work:
                return 0
            prefix: list[tuple[int, bytes | None]] = []
            for offset, item in self.work.items():
                if isinstance(item, Job):
                    break
                prefix.append((offset, item))
            if not prefix:
                return 0
            settings = self.deliverer.settings
            partition = self.tp.partition % self.deliverer.partitions[settings.topic_deliveries]
            try:
                with kafka.broker_errors("begin delivery transaction"):
                    await self.producer.begin_transaction()
                batch = kafka.TxnBatch(self.producer)
                keys: list[bytes] = []
                for _, record in prefix:
                    if record is not None:
                        key = wire.decode_delivery(record)
                        keys.append(key.idempotency_key.encode())
                        await batch.add(
                            settings.topic_deliveries, partition, invoice_key(key.card_id, key.code).encode(), record,
                            wire.DELIVERY_HEADERS,
                        )
                await batch.flush()
                with kafka.broker_errors("commit delivery transaction"):
                    await self.producer.send_offsets_to_transaction(
                        {self.tp: prefix[-1][0] + 1}, self.deliverer.group_id
                    )
                    await self.producer.commit_transaction()
            except FencedError:
                self.fenced = True
                log.warning("deliverer partition fenced", partition=self.tp.partition)
                return 0
            except BrokerError as exc:
                with contextlib.suppress(Exception):
                    await self.producer.abort_transaction()
                log.warning("delivery commit failed, will retry", partition=self.tp.partition, error=str(exc))
                return 0
            for offset, _ in prefix:
                del self.work[offset]
            assert self.ledger is not None
            self.ledger.delete(keys)  # step 3: committed, so never needed again
            return len(prefix)

    async def close(self) -> None:
        self.revoked = True
        await self.idle.wait()  # calls in flight finish (bounded by the HTTP timeout)
        await self.commit()
        with contextlib.suppress(Exception):
            await self.producer.stop()
        if self.ledger is not None:
            self.ledger.close()


class Deliverer(ConsumerRebalanceListener):
    """The ``deliver`` command: a consumer group, partition lanes, workers."""

    def __init__(self, settings: Settings, *, metrics: Any = None, client: Any = None) -> None:
        self.settings = settings
        self.group_id = settings.deliverer_group_id
        self.metrics = metrics
        self.default_appid = settings.wechat_appid or ""
        self.lanes: dict[TopicPartition, PartitionLane] = {}
        self.partitions: dict[str, int] = {}
        self.ready: asyncio.Queue[Job] = asyncio.Queue()
        self.gates: dict[str, AccountGate] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.client = client
        self._owns_client = client is None
        self.ready_flag = asyncio.Event()
        self.counts: dict[str, int] = {"delivered": 0, "already_applied": 0, "conflict": 0, "failed": 0}
        self._fatal: BaseException | None = None

    # -- account gates

    def gate(self, appid: str) -> AccountGate:
        gate = self.gates.get(appid)
        if gate is None:
            gate = self.gates[appid] = AccountGate(appid, self.settings.delivery_rate_limit)
        return gate

    def park(self, gate: AccountGate, seconds: float, reason: str) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        if gate.parked_until is None or until > gate.parked_until:
            gate.parked_until = until
            gate.reason = reason
            loop.call_later(seconds, self._unpark, gate)
            log.warning("account parked", appid=gate.appid, reason=reason, seconds=round(seconds, 1), alert=True)
            self._gauge_parked()

    def _unpark(self, gate: AccountGate) -> None:
        if gate.is_parked(asyncio.get_running_loop().time()):
            return  # parked again for longer meanwhile
        gate.parked_until = None
        jobs, gate.parked = gate.parked, []
        log.info("account unparked", appid=gate.appid, jobs=len(jobs))
        for job in jobs:
            self.ready.put_nowait(job)
        self._gauge_parked()

    def _gauge_parked(self) -> None:
        if self.metrics is None:
            return
        now = asyncio.get_running_loop().time()
        parked = [g for g in self.gates.values() if g.is_parked(now)]
        self.metrics.parked_appids.set(len(parked))
        for g in self.gates.values():
            self.metrics.parked_appid.labels(appid=g.appid).set(1 if g.is_parked(now) else 0)

    # -- one call

    def _backoff(self, job: Job) -> float:
        base = min(self.settings.delivery_max_backoff_s, 0.2 * 2 ** min(job.attempts - 1, 16))
        return random.uniform(base / 2, base)  # "equal jitter": never zero, never in lockstep

    def _minute_wait(self) -> float:
        if self.settings.minute_quota_wait_s is not None:
            return self.settings.minute_quota_wait_s
        return 60.0 - time.time() % 60.0 + random.uniform(0.05, 1.0)

    async def attempt(self, job: Job) -> tuple[str, float | bytes]:
        """One call for ``job``: ("final", record) | ("retry", delay) | ("parked", 0)."""
        gate = self.gate(job.appid)
        loop = asyncio.get_running_loop()
        if gate.is_parked(loop.time()):
            gate.parked.append(job)
            return ("parked", 0.0)
        async with gate.limiter:
            pass
        lane = job.lane
        if lane.revoked:
            return ("abandoned", 0.0)
        job.attempts += 1
        if job.first_attempt is None:
            job.first_attempt = time.time()
        if self.metrics is not None:
            self.metrics.delivery_attempts_total.labels(kind="first" if job.attempts == 1 else "retry").inc()
            self.metrics.deliveries_in_flight.inc()
        lane.mark_in_flight(job)
        started = time.perf_counter()
        errcode_class = "network"
        try:
            result = await self.client.update_status(
                appid=job.appid, card_id=job.card_id, code=job.code, status=job.status, idempotency_key=job.key
            )
            errcode_class = ErrorClass.OK.value
            return ("final", self._record(job, "delivered", result.errcode, result.errmsg))
        except UnknownResultError as exc:
            job.possibly_applied = True
            self._log_retry(job, exc)
            return ("retry", self._backoff(job))
        except TokenInvalidError as exc:
            errcode_class = "token"
            self._log_retry(job, exc)
            return ("retry", self._backoff(job))
        except TransientWeChatError as exc:
            errcode_class = "transient" if exc.http_status is None else "network"
            self._log_retry(job, exc)
            if exc.errcode == MINUTE_QUOTA_ERRCODE:
                return ("retry", self._minute_wait())
            return ("retry", self._backoff(job))
        except QuotaExhaustedError:
            errcode_class = "quota"
            if self.settings.quota_park_s is not None:
                seconds = self.settings.quota_park_s
            else:
                now = datetime.now(UTC)
                seconds = (next_quota_reset(now, self.settings.quota_reset_hour) - now).total_seconds()
            self.park(gate, seconds, "daily quota exhausted (45009)")
            gate.parked.append(job)
            return ("parked", 0.0)
        except CredentialError as exc:
            errcode_class = "permanent"
            self.park(gate, self.settings.credential_park_s, f"WeChat refused the credentials (errcode {exc.errcode})")
            gate.parked.append(job)
            return ("parked", 0.0)
        except ConflictError as exc:
            errcode_class = "conflict"
            if exc.errcode == STATUS_ERRCODE and job.possibly_applied:
                return ("final", self._record(job, "already_applied", exc.errcode, exc.errmsg, error_class=type(exc).__name__))
            return ("final", self._record(job, "conflict", exc.errcode, exc.errmsg, error_class=type(exc).__name__))
        except PermanentWeChatError as exc:
            errcode_class = "permanent"
            return ("final", self._record(job, "failed", exc.errcode, exc.errmsg, error_class=type(exc).__name__))
        except WeChatError as exc:  # an unforeseen subclass: keep the work
            self._log_retry(job, exc)
            return ("retry", self._backoff(job))
        finally:
            seconds = time.perf_counter() - started
            lane.call_done()
            if self.metrics is not None:
                self.metrics.deliveries_in_flight.dec()
                self.metrics.wechat_calls_total.labels(errcode_class=errcode_class).inc()
                self.metrics.wechat_latency_seconds.observe(seconds)

    def _log_retry(self, job: Job, exc: WeChatError) -> None:
        log.info(
            "delivery retry",
            invoice=job.invoice,
            version=job.version,
            attempts=job.attempts,
            errcode=exc.errcode,
            error=type(exc).__name__,
            errclass=classify(exc.errcode).value,
        )

    def _record(self, job: Job, result: str, errcode: int, errmsg: str, *, error_class: str | None = None) -> bytes:
        now = time.time()
        record = wire.DeliveryRecord(
            idempotency_key=job.key,
            card_id=job.card_id,
            code=job.code,
            appid=job.appid,
            reimburse_status=job.status,
            version=job.version,
            result=result,  # type: ignore[arg-type]
            errcode=errcode,
            errmsg=errmsg,
            attempts=job.attempts,
            outcome_id=job.outcome_id,
            first_attempt_at=utc_iso(job.first_attempt) if job.first_attempt else None,
            completed_at=utc_iso(now),
            duration_ms=round((now - (job.first_attempt or now)) * 1000, 3),
            error_class=error_class,
            repair=job.repair,
        )
        self.counts[result] += 1
        if self.metrics is not None:
            self.metrics.deliveries_total.labels(result=result).inc()
        # The canonical log line of a delivery, with the invoice key bound.
        log.info(
            "delivery final",
            invoice=job.invoice,
            version=job.version,
            status=job.status.value,
            result=result,
            errcode=errcode,
            attempts=job.attempts,
            idempotency_key=job.key,
            appid=job.appid,
        )
        encoded = wire.encode(record)
        if self.settings.validate_produced != "off":
            wire.validate_produced(encoded, "delivery")
        return encoded

    # -- workers, committer, main loop

    async def worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self.ready.get()
            lane = job.lane
            if lane.revoked:
                continue  # the new owner consumes it again
            kind, value = await self.attempt(job)
            if kind == "final":
                assert isinstance(value, bytes)
                following = lane.finish(job, value)
                if following is not None:
                    self.ready.put_nowait(following)
            elif kind == "retry":
                assert isinstance(value, float)
                loop.call_later(value, self.ready.put_nowait, job)

    async def committer(self, stop: asyncio.Event) -> None:
        interval = self.settings.delivery_commit_interval_ms / 1000
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            for lane in list(self.lanes.values()):
                if not lane.revoked:
                    await lane.commit()
                    self._flow_control(lane)
            if self.metrics is not None:
                self.metrics.delivery_queue_depth.set(sum(lane.unfinished for lane in self.lanes.values()))

    def _flow_control(self, lane: PartitionLane) -> None:
        """Pause fetching a partition whose held outcomes pile up (a parked account
        or an outage), so memory stays bounded; resume when it drains."""
        if self.consumer is None or lane.tp not in self.consumer.assignment():
            return
        limit = self.settings.delivery_max_pending
        if not lane.paused and len(lane.work) >= limit:
            self.consumer.pause(lane.tp)
            lane.paused = True
        elif lane.paused and len(lane.work) < limit // 2:
            self.consumer.resume(lane.tp)
            lane.paused = False

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        gone = [self.lanes.pop(tp) for tp in revoked if tp in self.lanes]
        await asyncio.gather(*(lane.close() for lane in gone))
        if gone:
            log.info("deliverer partitions revoked", partitions=sorted(lane.tp.partition for lane in gone))
        self._gauge_assigned()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        new = [tp for tp in assigned if tp not in self.lanes]
        if not new:
            return
        try:
            assert self.consumer is not None
            lanes = {tp: PartitionLane(self, tp) for tp in new}
            await asyncio.gather(*(lane.open(self.consumer) for lane in lanes.values()))
            begins = await kafka.beginning_offsets(self.consumer, new)
            positions = {}
            for tp in new:
                with kafka.broker_errors("fetch committed offset"):
                    committed = await self.consumer.committed(tp)
                positions[tp] = begins[tp] if committed is None else committed
            # No await from here to the registration (see the processor).
            for tp, position in positions.items():
                self.consumer.seek(tp, position)
            self.lanes.update(lanes)
        except BaseException as exc:
            self._fatal = exc
            raise
        log.info("deliverer partitions assigned", partitions=sorted(tp.partition for tp in new))
        self._gauge_assigned()

    def _gauge_assigned(self) -> None:
        if self.metrics is not None:
            self.metrics.assigned_partitions.labels(role="deliverer").set(len(self.lanes))

    async def _check_credentials(self) -> None:
        """A refused secret stops the start; an unreachable WeChat does not."""
        if not self.default_appid:
            return
        try:
            await self.client.tokens.get(self.default_appid)
        except CredentialError as exc:
            raise ConfigurationError(
                "INVOICE_SM_WECHAT_SECRET", f"WeChat refused the credentials of {self.default_appid} (errcode {exc.errcode})"
            ) from None
        except WeChatError as exc:
            log.warning("WeChat not reachable at start; deliveries will wait", error=type(exc).__name__)

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        if self.client is None:
            from adapters.wechat import WeChatClient

            def refreshed(appid: str, mode: str) -> None:
                if self.metrics is not None:
                    self.metrics.token_refreshes_total.labels(appid=appid, mode=mode).inc()

            def refresh_failed(appid: str, mode: str) -> None:
                if self.metrics is not None:
                    self.metrics.token_refresh_failures_total.labels(appid=appid, mode=mode).inc()

            self.client = WeChatClient.from_settings(settings, on_refresh=refreshed)
            self.client.tokens.on_refresh_failure = refresh_failed
            if self.metrics is not None and self.default_appid:
                # At zero from the start, so that the first failure is an increase an alert sees.
                self.metrics.token_refresh_failures_total.labels(appid=self.default_appid, mode=self.client.tokens.mode)
        try:
            await self._check_credentials()
            self.partitions = await topics.ensure_topics(settings)
            consumer = kafka.new_consumer(
                settings, group_id=self.group_id, session_timeout_ms=settings.kafka_session_timeout_ms, heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 5, 500),
                # read_committed: a fetch parked at the broker is not woken when a transaction
                # commits, so aiokafka's default 500 ms wait became delivery latency.
                fetch_max_wait_ms=50,
            )
            self.consumer = consumer
            consumer.subscribe([settings.topic_outcomes], listener=self)
            workers = [asyncio.create_task(self.worker()) for _ in range(settings.delivery_concurrency)]
            committer = asyncio.create_task(self.committer(stop))
            try:
                async with kafka.started(consumer):
                    log.info("deliverer started", group=self.group_id, topic=settings.topic_outcomes,
                             concurrency=settings.delivery_concurrency)
                    self.ready_flag.set()
                    await self._consume(consumer, stop)
            finally:
                self.ready_flag.clear()
                stop.set()
                # stop() does not revoke: finish calls in flight and commit here.
                await self.on_partitions_revoked(list(self.lanes))
                for task in workers:
                    task.cancel()
                committer.cancel()
                await asyncio.gather(*workers, committer, return_exceptions=True)
                log.info("deliverer stopped", **self.counts)
        finally:
            if self._owns_client and self.client is not None:
                await self.client.aclose()

    async def _consume(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self._fatal is not None:
                raise self._fatal
            with kafka.broker_errors("fetch outcomes"):
                batch = await consumer.getmany(timeout_ms=100, max_records=self.settings.batch_max_records)
            for tp, records in batch.items():
                if self.metrics is not None:
                    observe_lag(self.metrics, consumer, self.group_id, tp, records[-1].offset + 1)
                lane = self.lanes.get(tp)
                if lane is None or lane.revoked:
                    if tp in consumer.assignment():
                        consumer.seek(tp, records[0].offset)  # rewind, never drop
                    continue
                for record in records:
                    try:
                        job = lane.add(record)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        # The processor validates what it writes; a foreign
                        # record here is logged and skipped, never retried.
                        log.error("undecodable outcome skipped", partition=tp.partition, offset=record.offset, error=str(exc))
                        lane.work[record.offset] = None
                        continue
                    if job is not None:
                        self.ready.put_nowait(job)
