"""``python -m devtools diagram`` (``./dev diagram``): the lifecycle state
diagram.

It draws the lifecycle from the ``transitions`` Machine with
``GraphMachine``'s mermaid engine, never by hand (STYLE.md), and keeps two
copies of it current: ``docs/lifecycle.mmd`` and the fenced block between
``<!-- lifecycle-diagram:start -->`` and ``<!-- lifecycle-diagram:end -->``
in README.md. It writes into the source tree, which is why it is a developer
tool and not an ``invoice-sm`` command: an installed service has no tree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED = 0, 1

#: The checkout devtools runs from (devtools/ is never installed).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROG = "python -m devtools diagram"


DIAGRAM_TITLE = "Invoice reimbursement lifecycle"
README_START = "<!-- lifecycle-diagram:start -->"
README_END = "<!-- lifecycle-diagram:end -->"
DEFAULT_MMD = PROJECT_ROOT / "docs" / "lifecycle.mmd"
DEFAULT_README = PROJECT_ROOT / "README.md"

#: Not drawn from the Machine, which holds only the moves upstream may ask
#: for: a WeChat report (domain/decide.py) moves the card from any status to
#: the reported one. A mermaid note, so it adds no state and no edge.
WECHAT_NOTE = """\
  %% Added by devtools/diagram.py, not drawn from the Machine: the WeChat path.
  note left of INVOICE_REIMBURSE_INIT
    WeChat report (invoice.wechat.status_reported, origin wechat)
    any status -> the reported status, version + 1
    legal when the Machine has that move, otherwise a divergence (legal false, alerted)
    never sent back to WeChat, the same status again is unchanged
  end note
"""


class MalformedMarkersError(ValueError):
    """The README has one marker without the other, or them in the wrong order."""


def lifecycle_mermaid() -> str:
    """The lifecycle as a mermaid ``stateDiagram-v2``, drawn by ``GraphMachine``, and ``WECHAT_NOTE``."""
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
    drawn = "".join(line.rstrip() + "\n" for line in source.splitlines())
    return f"{drawn}\n{WECHAT_NOTE}"


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Print, write or check the lifecycle state diagram (mermaid, drawn from the transitions Machine).",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the mmd file and the README block")
    mode.add_argument("--check", action="store_true", help="exit 1 if the mmd file or the README block is stale")
    p.add_argument("--mmd", type=Path, default=DEFAULT_MMD, metavar="PATH", help="mermaid file (default: docs/lifecycle.mmd)")
    p.add_argument(
        "--readme", type=Path, default=DEFAULT_README, metavar="PATH", help="README with the markers (default: README.md)"
    )
    return p


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
        print(f"{PROG}: {_shown(readme_path)}: {exc}", file=sys.stderr)
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
            print(f"stale: {_shown(path)} (run ./dev diagram --write)", file=sys.stderr)
        return EXIT_FAILED if stale else EXIT_OK

    mmd.parent.mkdir(parents=True, exist_ok=True)
    mmd.write_text(mermaid)
    print(f"wrote {_shown(mmd)}")
    if new_readme is not None and new_readme != readme:
        readme_path.write_text(new_readme)
        print(f"updated {_shown(readme_path)}")
    return EXIT_OK
