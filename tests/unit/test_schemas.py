from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from types import SimpleNamespace

import jsonschema
import msgspec
import pytest
from aiokafka.admin import NewTopic

import schemas
from adapters import topics, wire
from adapters.settings import Settings
from domain.delivery import WaitReason
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


def test_the_waiting_room_schema_takes_an_entry_or_an_owner_marker() -> None:
    validator = jsonschema.Draft202012Validator(schemas.load("waiting"))
    marker = wire.encode(wire.OwnerMarker("open", "t-1", "host-1", 1.0))
    entry = wire.encode(wire.WaitingEntry("k", "o", "c", "1", "wx1", S.LOCK, 2, False, WaitReason.BACKOFF, 1.0, 2.0, False, 1))
    for value in (marker, entry):
        validator.validate(json.loads(value))
        wire.validate_produced(value, "waiting")
    assert not validator.is_valid({"state": "open"})
    with pytest.raises(msgspec.ValidationError):
        wire.validate_produced(b'{"state": "open"}', "waiting")


def _asyncapi() -> dict:
    return json.loads((schemas.schema_dir() / "asyncapi.json").read_text())


@pytest.fixture(scope="module")
def official() -> jsonschema.Draft7Validator:
    """The official AsyncAPI 3.0.0 JSON Schema (npm @asyncapi/specs, vendored)."""
    meta = json.loads((schemas.schema_dir() / schemas.ASYNCAPI_SCHEMA).read_text())
    assert meta["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    assert meta["properties"]["asyncapi"]["const"] == "3.0.0"
    return jsonschema.Draft7Validator(meta)


def test_the_vendored_asyncapi_schema_is_the_file_the_readme_names() -> None:
    path = schemas.schema_dir() / schemas.ASYNCAPI_SCHEMA
    readme = (path.parent / "README.md").read_text()
    assert hashlib.sha256(path.read_bytes()).hexdigest() in readme
    assert "@asyncapi/specs 6.11.1" in readme
    assert (path.parent / "LICENSE.asyncapi-specs").read_text().lstrip().startswith("Apache License")


def test_asyncapi_document_is_valid_against_the_official_asyncapi_3_schema(official: jsonschema.Draft7Validator) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in official.iter_errors(_asyncapi())]
    assert errors == []


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["operations"]["processorReceiveEvents"].update(action="subscribe"),  # AsyncAPI 2 wording
        lambda d: d["channels"]["events"]["bindings"]["kafka"].update(partitions=0),
        lambda d: d["components"]["messages"]["outcome"].update(unknownField=1),
        lambda d: d.update(asyncapi="2.6.0"),
    ],
)
def test_the_official_schema_refuses_a_broken_document(official: jsonschema.Draft7Validator, break_it) -> None:
    doc = _asyncapi()
    break_it(doc)
    assert not official.is_valid(doc)


def test_asyncapi_names_every_topic_and_its_schema() -> None:
    doc = _asyncapi()
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {
        "invoice.events",
        "invoice.outcomes",
        "invoice.state",
        "invoice.deliveries",
        "invoice.events.dlq",
        "invoice.wechat.component",
        "invoice.deliveries.waiting",
    }
    for message in doc["components"]["messages"].values():
        for part in ("payload", "headers"):
            if part not in message:
                continue
            assert message[part]["schemaFormat"] == "application/schema+json;version=draft-2020-12"
            schema = message[part]["schema"]
            jsonschema.Draft202012Validator.check_schema(schema)
            ref = schema.get("$ref")
            if ref:
                file, _, fragment = ref.removeprefix("./").partition("#")
                target = json.loads((schemas.schema_dir() / file).read_text())
                for step in filter(None, fragment.split("/")):
                    target = target[step]
                assert target, ref


def _resolve(doc: dict, ref: str) -> dict:
    target = doc
    for step in ref.removeprefix("#/").split("/"):
        target = target[step]
    return target


def test_asyncapi_operations_say_what_each_service_reads_and_writes() -> None:
    doc = _asyncapi()
    by_service: dict[str, set[tuple[str, str]]] = {}
    for name, op in doc["operations"].items():
        channel = _resolve(doc, op["channel"]["$ref"])
        for message in op["messages"]:
            assert message["$ref"].startswith(op["channel"]["$ref"] + "/messages/"), name
            _resolve(doc, message["$ref"])
        (tag,) = [_resolve(doc, t["$ref"])["name"] for t in op["tags"]]
        by_service.setdefault(tag, set()).add((op["action"], channel["address"]))
    assert by_service == {
        "processor": {
            ("receive", "invoice.events"),
            ("send", "invoice.outcomes"),
            ("send", "invoice.state"),
            ("send", "invoice.events.dlq"),
        },
        "webhook": {("send", "invoice.events"), ("send", "invoice.wechat.component")},
        "deliverer": {
            ("receive", "invoice.wechat.component"),
            ("receive", "invoice.outcomes"),
            ("send", "invoice.deliveries"),
            ("send", "invoice.deliveries.waiting"),
            ("receive", "invoice.deliveries.waiting"),
        },
    }


