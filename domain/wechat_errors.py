"""WeChat errcodes and what to do with them (DOMAIN.md), as data."""

from __future__ import annotations

from enum import StrEnum


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
CONFIG_ERRCODES = frozenset({40013, 40078, 41001, 48001, 50001, 50002, 72015})
BAD_REQUEST_ERRCODES = frozenset({40003, 40056, 40099, 72031})
#: 45011 is the per-minute quota: wait for the next minute, not a short backoff.
MINUTE_QUOTA_ERRCODE = 45011
#: 72024 after an unknown result can mean "already in that status".
STATUS_ERRCODE = 72024


def classify(errcode: int) -> ErrorClass:
    """The class of an ``updatestatus`` errcode. Unknown codes are permanent:
    retrying what we do not understand risks a storm, recording it does not."""
    if errcode == 0:
        return ErrorClass.OK
    if errcode in TOKEN_ERRCODES:
        return ErrorClass.TOKEN
    if errcode in TRANSIENT_ERRCODES:
        return ErrorClass.TRANSIENT
    if errcode in QUOTA_ERRCODES:
        return ErrorClass.QUOTA
    if errcode in CONFLICT_ERRCODES:
        return ErrorClass.CONFLICT
    return ErrorClass.PERMANENT
