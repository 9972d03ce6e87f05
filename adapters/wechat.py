"""The WeChat ``card/invoice/platform/updatestatus`` call, over one pooled httpx client.

The client is ``httpx.AsyncClient`` over ``adapters.http_transport.Http1Transport``
(our HTTP/1.1 connection pool, with llhttp parsing the answers, beneath httpx's interface): one pool
for ``updatestatus`` and the token endpoints.

``WeChatClient.update_status`` sends one status change and translates every
way it can end into the domain's error tree (``domain.errors``)::

    answer / failure                                   raised
    errcode 0                                          (returns UpdateResult)
    a token errcode (40001, 40014, 42001)              invalidate, retry once; again -> TokenInvalidError
    any other errcode                                  its class's error, from ``domain.wechat_errors.ERRCODE_CLASSES``
                                                       (e.g. 45009 QuotaExhaustedError; unknown: PermanentWeChatError)
    HTTP 408/429, 2xx non-JSON                         TransientWeChatError
    HTTP 502, 504; any other 5xx after the request
      was written; 2xx JSON without errcode            UnknownResultError (may have been applied)
    other 5xx before the request was written           TransientWeChatError
    ConnectError, ConnectTimeout, PoolTimeout, ProxyError   TransientWeChatError (never sent)
    ReadTimeout, WriteTimeout, ReadError, WriteError,
      RemoteProtocolError, other transport errors      UnknownResultError (may have been applied)
    other HTTP 4xx                                     PermanentWeChatError

Errors that carry no WeChat errcode (HTTP and transport failures) use
errcode -1 and set ``http_status`` when there was an answer; the exception's
*class* is the decision, and -1 classifies as transient, consistent with
every such error except a non-JSON HTTP 4xx (a wrong base URL, say).
Whether the request was written comes from the transport
(``response.extensions["request_written"]``, see ``adapters.http_transport``);
an answer without it counts as written. A 2xx JSON answer without
``errcode`` is not WeChat's (a proxy, a captive portal): not a success,
and WeChat may or may not have got the call.

Per call the work is small: the URL with ``?access_token=`` is built once
per token, the request (an ``httpx.Request`` with its headers complete:
``Host``, ``Content-Type``, ``Content-Length``, ``Idempotency-Key``) is built
here, the body is one ``msgspec`` encode and the answer one ``msgspec``
decode of the bytes as received into a two-field struct. On the service's
own client (``new_http_client``), unless the environment names a proxy for
WeChat's URL, the request goes straight to the transport's
``handle_async_request``: ``AsyncClient.send`` would add only
what this call never uses (auth flow, redirects, cookies, event hooks) and
about a tenth of the call's CPU. The client's timeouts go along in the
request's extensions and the transport's errors are the same httpx errors,
so the mapping below is the same either way; another ``httpx.AsyncClient``
(injected in tests) is called through ``send``.

The token retry is a loop of at most two HTTP calls, never recursion: the
well-known SDKs' unbounded refresh-and-retry recursion is what this avoids.

Credentials never leave this module in an error or a log line. httpx puts
the request URL, and with it ``?access_token=…``, into its exceptions'
messages; so an httpx exception is translated into a new error with a fixed
message naming only its class, and raised *outside* the ``except`` block,
so that neither ``__cause__`` nor ``__context__`` holds the original.
WeChat's ``errmsg`` is scrubbed of the token too. ``redact_url`` masks
credential query parameters for anyone who must log a URL.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import httpx
import msgspec

from adapters.http_transport import Http1Transport, ResponseBody
from adapters.logging import get_logger
from adapters.settings import Settings
from adapters.tokens import (
    DEFAULT_BASE_URL,
    AccessToken,
    RefreshHook,
    RotationHook,
    TokenProvider,
    build_token_provider,
)
from domain.errors import (
    PermanentWeChatError,
    TransientWeChatError,
    UnknownResultError,
    WeChatError,
)
from domain.status import ReimburseStatus
from domain.wechat_errors import ErrorClass, classify, wechat_error

__all__ = ["UPDATESTATUS_PATH", "UpdateResult", "WeChatClient", "new_http_client", "redact_url"]

log = get_logger("invoice_sm.wechat")

UPDATESTATUS_PATH: Final = "/card/invoice/platform/updatestatus"

# Failures before any byte of the request reached WeChat: safe to resend.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)
# Our own mistake (a bad base URL, a malformed request): resending will not help.
_BAD_REQUEST: Final = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)

_MAX_ERRMSG: Final = 200
# 5xx answers that mean "a gateway gave up waiting for WeChat": the call may have gone through.
_GATEWAY_GAVE_UP: Final = frozenset({502, 504})
_CONTENT_TYPE: Final = (b"Content-Type", b"application/json")
_CONTENT_LENGTH: Final = b"Content-Length"
_IDEMPOTENCY_KEY: Final = b"Idempotency-Key"

_CREDENTIAL_PARAM_RE: Final = re.compile(
    r"(?i)(?<=[?&;])((?:access_token|component_access_token|authorizer_access_token|"
    r"authorizer_refresh_token|refresh_token|secret|appsecret|component_appsecret|"
    r"component_verify_ticket)=)[^&#\s\"'<>]*"
)


def redact_url(url: str | httpx.URL) -> str:
    """``url`` (or any text containing URLs) with credential query values masked as ``***``.

    >>> redact_url("https://api.weixin.qq.com/cgi-bin/token?appid=wx1&secret=s3cr3t")
    'https://api.weixin.qq.com/cgi-bin/token?appid=wx1&secret=***'
    """
    return _CREDENTIAL_PARAM_RE.sub(r"\1***", str(url))


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """A successful ``updatestatus``.

    ``attempts`` counts HTTP calls to ``updatestatus`` (2 after a token
    retry); ``latency_s`` spans the whole call, token fetches included;
    ``token_refreshed`` says a token error made us take a new token.
    """

    errcode: int
    errmsg: str
    attempts: int
    latency_s: float
    token_refreshed: bool


class WeChatClient:
    """The ``updatestatus`` call with one pooled keep-alive ``httpx.AsyncClient``.

    Build it with ``from_settings`` in the service (one HTTP pool shared with
    the token provider, both closed by ``aclose``), or with ``__init__`` and
    an injected ``transport=`` (``httpx.MockTransport``) or ``client=`` in
    tests. An injected client is the caller's to close unless
    ``owns_client=True``; the token provider is closed only when
    ``owns_tokens=True``.
    """

    def __init__(
        self,
        tokens: TokenProvider,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 5.0,
        max_connections: int = 64,
        max_keepalive_connections: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
        owns_client: bool | None = None,
        owns_tokens: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if client is not None and transport is not None:
            raise ValueError("pass either client= or transport=, not both")
        if client is None:
            client = new_http_client(
                timeout_s=timeout_s,
                max_connections=max_connections,
                max_keepalive_connections=max_keepalive_connections,
                transport=transport,
            )
            owns_client = True if owns_client is None else owns_client
        self._http = client
        self._owns_client = bool(owns_client)
        self._tokens = tokens
        self._owns_tokens = owns_tokens
        self._url = httpx.URL(base_url.rstrip("/") + UPDATESTATUS_PATH)
        # The URL with ``?access_token=`` of the token last used: built once per token.
        self._token_url: tuple[str, httpx.URL] = ("", self._url)
        self._host = (b"Host", self._url.netloc)
        # A request built here skips the client's merging: the client's timeouts go along.
        self._extensions = {"timeout": client.timeout.as_dict()}
        # The service's client: straight to its transport (see the module docstring),
        # unless the environment routes WeChat through a proxy (``_environment_proxies``):
        # then through ``send``, which picks the proxy's transport, as for the token calls.
        self._transport = client.transport if isinstance(client, _HTTPClient) and client.routes_directly(self._url) else None
        self._clock = clock

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        on_refresh: RefreshHook | None = None,
        on_refresh_token_rotated: RotationHook | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> WeChatClient:
        """The service's client: ``INVOICE_SM_WECHAT_*`` settings, one pool of
        ``delivery_concurrency`` keep-alive connections shared with the token provider.

        Raises ``ConfigurationError`` naming the setting when credentials are missing.
        """
        settings.require_wechat()  # before the pool exists, so a bad setting leaks nothing
        http = new_http_client(
            timeout_s=settings.wechat_timeout_s,
            # One more than the workers: a token fetch never waits behind a full pool of calls.
            max_connections=settings.delivery_concurrency + 1,
            transport=transport,
        )
        tokens = build_token_provider(settings, http, on_refresh=on_refresh, on_refresh_token_rotated=on_refresh_token_rotated)
        return cls(tokens, base_url=settings.wechat_base_url, client=http, owns_client=True, owns_tokens=True)

    @property
    def http(self) -> httpx.AsyncClient:
        """The pooled client (to share with a token provider built by hand)."""
        return self._http

    @property
    def tokens(self) -> TokenProvider:
        return self._tokens

    async def aclose(self) -> None:
        if self._owns_tokens:
            await self._tokens.aclose()
        if self._owns_client:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def update_status(
        self,
        *,
        appid: str,
        card_id: str,
        code: str,
        status: ReimburseStatus,
        idempotency_key: str,
    ) -> UpdateResult:
        """Set the card's reimbursement status; the ``UpdateResult`` on errcode 0, else a ``WeChatError``.

        A token error invalidates the token that was used (compare-and-expire,
        so concurrent failures cause one refresh) and retries once with a
        fresh token. Resending after ``UnknownResultError`` must use the same
        ``idempotency_key``.
        """
        started = self._clock()
        body = _encode_body(_UpdateBody(card_id, code, ReimburseStatus(status).value))
        headers = [
            self._host,
            _CONTENT_TYPE,
            (_CONTENT_LENGTH, str(len(body)).encode()),
            (_IDEMPOTENCY_KEY, idempotency_key.encode()),
        ]
        token = await self._tokens.get(appid)
        refreshed = False
        attempts = 0
        while True:
            attempts += 1
            errcode, errmsg, http_status = await self._send(token, body, headers)
            error_class = classify(errcode)
            if error_class is ErrorClass.OK:
                return UpdateResult(
                    errcode=errcode,
                    errmsg=errmsg,
                    attempts=attempts,
                    latency_s=self._clock() - started,
                    token_refreshed=refreshed,
                )
            if error_class is ErrorClass.TOKEN and not refreshed:
                log.info("wechat_token_rejected", appid=appid, errcode=errcode)
                await self._tokens.invalidate(appid, token)
                token = await self._tokens.get(appid)
                refreshed = True
                continue
            raise wechat_error(errcode, errmsg, http_status=http_status)

    def _url_for(self, token: AccessToken) -> httpx.URL:
        value, url = self._token_url
        if value != token.value:
            url = self._url.copy_merge_params({"access_token": token.value})
            self._token_url = (token.value, url)
        return url

    async def _send(self, token: AccessToken, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, str, int]:
        """One HTTP call: ``(errcode, errmsg, http_status)`` of a JSON answer, or a ``WeChatError``."""
        error: WeChatError | None = None
        response: httpx.Response | None = None
        content = b""
        request = httpx.Request(
            "POST", self._url_for(token), headers=headers, stream=httpx.ByteStream(body), extensions=self._extensions
        )
        try:
            if self._transport is None:
                response = await self._http.send(request)
                content = response.content
            else:
                if self._http.is_closed:
                    raise RuntimeError("Cannot send a request, as the client has been closed.")
                response = await self._transport.handle_async_request(request)
                stream = response.stream
                if isinstance(stream, ResponseBody) and stream.identity:
                    content = stream.body
                else:
                    content = await response.aread()
        except httpx.HTTPError as exc:
            error = _translate_transport_error(exc)
        # Raised here, outside the handler, so the httpx exception (URL, token) is not its __context__.
        if error is not None or response is None:
            raise error or UnknownResultError(-1, "no answer from WeChat")
        return _parse_answer(response, content, token)


def new_http_client(
    *,
    timeout_s: float,
    max_connections: int,
    max_keepalive_connections: int | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A keep-alive pool of ``max_connections`` sockets over ``Http1Transport`` (or ``transport``).

    One pool, not shards: ``Http1Transport`` hands out a free connection in
    O(1), where httpcore 1.0 scanned every connection per queued request.
    ``max_keepalive_connections`` applies only to an httpx transport of the
    caller's (``Http1Transport`` keeps every idle connection for its keep-alive time).
    """
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections if max_keepalive_connections is None else max_keepalive_connections,
    )
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {}
    if transport is None:
        transport = Http1Transport(max_connections=max_connections)
        mounts = _environment_proxies(limits)
    return _HTTPClient(timeout=httpx.Timeout(timeout_s), limits=limits, transport=transport, mounts=mounts)


