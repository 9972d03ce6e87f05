"""Commands: ``wechat-sim`` (the WeChat simulator) and ``diagram`` (the
lifecycle state diagram).

``wechat-sim`` forwards to ``simulator.server.main``. Its flags are copied
from the simulator's own parser at start rather than restated here, so the
two command lines cannot drift apart; ``invoice-sm`` validates each value with
the simulator's converter (errors name ``invoice-sm wechat-sim``) and hands
the simulator the text exactly as typed.

``diagram`` draws the lifecycle from the ``transitions`` Machine with
``GraphMachine``'s mermaid engine, never by hand (STYLE.md), and keeps two
copies of it current: ``docs/lifecycle.mmd`` and the fenced block between
``<!-- lifecycle-diagram:start -->`` and ``<!-- lifecycle-diagram:end -->``
in README.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adapters.settings import Settings
from consumers.cli import EXIT_FAILED, EXIT_OK, arguments, command

#: The source tree (an editable install); ``diagram`` is a developer command.
PROJECT_ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------
# wechat-sim
# --------------------------------------------------------------------------

#: Namespace attribute collecting the simulator's arguments, in order.
SIM_ARGV = "wechat_sim_argv"


class _Forward(argparse.Action):
    """Appends the option and its raw value to ``SIM_ARGV`` instead of storing
    a converted value, so the simulator re-parses exactly what was typed."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        raw = [values] if isinstance(values, str) else [str(v) for v in values or ()]
        setattr(namespace, SIM_ARGV, [*(getattr(namespace, SIM_ARGV, None) or []), option_string, *raw])


def _validated_text(convert: Callable[[str], Any]) -> Callable[[str], str]:
    """A ``type=`` that rejects what ``convert`` rejects but keeps the text."""

    def check(text: str) -> str:
        convert(text)
        return text

    # argparse names the type in "invalid <name> value" messages.
    check.__name__ = getattr(convert, "__name__", "value")
    return check


def _help_with_default(action: argparse.Action) -> str | None:
    if action.help == argparse.SUPPRESS:
        return action.help
    text = action.help or ""
    # Flags (False), repeatables ([]) and optional numbers (None) have no
    # default worth showing; ``in`` would also hide 0, as 0 == False.
    worth_showing = action.default is not None and action.default is not False and action.default != []
    if worth_showing and action.default is not argparse.SUPPRESS:
        text = f"{text} (default: {action.default})".lstrip()
    return text or None


def _wechat_sim_args(p: argparse.ArgumentParser) -> None:
    # The simulator's parser is the one definition of its flags. Reading it
    # costs an aiohttp import (~0.2 s) on every invoice-sm start; the
    # processor and deliverer import aiohttp anyway.
    from simulator.server import _parser as simulator_parser

    source = simulator_parser()
    group = p.add_argument_group("simulator", source.description)
    for action in source._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        group.add_argument(
            *action.option_strings,
            action=_Forward,
            dest=SIM_ARGV,
            nargs=action.nargs,
            type=_validated_text(action.type) if callable(action.type) else None,
            choices=action.choices,
            default=None,
            metavar=None if action.nargs == 0 else action.metavar or action.dest.upper(),
            help=_help_with_default(action),
        )


@command("wechat-sim", "Run the WeChat simulator (tokens, updatestatus, faults, /_sim/ control API) until SIGTERM.")
@arguments(_wechat_sim_args)
def wechat_sim(settings: Settings, args: argparse.Namespace) -> int:
    from simulator.server import main as simulator_main

    return simulator_main(getattr(args, SIM_ARGV) or [])


# --------------------------------------------------------------------------
# diagram
# --------------------------------------------------------------------------

DIAGRAM_TITLE = "Invoice reimbursement lifecycle"
README_START = "<!-- lifecycle-diagram:start -->"
README_END = "<!-- lifecycle-diagram:end -->"
DEFAULT_MMD = PROJECT_ROOT / "docs" / "lifecycle.mmd"
DEFAULT_README = PROJECT_ROOT / "README.md"


