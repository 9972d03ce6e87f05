"""The project's one root error and its tree.

Every adapter translates its library's exceptions into these, so callers
catch ``InvoiceSmError`` subclasses and never ``aiokafka``/``httpx`` ones.
Each error says whether retrying the same operation may succeed::

    InvoiceSmError                       retriable
     ├── ConfigurationError              no   a setting is wrong or missing (names it)
     ├── InvalidEventError               no   an input record cannot be decided (reason -> DLQ)
     ├── PushRefusedError                no   a WeChat push is not authentic or not safe to read (reason -> 4xx)
     ├── BrokerError                     yes  Kafka unavailable, timed out, or rebalanced under us
     │    ├── FencedError                no   another instance owns this partition now
     │    ├── TransactionTimedOutError   yes  the broker aborted our open transaction: re-initialise
     │    ├── ProducerFailedError        yes  the transactional producer is in a fatal state: replace it
     │    └── AccessDeniedError          yes  an ACL refused us (retried slowly: an operator may fix it)
     └── WeChatError                     per class (errcode, errmsg)
          ├── TokenInvalidError          yes  40001/40014/42001: refresh once, retry once
          ├── TransientWeChatError       yes  -1, 45011, 72036, HTTP 5xx, connection errors
          │    └── UnknownResultError    yes  timed out after sending: may have been applied
          ├── QuotaExhaustedError        yes  45009: park the account until the quota resets
          ├── ConflictError              no   72023/72024/72039: reconcile, never blind-retry
          └── PermanentWeChatError       no   config, permission or bad request
               └── CredentialError       no   the token endpoint refused the credentials
                    ├── MissingCredentialsError       no credentials for this appid here
                    └── AuthorizerUnauthorizedError   the authorizer revoked us (component mode)

Secrets never go into an error's message: build messages from errcodes,
appids and invoice keys only.
"""

from __future__ import annotations


class InvoiceSmError(Exception):
    """Root of every error this project raises on purpose."""

    retriable: bool = False


class ConfigurationError(InvoiceSmError):
    """A setting is missing or wrong; the message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting}: {problem}")


class InvalidEventError(InvoiceSmError):
    """An input record cannot be decided. ``reason`` is a stable DLQ code."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class PushRefusedError(InvoiceSmError):
    """The webhook refuses a push: ``reason`` is ``bad_signature``,
    ``bad_ciphertext``, ``bad_appid``, ``hostile_xml``, ``malformed`` or
    ``too_large`` (a metric label); nothing of it is published."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class BrokerError(InvoiceSmError):
    """Kafka could not do what was asked; the work can be retried."""

    retriable = True


class FencedError(BrokerError):
    """A newer owner of the same partition fenced this producer; stop work on it."""

    retriable = False


class TransactionTimedOutError(BrokerError):
    """The broker aborted a transaction that stayed open past its timeout; the
    producer's epoch was bumped, so it looks like fencing but nobody else owns us."""


class ProducerFailedError(BrokerError):
    """The transactional producer can no longer be used (aiokafka's fatal state);
    a new producer with the same transactional id takes over from it."""


class AccessDeniedError(BrokerError):
    """The cluster's ACLs refused an operation (e.g. the transactional id)."""


class WeChatError(InvoiceSmError):
    """WeChat answered with an errcode other than 0, or could not be reached.

    ``error_class`` is the errcode's class (a ``domain.wechat_errors.ErrorClass``)
    when the error stands for an errcode answer (``wechat_error``), else ``None``.
    """

    def __init__(self, errcode: int, errmsg: str, *, http_status: int | None = None, error_class: str | None = None) -> None:
        self.errcode = errcode
        self.errmsg = errmsg
        self.http_status = http_status
        self.error_class = error_class
        super().__init__(f"errcode={errcode} errmsg={errmsg}")


class TokenInvalidError(WeChatError):
    retriable = True


class TransientWeChatError(WeChatError):
    retriable = True


class UnknownResultError(TransientWeChatError):
    """The request may have been applied (timeout after sending)."""


class QuotaExhaustedError(WeChatError):
    retriable = True


class ConflictError(WeChatError):
    retriable = False


class PermanentWeChatError(WeChatError):
    retriable = False


class CredentialError(PermanentWeChatError):
    retriable = False


class MissingCredentialsError(CredentialError):
    """This service holds no credentials for the appid (not configured, no
    authorizer refresh token): nothing WeChat said, nothing a retry fixes soon."""


class AuthorizerUnauthorizedError(CredentialError):
    """The authorizer revoked this platform's authorization (component mode's
    ``unauthorized`` push): its deliveries end with a recorded reason."""
