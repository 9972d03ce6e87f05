"""``reconcile`` against a real broker and the WeChat simulator.

Most tests use ``FakeDeliverer``: it writes the delivery records and moves
the simulator's cards the way the deliverer does, so each divergence can be
crafted by leaving one step out (a lost record, a conflict). The last test
runs the real processor and deliverer end to end: a card moved behind the
service's back is found, repaired through the deliverer, and a reconcile
afterwards finds nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters import wire
from adapters.settings import Settings
from consumers.deliverer import Deliverer
from consumers.processor import Processor, utc_now
from consumers.reconcile import ReconcileReport, reconcile
from devtools.simulator import SimulatorServer, WeChatSimulator
from devtools.simulator.state import DEFAULT_ACCOUNTS
from domain.model import InvoiceState, idempotency_key, invoice_key
from domain.status import OutcomeType
from domain.status import ReimburseStatus as S
from tests.factories import APPID, encode, random_stream
from tests.support.kafka_io import (
    produce,
    produce_events,
    read_topic,
    values,
    wait_for_count,
)
from tests.support.services import run_cli, running

pytestmark = pytest.mark.broker


@pytest.fixture
def wechat() -> Iterator[SimulatorServer]:
    with SimulatorServer(WeChatSimulator()) as server:
        yield server


def delivery(
    outcome: wire.OutcomeData,
    *,
    result: str = "delivered",
    errcode: int = 0,
    errmsg: str = "ok",
    key: str | None = None,
    repair: bool = False,
) -> wire.DeliveryRecord:
    now = utc_now()
    assert outcome.to_status is not None
    return wire.DeliveryRecord(
        idempotency_key=key or idempotency_key(outcome.card_id, outcome.code, outcome.version),
        card_id=outcome.card_id,
        code=outcome.code,
        appid=outcome.appid,
        reimburse_status=outcome.to_status,
        version=outcome.version,
        result=result,  # type: ignore[arg-type]  # a plain str: msgspec writes it like the DeliveryResult it names
        errcode=errcode,
        errmsg=errmsg,
        attempts=1,
        outcome_id=f"test/{outcome.card_id}/{outcome.version}",
        first_attempt_at=now,
        completed_at=now,
        duration_ms=1.0,
        repair=repair,
    )


@dataclass
class FakeDeliverer:
    """Stands in for the deliverer: final records on invoice.deliveries, cards
    in the simulator, each step open to being left out or spoiled."""

    settings: Settings
    sim: WeChatSimulator
    skip: set[tuple[str, int]] = field(default_factory=set)  # (invoice key, version) never delivered
    conflict: set[tuple[str, int]] = field(default_factory=set)  # (invoice key, version) refused by WeChat

    async def deliver_accepted(self) -> None:
        outcomes = [wire.decode_outcome(r.value) for r in await read_topic(self.settings, self.settings.topic_outcomes)]
        records = []
        for o in outcomes:
            if o.type != OutcomeType.ACCEPTED.value:
                continue
            d = o.data
            step = (invoice_key(d.card_id, d.code), d.version)
            if step in self.skip:
                continue
            if step in self.conflict:
                records.append(delivery(d, result="conflict", errcode=72023, errmsg="invoice has been lock by others"))
                continue
            assert d.to_status is not None
            self.sim.set_card(d.appid, d.card_id, d.code, d.to_status)
            records.append(delivery(d))
        await self._write(records)

    async def apply_repairs(self) -> int:
        """Deliver every repair outcome without a final record, as the deliverer will."""
        done = {
            wire.decode_delivery(r.value).idempotency_key for r in await read_topic(self.settings, self.settings.topic_deliveries)
        }
        records = []
        for r in await read_topic(self.settings, self.settings.topic_outcomes):
            o = wire.decode_outcome(r.value)
            if o.type == OutcomeType.REPAIR.value and o.data.idempotency_key not in done:
                assert o.data.to_status is not None
                self.sim.set_card(o.data.appid, o.data.card_id, o.data.code, o.data.to_status)
                records.append(delivery(o.data, key=o.data.idempotency_key, repair=True))
        await self._write(records)
        return len(records)

    async def _write(self, records: list[wire.DeliveryRecord]) -> None:
        await produce(
            self.settings,
            [(f"{d.card_id}/{d.code}".encode(), wire.delivery_bytes(d), wire.DELIVERY_HEADERS) for d in records],
            topic=self.settings.topic_deliveries,
        )


async def processed(settings: Settings, n_events: int, n_invoices: int, seed: int) -> dict[str, InvoiceState]:
    """Events decided by the live processor; returns the live state per invoice."""
    await produce(settings, ((*encode(ev), []) for ev in random_stream(n_events, n_invoices, seed=seed)))
    async with running(settings):
        await wait_for_count(settings, settings.topic_outcomes, n_events, timeout=120)
    return {r.key.decode(): wire.decode_state(r.value) for r in await read_topic(settings, settings.topic_state)}


async def check(settings: Settings, server: SimulatorServer | None, *, repair: bool = False) -> ReconcileReport:
    return await reconcile(settings, wechat_sim_url=server.base_url if server else None, repair=repair, grace_s=0, progress=False)


def kinds_of(report: ReconcileReport) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for d in report.differences:
        out.setdefault(d.kind, set()).add(d.key)
    return out


async def repair_records(settings: Settings) -> list:
    return [r for r in await read_topic(settings, settings.topic_outcomes) if json.loads(r.value)["type"] == OutcomeType.REPAIR]


def movable_away(status: S) -> S:
    """A status a card in ``status`` can be repaired back from (a legal move to ``status``)."""
    return {S.LOCK: S.INIT, S.INIT: S.LOCK}[status]


def pick(states: dict[str, InvoiceState], n: int, want: set[S], min_version: int = 1) -> list[str]:
    keys = sorted(k for k, s in states.items() if s.status in want and s.version >= min_version)
    assert len(keys) >= n, f"the stream has too few invoices in {want}"
    return keys[:n]


async def test_a_consistent_system_is_clean_and_the_cli_exits_0(
    settings: Settings, wechat: SimulatorServer, tmp_path: Path
) -> None:
    await processed(settings, 400, 40, seed=21)
    await FakeDeliverer(settings, wechat.sim).deliver_accepted()
    report = await check(settings, wechat)
    assert report.clean, report.differences[:5]
    assert report.invoices == 40 and report.in_flight == 0

    out = tmp_path / "report.json"
    done = await run_cli(
        settings, "reconcile", "--wechat-sim-url", wechat.base_url, "--grace-s", "0", "--json", str(out), "--no-progress"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "clean" in done.stdout
    data = json.loads(out.read_text())
    assert data["clean"] is True and data["differences_total"] == 0 and set(data["counts"].values()) == {0}


async def test_each_crafted_divergence_is_found_with_its_kind(
    settings: Settings, wechat: SimulatorServer, tmp_path: Path
) -> None:
    states = await processed(settings, 600, 80, seed=22)
    edited, lost, failed = pick(states, 3, {S.INIT, S.LOCK, S.CLOSURE, S.CANCEL}, min_version=2)
    moved, stuck = [k for k in pick(states, 5, {S.INIT, S.LOCK}) if k not in (edited, lost, failed)][:2]
    deliverer = FakeDeliverer(
        settings, wechat.sim, skip={(lost, states[lost].version)}, conflict={(failed, states[failed].version)}
    )
    await deliverer.deliver_accepted()

    # A state record edited behind the processor's back.
    good = states[edited]
    bad = InvoiceState(
        good.card_id,
        good.code,
        S.LOCK if good.status is not S.LOCK else S.INIT,
        good.version + 3,
        good.appid,
        recent_event_ids=good.recent_event_ids,
    )
    await produce(settings, [(edited.encode(), wire.encode_state(bad), [])], topic=settings.topic_state)
    # Cards changed in WeChat: one a repair can move back, one it cannot (terminal).
    card_id, code = moved.split("/")
    wechat.sim.set_card(APPID, card_id, code, movable_away(states[moved].status))
    card_id, code = stuck.split("/")
    wechat.sim.set_card(APPID, card_id, code, S.CLOSURE)

    report = await check(settings, wechat)
    kinds = kinds_of(report)
    assert kinds == {
        "state_mismatch": {edited},
        "delivery_missing": {lost},
        "delivery_failed": {failed},
        "wechat_mismatch": {lost, failed, moved, stuck},
        "unrepairable": {stuck},
    }
    mismatch = next(d for d in report.differences if d.kind == "state_mismatch")
    assert "version" in mismatch.detail and "status" in mismatch.detail
    assert {p.key for p in report.repairs} == {lost, failed, moved}

    # Without WeChat, the same delivery divergences are judged from the ledger.
    blind = await check(settings, None)
    assert kinds_of(blind) == {"state_mismatch": {edited}, "delivery_missing": {lost}, "delivery_failed": {failed}}
    assert {p.key for p in blind.repairs} == {lost, failed}

    # The CLI: exit 3, the report on stdout, the same in JSON.
    out = tmp_path / "report.json"
    done = await run_cli(
        settings, "reconcile", "--wechat-sim-url", wechat.base_url, "--grace-s", "0", "--json", str(out), "--no-progress"
    )
    assert done.returncode == 3, done.stdout + done.stderr
    for kind in kinds:
        assert kind in done.stdout
    data = json.loads(out.read_text())
    assert data["clean"] is False
    assert {k: n for k, n in data["counts"].items() if n} == {k: len(v) for k, v in kinds.items()}
    assert {d["key"] for d in data["differences"] if d["kind"] == "unrepairable"} == {stuck}
    assert len(data["repair"]["to_enqueue"]) == 3 and data["repair"]["enqueued"] == 0


async def test_repairs_are_written_once_and_after_delivery_nothing_is_left(settings: Settings, wechat: SimulatorServer) -> None:
    states = await processed(settings, 400, 60, seed=23)
    (lost,) = pick(states, 1, {S.INIT, S.LOCK, S.CLOSURE, S.CANCEL}, min_version=2)
    (moved,) = [k for k in pick(states, 2, {S.INIT, S.LOCK}) if k != lost][:1]
    deliverer = FakeDeliverer(settings, wechat.sim, skip={(lost, states[lost].version)})
    await deliverer.deliver_accepted()
    card_id, code = moved.split("/")
    away = movable_away(states[moved].status)
    wechat.sim.set_card(APPID, card_id, code, away)
    assert await repair_records(settings) == []

    first = await check(settings, wechat, repair=True)
    assert first.enqueued == 2 and not first.pending
    written = [wire.decode_outcome(r.value) for r in await repair_records(settings)]
    assert len(written) == 2
    by_key = {o.subject: o for o in written}

    m = by_key[moved].data
    v = states[moved].version
    right = states[moved].status
    assert (m.from_status, m.to_status, m.requested_status, m.version) == (away, right, right, v)
    assert m.idempotency_key == f"{moved}#{v}~repair~{away.name}" and m.event_id == f"repair:{m.idempotency_key}"
    assert m.event_type == "invoice.reconcile.repair" and m.reason == "wechat_mismatch" and m.appid == APPID
    lo = by_key[lost].data
    assert lo.to_status is states[lost].status and lo.version == states[lost].version
    assert lo.from_status is not states[lost].status  # WeChat still shows the previous version's status
    # Each repair goes to the partition its invoice's state lives in, keyed by invoice.
    state_partition = {r.key.decode(): r.partition for r in await read_topic(settings, settings.topic_state)}
    for r in await repair_records(settings):
        assert r.partition == state_partition[r.key.decode()]

    # Still pending: a second --repair sends nothing.
    second = await check(settings, wechat, repair=True)
    assert second.enqueued == 0 and {p.key for p in second.pending} == {lost, moved}
    assert len(await repair_records(settings)) == 2
    assert not second.clean  # the divergences remain until delivered

    # The deliverer applies them; then nothing is left to find.
    assert await deliverer.apply_repairs() == 2
    assert wechat.sim.card_status(APPID, card_id, code) is right
    after = await check(settings, wechat, repair=True)
    assert after.clean, after.differences
    assert after.enqueued == 0 and len(await repair_records(settings)) == 2


async def test_end_to_end_the_deliverer_applies_the_repair_and_nothing_is_left(
    make_settings: Callable[..., Settings], wechat: SimulatorServer
) -> None:
    settings = make_settings(
        wechat_base_url=wechat.base_url,
        wechat_appid=APPID,
        wechat_secret=DEFAULT_ACCOUNTS[APPID],
        wechat_timeout_s=2.0,
        delivery_max_backoff_s=0.5,
        delivery_commit_interval_ms=50,
    )
    events = list(random_stream(500, 60, seed=24))
    await produce_events(settings, events)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(Processor(settings).run(stop)), asyncio.create_task(Deliverer(settings).run(stop))]
    try:
        outcomes = values(await wait_for_count(settings, settings.topic_outcomes, len(events), timeout=120))
        owed = sum(o["type"] == OutcomeType.ACCEPTED for o in outcomes)
        await wait_for_count(settings, settings.topic_deliveries, owed, timeout=120)
        assert (await check(settings, wechat)).clean

        states = {r.key.decode(): wire.decode_state(r.value) for r in await read_topic(settings, settings.topic_state)}
        moved, stuck = pick(states, 2, {S.INIT, S.LOCK})
        card_id, code = moved.split("/")
        wechat.sim.set_card(APPID, card_id, code, movable_away(states[moved].status))
        stuck_card, stuck_code = stuck.split("/")
        wechat.sim.set_card(APPID, stuck_card, stuck_code, S.CLOSURE)

        repaired = await check(settings, wechat, repair=True)
        assert kinds_of(repaired) == {"wechat_mismatch": {moved, stuck}, "unrepairable": {stuck}}
        assert repaired.enqueued == 1
        records = await wait_for_count(settings, settings.topic_deliveries, owed + 1, timeout=60)
        [repair] = [d for d in map(wire.decode_delivery, (r.value for r in records)) if d.repair]
        assert (repair.result, repair.reimburse_status) == ("delivered", states[moved].status)
        assert wechat.sim.card_status(APPID, card_id, code) is states[moved].status

        after = await check(settings, wechat, repair=True)
        assert kinds_of(after) == {"wechat_mismatch": {stuck}, "unrepairable": {stuck}} and after.enqueued == 0
        wechat.sim.set_card(APPID, stuck_card, stuck_code, states[stuck].status)  # a person fixed it by hand
        assert (await check(settings, wechat)).clean
    finally:
        stop.set()
        for result in await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60):
            if isinstance(result, BaseException):
                raise result
