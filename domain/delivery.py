"""What to do after one ``updatestatus`` call: the delivery policy, as a pure function.

The deliverer carries a step out; it decides nothing itself. A call ends in
one of three steps:

- ``Final``: the delivery is over, with a recorded result (``DeliveryResult``)
  and, for results that are not a plain errcode, a stable ``reason``.
- ``Retry``: try again soon, in line. The job keeps its place on its
  partition's commit path, so only short delays are allowed here (at most
  ``DeliveryPolicy.park_after_s``).
- ``Wait``: a reason that belongs to the account (quota, credentials) or a
  backoff longer than a few seconds. The job leaves the commit path: it is
  written to the waiting room (``invoice.deliveries.waiting``) and resumed at
  ``until``; the invoice's later versions wait behind it, other invoices do
  not. ``scope`` says whether the whole account waits (every invoice of that
  appid) or only this invoice.

Why a waiting room and not retry topics: non-blocking retry topics (Spring
Kafka, Uber) give up per-key order: a retried record and a later record of
the same key race. Here an invoice's versions must reach WeChat in order, so
the waiting jobs are committed entries of a compacted changelog, keyed by
idempotency key, resumed by a scheduler; the invoice's later versions are
queued behind the waiting one in the same room.

Time is given (``now``, epoch seconds), and so is randomness (``jitter`` in
[0, 1)), so that every branch is a table test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum

import msgspec

from domain.errors import (
    AuthorizerUnauthorizedError,
    ConflictError,
    CredentialError,
    MissingCredentialsError,
    PermanentWeChatError,
    QuotaExhaustedError,
    TokenInvalidError,
    TransientWeChatError,
    UnknownResultError,
    WeChatError,
)
from domain.wechat_errors import MINUTE_QUOTA_ERRCODE, STATUS_ERRCODE

CHINA = timezone(timedelta(hours=8))  # no DST: a fixed offset is exact


class DeliveryResult(StrEnum):
    """The recorded end of a delivery (``invoice.deliveries`` ``result``)."""

    DELIVERED = "delivered"
    ALREADY_APPLIED = "already_applied"
    CONFLICT = "conflict"
    FAILED = "failed"


class WaitReason(StrEnum):
    """Why a delivery left its partition's commit path (metrics label, waiting-room entry)."""

    QUOTA = "quota"  # 45009: the account's daily quota is spent
    MINUTE_QUOTA = "minute_quota"  # 45011: the account's per-minute quota is spent
    CREDENTIALS_REFUSED = "credentials_refused"  # the token endpoint refused the account's credentials
    NO_CREDENTIALS = "no_credentials"  # this service has no credentials for the appid
    BACKOFF = "backoff"  # WeChat or the network keeps failing: a long backoff
    BEHIND = "behind"  # an earlier version of the same invoice is waiting


class FinalReason(StrEnum):
    """Why a delivery ended without WeChat judging it (``reason`` of the record)."""

    NO_CREDENTIALS = "no_credentials"
    UNAUTHORIZED = "unauthorized"


class Scope(StrEnum):
    ACCOUNT = "account"  # the appid waits: every invoice of it
    INVOICE = "invoice"  # this invoice waits; the account carries on


class DeliveryPolicy(msgspec.Struct, frozen=True):
    """The settings the policy reads (``INVOICE_SM_DELIVERY_*`` and friends)."""

    max_backoff_s: float = 30.0
    #: a backoff longer than this leaves the commit path (``Wait``/``BACKOFF``)
    park_after_s: float = 5.0
    quota_reset_hour: int = 0
    #: park on 45009 for this long instead of until the reset (tests, simulated days)
    quota_park_s: float | None = None
    #: wait on 45011 for this long instead of until the next minute
    minute_quota_wait_s: float | None = None
    #: how long an account whose credentials were refused (or are missing) waits between tries
    credential_park_s: float = 60.0
    #: an appid without credentials ends with ``failed``/``no_credentials`` after waiting this long
    no_credentials_timeout_s: float = 3600.0


class Final(msgspec.Struct, frozen=True):
    result: DeliveryResult
    errcode: int
    errmsg: str
    error_class: str | None = None
    reason: FinalReason | None = None


class Retry(msgspec.Struct, frozen=True):
    delay_s: float
    possibly_applied: bool


class Wait(msgspec.Struct, frozen=True):
    until: float  # epoch seconds
    reason: WaitReason
    scope: Scope
    possibly_applied: bool


Step = Final | Retry | Wait


def next_quota_reset(now: datetime, hour: int) -> datetime:
    """The next ``hour``:00 in China time after ``now`` (WeChat quotas reset daily)."""
    local = now.astimezone(CHINA)
    reset = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    if reset <= local:
        reset += timedelta(days=1)
    return reset


