"""Kafka's own Java console tools, outside clients nobody here wrote, on both sides of the processor.

In: ``org.apache.kafka.tools.ConsoleProducer`` publishes lifecycle events as an
upstream team would from a shell (``parse.key=true``, ``key.separator``, and
``parse.headers=true`` for the CloudEvents Kafka binding's headers), once per
codec (``--compression-codec`` none, gzip, snappy, lz4, zstd) with
structured-mode and binary-mode (``ce_*`` headers) events, and once with
neither header (a bare JSON event). The codec of every record is read back
from the broker's batches: ``--compression-codec`` is the way to set it, since
the 4.1 tool overwrites ``--producer-property compression.type=`` with that
option's default, ``none``. The Java client's default partitioner is murmur2,
as the README asks of a producer: checked key by key against aiokafka's.

Out: ``org.apache.kafka.tools.consumer.ConsoleConsumer`` reads the outcomes
topic ``--isolation-level read_committed --from-beginning --max-messages N``
and sees one outcome per event, under its invoice key, with the decision
each deserves; it reads the state changelog exactly as our reader does.

The tools run on the broker's own jars (``devtools.kafka_local``) plus
``kafka-tools``, which ``tools/kafka/pom.xml`` leaves out of the broker's
``lib`` on purpose: it is resolved here, alone, from Maven Central into
``.cache/kafka/<version>/tools`` (its other runtime dependencies are the
broker's, except connect-runtime, which the console tools never load).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.partitioner import murmur2
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords

from adapters import topics
from adapters.settings import Settings

# _java and _DEPENDENCY_PLUGIN: the same JVM and Maven plugin the broker is started and resolved with.
from devtools.kafka_local import _DEPENDENCY_PLUGIN, CACHE_DIR, KAFKA_VERSION, _java, ensure_jars
from domain.status import ReimburseStatus as S
from tests.factories import card, encode, event
from tests.support.hostile import binary_form
from tests.support.kafka_io import read_topic, wait_for_count
from tests.support.services import running
from tests.support.verify import assert_exactly_once

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PARTITIONS = 3
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
#: Kafka's codec ids in a record batch's attributes.
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
#: The headerless run's codec.
PLAIN_CODEC = "gzip"
KEY_SEPARATOR = "|"
STRUCTURED = "application/cloudevents+json"
TOOLS_JAR = CACHE_DIR / "tools" / f"kafka-tools-{KAFKA_VERSION}.jar"
JVM_FLAGS = ("-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData")
#: What Kafka's bin/ scripts give the tools (tools-log4j2.yaml): warnings to stderr, stdout left to the records.
LOG4J2 = """\
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = STDERR
"""


@dataclass(frozen=True)
class Line:
    """One line on the console producer's stdin, and the decision its event must get."""

    codec: str
    key: str
    event_id: str
    decision: str  # the outcome's CloudEvent type suffix: accepted, duplicate, unchanged
    text: str


def _line(codec: str, ev: dict[str, Any], decision: str, mode: str) -> Line:
    """``ev`` as LineMessageReader parses it: ``h1:v1,h2:v2<TAB>key|value`` (no headers part in mode ``plain``)."""
    key, value = encode(ev)
    headers: list[tuple[str, bytes | None]] = [("content-type", STRUCTURED.encode())]
    if mode == "binary":
        value, headers = binary_form(ev)
    text = f"{key.decode()}{KEY_SEPARATOR}{value.decode()}"
    if mode != "plain":
        pairs = [f"{name}:{(raw or b'').decode()}" for name, raw in headers]
        # The reader splits headers on "," and the headers part off at the first tab.
        assert not any("," in pair or "\t" in pair for pair in pairs), pairs
        text = ",".join(pairs) + "\t" + text
    assert "\n" not in text and "\t" not in text.rsplit(KEY_SEPARATOR, 1)[-1]
    return Line(codec, key.decode(), ev["id"], decision, text)


def _codec_run(i: int, codec: str) -> list[Line]:
    """Two invoices per codec, structured and binary mode interleaved, one event id sent twice."""
    a, b = card(10 * i), card(10 * i + 1)
    lock = event(*a, S.LOCK, event_id=f"java-{codec}-a-lock")
    return [
        _line(codec, lock, "accepted", "structured"),
        _line(codec, event(*a, S.CLOSURE, event_id=f"java-{codec}-a-close"), "accepted", "binary"),
        _line(codec, lock, "duplicate", "structured"),
        _line(codec, event(*b, S.CANCEL, event_id=f"java-{codec}-b-cancel"), "accepted", "binary"),
    ]