class MalformedMarkersError(ValueError):
    """The README has one marker without the other, or them in the wrong order."""


def lifecycle_mermaid() -> str:
    """The lifecycle as a mermaid ``stateDiagram-v2``, drawn by ``GraphMachine``."""
    from transitions.extensions.diagrams import GraphMachine

    from domain.lifecycle import build_machine

    # transitions writes the title bare between the front-matter fences;
    # mermaid reads front matter as YAML and only shows ``title: ...``.
    machine = build_machine(machine_cls=GraphMachine, graph_engine="mermaid", title=f"title: {DIAGRAM_TITLE}")
    # A fresh graph, not ``machine.get_graph()``: that one needs a model and
    # paints the model's current state as "active", which a reference
    # diagram must not do.
    source: str = machine.graph_cls(machine).get_graph().draw(None)
    # transitions indents blank lines; editors strip trailing blanks, which
    # would make the checked-in copy look stale.
    return "".join(line.rstrip() + "\n" for line in source.splitlines())


def readme_block(mermaid: str) -> str:
    return f"{README_START}\n```mermaid\n{mermaid}```\n{README_END}"


def replace_readme_block(readme: str, mermaid: str) -> str | None:
    """``readme`` with the diagram between the markers; ``None`` when it has no markers."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 and end < 0:
        return None
    if start < 0 or end < 0 or end < start:
        raise MalformedMarkersError(f"expected {README_START} before {README_END}, each once")
    return readme[:start] + readme_block(mermaid) + readme[end + len(README_END) :]


def _diagram_args(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the mmd file and the README block")
    mode.add_argument("--check", action="store_true", help="exit 1 if the mmd file or the README block is stale")
    p.add_argument("--mmd", type=Path, default=DEFAULT_MMD, metavar="PATH", help="mermaid file (default: docs/lifecycle.mmd)")
    p.add_argument("--readme", type=Path, default=DEFAULT_README, metavar="PATH", help="README with the markers (default: README.md)")


def _warn(message: str) -> None:
    print(f"invoice-sm diagram: warning: {message}", file=sys.stderr)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@command("diagram", "Print, write or check the lifecycle state diagram (mermaid, drawn from the transitions Machine).")
@arguments(_diagram_args)
def diagram(settings: Settings, args: argparse.Namespace) -> int:
    mermaid = lifecycle_mermaid()
    if not (args.write or args.check):
        sys.stdout.write(mermaid)
        return EXIT_OK
    mmd: Path = args.mmd
    readme_path: Path = args.readme
    readme = readme_path.read_text() if readme_path.exists() else None
    try:
        new_readme = replace_readme_block(readme, mermaid) if readme is not None else None
    except MalformedMarkersError as exc:
        print(f"invoice-sm diagram: {_shown(readme_path)}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    # A README without markers is not stale, only not yet wired up: its
    # author adds the markers, then ``--write`` fills them in.
    if readme is None:
        _warn(f"{_shown(readme_path)} does not exist; the diagram lives only in {_shown(mmd)}")
    elif new_readme is None:
        _warn(f"{_shown(readme_path)} has no {README_START} / {README_END} markers; add them to embed the diagram")

    if args.check:
        stale = [] if mmd.exists() and mmd.read_text() == mermaid else [mmd]
        if new_readme is not None and new_readme != readme:
            stale.append(readme_path)
        for path in stale:
            print(f"stale: {_shown(path)} (run invoice-sm diagram --write)", file=sys.stderr)
        return EXIT_FAILED if stale else EXIT_OK

    mmd.parent.mkdir(parents=True, exist_ok=True)
    mmd.write_text(mermaid)
    print(f"wrote {_shown(mmd)}")
    if new_readme is not None and new_readme != readme:
        readme_path.write_text(new_readme)
        print(f"updated {_shown(readme_path)}")
    return EXIT_OK
