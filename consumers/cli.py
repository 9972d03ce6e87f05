"""The ``invoice-sm`` command line.

``COMMANDS`` is the one table of commands: name, help, the handler and the
function that adds its arguments, each named ``module:function`` (pip's
command table does the same). A command's module is imported only when the
parser is built, never at import time of this one, and command modules can
import the exit codes from here without an import cycle.

To add a command: write ``handler(settings, args) -> exit code`` (and, if it
takes arguments, ``add_arguments(parser)``) in a ``consumers/commands_*.py``
module, then add one ``Command`` row below.

Every setting is an ``INVOICE_SM_*`` variable and a matching ``--flag`` on
every command (flags win). A wrong or missing setting stops the command
with exit code 2 and a message naming it; secrets are never printed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from adapters.settings import ENV_PREFIX, Settings, env_name, load_settings
from consumers import early_stop
from domain.errors import ConfigurationError, InvoiceSmError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_DIFFERENCES = 0, 1, 2, 3

Handler = Callable[[Settings, argparse.Namespace], int]
AddArguments = Callable[[argparse.ArgumentParser], None]


def _resolve(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True, slots=True)
class Command:
    """One row of the command table."""

    name: str
    help: str
    #: ``module:function`` of the handler: ``(settings, args) -> exit code``.
    handler: str
    #: ``module:function`` adding the command's own arguments to its parser, if it has any.
    arguments: str | None = None
    #: A long-running service: a stop signal during its start is honoured once its loop runs
    #: (``consumers.early_stop``) instead of killing it half started.
    service: bool = False

    def load_handler(self) -> Handler:
        handler: Handler = _resolve(self.handler)
        return handler

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        if self.arguments is not None:
            add: AddArguments = _resolve(self.arguments)
            add(parser)


# One row per command, in the order ``invoice-sm --help`` lists them.
_TABLE: Final = (
    Command(
        "process",
        "Decide lifecycle events: invoice.events -> outcomes + state, exactly once.",
        "consumers.commands:process",
        "consumers.commands:process_arguments",
        service=True,
    ),
    Command(
        "deliver",
        "Push accepted statuses to WeChat updatestatus: in order per invoice, with idempotency keys.",
        "consumers.commands_delivery:deliver",
        service=True,
    ),
    Command(
        "run",
        "Run the processor and the deliverer in one process.",
        "consumers.commands_delivery:run",
        "consumers.commands_delivery:run_arguments",
        service=True,
    ),
    Command(
        "webhook",
        "WeChat's message push in: status reports to the events topic, component tickets to the component topic.",
        "consumers.commands_delivery:webhook",
        service=True,
    ),
    Command(
        "publish",
        "Send lifecycle events from a JSONL file or stdin, keyed by invoice.",
        "consumers.commands:publish",
        "consumers.commands:publish_arguments",
    ),
    Command(
        "status",
        "What the service knows of invoices: status, version, appid, last decisions, last delivery.",
        "consumers.commands_status:status",
        "consumers.commands_status:_status_args",
    ),
    Command(
        "replay",
        "Rebuild invoice state from invoice.events with the processor's own decisions; no side effects.",
        "consumers.commands_history:replay_command",
        "consumers.commands_history:replay_arguments",
    ),
    Command(
        "reconcile",
        "Compare rebuilt state, live state, deliveries and WeChat; report differences, optionally repair.",
        "consumers.commands_history:reconcile_command",
        "consumers.commands_history:reconcile_arguments",
    ),
    Command(
        "dlq",
        "Inspect invoice.events.dlq (list) and re-inject fixed records into invoice.events (reinject).",
        "consumers.commands_history:dlq_command",
        "consumers.commands_history:dlq_arguments",
    ),
    Command(
        "topics",
        "Create, check or describe the topics, from the one topic table.",
        "consumers.commands_topics:topics_command",
        "consumers.commands_topics:topics_arguments",
    ),
    Command(
        "schemas",
        "Print, write or check the JSON Schemas and AsyncAPI document of every topic.",
        "consumers.commands:schemas",
        "consumers.commands:schemas_arguments",
    ),
)

#: The command table, by name.
COMMANDS: Final[dict[str, Command]] = {c.name: c for c in _TABLE}
if len(COMMANDS) != len(_TABLE):
    raise RuntimeError("two commands share a name in consumers.cli._TABLE")


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(f"settings (each is also an environment variable {ENV_PREFIX}<NAME>)")
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        helptext = env_name(name) + (f": {info.description}" if info.description else "")
        annotation = info.annotation
        if annotation is bool:
            group.add_argument(flag, dest=f"setting_{name}", action=argparse.BooleanOptionalAction, default=None, help=helptext)
        elif "dict" in str(annotation):
            group.add_argument(flag, dest=f"setting_{name}", type=json.loads, default=None, metavar="JSON", help=helptext)
        else:
            group.add_argument(flag, dest=f"setting_{name}", default=None, metavar="VALUE", help=helptext)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="invoice-sm",
        description="Keeps WeChat e-invoice cards in step with the invoice lifecycle.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        child = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(child)
        _settings_flags(child)
    return parser


def main(argv: list[str] | None = None) -> int:
    early_stop.install()
    try:
        args = build_parser().parse_args(argv)
        command = COMMANDS[args.command]
        if not command.service and (pending := early_stop.uninstall()) is not None:
            return 128 + pending  # stopped while starting: as the signal would have (130 for Ctrl-C)
        return _run(command, args)
    finally:
        early_stop.uninstall()


def _run(command: Command, args: argparse.Namespace) -> int:
    handler = command.load_handler()
    overrides = {k.removeprefix("setting_"): v for k, v in vars(args).items() if k.startswith("setting_")}
    try:
        settings = load_settings(**overrides)
        return handler(settings, args)
    except ConfigurationError as exc:
        print(f"invoice-sm {args.command}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except InvoiceSmError as exc:
        print(f"invoice-sm {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