def _environment_proxies(limits: httpx.Limits) -> dict[str, httpx.AsyncBaseTransport | None]:
    """``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` less ``NO_PROXY``, as mounts.

    httpx applies these only to a client it builds the transport of, and
    ignores them once handed one, as here; so they are mounted by hand, by
    the rules httpx itself reads them with (its ``get_environment_proxies``):
    a deployment behind an egress proxy reaches WeChat through it, token
    calls and status calls alike, on httpx's own proxy transport.
    """
    from httpx._utils import get_environment_proxies  # private, but the exact rules of httpx's default

    return {
        pattern: None if proxy is None else httpx.AsyncHTTPTransport(proxy=proxy, limits=limits)
        for pattern, proxy in get_environment_proxies().items()
    }


class _AnswerCookiesIgnored(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        """WeChat sets no cookies; httpx would parse every answer's headers for them (~30 µs)."""


class _HTTPClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` that does not read cookies from answers (cookies set by hand still go out),
    and names its ``transport`` for ``WeChatClient``'s direct calls."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        self._cookies = _AnswerCookiesIgnored(self._cookies)
        self.transport = transport

    def routes_directly(self, url: httpx.URL) -> bool:
        """Whether ``send`` hands a request for ``url`` to ``transport``: no proxy
        is mounted for it. httpx mounts one per URL pattern from the environment
        (``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` less ``NO_PROXY``) and picks
        by ``_transport_for_url``; asking that same method keeps the two in step
        (tests/unit/adapters/test_wechat_client.py sends through a proxy)."""
        return self._transport_for_url(url) is self.transport

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._cookies = _AnswerCookiesIgnored(httpx.Cookies(cookies))


def _translate_transport_error(exc: httpx.HTTPError) -> WeChatError:
    name = type(exc).__name__
    if isinstance(exc, _NOT_SENT):
        return TransientWeChatError(-1, f"{name}: not sent to WeChat")
    if isinstance(exc, _BAD_REQUEST):
        return PermanentWeChatError(-1, f"{name}: the request could not be made")
    # ReadTimeout, WriteTimeout, ReadError, WriteError, RemoteProtocolError
    # (a reset mid-request), a body that cannot be decoded, ...: WeChat may
    # have received and applied the update.
    return UnknownResultError(-1, f"{name}: the update may have been applied")


class _UpdateBody(msgspec.Struct):
    card_id: str
    code: str
    reimburse_status: str


class _Answer(msgspec.Struct):
    """The two fields of WeChat's answer we read; a missing errcode stays ``None`` (not success)."""

    errcode: int | None = None
    errmsg: str | None = None


