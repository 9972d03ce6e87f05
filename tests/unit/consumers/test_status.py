"""The per-invoice query with fakes: which source answers, and what the answer says.

The real-broker, two-instance version is tests/integration/test_status.py."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from aiokafka.partitioner import DefaultPartitioner

from adapters import kafka, owners, wire
from adapters.health import HealthServer
from adapters.key_history import KeyRecords
from adapters.metrics import Metrics
from adapters.settings import Settings, load_settings
from adapters.store import MemoryPartitionStore
from consumers import commands_status
from consumers.commands_status import NOT_OWNER, InvoiceQuery, parse_key
from domain.decide import decide
from domain.errors import BrokerError
from domain.model import InvoiceState, LifecycleEvent
from domain.status import ReimburseStatus as S

CARD, CODE = "pjZ8Yt7Um2jYxzneP8GomnxoVFWo", "186921658591"
KEY = f"{CARD}/{CODE}"
APPID = "wx1234567890abcdef"
PEER = "http://10.0.0.2:9100"
ME = "http://10.0.0.1:9100"


def settings(**overrides: Any) -> Settings:
    return load_settings(kafka_bootstrap_servers="127.0.0.1:1", **overrides)


# ------------------------------------------------------------------ keys and advertising


@pytest.mark.parametrize("text", ["a/1", f"{CARD}/{CODE}", "A-b_c/0-9"])
def test_an_invoice_key_is_two_tokens_around_one_slash(text: str) -> None:
    assert parse_key(text) == tuple(text.split("/"))


@pytest.mark.parametrize("text", ["", "a", "a/", "/1", "a/b/c", "a b/1", "a/1\n", "é/1", "x" * 65 + "/1"])
def test_anything_else_is_not_an_invoice_key(text: str) -> None:
    assert parse_key(text) is None


def test_the_advertised_url_is_the_setting_else_the_service_port() -> None:
    assert owners.advertised_url(settings(advertised_url="https://pod-1.svc:9100/")) == "https://pod-1.svc:9100"
    assert owners.advertised_url(settings(metrics_port=9100)) == "http://127.0.0.1:9100"
    assert owners.advertised_url(settings(metrics_port=9100, metrics_host="::1")) == "http://[::1]:9100"
    assert owners.advertised_url(settings(metrics_port=9100, metrics_host="0.0.0.0")) != "http://0.0.0.0:9100"
    assert owners.advertised_url(settings()) is None
    assert owners.advertised_url(settings(metrics_port=0)) is None  # a port picked at bind time cannot be advertised


def test_an_advertised_url_that_is_not_http_stops_the_start() -> None:
    from domain.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="INVOICE_SM_ADVERTISED_URL"):
        settings(advertised_url="pod-1:9100")


def test_user_data_carries_the_url_and_anything_else_reads_as_none() -> None:
    assert owners.decode_user_data(owners.encode_user_data(ME)) == ME
    for other in (None, b"", b"\x00\x01", b"[1]", b'{"invoice_sm_url": 3}', b'{"invoice_sm_url": "ftp://x"}'):
        assert owners.decode_user_data(other) is None


def test_the_assignor_assigns_as_round_robin_under_its_name_and_advertises() -> None:
    assignor = owners.AdvertisingAssignor(ME)
    assert assignor.name == RoundRobinPartitionAssignor.name
    metadata = assignor.metadata({"invoice.events"})
    assert metadata.subscription == ["invoice.events"]
    assert owners.decode_user_data(ConsumerProtocolMemberMetadata.decode(metadata.encode()).user_data) == ME


async def test_only_the_processor_group_consumer_advertises() -> None:
    s = settings(metrics_port=9100)
    processor = kafka.new_consumer(s, group_id=s.processor_group_id)
    deliverer = kafka.new_consumer(s, group_id=s.deliverer_group_id)
    silent = kafka.new_consumer(settings(), group_id=s.processor_group_id)
    (strategy,) = processor._partition_assignment_strategy
    assert isinstance(strategy, owners.AdvertisingAssignor)
    assert owners.decode_user_data(strategy.metadata([]).user_data) == "http://127.0.0.1:9100"
    assert deliverer._partition_assignment_strategy == (RoundRobinPartitionAssignor,)
    assert silent._partition_assignment_strategy == (RoundRobinPartitionAssignor,)


@pytest.mark.parametrize("n", [1, 3, 6, 12])
def test_the_first_candidate_partition_is_the_default_partitioner_s(n: int) -> None:
    for i in range(200):
        key = f"card{i}/{i}"
        candidates = owners.candidate_partitions(key, n)
        assert candidates[0] == DefaultPartitioner()(key.encode(), list(range(n)), list(range(n)))
        assert len(candidates) == len(set(candidates)) and all(0 <= p < n for p in candidates)
    assert owners.candidate_partitions(KEY, 1) == [0]
    assert owners.candidate_partitions(KEY, 0) == []


# ------------------------------------------------------------------ the group description


def _member(url: str | None, partitions: dict[str, list[int]]) -> tuple[str, str, str, bytes, bytes]:
    metadata = ConsumerProtocolMemberMetadata(0, list(partitions), owners.encode_user_data(url) if url else b"").encode()
    assignment = ConsumerProtocolMemberAssignment(0, sorted(partitions.items()), b"").encode()
    return ("member-" + str(url), "invoice-sm", "/10.0.0.1", metadata, assignment)


@dataclass
class FakeAdmin:
    state: str = "Stable"
    members: list[Any] = field(default_factory=list)

    async def describe_consumer_groups(self, groups: list[str]) -> list[Any]:
        @dataclass
        class Response:
            groups: list[Any]

        return [Response([(0, groups[0], self.state, "consumer", "roundrobin", self.members)])]


async def test_owners_are_read_from_each_member_s_assignment_and_url() -> None:
    s = settings()
    admin = FakeAdmin(
        members=[
            _member(ME, {s.topic_events: [0, 2]}),
            _member(PEER, {s.topic_events: [1, 3], "other.topic": [0]}),
            _member(None, {s.topic_events: [4]}),  # advertises nothing
        ]
    )
    assert await owners.partition_owners(s, admin) == {0: ME, 2: ME, 1: PEER, 3: PEER}


async def test_a_rebalancing_group_has_no_owners_yet() -> None:
    s = settings()
    admin = FakeAdmin(state="PreparingRebalance", members=[_member(ME, {s.topic_events: [0]})])
    assert await owners.partition_owners(s, admin) == {}


# ------------------------------------------------------------------ the query, with fakes


@dataclass
class Record:
    key: bytes
    value: bytes | None
    offset: int
    topic: str = "invoice.events"
    partition: int = 0


def lifecycle(event_id: str, status: S) -> LifecycleEvent:
    return LifecycleEvent(
        event_id=event_id, event_type="invoice.status.set", card_id=CARD, code=CODE, requested_status=status, appid=APPID
    )


def history() -> tuple[InvoiceState, list[Record], list[Record]]:
    """Lock (accepted), lock again (unchanged), close (accepted), unlock
    (rejected); the first acceptance delivered. Records newest first."""
    state: InvoiceState | None = None
    outcomes = []
    for offset, (event_id, status) in enumerate([("e1", S.LOCK), ("e2", S.LOCK), ("e3", S.CLOSURE), ("e4", S.INIT)]):
        decision = decide(state, lifecycle(event_id, status), "2026-12-02T10:00:00.000Z")
        state = decision.state
        outcomes.append(
            Record(KEY.encode(), wire.outcome_bytes(decision, Record(b"", None, offset), "2026-12-02T10:00:00.000Z", KEY), offset)
        )
    delivery = {
        "idempotency_key": f"{KEY}#1",
        "card_id": CARD,
        "code": CODE,
        "appid": APPID,
        "reimburse_status": S.LOCK.value,
        "version": 1,
        "result": "delivered",
        "errcode": 0,
        "errmsg": "ok",
        "attempts": 2,
        "outcome_id": "x",
        "first_attempt_at": None,
        "completed_at": "2026-12-02T10:00:01.000Z",
        "duration_ms": 3.0,
    }
    assert state is not None
    return state, outcomes[::-1], [Record(KEY.encode(), json.dumps(delivery).encode(), 7)]


@dataclass
class FakeWorker:
    store: MemoryPartitionStore
    stall: str | None = None
    closing: Any = field(default_factory=type("E", (), {"is_set": staticmethod(lambda: False)}))


@dataclass
class FakeProcessor:
    workers: Mapping[TopicPartition, FakeWorker]  # as HoldsPartitions declares it (a dict would not match: invariant)


@dataclass
class FakeOwnerClient:
    answers: dict[str, owners.OwnerAnswer]
    asked: list[str] = field(default_factory=list)

    async def ask(self, url: str, card_id: str, code: str, *, events: int) -> owners.OwnerAnswer:
        self.asked.append(url)
        return self.answers.get(url, owners.OwnerAnswer(0, {"error": "ConnectError"}))

    async def close(self) -> None:
        pass


@pytest.fixture
def topics(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What the fake topics hold, by topic name; a list of records per topic (newest first)."""
    state, outcomes, deliveries = history()
    held: dict[str, Any] = {
        "invoice.state": [Record(KEY.encode(), wire.encode_state(state), 5)],
        "invoice.outcomes": outcomes,
        "invoice.deliveries": deliveries,
        "complete": True,
        "reads": [],
    }

    async def latest_records(s: Settings, topic: str, partition: int, key: bytes, *, want: int, budget: int) -> KeyRecords:
        held["reads"].append((topic, partition))
        found = [r for r in held[topic] if r.key == key][:want]
        return KeyRecords(tuple(found), complete=held["complete"] or len(found) >= want, scanned=budget)

    monkeypatch.setattr(commands_status, "latest_records", latest_records)
    return held


