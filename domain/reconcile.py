"""Reconcile's judgement: evidence about each invoice in, differences and repairs out. Pure.

Per invoice, four views are compared (``consumers.reconcile`` gathers them):

(a) the **rebuilt** state: the events replayed through the processor's own
    decisions; it is the truth;
(b) the **live** state: the latest ``invoice.state`` record;
(c) the **deliveries**: final delivery records, against the accepted
    outcomes that asked for them;
(d) **WeChat**'s card status, when it could be asked.

Each disagreement is a ``Difference`` of one ``DifferenceKind``. For an
invoice whose WeChat status (or, when WeChat was not asked, last delivered
status) is not the truth, ``examine`` plans one repair: an
``invoice.status.repair`` outcome asking the deliverer to push the right
status. Its idempotency key, ``{card_id}/{code}#{version}~repair~{OBSERVED}``,
names the divergence, so a repair already enqueued and not yet finally
delivered is ``pending`` (not sent again). A move WeChat refuses
(``domain.wechat_rules``), or a repair WeChat already refused with a
conflict, is ``unrepairable`` instead.

Accepted outcomes younger than ``grace_s`` without a final delivery record
are *in flight*, not missing: the deliverer is working on them.

Deliveries in the deliverer's waiting room (``invoice.deliveries.waiting``:
a quota, credentials or a long backoff of their account) are *waiting*, and
so are the later versions of their invoice, which the deliverer holds behind
them: delayed, never dropped (ARCHITECTURE.md, guarantee 4), so not
differences either, however long they wait. The report lists them per
invoice with their reason and since when (``summarise_waiting``); a wait
that ends in a final ``failed`` record (``no_credentials`` after its
timeout) is a ``delivery_failed`` difference like any other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from domain.delivery import DeliveryResult, WaitReason
from domain.lifecycle import LEGAL_MOVES
from domain.model import InvoiceState, idempotency_key, invoice_key
from domain.status import Origin, ReimburseStatus
from domain.wechat_rules import wechat_answer


class DifferenceKind(StrEnum):
    """Every kind of difference, in the order the report lists them."""

    STATE_MISSING = "state_missing"
    STATE_ORPHAN = "state_orphan"
    STATE_MISMATCH = "state_mismatch"
    DELIVERY_MISSING = "delivery_missing"
    DELIVERY_FAILED = "delivery_failed"
    WECHAT_MISSING = "wechat_missing"
    WECHAT_MISMATCH = "wechat_mismatch"
    UNREPAIRABLE = "unrepairable"


K = DifferenceKind

#: What each kind means (the report's legend, and the JSON report's ``kinds``).
DIFFERENCE_KINDS: Final[dict[DifferenceKind, str]] = {
    K.STATE_MISSING: "invoice.state has no record of an invoice that the events (or deliveries) know",
    K.STATE_ORPHAN: "invoice.state has an invoice that no event in invoice.events produced",
    K.STATE_MISMATCH: "the live state differs from the rebuilt one (status, version, appid or duplicate window)",
    K.DELIVERY_MISSING: "an accepted version has no final delivery record, or the last delivered status is not the state's",
    K.DELIVERY_FAILED: "the delivery of the current version ended in conflict or failed",
    K.WECHAT_MISSING: "WeChat has no record of a card whose state has moved",
    K.WECHAT_MISMATCH: "WeChat's card status is not the state's",
    K.UNREPAIRABLE: "WeChat must move the card but refuses that move; no repair is enqueued",
}

#: Difference kinds a repair is enqueued for, by priority (the repair's ``reason``).
REPAIR_REASONS: Final = (K.WECHAT_MISMATCH, K.WECHAT_MISSING, K.DELIVERY_FAILED, K.DELIVERY_MISSING)

#: Delivery results that mean WeChat holds the status (the others are conflicts or failures).
SUCCESSFUL_RESULTS: Final = frozenset({DeliveryResult.DELIVERED, DeliveryResult.ALREADY_APPLIED})


class RepairStatus(StrEnum):
    """What becomes of one invoice's repair."""

    NONE = "none"  #: nothing to repair
    ENQUEUE = "enqueue"  #: to be enqueued (``--repair``)
    PENDING = "pending"  #: enqueued before and not finally delivered yet: not sent again
    UNREPAIRABLE = "unrepairable"  #: WeChat refuses the move


def short(status: ReimburseStatus | str | None) -> str:
    """``INVOICE_REIMBURSE_LOCK`` -> ``LOCK``."""
    if status is None:
        return "NONE"
    return str(status).removeprefix("INVOICE_REIMBURSE_")


