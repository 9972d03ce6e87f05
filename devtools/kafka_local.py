"""Real Apache Kafka brokers (one node, or a 3-node cluster) for tests, benchmarks and the demo.

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
5. The JVM dies with its Python parent, even when the parent is SIGKILLed
   and no ``atexit`` runs: on Linux every JVM is started with
   ``PR_SET_PDEATHSIG`` = SIGKILL (``prctl`` through ctypes, in the child
   before ``exec``). The kernel sends that signal when the *thread* that
   forked the child ends, not the process, so every JVM is forked by one
   daemon thread that lives as long as the process (:class:`_Spawner`);
   a broker restarted from ``asyncio.to_thread`` would otherwise die with
   that pool thread.

:class:`LocalKafkaCluster` runs three (or more) such nodes as one KRaft
cluster: each a combined broker+controller with its own ports and data dir,
one static quorum (``controller.quorum.voters``), one cluster id, storage
formatted without ``--standalone``, replication factor 3 and min ISR 2 for
the internal topics. Nodes can be killed and restarted one at a time.

``LocalKafka(scram_users={"user": "password"})`` serves clients on SASL_SSL
with SCRAM-SHA-512 instead of PLAINTEXT: a CA and a broker certificate for
127.0.0.1 are made at start with ``cryptography`` (``ca_path`` is what
clients trust; the broker reads key and chain from one PEM file,
``ssl.keystore.type=PEM``), the SCRAM credentials are written at format time
(``StorageTool format --add-scram``), and the broker talks to itself, and is
probed for readiness, on a plaintext listener of its own.

Command line::

    python -m devtools.kafka_local fetch
    python -m devtools.kafka_local start [--workdir D] [--heap 1g] [--no-fast-jit] [--nodes 3]

``start`` prints ``bootstrap_servers=127.0.0.1:P`` and runs until SIGTERM or
SIGINT, then stops the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import collections
import concurrent.futures
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import queue
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
from typing import IO, Any

from aiokafka.client import AIOKafkaClient

__all__ = ["KAFKA_VERSION", "LocalKafka", "LocalKafkaCluster", "ensure_jars", "main"]

KAFKA_VERSION = "4.1.1"

# devtools/ is never installed (not in the wheel, not in the service image):
# it runs from a checkout, so the folder above it is the repository, where the
# pom and the jar cache live.
REPO_ROOT = Path(__file__).resolve().parent.parent
POM = REPO_ROOT / "tools" / "kafka" / "pom.xml"
CACHE_DIR = REPO_ROOT / ".cache" / "kafka" / KAFKA_VERSION
LIB_DIR = CACHE_DIR / "lib"
# Lives inside lib/ so that the rename that publishes the folder also
# publishes the marker: there is no moment where one exists without the other.
_MARKER_NAME = ".complete.json"
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"

_LOG_TAIL_LINES = 60
_SAFE_CREDENTIAL = re.compile(r"[A-Za-z0-9._-]{1,64}")
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
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=POM.parent)  # noqa: PLW1510  # the return code is inspected
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


async def _metadata_answers(bootstrap_servers: str, timeout: float, node_ids: frozenset[int]) -> bool:
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        metadata = await asyncio.wait_for(client.fetch_all_metadata(), timeout)
        return node_ids <= {broker.nodeId for broker in metadata.brokers()}
    except Exception:  # noqa: BLE001  # best effort cleanup
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.close()


def _probe_metadata(bootstrap_servers: str, timeout: float = 5.0, node_ids: frozenset[int] = frozenset({_NODE_ID})) -> bool:
    # Always on a short-lived thread with its own loop: the caller may be a
    # pytest-asyncio fixture whose thread already runs a loop, where
    # asyncio.run() would refuse to start.
    result: list[bool] = []
    thread = threading.Thread(
        target=lambda: result.append(asyncio.run(_metadata_answers(bootstrap_servers, timeout, node_ids))),
        name="kafka-local-probe",
        daemon=True,
    )
    thread.start()
    thread.join(timeout + 5)
    return bool(result and result[0])


def _write_tls(ca_path: Path, keystore_path: Path) -> None:
    """A fresh CA and a broker certificate for 127.0.0.1 and localhost signed by
    it: ``ca_path`` (the CA, PEM) and ``keystore_path`` (unencrypted PKCS#8 key
    and certificate chain, PEM, as ``ssl.keystore.type=PEM`` reads it)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kafka-local test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path.parent.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_path.write_bytes(ca.public_bytes(pem))
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    keystore_path.write_bytes(key_pem + cert.public_bytes(pem) + ca.public_bytes(pem))
    keystore_path.chmod(0o600)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> object:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent thread
    ends (Linux), or ``None`` where ``prctl`` does not exist."""
    if not sys.platform.startswith("linux"):
        return None
    # Loaded in the parent: nothing in the child between fork and exec should
    # have to open a library.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody will
        # send the signal, and the child must not start at all.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class _Spawner:
    """Forks every JVM from one daemon thread that ends only with the process,
    because ``PR_SET_PDEATHSIG`` fires when the forking *thread* ends.

    Not a ``ThreadPoolExecutor``: its workers are joined at interpreter
    shutdown, before ``atexit`` handlers run, which would SIGKILL the brokers
    that :func:`_stop_all` is about to stop cleanly.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[subprocess.Popen[bytes]], list[str], dict[str, Any]]]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _serve(self) -> None:
        while True:
            future, cmd, kwargs = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(subprocess.Popen(cmd, preexec_fn=_die_with_parent(), **kwargs))  # type: ignore[call-overload]  # noqa: PLW1509  # kwargs come from the caller's Popen call
            except BaseException as exc:  # noqa: BLE001  # handed to the waiting future
                future.set_exception(exc)

    def popen(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            # is_alive() is False in a forked child: it starts its own thread.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="kafka-local-spawner", daemon=True)
                self._thread.start()
        future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        self._jobs.put((future, cmd, kwargs))
        return future.result()


_spawner = _Spawner()


_LOG4J2_PROPERTIES = """\
# Written by devtools/kafka_local.py: everything to one file, nothing to stdout.
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
        node_id: int = _NODE_ID,
        scram_users: dict[str, str] | None = None,
    ) -> None:
        self.node_id = node_id
        # SASL_SSL with SCRAM-SHA-512 for clients when given (user -> password).
        self.scram_users: dict[str, str] = dict(scram_users or {})
        for user, password in self.scram_users.items():
            if not (_SAFE_CREDENTIAL.fullmatch(user) and _SAFE_CREDENTIAL.fullmatch(password)):
                raise ValueError("SCRAM user names and passwords here are limited to letters, digits and ._-")
        self._internal_port: int | None = None
        # Set by LocalKafkaCluster for its nodes: the quorum's voters and the
        # shared cluster id (a single node is its own quorum).
        self._voters: str | None = None
        self._cluster_id: str | None = None
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
        """The client listener: PLAINTEXT, or SASL_SSL (SCRAM-SHA-512) with ``scram_users``."""
        if self._client_port is None:
            raise RuntimeError("LocalKafka has not been started")
        return f"127.0.0.1:{self._client_port}"

    @property
    def secured(self) -> bool:
        return bool(self.scram_users)

    @property
    def ca_path(self) -> Path:
        """The CA certificate (PEM) that signed the broker's certificate (secured brokers)."""
        return self.workdir / "tls" / "ca.pem"

    @property
    def keystore_path(self) -> Path:
        return self.workdir / "tls" / "broker.pem"

    def _probe_servers(self) -> tuple[int, str]:
        # A secured broker is probed on its plaintext inter-broker listener,
        # so readiness does not depend on the credentials.
        port = self._internal_port if self.secured else self._client_port
        assert port is not None
        return port, f"127.0.0.1:{port}"

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
                if self.secured:
                    self._internal_port = _free_port()
                    while self._internal_port in (self._client_port, self._controller_port):
                        self._internal_port = _free_port()
                    _write_tls(self.ca_path, self.keystore_path)
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
        if self._voters is not None:
            return self._cluster_properties()
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
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
            # Tests kill instances and wait for their partitions to move: allow
            # session timeouts down to 1 s (the broker's default floor is 6 s).
            "group.min.session.timeout.ms": "1000",
            # Small and fast: one partition per internal topic, and a cleaner
            # buffer that fits a 512 MiB heap (the default is 128 MiB).
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.num.partitions": "1",
            "log.cleaner.dedupe.buffer.size": "16777216",
            # Topics are created on purpose, as in production: a typo in a
            # topic name should fail, not silently create a new topic.
            "auto.create.topics.enable": "false",
        }
        if self.secured:
            props.update(self._secured_listeners())
        props.update(self.extra_properties)
        return props

    def _secured_listeners(self) -> dict[str, str]:
        """Clients on SASL_SSL (SCRAM-SHA-512, a PEM keystore); the broker talks
        to itself on a plaintext INTERNAL listener, also used for probes."""
        p, c, i = self._client_port, self._controller_port, self._internal_port
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{p},INTERNAL://127.0.0.1:{i},CONTROLLER://127.0.0.1:{c}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{p},INTERNAL://127.0.0.1:{i},CONTROLLER://127.0.0.1:{c}",
            "inter.broker.listener.name": "INTERNAL",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore_path),
        }

    def _cluster_properties(self) -> dict[str, str]:
        p, c = self._client_port, self._controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": str(self._voters),
            "listeners": f"PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # Replicated as a production cluster is: one node may fail.
            "offsets.topic.replication.factor": "3",
            "transaction.state.log.replication.factor": "3",
            "transaction.state.log.min.isr": "2",
            "share.coordinator.state.topic.replication.factor": "3",
            "share.coordinator.state.topic.min.isr": "2",
            "default.replication.factor": "3",
            "min.insync.replicas": "2",
            "group.initial.rebalance.delay.ms": "0",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.num.partitions": "3",
            "log.cleaner.dedupe.buffer.size": "16777216",
            "auto.create.topics.enable": "false",
            # A node killed -9 is fenced (and dropped from every ISR) within
            # seconds, and re-registers quickly when it comes back.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
        }
        props.update(self.extra_properties)
        return props

    def _write_config(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"{k}={_escape_property(k, v)}" for k, v in self._properties().items()]
        self.properties_path.write_text("# Written by devtools/kafka_local.py\n" + "\n".join(lines) + "\n")
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
            # A cluster's quorum is its static voters; one node is its own.
            *(() if self._voters is not None else ("--standalone",)),
            *(
                arg
                for user, password in self.scram_users.items()
                for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]")
            ),
            "-t",
            self._cluster_id or _cluster_id(),
            "-c",
            str(self.properties_path),
        ]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=self.workdir)  # noqa: PLW1510  # the return code is inspected
        if proc.returncode != 0:
            shown = " ".join("--add-scram SCRAM-SHA-512=[...]" if "password=" in arg else arg for arg in cmd)
            raise RuntimeError(
                f"formatting Kafka storage failed (exit {proc.returncode}): {shown}\n"
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
        self._stdout = open(self.stdout_path, "ab")  # noqa: SIM115  # the log outlives this call
        self._stdout.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n".encode())
        self._stdout.flush()
        try:
            self._proc = _spawner.popen(
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
            probe_port, probe_servers = self._probe_servers()
            if _port_open(probe_port) and _probe_metadata(
                probe_servers,
                timeout=max(1.0, min(5.0, deadline - time.monotonic())),
                node_ids=frozenset({self.node_id}),
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


class LocalKafkaCluster:
    """A blocking handle on a local KRaft cluster of ``size`` nodes, each a
    combined broker+controller (:class:`LocalKafka`) in ``workdir/nodeN``.

    Internal topics have replication factor 3 and min ISR 2 (so ``size`` is
    at least 3); nodes can be killed (:meth:`kill`, SIGKILL) and restarted on
    their data (:meth:`restart`) one at a time while the others serve.
    """

    def __init__(
        self,
        size: int = 3,
        workdir: Path | None = None,
        *,
        heap: str = "512m",
        fast_jit: bool = True,
        log_level: str = "WARN",
        extra_properties: dict[str, str] | None = None,
    ) -> None:
        if size < 3:
            raise ValueError("a replicated cluster needs at least 3 nodes (replication factor 3, min ISR 2)")
        self._owns_workdir = workdir is None
        self.workdir: Path = Path(tempfile.mkdtemp(prefix="kafka-cluster-")) if workdir is None else Path(workdir)
        if self._owns_workdir:
            with _registry_lock:
                _temp_workdirs.add(self.workdir)
        self.nodes: list[LocalKafka] = [
            LocalKafka(
                self.workdir / f"node{i}",
                heap=heap,
                fast_jit=fast_jit,
                log_level=log_level,
                extra_properties=extra_properties,
                node_id=i,
            )
            for i in range(1, size + 1)
        ]
        self._started = False

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def start(self, timeout: float = 120) -> LocalKafkaCluster:
        """Format every node with one cluster id on fresh ports, start them all,
        and block until every node serves metadata naming all the brokers."""
        if self._started:
            raise RuntimeError("this LocalKafkaCluster was already started; restart nodes with restart(node_id)")
        lib = ensure_jars()
        deadline = time.monotonic() + timeout
        every_id = frozenset(node.node_id for node in self.nodes)
        attempt = 1
        while True:
            self._configure(lib)
            # Formatting is a JVM start each: in parallel.
            with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(lambda node: node._format(), self.nodes))
            try:
                # All launched before any is waited for: no node is ready
                # before the quorum has a majority.
                for node in self.nodes:
                    node._launch()
                for node in self.nodes:
                    node._wait_ready(deadline)
                self._wait_registered(every_id, deadline)
                self._started = True
                return self
            except RuntimeError:
                for node in self.nodes:
                    node.kill()
                if attempt == 3 or not any(node._bind_failed() for node in self.nodes):
                    raise
                attempt += 1
            except BaseException:
                for node in self.nodes:
                    node.kill()
                raise

    def _configure(self, lib: Path) -> None:
        ports: set[int] = set()
        while len(ports) < 2 * len(self.nodes):
            ports.add(_free_port())
        ordered = sorted(ports)
        cluster_id = _cluster_id()
        for i, node in enumerate(self.nodes):
            node._client_port, node._controller_port = ordered[2 * i], ordered[2 * i + 1]
        voters = ",".join(f"{node.node_id}@127.0.0.1:{node._controller_port}" for node in self.nodes)
        for node in self.nodes:
            node._lib = lib
            node._voters, node._cluster_id = voters, cluster_id
            node.workdir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(node.data_dir, ignore_errors=True)
            node.log_path.unlink(missing_ok=True)
            node.stdout_path.unlink(missing_ok=True)
            node._write_config()

    def _wait_registered(self, node_ids: frozenset[int], deadline: float) -> None:
        while not _probe_metadata(self.bootstrap_servers, timeout=5.0, node_ids=node_ids):
            if time.monotonic() >= deadline:
                raise RuntimeError(self.nodes[0]._failure(f"brokers {sorted(node_ids)} did not all register in time"))
            time.sleep(0.2)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would; its data is kept for :meth:`restart`."""
        self.node(node_id).kill()

    def restart(self, node_id: int, timeout: float = 90) -> None:
        """Start one node again on its ports and data; block until it serves metadata."""
        self.node(node_id).restart(timeout)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM every node at once, SIGKILL what still runs after ``timeout`` seconds.

        At once, not one by one: the last nodes of a cluster stopped one by one
        wait for a quorum that is gone before they give up."""
        running = [node for node in self.nodes if node.running]
        for node in running:
            assert node._proc is not None
            node._proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for node in running:
            assert node._proc is not None
            try:
                node._proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                node._proc.kill()
                node._proc.wait()
        for node in self.nodes:
            node._reap()

    def __enter__(self) -> LocalKafkaCluster:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owns_workdir:
            # Its data is deleted next, so a clean shutdown buys nothing, and
            # SIGTERMed together the nodes' controlled shutdowns wait on a quorum
            # that is leaving too: the whole stop timeout (15 s after a test).
            for node in self.nodes:
                node.kill()
            shutil.rmtree(self.workdir, ignore_errors=True)
            with _registry_lock:
                _temp_workdirs.discard(self.workdir)
        else:
            self.stop()

    def __repr__(self) -> str:
        return f"<LocalKafkaCluster {[repr(node) for node in self.nodes]}>"


# -- command line --------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.kafka_local",
        description="Run a local single-node Apache Kafka broker from Maven Central jars (no Docker).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="resolve the Kafka jars into .cache/kafka (no-op when already there)")
    start = sub.add_parser("start", help="start a broker, print bootstrap_servers=..., run until SIGTERM/SIGINT")
    start.add_argument("--workdir", type=Path, default=None, help="folder for config, data and logs (default: a temp dir)")
    start.add_argument("--heap", default="512m", help="JVM -Xmx (default 512m; benchmarks use 1g)")
    start.add_argument("--no-fast-jit", dest="fast_jit", action="store_false", help="full JIT, for benchmarks")
    start.add_argument("--timeout", type=float, default=90, help="seconds to wait for readiness")
    start.add_argument("--nodes", type=int, default=1, help="1 (default) or 3+: a replicated KRaft cluster")
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

    broker: LocalKafka | LocalKafkaCluster
    if args.nodes > 1:
        broker = LocalKafkaCluster(args.nodes, args.workdir, heap=args.heap, fast_jit=args.fast_jit)
    else:
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
    nodes = broker.nodes if isinstance(broker, LocalKafkaCluster) else [broker]
    for node in nodes:
        print(
            f"kafka_local: node {node.node_id} pid {node.pid}, workdir {node.workdir}, log {node.log_path}",
            file=sys.stderr,
            flush=True,
        )
    try:
        while not stop_requested.wait(1.0):
            for node in nodes:
                if not node.running:
                    print(node._failure("Kafka broker exited unexpectedly"), file=sys.stderr)
                    return 1
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