def query(
    *, url: str | None = ME, owner_map: dict[int, str] | None = None, client: FakeOwnerClient | None = None
) -> InvoiceQuery:
    q = InvoiceQuery(settings(), url=url)
    q._counts = (time.monotonic(), {"invoice.events": 6, "invoice.outcomes": 6, "invoice.deliveries": 6})

    async def fake_owners(notes: list[str]) -> dict[int, str]:
        return dict(owner_map or {})

    q._owners = fake_owners  # type: ignore[method-assign]  # the fake in place of asking the group
    q._client = client or FakeOwnerClient({})  # type: ignore[assignment]  # duck-typed fake of OwnerClient
    return q


def holding(partitions: list[int], *, with_key_in: int | None = None) -> FakeProcessor:
    state, _, _ = history()
    workers = {}
    for p in partitions:
        store = MemoryPartitionStore()
        if p == with_key_in:
            store.apply([(KEY.encode(), wire.encode_state(state))], 1)
        workers[TopicPartition("invoice.events", p)] = FakeWorker(store)
    return FakeProcessor(workers)


def home() -> int:
    return owners.candidate_partitions(KEY, 6)[0]


async def test_the_owner_answers_from_its_store_with_history_from_the_topics(topics: dict[str, Any]) -> None:
    q = query()
    q.answer_from(holding([home()], with_key_in=home()))
    status, body = await q.answer(CARD, CODE)
    assert status == 200
    assert (body["source"], body["answered_by"], body["partition"]) == ("owner", ME, home())
    assert (body["status"], body["version"], body["appid"]) == (S.CLOSURE.value, 2, APPID)
    assert [(e["event_id"], e["decision"]) for e in body["events"]] == [
        ("e1", "accepted"),
        ("e2", "unchanged"),
        ("e3", "accepted"),
        ("e4", "rejected"),
    ]
    assert body["events"][3]["reason"] == "terminal_state"
    assert body["last_delivery"]["result"] == "delivered" and body["last_delivery"]["attempts"] == 2
    # Version 2 (CLOSURE) was accepted and only version 1 delivered.
    assert body["delivery_pending"] is True
    assert body["history_complete"] is True
    assert ("invoice.state", home()) not in topics["reads"]  # the store answered; the topic was not read


