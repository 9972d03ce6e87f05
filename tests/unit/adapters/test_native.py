"""``adapters.native``: which decision step a setting gives, and the tables it hands the native step."""

from __future__ import annotations

import pytest

from adapters import native
from adapters.native import NativeStep
from adapters.settings import load_settings
from domain.errors import ConfigurationError
from domain.model import DecisionKind, RejectReason


def test_auto_and_on_give_the_native_step_and_off_gives_none(native_step: NativeStep) -> None:
    assert native.for_setting("off") is None
    assert type(native.for_setting("auto")) is type(native_step)
    assert type(native.for_setting("on")) is type(native_step)


def test_on_without_the_module_refuses_to_start_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "load", lambda: None)
    assert native.for_setting("auto") is None  # auto: the Python path, no refusal
    with pytest.raises(ConfigurationError) as refused:
        native.for_setting("on")
    assert refused.value.setting == "INVOICE_SM_NATIVE_STEP"
    assert "not installed" in str(refused.value)


def test_the_setting_takes_only_its_three_values() -> None:
    assert load_settings(native_step="off").native_step == "off"
    with pytest.raises(ConfigurationError, match="INVOICE_SM_NATIVE_STEP"):
        load_settings(native_step="fast")


def test_the_native_numbering_covers_every_kind_and_reason_once() -> None:
    assert sorted(native.NATIVE_KIND_ORDER) == sorted(DecisionKind)
    assert sorted(native.NATIVE_REASON_ORDER) == sorted(RejectReason)


def test_a_table_that_names_an_unknown_status_is_refused_at_construction() -> None:
    from invoice_sm_native import Step  # type: ignore[import-untyped,import-not-found,unused-ignore]

    with pytest.raises(ValueError, match="unknown status"):
        Step(
            ["INIT", "LOCK", "CLOSURE", "CANCEL"],
            ["VOID"],
            [],
            [],
            32,
            "/x",
            [(k, str(k)) for k in native.NATIVE_KIND_ORDER],
            [r.value for r in native.NATIVE_REASON_ORDER],
            256,
        )


def test_a_status_the_domain_adds_needs_no_change_in_the_native_step() -> None:
    from invoice_sm_native import Step  # type: ignore[import-untyped,import-not-found,unused-ignore]

    statuses = ["INIT", "LOCK", "CLOSURE", "CANCEL", "HOLD"]
    step = Step(
        statuses,
        ["CLOSURE", "CANCEL"],
        [("LOCK", "HOLD", "hold"), ("HOLD", "LOCK", "release")],
        [("invoice.held", "HOLD", False)],
        32,
        "/x",
        [(k, f"invoice.status.{k.value}") for k in native.NATIVE_KIND_ORDER],
        [r.value for r in native.NATIVE_REASON_ORDER],
        256,
    )
    event = b'{"specversion":"1.0","id":"e1","source":"/s","type":"invoice.held","data":{"card_id":"c","code":"1"}}'
    locked = b'{"card_id":"c","code":"1","status":"LOCK","version":3,"appid":"","recent_event_ids":[],"updated_at":null}'
    verdict = step.decide(b"c/1", event, (), locked, "2026-12-07T20:00:00.000Z", "t", 0, 0, 65536)
    assert verdict is not None
    kind, _, outcome, state = verdict
    assert kind is DecisionKind.ACCEPTED
    assert b'"status":"HOLD","version":4' in state and b'"trigger":"hold"' in outcome
