"""WeChatClient.update_status against httpx.MockTransport: wire format, error mapping, token retry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from structlog.testing import capture_logs

from adapters.settings import Settings
from adapters.tokens import StableTokenProvider
from adapters.wechat import UPDATESTATUS_PATH, UpdateResult, WeChatClient, new_http_client, redact_url
from domain.errors import (
    ConflictError,
    PermanentWeChatError,
    QuotaExhaustedError,
    TokenInvalidError,
    TransientWeChatError,
    UnknownResultError,
    WeChatError,
)
from domain.status import ReimburseStatus
from domain.wechat_errors import classify

APPID = "wx1234567890abcdef"
SECRET = "s3cr3t-app-secret-value"
BASE = "https://wechat.test"
CARD_ID = "pjZ8Yt7Um2jYxzneP8GomnxoVFWo"
CODE = "186921658591"
KEY = f"{CARD_ID}/{CODE}#3"

Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeWeChat:
    """Token endpoint plus updatestatus; ``answers`` are consumed by updatestatus calls in order."""

    answers: list[Answer] = field(default_factory=list)
    token_calls: int = 0
    update_calls: list[httpx.Request] = field(default_factory=list)
    token_delay_s: float = 0.0
    update_delays: list[float] = field(default_factory=list)

    @property
    def tokens_used(self) -> list[str]:
        return [r.url.params["access_token"] for r in self.update_calls]

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/cgi-bin/stable_token":
            self.token_calls += 1
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            return httpx.Response(200, json={"access_token": f"ACCESS-TOKEN-{self.token_calls}", "expires_in": 7200})
        assert request.url.path == UPDATESTATUS_PATH
        self.update_calls.append(request)
        if self.update_delays:
            await asyncio.sleep(self.update_delays.pop(0))
        answer = self.answers.pop(0) if self.answers else httpx.Response(200, json={"errcode": 0, "errmsg": "ok"})
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer


def make_client(fake: FakeWeChat) -> WeChatClient:
    transport = httpx.MockTransport(fake)
    http = httpx.AsyncClient(transport=transport)
    tokens = StableTokenProvider(http, appid=APPID, secret=SECRET, base_url=BASE)
    return WeChatClient(tokens, base_url=BASE, client=http, owns_client=True, owns_tokens=True)


async def update(client: WeChatClient, status: ReimburseStatus = ReimburseStatus.LOCK) -> UpdateResult:
    return await client.update_status(appid=APPID, card_id=CARD_ID, code=CODE, status=status, idempotency_key=KEY)


def errcode(code: int, errmsg: str = "some error") -> httpx.Response:
    return httpx.Response(200, json={"errcode": code, "errmsg": errmsg})


def assert_no_credentials(error: BaseException) -> None:
    for text in (str(error), repr(error), str(error.args)):
        assert "ACCESS-TOKEN" not in text
        assert SECRET not in text
    # Neither chained nor implicitly attached: the httpx exception's message carries the URL.
    assert error.__cause__ is None and error.__context__ is None


# --- the request --------------------------------------------------------------


async def test_update_status_sends_the_exact_body_header_and_token() -> None:
    fake = FakeWeChat()
    async with make_client(fake) as client:
        result = await update(client, ReimburseStatus.CLOSURE)
    (request,) = fake.update_calls
    assert request.method == "POST"
    assert request.url.path == UPDATESTATUS_PATH
    assert dict(request.url.params) == {"access_token": "ACCESS-TOKEN-1"}
    assert request.headers["Idempotency-Key"] == KEY
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "card_id": CARD_ID,
        "code": CODE,
        "reimburse_status": "INVOICE_REIMBURSE_CLOSURE",
    }
    assert result.errcode == 0 and result.errmsg == "ok"
    assert result.attempts == 1 and result.token_refreshed is False and result.latency_s >= 0


@pytest.mark.parametrize("body", [{}, {"errmsg": "ok"}, {"access_token": "x"}])
async def test_a_200_answer_without_errcode_is_not_a_success(body: dict) -> None:
    fake = FakeWeChat(answers=[httpx.Response(200, json=body)])
    async with make_client(fake) as client:
        with pytest.raises(UnknownResultError) as caught:
            await update(client)
    assert caught.value.http_status == 200 and caught.value.retriable
    assert len(fake.update_calls) == 1


async def test_the_token_is_cached_across_calls() -> None:
    fake = FakeWeChat()
    async with make_client(fake) as client:
        await asyncio.gather(*(update(client) for _ in range(20)))
    assert fake.token_calls == 1
    assert len(fake.update_calls) == 20


# --- errcodes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error_type", "retriable"),
    [
        (-1, TransientWeChatError, True),
        (45011, TransientWeChatError, True),
        (72036, TransientWeChatError, True),
        (45009, QuotaExhaustedError, True),
        (72023, ConflictError, False),
        (72024, ConflictError, False),
        (72039, ConflictError, False),
        *[(c, PermanentWeChatError, False) for c in (40013, 40078, 41001, 48001, 50001, 50002, 72015)],
        *[(c, PermanentWeChatError, False) for c in (40003, 40056, 40099, 72031)],
        (99999, PermanentWeChatError, False),  # unknown: recorded, never retried blindly
    ],
)
async def test_errcodes_map_to_their_error_class(code: int, error_type: type[WeChatError], retriable: bool) -> None:
    fake = FakeWeChat(answers=[errcode(code, "what WeChat said")])
    async with make_client(fake) as client:
        with pytest.raises(WeChatError) as caught:
            await update(client)
    error = caught.value
    assert type(error) is error_type and error.error_class == classify(code)
    assert error.retriable is retriable
    assert error.errcode == code and error.errmsg == "what WeChat said" and error.http_status == 200
    assert len(fake.update_calls) == 1  # no retry inside the client
    assert_no_credentials(error)


@pytest.mark.parametrize("code", [40001, 40014, 42001])
async def test_token_error_then_success_refreshes_once_and_retries_with_the_new_token(code: int) -> None:
    fake = FakeWeChat(answers=[errcode(code)])
    async with make_client(fake) as client:
        result = await update(client)
        assert client.tokens.refreshes == 2
    assert fake.token_calls == 2
    assert fake.tokens_used == ["ACCESS-TOKEN-1", "ACCESS-TOKEN-2"]
    assert result.attempts == 2 and result.token_refreshed is True


async def test_token_error_twice_raises_token_invalid_after_exactly_two_calls() -> None:
    fake = FakeWeChat(answers=[errcode(40001), errcode(42001), errcode(0)])
    async with make_client(fake) as client:
        with pytest.raises(TokenInvalidError) as caught:
            await update(client)
    assert caught.value.errcode == 42001 and caught.value.retriable
    assert len(fake.update_calls) == 2
    assert fake.token_calls == 2
    assert_no_credentials(caught.value)


@pytest.mark.parametrize(
    "second_delay_s",
    [0.01, 0.05],  # both 40001s before the refresh, or the second after it (must not drop the new token)
)
async def test_concurrent_token_errors_with_the_same_token_cause_one_refresh(second_delay_s: float) -> None:
    def stale_then_ok(request: httpx.Request) -> httpx.Response:
        return errcode(40001) if request.url.params["access_token"] == "ACCESS-TOKEN-1" else errcode(0, "ok")

    fake = FakeWeChat(answers=[stale_then_ok] * 4, token_delay_s=0.01, update_delays=[0.01, second_delay_s])
    async with make_client(fake) as client:
        await client.tokens.get(APPID)
        results = await asyncio.gather(update(client), update(client))
    assert fake.token_calls == 2  # the first token and ONE refresh
    assert all(r.attempts == 2 and r.token_refreshed for r in results)
    assert sorted(fake.tokens_used) == ["ACCESS-TOKEN-1", "ACCESS-TOKEN-1", "ACCESS-TOKEN-2", "ACCESS-TOKEN-2"]


async def test_a_late_token_error_with_an_old_token_keeps_the_newer_token() -> None:
    fake = FakeWeChat(answers=[errcode(40001)])
    async with make_client(fake) as client:
        old = await client.tokens.get(APPID)
        await update(client)  # 40001, refresh to ACCESS-TOKEN-2, ok
        await client.tokens.invalidate(APPID, old)  # another caller reports its stale token late
        await update(client)
    assert fake.token_calls == 2
    assert fake.tokens_used == ["ACCESS-TOKEN-1", "ACCESS-TOKEN-2", "ACCESS-TOKEN-2"]


# --- HTTP and transport failures ------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_http_5xx_after_the_request_was_written_may_have_been_applied(status: int) -> None:
    fake = FakeWeChat(answers=[httpx.Response(status, text="upstream error")])
    async with make_client(fake) as client:
        with pytest.raises(UnknownResultError) as caught:
            await update(client)
    assert caught.value.http_status == status and caught.value.errcode == -1 and caught.value.retriable


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(500, TransientWeChatError), (503, TransientWeChatError), (502, UnknownResultError), (504, UnknownResultError)],
)
async def test_http_5xx_before_the_request_was_written_is_not_applied_unless_a_gateway_gave_up(
    status: int, error_type: type[WeChatError]
) -> None:
    early = httpx.Response(status, text="busy", extensions={"request_written": False})
    fake = FakeWeChat(answers=[early])
    async with make_client(fake) as client:
        with pytest.raises(TransientWeChatError) as caught:
            await update(client)
    assert type(caught.value) is error_type and caught.value.http_status == status


async def test_408_and_429_are_transient_not_applied() -> None:
    fake = FakeWeChat(answers=[httpx.Response(408, text=""), httpx.Response(429, text="")])
    async with make_client(fake) as client:
        for _ in range(2):
            with pytest.raises(TransientWeChatError) as caught:
                await update(client)
            assert type(caught.value) is TransientWeChatError


async def test_non_json_2xx_is_transient_and_non_json_4xx_is_permanent() -> None:
    fake = FakeWeChat(answers=[httpx.Response(200, text="<html>busy</html>"), httpx.Response(404, text="nope")])
    async with make_client(fake) as client:
        with pytest.raises(TransientWeChatError):
            await update(client)
        with pytest.raises(PermanentWeChatError) as caught:
            await update(client)
    assert caught.value.http_status == 404


def raising(exc_type: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        # httpx's own messages carry the URL, and with it the access token.
        raise exc_type(f"{exc_type.__name__} for {request.url}", request=request)

    return answer


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
async def test_failures_before_sending_are_transient(exc_type: type[httpx.TransportError]) -> None:
    fake = FakeWeChat(answers=[raising(exc_type)])
    async with make_client(fake) as client:
        with pytest.raises(TransientWeChatError) as caught:
            await update(client)
    assert type(caught.value) is TransientWeChatError and caught.value.retriable
    assert exc_type.__name__ in str(caught.value)
    assert_no_credentials(caught.value)


@pytest.mark.parametrize("exc_type", [httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError, httpx.ReadError])
async def test_failures_after_sending_are_unknown_results(exc_type: type[httpx.TransportError]) -> None:
    fake = FakeWeChat(answers=[raising(exc_type)])
    async with make_client(fake) as client:
        with pytest.raises(UnknownResultError) as caught:
            await update(client)
    assert caught.value.retriable and isinstance(caught.value, TransientWeChatError)
    assert_no_credentials(caught.value)


async def test_no_log_line_carries_the_token_or_secret() -> None:
    fake = FakeWeChat(answers=[errcode(40001), raising(httpx.ReadTimeout)])
    async with make_client(fake) as client:
        with capture_logs() as logs, pytest.raises(UnknownResultError):
            await update(client)
    assert logs
    for entry in logs:
        assert "ACCESS-TOKEN" not in repr(entry) and SECRET not in repr(entry)


async def test_an_errmsg_echoing_the_token_is_scrubbed() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return errcode(40003, f"bad openid for {request.url.params['access_token']}")

    fake = FakeWeChat(answers=[echo])
    async with make_client(fake) as client:
        with pytest.raises(PermanentWeChatError) as caught:
            await update(client)
    assert_no_credentials(caught.value)


# --- construction -----------------------------------------------------------


async def test_from_settings_builds_a_working_client_and_closes_its_pool() -> None:
    fake = FakeWeChat()
    settings = Settings(wechat_base_url=BASE, wechat_appid=APPID, wechat_secret=SECRET)  # type: ignore[arg-type]  # pydantic makes the SecretStr
    client = WeChatClient.from_settings(settings, transport=httpx.MockTransport(fake))
    async with client:
        assert (await update(client)).errcode == 0
    assert client.http.is_closed
    assert isinstance(client.tokens, StableTokenProvider)


async def test_an_injected_client_is_left_open() -> None:
    fake = FakeWeChat()
    http = httpx.AsyncClient(transport=httpx.MockTransport(fake))
    tokens = StableTokenProvider(http, appid=APPID, secret=SECRET, base_url=BASE)
    client = WeChatClient(tokens, base_url=BASE, client=http)
    async with client:
        await update(client)
    assert not http.is_closed
    await http.aclose()


def test_redact_url_masks_credential_parameters() -> None:
    url = (
        "https://api.weixin.qq.com/cgi-bin/component/api_authorizer_token"
        "?component_access_token=CAT&appid=wx1&secret=SEC&access_token=AT#frag"
    )
    assert redact_url(url) == (
        "https://api.weixin.qq.com/cgi-bin/component/api_authorizer_token"
        "?component_access_token=***&appid=wx1&secret=***&access_token=***#frag"
    )
    assert redact_url(httpx.URL("https://x/y?access_token=AT")) == "https://x/y?access_token=***"
    assert redact_url("no credentials here") == "no credentials here"


async def test_the_service_http_client_keeps_no_cookies_from_answers() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"errcode": 0}, headers={"Set-Cookie": "session=abc; Path=/"})

    async with new_http_client(timeout_s=1.0, max_connections=2, transport=httpx.MockTransport(answer)) as http:
        await http.post(f"{BASE}{UPDATESTATUS_PATH}", content=b"{}")
        assert dict(http.cookies) == {}
        http.cookies = {"set": "by hand"}  # cookies set on purpose still go out
        await http.post(f"{BASE}{UPDATESTATUS_PATH}", content=b"{}")
        assert dict(http.cookies) == {"set": "by hand"}


class _ForwardProxy:
    """An HTTP forward proxy on loopback that answers for WeChat itself and
    records the absolute-form targets it was asked for (what a client sends
    to a proxy for an ``http://`` URL)."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                self.targets.append(target)
                length = next((int(x.split(":", 1)[1]) for x in lines if x.lower().startswith("content-length:")), 0)
                await reader.readexactly(length)
                token = b'{"access_token":"ACCESS-TOKEN","expires_in":7200}'
                body = token if "token" in target.split("?")[0] else b'{"errcode":0,"errmsg":"ok"}'
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_an_environment_proxy_carries_the_status_calls_as_well_as_the_token_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No such host: a call that skipped the proxy could not be answered at all.
    base = "http://api.weixin.invalid"
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxy = _ForwardProxy()
    async with proxy as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        settings = Settings(wechat_base_url=base, wechat_appid=APPID, wechat_secret=SECRET, wechat_timeout_s=2.0)  # type: ignore[arg-type]  # pydantic makes the SecretStr
        async with WeChatClient.from_settings(settings) as client:
            assert (await update(client)).errcode == 0
            assert (await update(client)).errcode == 0
    paths = [target.split("?")[0] for target in proxy.targets]
    assert paths[0].startswith(f"{base}/cgi-bin/") and "token" in paths[0]
    assert paths[1:] == [f"{base}{UPDATESTATUS_PATH}"] * 2


async def test_without_a_proxy_the_service_client_calls_its_own_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    http = new_http_client(timeout_s=1.0, max_connections=2)
    assert http.routes_directly(httpx.URL(f"{BASE}{UPDATESTATUS_PATH}"))  # type: ignore[attr-defined]  # the service's client class
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    proxied = new_http_client(timeout_s=1.0, max_connections=2)
    assert not proxied.routes_directly(httpx.URL(f"{BASE}{UPDATESTATUS_PATH}"))  # type: ignore[attr-defined]
    monkeypatch.setenv("NO_PROXY", "wechat.test")
    bypassed = new_http_client(timeout_s=1.0, max_connections=2)
    assert bypassed.routes_directly(httpx.URL(f"{BASE}{UPDATESTATUS_PATH}"))  # type: ignore[attr-defined]
    for client in (http, proxied, bypassed):
        await client.aclose()
