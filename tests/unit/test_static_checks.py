"""Lint, format and type checks, run as tests so that ``./dev test`` (what CI
runs) fails on them like on any other broken promise.

Each check runs the tool pinned in pyproject.toml's ``dev`` extra, from the
repository root, with the configuration there (``[tool.ruff]``,
``[tool.mypy]``); a failure carries the tool's own report. To fix:
``./dev sh ruff check --fix``, ``./dev sh ruff format``, and what ``./dev sh
mypy`` says; in the native step (Rust, ``native/``) ``cargo fmt`` and what
``cargo clippy`` says. The last tests make sure the checks can fail: a probe with a
known defect must be caught, so a configuration that silently checks nothing
(a wrong path, a dropped rule family, strictness lost) fails here too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"


def _tool(*argv: str, cwd: Path = REPO, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    # `python -m`: the tools of this interpreter's environment, not whatever is first on PATH.
    return subprocess.run(
        [sys.executable, "-m", *argv], check=False, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=600
    )


def _report(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}"


def test_ruff_check_finds_nothing() -> None:
    result = _tool("ruff", "check", "--no-fix", ".")
    assert result.returncode == 0, _report(result)


def test_ruff_format_would_change_nothing() -> None:
    result = _tool("ruff", "format", "--check", ".")
    assert result.returncode == 0, _report(result)


def test_mypy_finds_nothing() -> None:
    # The files to check are `files` in [tool.mypy]; strict for domain.* and adapters.*.
    result = _tool("mypy")
    assert result.returncode == 0, _report(result)


def _cargo(*argv: str) -> subprocess.CompletedProcess[str]:
    # The toolchain ./dev builds the native step with (it fails the same way without one).
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    return subprocess.run([cargo, *argv], check=False, cwd=REPO / "native", capture_output=True, text=True, timeout=600)


def test_the_native_step_is_formatted_as_rustfmt_writes_it() -> None:
    result = _cargo("fmt", "--check")  # native/rustfmt.toml: 120 columns, as the Python side
    assert result.returncode == 0, _report(result)


def test_clippy_finds_nothing_in_the_native_step() -> None:
    result = _cargo("clippy", "--locked", "--quiet", "--", "-D", "warnings")
    assert result.returncode == 0, _report(result)


PROBE_WITH_DEFECTS = """import os
from datetime import datetime

APP_SECRET = "0123456789abcdef"


def stamp():
    try:
        return datetime.now().isoformat()
    except Exception:
        return None
"""


def test_ruff_catches_a_probe_with_known_defects() -> None:
    # An unused import, a hardcoded secret, a naive datetime, a blind except.
    result = _tool("ruff", "check", "--no-fix", "--stdin-filename", "adapters/_probe.py", "-", stdin=PROBE_WITH_DEFECTS)
    assert result.returncode == 1, _report(result)
    for code in ("F401", "S105", "DTZ005", "BLE001"):
        assert code in result.stdout, _report(result)


@pytest.mark.parametrize("package", ["domain", "adapters"])
def test_mypy_is_strict_on_a_probe_in_domain_and_adapters(package: str, tmp_path: Path) -> None:
    # A module named <package>._probe gets the per-module strict settings:
    # an unannotated function is an error there, and would pass the baseline.
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    probe = tmp_path / package / "_probe.py"
    probe.write_text("def double(x):\n    return x * 2\n")
    result = _tool("mypy", "--config-file", str(PYPROJECT), "--cache-dir", str(tmp_path / "cache"), str(probe), cwd=tmp_path)
    assert result.returncode == 1, _report(result)
    assert "[no-untyped-def]" in result.stdout, _report(result)
