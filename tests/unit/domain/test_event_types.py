"""The event-type table is the one place a lifecycle event type is defined.

Adding a type is one line in ``domain.status.EVENT_TYPE_TARGETS`` (plus its
documentation, and ``EVENT_TYPE_ORIGINS`` if WeChat writes it): the decoder,
the decision, the outcome record, the published event schema, the demo and
the test factories all read the table or its derived inverse. These tests
run over every row, and the last one adds a row nobody else knows about and
shows it travels the whole way untouched anywhere else.
"""

from __future__ import annotations

import json
import typing
from types import SimpleNamespace

import jsonschema
import pytest

import schemas
from adapters import wire
from domain.decide import decide
from domain.lifecycle import LEGAL_MOVES
from domain.model import DecisionKind, InvoiceState
from domain.status import (
    EVENT_TYPE_ORIGINS,
    EVENT_TYPE_TARGETS,
    STATUS_EVENT_TYPES,
    OutcomeType,
    ReimburseStatus,
)
from tests import factories

CARD, CODE, APPID = "pjZ8Yt7Um2jYxzneP8GomnxoVFWo", "186921658591", "wx1234567890abcdef"
KEY = f"{CARD}/{CODE}"
#: What a type without a fixed target asks for in these tests (in ``data.reimburse_status``).
NAMED = ReimburseStatus.LOCK


def cloudevent(event_type: str, target: ReimburseStatus | None) -> bytes:
    data = {"card_id": CARD, "code": CODE, "appid": APPID}
    if target is None:
        data["reimburse_status"] = NAMED.value
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"e-{event_type}",
            "source": "/erp",
            "type": event_type,
            "time": "2026-11-23T10:00:00Z",
            "subject": KEY,
            "data": data,
        }
    ).encode()


def from_where_legal(target: ReimburseStatus) -> InvoiceState:
    """A state from which the lifecycle allows moving to ``target``."""
    start = next(a for a, b in LEGAL_MOVES if b is target)
    return InvoiceState(CARD, CODE, start, 1, APPID, recent_event_ids=("e0",))


def travel(event_type: str) -> None:
    """One event of ``event_type`` through decode, decide and the outcome record."""
    target = EVENT_TYPE_TARGETS[event_type]
    value = cloudevent(event_type, target)
    jsonschema.Draft202012Validator(schemas.load("event")).validate(json.loads(value))

    event = wire.decode_event(KEY.encode(), value)
    asked = target if target is not None else NAMED
    assert (event.event_type, event.requested_status, event.origin) == (event_type, asked, EVENT_TYPE_ORIGINS[event_type])

    decision = decide(from_where_legal(asked), event, "2026-11-23T10:00:01Z")
    assert decision.kind is DecisionKind.ACCEPTED and decision.state.status is asked

    record = SimpleNamespace(topic="invoice.events", partition=0, offset=7)
    outcome = wire.decode_outcome(wire.outcome_bytes(decision, record, "2026-11-23T10:00:01Z", KEY))
    assert outcome.type == OutcomeType.ACCEPTED.value
    assert (outcome.data.event_type, outcome.data.to_status) == (event_type, asked)


@pytest.mark.parametrize("event_type", list(EVENT_TYPE_TARGETS))
def test_every_event_type_in_the_table_decodes_decides_and_is_recorded(event_type: str) -> None:
    travel(event_type)


def test_every_status_has_exactly_one_event_type_asking_for_it() -> None:
    fixed = [s for s in EVENT_TYPE_TARGETS.values() if s is not None]
    assert sorted(fixed) == sorted(ReimburseStatus) and len(set(fixed)) == len(fixed)
    assert all(EVENT_TYPE_TARGETS[t] is s for s, t in STATUS_EVENT_TYPES.items())


def test_the_test_factories_use_the_domains_inverse() -> None:
    assert factories.TYPE_FOR_STATUS is STATUS_EVENT_TYPES
    for status in ReimburseStatus:
        assert factories.event(CARD, CODE, status)["type"] == STATUS_EVENT_TYPES[status]


def test_every_outcome_type_is_a_decision_kind_or_a_repair_and_the_wire_knows_them_all() -> None:
    expected = {f"invoice.status.{kind.value}" for kind in DecisionKind} | {OutcomeType.REPAIR.value}
    assert {t.value for t in OutcomeType} == expected
    assert set(wire.OUTCOME_TYPES.values()) | {OutcomeType.REPAIR.value} == expected
    assert set(typing.get_args(wire.OutcomeType)) == expected  # the wire's Literal, spelled out for msgspec


def test_a_new_event_type_needs_only_its_row_in_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    new_type = "invoice.reimbursement.approved_elsewhere"
    monkeypatch.setitem(EVENT_TYPE_TARGETS, new_type, ReimburseStatus.CLOSURE)
    # EVENT_TYPE_ORIGINS is derived from the table when the module loads; a
    # new row in the source gets its origin there without a second edit.
    monkeypatch.setitem(EVENT_TYPE_ORIGINS, new_type, EVENT_TYPE_ORIGINS["invoice.reimbursement.closed"])
    travel(new_type)
