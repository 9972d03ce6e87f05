"""WeChat errcodes and what to do with them (DOMAIN.md), as data.

``ERRCODE_CLASSES`` is the one table of errcode classes: each class's codes
and the error the WeChat client raises for them. The client
(``wechat_error``), ``classify`` and the ``wechat_calls_total`` labels read
it. What a class *leads to* (retry, wait, final) is ``after_failure`` in
``domain.delivery``, which tells a class apart by the error's type or, for a
class that shares a type with another, by its ``error_class``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final, NamedTuple

from domain.errors import (
    ConflictError,
    PermanentWeChatError,
    QuotaExhaustedError,
    TokenInvalidError,
    TransientWeChatError,
    WeChatError,
)


class ErrorClass(StrEnum):
    OK = "ok"
    TOKEN = "token"  # noqa: S105 - the class of token errcodes, not a secret
    TRANSIENT = "transient"
    QUOTA = "quota"
    CONFLICT = "conflict"
    PERMANENT = "permanent"


TOKEN_ERRCODES = frozenset({40001, 40014, 42001})
TRANSIENT_ERRCODES = frozenset({-1, 45011, 72036})
QUOTA_ERRCODES = frozenset({45009})
CONFLICT_ERRCODES = frozenset({72023, 72024, 72039})
#: 45011 is the per-minute quota: wait for the next minute, not a short backoff.
MINUTE_QUOTA_ERRCODE = 45011
#: 72024 after an unknown result can mean "already in that status".
STATUS_ERRCODE = 72024


class ErrcodeClass(NamedTuple):
    """One row of ``ERRCODE_CLASSES``."""

    #: the errcodes of this class (``PERMANENT``: none listed, it is every code no other class has)
    codes: frozenset[int]
    #: what the client raises; its type says whether it is retriable and who catches it
    error: type[WeChatError]


#: Every errcode class but ``OK`` (errcode 0, no error). No code is in two classes (a unit test checks).
ERRCODE_CLASSES: Final[Mapping[ErrorClass, ErrcodeClass]] = {
    ErrorClass.TOKEN: ErrcodeClass(TOKEN_ERRCODES, TokenInvalidError),
    ErrorClass.TRANSIENT: ErrcodeClass(TRANSIENT_ERRCODES, TransientWeChatError),
    ErrorClass.QUOTA: ErrcodeClass(QUOTA_ERRCODES, QuotaExhaustedError),
    ErrorClass.CONFLICT: ErrcodeClass(CONFLICT_ERRCODES, ConflictError),
    ErrorClass.PERMANENT: ErrcodeClass(frozenset(), PermanentWeChatError),
}

_CLASS_OF: Final[Mapping[int, ErrorClass]] = {
    code: error_class for error_class, row in ERRCODE_CLASSES.items() for code in row.codes
}


def classify(errcode: int) -> ErrorClass:
    """The class of an ``updatestatus`` errcode. Unknown codes are permanent:
    retrying what we do not understand risks a storm, recording it does not."""
    if errcode == 0:
        return ErrorClass.OK
    return _CLASS_OF.get(errcode, ErrorClass.PERMANENT)


def wechat_error(errcode: int, errmsg: str, *, http_status: int | None = None) -> WeChatError:
    """The error for a non-zero errcode answer: its class's type, carrying its class."""
    error_class = classify(errcode)
    if error_class is ErrorClass.OK:
        raise ValueError("errcode 0 is not an error")
    return ERRCODE_CLASSES[error_class].error(errcode, errmsg, http_status=http_status, error_class=error_class)
