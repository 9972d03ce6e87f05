"""``invoice-sm status`` and ``GET /invoices/{card_id}/{code}`` in a two-instance group.

Two ``invoice-sm process`` instances share six partitions, each with its own
service port, and a deliverer pushes to the WeChat simulator. An invoice
owned by instance A is asked of instance B, by HTTP and by the command line:
B forwards to A, which answers from its store; with no instance left the
command reads the compacted topic itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters import owners
from adapters.key_history import latest_records
from adapters.settings import Settings
from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import DEFAULT_ACCOUNTS
from tests.factories import APPID, card, event
from tests.support.kafka_io import produce, produce_events, values, wait_for_count
from tests.support.processes import Service
from tests.support.services import free_port, run_cli, wait_ready

pytestmark = [pytest.mark.broker, pytest.mark.slow]

INVOICES = 40


def story(n: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Events for invoice ``n`` and what the service must say of it afterwards."""
    card_id, code = card(900 + n)
    if n % 2 == 0:
        first = event(card_id, code, "INVOICE_REIMBURSE_LOCK")
        events = [
            first,
            event(card_id, code, "INVOICE_REIMBURSE_LOCK"),
            event(card_id, code, "INVOICE_REIMBURSE_CLOSURE"),
            event(card_id, code, "INVOICE_REIMBURSE_INIT"),
            first,
        ]
        want = {
            "status": "INVOICE_REIMBURSE_CLOSURE",
            "version": 2,
            "decisions": ["accepted", "unchanged", "accepted", "rejected", "duplicate"],
        }
    else:
        events = [event(card_id, code, "INVOICE_REIMBURSE_LOCK"), event(card_id, code, "INVOICE_REIMBURSE_INIT")]
        want = {"status": "INVOICE_REIMBURSE_INIT", "version": 2, "decisions": ["accepted", "accepted"]}
    want |= {"key": f"{card_id}/{code}", "event_ids": [e["id"] for e in events]}
    return events, want


def assert_answer(body: dict[str, Any], want: dict[str, Any]) -> None:
    assert body["found"] is True
    assert body["key"] == want["key"]
    assert (body["status"], body["version"], body["appid"]) == (want["status"], want["version"], APPID)
    assert [e["decision"] for e in body["events"]] == want["decisions"]
    assert [e["event_id"] for e in body["events"]] == want["event_ids"]
    assert body["history_complete"] is True
    delivery = body["last_delivery"]
    assert delivery is not None
    assert (delivery["version"], delivery["reimburse_status"]) == (want["version"], want["status"])
    assert (delivery["result"], delivery["errcode"]) == ("delivered", 0)
    assert delivery["idempotency_key"] == f"{want['key']}#{want['version']}"
    assert body["delivery_pending"] is False


async def group_owners(settings: Settings, urls: set[str]) -> dict[int, str]:
    """Wait until every partition is owned by one of ``urls`` and each owns some."""
    admin = owners.new_admin(settings)
    await admin.start()
    try:
        for _ in range(600):
            found = await owners.partition_owners(settings, admin)
            if len(found) == settings.topic_partitions and set(found.values()) == urls:
                return found
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    raise AssertionError(f"the group never settled with both instances: {found}")


@pytest.fixture
async def wechat() -> AsyncIterator[SimulatorServer]:
    with SimulatorServer(WeChatSimulator()) as server:
        yield server


