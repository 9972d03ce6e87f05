from __future__ import annotations

import json

import jsonschema
import pytest

import schemas
from adapters import wire
from domain.model import InvoiceState
from domain.status import ReimburseStatus as S
from tests.factories import card, event


def test_checked_in_schemas_match_the_code() -> None:
    for name, text in schemas.generated_files().items():
        assert (schemas.schema_dir() / name).read_text() == text, f"schemas/{name} is stale: run invoice-sm schemas --write"


@pytest.mark.parametrize("kind", list(wire.SCHEMA_TYPES))
def test_schemas_are_valid_draft_2020_12(kind: str) -> None:
    jsonschema.Draft202012Validator.check_schema(schemas.load(kind))


def test_a_sample_event_validates_and_a_broken_one_does_not() -> None:
    validator = jsonschema.Draft202012Validator(schemas.load("event"))
    good = event(*card(1), S.LOCK)
    validator.validate(good)
    bad = dict(good, specversion="0.3")
    assert not validator.is_valid(bad)


def test_produced_state_validates_against_the_checked_in_schema() -> None:
    state = InvoiceState("c", "1", S.LOCK, 1, "wx1", "2026-11-23T10:00:00Z", ("e1",))
    jsonschema.Draft202012Validator(schemas.load("state")).validate(json.loads(wire.encode_state(state)))


def test_asyncapi_names_every_topic_and_its_schema() -> None:
    doc = json.loads((schemas.schema_dir() / "asyncapi.json").read_text())
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {"invoice.events", "invoice.outcomes", "invoice.state", "invoice.deliveries", "invoice.events.dlq"} <= addresses
    for message in doc["components"]["messages"].values():
        ref = message["payload"]["$ref"].removeprefix("./")
        assert (schemas.schema_dir() / ref).exists()
