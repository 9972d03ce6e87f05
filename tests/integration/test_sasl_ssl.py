"""SASL_SSL with SCRAM-SHA-512 on a real broker (certificates made at start,
a PEM keystore, SCRAM users at format time): publish, process and replay work
over it, and a wrong password stops the start naming the setting, never showing
a secret."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.settings import Settings, load_settings
from adapters.topics import topic_names
from consumers.cli import EXIT_CONFIG
from devtools.kafka_local import LocalKafka
from tests.factories import random_stream
from tests.support.kafka_io import read_topic
from tests.support.processes import Service
from tests.support.services import run_cli
from tests.support.verify import assert_exactly_once

pytestmark = [pytest.mark.broker, pytest.mark.slow]

USER = "invoice-sm"
PASSWORD = "scram-" + uuid.uuid4().hex
WRONG = "wrong-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def secured_broker() -> Iterator[LocalKafka]:
    broker = LocalKafka(scram_users={USER: PASSWORD}).start()
    try:
        yield broker
    finally:
        broker.stop()
        broker._remove_owned_workdir()


def secured_settings(broker: LocalKafka, tmp_path: Path, password: str = PASSWORD, **overrides: object) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=USER,
        kafka_sasl_password=password,
        kafka_ssl_cafile=broker.ca_path,
        **topic_names(f"s{suffix}"),
        processor_group_id=f"s{suffix}.processor",
        topic_partitions=3,
        deliverer_group_id=f"s{suffix}.deliverer",
        state_dir=tmp_path / "state",
        log_format="json",
        **overrides,
    )


async def _run_to_end(service: Service, timeout: float = 60) -> int:
    return await asyncio.to_thread(service.proc.wait, timeout)


async def test_publish_and_process_work_over_sasl_ssl_with_scram(secured_broker: LocalKafka, tmp_path: Path) -> None:
    settings = secured_settings(secured_broker, tmp_path)
    events = list(random_stream(500, 80, seed=21))
    lines = tmp_path / "events.jsonl"
    lines.write_text("".join(json.dumps(ev) + "\n" for ev in events))
    publish = Service("publish", settings, tmp_path / "publish.log", str(lines))
    try:
        assert await _run_to_end(publish) == 0, publish.log_text()[-3000:]
    finally:
        publish.close()
    processor = Service("process", settings, tmp_path / "process.log")
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        while len(await read_topic(settings, settings.topic_outcomes)) < len(events):
            assert processor.alive(), processor.log_text()[-3000:]
            assert loop.time() < deadline, "no outcomes over SASL_SSL"
            await asyncio.sleep(0.5)
        assert processor.terminate() == 0
        log = processor.log_text()
    finally:
        processor.close()
    summary = await assert_exactly_once(settings)
    assert summary["events"] == len(events)
    assert PASSWORD not in log
    replayed_path = tmp_path / "replay.json"
    replayed = await run_cli(settings, "replay", "--json", str(replayed_path))
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    assert json.loads(replayed_path.read_text())["records"] == len(events)
    assert PASSWORD not in replayed.stdout + replayed.stderr


async def test_deliver_and_reconcile_work_over_sasl_ssl(secured_broker: LocalKafka, tmp_path: Path) -> None:
    """``run`` (processor and deliverer) pushes every accepted status to the
    simulator over the secured cluster, and ``reconcile`` reads all four
    sources there and finds nothing out of step."""
    from devtools.simulator import SimulatorServer, WeChatSimulator
    from devtools.simulator.state import DEFAULT_ACCOUNTS
    from tests.factories import APPID
    from tests.support.kafka_io import produce_events, values

    with SimulatorServer(WeChatSimulator()) as server:
        settings = secured_settings(
            secured_broker,
            tmp_path,
            wechat_base_url=server.base_url,
            wechat_appid=APPID,
            wechat_secret=DEFAULT_ACCOUNTS[APPID],
            delivery_commit_interval_ms=50,
        )
        events = list(random_stream(300, 60, seed=23))
        await produce_events(settings, events)
        service = Service("run", settings, tmp_path / "run.log")
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 90
            while True:
                outcomes = values(await read_topic(settings, settings.topic_outcomes))
                accepted = [o for o in outcomes if o["type"] == "invoice.status.accepted"]
                deliveries = await read_topic(settings, settings.topic_deliveries)
                if len(outcomes) == len(events) and len(deliveries) == len(accepted):
                    break
                assert service.alive(), service.log_text()[-3000:]
                assert loop.time() < deadline, f"{len(deliveries)} of {len(accepted)} deliveries over SASL_SSL"
                await asyncio.sleep(0.5)
            assert service.terminate() == 0
            log = service.log_text()
        finally:
            service.close()
        calls = [c for c in server.sim.calls() if "updatestatus" in c.path]
        assert len({c.idempotency_key for c in calls}) == len(accepted)
        report = tmp_path / "reconcile.json"
        done = await run_cli(
            settings, "reconcile", "--wechat-sim-url", server.base_url, "--grace-s", "0", "--json", str(report), "--no-progress"
        )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert json.loads(report.read_text())["clean"] is True
    assert PASSWORD not in log + done.stdout + done.stderr


@pytest.mark.parametrize("command", ["process", "publish"])
async def test_a_wrong_password_stops_the_start_naming_the_setting_without_the_secret(
    secured_broker: LocalKafka, tmp_path: Path, command: str
) -> None:
    settings = secured_settings(secured_broker, tmp_path, password=WRONG)
    lines = tmp_path / "one.jsonl"
    lines.write_text(json.dumps(next(random_stream(1, 1, seed=1))) + "\n")
    service = Service(command, settings, tmp_path / f"{command}.log", *([str(lines)] if command == "publish" else []))
    try:
        code = await _run_to_end(service)
        text = service.log_text()
    finally:
        service.close()
    assert code == EXIT_CONFIG, text[-3000:]
    assert f"invoice-sm {command}: configuration error: INVOICE_SM_KAFKA_SASL_PASSWORD:" in text
    assert "refused the SASL SCRAM-SHA-512 credentials of user 'invoice-sm'" in text
    assert WRONG not in text and PASSWORD not in text