async def test_a_stalled_owner_still_answers_and_says_its_state_may_be_behind(topics: dict[str, Any]) -> None:
    processor = holding([home()], with_key_in=home())
    next(iter(processor.workers.values())).stall = "broker_unavailable"
    q = query()
    q.answer_from(processor)
    status, body = await q.answer(CARD, CODE)
    assert status == 200 and body["source"] == "owner"
    assert any("stalled (broker_unavailable)" in note for note in body["notes"])


async def test_an_invoice_in_any_held_partition_is_found_whatever_the_partitioner(topics: dict[str, Any]) -> None:
    elsewhere = next(p for p in range(6) if p not in owners.candidate_partitions(KEY, 6))
    q = query()
    q.answer_from(holding([elsewhere], with_key_in=elsewhere))
    status, body = await q.answer(CARD, CODE)
    assert status == 200 and body["partition"] == elsewhere and body["source"] == "owner"


async def test_a_non_owner_forwards_once_and_relays_the_owner_s_answer(topics: dict[str, Any]) -> None:
    client = FakeOwnerClient(
        {PEER: owners.OwnerAnswer(200, {"found": True, "status": "X", "source": "owner", "answered_by": PEER})}
    )
    q = query(owner_map=dict.fromkeys(range(6), PEER), client=client)
    status, body = await q.answer(CARD, CODE)
    assert status == 200 and (body["source"], body["answered_by"], body["status"]) == ("forwarded", PEER, "X")
    assert client.asked == [PEER]
    assert topics["reads"] == []


async def test_an_unreachable_owner_means_the_compacted_topic_answers(topics: dict[str, Any]) -> None:
    client = FakeOwnerClient({})
    q = query(owner_map=dict.fromkeys(range(6), PEER), client=client)
    status, body = await q.answer(CARD, CODE)
    assert status == 200 and body["source"] == "topic" and body["answered_by"] is None
    assert body["version"] == 2
    assert any(PEER in note for note in body["notes"])


