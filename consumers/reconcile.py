"""``invoice-sm reconcile``: find where state, deliveries and WeChat disagree.

Per invoice, four views are compared:

(a) the **rebuilt** state: ``replay`` of ``invoice.events`` from the
    beginning, through the processor's own decision code; it is the truth;
(b) the **live** state: the latest ``invoice.state`` record per key;
(c) the **deliveries**: final records in ``invoice.deliveries``, against the
    accepted outcomes in ``invoice.outcomes`` that asked for them;
(d) **WeChat**, when it can be asked (``--wechat-sim-url``: the simulator's
    control API, one ``GET /_sim/cards/{appid}/{card_id}/{code}`` per card).

Each disagreement is a ``Difference`` of one of ``DIFFERENCE_KINDS``. The
diffing (``examine``, ``build_report``) is pure: it works on ``Evidence``
gathered by ``EvidenceIndex`` from records, so the unit tests run it on
in-memory data.

``--repair`` enqueues, for each invoice whose WeChat status (or, when WeChat
cannot be asked, last delivered status) is not the rebuilt status, one
``invoice.status.repair`` outcome asking the deliverer to push the right
status. Its idempotency key, ``{card_id}/{code}#{version}~repair~{OBSERVED}``,
names the divergence, so a second ``--repair`` recognises a repair still
pending (in ``invoice.outcomes`` without a final delivery record) and sends
nothing for it. A card WeChat would refuse to move (out of a terminal
status, INIT straight to CLOSURE, or a repair WeChat already refused with a
conflict) is reported ``unrepairable`` instead of enqueued.

Outcomes accepted less than ``grace_s`` ago without a final delivery record
are *in flight*, not missing: the deliverer is working on them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import msgspec
import structlog

from adapters import kafka, topics, wire
from adapters.settings import Settings
from consumers.replay import (
    ReplayResult,
    progress_reporter,
    replay,
    same_state,
    state_differences,
)
from domain.errors import ConfigurationError, InvoiceSmError
from domain.lifecycle import LEGAL_MOVES
from domain.model import InvoiceState, idempotency_key, invoice_key
from domain.status import TERMINAL_STATUSES, ReimburseStatus

log = structlog.get_logger("invoice_sm.reconcile")

#: Every kind of difference, in the order the report lists them.
DIFFERENCE_KINDS: dict[str, str] = {
    "state_missing": "invoice.state has no record of an invoice that the events (or deliveries) know",
    "state_orphan": "invoice.state has an invoice that no event in invoice.events produced",
    "state_mismatch": "the live state differs from the rebuilt one (status, version, appid or duplicate window)",
    "delivery_missing": "an accepted version has no final delivery record, or the last delivered status is not the state's",
    "delivery_failed": "the delivery of the current version ended in conflict or failed",
    "wechat_missing": "WeChat has no record of a card whose state has moved",
    "wechat_mismatch": "WeChat's card status is not the state's",
    "unrepairable": "WeChat must move the card but refuses that move; no repair is enqueued",
}

SUCCESS = frozenset({"delivered", "already_applied"})
REPAIR_SOURCE = "/invoice-sm/reconcile"
REPAIR_EVENT_TYPE = "invoice.reconcile.repair"
#: Difference kinds a repair is enqueued for, by priority (the repair's ``reason``).
_REPAIR_REASONS = ("wechat_mismatch", "wechat_missing", "delivery_failed", "delivery_missing")

RepairStatus = Literal["none", "enqueue", "pending", "unrepairable"]


class WeChatViewError(InvoiceSmError):
    """WeChat (the simulator's control API) could not be asked."""

    retriable = True


def short(status: ReimburseStatus | str | None) -> str:
    """``INVOICE_REIMBURSE_LOCK`` -> ``LOCK``."""
    if status is None:
        return "NONE"
    return str(status).removeprefix("INVOICE_REIMBURSE_")


def repair_key(card_id: str, code: str, version: int, observed_short: str) -> str:
    """The idempotency key of a repair: stable for the same divergence."""
    return f"{idempotency_key(card_id, code, version)}~repair~{observed_short}"


def _describe(state: InvoiceState | None) -> str | None:
    return None if state is None else f"{short(state.status)} v{state.version}"


# ------------------------------------------------------------------ evidence


@dataclass(frozen=True, slots=True)
class Accepted:
    """An accepted outcome: the deliverer owes a final record for it."""

    version: int
    to_status: ReimburseStatus | None
    processed_at: datetime | None


@dataclass
class Evidence:
    """Everything known about one invoice, from every source."""

    key: str
    rebuilt: InvoiceState | None = None
    rebuilt_partition: int | None = None
    live: InvoiceState | None = None
    live_partition: int | None = None
    live_error: str | None = None
    accepted: dict[int, Accepted] = field(default_factory=dict)
    #: Final delivery records (repairs included) in topic order.
    deliveries: list[wire.DeliveryRecord] = field(default_factory=list)
    #: Repair outcomes by idempotency key.
    repairs: dict[str, wire.OutcomeData] = field(default_factory=dict)
    wechat_asked: bool = False
    wechat: ReimburseStatus | None = None

    @property
    def card_id(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def code(self) -> str:
        return self.key.split("/", 1)[-1]

    @property
    def truth(self) -> InvoiceState | None:
        """What the invoice should be: rebuilt, else (an orphan) the live state."""
        return self.rebuilt if self.rebuilt is not None else self.live

    @property
    def partition(self) -> int | None:
        """Where repair outcomes go: the partition of invoice.state it was found in."""
        return self.live_partition if self.live_partition is not None else self.rebuilt_partition


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


class EvidenceIndex:
    """Builds ``Evidence`` per invoice from records of each topic.

    Records of one topic must be added in topic order per partition (later
    wins); topics may be interleaved.
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
            delivery = wire.decode_delivery(record.value)
        except msgspec.DecodeError:
            self._bad("deliveries")
            return
        self._get(invoice_key(delivery.card_id, delivery.code)).deliveries.append(delivery)

    def add_outcome_record(self, record: _Record) -> None:
        if not record.value:
            return
        try:
            outcome = wire.decode_outcome(record.value)
        except msgspec.DecodeError:
            self._bad("outcomes")
            return
        data = outcome.data
        if outcome.type == "invoice.status.accepted":
            self._get(invoice_key(data.card_id, data.code)).accepted[data.version] = Accepted(
                data.version, data.to_status, _parse_time(data.processed_at)
            )
        elif outcome.type == "invoice.status.repair" and data.idempotency_key:
            self._get(invoice_key(data.card_id, data.code)).repairs[data.idempotency_key] = data


# ------------------------------------------------------------------ verdicts


@dataclass(frozen=True, slots=True)
class Difference:
    kind: str
    key: str
    appid: str
    partition: int | None
    expected: str | None
    observed: str | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        card_id, _, code = self.key.partition("/")
        return {
            "kind": self.kind,
            "key": self.key,
            "card_id": card_id,
            "code": code,
            "appid": self.appid,
            "partition": self.partition,
            "expected": self.expected,
            "observed": self.observed,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class RepairPlan:
    """One ``invoice.status.repair`` outcome to enqueue."""

    card_id: str
    code: str
    appid: str
    partition: int
    version: int
    from_status: ReimburseStatus
    to_status: ReimburseStatus
    observed_short: str
    reason: str

    @property
    def key(self) -> str:
        return invoice_key(self.card_id, self.code)

    @property
    def idempotency_key(self) -> str:
        return repair_key(self.card_id, self.code, self.version, self.observed_short)

    def outcome(self, now: str) -> wire.OutcomeEvent:
        return wire.OutcomeEvent(
            specversion="1.0",
            id=f"repair:{self.idempotency_key}@{now}",
            source=REPAIR_SOURCE,
            type="invoice.status.repair",
            time=now,
            subject=self.key,
            data=wire.OutcomeData(
                card_id=self.card_id,
                code=self.code,
                appid=self.appid,
                event_id=f"repair:{self.idempotency_key}",
                event_type=REPAIR_EVENT_TYPE,
                from_status=self.from_status,
                requested_status=self.to_status,
                version=self.version,
                processed_at=now,
                to_status=self.to_status,
                reason=self.reason,
                trigger=LEGAL_MOVES.get((self.from_status, self.to_status)),
                idempotency_key=self.idempotency_key,
            ),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "appid": self.appid,
            "partition": self.partition,
            "version": self.version,
            "from_status": str(self.from_status),
            "to_status": str(self.to_status),
            "reason": self.reason,
            "idempotency_key": self.idempotency_key,
        }


@dataclass
class Verdict:
    differences: list[Difference] = field(default_factory=list)
    repair: RepairPlan | None = None
    repair_status: RepairStatus = "none"
    in_flight: bool = False


def _refusal(observed: ReimburseStatus, target: ReimburseStatus) -> str:
    if observed in TERMINAL_STATUSES:
        return f"WeChat refuses {short(observed)} -> {short(target)}: {short(observed)} is terminal"
    if (observed, target) == (ReimburseStatus.INIT, ReimburseStatus.CLOSURE):
        return "WeChat refuses INIT -> CLOSURE: the card must be locked first (72039)"
    return f"WeChat refuses {short(observed)} -> {short(target)}"


def examine(ev: Evidence, *, now: datetime, grace_s: float = 30.0, default_appid: str = "") -> Verdict:
    """The differences of one invoice and what a repair would do. Pure.

    ``default_appid`` stands in for a state without one (single-account
    deployments: ``INVOICE_SM_WECHAT_APPID``).
    """
    verdict = Verdict()
    truth = ev.truth
    appid = (truth.appid if truth is not None else "") or default_appid

    def add(kind: str, expected: str | None, observed: str | None, detail: str) -> None:
        verdict.differences.append(Difference(kind, ev.key, appid, ev.partition, expected, observed, detail))

    # (a) against (b): the live state.
    if ev.live_error is not None:
        add("state_mismatch", _describe(ev.rebuilt), None, ev.live_error)
    elif ev.rebuilt is not None and ev.live is None:
        add("state_missing", _describe(ev.rebuilt), None, "no record in invoice.state")
    elif ev.live is not None and ev.rebuilt is None:
        add("state_orphan", None, _describe(ev.live), "no event in invoice.events leads to this state")
    elif ev.live is not None and ev.rebuilt is not None and not same_state(ev.live, ev.rebuilt):
        add("state_mismatch", _describe(ev.rebuilt), _describe(ev.live), "; ".join(state_differences(ev.live, ev.rebuilt)))
    if truth is None:
        if ev.live_error is None:
            add("state_missing", None, None, "known only from invoice.deliveries or invoice.outcomes")
        return verdict

    # (c): the deliveries.
    version, status = truth.version, truth.status
    expected = _describe(truth)
    finals: dict[str, wire.DeliveryRecord] = {}
    last_success: wire.DeliveryRecord | None = None
    repaired_through = 0
    for d in ev.deliveries:
        finals[d.idempotency_key] = d
        if d.result in SUCCESS:
            if last_success is None or d.version >= last_success.version:
                last_success = d
            if d.repair:
                # A repair that reached WeChat settles every version up to its own.
                repaired_through = max(repaired_through, d.version)

    def key_of(v: int) -> str:
        return idempotency_key(ev.card_id, ev.code, v)

    def in_flight(v: int) -> bool:
        accepted = ev.accepted.get(v)
        if accepted is None or accepted.processed_at is None or key_of(v) in finals:
            return False
        return (now - accepted.processed_at).total_seconds() < grace_s

    current_in_flight = version > 0 and in_flight(version)
    verdict.in_flight = current_in_flight
    owed = set(ev.accepted) | ({version} if version > 0 else set())
    missing = sorted(v for v in owed if v > repaired_through and key_of(v) not in finals and not in_flight(v))
    delivered = None if last_success is None else f"{short(last_success.reimburse_status)} v{last_success.version}"

    failed = False
    current = finals.get(key_of(version)) if version > 0 else None
    if current is not None and current.result not in SUCCESS and repaired_through < version:
        failed = True
        add(
            "delivery_failed",
            expected,
            f"{current.result} {current.errcode}",
            f"v{version} {short(current.reimburse_status)}: {current.result} (errcode {current.errcode}: {current.errmsg})",
        )
    if missing:
        add("delivery_missing", expected, delivered, f"no final delivery record for version(s) {missing}")
    elif version > 0 and not failed and not current_in_flight and (
        last_success is None or last_success.reimburse_status is not status
    ):
        add("delivery_missing", expected, delivered, "the last delivered status is not the state's")

    # (d): WeChat.
    if ev.wechat_asked and not current_in_flight:
        if ev.wechat is None and version > 0:
            add("wechat_missing", expected, None, "WeChat has no record of the card")
        elif ev.wechat is not None and ev.wechat is not status:
            add("wechat_mismatch", expected, short(ev.wechat), f"WeChat says {short(ev.wechat)}, state says {short(status)}")

    # The repair.
    if current_in_flight:
        return verdict
    observed: ReimburseStatus | None
    if ev.wechat_asked:
        # A card WeChat has no record of is in INIT, as every new card starts.
        observed = ev.wechat if ev.wechat is not None else ReimburseStatus.INIT
        observed_short = short(ev.wechat)
        needs = observed is not status
    else:
        observed = last_success.reimburse_status if last_success is not None else None
        observed_short = short(observed) if observed is not None else "UNKNOWN"
        needs = version > 0 and observed is not status
    if not needs:
        return verdict
    kinds = [d.kind for d in verdict.differences]
    reason = next((k for k in _REPAIR_REASONS if k in kinds), "wechat_mismatch" if ev.wechat_asked else "delivery_missing")

    def unrepairable(why: str) -> Verdict:
        add("unrepairable", expected, observed_short, why)
        verdict.repair_status = "unrepairable"
        return verdict

    if version == 0:
        return unrepairable("the service never moved this card (version 0): there is no accepted status to deliver")
    if observed is not None and (observed, status) not in LEGAL_MOVES:
        return unrepairable(_refusal(observed, status))
    plan = RepairPlan(
        card_id=ev.card_id,
        code=ev.code,
        appid=appid,
        partition=ev.partition or 0,
        version=version,
        from_status=observed if observed is not None else status,
        to_status=status,
        observed_short=observed_short,
        reason=reason,
    )
    verdict.repair = plan
    previous = finals.get(plan.idempotency_key)
    if plan.idempotency_key in ev.repairs and previous is None:
        verdict.repair_status = "pending"
    elif previous is not None and previous.result == "conflict":
        verdict.repair = None
        return unrepairable(f"WeChat refused this repair before (errcode {previous.errcode}: {previous.errmsg})")
    else:
        verdict.repair_status = "enqueue"
    return verdict


# ------------------------------------------------------------------ report


@dataclass
class ReconcileReport:
    """The outcome of a reconcile, for people (``print_report``) and machines (``to_json``)."""

    invoices: int
    differences: list[Difference]
    repairs: list[RepairPlan]
    pending: list[RepairPlan]
    in_flight: int
    checked_at: str
    wechat_asked: bool = False
    wechat_url: str | None = None
    wechat_unchecked: int = 0
    undecodable: dict[str, int] = field(default_factory=dict)
    replay: dict[str, Any] | None = None
    repair_requested: bool = False
    enqueued: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.differences

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(DIFFERENCE_KINDS, 0)
        for d in self.differences:
            counts[d.kind] = counts.get(d.kind, 0) + 1
        return counts

    def by_kind(self) -> dict[str, list[Difference]]:
        out: dict[str, list[Difference]] = {k: [] for k in DIFFERENCE_KINDS}
        for d in self.differences:
            out.setdefault(d.kind, []).append(d)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "checked_at": self.checked_at,
            "invoices": self.invoices,
            "differences_total": len(self.differences),
            "counts": self.counts,
            "kinds": DIFFERENCE_KINDS,
            "differences": [d.to_json() for d in self.differences],
            "in_flight": self.in_flight,
            "repair": {
                "requested": self.repair_requested,
                "enqueued": self.enqueued,
                "to_enqueue": [p.to_json() for p in self.repairs],
                "pending": [p.to_json() for p in self.pending],
                "unrepairable": self.counts.get("unrepairable", 0),
            },
            "wechat": {"asked": self.wechat_asked, "url": self.wechat_url, "unchecked": self.wechat_unchecked},
            "undecodable_records": self.undecodable,
            "replay": self.replay,
            "seconds": round(self.seconds, 3),
        }


def build_report(
    evidence: Iterable[Evidence], *, now: datetime, grace_s: float = 30.0, default_appid: str = ""
) -> ReconcileReport:
    """Examine every invoice. Pure: the unit tests call it on hand-made evidence."""
    differences: list[Difference] = []
    repairs: list[RepairPlan] = []
    pending: list[RepairPlan] = []
    invoices = in_flight = 0
    for ev in evidence:
        invoices += 1
        verdict = examine(ev, now=now, grace_s=grace_s, default_appid=default_appid)
        differences.extend(verdict.differences)
        in_flight += verdict.in_flight
        if verdict.repair is not None:
            (repairs if verdict.repair_status == "enqueue" else pending).append(verdict.repair)
    order = {k: i for i, k in enumerate(DIFFERENCE_KINDS)}
    differences.sort(key=lambda d: (order.get(d.kind, len(order)), d.key))
    return ReconcileReport(
        invoices=invoices,
        differences=differences,
        repairs=repairs,
        pending=pending,
        in_flight=in_flight,
        checked_at=now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )


def print_report(report: ReconcileReport, console: Any = None, *, examples: int = 5) -> None:
    """Counts by kind, then a few examples of each kind, then the repairs."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    verdict = "[bold green]clean[/]" if report.clean else f"[bold red]{len(report.differences):,} differences[/]"
    console.print(f"reconcile of {report.invoices:,} invoices: {verdict}")
    counts = Table(title="differences by kind", title_justify="left")
    counts.add_column("kind", style="bold")
    counts.add_column("count", justify="right")
    counts.add_column("meaning")
    for kind, n in report.counts.items():
        counts.add_row(kind, f"{n:,}", DIFFERENCE_KINDS.get(kind, ""), style=None if n else "dim")
    console.print(counts)
    for kind, items in report.by_kind().items():
        if not items:
            continue
        table = Table(title=f"{kind}: {len(items):,} (first {min(examples, len(items))})", title_justify="left")
        table.add_column("invoice")
        table.add_column("partition", justify="right")
        table.add_column("expected")
        table.add_column("observed")
        table.add_column("detail")
        for d in items[:examples]:
            table.add_row(d.key, "" if d.partition is None else str(d.partition), d.expected or "", d.observed or "",
                          d.detail)
        console.print(table)
    for title, plans in (("repairs enqueued" if report.repair_requested else "repairs --repair would enqueue",
                          report.repairs), ("repairs still pending (not sent again)", report.pending)):
        if not plans:
            continue
        table = Table(title=f"{title}: {len(plans):,} (first {min(examples, len(plans))})", title_justify="left")
        for name in ("invoice", "partition", "move", "reason", "idempotency key"):
            table.add_column(name)
        for p in plans[:examples]:
            table.add_row(p.key, str(p.partition), f"{short(p.from_status)} -> {short(p.to_status)} (v{p.version})",
                          p.reason, p.idempotency_key)
        console.print(table)
    notes = []
    if report.in_flight:
        notes.append(f"{report.in_flight:,} invoices have a delivery in flight (not counted as differences)")
    if report.wechat_asked and report.wechat_unchecked:
        notes.append(f"{report.wechat_unchecked:,} cards not asked (no appid in state nor INVOICE_SM_WECHAT_APPID)")
    elif not report.wechat_asked:
        notes.append("WeChat not asked (give --wechat-sim-url): repairs judged from the last delivered status")
    for topic, n in report.undecodable.items():
        notes.append(f"{n:,} undecodable records in {topic} ignored")
    truncated = (report.replay or {}).get("truncated_partitions")
    if truncated:
        notes.append(f"[yellow]invoice.events partitions {truncated} lost their first events to retention[/]")
    if report.repair_requested:
        notes.append(f"repair: {report.enqueued:,} enqueued, {len(report.pending):,} already pending, "
                     f"{report.counts.get('unrepairable', 0):,} unrepairable")
    elif report.repairs:
        notes.append(f"{len(report.repairs):,} repairs would be enqueued by --repair "
                     f"({len(report.pending):,} already pending)")
    for note in notes:
        console.print(f"- {note}")


# ------------------------------------------------------------------ I/O


async def _read_into(settings: Settings, topic: str, add: Any) -> None:
    async for records in kafka.read_to_end(settings, topic):
        for record in records:
            add(record)


async def ask_simulator(
    base_url: str,
    cards: Iterable[tuple[str, str, str, str]],
    *,
    concurrency: int = 32,
    timeout: float = 10.0,
    progress: bool = False,
) -> dict[str, ReimburseStatus | None]:
    """WeChat's status of each ``(key, appid, card_id, code)``, from the simulator's
    control API, one card per request (as a real per-card lookup would be).

    ``None``: WeChat has no record of the card.
    """
    todo = list(cards)
    out: dict[str, ReimburseStatus | None] = {}
    bar = progress_reporter(progress and len(todo) > 1000, len(todo), "wechat")
    queue: Iterator[tuple[str, str, str, str]] = iter(todo)

    async def worker(client: httpx.AsyncClient) -> None:
        for key, appid, card_id, code in queue:
            try:
                resp = await client.get(f"/_sim/cards/{appid}/{card_id}/{code}")
            except httpx.HTTPError as exc:
                raise WeChatViewError(f"asking {base_url} about {key}: {type(exc).__name__}: {exc}") from exc
            if resp.status_code == 404:
                out[key] = None
            elif resp.status_code == 200:
                out[key] = ReimburseStatus(resp.json()["reimburse_status"])
            else:
                raise WeChatViewError(f"asking {base_url} about {key}: HTTP {resp.status_code}")
            bar.advance(1, 1)

    try:
        async with httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout) as client:
            await asyncio.gather(*(worker(client) for _ in range(max(1, concurrency))))
    finally:
        bar.close()
    return out


async def enqueue_repairs(settings: Settings, plans: Iterable[RepairPlan], now: str) -> int:
    """Write one repair outcome per plan to the outcomes topic, keyed by invoice,
    to the partition of the invoice's state (modulo the outcomes topic's size)."""
    plans = list(plans)
    if not plans:
        return 0
    partitions = await kafka.partitions_of(settings, settings.topic_outcomes)
    if not partitions:
        raise ConfigurationError("INVOICE_SM_TOPIC_OUTCOMES", f"topic {settings.topic_outcomes!r} does not exist")
    producer = kafka.new_producer(settings)
    async with kafka.started(producer):
        futures = []
        for plan in plans:
            value = wire.encode(plan.outcome(now))
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
        log.info("repair enqueued", invoice=plan.key, idempotency_key=plan.idempotency_key, reason=plan.reason,
                 from_status=str(plan.from_status), to_status=str(plan.to_status))
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
    metrics: Any = None,
    force: bool = False,
) -> ReconcileReport:
    """Replay, read the live topics, ask WeChat if it can be asked, compare.

    ``replayed`` reuses a replay already done (it must be from the
    beginning); otherwise one is run (in memory, or on disk under
    ``state_dir``) and closed here. With ``repair`` the repair outcomes are
    enqueued (``report.enqueued``). With ``metrics`` (an
    ``adapters.metrics.Metrics``) every kind's count is added to
    ``divergences_total{kind}``, zero included, so the series exist from the
    first run on. A repair from a history whose beginning is gone is refused
    unless ``force``.
    """
    if repair:
        await topics.refuse_truncated_history(settings, "reconcile --repair", force=force)
    started = time.perf_counter()
    now = datetime.now(UTC)
    own_replay = replayed is None
    result = replayed if replayed is not None else await replay(
        settings, in_memory=state_dir is None, state_dir=state_dir, progress=progress
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
    )
    unchecked = 0
    if wechat_sim_url:
        cards = []
        for ev in index.evidence.values():
            truth = ev.truth
            if truth is None:
                continue
            appid = truth.appid or settings.wechat_appid
            if not appid:
                unchecked += 1
                continue
            cards.append((ev.key, appid, ev.card_id, ev.code))
        statuses = await ask_simulator(wechat_sim_url, cards, progress=progress)
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
    if metrics is not None:
        for kind, n in report.counts.items():
            metrics.divergences_total.labels(kind=kind).inc(n)
    if repair:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        report.enqueued = await enqueue_repairs(settings, report.repairs, stamp)
    report.seconds = time.perf_counter() - started
    log.info("reconcile finished", invoices=report.invoices, differences=len(report.differences),
             enqueued=report.enqueued, pending=len(report.pending), seconds=round(report.seconds, 3),
             **{k: n for k, n in report.counts.items() if n})
    return report
