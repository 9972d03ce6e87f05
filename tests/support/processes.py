"""Run invoice-sm commands as real child processes (for kill -9 tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from adapters.settings import Settings
from adapters.settings import settings_env as to_env

REPO = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INVOICE_SM_")}
    env.update(to_env(settings))
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Service:
    """``invoice-sm <command>`` in a child process, its log in a file."""

    def __init__(self, command: str, settings: Settings, log_path: Path, *args: str, **env: str) -> None:
        self.command = command
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - the log outlives this call; closed when the process is
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consumers", command, *args],
            cwd=REPO,
            env=settings_env(settings, **env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown hook, no abort, no flush."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._log.close()
