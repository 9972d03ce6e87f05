"""Command: ``topics create|check|describe``, from the one topic table
(``adapters.topics.topic_table``).

- ``describe`` prints the table the settings give (no broker needed).
- ``create`` creates the missing topics with the table's settings, whatever
  ``INVOICE_SM_CREATE_TOPICS`` says (asking for it is the point), and runs the
  same checks a service start does.
- ``check`` compares the cluster's topics with the table (existence,
  partitions, replication factor, cleanup policy, retention, min ISR), prints
  the differences, and exits 3 when there are any.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from adapters.settings import Settings
from consumers.cli import EXIT_DIFFERENCES, EXIT_OK


def topics_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=("create", "check", "describe"),
        help="create missing topics, compare the cluster with the table, or print the table",
    )
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.epilog = "Exit codes: 0 as the table says, 3 (check) differences found, 1 failure, 2 configuration error."


def topics_command(settings: Settings, args: argparse.Namespace) -> int:
    from adapters import topics
    from consumers.app import configure
    from consumers.render import print_partition_counts, print_topic_check, print_topic_table

    configure(settings)
    specs = topics.topic_table(settings)
    if args.action == "describe":
        if args.json:
            print(json.dumps([_spec_json(s) for s in specs], indent=2))
        else:
            print_topic_table(specs)
        return EXIT_OK
    if args.action == "create":
        counts = asyncio.run(topics.ensure_topics(settings, create=True))
        if args.json:
            print(json.dumps(counts))
        else:
            print_partition_counts(counts)
        return EXIT_OK
    _, cluster, differences = asyncio.run(topics.check(settings))
    if args.json:
        print(
            json.dumps(
                {
                    "clean": not differences,
                    "differences": [d.to_json() for d in differences],
                    "topics": {s.name: _actual_json(cluster.get(s.name)) for s in specs},
                },
                indent=2,
            )
        )
    else:
        print_topic_check(len(specs), differences)
    return EXIT_DIFFERENCES if differences else EXIT_OK


def _spec_json(spec: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "role": spec.role,
        "key": spec.key,
        "cleanup": spec.cleanup,
        "retention_ms": spec.retention_ms,
        "partitions": spec.partitions,
        "replication_factor": spec.replication_factor,
        "min_insync_replicas": spec.min_insync_replicas,
        "description": spec.description,
        "configs": spec.configs(),
    }


def _actual_json(info: dict[str, Any] | None) -> dict[str, Any] | None:
    if info is None:
        return None
    configs = info.get("configs", {})
    keys = ("cleanup.policy", "retention.ms", "retention.bytes", "min.insync.replicas")
    return {
        "partitions": info["partitions"],
        "replication_factor": info["replication_factor"],
        **{k: configs[k] for k in keys if k in configs},
    }