def _plain_run() -> list[Line]:
    """No headers at all (the console producer's everyday use): read as structured JSON events."""
    c = card(99)
    return [
        _line(PLAIN_CODEC, event(*c, S.LOCK, event_id="java-plain-lock"), "accepted", "plain"),
        _line(PLAIN_CODEC, event(*c, S.LOCK, event_id="java-plain-lock-again"), "unchanged", "plain"),
        _line(PLAIN_CODEC, event(*c, S.INIT, event_id="java-plain-unlock"), "accepted", "plain"),
    ]


# ------------------------------------------------------------------ the tools


def _kafka_tools_jar() -> Path:
    """``kafka-tools`` alone (``copy``, not ``copy-dependencies``), resolved once; published by a rename."""
    if TOOLS_JAR.is_file():
        return TOOLS_JAR
    TOOLS_JAR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=TOOLS_JAR.parent) as staging:
        cmd = [
            "mvn",
            "-q",
            "-B",
            f"{_DEPENDENCY_PLUGIN}:copy",
            f"-Dartifact=org.apache.kafka:kafka-tools:{KAFKA_VERSION}",
            f"-DoutputDirectory={staging}",
        ]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=staging, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        os.replace(Path(staging) / TOOLS_JAR.name, TOOLS_JAR)
    return TOOLS_JAR


