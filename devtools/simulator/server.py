"""The WeChat simulator's HTTP side: an aiohttp app, a background-thread
server for tests, and the ``python -m devtools wechat-sim`` command.

WeChat-like endpoints (JSON answers with errcode/errmsg, HTTP 200 unless a
fault says otherwise):

* ``GET  /cgi-bin/token``
* ``POST /cgi-bin/stable_token``
* ``POST /cgi-bin/component/api_component_token``
* ``POST /cgi-bin/component/api_authorizer_token?component_access_token=``
* ``POST /card/invoice/platform/updatestatus?access_token=``

Control API (never faulted, no authentication: loopback test tool only):

* ``GET /_sim/health``
* ``GET /_sim/calls?since=SEQ``, ``GET /_sim/token_calls?since=SEQ``, ``DELETE /_sim/calls``
* ``GET /_sim/cards``, ``PUT /_sim/cards`` ``{"appid","card_id","code","reimburse_status"}``,
  ``GET /_sim/cards/{appid}/{card_id}/{code}`` (404 when no call reached it)
* ``GET|POST|DELETE /_sim/faults`` (POST: one rule, a list, or ``{"rules": [...]}``),
  ``DELETE /_sim/faults/{id}``
* ``GET|POST /_sim/config``
* ``POST /_sim/quota/reset`` ``{"appid"?, "which"?: "daily"|"minute"|"both"}``
* ``POST /_sim/tokens/invalidate`` ``{"appid"?}``, ``POST /_sim/tokens/expire`` ``{"appid"?}``
* ``POST /_sim/reset`` ``{"tokens"?: bool}``
* Pushes (``devtools.simulator.pushes``): ``POST /_sim/pushes/config``
  ``{"events_url","component_url","token","encoding_aes_key","appid","component_appid","mode",
  "retries","answer_timeout_s"}``; ``GET /_sim/pushes`` (every attempt), ``DELETE /_sim/pushes``
* ``POST /_sim/reimburse`` ``{"appid","card_id","code","reimburse_status","wait"?}``: a
  reimburser's lock/unlock/close; applied under WeChat's rules, then pushed
* ``POST /_sim/clock/advance`` ``{"seconds","wait"?}``: simulated time; a verify ticket
  due (every 10 simulated minutes) is rotated and pushed. A background check does the
  same every second of real time.
* ``POST /_sim/authorizers/{appid}/unauthorize`` and ``.../authorize`` ``{"wait"?}``:
  revoke or grant, then push ``unauthorized`` / ``authorized``

The access log is off: request lines carry ``access_token`` in the query
string, and tokens must never reach a log.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from aiohttp import web

from devtools.simulator.pushes import PushConfig, Pusher
from devtools.simulator.state import (
    AUTHORIZER_TOKEN_PATH,
    COMPONENT_TOKEN_PATH,
    DEFAULT_ACCOUNTS,
    STABLE_TOKEN_PATH,
    TOKEN_PATH,
    UPDATESTATUS_PATH,
    FaultRule,
    Outcome,
    WeChatSimulator,
)

log = logging.getLogger("invoice_sm.simulator")

SIM_KEY: web.AppKey[WeChatSimulator] = web.AppKey("wechat_simulator", WeChatSimulator)
#: Handler tasks sleeping for a latency or timeout fault; cancelled on
#: shutdown so that stopping never waits for a 30 s hold.
SLEEPERS_KEY: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("wechat_simulator_sleepers", set)
PUSHER_KEY: web.AppKey[Pusher] = web.AppKey("wechat_simulator_pusher", Pusher)
ROTATION_KEY: web.AppKey[asyncio.Task[None]] = web.AppKey("wechat_simulator_rotation", asyncio.Task)
#: How often (real seconds) the simulator looks for a verify ticket due.
ROTATION_CHECK_S = 1.0

#: How long ``stop()`` lets in-flight requests finish (a "timeout" fault may
#: be holding one for 30 s) before they are cancelled.
SHUTDOWN_TIMEOUT_S = 1.0

_encoder = msgspec.json.Encoder()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(data), status=status, content_type="application/json")


def _decode(raw: bytes) -> Any:
    """The JSON body, or None when it is not JSON (the simulator answers 47001)."""
    try:
        return msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        return None


# --------------------------------------------------------------------------
# WeChat endpoints
# --------------------------------------------------------------------------


async def _run(
    request: web.Request,
    appid: str | None,
    decide: Callable[[FaultRule | None], Outcome],
    extra_latency_s: float = 0.0,
) -> web.StreamResponse:
    """Plan faults, sleep the latency, let the simulator decide, deliver."""
    sim = request.app[SIM_KEY]
    plan = sim.plan_faults(request.path, appid)
    delay = extra_latency_s + plan.latency_s
    if delay > 0:
        # If the client gives up meanwhile, handler cancellation ends this
        # task here and the call is never processed (nor recorded).
        await _sleep(request, delay)
    outcome = decide(plan.action)
    if plan.action is not None:
        log.debug("fault_injected kind=%s action=%s path=%s", plan.action.kind, plan.action.id, request.path)
    return await _deliver(request, outcome)


async def _deliver(request: web.Request, outcome: Outcome) -> web.StreamResponse:
    if outcome.delay_s > 0:
        await _sleep(request, outcome.delay_s)
    if outcome.reset:
        _reset_connection(request)
        # The transport is gone: aiohttp sees the connection lost and (with
        # handler_cancellation) cancels this task; it writes nothing more.
        raise asyncio.CancelledError
    if outcome.text is not None:
        return web.Response(text=outcome.text, status=outcome.http_status, content_type="text/html")
    return _json(outcome.body, outcome.http_status)


async def _sleep(request: web.Request, seconds: float) -> None:
    sleepers = request.app[SLEEPERS_KEY]
    task = asyncio.current_task()
    assert task is not None
    sleepers.add(task)
    try:
        await asyncio.sleep(seconds)
    finally:
        sleepers.discard(task)


async def _cancel_sleepers(app: web.Application) -> None:
    for task in list(app[SLEEPERS_KEY]):  # type: ignore[index]  # aiohttp's AppKey typing is invariant
        task.cancel()


def _reset_connection(request: web.Request) -> None:
    """Abort with a TCP RST (SO_LINGER 0), as a middlebox dropping the
    connection would; the client sees a reset, not a clean close."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:  # noqa: SIM105  # kept explicit beside the comment below
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:  # pragma: no cover - already closed
            pass
    transport.abort()


