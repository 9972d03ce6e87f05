"""The ``invoice-sm`` command line.

Every setting is an ``INVOICE_SM_*`` variable and a matching ``--flag`` on
every command (flags win). A wrong or missing setting stops the command
with exit code 2 and a message naming it; secrets are never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from adapters.settings import ENV_PREFIX, Settings, load_settings
from domain.errors import ConfigurationError, InvoiceSmError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_DIFFERENCES = 0, 1, 2, 3

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[Settings, argparse.Namespace], int]]] = {}


def command(name: str, help_text: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    def register(fn: Callable[..., int]) -> Callable[..., int]:
        if name in COMMANDS and COMMANDS[name][2] is not fn:
            raise RuntimeError(f"two commands are named {name!r}")
        COMMANDS[name] = (help_text, getattr(fn, "arguments", lambda p: None), fn)
        return fn

    return register


def arguments(add: Callable[[argparse.ArgumentParser], None]) -> Callable[[Callable[..., int]], Callable[..., int]]:
    def attach(fn: Callable[..., int]) -> Callable[..., int]:
        fn.arguments = add  # type: ignore[attr-defined]
        return fn

    return attach


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(f"settings (each is also an environment variable {ENV_PREFIX}<NAME>)")
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        helptext = f"{ENV_PREFIX}{name.upper()}" + (f": {info.description}" if info.description else "")
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
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(child)
        _settings_flags(child)
    return parser


def main(argv: list[str] | None = None) -> int:
    _load_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    _, _, handler = COMMANDS[args.command]
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


COMMAND_MODULES = (
    "consumers.commands", "consumers.commands_delivery", "consumers.commands_history", "consumers.commands_ops",
    "consumers.commands_topics",
)


def _load_commands() -> None:
    # Importing registers the commands (each module owns a group of them).
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module)


if __name__ == "__main__":
    # Run as a script this module is ``__main__``, a second copy whose registry
    # the command modules do not fill: hand over to the imported module.
    from consumers.cli import main as _main

    raise SystemExit(_main())
