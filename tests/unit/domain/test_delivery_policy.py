"""The delivery policy, one row per errcode class and failure kind (no broker, no WeChat)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domain.delivery import (
    DeliveryPolicy,
    DeliveryResult,
    Final,
    FinalReason,
    Retry,
    Scope,
    Wait,
    WaitReason,
    after_failure,
    backoff_s,
    next_quota_reset,
)
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
from domain.wechat_errors import ERRCODE_CLASSES, ErrorClass, classify, wechat_error

POLICY = DeliveryPolicy(max_backoff_s=30.0, park_after_s=5.0, credential_park_s=60.0, no_credentials_timeout_s=600.0)
#: 2026-12-02 10:00:30 UTC = 18:00:30 in China
NOW = datetime(2026, 12, 2, 10, 0, 30, tzinfo=UTC).timestamp()


def step(
    error: BaseException,
    *,
    attempts: int = 1,
    possibly_applied: bool = False,
    waiting_since: float | None = None,
    policy: DeliveryPolicy = POLICY,
    jitter: float = 0.5,
):
    return after_failure(
        error,
        attempts=attempts,
        possibly_applied=possibly_applied,
        waiting_since=waiting_since,
        now=NOW,
        jitter=jitter,
        policy=policy,
    )


# (error, attempts, possibly_applied before) -> expected step
TABLE = [
    # transport: a timeout after sending may have been applied; short retry in line
    (UnknownResultError(-1, "read timeout"), 1, False, Retry(0.15, True)),
    # token errors the client could not cure by one refresh: retry, nothing applied
    (TokenInvalidError(40001, "invalid credential"), 1, False, Retry(0.15, False)),
    (TokenInvalidError(42001, "expired"), 1, True, Retry(0.15, True)),
    # transient errcodes and 5xx before writing
    (TransientWeChatError(-1, "system busy"), 2, False, Retry(0.3, False)),
    (TransientWeChatError(72036, "busy"), 3, False, Retry(0.6, False)),
    (TransientWeChatError(-1, "HTTP 503", http_status=503), 1, False, Retry(0.15, False)),
    # a long backoff leaves the commit path, for this invoice only
    (TransientWeChatError(-1, "system busy"), 8, False, Wait(NOW + 19.2, WaitReason.BACKOFF, Scope.INVOICE, False)),
    (UnknownResultError(-1, "read timeout"), 9, False, Wait(NOW + 22.5, WaitReason.BACKOFF, Scope.INVOICE, True)),
    # 45011: the account waits for the next minute (+0.05 s + jitter)
    (
        TransientWeChatError(45011, "minute quota"),
        1,
        False,
        Wait(NOW - 30 + 60 + 0.05 + 0.5, WaitReason.MINUTE_QUOTA, Scope.ACCOUNT, False),
    ),
    # 45009: the account waits until the daily reset (00:00 China = 16:00 UTC)
    (
        QuotaExhaustedError(45009, "daily quota"),
        1,
        False,
        Wait(datetime(2026, 12, 2, 16, 0, tzinfo=UTC).timestamp(), WaitReason.QUOTA, Scope.ACCOUNT, False),
    ),
    # refused credentials: the account waits, never dropped
    (CredentialError(40125, "invalid appsecret"), 1, False, Wait(NOW + 60, WaitReason.CREDENTIALS_REFUSED, Scope.ACCOUNT, False)),
    # no credentials here: the account waits, bounded (see the next test)
    (
        MissingCredentialsError(41001, "no credentials for appid wxX"),
        1,
        False,
        Wait(NOW + 60, WaitReason.NO_CREDENTIALS, Scope.ACCOUNT, False),
    ),
    # unauthorized authorizer: ends with a reason
    (
        AuthorizerUnauthorizedError(61003, "unauthorized"),
        1,
        False,
        Final(DeliveryResult.FAILED, 61003, "unauthorized", "AuthorizerUnauthorizedError", FinalReason.UNAUTHORIZED),
    ),
    # conflicts: 72024 after a possibly applied call is ours
    (
        ConflictError(72024, "status already set"),
        2,
        True,
        Final(DeliveryResult.ALREADY_APPLIED, 72024, "status already set", "ConflictError"),
    ),
    (
        ConflictError(72024, "status already set"),
        1,
        False,
        Final(DeliveryResult.CONFLICT, 72024, "status already set", "ConflictError"),
    ),
    (
        ConflictError(72023, "locked by another"),
        2,
        True,
        Final(DeliveryResult.CONFLICT, 72023, "locked by another", "ConflictError"),
    ),
    (ConflictError(72039, "closed"), 1, False, Final(DeliveryResult.CONFLICT, 72039, "closed", "ConflictError")),
    # permanent: recorded with the errcode
    (
        PermanentWeChatError(40003, "invalid openid"),
        1,
        False,
        Final(DeliveryResult.FAILED, 40003, "invalid openid", "PermanentWeChatError"),
    ),
    # an unforeseen WeChatError subclass keeps the work
    (type("NewWeChatError", (WeChatError,), {})(12345, "new"), 1, False, Retry(0.15, False)),
    # not a WeChat answer at all (a bug, a parser blown up by a hostile body): possibly applied
    (RecursionError("maximum recursion depth exceeded"), 1, False, Retry(0.15, True)),
]


@pytest.mark.parametrize(
    ("error", "attempts", "possibly_applied", "expected"),
    TABLE,
    ids=[f"{type(row[0]).__name__}-{getattr(row[0], 'errcode', '')}-{row[1]}" for row in TABLE],
)
def test_every_failure_class_has_its_step(error, attempts, possibly_applied, expected) -> None:
    got = step(error, attempts=attempts, possibly_applied=possibly_applied)
    # float arithmetic: compare the times approximately, the rest exactly
    if isinstance(expected, Retry) and isinstance(got, Retry):
        assert got.delay_s == pytest.approx(expected.delay_s) and got.possibly_applied == expected.possibly_applied
        return
    if isinstance(expected, Wait) and isinstance(got, Wait):
        assert got.until == pytest.approx(expected.until)
        assert (got.reason, got.scope, got.possibly_applied) == (expected.reason, expected.scope, expected.possibly_applied)
        return
    assert got == expected


@pytest.mark.parametrize("error_class", list(ERRCODE_CLASSES))
def test_every_errcode_class_raises_its_error_and_has_a_row_above(error_class: ErrorClass) -> None:
    """Adding an errcode class: its row in ERRCODE_CLASSES, its branch in after_failure, its row in TABLE."""
    row = ERRCODE_CLASSES[error_class]
    for code in row.codes or {99999}:  # PERMANENT lists no codes: it is every unknown one
        error = wechat_error(code, "what WeChat said", http_status=200)
        assert classify(code) is error_class
        assert type(error) is row.error and error.error_class == error_class
        assert isinstance(step(error), Final | Retry | Wait)
    assert any(type(error) is row.error and classify(error.errcode) is error_class for error, *_ in TABLE), (
        f"no row of TABLE says what {error_class} leads to"
    )


def test_no_errcode_is_in_two_classes_and_zero_is_in_none() -> None:
    codes = [code for row in ERRCODE_CLASSES.values() for code in row.codes]
    assert len(codes) == len(set(codes)) and 0 not in codes
    assert ErrorClass.OK not in ERRCODE_CLASSES and classify(0) is ErrorClass.OK
    with pytest.raises(ValueError, match="errcode 0"):
        wechat_error(0, "ok")


def test_no_credentials_ends_after_the_bounded_time() -> None:
    error = MissingCredentialsError(41001, "no credentials")
    waited = step(error, waiting_since=NOW - 599)
    assert isinstance(waited, Wait) and waited.until == pytest.approx(NOW + 1)  # never past the deadline
    ended = step(error, waiting_since=NOW - 600)
    assert ended == Final(DeliveryResult.FAILED, 41001, "no credentials", "MissingCredentialsError", FinalReason.NO_CREDENTIALS)


def test_overrides_for_simulated_time() -> None:
    policy = DeliveryPolicy(quota_park_s=3.0, minute_quota_wait_s=1.5)
    assert step(QuotaExhaustedError(45009, "q"), policy=policy).until == pytest.approx(NOW + 3.0)
    assert step(TransientWeChatError(45011, "m"), policy=policy).until == pytest.approx(NOW + 1.5)


def test_backoff_grows_is_capped_and_never_zero() -> None:
    assert [backoff_s(n, 30.0, 0.0) for n in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.4])
    assert backoff_s(40, 30.0, 0.999) <= 30.0 and backoff_s(40, 30.0, 0.0) == pytest.approx(15.0)
    assert backoff_s(0, 30.0, 0.0) > 0


@pytest.mark.parametrize(
    ("utc", "hour", "expected"),
    [
        (datetime(2026, 12, 2, 10, 0, tzinfo=UTC), 0, datetime(2026, 12, 2, 16, 0, tzinfo=UTC)),
        (datetime(2026, 12, 2, 16, 0, tzinfo=UTC), 0, datetime(2026, 12, 3, 16, 0, tzinfo=UTC)),  # exactly at reset: next day
        (datetime(2026, 12, 2, 10, 0, tzinfo=UTC), 20, datetime(2026, 12, 2, 12, 0, tzinfo=UTC)),
    ],
)
def test_quota_resets_at_the_hour_in_china(utc: datetime, hour: int, expected: datetime) -> None:
    assert next_quota_reset(utc, hour) == expected
