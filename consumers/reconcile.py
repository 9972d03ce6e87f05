"""``invoice-sm reconcile``: gather the evidence, let the domain judge, enqueue repairs.

The judgement (the four views compared, the kinds of difference, what a
repair does and when it is refused) is ``domain.reconcile``, pure. This
module only carries it out:

1. **rebuild**: ``consumers.replay.replay`` of ``invoice.events`` from the
   beginning, through the processor's own decisions;
2. **read** ``invoice.state``, ``invoice.deliveries`` and ``invoice.outcomes``
   to their ends, and the deliverer's waiting room
   (``invoice.deliveries.waiting``, through ``adapters.waiting_room``);
   ``EvidenceIndex`` turns their records into the domain's ``Evidence``, one
   per invoice (waiting deliveries are reported, not counted as differences);
3. **ask WeChat**, when it can be asked (``--wechat-sim-url``:
   ``adapters.wechat_sim_client``, one request per card);
4. ``domain.reconcile.build_report``;
5. with ``--repair``, **write** one ``invoice.status.repair`` outcome per
   planned repair to ``invoice.outcomes``, keyed by invoice, to the
   partition of the invoice's state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import msgspec
import structlog

from adapters import kafka, partition_reader, topics, waiting_room, wire
from adapters.metrics import NULL_METRICS, Metrics
from adapters.settings import Settings, env_name
from adapters.wechat_sim_client import CardQuery, card_statuses
from consumers.render import progress_reporter
from consumers.replay import ReplayResult, replay
from domain.errors import ConfigurationError
from domain.model import InvoiceState, invoice_key
from domain.reconcile import (
    DIFFERENCE_KINDS,
    Accepted,
    Evidence,
    FinalDelivery,
    ReconcileReport,
    RepairPlan,
    WaitingDelivery,
    build_report,
)
from domain.status import Origin, OutcomeType, ReimburseStatus

__all__ = ["DIFFERENCE_KINDS", "EvidenceIndex", "ReconcileReport", "reconcile", "repair_outcome"]

log = structlog.get_logger("invoice_sm.reconcile")

REPAIR_SOURCE = "/invoice-sm/reconcile"
#: The ``event_type`` a repair outcome names: no upstream event asked for it.
REPAIR_EVENT_TYPE = "invoice.reconcile.repair"
#: Below this many cards, asking WeChat is quick enough to need no progress bar.
_PROGRESS_FROM_CARDS = 1000


class _Record(Protocol):
    partition: int
    key: bytes | None
    value: bytes | None


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EvidenceIndex:
    """Builds the domain's ``Evidence`` per invoice from records of each topic.

    Records of one topic must be added in topic order per partition (later
    wins); topics may be interleaved. A record that does not decode is
    counted in ``undecodable`` by topic, and otherwise ignored.
    """

    def __init__(self) -> None:
        self.evidence: dict[str, Evidence] = {}
        self.undecodable: dict[str, int] = {}

    def _get(self, key: str) -> Evidence:
        ev = self.evidence.get(key)
        if ev is None:
            ev = self.evidence[key] = Evidence(key)
        return ev

    def _bad(self, topic: str) -> None:
        self.undecodable[topic] = self.undecodable.get(topic, 0) + 1

    def add_rebuilt(self, partition: int, state: InvoiceState) -> None:
        ev = self._get(state.key)
        ev.rebuilt, ev.rebuilt_partition = state, partition

    def add_state_record(self, record: _Record) -> None:
        if record.key is None:
            self._bad("state")
            return
        ev = self._get(record.key.decode("utf-8", "replace"))
        if record.value is None:  # a tombstone: the live state was deleted
            ev.live, ev.live_partition, ev.live_error = None, None, None
            return
        try:
            ev.live, ev.live_error = wire.decode_state(record.value), None
        except msgspec.DecodeError as exc:
            ev.live, ev.live_error = None, f"live record does not decode: {exc}"
        ev.live_partition = record.partition

    def add_delivery_record(self, record: _Record) -> None:
        if not record.value:
            return
        try:
            d = wire.decode_delivery(record.value)
        except msgspec.DecodeError:
            self._bad("deliveries")
            return
        self._get(invoice_key(d.card_id, d.code)).deliveries.append(
            FinalDelivery(d.idempotency_key, d.version, d.reimburse_status, d.result, d.errcode, d.errmsg, d.repair)
        )

    def add_outcome_record(self, record: _Record) -> None:
        if not record.value:
            return
        try:
            outcome = wire.decode_outcome(record.value)
        except msgspec.DecodeError:
            self._bad("outcomes")
            return
        data = outcome.data
        if outcome.type == OutcomeType.ACCEPTED.value:
            self._get(invoice_key(data.card_id, data.code)).accepted[data.version] = Accepted(
                data.version, data.to_status, _parse_time(data.processed_at), Origin(data.origin)
            )
        elif outcome.type == OutcomeType.REPAIR.value and data.idempotency_key:
            self._get(invoice_key(data.card_id, data.code)).repairs.add(data.idempotency_key)

    def add_waiting(self, partition: int, entry: wire.WaitingEntry) -> None:
        """A live entry of the waiting room (as ``waiting_room.read_rooms`` leaves them)."""
        self._get(invoice_key(entry.card_id, entry.code)).waiting.append(
            WaitingDelivery(
                idempotency_key=entry.idempotency_key,
                version=entry.version,
                reimburse_status=entry.reimburse_status,
                appid=entry.appid,
                reason=entry.reason,
                waiting_since=datetime.fromtimestamp(entry.waiting_since, UTC),
                resume_at=datetime.fromtimestamp(entry.resume_at, UTC),
                attempts=entry.attempts,
                partition=partition,
                repair=entry.repair,
            )
        )


def repair_outcome(plan: RepairPlan, now: str) -> wire.OutcomeEvent:
    """The ``invoice.status.repair`` outcome that carries ``plan`` to the deliverer."""
    return wire.OutcomeEvent(
        specversion="1.0",
        id=f"repair:{plan.idempotency_key}@{now}",
        source=REPAIR_SOURCE,
        type=OutcomeType.REPAIR.value,
        time=now,
        subject=plan.key,
        data=wire.OutcomeData(
            card_id=plan.card_id,
            code=plan.code,
            appid=plan.appid,
            event_id=f"repair:{plan.idempotency_key}",
            event_type=REPAIR_EVENT_TYPE,
            from_status=plan.from_status,
            requested_status=plan.to_status,
            version=plan.version,
            processed_at=now,
            to_status=plan.to_status,
            reason=str(plan.reason),
            trigger=plan.trigger,
            idempotency_key=plan.idempotency_key,
        ),
    )


async def _read_into(settings: Settings, topic: str, add: Callable[[_Record], None]) -> None:
    async for records in partition_reader.read_to_end(settings, topic):
        for record in records:
            add(record)


async def _read_waiting(settings: Settings, index: EvidenceIndex) -> None:
    """Every partition of the waiting room as of its end (none if the topic does not exist yet)."""
    partitions = await kafka.partitions_of(settings, settings.topic_delivery_waiting)
    rooms = await waiting_room.read_rooms(settings, partitions)
    for partition, room in sorted(rooms.items()):
        for entry in room.entries.values():
            index.add_waiting(partition, entry)


async def _ask_wechat(base_url: str, cards: list[CardQuery], *, progress: bool) -> dict[str, ReimburseStatus | None]:
    bar = progress_reporter(progress and len(cards) > _PROGRESS_FROM_CARDS, len(cards), "wechat")
    try:
        return await card_statuses(base_url, cards, on_answer=lambda: bar.advance(1, 1))
    finally:
        bar.close()


async def enqueue_repairs(settings: Settings, plans: Iterable[RepairPlan], now: str) -> int:
    """Write one repair outcome per plan to the outcomes topic, keyed by invoice,
    to the partition of the invoice's state (modulo the outcomes topic's size)."""
    plans = list(plans)
    if not plans:
        return 0
    partitions = await kafka.partitions_of(settings, settings.topic_outcomes)
    if not partitions:
        raise ConfigurationError(env_name("topic_outcomes"), f"topic {settings.topic_outcomes!r} does not exist")
    producer = kafka.new_producer(settings)
    async with kafka.started(producer):
        futures = []
        for plan in plans:
            value = wire.encode(repair_outcome(plan, now))
            wire.validate_produced(value, "outcome")
            with kafka.broker_errors(f"write {settings.topic_outcomes}"):
                futures.append(
                    await producer.send(
                        settings.topic_outcomes,
                        key=plan.key.encode(),
                        value=value,
                        partition=plan.partition % len(partitions),
                    )
                )
        with kafka.broker_errors(f"write {settings.topic_outcomes}"):
            await asyncio.gather(*futures)
    for plan in plans:
        log.info(
            "repair_enqueued",
            invoice=plan.key,
            idempotency_key=plan.idempotency_key,
            reason=str(plan.reason),
            from_status=str(plan.from_status),
            to_status=str(plan.to_status),
        )
    return len(plans)


async def reconcile(
    settings: Settings,
    *,
    wechat_sim_url: str | None = None,
    repair: bool = False,
    grace_s: float = 30.0,
    state_dir: Path | None = None,
    progress: bool = True,
    replayed: ReplayResult | None = None,
    metrics: Metrics = NULL_METRICS,
    force: bool = False,
) -> ReconcileReport:
    """Replay, read the live topics, ask WeChat if it can be asked, compare.

    ``replayed`` reuses a replay already done (it must be from the
    beginning); otherwise one is run (in memory, or on disk under
    ``state_dir``) and closed here. With ``repair`` the repair outcomes are
    enqueued (``report.enqueued``). Every kind's count is added to
    ``metrics.divergences_total{kind}``, zero included, so the series exist
    from the first run on. A repair from a history whose beginning is gone
    is refused unless ``force``.
    """
    if repair:
        await topics.refuse_truncated_history(settings, "reconcile --repair", force=force)
    started = time.perf_counter()
    now = datetime.now(UTC)
    own_replay = replayed is None
    result = (
        replayed
        if replayed is not None
        else await replay(settings, in_memory=state_dir is None, state_dir=state_dir, progress=progress)
    )
    try:
        index = EvidenceIndex()
        for partition, state in result.store.items():
            index.add_rebuilt(partition, state)
        replay_summary = result.summary()
    finally:
        if own_replay:
            result.close()
    await asyncio.gather(
        _read_into(settings, settings.topic_state, index.add_state_record),
        _read_into(settings, settings.topic_deliveries, index.add_delivery_record),
        _read_into(settings, settings.topic_outcomes, index.add_outcome_record),
        _read_waiting(settings, index),
    )
    unchecked = 0
    if wechat_sim_url:
        cards: list[CardQuery] = []
        for ev in index.evidence.values():
            truth = ev.truth
            if truth is None:
                continue
            appid = truth.appid or settings.wechat_appid
            if not appid:
                unchecked += 1
                continue
            cards.append((ev.key, appid, ev.card_id, ev.code))
        statuses = await _ask_wechat(wechat_sim_url, cards, progress=progress)
        for key, status in statuses.items():
            ev = index.evidence[key]
            ev.wechat_asked, ev.wechat = True, status
    report = build_report(index.evidence.values(), now=now, grace_s=grace_s, default_appid=settings.wechat_appid or "")
    report.wechat_asked = bool(wechat_sim_url)
    report.wechat_url = wechat_sim_url
    report.wechat_unchecked = unchecked
    report.undecodable = dict(index.undecodable)
    report.replay = replay_summary
    report.repair_requested = repair
    for kind, n in report.counts.items():
        metrics.divergences_total.labels(kind=kind).inc(n)
    if repair:
        report.enqueued = await enqueue_repairs(settings, report.repairs, _stamp(datetime.now(UTC)))
    report.seconds = time.perf_counter() - started
    log.info(
        "reconcile_finished",
        invoices=report.invoices,
        differences=len(report.differences),
        enqueued=report.enqueued,
        pending=len(report.pending),
        waiting=report.waiting.deliveries,
        seconds=round(report.seconds, 3),
        **{k: n for k, n in report.counts.items() if n},
    )
    return report