def repair_key(card_id: str, code: str, version: int, observed_short: str) -> str:
    """The idempotency key of a repair: stable for the same divergence."""
    return f"{idempotency_key(card_id, code, version)}~repair~{observed_short}"


def same_state(a: InvoiceState, b: InvoiceState) -> bool:
    """Equal on everything a decision depends on; ``updated_at`` is wall-clock time."""
    return (
        a.card_id == b.card_id
        and a.code == b.code
        and a.status is b.status
        and a.version == b.version
        and a.appid == b.appid
        and tuple(a.recent_event_ids) == tuple(b.recent_event_ids)
    )


def state_differences(live: InvoiceState, rebuilt: InvoiceState) -> list[str]:
    """Human-readable field differences, ``[]`` when ``same_state``."""
    out = []
    for name in ("status", "version", "appid"):
        lv, rv = getattr(live, name), getattr(rebuilt, name)
        if lv != rv:
            out.append(f"{name}: live {lv!s} != rebuilt {rv!s}")
    if tuple(live.recent_event_ids) != tuple(rebuilt.recent_event_ids):
        out.append(
            f"recent_event_ids: live has {len(live.recent_event_ids)} ids (last {live.recent_event_ids[-1:]}), "
            f"rebuilt {len(rebuilt.recent_event_ids)} (last {rebuilt.recent_event_ids[-1:]})"
        )
    return out


def _describe(state: InvoiceState | None) -> str | None:
    return None if state is None else f"{short(state.status)} v{state.version}"


# ------------------------------------------------------------------ evidence


@dataclass(frozen=True, slots=True)
class Accepted:
    """An accepted outcome: the deliverer owes a final record for it."""

    version: int
    to_status: ReimburseStatus | None
    processed_at: datetime | None
    #: ``wechat``: WeChat reported it; nothing is owed to WeChat for it.
    origin: Origin = Origin.UPSTREAM


@dataclass(frozen=True, slots=True)
class FinalDelivery:
    """What reconcile needs of one final delivery record (repairs included)."""

    idempotency_key: str
    version: int
    reimburse_status: ReimburseStatus
    result: DeliveryResult
    errcode: int | None = None
    errmsg: str | None = None
    repair: bool = False


@dataclass(frozen=True, slots=True)
class WaitingDelivery:
    """A delivery in the deliverer's waiting room: owed, delayed, not final."""

    idempotency_key: str
    version: int
    reimburse_status: ReimburseStatus
    appid: str
    reason: WaitReason
    #: when it first waited, and when the deliverer tries it again
    waiting_since: datetime
    resume_at: datetime
    attempts: int = 0
    #: the partition of the room (and of the outcome it came from)
    partition: int | None = None
    repair: bool = False

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "idempotency_key": self.idempotency_key,
            "version": self.version,
            "reimburse_status": str(self.reimburse_status),
            "reason": str(self.reason),
            "waiting_since": _iso(self.waiting_since),
            "waiting_s": round(max(0.0, (now - self.waiting_since).total_seconds()), 1),
            "resume_at": _iso(self.resume_at),
            "attempts": self.attempts,
            "repair": self.repair,
        }


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Evidence:
    """Everything known about one invoice, from every source.

    Mutable on purpose: it is filled source by source while the topics are
    read, then only examined.
    """

    key: str
    rebuilt: InvoiceState | None = None
    rebuilt_partition: int | None = None
    live: InvoiceState | None = None
    live_partition: int | None = None
    live_error: str | None = None
    accepted: dict[int, Accepted] = field(default_factory=dict)
    #: Final delivery records (repairs included) in topic order.
    deliveries: list[FinalDelivery] = field(default_factory=list)
    #: Idempotency keys of the repair outcomes already enqueued.
    repairs: set[str] = field(default_factory=set)
    #: Deliveries in the waiting room (committed entries), any order.
    waiting: list[WaitingDelivery] = field(default_factory=list)
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


# ------------------------------------------------------------------ verdicts


