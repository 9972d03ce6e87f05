"""On a real 3-node KRaft cluster (replication factor 3, min ISR 2): kill -9
the broker leading most partitions mid-stream, restart it, then the same to
another broker, while ``invoice-sm run`` processes and delivers. Every event
is decided exactly once, the state equals the fold, and every accepted
status reaches WeChat once, in version order."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from adapters import kafka, topics
from adapters.settings import Settings, load_settings
from adapters.topics import topic_names
from devtools.kafka_local import LocalKafkaCluster
from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import DEFAULT_ACCOUNTS
from tests.factories import APPID, random_stream
from tests.support.kafka_io import produce_events, read_topic, values, wait_for_count
from tests.support.processes import Service
from tests.support.verify import assert_exactly_once

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.cluster]


async def leaders(settings: Settings, topic: str) -> Counter[int]:
    """How many partitions of ``topic`` each node leads (-1: none). Retried:
    the admin client may pick the node just killed."""
    for attempt in range(20):
        admin = AIOKafkaAdminClient(**kafka.client_options(settings))
        try:
            await admin.start()
            described = await admin.describe_topics([topic])
            return Counter(p["leader"] for d in described for p in d["partitions"])
        except KafkaError:
            if attempt == 19:
                raise
            await asyncio.sleep(0.3)
        finally:
            await admin.close()
    raise AssertionError("unreachable")


async def wait_for_new_leaders(settings: Settings, topic: str, dead: int, timeout: float = 30) -> None:
    """Until every partition of ``topic`` has a leader other than ``dead``: the failover happened."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        led = await leaders(settings, topic)
        if dead not in led and -1 not in led:
            return
        assert loop.time() < deadline, f"partitions still led by {dead} or leaderless: {led}"
        await asyncio.sleep(0.2)


async def wait_for_calls(server: SimulatorServer, count: int, service: Service, timeout: float = 90) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(server.sim.calls()) < count:
        assert service.alive(), service.log_text()[-3000:]
        assert loop.time() < deadline, f"only {len(server.sim.calls())} WeChat calls of {count}"
        await asyncio.sleep(0.05)


async def test_leader_failover_twice_keeps_exactly_once_and_delivery_order(
    kafka_cluster: LocalKafkaCluster, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    with SimulatorServer(WeChatSimulator(latency_ms=3)) as server:
        settings = load_settings(
            kafka_bootstrap_servers=kafka_cluster.bootstrap_servers,
            **topic_names(f"f{suffix}"),
            processor_group_id=f"f{suffix}.processor",
            deliverer_group_id=f"f{suffix}.deliverer",
            topic_partitions=6,
            topic_replication_factor=3,
            batch_max_records=200,
            kafka_session_timeout_ms=6000,
            wechat_base_url=server.base_url,
            wechat_appid=APPID,
            wechat_secret=DEFAULT_ACCOUNTS[APPID],
            delivery_concurrency=16,
            delivery_commit_interval_ms=100,
            state_dir=tmp_path / "state",
            log_format="json",
        )
        await topics.ensure_topics(settings)
        specs, _, differences = await topics.check(settings)
        assert differences == [] and {(s.replication_factor, s.min_insync_replicas) for s in specs} == {(3, 2)}

        events = list(random_stream(6000, 1000, seed=13))
        half = len(events) // 2
        await produce_events(settings, events[:half])
        service = Service("run", settings, tmp_path / "run.log")
        victims: list[int] = []
        try:
            for round_ in range(2):
                # Mid-stream: the service is deciding and delivering.
                await wait_for_calls(server, len(server.sim.calls()) + 300, service)
                led = await leaders(settings, settings.topic_events)
                victim = max((n for n in led if n not in victims and n >= 0), key=lambda n: led[n])
                victims.append(victim)
                assert led[victim] >= 2, led
                await asyncio.to_thread(kafka_cluster.kill, victim)
                await wait_for_new_leaders(settings, settings.topic_events, victim)
                await asyncio.to_thread(kafka_cluster.restart, victim)
                if round_ == 0:
                    await produce_events(settings, events[half:])
            assert len(set(victims)) == 2
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 150
            while len(await read_topic(settings, settings.topic_outcomes)) < len(events):
                assert service.alive(), service.log_text()[-3000:]
                assert loop.time() < deadline, "the processor did not catch up after the failovers"
                await asyncio.sleep(1)
            accepted = [
                o for o in values(await read_topic(settings, settings.topic_outcomes)) if o["type"] == "invoice.status.accepted"
            ]
            deliveries = values(await wait_for_count(settings, settings.topic_deliveries, len(accepted), timeout=120))
            assert service.terminate() == 0
        finally:
            service.close()

        summary = await assert_exactly_once(settings)
        assert summary["events"] == len(events)

        # Exactly one final delivery record per accepted outcome, none failed.
        keys = Counter(d["idempotency_key"] for d in deliveries)
        assert set(keys.values()) == {1} and len(keys) == len(accepted)
        assert set(keys) == {f"{o['data']['card_id']}/{o['data']['code']}#{o['data']['version']}" for o in accepted}
        assert {d["result"] for d in deliveries} <= {"delivered", "already_applied"}

        # WeChat saw every invoice's versions in order (a repeat is the same version).
        calls = [c for c in server.sim.calls() if "updatestatus" in c.path]
        by_card: dict[tuple[str | None, str | None], list[int]] = defaultdict(list)
        for c in calls:
            assert c.idempotency_key is not None, c
            by_card[(c.card_id, c.code)].append(int(c.idempotency_key.rsplit("#", 1)[1]))
        assert all(v == sorted(v) for v in by_card.values())
        assert {f"{card}/{code}#{v}" for (card, code), vs in by_card.items() for v in vs} == set(keys)

        # And its cards equal the processor's state.
        state = {}
        for record in await read_topic(settings, settings.topic_state):
            value = values([record])[0]
            state[(value["card_id"], value["code"])] = value
        cards = {(c.card_id, c.code): c.reimburse_status for c in server.sim.cards()}
        moved = {k: v["status"] for k, v in state.items() if v["version"] > 0}
        assert {k: cards.get(k) for k in moved} == moved
