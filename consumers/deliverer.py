"""``invoice-sm deliver``: accepted outcomes -> WeChat ``updatestatus``.

A consumer group reads ``invoice.outcomes`` (read_committed). Accepted
outcomes (and ``invoice.status.repair`` records from ``reconcile --repair``)
become deliveries; every other outcome is finished work at once, and a
WeChat-reported status is never echoed back.

The parts, each in its own module:

- ``domain.delivery``: the policy, a pure function from a call's failure to
  the next step (final result, short retry, or wait) — see there for every
  errcode class;
- ``consumers.delivery_lane``: one partition's bookkeeping (per-invoice
  queues in version order, the commit point, waiting jobs, the ledger);
- ``consumers.delivery_calls``: account gates (rate limit, parking), the
  ready queue, supervised workers that call WeChat and carry steps out;
- ``consumers.delivery_commit``: taking a partition over and the commit
  transaction (delivery records, waiting-room entries, offsets);
- this module: the consumer group, rebalances, start and shutdown order.

Tenant isolation. A delivery that cannot proceed for a reason belonging to
its account (45009, 45011, credentials refused or missing) or after a long
backoff leaves the commit path for the waiting room (a compacted changelog,
``invoice.deliveries.waiting``), with its invoice's later versions behind
it; other invoices and other tenants on the same partition are committed as
they finish. Waiting work survives restarts and moves (the room is restored
on takeover). An appid without credentials ends after
``INVOICE_SM_DELIVERY_NO_CREDENTIALS_TIMEOUT_S`` with ``failed``/``no_credentials``.

Shutdown order (SIGTERM, or a partition revoked): no new call starts; calls
in flight end (bounded by the HTTP timeout); finished work and a ``closed``
marker are committed; only then does the consumer leave the group. So a
rolling restart never lets the next owner call an invoice whose call is
still in flight here.

Takeover rule (kill -9, fencing): a new owner that finds no ``closed``
marker makes no call on that partition for ``INVOICE_SM_DELIVERY_TAKEOVER_WAIT_S``
(default twice the WeChat timeout plus a second: the longest a dead owner's
call can still be in flight), and treats every uncommitted outcome as
possibly applied. It is kept by waiting rather than checked at start, so
no pair of timeouts (session, HTTP) has to be tuned against the other.

Policy after a conflict or failure: the invoice's later versions are still
delivered in order. WeChat judges each against the card's real status, so a
later version may bring the card back in step; ``reconcile`` reports what
stays out of step and ``reconcile --repair`` fixes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

import msgspec
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from adapters import kafka, ownership, topics, wire
from adapters.metrics import Metrics, NullMetrics
from adapters.settings import Settings, env_name
from consumers import delivery_commit
from consumers.delivery_calls import Calls, Workers
from consumers.delivery_lane import Job, PartitionLane
from consumers.processor import observe_lag
from domain.delivery import WaitReason
from domain.errors import ConfigurationError, CredentialError, WeChatError
from domain.model import idempotency_key, invoice_key
from domain.status import DELIVERABLE_OUTCOME_TYPES, Origin, OutcomeType

log = structlog.get_logger("invoice_sm.deliverer")

#: Beyond the calls in flight, what a revocation needs to commit (a transaction).
REVOKE_COMMIT_MARGIN_S = 30.0


class Deliverer(ConsumerRebalanceListener):
    """The ``deliver`` command: a consumer group, partition lanes, workers."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None, client: Any = None) -> None:
        self.settings = settings
        self.group_id = settings.deliverer_group_id
        self.metrics: Metrics = metrics if metrics is not None else NullMetrics()
        self.default_appid = settings.wechat_appid or ""
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.lanes: dict[TopicPartition, PartitionLane] = {}
        self.partitions: dict[str, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.client = client
        self._owns_client = client is None
        self.calls: Calls | None = None
        self.ready_flag = asyncio.Event()
        self._fatal: BaseException | None = None
        #: lanes being closed by a revocation (the shutdown waits for them)
        self._closing: set[asyncio.Future[None]] = set()
        self._stopping = False

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.calls.counts) if self.calls is not None else {}

    # -- rebalance

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        gone = [self.lanes.pop(tp) for tp in revoked if tp in self.lanes]
        # Tracked: a shutdown that starts meanwhile finds these lanes gone from
        # ``self.lanes`` and must still wait for their calls and commits before
        # it stops the workers (a cancelled call may still land at WeChat).
        closing = asyncio.ensure_future(self._close(gone))
        self._closing.add(closing)
        try:
            await asyncio.shield(closing)
        finally:
            if closing.done():
                self._closing.discard(closing)
        if gone:
            log.info("deliverer_partitions_revoked", partitions=sorted(lane.partition for lane in gone))
        self._gauge_assigned()

    async def _close(self, lanes: list[PartitionLane]) -> None:
        deliveries = self.partitions.get(self.settings.topic_deliveries, 1)
        await asyncio.gather(
            *(delivery_commit.close(self.settings, self.group_id, lane, deliveries, self.instance) for lane in lanes)
        )

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        new = [tp for tp in assigned if tp not in self.lanes]
        if not new or self._stopping:
            # A rebalance that completes while the consumer is leaving: taking
            # the partitions would write ``open`` markers nobody closes (the
            # next owner would wait as after a crash) and leak their producers.
            return
        try:
            assert self.consumer is not None and self.calls is not None
            calls = self.calls
            taken = await delivery_commit.take_over(self.settings, self.group_id, new, self.consumer, self.instance)

            def register(tp: TopicPartition) -> None:
                lane = self.lanes[tp] = taken.lanes[tp]
                room = taken.rooms[lane.partition]
                lane.done_in_room = room.done
                for head in lane.restore(list(room.entries.values())):
                    calls.resume(head)

            ownership.seek(self.consumer, taken.committed, register)
        except BaseException as exc:
            self._fatal = exc
            raise
        log.info("deliverer_partitions_assigned", partitions=sorted(tp.partition for tp in new))
        self._gauge_assigned()

    def _gauge_assigned(self) -> None:
        self.metrics.assigned_partitions.labels(role="deliverer").set(len(self.lanes))

    # -- intake

    def add(self, lane: PartitionLane, record: ConsumerRecord) -> Job | None:
        """Register a consumed outcome; returns the job if it can be called now."""
        outcome = wire.decode_outcome(record.value) if record.value else None
        if (
            outcome is None
            or outcome.type not in DELIVERABLE_OUTCOME_TYPES
            or outcome.data.to_status is None
            or outcome.data.origin == Origin.WECHAT.value
        ):
            lane.skip(record.offset)
            return None
        data = outcome.data
        to_status = data.to_status  # not None: checked above
        assert to_status is not None
        key = data.idempotency_key or idempotency_key(data.card_id, data.code, data.version)
        if lane.already_recorded(record.offset, key, invoice_key(data.card_id, data.code)):
            return None
        known = lane.known_record(key)
        if known is not None:
            # Finished before a restart, not committed: reuse the record, no call.
            lane.reuse(record.offset, known, key, invoice_key(data.card_id, data.code))
            return None
        job = Job(
            lane=lane,
            offset=record.offset,
            outcome_id=outcome.id,
            card_id=data.card_id,
            code=data.code,
            appid=data.appid or self.default_appid,
            status=to_status,
            version=data.version,
            key=key,
            repair=outcome.type == OutcomeType.REPAIR.value,
            possibly_applied=record.offset < lane.possibly_applied_below,
        )
        return lane.add(job)

    # -- committer

    async def committer(self, stop: asyncio.Event) -> None:
        """Commit every lane each interval until ``stop``.

        The shutdown does not cancel it: cancelling ``commit`` between
        ``begin_transaction`` and ``commit_transaction`` would leave the
        lane's producer in a transaction, and the ``closed`` marker commit
        of the shutdown would then fail. Instead it checks ``stop`` between
        commits and returns; the shutdown awaits that, and ``close`` commits
        whatever is left.
        """
        interval = self.settings.delivery_commit_interval_ms / 1000
        deliveries = lambda: self.partitions.get(self.settings.topic_deliveries, 1)  # noqa: E731  # read after start
        calls = self.calls
        assert calls is not None
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            for lane in list(self.lanes.values()):
                if stop.is_set():
                    return
                if lane.calling:
                    await delivery_commit.commit(self.settings, self.group_id, lane, deliveries())
                    released, lane.released = lane.released, []
                    for job in released:
                        calls.resume(job)
                    self._flow_control(lane)
            self._gauges()

    async def close_lanes(self, stop: asyncio.Event, committer: asyncio.Task[None]) -> None:
        """The shutdown's commits: stop the committer, then close every lane
        (calls end, their work and the ``closed`` marker are committed).

        The committer is not cancelled: a commit in progress ends (committed
        or aborted, bounded by the client's timeouts) and the loop returns
        before the next one (see ``committer``). ``asyncio.wait``, unlike
        ``gather``, does not pass a cancellation of this shutdown on to it.
        Lanes a concurrent revocation is closing are waited for too: stopping
        the workers under them would cancel calls in flight, and their
        ``closed`` marker would let the next owner call at once.
        """
        stop.set()
        self._stopping = True
        await asyncio.wait({committer})
        if not committer.cancelled() and committer.exception() is not None:
            log.error("deliverer_committer_failed", error=repr(committer.exception()))
        gone, self.lanes = list(self.lanes.values()), {}
        await self._close(gone)
        # Lanes a revocation is closing right now: the workers stop only after them.
        while self._closing:
            await asyncio.wait(set(self._closing))
            self._closing = {f for f in self._closing if not f.done()}

    def _gauges(self) -> None:
        lanes = list(self.lanes.values())
        self.metrics.delivery_queue_depth.set(sum(lane.unfinished for lane in lanes))
        waiting: dict[str, int] = {}
        for lane in lanes:
            for reason, n in lane.waiting_by_reason().items():
                waiting[reason] = waiting.get(reason, 0) + n
        for reason in WaitReason:
            self.metrics.deliveries_waiting.labels(reason=reason.value).set(waiting.get(reason.value, 0))

    def _flow_control(self, lane: PartitionLane) -> None:
        """Pause fetching a partition whose held outcomes pile up (an outage of
        every account, or a waiting room past its memory bound); resume when
        it drains."""
        if self.consumer is None or lane.tp not in self.consumer.assignment():
            return
        held = len(lane.work) >= self.settings.delivery_max_pending
        room = len(lane.waiting) >= self.settings.delivery_max_waiting
        if not lane.paused and (held or room):
            self.consumer.pause(lane.tp)
            lane.paused = True
            log.warning("deliverer_partition_paused", partition=lane.partition, held=len(lane.work), waiting=len(lane.waiting))
        elif (
            lane.paused
            and len(lane.work) < self.settings.delivery_max_pending // 2
            and len(lane.waiting) < self.settings.delivery_max_waiting // 2
        ):
            self.consumer.resume(lane.tp)
            lane.paused = False

    # -- start, run, stop

    def _client(self) -> Any:
        from adapters.wechat import WeChatClient

        metrics = self.metrics

        def refreshed(appid: str, mode: str) -> None:
            metrics.token_refreshes_total.labels(appid=appid, mode=mode).inc()

        def refresh_failed(appid: str, mode: str) -> None:
            metrics.token_refresh_failures_total.labels(appid=appid, mode=mode).inc()

        client = WeChatClient.from_settings(self.settings, on_refresh=refreshed)
        client.tokens.on_refresh_failure = refresh_failed
        if self.default_appid:
            # At zero from the start, so that the first failure is an increase an alert sees.
            metrics.token_refresh_failures_total.labels(appid=self.default_appid, mode=client.tokens.mode)
        return client

    async def _check_credentials(self) -> None:
        """A refused secret stops the start; an unreachable WeChat does not."""
        if not self.default_appid:
            return
        try:
            await self.client.tokens.get(self.default_appid)
        except CredentialError as exc:
            raise ConfigurationError(
                env_name("wechat_secret"), f"WeChat refused the credentials of {self.default_appid} (errcode {exc.errcode})"
            ) from None
        except WeChatError as exc:
            log.warning("wechat_unreachable_at_start", error=type(exc).__name__)

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        if self.client is None:
            self.client = self._client()
        try:
            await self._check_credentials()
            self.partitions = await topics.ensure_topics(settings)
            self.calls = Calls(settings, self.client, self.metrics)
            consumer = kafka.new_consumer(
                settings,
                group_id=self.group_id,
                session_timeout_ms=settings.kafka_session_timeout_ms,
                heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 5, 500),
                # A revocation waits for the calls in flight (shutdown order), up to
                # the takeover wait; aiokafka's default (the session timeout) would
                # expel a member still waiting, fence its lanes and have the next
                # owner repeat the calls it finished but could not commit.
                rebalance_timeout_ms=max(
                    settings.kafka_session_timeout_ms,
                    int((delivery_commit.takeover_wait_s(settings) + REVOKE_COMMIT_MARGIN_S) * 1000),
                ),
                # read_committed: a fetch parked at the broker is not woken when a transaction
                # commits, so aiokafka's default 500 ms wait became delivery latency.
                fetch_max_wait_ms=50,
            )
            self.consumer = consumer
            consumer.subscribe([settings.topic_outcomes], listener=self)
            feed = await self._follow_component_feed(stop)
            workers = Workers(self.calls, settings.delivery_concurrency)
            committer = asyncio.create_task(self.committer(stop))
            try:
                async with kafka.started(consumer):
                    try:
                        log.info(
                            "deliverer_started",
                            group=self.group_id,
                            topic=settings.topic_outcomes,
                            concurrency=settings.delivery_concurrency,
                        )
                        self.ready_flag.set()
                        await self._consume(consumer, stop)
                    finally:
                        # Shutdown order: calls end and work is committed while we
                        # still own the partitions; leaving the group comes after
                        # (kafka.started's exit), so no next owner overlaps a call.
                        self.ready_flag.clear()
                        await self.close_lanes(stop, committer)
                        await workers.stop()
                        log.info("deliverer_stopped", **self.counts)
            finally:
                # Still running here only if the consumer never started (no
                # lane to commit) or this shutdown was itself cancelled.
                committer.cancel()
                await workers.stop()
                if feed is not None:
                    feed.cancel()
                    await asyncio.gather(feed, return_exceptions=True)
        finally:
            if self._owns_client and self.client is not None:
                await self.client.aclose()

    async def _follow_component_feed(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        """Component mode: every instance follows the verify tickets and
        authorization events the webhook writes, so token refresh keeps
        working on all of them after the configured ticket expires."""
        tokens: Any = getattr(self.client, "tokens", None)
        if self.settings.wechat_token_mode != "component" or not hasattr(tokens, "set_verify_ticket"):  # noqa: S105  # a mode name
            return None
        from adapters.component_feed import follow_component_feed

        caught_up = asyncio.Event()
        task = asyncio.create_task(follow_component_feed(self.settings, tokens, stop, caught_up=caught_up))
        with contextlib.suppress(asyncio.TimeoutError):
            # Before the first delivery: never start on an expired configured ticket.
            await asyncio.wait_for(caught_up.wait(), 30)
        return task

    async def _consume(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        assert self.calls is not None
        ready = self.calls.ready
        while not stop.is_set():
            if self._fatal is not None:
                raise self._fatal
            with kafka.broker_errors("fetch outcomes"):
                batch = await consumer.getmany(timeout_ms=100, max_records=self.settings.batch_max_records)
            for tp, records in batch.items():
                observe_lag(self.metrics, consumer, self.group_id, tp, records[-1].offset + 1)
                lane = self.lanes.get(tp)
                if lane is None or not lane.calling:
                    if tp in consumer.assignment():
                        consumer.seek(tp, records[0].offset)  # rewind, never drop
                    continue
                for record in records:
                    try:
                        job = self.add(lane, record)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        # The processor validates what it writes; a foreign
                        # record here is logged and skipped, never retried.
                        log.error("outcome_undecodable_skipped", partition=tp.partition, offset=record.offset, error=str(exc))
                        lane.skip(record.offset)
                        continue
                    if job is not None:
                        ready.put_nowait(job)