async def test_any_instance_answers_for_an_invoice_another_instance_owns(
    make_settings: Callable[..., Settings], wechat: SimulatorServer, tmp_path: Path
) -> None:
    settings = make_settings(
        topic_partitions=6,
        kafka_session_timeout_ms=6000,
        wechat_base_url=wechat.base_url,
        wechat_appid=APPID,
        wechat_secret=DEFAULT_ACCOUNTS[APPID],
        delivery_commit_interval_ms=50,
    )
    ports = {"a": free_port(), "b": free_port()}
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    services = {
        name: Service(
            "process",
            settings,
            tmp_path / f"{name}.log",
            INVOICE_SM_METRICS_PORT=str(port),
            INVOICE_SM_STATE_DIR=str(tmp_path / f"state-{name}"),
        )
        for name, port in ports.items()
    }
    services["deliver"] = Service("deliver", settings, tmp_path / "deliver.log")
    stories = [story(n) for n in range(INVOICES)]
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            for name in ("a", "b"):
                ready = await wait_ready(client, services[name], url[name])
                assert ready is not None and ready.status_code == 200, services[name].log_text()[-3000:]
            partition_owner = await group_owners(settings, {url["a"], url["b"]})

            published = [e for events, _ in stories for e in events]
            await produce_events(settings, published)
            outcomes = values(await wait_for_count(settings, settings.topic_outcomes, len(published), timeout=120))
            accepted = [o for o in outcomes if o["type"] == "invoice.status.accepted"]
            await wait_for_count(settings, settings.topic_deliveries, len(accepted), timeout=120)
            # Owners as they are now, should the group have moved meanwhile.
            partition_owner = await group_owners(settings, {url["a"], url["b"]})
            partition_of = {f"{o['data']['card_id']}/{o['data']['code']}": o["data"]["source_partition"] for o in outcomes}
            owned_by_a = [want for _, want in stories if partition_owner[partition_of[want["key"]]] == url["a"]]
            assert owned_by_a, "no invoice landed on instance A"
            # One whose every candidate partition (murmur2, CRC32) is A's: B holds nothing of it.
            only_a = [
                w
                for w in owned_by_a
                if {partition_owner[p] for p in owners.candidate_partitions(w["key"], settings.topic_partitions)} == {url["a"]}
            ]
            assert only_a, "no invoice of A's has both candidate partitions on A"
            want = only_a[0]

            # B holds none of it: it forwards to A, which answers from its store.
            from_b = await client.get(f"{url['b']}/invoices/{want['key']}")
            assert from_b.status_code == 200, from_b.text
            assert_answer(from_b.json(), want)
            assert (from_b.json()["source"], from_b.json()["answered_by"]) == ("forwarded", url["a"])
            from_a = await client.get(f"{url['a']}/invoices/{want['key']}")
            assert (from_a.json()["source"], from_a.json()["answered_by"]) == ("owner", url["a"])
            assert_answer(from_a.json(), want)

            # A query already forwarded is never forwarded again.
            hop = await client.get(f"{url['b']}/invoices/{want['key']}", headers={owners.FORWARDED_HEADER: "test"})
            assert hop.status_code == 421 and hop.json()["error"] == "not_owner"

            unknown = await client.get(f"{url['b']}/invoices/nosuchcard/1")
            assert unknown.status_code == 404 and unknown.json()["found"] is False
            assert (await client.get(f"{url['b']}/invoices/bad.card/1")).status_code == 400

        # The command line, asking B about several invoices of A's.
        several = owned_by_a[:3]
        result = await run_cli(settings, "status", "--url", url["b"], "--json", *[w["key"] for w in several])
        assert result.returncode == 0, result.stdout + result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [line["key"] for line in lines] == [w["key"] for w in several]
        for line, expected in zip(lines, several, strict=True):
            assert_answer(line, expected)
            assert line["source"] == "forwarded"

        table = await run_cli(settings, "status", "--url", url["b"], want["key"])
        assert table.returncode == 0, table.stdout + table.stderr
        assert want["key"] in table.stdout and want["status"] in table.stdout and "delivered" in table.stdout

        missing = await run_cli(settings, "status", "--url", url["b"], want["key"], "nosuchcard/1")
        assert missing.returncode == 1
        assert "nosuchcard/1: not found" in missing.stdout
        bad = await run_cli(settings, "status", "--url", url["b"], want["key"], "no-slash-here")
        assert bad.returncode == 2 and "no-slash-here" in bad.stderr

        # With no service to ask, the command finds the owner itself and asks it.
        direct = await run_cli(settings, "status", "--direct", "--json", want["key"])
        assert direct.returncode == 0, direct.stdout + direct.stderr
        assert_answer(json.loads(direct.stdout), want)
        assert (json.loads(direct.stdout)["source"], json.loads(direct.stdout)["answered_by"]) == ("forwarded", url["a"])

        # A dies: B cannot reach the owner it last saw (or the group is
        # rebalancing, or B owns the partition by now); whichever, it answers.
        services["a"].kill()
        async with httpx.AsyncClient(timeout=60) as client:
            after = await client.get(f"{url['b']}/invoices/{want['key']}")
        assert after.status_code == 200, after.text
        assert_answer(after.json(), want)
        assert after.json()["source"] in ("topic", "owner")

        # No instance left: the command finds no service and no owner, and reads the topics.
        for name in ("b", "deliver"):
            assert services[name].terminate() == 0, services[name].log_text()[-3000:]
        alone = await run_cli(settings, "status", "--url", url["b"], "--json", want["key"])
        assert alone.returncode == 0, alone.stdout + alone.stderr
        body = json.loads(alone.stdout)
        assert_answer(body, want)
        assert body["source"] == "topic" and "no service answers" in alone.stderr
    finally:
        for service in services.values():
            service.close()


async def test_the_latest_records_of_a_key_are_read_back_in_widening_windows_within_a_budget(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(topic_partitions=1)
    wanted = {10, 1990, 2990}
    records: list[tuple[bytes, bytes, list[tuple[str, bytes | None]]]] = [
        (b"k" if i in wanted else b"other", str(i).encode(), []) for i in range(3000)
    ]
    await produce(settings, records, topic=settings.topic_outcomes)

    two = await latest_records(settings, settings.topic_outcomes, 0, b"k", want=2, budget=10_000)
    assert [r.value for r in two.records] == [b"2990", b"1990"] and two.complete
    # 500, then 2,000 back: the window that reached offset 1990 was the second.
    assert two.scanned == 2500

    every = await latest_records(settings, settings.topic_outcomes, 0, b"k", want=5, budget=10_000)
    assert [r.value for r in every.records] == [b"2990", b"1990", b"10"]
    assert every.complete and every.scanned == 3000  # the partition's start was reached

    cut = await latest_records(settings, settings.topic_outcomes, 0, b"k", want=5, budget=1000)
    assert [r.value for r in cut.records] == [b"2990"]
    assert not cut.complete and cut.scanned == 1000

    none = await latest_records(settings, settings.topic_outcomes, 0, b"absent", want=1, budget=10_000)
    assert none.records == () and none.complete