_encode_body = msgspec.json.Encoder().encode
_decode_answer = msgspec.json.Decoder(_Answer).decode


def _parse_answer(response: httpx.Response, content: bytes, token: AccessToken) -> tuple[int, str, int]:
    status = response.status_code
    if status >= 500:
        if status in _GATEWAY_GAVE_UP or response.extensions.get("request_written", True):
            raise UnknownResultError(-1, f"HTTP {status} from WeChat: the update may have been applied", http_status=status)
        raise TransientWeChatError(-1, f"HTTP {status} from WeChat before the request was written", http_status=status)
    if status in (408, 429):
        raise TransientWeChatError(-1, f"HTTP {status} from WeChat", http_status=status)
    success = 200 <= status < 300
    try:
        answer = _decode_answer(content)
    except msgspec.DecodeError:  # not JSON, not an object, or fields of the wrong type
        answer = _slow_answer(content, status, success)
    errcode = answer.errcode
    if errcode is None:
        if success:
            raise UnknownResultError(
                -1,
                f"HTTP {status} without an errcode, not WeChat's answer: the update may have been applied",
                http_status=status,
            )
        raise PermanentWeChatError(-1, f"HTTP {status} from WeChat without an errcode", http_status=status)
    errmsg = answer.errmsg
    text = errmsg if errmsg is not None else ("ok" if errcode == 0 else "")
    # WeChat does not echo the token, but an errmsg ends up in records and logs: be sure.
    if token.value in text:
        text = text.replace(token.value, "***")
    text = text[:_MAX_ERRMSG]
    if not success and errcode == 0:
        raise PermanentWeChatError(-1, f"HTTP {status} from WeChat: {text}", http_status=status)
    return errcode, text, status


def _slow_answer(content: bytes, status: int, success: bool) -> _Answer:
    """An answer the typed decoder refused: which way it is wrong decides the error."""
    try:
        data: Any = msgspec.json.decode(content)
    except msgspec.DecodeError:
        data = None
    if not isinstance(data, dict):
        if success:
            raise TransientWeChatError(-1, f"HTTP {status} from WeChat with a non-JSON body", http_status=status)
        raise PermanentWeChatError(-1, f"HTTP {status} from WeChat without an errcode", http_status=status)
    errcode, errmsg = data.get("errcode"), data.get("errmsg")
    if errcode is not None and (not isinstance(errcode, int) or isinstance(errcode, bool)):
        raise TransientWeChatError(-1, "malformed errcode in WeChat's answer", http_status=status)
    return _Answer(errcode=errcode, errmsg=errmsg if isinstance(errmsg, str) else None)
