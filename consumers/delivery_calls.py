"""Calling WeChat for the deliverer: account gates, the ready queue, workers.

The policy (what a failure leads to) is ``domain.delivery``; this module
carries its steps out:

- ``Final``: the record is built and handed to the lane (``finish``); the
  invoice's next version becomes ready.
- ``Retry``: the job is put back on the ready queue after its short delay
  (``call_later``: a worker never sleeps on it). It keeps its offset's place
  on the commit path.
- ``Wait``: the lane moves the job (and its invoice's later versions) to the
  waiting room; an ``account`` wait also closes the appid's gate, so the
  account's other invoices wait without a call until it opens.

Workers are supervised: an unexpected exception in a call (a bug, a hostile
body that broke a parser) is logged, counted, and treated as a failure that
may have been applied, so the job never stays silently at the head of its
invoice's queue; a worker task that dies anyway is replaced.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

import structlog
from aiolimiter import AsyncLimiter

from adapters import wire
from adapters.metrics import Metrics
from adapters.settings import Settings
from consumers.delivery_lane import Job
from domain.delivery import (
    DeliveryPolicy,
    DeliveryResult,
    Final,
    Retry,
    Scope,
    Step,
    Wait,
    WaitReason,
    after_failure,
    delivered,
)
from domain.errors import WeChatError
from domain.wechat_errors import ErrorClass, classify

log = structlog.get_logger("invoice_sm.deliverer")

OTHER_APPIDS = "_other"


#: The last whole second formatted by ``utc_iso``: a delivery formats two
#: times, and most fall in the second of the one before.
_formatted_second: tuple[int, str] = (-1, "")


#: Under ``validate_produced=sample``, one delivery record in this many is re-checked.
_SAMPLE_EVERY = 256


def utc_iso(ts: float | None = None) -> str:
    """RFC 3339 in UTC with milliseconds (``2026-12-07T05:30:00.123Z``)."""
    global _formatted_second  # noqa: PLW0603  # a one-entry cache
    if ts is None:
        ts = time.time()
    second = math.floor(ts)
    # Rounded to the microsecond first, as ``datetime.fromtimestamp`` does.
    micros = round((ts - second) * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached, text = _formatted_second
    if second != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _formatted_second = (second, text)
    return f"{text}.{micros // 1000:03d}Z"


def policy_of(settings: Settings) -> DeliveryPolicy:
    return DeliveryPolicy(
        max_backoff_s=settings.delivery_max_backoff_s,
        park_after_s=settings.delivery_park_after_s,
        quota_reset_hour=settings.quota_reset_hour,
        quota_park_s=settings.quota_park_s,
        minute_quota_wait_s=settings.minute_quota_wait_s,
        credential_park_s=settings.credential_park_s,
        no_credentials_timeout_s=settings.delivery_no_credentials_timeout_s,
    )


class AccountGate:
    """Per appid: the rate limit, and the park (an account-scope ``Wait``)."""

    def __init__(self, appid: str, rate: float) -> None:
        self.appid = appid
        # A bucket of one second's calls: bursts up to ``rate``, never above it on average.
        self.limiter = AsyncLimiter(max(rate, 1.0), 1.0)
        self.parked_until: float | None = None  # epoch seconds
        self.reason: WaitReason | None = None
        self.parked: list[Job] = []
        self.timer: asyncio.TimerHandle | None = None

    def is_parked(self, now: float) -> bool:
        return self.parked_until is not None and now < self.parked_until


class Calls:
    """The ready queue, the account gates and what a call's step does."""

    def __init__(self, settings: Settings, client: Any, metrics: Metrics) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.policy = policy_of(settings)
        self.ready: asyncio.Queue[Job] = asyncio.Queue()
        self.gates: dict[str, AccountGate] = {}
        self.counts: dict[str, int] = {result.value: 0 for result in DeliveryResult}
        self._labelled_appids: set[str] = set()
        # Labelled children looked up once: ``labels()`` takes a lock and builds a key on every call (~1% of CPU).
        self._attempts = {kind: metrics.delivery_attempts_total.labels(kind=kind) for kind in ("first", "retry")}
        self._calls: dict[str, Any] = {}
        self._results = {result.value: metrics.deliveries_total.labels(result=result.value) for result in DeliveryResult}
        # ``validate_produced``: "all" checks every record against its schema,
        # "sample" one in ``_SAMPLE_EVERY`` (the first included), "off" none.
        self._validate_every = {"all": 1, "sample": _SAMPLE_EVERY}.get(settings.validate_produced, 0)
        self._until_validation = 0

    # -- scheduling

    def later(self, delay_s: float, job: Job) -> None:
        asyncio.get_running_loop().call_later(max(delay_s, 0.0), self.ready.put_nowait, job)

    def resume(self, job: Job) -> None:
        """A head job: ready now, or at its ``resume_at``."""
        delay = job.resume_at - time.time() if job.waiting is not None else 0.0
        if delay > 0:
            self.later(delay, job)
        else:
            self.ready.put_nowait(job)

    def gate(self, appid: str) -> AccountGate:
        gate = self.gates.get(appid)
        if gate is None:
            gate = self.gates[appid] = AccountGate(appid, self.settings.delivery_rate_limit)
        return gate

    def _park(self, gate: AccountGate, step: Wait) -> None:
        now = time.time()
        if gate.parked_until is not None and step.until <= gate.parked_until:
            return
        gate.parked_until = step.until
        gate.reason = step.reason
        if gate.timer is not None:
            gate.timer.cancel()
        gate.timer = asyncio.get_running_loop().call_later(step.until - now, self._unpark, gate)
        log.warning("account_parked", appid=gate.appid, reason=step.reason.value, seconds=round(step.until - now, 1), alert=True)
        self._gauge_parked()

    def _unpark(self, gate: AccountGate) -> None:
        gate.timer = None
        gate.parked_until = None
        jobs, gate.parked = gate.parked, []
        log.info("account_unparked", appid=gate.appid, jobs=len(jobs))
        for job in jobs:
            if job.lane.calling:
                self.ready.put_nowait(job)
        self._gauge_parked()

    def _gauge_parked(self) -> None:
        now = time.time()
        parked = [g for g in self.gates.values() if g.is_parked(now)]
        self.metrics.parked_appids.set(len(parked))
        other = 0
        for g in self.gates.values():
            if g.appid in self._labelled_appids or len(self._labelled_appids) < self.settings.metrics_max_appids:
                self._labelled_appids.add(g.appid)
                self.metrics.parked_appid.labels(appid=g.appid).set(1 if g.is_parked(now) else 0)
            elif g.is_parked(now):
                other += 1
        if other or OTHER_APPIDS in self._labelled_appids:
            self._labelled_appids.add(OTHER_APPIDS)
            self.metrics.parked_appid.labels(appid=OTHER_APPIDS).set(other)

    # -- one call

    async def attempt(self, job: Job) -> Step | None:
        """One call for ``job`` and the policy's step; ``None``: no call was
        made and the job is already rescheduled (lane gone, takeover wait)."""
        lane = job.lane
        gate = self.gate(job.appid)
        now = time.time()
        if gate.is_parked(now):
            assert gate.parked_until is not None and gate.reason is not None
            return Wait(gate.parked_until, gate.reason, Scope.ACCOUNT, job.possibly_applied)
        if now < lane.calls_allowed_at:
            self.later(lane.calls_allowed_at - now, job)  # an unclean takeover: the old owner's call may be in flight
            return None
        async with gate.limiter:
            pass
        if not lane.calling:
            return None  # revoked or fenced meanwhile: the next owner delivers it
        job.attempts += 1
        if job.first_attempt is None:
            job.first_attempt = time.time()
        self._attempts["first" if job.attempts == 1 else "retry"].inc()
        self.metrics.deliveries_in_flight.inc()
        lane.call_started(job)
        started = time.perf_counter()
        errcode_class = "network"
        try:
            result = await self.client.update_status(
                appid=job.appid, card_id=job.card_id, code=job.code, status=job.status, idempotency_key=job.key
            )
            errcode_class = ErrorClass.OK.value
            return delivered(result.errcode, result.errmsg)
        except WeChatError as exc:
            errcode_class = "network" if exc.http_status is not None and exc.errcode == -1 else classify(exc.errcode).value
            return self._after(job, exc)
        except Exception as exc:  # supervision: never leave the job stuck at its invoice's head
            errcode_class = "error"
            self.metrics.delivery_worker_errors_total.inc()
            log.exception("delivery_call_crashed", invoice=job.invoice, version=job.version, error=type(exc).__name__)
            return self._after(job, exc)
        finally:
            lane.call_ended()
            self.metrics.deliveries_in_flight.dec()
            calls = self._calls.get(errcode_class)
            if calls is None:
                calls = self._calls[errcode_class] = self.metrics.wechat_calls_total.labels(errcode_class=errcode_class)
            calls.inc()
            self.metrics.wechat_latency_seconds.observe(time.perf_counter() - started)

    def _after(self, job: Job, exc: BaseException) -> Step:
        step = after_failure(
            exc,
            attempts=job.attempts,
            possibly_applied=job.possibly_applied,
            waiting_since=job.waiting_since,
            now=time.time(),
            jitter=random.random(),
            policy=self.policy,
        )
        if not isinstance(step, Final):
            log.info(
                "delivery_retry",
                invoice=job.invoice,
                version=job.version,
                attempts=job.attempts,
                errcode=getattr(exc, "errcode", None),
                error=type(exc).__name__,
                step=type(step).__name__.lower(),
            )
        return step

    # -- carrying a step out

    def carry_out(self, job: Job, step: Step) -> None:
        lane = job.lane
        if isinstance(step, Final):
            lane.finish(job, self.record(job, step))  # its next version: after the commit
            return
        job.possibly_applied = step.possibly_applied
        if isinstance(step, Retry):
            self.later(step.delay_s, job)
            return
        lane.wait(job, step.reason, step.until, time.time())
        if step.scope is Scope.ACCOUNT:
            gate = self.gate(job.appid)
            self._park(gate, step)
            gate.parked.append(job)
        else:
            self.later(step.until - time.time(), job)

    def record(self, job: Job, final: Final) -> bytes:
        now = time.time()
        result = final.result
        record = wire.DeliveryRecord(
            idempotency_key=job.key,
            card_id=job.card_id,
            code=job.code,
            appid=job.appid,
            reimburse_status=job.status,
            version=job.version,
            result=result,
            errcode=final.errcode,
            errmsg=final.errmsg,
            attempts=job.attempts,
            outcome_id=job.outcome_id,
            first_attempt_at=utc_iso(job.first_attempt) if job.first_attempt else None,
            completed_at=utc_iso(now),
            duration_ms=round((now - (job.first_attempt or now)) * 1000, 3),
            error_class=final.error_class,
            repair=job.repair,
            reason=final.reason,
        )
        self.counts[result.value] += 1
        self._results[result.value].inc()
        # The canonical log line of a delivery, with the invoice key bound.
        log.info(
            "delivery_final",
            invoice=job.invoice,
            version=job.version,
            status=job.status.value,
            result=result.value,
            errcode=final.errcode,
            reason=final.reason.value if final.reason else None,
            attempts=job.attempts,
            idempotency_key=job.key,
            appid=job.appid,
        )
        encoded = wire.delivery_bytes(record)
        if self._validate_every:
            if self._until_validation == 0:
                wire.validate_produced(encoded, "delivery")
                self._until_validation = self._validate_every
            self._until_validation -= 1
        return encoded

    # -- workers

    async def worker(self) -> None:
        while True:
            job = await self.ready.get()
            if not job.lane.calling:
                continue  # the new owner consumes it again
            try:
                step = await self.attempt(job)
                if step is not None:
                    self.carry_out(job, step)
            except Exception as exc:  # a bug in carrying out: keep the job, say so
                self.metrics.delivery_worker_errors_total.inc()
                log.exception("delivery_worker_error", invoice=job.invoice, version=job.version, error=type(exc).__name__)
                self.later(self.policy.park_after_s, job)


class Workers:
    """``n`` supervised worker tasks: one that ends unexpectedly is replaced."""

    def __init__(self, calls: Calls, n: int) -> None:
        self.calls = calls
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        for _ in range(n):
            self._spawn()

    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(self.calls.worker())
        self.tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.stopping or task.cancelled():
            return
        log.error("delivery_worker_replaced", error=repr(task.exception()))
        self._spawn()

    async def stop(self) -> None:
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
