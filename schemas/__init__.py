"""Versioned JSON Schemas (draft 2020-12) of every topic, and an AsyncAPI 3.0
document naming topics, keys, headers and schemas, and the operations of the
processor and the deliverer.

The files are generated from the wire types in ``adapters.wire``
(``invoice-sm schemas --write``); ``tests/unit/test_schemas.py`` fails when
the checked-in files differ from what the code would generate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def schema_dir() -> Path:
    return Path(__file__).parent


def schema_file(kind: str) -> str:
    return f"{kind}.v{SCHEMA_VERSION}.schema.json"


def load(kind: str) -> dict[str, Any]:
    """A checked-in schema by kind (event, outcome, state, delivery, dlq)."""
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


def _component_schema() -> dict[str, Any]:
    import msgspec

    from adapters.webhook_messages import ComponentRecord

    # Inline (no file of its own): the record is flat, so its one definition is the schema.
    (_,), components = msgspec.json.schema_components([ComponentRecord], ref_template="#/$defs/{name}")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **components["ComponentRecord"]}


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document: channels (topics), messages, and what the
    processor and the deliverer each do on them (operations)."""
    from adapters.settings import Settings
    from adapters.wire import DLQ_HEADERS, DLQ_REASONS

    defaults = {name: f.default for name, f in Settings.model_fields.items()}
    partitions = defaults["topic_partitions"]
    key_schema = {
        "type": "string",
        "description": "the invoice key: card_id/code",
        "pattern": "^[A-Za-z0-9_-]{1,64}/[A-Za-z0-9_-]{1,64}$",
    }
    invoice_key = {"key": key_schema, "bindingVersion": _KAFKA_BINDING}

    def content_type_header(value: str, why: str) -> dict[str, Any]:
        return _headers(
            {"content-type": {"const": value, "description": why}},
            ["content-type"],
            others=False,
            description="Kafka record headers",
        )

    def channel(address: str, cleanup: str, description: str, messages: list[str], **config: Any) -> dict[str, Any]:
        return {
            "address": address,
            "description": description,
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages},
            "bindings": {
                "kafka": {
                    "partitions": partitions,
                    "topicConfiguration": {"cleanup.policy": [cleanup], **config},
                    "bindingVersion": _KAFKA_BINDING,
                }
            },
        }

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

    messages: dict[str, Any] = {
        "eventStructured": {
            "name": "eventStructured",
            "title": "Lifecycle event, structured mode",
            "summary": "A CloudEvent 1.0 in the record value (content-type application/cloudevents+json). "
            "A record without content-type is read as structured JSON too.",
            "contentType": STRUCTURED,
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
            "bindings": {"kafka": invoice_key},
        },
        "eventBinary": {
            "name": "eventBinary",
            "title": "Lifecycle event, binary mode",
            "summary": "CloudEvents Kafka binding, binary mode: attributes in ce_* headers, the event's data "
            "object as the record value. The Kafka key must be the invoice key.",
            "contentType": "application/json",
            "headers": _headers(binary_headers, ce_required, others=True, description="ce_* attribute headers"),
            "payload": _schema({"$ref": f"./{schema_file('event')}#/$defs/EventData"}),
            "bindings": {"kafka": invoice_key},
        },
        "outcome": {
            "name": "outcome",
            "title": "Decision",
            "summary": "Exactly one per valid event: a CloudEvent 1.0, structured mode.",
            "contentType": STRUCTURED,
            "headers": content_type_header(STRUCTURED, "CloudEvents Kafka binding, structured mode"),
            "payload": _schema({"$ref": f"./{schema_file('outcome')}"}),
            "bindings": {"kafka": invoice_key},
        },
        "state": {
            "name": "state",
            "title": "Latest state of an invoice",
            "contentType": "application/json",
            "payload": _schema({"$ref": f"./{schema_file('state')}"}),
            "bindings": {"kafka": invoice_key},
        },
        "delivery": {
            "name": "delivery",
            "title": "Final WeChat delivery record",
            "summary": "One per accepted outcome (and repair): a CloudEvent 1.0 of type invoice.delivery.recorded, "
            "structured mode; id = idempotency key @ result, subject = the invoice key, data = the "
            "delivery record (result, errcode, attempts, timings, reason).",
            "contentType": STRUCTURED,
            "headers": content_type_header(STRUCTURED, "CloudEvents Kafka binding, structured mode"),
            "payload": _schema({"$ref": f"./{schema_file('delivery')}"}),
            "bindings": {"kafka": invoice_key},
        },
        "waiting": {
            "name": "waiting",
            "title": "Waiting delivery or partition owner marker",
            "summary": "Key `w:<idempotency key>`: a delivery waiting off the commit path (tombstone when it ends); "
            "key `o:owner`: the partition's ownership marker (open/closed).",
            "contentType": "application/json",
            "payload": _schema({"$ref": f"./{schema_file('waiting')}"}),
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": "w:<idempotency key> or o:owner"},
                    "bindingVersion": _KAFKA_BINDING,
                }
            },
        },
        "component": {
            "name": "component",
            "title": "WeChat component push (third-party platform)",
            "summary": "Written by the webhook: the newest component_verify_ticket (key: the component appid) and each "
            "authorizer's latest authorized/updateauthorized/unauthorized (key: component_appid/authorizer_appid). "
            "Every deliverer reads all of it from the beginning, without a consumer group.",
            "description": "`ticket` is a credential: the topic is for this service's deliverers only (ACLs), "
            "and it is never logged.",
            "contentType": "application/json",
            "headers": content_type_header("application/json", "a plain JSON record"),
            "payload": _schema(_component_schema()),
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": "component_appid or component_appid/authorizer_appid"},
                    "bindingVersion": _KAFKA_BINDING,
                }
            },
        },
        "dlq": {
            "name": "dlq",
            "title": "Refused input",
            "summary": "The original record byte for byte (value cut to fit the broker's limit, then marked), "
            "its original headers, and dlq.* headers naming the error and the source position.",
            "description": "The value is whatever arrived: it may be empty, not UTF-8 or not JSON, so no content type "
            "is promised. Reasons: "
            + ", ".join(f"`{k}` ({v})" for k, v in DLQ_REASONS.items())
            + f". `invoice-sm dlq list` prints a record as {schema_file('dlq')}.",
            "contentType": "application/octet-stream",
            "headers": _headers(
                dlq_properties, dlq_required, others=True, description="dlq.* headers, plus the original record's headers"
            ),
            "payload": _schema({"description": "the original record value, as bytes (not a JSON document)"}),
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": "the original key, byte for byte"},
                    "bindingVersion": _KAFKA_BINDING,
                }
            },
        },
    }
    # Channels come from the one topic table (adapters/topics.py), as built
    # from the default settings (not the environment's): names, cleanup,
    # retention, min ISR.
    from adapters.topics import topic_table

    channel_messages = {
        "events": ["eventStructured", "eventBinary"],
        "outcomes": ["outcome"],
        "state": ["state"],
        "deliveries": ["delivery"],
        "waiting": ["waiting"],
        "dlq": ["dlq"],
        "component": ["component"],
    }
    channels = {}
    for spec in topic_table(Settings.model_construct()):
        config: dict[str, Any] = {k: (int(v) if k != "cleanup.policy" else v) for k, v in spec.configs().items()}
        config.pop("cleanup.policy")
        channels[spec.role] = channel(
            spec.name,
            spec.cleanup,
            f"{spec.description[0].upper()}{spec.description[1:]}.",
            channel_messages[spec.role],
            **config,
        )

    def operation(service: str, action: str, name: str, messages: list[str], summary: str) -> dict[str, Any]:
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": summary,
            "messages": [{"$ref": f"#/channels/{name}/messages/{m}"} for m in messages],
            "tags": [{"$ref": f"#/components/tags/{service}"}],
        }

    operations = {
        "processorReceiveEvents": operation(
            "processor",
            "receive",
            "events",
            ["eventStructured", "eventBinary"],
            "Consumer group per INVOICE_SM_GROUP_ID, read_committed; decides each event in partition order.",
        ),
        "processorSendOutcomes": operation(
            "processor",
            "send",
            "outcomes",
            ["outcome"],
            "One outcome per valid event, in the input's transaction (exactly once).",
        ),
        "processorSendState": operation(
            "processor", "send", "state", ["state"], "The invoice's new state, in the same transaction."
        ),
        "processorSendDlq": operation(
            "processor", "send", "dlq", ["dlq"], "Every record it cannot decide, in the same transaction."
        ),
        "delivererReceiveOutcomes": operation(
            "deliverer",
            "receive",
            "outcomes",
            ["outcome"],
            "Accepted (and repair) outcomes become updatestatus calls to WeChat, per invoice in version order.",
        ),
        "delivererSendDeliveries": operation(
            "deliverer",
            "send",
            "deliveries",
            ["delivery"],
            "The final record of each delivery, in one transaction with the consumed offsets.",
        ),
        "delivererSendWaiting": operation(
            "deliverer",
            "send",
            "waiting",
            ["waiting"],
            "Deliveries that wait for their account or a long backoff, and ownership markers, in the same transactions.",
        ),
        "delivererReceiveWaiting": operation(
            "deliverer",
            "receive",
            "waiting",
            ["waiting"],
            "Read to its end when a partition is taken over: the waiting deliveries resume, "
            "the marker says how the last owner left.",
        ),
        "webhookSendEvents": operation(
            "webhook",
            "send",
            "events",
            ["eventStructured"],
            "WeChat's update_invoice_status push as an invoice.wechat.status_reported event (id derived from the push, "
            "so WeChat's retries are one event), keyed by the invoice key; answered success only once acknowledged.",
        ),
        "webhookSendComponent": operation(
            "webhook",
            "send",
            "component",
            ["component"],
            "component_verify_ticket, authorized, updateauthorized and unauthorized pushes.",
        ),
        "delivererReceiveComponent": operation(
            "deliverer",
            "receive",
            "component",
            ["component"],
            "Every partition from the beginning, no group: the newest ticket refreshes component tokens; "
            "unauthorized ends that authorizer's deliveries with reason unauthorized.",
        ),
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
    from adapters.waiting_room import json_schema as waiting_schema
    from adapters.wire import json_schemas

    files = {schema_file(kind): _dump(schema) for kind, schema in json_schemas().items()}
    files[schema_file("waiting")] = _dump(waiting_schema())
    files["asyncapi.json"] = _dump(asyncapi())
    return files