@dataclass(frozen=True, slots=True)
class Difference:
    kind: DifferenceKind
    key: str
    appid: str
    partition: int | None
    expected: str | None
    observed: str | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        card_id, _, code = self.key.partition("/")
        return {
            "kind": str(self.kind),
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
    """One ``invoice.status.repair`` outcome to enqueue (``consumers.reconcile`` encodes it)."""

    card_id: str
    code: str
    appid: str
    partition: int
    version: int
    from_status: ReimburseStatus
    to_status: ReimburseStatus
    observed_short: str
    reason: DifferenceKind

    @property
    def key(self) -> str:
        return invoice_key(self.card_id, self.code)

    @property
    def idempotency_key(self) -> str:
        return repair_key(self.card_id, self.code, self.version, self.observed_short)

    @property
    def trigger(self) -> str | None:
        """The lifecycle trigger of the move, when it is one (a repair may jump over several)."""
        return LEGAL_MOVES.get((self.from_status, self.to_status))

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "appid": self.appid,
            "partition": self.partition,
            "version": self.version,
            "from_status": str(self.from_status),
            "to_status": str(self.to_status),
            "reason": str(self.reason),
            "idempotency_key": self.idempotency_key,
        }


@dataclass
class Verdict:
    differences: list[Difference] = field(default_factory=list)
    repair: RepairPlan | None = None
    repair_status: RepairStatus = RepairStatus.NONE
    in_flight: bool = False
    #: the invoice's deliveries in the waiting room (its current version waits behind them)
    waiting: list[WaitingDelivery] = field(default_factory=list)


def examine(ev: Evidence, *, now: datetime, grace_s: float = 30.0, default_appid: str = "") -> Verdict:
    """The differences of one invoice and what a repair would do.

    ``default_appid`` stands in for a state without one (single-account
    deployments: ``INVOICE_SM_WECHAT_APPID``).
    """
    verdict = Verdict()
    truth = ev.truth
    appid = (truth.appid if truth is not None else "") or default_appid

    def add(kind: DifferenceKind, expected: str | None, observed: str | None, detail: str) -> None:
        verdict.differences.append(Difference(kind, ev.key, appid, ev.partition, expected, observed, detail))

    # (a) against (b): the live state.
    if ev.live_error is not None:
        add(K.STATE_MISMATCH, _describe(ev.rebuilt), None, ev.live_error)
    elif ev.rebuilt is not None and ev.live is None:
        add(K.STATE_MISSING, _describe(ev.rebuilt), None, "no record in invoice.state")
    elif ev.live is not None and ev.rebuilt is None:
        add(K.STATE_ORPHAN, None, _describe(ev.live), "no event in invoice.events leads to this state")
    elif ev.live is not None and ev.rebuilt is not None and not same_state(ev.live, ev.rebuilt):
        add(K.STATE_MISMATCH, _describe(ev.rebuilt), _describe(ev.live), "; ".join(state_differences(ev.live, ev.rebuilt)))
    if truth is None:
        if ev.live_error is None:
            add(K.STATE_MISSING, None, None, "known only from invoice.deliveries or invoice.outcomes")
        return verdict

    # (c): the deliveries.
    version, status = truth.version, truth.status
    expected = _describe(truth)
    finals: dict[str, FinalDelivery] = {}
    last_success: FinalDelivery | None = None
    repaired_through = 0
    for d in ev.deliveries:
        finals[d.idempotency_key] = d
        if d.result in SUCCESSFUL_RESULTS:
            if last_success is None or d.version >= last_success.version:
                last_success = d
            if d.repair:
                # A repair that reached WeChat settles every version up to its own.
                repaired_through = max(repaired_through, d.version)

    def key_of(v: int) -> str:
        return idempotency_key(ev.card_id, ev.code, v)

    # The first waiting version holds every later one of the invoice (order is kept).
    waiting = [w for w in ev.waiting if w.idempotency_key not in finals]
    held_from = min((w.version for w in waiting), default=None)

    def held(v: int) -> bool:
        return held_from is not None and v >= held_from and key_of(v) not in finals

    def in_flight(v: int) -> bool:
        if held(v):
            return True
        accepted = ev.accepted.get(v)
        if accepted is None or accepted.processed_at is None or key_of(v) in finals:
            return False
        return (now - accepted.processed_at).total_seconds() < grace_s

    verdict.waiting = waiting
    # A waiting invoice is judged like one in flight: the deliverer still owes it
    # its current status, so WeChat lagging behind is no difference and no repair.
    current_in_flight = bool(waiting) or (version > 0 and in_flight(version))
    verdict.in_flight = current_in_flight and not waiting
    reported = {v for v, a in ev.accepted.items() if a.origin is Origin.WECHAT}
    owed = (set(ev.accepted) | ({version} if version > 0 else set())) - reported
    missing = sorted(v for v in owed if v > repaired_through and key_of(v) not in finals and not in_flight(v))
    delivered = None if last_success is None else f"{short(last_success.reimburse_status)} v{last_success.version}"

    failed = False
    current = finals.get(key_of(version)) if version > 0 else None
    if current is not None and current.result not in SUCCESSFUL_RESULTS and repaired_through < version:
        failed = True
        add(
            K.DELIVERY_FAILED,
            expected,
            f"{current.result} {current.errcode}",
            f"v{version} {short(current.reimburse_status)}: {current.result} (errcode {current.errcode}: {current.errmsg})",
        )
    if missing:
        add(K.DELIVERY_MISSING, expected, delivered, f"no final delivery record for version(s) {missing}")
    elif (
        version > 0
        and version not in reported
        and not failed
        and not current_in_flight
        and (last_success is None or last_success.reimburse_status is not status)
    ):
        add(K.DELIVERY_MISSING, expected, delivered, "the last delivered status is not the state's")

    # (d): WeChat.
    if ev.wechat_asked and not current_in_flight:
        if ev.wechat is None and version > 0:
            add(K.WECHAT_MISSING, expected, None, "WeChat has no record of the card")
        elif ev.wechat is not None and ev.wechat is not status:
            add(K.WECHAT_MISMATCH, expected, short(ev.wechat), f"WeChat says {short(ev.wechat)}, state says {short(status)}")

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
    reason = next((k for k in REPAIR_REASONS if k in kinds), K.WECHAT_MISMATCH if ev.wechat_asked else K.DELIVERY_MISSING)

    def unrepairable(why: str) -> Verdict:
        add(K.UNREPAIRABLE, expected, observed_short, why)
        verdict.repair_status = RepairStatus.UNREPAIRABLE
        return verdict

    if version == 0:
        return unrepairable("the service never moved this card (version 0): there is no accepted status to deliver")
    if observed is not None:
        answer = wechat_answer(observed, status)
        if not answer.applied:
            return unrepairable(f"WeChat refuses {short(observed)} -> {short(status)}: {answer.reason} ({answer.errcode})")
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
        verdict.repair_status = RepairStatus.PENDING
    elif previous is not None and previous.result is DeliveryResult.CONFLICT:
        verdict.repair = None
        return unrepairable(f"WeChat refused this repair before (errcode {previous.errcode}: {previous.errmsg})")
    else:
        verdict.repair_status = RepairStatus.ENQUEUE
    return verdict


