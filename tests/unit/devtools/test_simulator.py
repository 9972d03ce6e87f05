"""The WeChat simulator over real HTTP on loopback (SimulatorServer + httpx).

One server per module keeps the tests fast; each test starts from
``sim.reset(tokens=True)``. The simulator runs on a fake clock, so token
expiry, grace periods and minute windows are tested by moving time, not by
sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from devtools.simulator import (
    DEMO_APPID,
    DEMO_AUTHORIZER_APPIDS,
    DEMO_COMPONENT_APPID,
    DEMO_COMPONENT_SECRET,
    DEMO_SECRET,
    DEMO_VERIFY_TICKET,
    SimulatorControl,
    SimulatorError,
    SimulatorServer,
    WeChatSimulator,
    token_fingerprint,
)
from domain.status import ReimburseStatus as S

UPDATE = "/card/invoice/platform/updatestatus"
ROOT = Path(__file__).resolve().parents[3]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def server(clock: FakeClock) -> Iterator[SimulatorServer]:
    with SimulatorServer(WeChatSimulator(clock=clock)) as srv:
        yield srv


@pytest.fixture
def sim(server: SimulatorServer) -> Iterator[WeChatSimulator]:
    server.sim.reset(tokens=True)
    yield server.sim
    server.sim.reset(tokens=True)


@pytest.fixture
def client(server: SimulatorServer, sim: WeChatSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=5.0) as c:
        yield c


@pytest.fixture
def control(server: SimulatorServer, sim: WeChatSimulator) -> Iterator[SimulatorControl]:
    with SimulatorControl(server.base_url) as c:
        yield c


def get_token(client: httpx.Client, appid: str = DEMO_APPID, secret: str = DEMO_SECRET) -> dict[str, Any]:
    r = client.get("/cgi-bin/token", params={"grant_type": "client_credential", "appid": appid, "secret": secret})
    assert r.status_code == 200
    return r.json()


def token(client: httpx.Client) -> str:
    return str(get_token(client)["access_token"])


def update(
    client: httpx.Client,
    tok: str | None,
    status: str,
    card_id: str = "card-1",
    code: str = "100001",
    idem: str | None = None,
    **kw: Any,
) -> httpx.Response:
    params = {"access_token": tok} if tok is not None else {}
    headers = {"Idempotency-Key": idem} if idem else {}
    return client.post(
        UPDATE,
        params=params,
        json={"card_id": card_id, "code": code, "reimburse_status": status},
        headers=headers,
        **kw,
    )


def errcode(resp: httpx.Response) -> int:
    assert resp.status_code == 200, resp.text
    return int(resp.json()["errcode"])


# --------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------


def test_token_errors(client: httpx.Client) -> None:
    assert get_token(client, appid="wx0000000000000000")["errcode"] == 40013
    assert get_token(client, secret="wrong")["errcode"] == 40001
    r = client.get("/cgi-bin/token", params={"appid": DEMO_APPID, "secret": DEMO_SECRET})
    assert r.json()["errcode"] == 40002


def test_each_fetch_issues_a_new_token_and_the_old_one_works_through_the_grace(
    client: httpx.Client, sim: WeChatSimulator, clock: FakeClock
) -> None:
    first = get_token(client)
    assert first["expires_in"] == 7200
    second = get_token(client)
    assert second["access_token"] != first["access_token"]
    # Both work during the grace period...
    assert errcode(update(client, first["access_token"], S.LOCK)) == 0
    assert errcode(update(client, second["access_token"], S.INIT)) == 0
    clock.advance(301)
    # ...then only the newest.
    assert errcode(update(client, first["access_token"], S.LOCK)) == 40001
    assert errcode(update(client, second["access_token"], S.LOCK)) == 0


def test_token_grace_is_configurable(client: httpx.Client, sim: WeChatSimulator, clock: FakeClock) -> None:
    sim.configure(token_grace_s=0)
    first = token(client)
    token(client)
    assert errcode(update(client, first, S.LOCK)) == 40001


def test_token_expiry_and_token_errors_on_updatestatus(client: httpx.Client, sim: WeChatSimulator, clock: FakeClock) -> None:
    assert errcode(update(client, None, S.LOCK)) == 41001
    assert errcode(update(client, "never-issued", S.LOCK)) == 40001
    sim.configure(token_ttl_s=60)
    tok = get_token(client)
    assert tok["expires_in"] == 60
    clock.advance(61)
    assert errcode(update(client, tok["access_token"], S.LOCK)) == 42001
    # No call reached the card.
    assert sim.cards() == []


def test_invalidate_and_expire_tokens(client: httpx.Client, sim: WeChatSimulator) -> None:
    tok = token(client)
    assert sim.invalidate_tokens(DEMO_APPID) == 1
    assert errcode(update(client, tok, S.LOCK)) == 40001
    tok = token(client)  # a fresh token works again
    assert errcode(update(client, tok, S.LOCK)) == 0
    sim.expire_tokens()
    assert errcode(update(client, tok, S.INIT)) == 42001


def test_stable_token_returns_the_same_token_while_valid(client: httpx.Client, sim: WeChatSimulator, clock: FakeClock) -> None:
    body = {"grant_type": "client_credential", "appid": DEMO_APPID, "secret": DEMO_SECRET, "force_refresh": False}
    a = client.post("/cgi-bin/stable_token", json=body).json()
    clock.advance(100)
    b = client.post("/cgi-bin/stable_token", json=body).json()
    assert b["access_token"] == a["access_token"]
    assert b["expires_in"] == 7100
    # A classic token is a separate series: it does not supersede the stable one.
    token(client)
    clock.advance(400)
    assert client.post("/cgi-bin/stable_token", json=body).json()["access_token"] == a["access_token"]
    # force_refresh issues a new one; the old one works through the grace.
    c = client.post("/cgi-bin/stable_token", json={**body, "force_refresh": True}).json()
    assert c["access_token"] != a["access_token"]
    assert errcode(update(client, a["access_token"], S.LOCK)) == 0
    assert errcode(update(client, c["access_token"], S.INIT)) == 0
    clock.advance(301)
    assert errcode(update(client, a["access_token"], S.LOCK)) == 40001
    # Errors.
    assert client.post("/cgi-bin/stable_token", json={**body, "secret": "x"}).json()["errcode"] == 40001
    assert client.post("/cgi-bin/stable_token", content=b"{").json()["errcode"] == 47001
    kinds = [(r.kind, r.issued) for r in sim.token_calls()]
    assert kinds[:2] == [("stable_token", True), ("stable_token", False)]


def _component_token(client: httpx.Client, **over: str) -> dict[str, Any]:
    body = {
        "component_appid": DEMO_COMPONENT_APPID,
        "component_appsecret": DEMO_COMPONENT_SECRET,
        "component_verify_ticket": DEMO_VERIFY_TICKET,
        **over,
    }
    return client.post("/cgi-bin/component/api_component_token", json=body).json()


def _authorizer_token(client: httpx.Client, ctoken: str, refresh: str, appid: str) -> dict[str, Any]:
    return client.post(
        "/cgi-bin/component/api_authorizer_token",
        params={"component_access_token": ctoken},
        json={"component_appid": DEMO_COMPONENT_APPID, "authorizer_appid": appid, "authorizer_refresh_token": refresh},
    ).json()


def test_component_flow_rotates_the_refresh_token(client: httpx.Client, sim: WeChatSimulator) -> None:
    assert _component_token(client, component_verify_ticket="stale")["errcode"] == 61006
    assert _component_token(client, component_appsecret="x")["errcode"] == 40001
    ctoken = _component_token(client)["component_access_token"]
    appid = DEMO_AUTHORIZER_APPIDS[0]
    refresh0 = sim.current_refresh_token(appid)

    first = _authorizer_token(client, ctoken, refresh0, appid)
    refresh1 = first["authorizer_refresh_token"]
    assert refresh1 != refresh0
    assert first["expires_in"] == 7200
    # The old refresh token stopped working once rotated; the new one works.
    assert _authorizer_token(client, ctoken, refresh0, appid)["errcode"] == 61023
    second = _authorizer_token(client, ctoken, refresh1, appid)
    assert "authorizer_access_token" in second
    # Wrong component token, unauthorized appid.
    assert _authorizer_token(client, "nope", second["authorizer_refresh_token"], appid)["errcode"] == 40001
    assert _authorizer_token(client, ctoken, "x", "wx9999999999999999")["errcode"] == 61003

    # The authorizer token acts for the authorizer's appid; a component token does not work there.
    assert errcode(update(client, second["authorizer_access_token"], S.LOCK)) == 0
    assert sim.card_status(appid, "card-1", "100001") == S.LOCK
    assert errcode(update(client, ctoken, S.LOCK)) == 40001
    # No refresh token in the records: only fingerprints.
    dumped = msgspec.json.encode(sim.token_calls()).decode()
    for secret in (refresh0, refresh1, ctoken, first["authorizer_access_token"], DEMO_COMPONENT_SECRET):
        assert secret not in dumped


def test_keep_old_refresh_token_setting(client: httpx.Client, sim: WeChatSimulator) -> None:
    sim.configure(keep_old_refresh_token=True)
    ctoken = _component_token(client)["component_access_token"]
    appid = DEMO_AUTHORIZER_APPIDS[1]
    refresh0 = sim.current_refresh_token(appid)
    assert "authorizer_access_token" in _authorizer_token(client, ctoken, refresh0, appid)
    assert "authorizer_access_token" in _authorizer_token(client, ctoken, refresh0, appid)


# --------------------------------------------------------------------------
# updatestatus rules
# --------------------------------------------------------------------------


def test_legal_moves_and_refusals(client: httpx.Client, sim: WeChatSimulator) -> None:
    tok = token(client)
    assert errcode(update(client, tok, S.CLOSURE)) == 72039  # INIT -> CLOSURE: lock first
    assert sim.card_status(DEMO_APPID, "card-1", "100001") == S.INIT  # created in INIT when first seen
    assert errcode(update(client, tok, S.INIT)) == 72024  # same status
    assert errcode(update(client, tok, S.LOCK)) == 0
    assert errcode(update(client, tok, S.LOCK)) == 72024  # same status again
    assert errcode(update(client, tok, S.INIT)) == 0  # unlock
    assert errcode(update(client, tok, S.LOCK)) == 0
    assert errcode(update(client, tok, S.CLOSURE)) == 0
    for target in S:
        assert errcode(update(client, tok, target)) == 72024  # CLOSURE is terminal
    # INIT -> CANCEL, then terminal.
    assert errcode(update(client, tok, S.CANCEL, card_id="card-2")) == 0
    assert errcode(update(client, tok, S.LOCK, card_id="card-2")) == 72024
    # LOCK -> CANCEL is allowed by default...
    assert errcode(update(client, tok, S.LOCK, card_id="card-3")) == 0
    assert errcode(update(client, tok, S.CANCEL, card_id="card-3")) == 0
    # ...and refused with refuse_lock_to_cancel.
    sim.configure(refuse_lock_to_cancel=True)
    assert errcode(update(client, tok, S.LOCK, card_id="card-4")) == 0
    assert errcode(update(client, tok, S.CANCEL, card_id="card-4")) == 72023
    assert sim.card_status(DEMO_APPID, "card-4", "100001") == S.LOCK
    # Cards are kept per (appid, card_id, code).
    assert errcode(update(client, tok, S.LOCK, code="other")) == 0
    statuses = {(c.card_id, c.code): c.reimburse_status for c in sim.cards()}
    assert statuses == {
        ("card-1", "100001"): S.CLOSURE,
        ("card-2", "100001"): S.CANCEL,
        ("card-3", "100001"): S.CANCEL,
        ("card-4", "100001"): S.LOCK,
        ("card-1", "other"): S.LOCK,
    }
    assert [c.applied for c in sim.calls()][:4] == [False, False, True, False]


def test_bad_bodies(client: httpx.Client) -> None:
    tok = token(client)
    post = functools.partial(client.post, UPDATE, params={"access_token": tok})
    assert errcode(post(content=b"not json")) == 47001
    assert errcode(post(json=["a"])) == 47001
    assert errcode(post(json={"card_id": "c", "code": "1"})) == 72031
    assert errcode(post(json={"card_id": "c", "code": 1, "reimburse_status": S.LOCK})) == 72031
    assert errcode(post(json={"card_id": "c", "code": "1", "reimburse_status": "INVOICE_REIMBURSE_DONE"})) == 72031


async def test_concurrent_same_move_is_applied_once(server: SimulatorServer, sim: WeChatSimulator) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5.0) as ac:
        r = await ac.get("/cgi-bin/token", params={"grant_type": "client_credential", "appid": DEMO_APPID, "secret": DEMO_SECRET})
        tok = r.json()["access_token"]
        body = {"card_id": "race", "code": "1", "reimburse_status": S.LOCK}
        answers = await asyncio.gather(*(ac.post(UPDATE, params={"access_token": tok}, json=body) for _ in range(20)))
    codes = sorted(a.json()["errcode"] for a in answers)
    assert codes == [0] + [72024] * 19
    assert sum(c.applied for c in sim.calls()) == 1


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------


def test_errcode_fault_times_after_and_appid(client: httpx.Client, sim: WeChatSimulator) -> None:
    tok = token(client)
    sim.add_fault("errcode", errcode=-1, times=2, after=1)
    sim.add_fault("errcode", errcode=45009, appid="wx-someone-else")  # never matches
    assert errcode(update(client, tok, S.LOCK)) == 0  # skipped (after=1)
    assert errcode(update(client, tok, S.INIT)) == -1
    assert errcode(update(client, tok, S.INIT)) == -1
    assert errcode(update(client, tok, S.INIT)) == 0  # used up
    assert sim.card_status(DEMO_APPID, "card-1", "100001") == S.INIT
    calls = sim.calls()
    assert [(c.errcode, c.fault, c.applied) for c in calls] == [
        (0, None, True),
        (-1, "errcode", False),
        (-1, "errcode", False),
        (0, None, True),
    ]
    rules = sim.faults()
    assert (rules[0].seen, rules[0].fired) == (3, 2)
    assert rules[1].seen == 0


def test_errcode_fault_until_cleared(client: httpx.Client, sim: WeChatSimulator) -> None:
    tok = token(client)
    sim.add_fault("errcode", errcode=72036, times=None)
    assert all(errcode(update(client, tok, S.LOCK)) == 72036 for _ in range(3))
    sim.clear_faults()
    assert errcode(update(client, tok, S.LOCK)) == 0


def test_http_status_fault(client: httpx.Client, sim: WeChatSimulator) -> None:
    tok = token(client)
    sim.add_fault("http_status", http_status=502)
    r = update(client, tok, S.LOCK)
    assert r.status_code == 502
    assert "502" in r.text and "errcode" not in r.text  # a gateway page, not a WeChat answer
    assert sim.card_status(DEMO_APPID, "card-1", "100001") is None
    assert sim.calls()[-1].http_status == 502


def test_latency_fault_and_global_latency(client: httpx.Client, sim: WeChatSimulator) -> None:
    tok = token(client)
    sim.add_fault("latency", latency_ms=150)
    t0 = time.perf_counter()
    assert errcode(update(client, tok, S.LOCK)) == 0  # continues normally
    assert time.perf_counter() - t0 >= 0.15
    sim.configure(latency_ms=100)
    t0 = time.perf_counter()
    assert errcode(update(client, tok, S.INIT)) == 0
    assert time.perf_counter() - t0 >= 0.1


def test_timeout_fault_with_apply_applies_then_never_answers(client: httpx.Client, sim: WeChatSimulator) -> None:
    tok = token(client)
    sim.add_fault("timeout", apply=True)
    t0 = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        update(client, tok, S.LOCK, timeout=0.3)
    assert time.perf_counter() - t0 < 2
    # Applied, although the client never learnt it: a resend must be harmless.
    assert sim.card_status(DEMO_APPID, "card-1", "100001") == S.LOCK
    assert errcode(update(client, tok, S.LOCK)) == 72024


def test_timeout_fault_without_apply(client: httpx.Client, sim: WeChatSimulator) -> None:
    tok = token(client)
    sim.add_fault("timeout")
    with pytest.raises(httpx.ReadTimeout):
        update(client, tok, S.LOCK, timeout=0.3)
    assert sim.card_status(DEMO_APPID, "card-1", "100001") is None
    # A short hold that the client outwaits: errcode -1, nothing applied.
    sim.add_fault("timeout", latency_ms=50)
    assert errcode(update(client, tok, S.LOCK)) == -1
    assert sim.card_status(DEMO_APPID, "card-1", "100001") is None


def test_reset_fault(client: httpx.Client, sim: WeChatSimulator) -> None:
    tok = token(client)
    sim.add_fault("reset")
    with pytest.raises(httpx.TransportError):
        update(client, tok, S.LOCK)
    assert sim.card_status(DEMO_APPID, "card-1", "100001") is None
    sim.add_fault("reset", apply=True)
    with pytest.raises(httpx.TransportError):
        update(client, tok, S.LOCK)
    assert sim.card_status(DEMO_APPID, "card-1", "100001") == S.LOCK
    assert [(c.fault, c.applied, c.http_status) for c in sim.calls()] == [("reset", False, None), ("reset", True, None)]
    assert errcode(update(client, tok, S.INIT)) == 0  # the server is fine afterwards


def test_errcode_fault_with_apply(client: httpx.Client, sim: WeChatSimulator) -> None:
    tok = token(client)
    sim.add_fault("errcode", errcode=-1, apply=True)
    assert errcode(update(client, tok, S.LOCK)) == -1
    assert sim.card_status(DEMO_APPID, "card-1", "100001") == S.LOCK
    assert sim.calls()[-1].applied


def test_token_endpoint_faults(client: httpx.Client, sim: WeChatSimulator) -> None:
    sim.add_fault("errcode", path="token", errcode=-1)
    assert get_token(client)["errcode"] == -1
    sim.add_fault("reset", path="/cgi-bin/token", apply=True)
    with pytest.raises(httpx.TransportError):
        get_token(client)
    # The token issued before the reset superseded nothing the client had; one more fetch works.
    assert "access_token" in get_token(client)
    assert [(r.fault, r.issued) for r in sim.token_calls()] == [("errcode", False), ("reset", True), (None, True)]
    # Faults on updatestatus do not touch token calls and vice versa.
    sim.add_fault("errcode", errcode=-1)
    assert "access_token" in get_token(client)


def test_bad_fault_rules_are_refused(sim: WeChatSimulator) -> None:
    with pytest.raises(ValueError, match="needs 'errcode'"):
        sim.add_fault("errcode")  # no errcode
    with pytest.raises(ValueError, match="bad fault rule"):
        sim.add_fault("explode")  # type: ignore[arg-type]  # a kind that does not exist, on purpose
    with pytest.raises(ValueError, match="unknown setting"):
        sim.configure(latency_msec=3)


# --------------------------------------------------------------------------
# Quotas
# --------------------------------------------------------------------------


def test_daily_quota(client: httpx.Client, sim: WeChatSimulator) -> None:
    tok = token(client)
    sim.configure(daily_quota=2)
    assert errcode(update(client, tok, S.LOCK)) == 0
    assert errcode(update(client, tok, S.LOCK)) == 72024  # refused calls count too
    assert errcode(update(client, tok, S.INIT)) == 45009
    assert errcode(update(client, tok, S.INIT)) == 45009
    sim.reset_daily_quota()
    assert errcode(update(client, tok, S.INIT)) == 0


def test_minute_quota(client: httpx.Client, sim: WeChatSimulator, clock: FakeClock) -> None:
    tok = token(client)
    sim.configure(minute_quota=1)
    clock.advance(60 - clock.now % 60)  # start of a minute
    assert errcode(update(client, tok, S.LOCK)) == 0
    assert errcode(update(client, tok, S.INIT)) == 45011
    clock.advance(60)
    assert errcode(update(client, tok, S.INIT)) == 0


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------


def test_records_carry_the_idempotency_key_and_never_the_token(
    client: httpx.Client, sim: WeChatSimulator, control: SimulatorControl
) -> None:
    tok = token(client)
    update(client, tok, S.LOCK, idem="evt-1:LOCK")
    update(client, tok, S.LOCK, idem="evt-1:LOCK")
    calls = sim.calls()
    assert [c.idempotency_key for c in calls] == ["evt-1:LOCK", "evt-1:LOCK"]
    assert [c.errcode for c in calls] == [0, 72024]
    assert calls[0].token_fp == token_fingerprint(tok) and calls[0].appid == DEMO_APPID
    assert calls[0].seq < calls[1].seq
    raw = httpx.get(control.base_url + "/_sim/calls").text + httpx.get(control.base_url + "/_sim/token_calls").text
    assert tok not in raw and DEMO_SECRET not in raw
    assert sim.token_calls()[0].token_fp == token_fingerprint(tok)
    assert control.calls(since=calls[0].seq) == [calls[1]]


# --------------------------------------------------------------------------
# Control API
# --------------------------------------------------------------------------


def test_control_api(client: httpx.Client, sim: WeChatSimulator, control: SimulatorControl) -> None:
    assert control.health()["status"] == "ok"
    assert control.configure(latency_ms=5)["latency_ms"] == 5
    tok = token(client)

    control.set_card(DEMO_APPID, "c9", "1", S.CLOSURE)
    assert control.card_status(DEMO_APPID, "c9", "1") == S.CLOSURE
    assert control.card_status(DEMO_APPID, "nope", "1") is None
    assert errcode(update(client, tok, S.LOCK, card_id="c9", code="1")) == 72024
    assert [c.card_id for c in control.cards()] == ["c9"]

    fid = control.add_fault("errcode", errcode=72036, times=None)
    assert [f.id for f in control.faults()] == [fid]
    assert errcode(update(client, tok, S.LOCK)) == 72036
    control.clear_faults()
    assert control.faults() == []
    ids = control.add_faults([{"kind": "errcode", "errcode": -1}, {"kind": "http_status", "http_status": 503}])
    assert len(ids) == 2 and control.remove_fault(ids[1])
    assert errcode(update(client, tok, S.LOCK)) == -1
    with pytest.raises(SimulatorError):
        control.add_fault("errcode")
    with pytest.raises(SimulatorError):
        control.configure(nonsense=1)
    with pytest.raises(SimulatorError):
        control.set_card(DEMO_APPID, "c9", "1", "INVOICE_REIMBURSE_DONE")

    control.configure(daily_quota=0)
    assert errcode(update(client, tok, S.LOCK)) == 45009
    control.configure(daily_quota=None)
    control.reset_quota()

    assert control.invalidate_tokens() >= 1
    assert errcode(update(client, tok, S.LOCK)) == 40001
    tok = token(client)
    assert control.expire_tokens(DEMO_APPID) >= 1
    assert errcode(update(client, tok, S.LOCK)) == 42001

    assert len(control.calls()) == len(sim.calls()) > 0
    assert control.token_calls() == sim.token_calls()
    control.clear_calls()
    assert control.calls() == [] and control.token_calls() == []
    assert control.last_seq() > 0  # sequence numbers survive clearing


def test_stop_does_not_wait_for_a_held_request() -> None:
    srv = SimulatorServer().start()
    srv.sim.add_fault("timeout")  # holds the answer for 30 s
    errors: list[BaseException] = []

    def call() -> None:
        try:
            httpx.post(srv.base_url + UPDATE, params={"access_token": "x"}, json={}, timeout=30)
        except httpx.TransportError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while not srv.sim.calls() and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    srv.stop()
    caller.join(5)
    assert time.perf_counter() - t0 < 1.0
    assert not srv.running and len(errors) == 1


def test_cli_serves_until_sigterm() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.simulator", "--port", "0", "--latency-ms", "1", "--account", "wxabc:s3cret"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:"), line
        base = line.removeprefix("listening on ")
        with SimulatorControl(base) as control:
            assert control.config()["latency_ms"] == 1
        r = httpx.get(base + "/cgi-bin/token", params={"grant_type": "client_credential", "appid": "wxabc", "secret": "s3cret"})
        assert "access_token" in r.json()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