def _headers_validator(message: str) -> jsonschema.Draft202012Validator:
    schema = _asyncapi()["components"]["messages"][message]["headers"]["schema"]
    assert schema["type"] == "object"  # AsyncAPI: headers MUST be an object schema
    return jsonschema.Draft202012Validator(schema)


def _as_strings(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    return {k: (v or b"").decode() for k, v in headers}


def test_outcome_and_delivery_headers_are_what_the_services_write() -> None:

    _headers_validator("outcome").validate(_as_strings(wire.CLOUDEVENT_HEADERS))
    _headers_validator("delivery").validate(_as_strings(wire.DELIVERY_HEADERS))
    assert not _headers_validator("outcome").is_valid({"content-type": "application/json"})
    assert not _headers_validator("delivery").is_valid({})


def test_dlq_headers_schema_describes_what_the_processor_writes() -> None:
    from domain.errors import InvalidEventError

    record = SimpleNamespace(
        topic="invoice.events", partition=2, offset=41, key=b"k", value=b"x" * 5000, headers=[("trace", b"t-1")]
    )
    validator = _headers_validator("dlq")
    for limit in (1_000_000, 2_000):  # kept whole, then cut to fit
        _, _, headers, truncated = wire.dlq_copy(
            record, InvalidEventError("not_json", "bad"), "not_json", "2026-11-23T10:00:00Z", max_record_bytes=limit
        )
        validator.validate(_as_strings(headers))
        assert truncated is (limit == 2_000)
    assert not validator.is_valid({"dlq.error.reason": "not_json"})  # the source position is required
    message = _asyncapi()["components"]["messages"]["dlq"]
    assert "$ref" not in message["payload"]["schema"]  # the original bytes, not a JSON document


def test_binary_mode_headers_schema_requires_the_ce_attributes() -> None:
    validator = _headers_validator("eventBinary")
    validator.validate(
        {
            "ce_specversion": "1.0",
            "ce_id": "e1",
            "ce_source": "/erp",
            "ce_type": "invoice.red_flushed",
            "content-type": "application/json",
            "traceparent": "00-x",
        }
    )
    assert not validator.is_valid({"ce_specversion": "1.0", "ce_id": "e1", "ce_source": "/erp"})


def test_schemas_write_then_check_and_the_help_names_the_json_file(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from consumers.cli import main

    monkeypatch.setattr(schemas, "schema_dir", lambda: tmp_path)
    assert main(["schemas", "--write"]) == 0
    assert (tmp_path / "asyncapi.json").exists() and not list(tmp_path.glob("*.yaml"))
    assert main(["schemas", "--check"]) == 0
    (tmp_path / "asyncapi.json").write_text("{}")
    capsys.readouterr()
    assert main(["schemas", "--check"]) == 1
    assert "stale: schemas/asyncapi.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["schemas", "--help"])
    out = capsys.readouterr().out
    assert "asyncapi.json" in out and "asyncapi.yaml" not in out


# --------------------------------------------------------------------------
# a new output topic: a row of the topic table and a row of the wire table
# --------------------------------------------------------------------------


class AuditRecord(msgspec.Struct, frozen=True):
    """One decision kept for the auditors (a topic made up for this test)."""

    card_id: str
    code: str
    decided_at: str


class _FakeAdmin:
    """As much of ``AIOKafkaAdminClient`` as ``ensure_topics`` uses, on an empty cluster."""

    def __init__(self, created: list[NewTopic], **_options: object) -> None:
        self.created = created

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return [t.name for t in self.created]

    async def create_topics(self, new: list[NewTopic]) -> None:
        self.created.extend(new)

    async def describe_topics(self, names: list[str]) -> list[dict[str, object]]:
        return [
            {"topic": t.name, "error_code": 0, "partitions": [{}] * t.num_partitions} for t in self.created if t.name in names
        ]

    async def describe_configs(self, _resources: object) -> list[object]:
        return []


@pytest.fixture
def audit_topic(monkeypatch: pytest.MonkeyPatch) -> topics.TopicSpec:
    """The rows a new output topic adds, and nothing else: its format in
    ``wire.SCHEMA_TYPES`` and its row of ``topics.topic_table`` (whose name
    would come from a new setting of ``adapters/settings.py``)."""
    monkeypatch.setitem(
        wire.SCHEMA_TYPES,
        "audit",
        wire.WireFormat((AuditRecord,), "Audited decision", "One per decision, kept a year for the auditors."),
    )
    table = topics.topic_table

    def with_audit(settings: Settings) -> list[topics.TopicSpec]:
        audit = topics.TopicSpec(
            "invoice.audit",
            "audit",
            "invoice key",
            "delete",
            365 * 86_400_000,
            settings.topic_partitions,
            settings.topic_replication_factor,
            topics.min_insync_replicas(settings),
            "decisions kept for the auditors",
            messages=("audit",),
            operations=(topics.Operation("processor", "send", "One record per decision, in the same transaction."),),
            setting="topic_audit",
        )
        return [*table(settings), audit]

    monkeypatch.setattr(topics, "topic_table", with_audit)
    return with_audit(Settings.model_construct())[-1]


def test_a_new_topic_and_format_reach_the_asyncapi_document_from_their_rows_alone(
    audit_topic: topics.TopicSpec, official: jsonschema.Draft7Validator
) -> None:
    doc = schemas.asyncapi()
    channel = doc["channels"]["audit"]
    assert channel["address"] == "invoice.audit"
    assert channel["description"] == "Decisions kept for the auditors."
    assert channel["bindings"]["kafka"]["topicConfiguration"]["retention.ms"] == 365 * 86_400_000
    assert channel["messages"] == {"audit": {"$ref": "#/components/messages/audit"}}
    message = doc["components"]["messages"]["audit"]
    assert message["title"] == "Audited decision"
    assert message["summary"] == "One per decision, kept a year for the auditors."
    assert message["payload"]["schema"] == {"$ref": "./audit.v1.schema.json"}
    assert message["bindings"]["kafka"]["key"]["pattern"] == wire.INVOICE_KEY_PATTERN
    operation = doc["operations"]["processorSendAudit"]
    assert operation["channel"] == {"$ref": "#/channels/audit"}
    assert operation["messages"] == [{"$ref": "#/channels/audit/messages/audit"}]
    assert [e.message for e in official.iter_errors(doc)] == []


def test_a_new_format_gets_its_schema_file_from_its_row_alone(audit_topic: topics.TopicSpec) -> None:
    files = schemas.generated_files()
    schema = json.loads(files["audit.v1.schema.json"])
    assert schema["$id"] == "https://invoice-sm.example/schemas/audit.v1.schema.json"
    assert schema["title"] == "AuditRecord"
    validator = jsonschema.Draft202012Validator(schema)
    record = AuditRecord("c", "1", "2026-11-23T10:00:00Z")
    validator.validate(json.loads(wire.encode(record)))
    assert not validator.is_valid({"card_id": "c"})
    wire.validate_produced(wire.encode(record), "audit")
    assert "invoice.audit" in files["asyncapi.json"]


async def test_a_new_topic_is_created_from_its_row_alone(audit_topic: topics.TopicSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[NewTopic] = []
    monkeypatch.setattr(topics, "AIOKafkaAdminClient", lambda **options: _FakeAdmin(created, **options))
    settings = Settings.model_construct()
    counts = await topics.ensure_topics(settings, create=True)
    (audit,) = [t for t in created if t.name == "invoice.audit"]
    assert audit.num_partitions == settings.topic_partitions == counts["invoice.audit"]
    assert audit.topic_configs == audit_topic.configs()
    assert audit.topic_configs["retention.ms"] == str(365 * 86_400_000)


@pytest.mark.parametrize(
    ("key", "valid"),
    [("pjZ8Yt7Um2jYxzneP8Gom/186921658591", True), ("c/1\n", False), ("c/", False), ("c/1/2", False), ("c/\u0661", False)],
)
def test_the_documented_key_pattern_ends_where_the_key_ends(key: str, valid: bool) -> None:
    """One rule for every pattern: a trailing newline, a third part or a non-ASCII digit is no invoice key."""
    import re

    assert (re.search(wire.INVOICE_KEY_PATTERN, key) is not None) is valid
    documented = _documented_key_patterns()
    assert documented and all(t["pattern"] == wire.INVOICE_KEY_PATTERN for t in documented)


def _documented_key_patterns() -> list[dict[str, str]]:
    doc = schemas.asyncapi()
    return [
        m["bindings"]["kafka"]["key"]
        for m in doc["components"]["messages"].values()
        if "pattern" in m.get("bindings", {}).get("kafka", {}).get("key", {})
    ]