async def token(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    q = request.query
    appid = q.get("appid")
    return await _run(request, appid, lambda fault: sim.get_token(q.get("grant_type"), appid, q.get("secret"), fault=fault))


async def stable_token(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    payload = _decode(await request.read())
    appid = payload.get("appid") if isinstance(payload, dict) else None
    return await _run(request, appid, lambda fault: sim.get_stable_token(payload, fault=fault))


async def component_token(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    payload = _decode(await request.read())
    appid = payload.get("component_appid") if isinstance(payload, dict) else None
    return await _run(request, appid, lambda fault: sim.get_component_token(payload, fault=fault))


async def authorizer_token(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    payload = _decode(await request.read())
    appid = payload.get("authorizer_appid") if isinstance(payload, dict) else None
    component_token_ = request.query.get("component_access_token")
    return await _run(request, appid, lambda fault: sim.get_authorizer_token(component_token_, payload, fault=fault))


#: Calls still processed after their client went away (``finish_abandoned``).
_ABANDONED: set[asyncio.Future[web.StreamResponse]] = set()


async def updatestatus(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIM_KEY]
    access_token = request.query.get("access_token")
    raw = await request.read()
    idem = request.headers.get("Idempotency-Key")
    card = sim.call_arrived(raw, idem)

    async def processed() -> web.StreamResponse:
        try:
            return await _run(
                request,
                sim.appid_for_token(access_token),
                lambda fault: sim.update_status(access_token, raw, idem, fault=fault),
                extra_latency_s=sim.latency_s,
            )
        finally:
            # Answered, failed, or abandoned by the client (handler cancelled).
            sim.call_ended(card, idem)

    if not sim.finish_abandoned:
        return await processed()
    # Like a real server: a client that goes away (killed mid-call) does not
    # stop the call from being applied; the handler's cancellation stops at the shield.
    work = asyncio.ensure_future(processed())
    _ABANDONED.add(work)
    work.add_done_callback(_ABANDONED.discard)
    return await asyncio.shield(work)


# --------------------------------------------------------------------------
# Control API
# --------------------------------------------------------------------------


async def _body(request: web.Request, *, allow_list: bool = False) -> Any:
    """The control request's JSON object (or list, when allowed); {} when empty."""
    raw = await request.read()
    if not raw:
        return {}
    data = _decode(raw)
    if not (isinstance(data, dict) or (allow_list and isinstance(data, list))):
        raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}', content_type="application/json")
    return data


def _bad(exc: Exception) -> web.Response:
    return _json({"error": str(exc)}, status=400)


def _since(request: web.Request) -> int | None:
    raw = request.query.get("since")
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "since must be an integer"}', content_type="application/json")  # noqa: B904  # the HTTP error replaces the parse error on purpose


async def sim_health(request: web.Request) -> web.Response:
    return _json({"status": "ok", "last_seq": request.app[SIM_KEY].last_seq})


async def sim_calls(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    return _json({"calls": sim.calls(_since(request)), "last_seq": sim.last_seq})


async def sim_token_calls(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    return _json({"token_calls": sim.token_calls(_since(request)), "last_seq": sim.last_seq})


async def sim_clear_calls(request: web.Request) -> web.Response:
    request.app[SIM_KEY].clear_calls()
    return _json({"ok": True})


async def sim_cards(request: web.Request) -> web.Response:
    return _json({"cards": request.app[SIM_KEY].cards()})


async def sim_set_card(request: web.Request) -> web.Response:
    body = await _body(request)
    try:
        request.app[SIM_KEY].set_card(str(body["appid"]), str(body["card_id"]), str(body["code"]), str(body["reimburse_status"]))
    except (KeyError, TypeError, ValueError) as exc:
        return _bad(exc if not isinstance(exc, KeyError) else ValueError(f"missing {exc}"))
    return _json({"ok": True})


async def sim_card(request: web.Request) -> web.Response:
    m = request.match_info
    status = request.app[SIM_KEY].card_status(m["appid"], m["card_id"], m["code"])
    if status is None:
        return _json({"error": "card not found"}, status=404)
    return _json({"appid": m["appid"], "card_id": m["card_id"], "code": m["code"], "reimburse_status": status.value})


async def sim_faults(request: web.Request) -> web.Response:
    return _json({"faults": request.app[SIM_KEY].faults()})


async def sim_add_faults(request: web.Request) -> web.Response:
    body = await _body(request, allow_list=True)
    rules = body.get("rules", [body]) if isinstance(body, dict) else body
    try:
        ids = request.app[SIM_KEY].add_faults(rules)
    except (ValueError, TypeError) as exc:
        return _bad(exc)
    return _json({"ids": ids})


async def sim_clear_faults(request: web.Request) -> web.Response:
    request.app[SIM_KEY].clear_faults()
    return _json({"ok": True})


async def sim_remove_fault(request: web.Request) -> web.Response:
    try:
        fault_id = int(request.match_info["id"])
    except ValueError:
        return _bad(ValueError("fault id must be an integer"))
    removed = request.app[SIM_KEY].remove_fault(fault_id)
    return _json({"removed": removed}, status=200 if removed else 404)


async def sim_config(request: web.Request) -> web.Response:
    return _json(request.app[SIM_KEY].config())


async def sim_configure(request: web.Request) -> web.Response:
    body = await _body(request)
    try:
        return _json(request.app[SIM_KEY].configure(**body))
    except (ValueError, TypeError) as exc:
        return _bad(exc)


async def sim_quota_reset(request: web.Request) -> web.Response:
    body = await _body(request)
    sim = request.app[SIM_KEY]
    appid, which = body.get("appid"), body.get("which", "both")
    if which == "daily":
        sim.reset_daily_quota(appid)
    elif which == "minute":
        sim.reset_minute_quota(appid)
    elif which == "both":
        sim.reset_quota(appid)
    else:
        return _bad(ValueError("which must be daily, minute or both"))
    return _json({"ok": True})


async def sim_invalidate(request: web.Request) -> web.Response:
    body = await _body(request)
    return _json({"invalidated": request.app[SIM_KEY].invalidate_tokens(body.get("appid"))})


async def sim_expire(request: web.Request) -> web.Response:
    body = await _body(request)
    return _json({"expired": request.app[SIM_KEY].expire_tokens(body.get("appid"))})


async def sim_reset(request: web.Request) -> web.Response:
    body = await _body(request)
    request.app[SIM_KEY].reset(tokens=bool(body.get("tokens", False)))
    return _json({"ok": True})


async def sim_push_config(request: web.Request) -> web.Response:
    body = await _body(request)
    try:
        request.app[PUSHER_KEY].configure(msgspec.convert(body, PushConfig))
    except (msgspec.ValidationError, ValueError) as exc:
        return _bad(exc)
    return _json({"ok": True})


async def sim_pushes(request: web.Request) -> web.Response:
    return _json({"pushes": request.app[PUSHER_KEY].attempts()})


async def sim_clear_pushes(request: web.Request) -> web.Response:
    request.app[PUSHER_KEY].clear()
    return _json({"ok": True})


async def _pushed(request: web.Request, push_ids: list[int], wait: bool, **extra: Any) -> web.Response:
    pusher = request.app[PUSHER_KEY]
    delivered = [await pusher.wait(i) for i in push_ids] if wait else None
    return _json({"push_ids": push_ids, "delivered": delivered, **extra})


async def sim_reimburse(request: web.Request) -> web.Response:
    body = await _body(request)
    sim, pusher = request.app[SIM_KEY], request.app[PUSHER_KEY]
    try:
        appid, card_id, code = str(body["appid"]), str(body["card_id"]), str(body["code"])
        status = str(body["reimburse_status"])
        answer = sim.reimburse(appid, card_id, code, status)
    except (KeyError, TypeError, ValueError) as exc:
        return _bad(exc if not isinstance(exc, KeyError) else ValueError(f"missing {exc}"))
    if answer["errcode"] != 0:
        return _json(answer)  # refused as WeChat refuses it: nothing changed, nothing pushed
    try:
        push_id = pusher.status_push(card_id, code, status)
    except LookupError as exc:
        return _json({**answer, "push_ids": [], "warning": str(exc)})
    return await _pushed(request, [push_id], bool(body.get("wait")), **answer)


def _rotate_due(app: web.Application) -> list[int]:
    sim, pusher = app[SIM_KEY], app[PUSHER_KEY]
    ids = []
    for component_appid in sim.tickets_due():
        ticket = sim.rotate_ticket(component_appid)
        if pusher.config is not None and pusher.config.component_url:
            ids.append(pusher.component_push("component_verify_ticket", component_appid, ComponentVerifyTicket=ticket))
    return ids


async def sim_advance_clock(request: web.Request) -> web.Response:
    body = await _body(request)
    try:
        now = request.app[SIM_KEY].advance_clock(float(body["seconds"]))
    except (KeyError, TypeError, ValueError) as exc:
        return _bad(exc if not isinstance(exc, KeyError) else ValueError(f"missing {exc}"))
    return await _pushed(request, _rotate_due(request.app), bool(body.get("wait")), now=now)


async def _authorization(request: web.Request, revoke: bool) -> web.Response:
    body = await _body(request)
    sim, pusher = request.app[SIM_KEY], request.app[PUSHER_KEY]
    appid = request.match_info["appid"]
    try:
        component_appid = sim.unauthorize(appid) if revoke else sim.authorize(appid)
    except KeyError:
        return _json({"error": f"unknown authorizer {appid}"}, status=404)
    info_type = "unauthorized" if revoke else "authorized"
    extra: dict[str, str | int] = {"AuthorizerAppid": appid}
    if not revoke:
        extra.update(
            AuthorizationCode=f"queryauthcode@@@{appid}",
            AuthorizationCodeExpiredTime=int(sim.now()) + 3600,
            PreAuthCode=f"preauthcode@@@{appid}",
        )
    try:
        push_id = pusher.component_push(info_type, component_appid, **extra)
    except LookupError as exc:
        return _json({"ok": True, "push_ids": [], "warning": str(exc)})
    return await _pushed(request, [push_id], bool(body.get("wait")), ok=True)


async def sim_unauthorize(request: web.Request) -> web.Response:
    return await _authorization(request, revoke=True)


async def sim_authorize(request: web.Request) -> web.Response:
    return await _authorization(request, revoke=False)


async def _rotation_loop(app: web.Application) -> None:
    while True:
        await asyncio.sleep(ROTATION_CHECK_S)
        _rotate_due(app)


async def _start_rotation(app: web.Application) -> None:
    app[ROTATION_KEY] = asyncio.get_running_loop().create_task(_rotation_loop(app))


async def _stop_rotation(app: web.Application) -> None:
    app[ROTATION_KEY].cancel()
    await asyncio.gather(app[ROTATION_KEY], return_exceptions=True)
    app[PUSHER_KEY].cancel_all()


def build_app(sim: WeChatSimulator) -> web.Application:
    """The aiohttp application serving ``sim``."""
    app = web.Application(client_max_size=1024 * 1024)
    app[SIM_KEY] = sim
    app[SLEEPERS_KEY] = set()
    app[PUSHER_KEY] = Pusher(sim.now)
    app.on_shutdown.append(_cancel_sleepers)
    app.on_startup.append(_start_rotation)
    app.on_shutdown.append(_stop_rotation)
    app.router.add_get(TOKEN_PATH, token)
    app.router.add_post(STABLE_TOKEN_PATH, stable_token)
    app.router.add_post(COMPONENT_TOKEN_PATH, component_token)
    app.router.add_post(AUTHORIZER_TOKEN_PATH, authorizer_token)
    app.router.add_post(UPDATESTATUS_PATH, updatestatus)
    r = app.router
    r.add_get("/_sim/health", sim_health)
    r.add_get("/_sim/calls", sim_calls)
    r.add_delete("/_sim/calls", sim_clear_calls)
    r.add_get("/_sim/token_calls", sim_token_calls)
    r.add_get("/_sim/cards", sim_cards)
    r.add_put("/_sim/cards", sim_set_card)
    r.add_get("/_sim/cards/{appid}/{card_id}/{code}", sim_card)
    r.add_get("/_sim/faults", sim_faults)
    r.add_post("/_sim/faults", sim_add_faults)
    r.add_delete("/_sim/faults", sim_clear_faults)
    r.add_delete("/_sim/faults/{id}", sim_remove_fault)
    r.add_get("/_sim/config", sim_config)
    r.add_post("/_sim/config", sim_configure)
    r.add_post("/_sim/quota/reset", sim_quota_reset)
    r.add_post("/_sim/tokens/invalidate", sim_invalidate)
    r.add_post("/_sim/tokens/expire", sim_expire)
    r.add_post("/_sim/reset", sim_reset)
    r.add_post("/_sim/pushes/config", sim_push_config)
    r.add_get("/_sim/pushes", sim_pushes)
    r.add_delete("/_sim/pushes", sim_clear_pushes)
    r.add_post("/_sim/reimburse", sim_reimburse)
    r.add_post("/_sim/clock/advance", sim_advance_clock)
    r.add_post("/_sim/authorizers/{appid}/unauthorize", sim_unauthorize)
    r.add_post("/_sim/authorizers/{appid}/authorize", sim_authorize)
    return app


async def _start(sim: WeChatSimulator, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(
        build_app(sim),
        access_log=None,  # tokens are in query strings
        # A client that gives up (timeout fault) cancels its handler, so a
        # 30 s hold never outlives the connection.
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1])
    return runner, bound_port


# --------------------------------------------------------------------------
# Background-thread server (tests, benchmarks, demo)
# --------------------------------------------------------------------------


class SimulatorServer:
    """Serves a ``WeChatSimulator`` on ``host:port`` (0 = a free port) from a
    background thread with its own event loop, so it keeps answering while the
    caller blocks (on a subprocess, a sync client, another loop).

    ``with SimulatorServer() as srv: httpx.get(srv.base_url + "/_sim/health")``
    """

    def __init__(self, sim: WeChatSimulator | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim: WeChatSimulator = sim if sim is not None else WeChatSimulator()
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("simulator server not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> SimulatorServer:
        if self.running:
            return self
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="wechat-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("simulator server did not start in time")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError(f"simulator server failed to start: {self._error!r}") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            try:  # noqa: SIM105  # kept explicit
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # loop already closed
                pass
        thread.join(timeout)
        self._thread = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported through start()  # noqa: BLE001  # a push attempt must never kill the pusher
            self._error = exc
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        runner, self._port = await _start(self.sim, self.host, self._requested_port)
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await runner.cleanup()


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


async def serve(
    host: str = "127.0.0.1",
    port: int = 8088,
    sim: WeChatSimulator | None = None,
    *,
    stop: asyncio.Event | None = None,
    out: Callable[[str], None] | None = None,
) -> None:
    """Serve until ``stop`` is set (or the task is cancelled). Prints
    ``listening on http://HOST:PORT`` (the real port when ``port`` is 0)."""
    sim = sim if sim is not None else WeChatSimulator()
    stop = stop if stop is not None else asyncio.Event()
    runner, bound = await _start(sim, host, port)
    try:
        (out or _print)(f"listening on http://{host}:{bound}")
        await stop.wait()
    finally:
        await runner.cleanup()


def _print(line: str) -> None:
    print(line, flush=True)


def _account(value: str) -> tuple[str, str]:
    appid, sep, secret = value.partition(":")
    if not sep or not appid or not secret:
        raise argparse.ArgumentTypeError("expected APPID:SECRET")
    return appid, secret


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m devtools wechat-sim",
        description="WeChat simulator: tokens and card/invoice/platform/updatestatus on loopback, "
        "with a control API under /_sim/.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8088, help="0 picks a free port")
    p.add_argument("--latency-ms", type=int, default=0, help="added to every updatestatus call")
    p.add_argument(
        "--account",
        type=_account,
        action="append",
        default=[],
        metavar="APPID:SECRET",
        help="an account (repeatable), added to the demo accounts",
    )
    p.add_argument("--no-demo-accounts", action="store_true", help="only the --account accounts, no component")
    p.add_argument("--daily-quota", type=int, default=None)
    p.add_argument("--minute-quota", type=int, default=None)
    p.add_argument("--refuse-lock-to-cancel", action="store_true")
    p.add_argument("--token-ttl-s", type=float, default=7200.0)
    p.add_argument("--token-grace-s", type=float, default=300.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m devtools wechat-sim`` (and ``python -m devtools.simulator``). Runs until
    SIGTERM/SIGINT, then shuts down cleanly and returns 0."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    accounts = {} if args.no_demo_accounts else dict(DEFAULT_ACCOUNTS)
    accounts.update(dict(args.account))
    sim = WeChatSimulator(
        accounts,
        {} if args.no_demo_accounts else None,
        {} if args.no_demo_accounts else None,
        latency_ms=args.latency_ms,
        daily_quota=args.daily_quota,
        minute_quota=args.minute_quota,
        refuse_lock_to_cancel=args.refuse_lock_to_cancel,
        token_ttl_s=args.token_ttl_s,
        token_grace_s=args.token_grace_s,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, sim, stop=stop)

    try:
        asyncio.run(run())
    except OSError as exc:  # e.g. port in use
        print(f"simulator: {exc}", file=sys.stderr)
        return 1
    print("simulator stopped", file=sys.stderr)
    return 0
