"""Local brokers die with the Python process that started them, even when it
is killed with SIGKILL (no atexit, no finally): PR_SET_PDEATHSIG, forked
from a thread that lives as long as the process."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from devtools.kafka_local import REPO_ROOT, LocalKafka

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def _kill_if_alive(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_the_broker_jvm_dies_within_seconds_when_its_python_parent_is_sigkilled(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-m", "devtools.kafka_local", "start", "--workdir", str(tmp_path / "broker")],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    jvm: int | None = None
    try:
        assert parent.stdout is not None and parent.stderr is not None
        line = parent.stdout.readline()
        assert line.startswith("bootstrap_servers=127.0.0.1:"), parent.stderr.read()[-3000:]
        found = re.search(r"node 1 pid (\d+)", parent.stderr.readline())
        assert found, "the starter did not name the JVM's pid"
        jvm = int(found.group(1))
        java = psutil.Process(jvm)
        assert java.ppid() == parent.pid and "kafka.Kafka" in java.cmdline()
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _wait_gone(jvm, 5), "the JVM outlived its SIGKILLed parent"
    finally:
        if jvm is not None:
            _kill_if_alive(jvm)
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_broker_started_from_a_short_lived_thread_outlives_that_thread() -> None:
    # PR_SET_PDEATHSIG fires when the forking thread ends; the JVM is forked by
    # the spawner thread instead, so a restart from asyncio.to_thread is safe.
    broker = LocalKafka()
    thread = threading.Thread(target=broker.start)
    thread.start()
    thread.join(120)
    try:
        assert broker.running
        time.sleep(1.0)
        assert broker.running, "the JVM died with the thread that asked for it"
    finally:
        broker.stop()
        broker._remove_owned_workdir()
