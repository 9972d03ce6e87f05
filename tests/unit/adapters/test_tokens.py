"""Token providers: single flight, refresh ahead, compare-and-expire, each mode's wire format."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from adapters.settings import Settings
from adapters.tokens import (
    TOKEN_APPID_ENV,
    AccessToken,
    ClassicTokenProvider,
    ComponentTokenProvider,
    ExternalTokenProvider,
    StableTokenProvider,
    build_token_provider,
)
from domain.errors import (
    ConfigurationError,
    CredentialError,
    QuotaExhaustedError,
    TransientWeChatError,
    WeChatError,
)

APPID = "wx1234567890abcdef"
SECRET = "s3cr3t-app-secret-value"
BASE = "https://wechat.test"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]


@dataclass
class TokenServer:
    """A fake token endpoint: hands out tok-1, tok-2, ... and records every request."""

    expires_in: int = 7200
    delay_s: float = 0.0
    requests: list[httpx.Request] = field(default_factory=list)
    answers: list[httpx.Response | Exception] = field(default_factory=list)
    issued: int = 0
    same_token: bool = False  # stable_token without force: answer the current token again

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        body = json.loads(request.content) if request.content else {}
        if not (self.same_token and self.issued and not body.get("force_refresh")):
            self.issued += 1
        return httpx.Response(200, json={"access_token": f"tok-{self.issued}", "expires_in": self.expires_in})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))


def stable(server: TokenServer, clock: FakeClock | None = None, **kwargs: Any) -> StableTokenProvider:
    return StableTokenProvider(
        server.client(),
        appid=APPID,
        secret=SecretStr(SECRET),
        base_url=BASE,
        clock=clock or FakeClock(),
        **kwargs,
    )


def assert_no_secret(error: BaseException, *secrets: str) -> None:
    for text in (str(error), repr(error), str(error.args)):
        for secret in (SECRET, *secrets):
            assert secret not in text
    assert error.__cause__ is None and error.__context__ is None


# --- AccessToken -----------------------------------------------------------


def test_access_token_repr_and_str_hide_the_value() -> None:
    token = AccessToken(value="very-secret-token", expires_at=1.0, appid=APPID)
    assert "very-secret-token" not in repr(token)
    assert "very-secret-token" not in str(token)
    assert APPID in repr(token)


# --- single flight and refresh ahead ------------------------------------


async def test_fifty_concurrent_gets_on_a_cold_cache_make_one_token_call() -> None:
    server = TokenServer(delay_s=0.01)
    provider = stable(server)
    tokens = await asyncio.gather(*(provider.get(APPID) for _ in range(50)))
    assert len(server.requests) == 1
    assert {t.value for t in tokens} == {"tok-1"}
    assert provider.refreshes == 1


async def test_callers_queued_behind_a_failed_fetch_share_its_error() -> None:
    server = TokenServer(delay_s=0.01, answers=[httpx.Response(503)])
    provider = stable(server)
    results = await asyncio.gather(*(provider.get(APPID) for _ in range(10)), return_exceptions=True)
    assert len(server.requests) == 1
    assert all(isinstance(r, TransientWeChatError) and r.http_status == 503 for r in results)
    assert (await provider.get(APPID)).value == "tok-1"  # a later caller tries again


async def test_token_is_cached_until_the_refresh_margin_then_refreshed_ahead_of_expiry() -> None:
    clock = FakeClock()
    server = TokenServer(expires_in=7200)
    provider = stable(server, clock, refresh_margin_s=300)
    first = await provider.get(APPID)
    assert first.expires_at == clock.now + 7200
    clock.advance(7200 - 300 - 1)
    assert (await provider.get(APPID)).value == "tok-1"
    assert len(server.requests) == 1
    clock.advance(2)  # inside the margin, the old token still valid
    assert (await provider.get(APPID)).value == "tok-2"
    assert len(server.requests) == 2


async def test_short_lived_token_is_refreshed_at_half_its_lifetime() -> None:
    clock = FakeClock()
    server = TokenServer(expires_in=100)
    provider = stable(server, clock, refresh_margin_s=300)
    await provider.get(APPID)
    clock.advance(49)
    assert (await provider.get(APPID)).value == "tok-1"
    clock.advance(2)
    assert (await provider.get(APPID)).value == "tok-2"


async def test_failed_refresh_ahead_serves_the_still_valid_token_and_retries_later() -> None:
    clock = FakeClock()
    server = TokenServer(expires_in=7200)
    provider = stable(server, clock)
    await provider.get(APPID)
    clock.advance(7000)  # inside the margin
    server.answers = [httpx.Response(500), httpx.Response(500)]
    with capture_logs() as logs:
        assert (await provider.get(APPID)).value == "tok-1"
    assert any(entry["event"] == "wechat_token_refresh_failed" for entry in logs)
    assert (await provider.get(APPID)).value == "tok-1"
    assert len(server.requests) == 2  # no new attempt inside REFRESH_RETRY_S
    clock.advance(11)
    assert (await provider.get(APPID)).value == "tok-1"  # second failure, still valid
    assert len(server.requests) == 3
    clock.advance(200)  # now expired: the error surfaces
    server.answers = [httpx.Response(500)]
    with pytest.raises(TransientWeChatError):
        await provider.get(APPID)


async def test_on_refresh_hook_is_called_with_appid_and_mode() -> None:
    seen: list[tuple[str, str]] = []
    server = TokenServer()
    provider = stable(server, on_refresh=lambda appid, mode: seen.append((appid, mode)))
    await provider.get(APPID)
    assert seen == [(APPID, "stable")]


async def test_on_refresh_failure_hook_is_called_once_per_failed_fetch_not_per_caller() -> None:
    failed: list[tuple[str, str]] = []
    server = TokenServer(delay_s=0.01, answers=[httpx.Response(503)])
    provider = stable(server)
    provider.on_refresh_failure = lambda appid, mode: failed.append((appid, mode))
    results = await asyncio.gather(*(provider.get(APPID) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, TransientWeChatError) for r in results)
    assert failed == [(APPID, "stable")]
    await provider.get(APPID)
    assert failed == [(APPID, "stable")]  # a success is not a failure


# --- compare-and-expire ---------------------------------------------------


async def test_invalidate_drops_the_token_that_was_used() -> None:
    server = TokenServer()
    provider = stable(server)
    old = await provider.get(APPID)
    await provider.invalidate(APPID, old)
    new = await provider.get(APPID)
    assert new.value == "tok-2"


async def test_invalidate_with_an_old_token_keeps_the_newer_one() -> None:
    server = TokenServer()
    provider = stable(server)
    old = await provider.get(APPID)
    await provider.invalidate(APPID, old)
    new = await provider.get(APPID)
    await provider.invalidate(APPID, old)  # a slow caller reporting its 40001 late
    assert (await provider.get(APPID)).value == new.value
    assert len(server.requests) == 2


async def test_concurrent_invalidations_of_the_same_token_cause_one_refresh() -> None:
    server = TokenServer(delay_s=0.01)
    provider = stable(server)
    old = await provider.get(APPID)

    async def token_error_then_get() -> AccessToken:
        await provider.invalidate(APPID, old)
        return await provider.get(APPID)

    tokens = await asyncio.gather(*(token_error_then_get() for _ in range(10)))
    assert {t.value for t in tokens} == {"tok-2"}
    assert len(server.requests) == 2
    assert provider.refreshes == 2


# --- stable ------------------------------------------------------------------


async def test_stable_token_request_is_exact() -> None:
    server = TokenServer()
    provider = stable(server)
    await provider.get(APPID)
    request = server.requests[0]
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/cgi-bin/stable_token"
    assert json.loads(request.content) == {
        "grant_type": "client_credential",
        "appid": APPID,
        "secret": SECRET,
        "force_refresh": False,
    }


async def test_stable_after_invalidation_asks_without_force_first() -> None:
    server = TokenServer()  # a new token on every call: the old one had expired
    provider = stable(server)
    old = await provider.get(APPID)
    await provider.invalidate(APPID, old)
    assert (await provider.get(APPID)).value == "tok-2"
    assert [json.loads(r.content)["force_refresh"] for r in server.requests] == [False, False]


async def test_stable_forces_a_refresh_only_when_the_refused_token_comes_back() -> None:
    clock = FakeClock()
    server = TokenServer(same_token=True)
    provider = stable(server, clock)
    old = await provider.get(APPID)
    await provider.invalidate(APPID, old)
    assert (await provider.get(APPID)).value == "tok-2"
    assert [json.loads(r.content)["force_refresh"] for r in server.requests] == [False, False, True]
    # Refused again within 30 s: no second forced refresh, the caller's retry fails instead.
    await provider.invalidate(APPID, await provider.get(APPID))
    assert (await provider.get(APPID)).value == "tok-2"
    assert [json.loads(r.content)["force_refresh"] for r in server.requests][3:] == [False]


def token_error(errcode: int, errmsg: str = "bad") -> httpx.Response:
    return httpx.Response(200, json={"errcode": errcode, "errmsg": errmsg})


@pytest.mark.parametrize("errcode", [40001, 40013, 40125, 40164, 61023, 41004])
async def test_token_endpoint_refusal_is_a_credential_error_naming_appid_not_secret(errcode: int) -> None:
    server = TokenServer(answers=[token_error(errcode, f"invalid appsecret {SECRET}")])
    provider = stable(server)
    with pytest.raises(CredentialError) as caught:
        await provider.get(APPID)
    error = caught.value
    assert error.errcode == errcode and not error.retriable
    assert APPID in str(error) and str(errcode) in str(error)
    assert_no_secret(error)


@pytest.mark.parametrize(
    ("answer", "error_type", "errcode"),
    [
        (token_error(-1, "system busy"), TransientWeChatError, -1),
        (token_error(45011), TransientWeChatError, 45011),
        (token_error(45009), QuotaExhaustedError, 45009),
        (httpx.Response(502, text="bad gateway"), TransientWeChatError, -1),
        (httpx.Response(200, text="<html>"), TransientWeChatError, -1),
        (httpx.Response(200, json={"expires_in": 7200}), TransientWeChatError, -1),
        (httpx.Response(403, text="forbidden"), CredentialError, -1),
    ],
)
async def test_token_endpoint_answers_map_to_errors(answer: httpx.Response, error_type: type[WeChatError], errcode: int) -> None:
    provider = stable(TokenServer(answers=[answer]))
    with pytest.raises(error_type) as caught:
        await provider.get(APPID)
    assert caught.value.errcode == errcode
    assert_no_secret(caught.value)


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.ReadError])
async def test_classic_token_transport_errors_are_transient_and_never_carry_the_secret(
    exc_type: type[httpx.TransportError],
) -> None:
    async def failing(request: httpx.Request) -> httpx.Response:
        raise exc_type(f"failed for {request.url}", request=request)

    with capture_logs():
        provider = ClassicTokenProvider(
            httpx.AsyncClient(transport=httpx.MockTransport(failing)), appid=APPID, secret=SECRET, base_url=BASE
        )
    with pytest.raises(TransientWeChatError) as caught:
        await provider.get(APPID)
    assert caught.value.retriable
    assert_no_secret(caught.value)


# --- classic ----------------------------------------------------------------


async def test_classic_mode_warns_at_construction_and_uses_get_token() -> None:
    server = TokenServer()
    with capture_logs() as logs:
        provider = ClassicTokenProvider(server.client(), appid=APPID, secret=SECRET, base_url=BASE)
    assert [entry["log_level"] for entry in logs if entry["event"] == "wechat_classic_token_mode"] == ["warning"]
    token = await provider.get(APPID)
    request = server.requests[0]
    assert request.method == "GET"
    assert request.url.path == "/cgi-bin/token"
    assert dict(request.url.params) == {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
    assert token.value == "tok-1" and token.appid == APPID


async def test_single_account_provider_refuses_another_appid() -> None:
    server = TokenServer()
    provider = stable(server)
    with pytest.raises(CredentialError) as caught:
        await provider.get("wxother")
    assert "wxother" in str(caught.value)
    assert server.requests == []


# --- component ----------------------------------------------------------------


COMPONENT_APPID = "wxcomponent0000001"
COMPONENT_SECRET = "component-secret-value"
TICKET = "ticket@@@verify-ticket-value"


@dataclass
class ComponentServer:
    requests: list[httpx.Request] = field(default_factory=list)
    component_issued: int = 0
    authorizer_issued: int = 0
    refused_component_tokens: set[str] = field(default_factory=set)
    authorizer_answers: list[httpx.Response] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        if request.url.path == "/cgi-bin/component/api_component_token":
            self.component_issued += 1
            return httpx.Response(200, json={"component_access_token": f"ctok-{self.component_issued}", "expires_in": 7200})
        assert request.url.path == "/cgi-bin/component/api_authorizer_token"
        if request.url.params["component_access_token"] in self.refused_component_tokens:
            return token_error(40001, "invalid credential")
        if self.authorizer_answers:
            return self.authorizer_answers.pop(0)
        self.authorizer_issued += 1
        n = self.authorizer_issued
        return httpx.Response(
            200,
            json={
                "authorizer_access_token": f"atok-{body['authorizer_appid']}-{n}",
                "expires_in": 7200,
                "authorizer_refresh_token": f"refresh-{body['authorizer_appid']}-{n}",
            },
        )

    def authorizer_bodies(self) -> list[dict[str, str]]:
        return [json.loads(r.content) for r in self.requests if r.url.path.endswith("api_authorizer_token")]


def component_provider(server: ComponentServer, **kwargs: Any) -> ComponentTokenProvider:
    return ComponentTokenProvider(
        httpx.AsyncClient(transport=httpx.MockTransport(server)),
        component_appid=COMPONENT_APPID,
        component_secret=SecretStr(COMPONENT_SECRET),
        verify_ticket=SecretStr(TICKET),
        refresh_tokens={"wxa": SecretStr("refresh-wxa-0"), "wxb": SecretStr("refresh-wxb-0")},
        base_url=BASE,
        clock=FakeClock(),
        **kwargs,
    )


async def test_component_mode_gets_one_token_per_authorizer_with_one_component_token() -> None:
    server = ComponentServer()
    provider = component_provider(server)
    a, b = await asyncio.gather(provider.get("wxa"), provider.get("wxb"))
    assert (a.value, b.value) == ("atok-wxa-1", "atok-wxb-2") or (a.value, b.value) == ("atok-wxa-2", "atok-wxb-1")
    assert a.appid == "wxa" and b.appid == "wxb"
    assert server.component_issued == 1
    assert server.authorizer_issued == 2
    component_call = server.requests[0]
    assert json.loads(component_call.content) == {
        "component_appid": COMPONENT_APPID,
        "component_appsecret": COMPONENT_SECRET,
        "component_verify_ticket": TICKET,
    }
    assert sorted(server.authorizer_bodies(), key=lambda b: b["authorizer_appid"]) == [
        {"component_appid": COMPONENT_APPID, "authorizer_appid": "wxa", "authorizer_refresh_token": "refresh-wxa-0"},
        {"component_appid": COMPONENT_APPID, "authorizer_appid": "wxb", "authorizer_refresh_token": "refresh-wxb-0"},
    ]
    assert provider.refreshes == 2 and provider.component_refreshes == 1


async def test_component_mode_uses_the_rotated_refresh_token_and_reports_it() -> None:
    server = ComponentServer()
    rotated: list[tuple[str, str]] = []

    async def persist(appid: str, new_token: str) -> None:
        rotated.append((appid, new_token))

    provider = component_provider(server, on_refresh_token_rotated=persist)
    first = await provider.get("wxa")
    await provider.invalidate("wxa", first)
    await provider.get("wxa")
    bodies = server.authorizer_bodies()
    assert [b["authorizer_refresh_token"] for b in bodies] == ["refresh-wxa-0", "refresh-wxa-1"]
    assert rotated == [("wxa", "refresh-wxa-1"), ("wxa", "refresh-wxa-2")]


async def test_component_token_refused_by_the_authorizer_call_is_refreshed_once() -> None:
    server = ComponentServer(refused_component_tokens={"ctok-1"})
    provider = component_provider(server)
    token = await provider.get("wxa")
    assert token.value == "atok-wxa-1"
    assert server.component_issued == 2
    assert [r.url.params["component_access_token"] for r in server.requests if "authorizer" in r.url.path] == [
        "ctok-1",
        "ctok-2",
    ]


async def test_component_token_refused_twice_is_a_credential_error_after_two_calls() -> None:
    server = ComponentServer(refused_component_tokens={"ctok-1", "ctok-2"})
    provider = component_provider(server)
    with pytest.raises(CredentialError) as caught:
        await provider.get("wxa")
    assert caught.value.errcode == 40001
    assert len(server.authorizer_bodies()) == 2
    assert_no_secret(caught.value, COMPONENT_SECRET, TICKET, "ctok-1", "ctok-2", "refresh-wxa-0")


async def test_component_invalid_refresh_token_and_unknown_authorizer_are_credential_errors() -> None:
    server = ComponentServer(authorizer_answers=[token_error(61023, "invalid refresh_token")])
    provider = component_provider(server)
    with pytest.raises(CredentialError) as caught:
        await provider.get("wxa")
    assert caught.value.errcode == 61023 and "wxa" in str(caught.value)
    with pytest.raises(CredentialError) as unknown:
        await provider.get("wxunknown")
    assert "wxunknown" in str(unknown.value)


# --- external ---------------------------------------------------------------


async def test_external_url_is_asked_with_the_appid_and_invalidation_drops_the_cache() -> None:
    server = TokenServer(expires_in=600)
    clock = FakeClock()
    provider = ExternalTokenProvider(http=server.client(), token_url="https://tokens.internal/token?tenant=x", clock=clock)
    token = await provider.get(APPID)
    assert token.value == "tok-1" and token.expires_at == clock.now + 600
    assert dict(server.requests[0].url.params) == {"tenant": "x", "appid": APPID}
    assert (await provider.get(APPID)).value == "tok-1"
    await provider.invalidate(APPID, token)
    assert (await provider.get(APPID)).value == "tok-2"
    assert len(server.requests) == 2


def python_command(code: str) -> str:
    return f"{sys.executable} -c {json.dumps(code)}"


async def test_external_command_gets_the_appid_in_its_environment() -> None:
    code = f"import json, os; print(json.dumps({{'access_token': 'cmd-' + os.environ['{TOKEN_APPID_ENV}'], 'expires_in': 7200}}))"
    provider = ExternalTokenProvider(command=python_command(code), clock=FakeClock())
    token = await provider.get(APPID)
    assert token.value == f"cmd-{APPID}"
    assert (await provider.get(APPID)) is token  # cached: the command ran once


@pytest.mark.parametrize(
    ("code", "errcode"),
    [
        ("import sys; sys.exit(3)", -1),
        ("print('not json')", -1),
        ('print(\'{"errcode": -1, "errmsg": "busy"}\')', -1),
    ],
)
async def test_external_command_failures_are_transient(code: str, errcode: int) -> None:
    provider = ExternalTokenProvider(command=python_command(code))
    with pytest.raises(TransientWeChatError) as caught:
        await provider.get(APPID)
    assert caught.value.errcode == errcode


async def test_external_command_that_hangs_times_out() -> None:
    provider = ExternalTokenProvider(command=python_command("import time; time.sleep(30)"), command_timeout_s=0.2)
    with pytest.raises(TransientWeChatError, match="timed out"):
        await provider.get(APPID)


def test_external_command_that_does_not_exist_fails_at_construction() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ExternalTokenProvider(command="/nonexistent/token-helper --appid")
    assert caught.value.setting == "INVOICE_SM_WECHAT_TOKEN_COMMAND"


# --- build_token_provider -------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"wechat_token_mode": "stable", "wechat_appid": APPID, "wechat_secret": SECRET}, StableTokenProvider),
        ({"wechat_token_mode": "classic", "wechat_appid": APPID, "wechat_secret": SECRET}, ClassicTokenProvider),
        (
            {
                "wechat_token_mode": "component",
                "wechat_component_appid": COMPONENT_APPID,
                "wechat_component_secret": COMPONENT_SECRET,
                "wechat_component_verify_ticket": TICKET,
                "wechat_authorizer_refresh_tokens": {"wxa": "refresh"},
            },
            ComponentTokenProvider,
        ),
        ({"wechat_token_mode": "external", "wechat_token_url": "https://tokens.internal/t"}, ExternalTokenProvider),
    ],
)
def test_build_token_provider_selects_the_mode(overrides: dict[str, Any], expected: type) -> None:
    with capture_logs():
        provider = build_token_provider(Settings(**overrides), httpx.AsyncClient())
    assert type(provider) is expected
    assert provider.mode == overrides["wechat_token_mode"]


def test_build_token_provider_names_a_missing_setting() -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_token_provider(Settings(wechat_token_mode="stable", wechat_appid=APPID), httpx.AsyncClient())
    assert caught.value.setting == "INVOICE_SM_WECHAT_SECRET"