def backoff_s(attempts: int, max_backoff_s: float, jitter: float) -> float:
    """Exponential from 0.2 s with "equal jitter": never zero, never in lockstep."""
    base = min(max_backoff_s, 0.2 * 2.0 ** min(max(attempts, 1) - 1, 16))
    return base / 2 + jitter * base / 2


def delivered(errcode: int = 0, errmsg: str = "ok") -> Final:
    return Final(DeliveryResult.DELIVERED, errcode, errmsg)


def after_failure(
    error: BaseException,
    *,
    attempts: int,
    possibly_applied: bool,
    waiting_since: float | None,
    now: float,
    jitter: float,
    policy: DeliveryPolicy,
) -> Step:
    """The step after a failed call. ``attempts`` counts this call;
    ``waiting_since`` is when the job first waited (``None``: never).

    One branch per errcode class of ``domain.wechat_errors.ERRCODE_CLASSES``
    (and per failure that is not an errcode). A class is told apart by its
    error type; a new class that shares its type with another is told apart
    by ``error.error_class``, in a branch above that type's."""
    if isinstance(error, UnknownResultError):
        return _retry_or_wait(attempts, True, now, jitter, policy)
    if isinstance(error, TokenInvalidError):  # the client refreshed once already
        return _retry_or_wait(attempts, possibly_applied, now, jitter, policy)
    if isinstance(error, TransientWeChatError):
        if error.errcode == MINUTE_QUOTA_ERRCODE:
            wait = policy.minute_quota_wait_s
            until = now + wait if wait is not None else now - now % 60.0 + 60.0 + 0.05 + jitter
            return Wait(until, WaitReason.MINUTE_QUOTA, Scope.ACCOUNT, possibly_applied)
        return _retry_or_wait(attempts, possibly_applied, now, jitter, policy)
    if isinstance(error, QuotaExhaustedError):
        if policy.quota_park_s is not None:
            until = now + policy.quota_park_s
        else:
            until = next_quota_reset(datetime.fromtimestamp(now, UTC), policy.quota_reset_hour).timestamp()
        return Wait(until, WaitReason.QUOTA, Scope.ACCOUNT, possibly_applied)
    if isinstance(error, AuthorizerUnauthorizedError):
        return Final(DeliveryResult.FAILED, error.errcode, error.errmsg, type(error).__name__, FinalReason.UNAUTHORIZED)
    if isinstance(error, MissingCredentialsError):
        since = now if waiting_since is None else waiting_since
        if now - since >= policy.no_credentials_timeout_s:
            return Final(DeliveryResult.FAILED, error.errcode, error.errmsg, type(error).__name__, FinalReason.NO_CREDENTIALS)
        until = min(now + policy.credential_park_s, since + policy.no_credentials_timeout_s)
        return Wait(until, WaitReason.NO_CREDENTIALS, Scope.ACCOUNT, possibly_applied)
    if isinstance(error, CredentialError):
        # Refused at the token endpoint: a wrong or rotated secret an operator fixes. Never dropped.
        return Wait(now + policy.credential_park_s, WaitReason.CREDENTIALS_REFUSED, Scope.ACCOUNT, possibly_applied)
    if isinstance(error, ConflictError):
        if error.errcode == STATUS_ERRCODE and possibly_applied:
            # 72024 "already in that status" after a call that may have been applied: ours.
            return Final(DeliveryResult.ALREADY_APPLIED, error.errcode, error.errmsg, type(error).__name__)
        return Final(DeliveryResult.CONFLICT, error.errcode, error.errmsg, type(error).__name__)
    if isinstance(error, PermanentWeChatError):
        return Final(DeliveryResult.FAILED, error.errcode, error.errmsg, type(error).__name__)
    if isinstance(error, WeChatError):  # an unforeseen subclass: keep the work
        return _retry_or_wait(attempts, possibly_applied, now, jitter, policy)
    # Not a WeChat answer at all (a bug, a hostile body that broke a parser):
    # we cannot know whether the request went out, so it may have been applied.
    return _retry_or_wait(attempts, True, now, jitter, policy)


def _retry_or_wait(attempts: int, possibly_applied: bool, now: float, jitter: float, policy: DeliveryPolicy) -> Step:
    delay = backoff_s(attempts, policy.max_backoff_s, jitter)
    if delay <= policy.park_after_s:
        return Retry(delay, possibly_applied)
    return Wait(now + delay, WaitReason.BACKOFF, Scope.INVOICE, possibly_applied)