@pytest.fixture(scope="module")
def java_tools(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command line up to the main class: the broker's JVM, its jars and kafka-tools."""
    log4j = tmp_path_factory.mktemp("java-tools") / "log4j2.properties"
    log4j.write_text(LOG4J2)
    classpath = f"{_kafka_tools_jar()}{os.pathsep}{ensure_jars()}/*"
    return [_java(), *JVM_FLAGS, f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]


async def _run_tool(java_tools: list[str], main_class: str, args: Sequence[str], stdin: str = "") -> str:
    """Run one tool to its end; its stdout. A non-zero exit fails the test with the tool's stderr."""
    proc = await asyncio.create_subprocess_exec(
        *java_tools,
        main_class,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"{main_class} exited with {proc.returncode}:\n{err.decode(errors='replace')[-4000:]}"
    return out.decode()


async def _produce(
    java_tools: list[str], settings: Settings, lines: list[Line], codec_args: Sequence[str], headers: bool
) -> None:
    await _run_tool(
        java_tools,
        "org.apache.kafka.tools.ConsoleProducer",
        [
            "--bootstrap-server",
            settings.kafka_bootstrap_servers,
            "--topic",
            settings.topic_events,
            *codec_args,
            "--request-timeout-ms",
            "15000",
            "--max-block-ms",
            "30000",
            "--property",
            "parse.key=true",
            "--property",
            f"key.separator={KEY_SEPARATOR}",
            "--property",
            f"parse.headers={str(headers).lower()}",
        ],
        "".join(line.text + "\n" for line in lines),
    )


async def _consume(java_tools: list[str], settings: Settings, topic: str, count: int) -> list[list[str]]:
    """``count`` committed records of ``topic`` as the console consumer prints them, split at its tabs:
    partition, offset, headers, key, value."""
    out = await _run_tool(
        java_tools,
        "org.apache.kafka.tools.consumer.ConsoleConsumer",
        [
            "--bootstrap-server",
            settings.kafka_bootstrap_servers,
            "--topic",
            topic,
            "--isolation-level",
            "read_committed",
            "--from-beginning",
            "--max-messages",
            str(count),
            "--timeout-ms",
            "30000",
            *("--property", "print.partition=true", "--property", "print.offset=true"),
            *("--property", "print.headers=true", "--property", "print.key=true"),
        ],
    )
    rows = [line.split("\t", 4) for line in out.splitlines()]
    assert len(rows) == count, f"the console consumer printed {len(rows)} records of {topic}, not {count}:\n{out[-3000:]}"
    for row in rows:
        assert len(row) == 5 and row[0].startswith("Partition:") and row[1].startswith("Offset:"), row
        row[0], row[1] = row[0].removeprefix("Partition:"), row[1].removeprefix("Offset:")
    return rows


# ------------------------------------------------------------------ the broker's view


async def _codec_by_position(settings: Settings) -> dict[tuple[int, int], int]:
    """The codec id of the batch holding each record of the events topic, read raw
    (FetchRequest): the codec each run asked for is what reached the broker."""
    topic = settings.topic_events
    client = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await client.bootstrap()
    client.add_topic(topic)
    await client.force_metadata_update()
    codecs: dict[tuple[int, int], int] = {}
    try:
        for partition in range(PARTITIONS):
            leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            position, end = 0, None
            while end is None or position < end:
                request = FetchRequest(100, 1, 16 * 1024 * 1024, 0, [(topic, [(partition, position, 4 * 1024 * 1024)])])
                response = await client.send(leader, request)
                ((_, partitions),) = response.topics
                _, error, end, *_, raw = partitions[0]
                assert error == 0, error
                records = MemoryRecords(raw)
                while records.has_next():
                    batch = records.next_batch()
                    codecs.update({(partition, offset): batch.compression_type for offset in range(position, batch.next_offset)})
                    position = batch.next_offset
    finally:
        await client.close()
    return codecs


def _event_id(headers: Sequence[tuple[str, bytes]], value: bytes) -> str:
    return dict(headers).get("ce_id", b"").decode() or json.loads(value)["id"]


# ------------------------------------------------------------------ the test


async def test_java_console_producer_with_every_codec_in_and_java_console_consumer_reads_one_committed_outcome_each(
    make_settings: Callable[..., Settings], java_tools: list[str]
) -> None:
    settings = make_settings(topic_partitions=PARTITIONS)
    await topics.ensure_topics(settings)
    runs = [_codec_run(i, codec) for i, codec in enumerate(CODECS)]
    plain = _plain_run()
    sent = [line for run in runs for line in run] + plain

    async with running(settings):
        # One JVM per run, two at a time (the machine may have two cores): a
        # run's lines stay in order, each invoice is in one run only.
        gate = asyncio.Semaphore(2)

        async def produce(lines: list[Line], codec_args: Sequence[str], headers: bool) -> None:
            async with gate:
                await _produce(java_tools, settings, lines, codec_args, headers=headers)

        await asyncio.gather(
            *(produce(run, ["--compression-codec", run[0].codec], True) for run in runs),
            produce(plain, ["--compression-codec", PLAIN_CODEC], False),
        )
        await wait_for_count(settings, settings.topic_outcomes, len(sent))

    summary = await assert_exactly_once(settings)
    assert summary["events"] == summary["outcomes"] == len(sent)
    assert await read_topic(settings, settings.topic_dlq) == []

    # The Java producer's partitions and codecs, record by record.
    codec_of_event = {line.event_id: line.codec for line in sent}
    on_the_wire = await _codec_by_position(settings)
    events = await read_topic(settings, settings.topic_events)
    assert len(events) == len(sent)
    for record in events:
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % PARTITIONS, record.key
        expected = CODEC_IDS[codec_of_event[_event_id(record.headers, record.value)]]
        assert on_the_wire[(record.partition, record.offset)] == expected, (record.key, record.headers)
    assert set(on_the_wire.values()) == set(CODEC_IDS.values())

    # The Java consumer's view of the outcomes: one per event, keyed, each the decision it deserves.
    state_records = await read_topic(settings, settings.topic_state)
    outcome_rows, state_rows = await asyncio.gather(
        _consume(java_tools, settings, settings.topic_outcomes, len(sent)),
        _consume(java_tools, settings, settings.topic_state, len(state_records)),
    )
    positions = {(r.partition, r.offset) for r in events}
    seen_positions: set[tuple[int, int]] = set()
    decided: Counter[tuple[str, str, str]] = Counter()
    for partition, _offset, headers, key, value in outcome_rows:
        outcome = json.loads(value)
        data = outcome["data"]
        assert headers == f"content-type:{STRUCTURED}", headers
        assert key == outcome["subject"] == f"{data['card_id']}/{data['code']}"
        assert int(partition) == data["source_partition"], "an outcome left its event's partition"
        seen_positions.add((data["source_partition"], data["source_offset"]))
        decided[(key, data["event_id"], outcome["type"])] += 1
    assert seen_positions == positions
    assert decided == Counter((line.key, line.event_id, f"invoice.status.{line.decision}") for line in sent)

    # The state changelog, as the Java consumer reads it, is what our reader reads.
    assert {(int(p), int(o), k, v) for p, o, _h, k, v in state_rows} == {
        (r.partition, r.offset, r.key.decode(), r.value.decode()) for r in state_records
    }
    # Every decision but a duplicate writes the invoice's state (its remembered event ids at least).
    assert len(state_rows) == len(state_records) == sum(line.decision != "duplicate" for line in sent)
