"""The README's first command, ``./dev demo``, end to end on the session's broker.

The demo starts the WeChat simulator, runs the processor and the deliverer,
sends a sample stream with bad records and WeChat faults in it, and prints
what happened. Here it runs as the README runs it (``python -m devtools
demo``, a child process), on the suite's broker instead of one of its own.
Its summary must add up, and neither its output nor its log may carry the
account's secret.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from devtools.demo import DEMO_APPID
from devtools.simulator.state import DEFAULT_ACCOUNTS

pytestmark = [pytest.mark.broker]

ROOT = Path(__file__).resolve().parents[2]


def _row(text: str, what: str) -> tuple[int, str]:
    """``(count, detail)`` of the summary table's row ``what`` (rich draws it with │)."""
    match = re.search(rf"^│ {re.escape(what)}\s+│\s+(\d+) │ (.*?)\s*│$", text, re.MULTILINE)
    assert match, f"no row {what!r} in:\n{text}"
    return int(match.group(1)), match.group(2)


def _counts(detail: str) -> dict[str, int]:
    """``accepted 529, rejected 94`` -> ``{"accepted": 529, "rejected": 94}`` (first line of a cell only)."""
    return {name: int(n) for name, n in re.findall(r"([a-z_]+(?: [a-z_/]+)?) (\d+)", detail.split("  (")[0])}


def test_the_demo_runs_end_to_end_and_its_summary_adds_up(kafka_bootstrap: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "devtools", "demo", "--use-broker", kafka_bootstrap, "--invoices", "80"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "TERM": "dumb"},
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{proc.stderr[-3000:]}"

    events, _ = _row(out, "events in")
    outcomes, outcome_detail = _row(out, "outcomes")
    dlq, dlq_detail = _row(out, "DLQ")
    deliveries, delivery_detail = _row(out, "deliveries")
    kinds = _counts(outcome_detail)
    # Every event is decided once or refused to the DLQ with its reason.
    assert events > 0 and outcomes + dlq == events
    assert sum(kinds.values()) == outcomes
    assert dlq > 0 and sum(_counts(dlq_detail).values()) == dlq
    # Every accepted status reached WeChat once, faults notwithstanding.
    assert deliveries == kinds["accepted"]
    assert set(_counts(delivery_detail)) <= {"delivered", "already_applied"}
    assert "every call carried an Idempotency-Key: True" in out
    assert "where to look next" in out

    secret = DEFAULT_ACCOUNTS[DEMO_APPID]
    log = (Path(tempfile.gettempdir()) / "invoice-sm-demo.log").read_text(errors="replace")
    assert '"delivery_final"' in log
    for text in (out, proc.stderr, log):
        assert secret not in text
