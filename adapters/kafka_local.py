"""A real single-node Apache Kafka broker for tests, benchmarks and the demo.

Why this exists: the machines this project runs on have Java and Maven but no
Docker engine, and cannot download Kafka's ``.tgz``. Apache Kafka's own jars
on Maven Central are enough to run a real KRaft broker (broker and controller
in one JVM), so that is what the integration tests, the benchmarks and the
local demo use. Users who do have Docker can use ``compose.yaml`` instead.

The recipe (shared/KAFKA-LOCAL.md is the spec):

1. :func:`ensure_jars` resolves ``kafka_2.13`` plus the Log4j2 binding listed
   in ``tools/kafka/pom.xml`` into ``.cache/kafka/<version>/lib`` with a
   pinned ``maven-dependency-plugin``. It resolves into a temporary folder,
   writes a marker, then renames, so an interrupted resolve never looks
   complete; later calls only check the marker.
2. :meth:`LocalKafka.start` picks two free ports on 127.0.0.1 (clients and
   controller), writes ``server.properties`` for one node with replication
   factors of 1 and small internal topics, writes a Log4j2 config with one
   file appender, formats the storage with a cluster id made in Python
   (``StorageTool format --standalone``: the quorum is the node itself), and
   starts ``kafka.Kafka`` in its own process group so a Ctrl-C aimed at the
   caller does not reach the broker before the caller can stop it cleanly.
3. The broker is ready when its client port accepts a connection *and* a
   metadata request answers: the listener opens only once the broker is
   unfenced, but a bare TCP accept has been seen to precede a usable broker.
4. :meth:`LocalKafka.stop` sends SIGTERM to this broker's pid only (the JVM's
   shutdown hook shuts Kafka down cleanly), then SIGKILL after a timeout.
   Never ``pkill``: other brokers on the machine belong to other people.

Command line::

    python -m adapters.kafka_local fetch
    python -m adapters.kafka_local start [--workdir D] [--heap 1g] [--no-fast-jit]

``start`` prints ``bootstrap_servers=127.0.0.1:P`` and runs until SIGTERM or
SIGINT, then stops the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import collections
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from aiokafka.client import AIOKafkaClient

__all__ = ["KAFKA_VERSION", "LocalKafka", "ensure_jars", "main"]

KAFKA_VERSION = "4.1.1"

REPO_ROOT = Path(__file__).resolve().parent.parent
POM = REPO_ROOT / "tools" / "kafka" / "pom.xml"
CACHE_DIR = REPO_ROOT / ".cache" / "kafka" / KAFKA_VERSION
LIB_DIR = CACHE_DIR / "lib"
# Lives inside lib/ so that the rename that publishes the folder also
# publishes the marker: there is no moment where one exists without the other.
_MARKER_NAME = ".complete.json"
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"

_LOG_TAIL_LINES = 60
_NODE_ID = 1
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _is_complete(lib: Path) -> bool:
    try:
        marker = json.loads((lib / _MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    # A changed pom means a different set of jars, so the cache is stale.
    if marker.get("pom_sha256") != _pom_digest():
        return False
    jars = marker.get("jars")
    return bool(jars) and all((lib / name).is_file() for name in jars)


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def ensure_jars() -> Path:
    """Return the folder of Kafka's runtime jars, resolving it from Maven Central on first use.

    Raises RuntimeError (with the tail of Maven's output) when Maven fails or is missing.
    """
    if _is_complete(LIB_DIR):
        return LIB_DIR
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Two test sessions starting at once must not both write lib/.
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(LIB_DIR):
            return LIB_DIR
        print(
            f"kafka_local: resolving Apache Kafka {KAFKA_VERSION} jars from Maven Central into {LIB_DIR}",
            file=sys.stderr,
            flush=True,
        )
        # Left behind by a resolve that was killed; nobody else can be
        # writing them while we hold the lock.
        for stale in CACHE_DIR.glob("lib.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix="lib.partial-", dir=CACHE_DIR))
        try:
            _run_maven(staging)
            jars = sorted(p.name for p in staging.glob("*.jar"))
            if not any(name.startswith(f"kafka_2.13-{KAFKA_VERSION}") for name in jars):
                raise RuntimeError(f"Maven finished but {staging} holds no kafka_2.13-{KAFKA_VERSION} jar")
            (staging / _MARKER_NAME).write_text(json.dumps({"pom_sha256": _pom_digest(), "jars": jars}, indent=1))
            if LIB_DIR.exists():
                shutil.rmtree(LIB_DIR)
            staging.rename(LIB_DIR)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return LIB_DIR


def _run_maven(output_dir: Path) -> None:
    cmd = [
        "mvn",
        "-q",
        "-B",
        f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={output_dir}",
        "-f",
        str(POM),
    ]
    # Maven's output goes to a file, not a pipe: it can be large (download
    # progress, colour codes even with -q) and we only read it on failure.
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as out:
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=POM.parent)
        except FileNotFoundError as exc:
            raise RuntimeError("cannot resolve Kafka jars: `mvn` is not on PATH (install Apache Maven)") from exc
        if proc.returncode != 0:
            out.seek(0)
            raise RuntimeError(
                f"resolving Kafka jars failed: {' '.join(cmd)} exited with {proc.returncode}; "
                f"last lines of its output:\n{_tail(_ANSI.sub('', out.read()))}"
            )


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise RuntimeError("cannot start Kafka: `java` (17+) is neither in $JAVA_HOME/bin nor on PATH")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cluster_id() -> str:
    # Kafka's Uuid.toString form; StorageTool refuses ids starting with '-'
    # because they look like command-line options.
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")
        if not cid.startswith("-"):
            return cid


def _read_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(collections.deque(f, maxlen=lines)).rstrip("\n") or "(empty)"
    except FileNotFoundError:
        return "(missing)"


def _escape_property(key: str, value: str) -> str:
    if any(c in key + value for c in "\r\n"):
        raise ValueError(f"Kafka property {key!r} must not contain line breaks")
    return value.replace("\\", "\\\\")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def _metadata_answers(bootstrap_servers: str, timeout: float) -> bool:
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        metadata = await asyncio.wait_for(client.fetch_all_metadata(), timeout)
        return any(broker.nodeId == _NODE_ID for broker in metadata.brokers())
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.close()


def _probe_metadata(bootstrap_servers: str, timeout: float = 5.0) -> bool:
    # Always on a short-lived thread with its own loop: the caller may be a
    # pytest-asyncio fixture whose thread already runs a loop, where
    # asyncio.run() would refuse to start.
    result: list[bool] = []
    thread = threading.Thread(
        target=lambda: result.append(asyncio.run(_metadata_answers(bootstrap_servers, timeout))),
        name="kafka-local-probe",
        daemon=True,
    )
    thread.start()
    thread.join(timeout + 5)
    return bool(result and result[0])


_LOG4J2_PROPERTIES = """\
# Written by adapters/kafka_local.py: everything to one file, nothing to stdout.
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = ${{sys:kafka.logs.dir}}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = FILE
"""

# Brokers started by this Python process, stopped at exit so a test run that
# forgets a stop() (or dies on an exception) does not leave JVMs behind; and
# the temp workdirs LocalKafka made, removed then so /tmp does not fill up.
_live: set[LocalKafka] = set()
_temp_workdirs: set[Path] = set()
_registry_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _registry_lock:
        brokers = list(_live)
        workdirs = list(_temp_workdirs)
    for broker in brokers:
        with contextlib.suppress(Exception):
            broker.stop(timeout=10)
    for workdir in workdirs:
        shutil.rmtree(workdir, ignore_errors=True)


class LocalKafka:
    """A blocking handle on one local single-node KRaft broker (broker + controller).

    Usable from pytest session fixtures, command lines and benchmarks; none of
    its methods need an event loop, and they work from a thread that runs one.

    Files in ``workdir``: ``server.properties``, ``log4j2.properties``,
    ``data/`` (the log dir), ``logs/server.log`` and ``stdout.log`` (the JVM's
    stdout and stderr). A workdir this class created itself (a fresh temp dir)
    is removed on context-manager exit and at interpreter exit; an explicit
    :meth:`stop` keeps it, since :meth:`restart` needs the data.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        heap: str = "512m",
        fast_jit: bool = True,
        log_level: str = "WARN",
        extra_properties: dict[str, str] | None = None,
    ) -> None:
        self._owns_workdir = workdir is None
        self.workdir: Path = Path(tempfile.mkdtemp(prefix="kafka-local-")) if workdir is None else Path(workdir)
        if self._owns_workdir:
            with _registry_lock:
                _temp_workdirs.add(self.workdir)
        self.heap = heap
        self.fast_jit = fast_jit
        self.log_level = log_level
        self.extra_properties: dict[str, str] = dict(extra_properties or {})
        self._client_port: int | None = None
        self._controller_port: int | None = None
        self._lib: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None

    # -- paths and addresses -------------------------------------------------

    @property
    def properties_path(self) -> Path:
        return self.workdir / "server.properties"

    @property
    def log4j_path(self) -> Path:
        return self.workdir / "log4j2.properties"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def log_path(self) -> Path:
        """The broker's Log4j2 log (``logs/server.log``)."""
        return self.logs_dir / "server.log"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "stdout.log"

    @property
    def bootstrap_servers(self) -> str:
        if self._client_port is None:
            raise RuntimeError("LocalKafka has not been started")
        return f"127.0.0.1:{self._client_port}"

    @property
    def pid(self) -> int | None:
        """Pid of the most recently started JVM (kept after it stops), None before the first start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout: float = 90) -> LocalKafka:
        """Format a fresh data dir on two new free ports and start the broker; block until it serves metadata.

        ``workdir/data`` is wiped first: start() always means a new cluster.

        Raises RuntimeError with the tails of ``server.log`` and ``stdout.log``
        when the broker exits or is not ready within ``timeout`` seconds.
        """
        if self._client_port is not None:
            raise RuntimeError("this LocalKafka was already started; use restart() to run it again on its data")
        self._lib = ensure_jars()
        self.workdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        # The free ports are only free when picked; another process may take
        # one before the JVM binds it. That shows up as a BindException, and a
        # fresh pair of ports (and a fresh format, since the controller's
        # address is written into the bootstrap checkpoint) fixes it.
        attempt = 1
        try:
            while True:
                self._client_port, self._controller_port = self._pick_ports()
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.log_path.unlink(missing_ok=True)
                self.stdout_path.unlink(missing_ok=True)
                self._write_config()
                self._format()
                try:
                    self._launch_and_wait(deadline)
                    return self
                except RuntimeError:
                    if attempt == 3 or not self._bind_failed():
                        raise
                    attempt += 1
        except BaseException:
            # Not started, so start() may be tried again (restart() may not).
            self._client_port = self._controller_port = None
            raise

    def restart(self, timeout: float = 90) -> LocalKafka:
        """Run the broker again on the same ports and data dir (no reformat), stopping it first if it runs."""
        if self._client_port is None:
            raise RuntimeError("LocalKafka has not been started; call start() first")
        self.stop()
        self._launch_and_wait(time.monotonic() + timeout)
        return self

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM this broker's JVM (a clean shutdown), SIGKILL it after ``timeout`` seconds. Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the JVM, as a crash would; the data dir is kept for :meth:`restart`.

        A restart after a kill is slower than after a stop (about 12 s with
        defaults): the controller refuses the new broker incarnation until the
        old one's session expires (``broker.session.timeout.ms``, 9 s). Fault
        tests can shorten it through ``extra_properties``.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._reap()

    def __enter__(self) -> LocalKafka:
        if self._client_port is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._remove_owned_workdir()

    def __repr__(self) -> str:
        where = self.bootstrap_servers if self._client_port is not None else "not started"
        return f"<LocalKafka {where} pid={self.pid} running={self.running} workdir={self.workdir}>"

    # -- internals -----------------------------------------------------------

    @staticmethod
    def _pick_ports() -> tuple[int, int]:
        client = _free_port()
        controller = _free_port()
        while controller == client:
            controller = _free_port()
        return client, controller

    def _properties(self) -> dict[str, str]:
        p, c = self._client_port, self._controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": str(_NODE_ID),
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{c}",
            "listeners": f"PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # One node: every replication factor and ISR minimum is 1.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Small and fast: one partition per internal topic, and a cleaner
            # buffer that fits a 512 MiB heap (the default is 128 MiB).
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.num.partitions": "1",
            "log.cleaner.dedupe.buffer.size": "16777216",
            # Topics are created on purpose, as in production: a typo in a
            # topic name should fail, not silently create a new topic.
            "auto.create.topics.enable": "false",
        }
        props.update(self.extra_properties)
        return props

    def _write_config(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{k}={_escape_property(k, v)}" for k, v in self._properties().items()]
        self.properties_path.write_text("# Written by adapters/kafka_local.py\n" + "\n".join(lines) + "\n")
        self.log4j_path.write_text(_LOG4J2_PROPERTIES.format(level=self.log_level))

    def _classpath(self) -> str:
        assert self._lib is not None
        # The JVM expands 'dir/*' itself; no shell is involved.
        return f"{self._lib}/*"

    def _jvm_flags(self) -> list[str]:
        flags = ["-Xms128m", f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-XX:-UsePerfData", "-Djava.awt.headless=true"]
        if self.fast_jit:
            # C1 only: the JVM starts noticeably faster; peak throughput is
            # lower, which is why benchmarks pass fast_jit=False.
            flags.append("-XX:TieredStopAtLevel=1")
        return flags

    def _format(self) -> None:
        cmd = [
            _java(),
            "-Xms32m",
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            f"-Dlog4j2.configurationFile={self.log4j_path}",
            f"-Dkafka.logs.dir={self.logs_dir}",
            "-cp",
            self._classpath(),
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            _cluster_id(),
            "-c",
            str(self.properties_path),
        ]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=self.workdir)
        if proc.returncode != 0:
            raise RuntimeError(
                f"formatting Kafka storage failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"--- last lines of its output ---\n{_tail(proc.stdout + proc.stderr) or '(empty)'}\n"
                f"--- last lines of {self.log_path} ---\n{_read_tail(self.log_path)}"
            )

    def _launch(self) -> None:
        cmd = [
            _java(),
            *self._jvm_flags(),
            f"-Dkafka.logs.dir={self.logs_dir}",
            f"-Dlog4j2.configurationFile={self.log4j_path}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(self.properties_path),
        ]
        # Appended, not truncated: after a crash and restart(), the earlier
        # run's output is still there to read.
        self._stdout = open(self.stdout_path, "ab")
        self._stdout.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
        self._stdout.flush()
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._stdout,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        except BaseException:
            self._reap()
            raise
        with _registry_lock:
            _live.add(self)

    def _launch_and_wait(self, deadline: float) -> None:
        self._launch()
        try:
            self._wait_ready(deadline)
        except BaseException:
            # Also on KeyboardInterrupt: a half-started JVM in its own session
            # would otherwise outlive us.
            self.kill()
            raise

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None and self._client_port is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(self._failure(f"Kafka broker exited with code {code} during startup"))
            if _port_open(self._client_port) and _probe_metadata(
                self.bootstrap_servers, timeout=max(1.0, min(5.0, deadline - time.monotonic()))
            ):
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(self._failure("Kafka broker was not ready in time"))
            time.sleep(0.2)

    def _failure(self, what: str) -> str:
        return (
            f"{what} (bootstrap {self.bootstrap_servers}, workdir {self.workdir})\n"
            f"--- last lines of {self.log_path} ---\n{_read_tail(self.log_path)}\n"
            f"--- last lines of {self.stdout_path} ---\n{_read_tail(self.stdout_path)}"
        )

    def _bind_failed(self) -> bool:
        text = _read_tail(self.log_path, 400) + _read_tail(self.stdout_path, 400)
        return "BindException" in text or "Address already in use" in text

    def _reap(self) -> None:
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None
        with _registry_lock:
            _live.discard(self)

    def _remove_owned_workdir(self) -> None:
        if self._owns_workdir and not self.running:
            shutil.rmtree(self.workdir, ignore_errors=True)
            with _registry_lock:
                _temp_workdirs.discard(self.workdir)


# -- command line --------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.kafka_local",
        description="Run a local single-node Apache Kafka broker from Maven Central jars (no Docker).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="resolve the Kafka jars into .cache/kafka (no-op when already there)")
    start = sub.add_parser("start", help="start a broker, print bootstrap_servers=..., run until SIGTERM/SIGINT")
    start.add_argument("--workdir", type=Path, default=None, help="folder for config, data and logs (default: a temp dir)")
    start.add_argument("--heap", default="512m", help="JVM -Xmx (default 512m; benchmarks use 1g)")
    start.add_argument("--no-fast-jit", dest="fast_jit", action="store_false", help="full JIT, for benchmarks")
    start.add_argument("--timeout", type=float, default=90, help="seconds to wait for readiness")
    args = parser.parse_args(argv)

    if args.command == "fetch":
        print(ensure_jars())
        return 0

    stop_requested = threading.Event()
    starting = True

    def on_signal(signum: int, _frame: object) -> None:
        stop_requested.set()
        # During start() an exception is the way out: start() kills the
        # half-started JVM on any exception, which a bare flag could not do.
        if starting:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    broker = LocalKafka(args.workdir, heap=args.heap, fast_jit=args.fast_jit)
    try:
        broker.start(timeout=args.timeout)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    starting = False
    print(f"bootstrap_servers={broker.bootstrap_servers}", flush=True)
    print(f"kafka_local: pid {broker.pid}, workdir {broker.workdir}, log {broker.log_path}", file=sys.stderr, flush=True)
    try:
        while not stop_requested.wait(1.0):
            if not broker.running:
                print(broker._failure("Kafka broker exited unexpectedly"), file=sys.stderr)
                return 1
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