# ------------------------------------------------------------------ waiting


@dataclass(frozen=True, slots=True)
class WaitingInvoice:
    """One invoice's deliveries in the waiting room, in version order. The
    first one says why the invoice waits; the others are ``behind`` it."""

    key: str
    deliveries: tuple[WaitingDelivery, ...]

    @property
    def head(self) -> WaitingDelivery:
        return self.deliveries[0]

    @property
    def reason(self) -> WaitReason:
        return self.head.reason

    @property
    def appid(self) -> str:
        return self.head.appid

    @property
    def partition(self) -> int | None:
        return self.head.partition

    @property
    def since(self) -> datetime:
        return min(d.waiting_since for d in self.deliveries)

    @property
    def versions(self) -> list[int]:
        return [d.version for d in self.deliveries]

    def to_json(self, now: datetime) -> dict[str, Any]:
        card_id, _, code = self.key.partition("/")
        return {
            "key": self.key,
            "card_id": card_id,
            "code": code,
            "appid": self.appid,
            "partition": self.partition,
            "reason": str(self.reason),
            "waiting_since": _iso(self.since),
            "waiting_s": round(max(0.0, (now - self.since).total_seconds()), 1),
            "resume_at": _iso(self.head.resume_at),
            "versions": self.versions,
            "deliveries": [d.to_json(now) for d in self.deliveries],
        }


@dataclass(frozen=True)
class WaitingSummary:
    """What waits in the deliverer's waiting room: per invoice, oldest first, and counts."""

    now: datetime
    invoices: tuple[WaitingInvoice, ...] = ()
    #: deliveries per ``WaitReason`` (every reason, zero included): as the
    #: deliverer's ``invoice_sm_deliveries_waiting{reason}`` gauge counts them
    by_reason: dict[str, int] = field(default_factory=lambda: {str(r): 0 for r in WaitReason})
    #: deliveries per appid, most first
    by_appid: dict[str, int] = field(default_factory=dict)

    @property
    def deliveries(self) -> int:
        return sum(len(i.deliveries) for i in self.invoices)

    @property
    def oldest(self) -> datetime | None:
        return min((i.since for i in self.invoices), default=None)

    def to_json(self) -> dict[str, Any]:
        oldest = self.oldest
        return {
            "deliveries": self.deliveries,
            "invoices": len(self.invoices),
            "by_reason": dict(self.by_reason),
            "by_appid": dict(self.by_appid),
            "oldest_since": None if oldest is None else _iso(oldest),
            "list": [i.to_json(self.now) for i in self.invoices],
        }


