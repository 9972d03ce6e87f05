"""The native per-record step (``native/``, Rust): decode -> decide -> encode
in one call for the common valid event, or ``None``: the Python path
decides that record.

It is built by ``./dev`` into the environment and is optional: without it
(``INVOICE_SM_NATIVE_STEP=off``, or a machine without cargo) the service
decides everything on the Python path, with the same results, about a third
slower (``./dev bench``). Its tables come from ``domain`` here, so the
lifecycle keeps one definition; ``tests/fuzz/test_native_step.py`` holds its
answers to the Python path's, byte for byte.
"""

from __future__ import annotations

from typing import Protocol

from adapters import wire
from adapters.settings import env_name
from domain.errors import ConfigurationError
from domain.lifecycle import LEGAL_MOVES
from domain.model import RECENT_EVENT_IDS, DecisionKind, RejectReason
from domain.status import EVENT_TYPE_ORIGINS, EVENT_TYPE_TARGETS, TERMINAL_STATUSES, Origin, ReimburseStatus

#: The decision kinds and reject reasons in the order the native step numbers them.
NATIVE_KIND_ORDER = (DecisionKind.ACCEPTED, DecisionKind.UNCHANGED, DecisionKind.DUPLICATE, DecisionKind.REJECTED)
NATIVE_REASON_ORDER = (RejectReason.ILLEGAL_TRANSITION, RejectReason.TERMINAL_STATE, RejectReason.APPID_MISMATCH)


class NativeStep(Protocol):
    """``invoice_sm_native.Step``: see ``native/src/lib.rs``."""

    def decide(
        self,
        key: object,
        value: object,
        headers: object,
        state: bytes | None,
        now: str | None,
        topic: str,
        partition: int,
        offset: int,
        max_bytes: int,
        /,
    ) -> tuple[DecisionKind, bool | None, bytes, bytes | None] | None: ...


def load() -> NativeStep | None:
    """The native step with ``domain``'s tables, or ``None`` if the module is not installed."""
    try:
        from invoice_sm_native import Step  # type: ignore[import-untyped,import-not-found,unused-ignore]  # built by ./dev from native/; no stubs
    except ImportError:
        return None
    step: NativeStep = Step(
        [s.value for s in ReimburseStatus],  # index 0 is INIT, the state of an invoice never seen
        [s.value for s in TERMINAL_STATUSES],
        [(source.value, dest.value, trigger) for (source, dest), trigger in LEGAL_MOVES.items()],
        [
            (name, target.value if target else None, EVENT_TYPE_ORIGINS[name] is Origin.WECHAT)
            for name, target in EVENT_TYPE_TARGETS.items()
        ],
        RECENT_EVENT_IDS,
        wire.OUTCOME_SOURCE,
        [(kind, wire.OUTCOME_TYPES[kind]) for kind in NATIVE_KIND_ORDER],
        [reason.value for reason in NATIVE_REASON_ORDER],
        wire.EVENT_ID_MAX_LENGTH,
    )
    return step


def for_setting(native_step: str) -> NativeStep | None:
    """The step ``native_step`` (``Settings.native_step``) asks for: ``off`` none,
    ``auto`` the native one if installed, ``on`` the native one or a refusal to start."""
    if native_step == "off":
        return None
    step = load()
    if step is None and native_step == "on":
        raise ConfigurationError(
            env_name("native_step"),
            "is 'on' but the native step (invoice_sm_native) is not installed: build it with ./dev (needs cargo), "
            "or set 'auto' or 'off'",
        )
    return step
