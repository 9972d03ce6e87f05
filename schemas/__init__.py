"""Versioned JSON Schemas (draft 2020-12) of every topic, and an AsyncAPI 3.0
document naming topics, keys, headers and schemas, and the operations of the
processor, the deliverer and the webhook.

The files are generated (``invoice-sm schemas --write``) from two tables: the
record formats of ``adapters.wire.SCHEMA_TYPES`` (a schema file and an
AsyncAPI message each) and the topics of ``adapters.topics.topic_table``
(channels, and the operations on them). ``tests/unit/test_schemas.py`` fails
when the checked-in files differ from what the code would generate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.wire import WireFormat

SCHEMA_VERSION = 1


def schema_dir() -> Path:
    return Path(__file__).parent


def schema_file(kind: str) -> str:
    return f"{kind}.v{SCHEMA_VERSION}.schema.json"


def load(kind: str) -> dict[str, Any]:
    """A checked-in schema by kind (a row of ``adapters.wire.SCHEMA_TYPES``)."""
    return json.loads((schema_dir() / schema_file(kind)).read_text())


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


#: How the payload and header schemas are written (AsyncAPI 3.0 Multi Format
#: Schema Object): JSON Schema draft 2020-12, as ``adapters.wire`` generates them.
JSON_SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"
STRUCTURED = "application/cloudevents+json"
#: The official AsyncAPI 3.0.0 JSON Schema, vendored (schemas/vendor/README.md).
ASYNCAPI_SCHEMA = "vendor/asyncapi-3.0.0.schema.json"
_KAFKA_BINDING = "0.5.0"


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"schemaFormat": JSON_SCHEMA_FORMAT, "schema": schema}


def _headers(properties: dict[str, Any], required: list[str], *, others: bool, description: str) -> dict[str, Any]:
    return _schema(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "description": description,
            "properties": properties,
            "required": required,
            "additionalProperties": {"type": "string"} if others else False,
        }
    )


def _message(name: str, wire_format: WireFormat) -> dict[str, Any]:
    """The AsyncAPI message of a row of ``adapters.wire.SCHEMA_TYPES``: its
    payload is the row's schema file."""
    message: dict[str, Any] = {"name": name, "title": wire_format.title}
    if wire_format.summary:
        message["summary"] = wire_format.summary
    if wire_format.description:
        message["description"] = wire_format.description
    message["contentType"] = wire_format.content_type
    if wire_format.content_type_header:
        message["headers"] = _headers(
            {"content-type": {"const": wire_format.content_type, "description": wire_format.content_type_header}},
            ["content-type"],
            others=False,
            description="Kafka record headers",
        )
    message["payload"] = _schema({"$ref": f"./{schema_file(name)}"})
    message["bindings"] = {"kafka": _key_binding(wire_format)}
    return message


def _key_binding(wire_format: WireFormat) -> dict[str, Any]:
    key: dict[str, Any] = {"type": "string", "description": wire_format.key}
    if wire_format.key_pattern is not None:
        key["pattern"] = wire_format.key_pattern
    return {"key": key, "bindingVersion": _KAFKA_BINDING}


