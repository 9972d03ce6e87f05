"""``python -m devtools diagram``: the lifecycle diagram is drawn from the Machine and
kept current in docs/lifecycle.mmd and the README's marked block."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from devtools.diagram import DEFAULT_MMD, EXIT_FAILED, EXIT_OK, README_END, README_START, lifecycle_mermaid, main
from domain.lifecycle import STATES, TRANSITIONS

STATE_LINE = re.compile(r'^state "(?P<label>[^"]+)" as (?P<name>\S+)$')
EDGE_LINE = re.compile(r"^(?P<src>\S+) --> (?P<dst>\S+?)(?:: (?P<labels>.+))?$")


def _parse(mermaid: str) -> tuple[set[str], set[tuple[str, str, str]], set[str]]:
    """States, (source, dest, trigger) edges and initial states of a stateDiagram."""
    states: set[str] = set()
    edges: set[tuple[str, str, str]] = set()
    initial: set[str] = set()
    for line in (raw.strip() for raw in mermaid.splitlines()):
        if match := STATE_LINE.match(line):
            states.add(match["name"])
        elif match := EDGE_LINE.match(line):
            if match["src"] == "[*]":
                initial.add(match["dst"])
            else:
                for trigger in (match["labels"] or "").split(" | "):
                    edges.add((match["src"], match["dst"], trigger))
    return states, edges, initial


def _expected_edges() -> set[tuple[str, str, str]]:
    edges: set[tuple[str, str, str]] = set()
    for t in TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        edges |= {(str(source), str(t["dest"]), str(t["trigger"])) for source in sources}
    return edges


def test_the_diagram_has_every_state_and_every_transition_of_the_machine() -> None:
    mermaid = lifecycle_mermaid()
    states, edges, initial = _parse(mermaid)
    assert mermaid.splitlines()[3] == "stateDiagram-v2"
    assert states == set(STATES)
    assert edges == _expected_edges()
    assert initial == {"INVOICE_REIMBURSE_INIT"}


def test_the_diagram_marks_no_state_as_current() -> None:
    class_lines = [line.split() for line in lifecycle_mermaid().splitlines() if line.strip().startswith("Class ")]
    assert len(class_lines) == len(STATES)
    assert {style for _, _, style in class_lines} == {"s_default"}


def test_the_diagram_is_front_matter_with_a_title_and_has_no_trailing_blanks() -> None:
    mermaid = lifecycle_mermaid()
    assert mermaid.splitlines()[:3] == ["---", "title: Invoice reimbursement lifecycle", "---"]
    assert all(line == line.rstrip() for line in mermaid.splitlines())
    assert mermaid.endswith("\n") and not mermaid.endswith("\n\n")


def test_without_a_flag_the_diagram_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_OK
    assert capsys.readouterr().out == lifecycle_mermaid()


def test_the_checked_in_diagram_is_current() -> None:
    assert DEFAULT_MMD.read_text() == lifecycle_mermaid(), "docs/lifecycle.mmd is stale: run ./dev diagram --write"
    assert main(["--check"]) == EXIT_OK


@pytest.fixture
def mmd_copy(tmp_path: Path) -> Path:
    path = tmp_path / "docs" / "lifecycle.mmd"
    path.parent.mkdir()
    shutil.copy(DEFAULT_MMD, path)
    return path


def test_a_stale_readme_fails_the_check_and_passes_after_write(
    tmp_path: Path, mmd_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    before, after = "# invoice-sm\n\nIntro.\n\n", "\n\n## Next section\n"
    readme.write_text(f"{before}{README_START}\n```mermaid\nstateDiagram-v2\n  A --> B: old\n```\n{README_END}{after}")
    paths = ["--readme", str(readme), "--mmd", str(mmd_copy)]

    assert main(["--check", *paths]) == EXIT_FAILED
    assert "stale:" in capsys.readouterr().err

    assert main(["--write", *paths]) == EXIT_OK
    assert main(["--check", *paths]) == EXIT_OK
    text = readme.read_text()
    assert text == f"{before}{README_START}\n```mermaid\n{lifecycle_mermaid()}```\n{README_END}{after}"


def test_a_stale_mmd_fails_the_check_and_is_rewritten(tmp_path: Path, mmd_copy: Path) -> None:
    mmd_copy.write_text("stateDiagram-v2\n")
    paths = ["--readme", str(tmp_path / "README.md"), "--mmd", str(mmd_copy)]
    assert main(["--check", *paths]) == EXIT_FAILED
    assert main(["--write", *paths]) == EXIT_OK
    assert mmd_copy.read_text() == lifecycle_mermaid()


def test_write_creates_a_missing_mmd(tmp_path: Path) -> None:
    mmd = tmp_path / "new" / "lifecycle.mmd"
    assert main(["--write", "--mmd", str(mmd), "--readme", str(tmp_path / "README.md")]) == EXIT_OK
    assert mmd.read_text() == lifecycle_mermaid()


def test_a_readme_without_markers_is_left_alone_with_a_warning(
    tmp_path: Path, mmd_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# invoice-sm\n\nNo diagram here yet.\n")
    paths = ["--readme", str(readme), "--mmd", str(mmd_copy)]
    assert main(["--write", *paths]) == EXIT_OK
    assert readme.read_text() == "# invoice-sm\n\nNo diagram here yet.\n"
    assert "no <!-- lifecycle-diagram:start -->" in capsys.readouterr().err
    assert main(["--check", *paths]) == EXIT_OK


@pytest.mark.parametrize(
    "markers",
    [README_START, README_END, f"{README_END}\n{README_START}"],
    ids=["start-only", "end-only", "reversed"],
)
def test_malformed_markers_fail_and_change_nothing(
    tmp_path: Path, mmd_copy: Path, markers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# invoice-sm\n{markers}\n")
    for flag in ("--check", "--write"):
        assert main([flag, "--readme", str(readme), "--mmd", str(mmd_copy)]) == EXIT_FAILED
    assert readme.read_text() == f"# invoice-sm\n{markers}\n"
    assert "lifecycle-diagram:start" in capsys.readouterr().err


def test_write_and_check_together_are_refused() -> None:
    with pytest.raises(SystemExit) as info:
        main(["--write", "--check"])
    assert info.value.code == 2


def test_the_dev_command_line_runs_the_diagram(capsys: pytest.CaptureFixture[str]) -> None:
    # ``./dev diagram`` is ``python -m devtools diagram``: it is not an invoice-sm command.
    from consumers.cli import COMMANDS
    from devtools.__main__ import main as dev_main

    assert dev_main(["diagram"]) == EXIT_OK
    assert capsys.readouterr().out == lifecycle_mermaid()
    assert not {"diagram", "demo", "wechat-sim"} & set(COMMANDS)


def test_the_wechat_path_is_a_marked_note_that_adds_no_state_and_no_edge() -> None:
    from devtools.diagram import WECHAT_NOTE

    mermaid = lifecycle_mermaid()
    assert mermaid.endswith(WECHAT_NOTE)
    assert "invoice.wechat.status_reported" in WECHAT_NOTE and "any status -> the reported status" in WECHAT_NOTE
    note = [line.strip() for line in WECHAT_NOTE.splitlines()]
    assert note[0].startswith("%% Added by devtools/diagram.py") and note[1].startswith("note ") and note[-1] == "end note"
    assert _parse(WECHAT_NOTE) == (set(), set(), set())
