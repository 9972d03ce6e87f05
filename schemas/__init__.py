"""Versioned JSON Schemas (draft 2020-12) of every topic, and an AsyncAPI 3.0
document naming topics, keys and schemas.

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


def asyncapi() -> dict[str, Any]:
    from adapters.settings import Settings
    from adapters.wire import DLQ_HEADERS, DLQ_REASONS

    defaults = {name: f.default for name, f in Settings.model_fields.items()}
    key = {"type": "string", "description": "invoice key: card_id/code", "pattern": "^[A-Za-z0-9_\\-]{1,64}/[A-Za-z0-9_\\-]{1,64}$"}
    topics = {
        "events": (defaults["topic_events"], "event", "upstream", "delete", "Lifecycle events, CloudEvents 1.0 (structured or binary mode)."),
        "outcomes": (defaults["topic_outcomes"], "outcome", "processor", "delete", "Exactly one decision per valid event."),
        "state": (defaults["topic_state"], "state", "processor", "compact", "Latest state per invoice; the changelog local state is restored from."),
        "deliveries": (defaults["topic_deliveries"], "delivery", "deliverer", "delete", "One final WeChat delivery record per accepted outcome."),
    }
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for name, (address, kind, writer, cleanup, description) in topics.items():
        channels[name] = {
            "address": address,
            "description": f"{description} Written by {writer}; cleanup.policy={cleanup}.",
            "messages": {kind: {"$ref": f"#/components/messages/{kind}"}},
            "bindings": {"kafka": {"topicConfiguration": {"cleanup.policy": [cleanup]}}},
        }
        messages[kind] = {
            "name": kind,
            "contentType": "application/cloudevents+json" if kind in ("event", "outcome") else "application/json",
            "payload": {"$ref": f"./{schema_file(kind)}"},
            "bindings": {"kafka": {"key": key}},
        }
    channels["dlq"] = {
        "address": defaults["topic_dlq"],
        "description": "Records the processor could not decide: original key, value and headers byte for byte, "
        "plus dlq.* headers naming the error and the source position. Reasons: "
        + ", ".join(f"{k} ({v})" for k, v in DLQ_REASONS.items()),
        "messages": {"dlq": {"$ref": "#/components/messages/dlq"}},
    }
    messages["dlq"] = {
        "name": "dlq",
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "properties": {header: {"type": "string"} for header in DLQ_HEADERS.values()},
            "required": list(DLQ_HEADERS.values()),
        },
        "payload": {"description": "the original bytes; `invoice-sm dlq list` prints records as " + schema_file("dlq"),
                    "$ref": f"./{schema_file('dlq')}"},
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "invoice-sm", "version": f"{SCHEMA_VERSION}.0.0",
                 "description": "Topics of invoice-sm. Every record is keyed by the invoice key."},
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"messages": messages},
    }


def generated_files(settings: object | None = None) -> dict[str, str]:
    """File name -> content, exactly as ``schemas --write`` writes them."""
    from adapters.wire import json_schemas

    files = {schema_file(kind): _dump(schema) for kind, schema in json_schemas().items()}
    files["asyncapi.json"] = _dump(asyncapi())
    return files