def _written_out(formats: dict[str, WireFormat]) -> dict[str, dict[str, Any]]:
    """The messages that need more than a row of ``SCHEMA_TYPES`` says: the
    two modes of a lifecycle event (one format, two messages) and the DLQ's
    headers and raw payload."""
    from adapters.wire import DLQ_HEADERS, DLQ_REASONS

    event = formats["event"]
    ce_required = ["ce_specversion", "ce_id", "ce_source", "ce_type"]
    binary_headers = {h: {"type": "string"} for h in ce_required}
    binary_headers["ce_specversion"] = {"const": "1.0"}
    binary_headers.update({h: {"type": "string"} for h in ("ce_time", "ce_subject", "ce_partitionkey")})
    binary_headers["content-type"] = {"type": "string", "pattern": "json", "description": "of the data: a JSON media type"}
    dlq_header_names = list(DLQ_HEADERS.values())
    dlq_required = dlq_header_names[:7]
    dlq_properties: dict[str, Any] = {name: {"type": "string"} for name in dlq_header_names}
    dlq_properties[DLQ_HEADERS["reason"]] = {"enum": list(DLQ_REASONS), "description": "why the record was refused"}
    for name in ("source_partition", "source_offset", "value_original_size", "headers_dropped"):
        dlq_properties[DLQ_HEADERS[name]] = {"type": "string", "pattern": "^[0-9]+$"}
    dlq_properties[DLQ_HEADERS["value_truncated"]] = {"const": "true"}
    dlq_properties[DLQ_HEADERS["value_sha256"]] = {
        "type": "string",
        "pattern": "^[0-9a-f]{64}$",
        "description": "SHA-256 of the original value, before it was cut",
    }
    return {
        "eventStructured": {
            "name": "eventStructured",
            "title": f"{event.title}, structured mode",
            "summary": "A CloudEvent 1.0 in the record value (content-type application/cloudevents+json). "
            "A record without content-type is read as structured JSON too.",
            "contentType": event.content_type,
            "headers": _headers(
                {
                    "content-type": {
                        "type": "string",
                        "pattern": "json",
                        "examples": [STRUCTURED],
                        "description": "application/cloudevents+json; without ce_* headers, another JSON "
                        "type or none is read as structured too (the CloudEvents SDK's "
                        "cloudevents.v1.kafka sends application/json)",
                    }
                },
                [],
                others=True,
                description="Kafka record headers",
            ),
            "payload": _schema({"$ref": f"./{schema_file('event')}"}),
            "bindings": {"kafka": _key_binding(event)},
        },
        "eventBinary": {
            "name": "eventBinary",
            "title": f"{event.title}, binary mode",
            "summary": "CloudEvents Kafka binding, binary mode: attributes in ce_* headers, the event's data "
            "object as the record value. The Kafka key must be the invoice key.",
            "contentType": "application/json",
            "headers": _headers(binary_headers, ce_required, others=True, description="ce_* attribute headers"),
            "payload": _schema({"$ref": f"./{schema_file('event')}#/$defs/EventData"}),
            "bindings": {"kafka": _key_binding(event)},
        },
        "dlq": {
            **_message("dlq", formats["dlq"]),
            "description": "The value is whatever arrived: it may be empty, not UTF-8 or not JSON, so no content type "
            "is promised. Reasons: "
            + ", ".join(f"`{k}` ({v})" for k, v in DLQ_REASONS.items())
            + f". `invoice-sm dlq list` prints a record as {schema_file('dlq')}.",
            "headers": _headers(
                dlq_properties, dlq_required, others=True, description="dlq.* headers, plus the original record's headers"
            ),
            "payload": _schema({"description": "the original record value, as bytes (not a JSON document)"}),
        },
    }


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document: channels (topics), messages, and what the
    processor, the deliverer and the webhook each do on them (operations).

    All of it comes from two tables: the topics (``adapters.topics.topic_table``
    as built from the default settings, not the environment's: names, cleanup,
    retention, min ISR, messages, operations) and the record formats
    (``adapters.wire.SCHEMA_TYPES``). Only ``_written_out``'s messages are
    written here.
    """
    from adapters.settings import Settings
    from adapters.topics import topic_table
    from adapters.wire import SCHEMA_TYPES

    specs = topic_table(Settings.model_construct())
    written_out = _written_out(SCHEMA_TYPES)
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in specs:
        for name in spec.messages:
            if name not in messages:
                messages[name] = written_out[name] if name in written_out else _message(name, SCHEMA_TYPES[name])
        config = {k: [v] if k == "cleanup.policy" else int(v) for k, v in spec.configs().items()}
        channels[spec.role] = {
            "address": spec.name,
            "description": f"{spec.description[0].upper()}{spec.description[1:]}.",
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in spec.messages},
            "bindings": {
                "kafka": {
                    "partitions": spec.partitions,
                    "topicConfiguration": config,
                    "bindingVersion": _KAFKA_BINDING,
                }
            },
        }
        for op in spec.operations:
            operations[f"{op.service}{op.action.capitalize()}{spec.role.capitalize()}"] = {
                "action": op.action,
                "channel": {"$ref": f"#/channels/{spec.role}"},
                "summary": op.summary,
                "messages": [{"$ref": f"#/channels/{spec.role}/messages/{m}"} for m in op.messages or spec.messages],
                "tags": [{"$ref": f"#/components/tags/{op.service}"}],
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "invoice-sm",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": "Topics of invoice-sm and what its two services do on them: the processor "
            "(`invoice-sm process`), the deliverer (`invoice-sm deliver`) and the webhook "
            "(`invoice-sm webhook`, WeChat's pushes in); `invoice-sm run` is all three. "
            "Invoice records are keyed by the invoice key. Generated by `invoice-sm schemas --write`.",
            "tags": [
                {"$ref": "#/components/tags/processor"},
                {"$ref": "#/components/tags/deliverer"},
                {"$ref": "#/components/tags/webhook"},
            ],
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "tags": {
                "processor": {"name": "processor", "description": "invoice-sm process: events -> outcomes, state, DLQ"},
                "deliverer": {"name": "deliverer", "description": "invoice-sm deliver: outcomes -> WeChat -> deliveries"},
                "webhook": {"name": "webhook", "description": "invoice-sm webhook: WeChat pushes -> events, component topic"},
            },
        },
    }


def generated_files(settings: object | None = None) -> dict[str, str]:
    """File name -> content, exactly as ``schemas --write`` writes them."""
    from adapters.wire import json_schemas

    files = {schema_file(kind): _dump(schema) for kind, schema in json_schemas().items()}
    files["asyncapi.json"] = _dump(asyncapi())
    return files