async def test_mid_rebalance_no_owner_is_asked_and_the_topic_answers(topics: dict[str, Any]) -> None:
    client = FakeOwnerClient({})
    status, body = await query(owner_map={}, client=client).answer(CARD, CODE)
    assert status == 200 and body["source"] == "topic" and client.asked == []


async def test_an_owner_listed_under_this_instance_s_own_url_is_not_asked(topics: dict[str, Any]) -> None:
    client = FakeOwnerClient({})
    status, body = await query(owner_map=dict.fromkeys(range(6), ME), client=client).answer(CARD, CODE)
    assert status == 200 and body["source"] == "topic" and client.asked == []


async def test_a_forwarded_query_is_answered_from_the_stores_or_refused_never_forwarded(topics: dict[str, Any]) -> None:
    client = FakeOwnerClient({})
    q = query(owner_map=dict.fromkeys(range(6), PEER), client=client)
    status, body = await q.answer(CARD, CODE, forwarded=True)
    assert status == NOT_OWNER and body["error"] == "not_owner"
    q.answer_from(holding([home()]))
    status, body = await q.answer(CARD, CODE, forwarded=True)
    assert status == 404 and body["found"] is False and body["searched_partitions"] == [home()]
    assert client.asked == [] and topics["reads"] == []


async def test_an_owner_s_not_found_settles_the_partitions_it_searched(topics: dict[str, Any]) -> None:
    candidates = owners.candidate_partitions(KEY, 6)
    not_found = owners.OwnerAnswer(404, {"found": False, "source": "owner", "searched_partitions": candidates})
    client = FakeOwnerClient({PEER: not_found})
    status, body = await query(owner_map=dict.fromkeys(range(6), PEER), client=client).answer(CARD, CODE)
    assert status == 404 and body["found"] is False
    assert client.asked == [PEER]  # one question settled both candidates
    assert topics["reads"] == []


async def test_an_invoice_nobody_has_is_not_found_and_a_cut_search_says_so(topics: dict[str, Any]) -> None:
    topics["invoice.state"] = []
    status, body = await query().answer(CARD, CODE)
    assert status == 404 and body["found"] is False and body["history_complete"] is True
    topics["complete"] = False
    status, body = await query().answer(CARD, CODE)
    assert status == 404 and body["history_complete"] is False and body["notes"]


async def test_a_tombstone_is_an_invoice_that_is_gone(topics: dict[str, Any]) -> None:
    topics["invoice.state"] = [Record(KEY.encode(), None, 9)]
    status, _ = await query().answer(CARD, CODE)
    assert status == 404


async def test_history_cut_by_the_budget_is_flagged(topics: dict[str, Any]) -> None:
    topics["complete"] = False
    status, body = await query().answer(CARD, CODE, events=10)
    assert status == 200 and body["history_complete"] is False
    assert len(body["events"]) == 4


async def test_the_http_handler_refuses_bad_keys_and_counts_and_reports_broker_errors(topics: dict[str, Any]) -> None:
    q = query()
    assert (await q.handle("bad.card", CODE, {}, {}))[0] == 400
    assert (await q.handle(CARD, CODE, {"events": "0"}, {}))[0] == 400
    assert (await q.handle(CARD, CODE, {"events": "x"}, {}))[0] == 400
    assert (await q.handle(CARD, CODE, {"events": "2"}, {}))[1]["events"][0]["event_id"] == "e3"

    async def broken(notes: list[str]) -> dict[int, str]:
        raise BrokerError("describe the processor group: KafkaConnectionError")

    q._owners = broken  # type: ignore[method-assign]  # the fake in place of asking the group
    status, body = await q.handle(CARD, CODE, {}, {})
    assert status == 503 and "KafkaConnectionError" in body["error"]


async def test_the_service_port_serves_the_query_once_one_is_set() -> None:
    async def fake(card_id: str, code: str, params: Any, headers: Any) -> tuple[int, dict[str, object]]:
        return 200, {"key": f"{card_id}/{code}", "events": params.get("events"), "forwarded": owners.FORWARDED_HEADER in headers}

    async with HealthServer(Metrics()) as server, httpx.AsyncClient() as client:
        assert (await client.get(f"{server.url}/invoices/{CARD}/{CODE}")).status_code == 404
        server.set_invoice_query(fake)
        answer = await client.get(f"{server.url}/invoices/{CARD}/{CODE}?events=3", headers={owners.FORWARDED_HEADER: ME})
        assert answer.status_code == 200
        assert answer.json() == {"key": KEY, "events": "3", "forwarded": True}


async def test_the_owner_client_reports_an_unreachable_owner_as_no_answer() -> None:
    client = owners.OwnerClient(origin=ME, timeout_s=0.5)
    try:
        answer = await client.ask("http://127.0.0.1:1", CARD, CODE, events=1)
    finally:
        await client.close()
    assert answer.status == 0 and "error" in answer.body
