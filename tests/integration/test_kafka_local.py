"""The local Kafka broker (devtools.kafka_local) against real aiokafka clients.

Each broker here is a real JVM started from the Maven Central jars; the whole
file takes about 20 seconds.
"""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devtools.kafka_local import KAFKA_VERSION, LocalKafka, ensure_jars

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalKafka]:
    with LocalKafka() as kafka:
        yield kafka


async def create_topic(bootstrap_servers: str) -> str:
    topic = f"test-kafka-local-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    return topic


async def produce(bootstrap_servers: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def consume_one(bootstrap_servers: str, topic: str, timeout: float = 20) -> tuple[bytes | None, bytes | None]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout)
        return record.key, record.value
    finally:
        await consumer.stop()


def port_accepts(bootstrap_servers: str) -> bool:
    host, port = bootstrap_servers.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def is_java(pid: int) -> bool:
    try:
        return psutil.Process(pid).name() == "java"
    except psutil.NoSuchProcess:
        return False


def test_ensure_jars_is_a_quiet_no_op_once_the_cache_is_complete(capfd: pytest.CaptureFixture[str]) -> None:
    lib = ensure_jars()
    capfd.readouterr()

    assert ensure_jars() == lib
    assert capfd.readouterr().err == ""
    assert (lib / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()
    assert (lib / "log4j-slf4j-impl-2.24.3.jar").is_file()
    assert not (lib / f"kafka-tools-{KAFKA_VERSION}.jar").exists()


async def test_a_started_broker_serves_a_produced_message_to_a_consumer(broker: LocalKafka) -> None:
    assert re.fullmatch(r"127\.0\.0\.1:\d+", broker.bootstrap_servers)
    assert broker.pid is not None and is_java(broker.pid)
    topic = await create_topic(broker.bootstrap_servers)

    await produce(broker.bootstrap_servers, topic, b"pjZ8/1869", b"hello")

    assert await consume_one(broker.bootstrap_servers, topic) == (b"pjZ8/1869", b"hello")


async def test_a_produced_message_is_still_readable_after_kill_and_restart(tmp_path: Path) -> None:
    # A short broker session: otherwise the controller refuses the restarted
    # incarnation until the killed one's 9 s session expires.
    kafka = LocalKafka(
        tmp_path,
        extra_properties={"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"},
    )
    await asyncio.to_thread(kafka.start)
    try:
        bootstrap, first_pid = kafka.bootstrap_servers, kafka.pid
        topic = await create_topic(bootstrap)
        await produce(bootstrap, topic, b"k", b"survives a crash")

        kafka.kill()
        assert not kafka.running
        assert not port_accepts(bootstrap)
        await asyncio.to_thread(kafka.restart)

        assert kafka.bootstrap_servers == bootstrap
        assert kafka.pid != first_pid
        assert await consume_one(bootstrap, topic) == (b"k", b"survives a crash")
    finally:
        kafka.stop()


async def test_stop_leaves_no_java_process_with_the_brokers_pid(tmp_path: Path) -> None:
    kafka = LocalKafka(tmp_path)
    # Called on the event loop's own thread on purpose: readiness probing must
    # not depend on the caller having no running loop.
    kafka.start()
    pid = kafka.pid
    assert pid is not None and is_java(pid)

    kafka.stop()
    kafka.stop()

    assert not kafka.running
    assert not is_java(pid)
    assert not port_accepts(kafka.bootstrap_servers)


def test_a_broker_that_exits_during_start_raises_with_its_log(tmp_path: Path) -> None:
    # Valid for the storage formatter, fatal for the broker: the class is only
    # loaded when the controller starts.
    kafka = LocalKafka(tmp_path, extra_properties={"authorizer.class.name": "no.such.Authorizer"})

    with pytest.raises(RuntimeError) as failure:
        kafka.start(timeout=60)

    message = str(failure.value)
    assert "exited with code" in message
    assert "ClassNotFoundException: no.such.Authorizer" in message
    assert str(kafka.log_path) in message
    assert not kafka.running
