"""The WeChat ``card/invoice/platform/updatestatus`` call, over one pooled httpx client.

``WeChatClient.update_status`` sends one status change and translates every
way it can end into the domain's error tree (``domain.errors``)::

    answer / failure                                   raised
    errcode 0 or missing                               (returns UpdateResult)
    40001, 40014, 42001 (token)                        invalidate, retry once; again -> TokenInvalidError
    -1, 45011, 72036, HTTP 5xx/408/429, 2xx non-JSON   TransientWeChatError
    ConnectError, ConnectTimeout, PoolTimeout, ProxyError   TransientWeChatError (never sent)
    ReadTimeout, WriteTimeout, ReadError, WriteError,
      RemoteProtocolError, other transport errors      UnknownResultError (may have been applied)
    45009                                              QuotaExhaustedError
    72023, 72024, 72039                                ConflictError
    anything else, other HTTP 4xx                      PermanentWeChatError

Errors that carry no WeChat errcode (HTTP and transport failures) use
errcode -1 and set ``http_status`` when there was an answer; the exception's
*class* is the decision, and -1 classifies as transient, consistent with
every such error except a non-JSON HTTP 4xx (a wrong base URL, say).

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

import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import httpx
import msgspec

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
    ConflictError,
    PermanentWeChatError,
    QuotaExhaustedError,
    TokenInvalidError,
    TransientWeChatError,
    UnknownResultError,
    WeChatError,
)
from domain.status import ReimburseStatus
from domain.wechat_errors import ErrorClass, classify

__all__ = ["UPDATESTATUS_PATH", "UpdateResult", "WeChatClient", "new_http_client", "redact_url"]

log = get_logger(__name__)

UPDATESTATUS_PATH: Final = "/card/invoice/platform/updatestatus"

_ERROR_FOR_CLASS: Final[dict[ErrorClass, type[WeChatError]]] = {
    ErrorClass.TOKEN: TokenInvalidError,
    ErrorClass.TRANSIENT: TransientWeChatError,
    ErrorClass.QUOTA: QuotaExhaustedError,
    ErrorClass.CONFLICT: ConflictError,
    ErrorClass.PERMANENT: PermanentWeChatError,
}

# Failures before any byte of the request reached WeChat: safe to resend.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)
# Our own mistake (a bad base URL, a malformed request): resending will not help.
_BAD_REQUEST: Final = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)

_MAX_ERRMSG: Final = 200

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
        more_clients: Sequence[httpx.AsyncClient] = (),
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
        # Calls go round-robin over the shards (see ``POOL_SHARD_SIZE``).
        self._shards = [client, *more_clients]
        self._next_shard = itertools.cycle(self._shards)
        self._owns_client = bool(owns_client)
        self._tokens = tokens
        self._owns_tokens = owns_tokens
        self._url = base_url.rstrip("/") + UPDATESTATUS_PATH
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
        concurrency = settings.delivery_concurrency
        shards = [
            new_http_client(
                timeout_s=settings.wechat_timeout_s,
                max_connections=min(concurrency, POOL_SHARD_SIZE),
                transport=transport,
            )
            for _ in range(max(1, math.ceil(concurrency / POOL_SHARD_SIZE)))
        ]
        tokens = build_token_provider(
            settings, shards[0], on_refresh=on_refresh, on_refresh_token_rotated=on_refresh_token_rotated
        )
        return cls(
            tokens,
            base_url=settings.wechat_base_url,
            client=shards[0],
            more_clients=shards[1:],
            owns_client=True,
            owns_tokens=True,
        )

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
            for shard in self._shards:
                await shard.aclose()

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
        body = msgspec.json.encode(
            {"card_id": card_id, "code": code, "reimburse_status": ReimburseStatus(status).value}
        )
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
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
            raise _ERROR_FOR_CLASS[error_class](errcode, errmsg, http_status=http_status)

    async def _send(self, token: AccessToken, body: bytes, headers: dict[str, str]) -> tuple[int, str, int]:
        """One HTTP call: ``(errcode, errmsg, http_status)`` of a JSON answer, or a ``WeChatError``."""
        error: WeChatError | None = None
        response: httpx.Response | None = None
        try:
            response = await next(self._next_shard).post(
                self._url, params={"access_token": token.value}, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            error = _translate_transport_error(exc)
        # Raised here, outside the handler, so the httpx exception (URL, token) is not its __context__.
        if error is not None or response is None:
            raise error or UnknownResultError(-1, "no answer from WeChat")
        return _parse_answer(response, token)


#: Connections per httpx pool. httpcore 1.0 scans every connection for every
#: queued request (O(connections x queue)), which made one pool of 256
#: connections spend half the deliverer's CPU; pools of 16, round-robin,
#: keep the scan short (bench/deliverer.py measured 79 -> 293 calls/s at 256).
POOL_SHARD_SIZE = 16


def new_http_client(
    *,
    timeout_s: float,
    max_connections: int,
    max_keepalive_connections: int | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """A keep-alive pool: ``max_connections`` sockets, as many kept alive unless told otherwise."""
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections if max_keepalive_connections is None else max_keepalive_connections,
    )
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits, transport=transport)


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


def _parse_answer(response: httpx.Response, token: AccessToken) -> tuple[int, str, int]:
    status = response.status_code
    if status >= 500 or status in (408, 429):
        raise TransientWeChatError(-1, f"HTTP {status} from WeChat", http_status=status)
    data = _decode_object(response.content)
    if data is None:
        if response.is_success:
            raise TransientWeChatError(-1, f"HTTP {status} from WeChat with a non-JSON body", http_status=status)
        raise PermanentWeChatError(-1, f"HTTP {status} from WeChat without an errcode", http_status=status)
    errcode = data.get("errcode", 0)
    if not isinstance(errcode, int) or isinstance(errcode, bool):
        raise TransientWeChatError(-1, "malformed errcode in WeChat's answer", http_status=status)
    errmsg = data.get("errmsg")
    text = errmsg if isinstance(errmsg, str) else ("ok" if errcode == 0 else "")
    # WeChat does not echo the token, but an errmsg ends up in records and logs: be sure.
    text = text.replace(token.value, "***")[:_MAX_ERRMSG]
    if not response.is_success and errcode == 0:
        raise PermanentWeChatError(-1, f"HTTP {status} from WeChat: {text}", http_status=status)
    return errcode, text, status


def _decode_object(content: bytes) -> dict[str, Any] | None:
    try:
        data = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return None
    return data if isinstance(data, dict) else None