def summarise_waiting(waiting: Iterable[tuple[str, Iterable[WaitingDelivery]]], *, now: datetime) -> WaitingSummary:
    """Group waiting deliveries by invoice (``(invoice key, deliveries)`` pairs;
    an invoice named twice is merged), oldest wait first, and count them by
    reason and by appid."""
    grouped: dict[str, dict[str, WaitingDelivery]] = {}
    for key, deliveries in waiting:
        for d in deliveries:
            grouped.setdefault(key, {})[d.idempotency_key] = d
    invoices = [
        WaitingInvoice(key, tuple(sorted(by_key.values(), key=lambda d: (d.version, d.idempotency_key))))
        for key, by_key in grouped.items()
        if by_key
    ]
    invoices.sort(key=lambda i: (i.since, i.key))
    by_reason: dict[str, int] = {str(r): 0 for r in WaitReason}
    by_appid: dict[str, int] = {}
    for invoice in invoices:
        for d in invoice.deliveries:
            by_reason[str(d.reason)] = by_reason.get(str(d.reason), 0) + 1
            by_appid[d.appid] = by_appid.get(d.appid, 0) + 1
    by_appid = dict(sorted(by_appid.items(), key=lambda item: (-item[1], item[0])))
    return WaitingSummary(now, tuple(invoices), by_reason, by_appid)


# ------------------------------------------------------------------ report


@dataclass
class ReconcileReport:
    """The outcome of a reconcile, for people (``consumers.render``) and machines (``to_json``)."""

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
    #: deliveries in the waiting room: delayed, not differences
    waiting: WaitingSummary = field(default_factory=lambda: WaitingSummary(datetime.fromtimestamp(0, UTC)))

    @property
    def clean(self) -> bool:
        return not self.differences

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {str(k): 0 for k in DIFFERENCE_KINDS}
        for d in self.differences:
            counts[d.kind] += 1
        return counts

    def by_kind(self) -> dict[DifferenceKind, list[Difference]]:
        out: dict[DifferenceKind, list[Difference]] = {k: [] for k in DIFFERENCE_KINDS}
        for d in self.differences:
            out[d.kind].append(d)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "checked_at": self.checked_at,
            "invoices": self.invoices,
            "differences_total": len(self.differences),
            "counts": self.counts,
            "kinds": {str(k): meaning for k, meaning in DIFFERENCE_KINDS.items()},
            "differences": [d.to_json() for d in self.differences],
            "in_flight": self.in_flight,
            "waiting": self.waiting.to_json(),
            "repair": {
                "requested": self.repair_requested,
                "enqueued": self.enqueued,
                "to_enqueue": [p.to_json() for p in self.repairs],
                "pending": [p.to_json() for p in self.pending],
                "unrepairable": self.counts[K.UNREPAIRABLE],
            },
            "wechat": {"asked": self.wechat_asked, "url": self.wechat_url, "unchecked": self.wechat_unchecked},
            "undecodable_records": self.undecodable,
            "replay": self.replay,
            "seconds": round(self.seconds, 3),
        }


def build_report(
    evidence: Iterable[Evidence], *, now: datetime, grace_s: float = 30.0, default_appid: str = ""
) -> ReconcileReport:
    """Examine every invoice; differences sorted by kind (``DifferenceKind`` order), then invoice."""
    differences: list[Difference] = []
    repairs: list[RepairPlan] = []
    pending: list[RepairPlan] = []
    waiting: list[tuple[str, list[WaitingDelivery]]] = []
    invoices = in_flight = 0
    for ev in evidence:
        invoices += 1
        verdict = examine(ev, now=now, grace_s=grace_s, default_appid=default_appid)
        differences.extend(verdict.differences)
        in_flight += verdict.in_flight
        if verdict.waiting:
            waiting.append((ev.key, verdict.waiting))
        if verdict.repair is not None:
            (repairs if verdict.repair_status is RepairStatus.ENQUEUE else pending).append(verdict.repair)
    order = {k: i for i, k in enumerate(DifferenceKind)}
    differences.sort(key=lambda d: (order[d.kind], d.key))
    return ReconcileReport(
        invoices=invoices,
        differences=differences,
        repairs=repairs,
        pending=pending,
        in_flight=in_flight,
        checked_at=_iso(now),
        waiting=summarise_waiting(waiting, now=now),
    )
