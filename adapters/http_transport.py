"""An aiohttp-backed ``httpx.AsyncBaseTransport``: httpx's interface, aiohttp's pool and parser.

httpx 0.28 over httpcore costs about 2.5 ms of CPU per call at high
concurrency (httpcore scans every pooled connection for every queued
request); aiohttp's connector hands out a free connection in O(1) and
parses answers in C. ``AiohttpTransport`` keeps ``httpx.AsyncClient`` as
the interface (timeouts, ``httpx.Response``, ``httpx.MockTransport`` in
unit tests) and sends through one ``aiohttp.ClientSession``.

Its exception mapping is its own, because the callers' decision rests on
it: was the request *written* before it failed? ::

    failure                                             raised (httpx)         meaning
    connect refused / DNS / TLS / proxy                 ConnectError           not sent
    connect or pool-wait timeout                        ConnectTimeout         not sent
    reset or close found before the request was written RequestNotSentError    not sent
                                                          (a ConnectError)
    reset / close after the request was written         ReadError              possibly applied
    server closed without an answer (after writing)     RemoteProtocolError    possibly applied
    malformed answer (status line, headers, body)       RemoteProtocolError    possibly applied
    no answer within the read timeout                   ReadTimeout            possibly applied
    a URL aiohttp cannot send                           UnsupportedProtocol    our mistake

"Written" means the whole request (headers and body, which aiohttp
coalesces into one ``transport.write``) was handed to an open socket:
``_TrackedBody`` sets its flag only after aiohttp's writer returned. Bytes
in the kernel's send buffer may still never reach the peer, so after that
point "possibly applied" is the honest answer, never the reverse. A
bodiless request (a token ``GET``) counts as written once it has a
connection. (httpx-aiohttp 0.2 maps a reset mid-request to
``ConnectTimeout``, which would turn "possibly applied" into "not sent".)

Each answer carries ``response.extensions["request_written"]``: ``False``
only when the server answered before the body was written, so a caller
can tell a 5xx after writing (possibly applied) from one before it.

aiohttp's one automatic resend (idempotent methods on a dropped keep-alive
connection) is switched off: httpx never resends, and a resent
``GET /cgi-bin/token`` would invalidate the token just fetched.

Credentials ride in query strings (``?access_token=``) and aiohttp puts
the URL into its exceptions' messages: the httpx errors raised here name
only the aiohttp class and the request's method and path, and are raised
outside the ``except`` block, so neither ``__cause__`` nor ``__context__``
holds aiohttp's exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp
import httpx
from aiohttp.payload import BytesPayload
from yarl import URL

__all__ = ["AiohttpTransport", "RequestNotSentError"]

#: Parsed URLs kept (the updatestatus URL per live token, a few token endpoints).
_URL_CACHE_SIZE: Final = 64


class RequestNotSentError(httpx.ConnectError):
    """The connection failed before the request was written: it cannot have been applied."""


class _TrackedBody(BytesPayload):
    """A bytes body that records whether aiohttp's writer took all of it."""

    written: bool = False

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        await super().write_with_length(writer, content_length)
        # Reached only when the coalesced headers+body write went into an open transport.
        self.written = True


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx requests with aiohttp: one keep-alive pool of ``max_connections`` sockets.

    The session is created on the first request (it needs the running loop)
    and closed by ``aclose`` (``httpx.AsyncClient.aclose`` calls it).
    Timeouts come from the request (``httpx.Timeout``: connect, read and pool;
    aiohttp has no write timeout, and a body of a few hundred bytes never
    waits to be written). Idle connections stay open ``keepalive_s``.
    ``connector_factory`` replaces the ``aiohttp.TCPConnector`` (tests, tuning).
    """

    def __init__(
        self,
        *,
        max_connections: int = 64,
        keepalive_s: float = 15.0,
        connector_factory: Callable[[], aiohttp.BaseConnector] | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self._limit = max_connections
        self._keepalive_s = keepalive_s
        self._connector_factory = connector_factory
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        self._timeouts: dict[tuple[Any, ...], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        if self._connector_factory is not None:
            connector = self._connector_factory()
        else:
            connector = aiohttp.TCPConnector(
                limit=self._limit, limit_per_host=0, keepalive_timeout=self._keepalive_s, ttl_dns_cache=300
            )
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # httpx decodes by the Content-Encoding header it is given
            cookie_jar=aiohttp.DummyCookieJar(),  # WeChat sets none; a jar is work per answer
            trust_env=False,
            raise_for_status=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        # No hidden resend (see the module docstring); aiohttp 3.14 has no public switch.
        session._retry_connection = False
        self._session = session
        return session

    def _url(self, request: httpx.Request) -> URL:
        raw = str(request.url)
        url = self._urls.get(raw)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()  # tokens rotate: old entries are never asked for again
            url = self._urls[raw] = URL(raw, encoded=True)
        return url

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        t: Mapping[str, float | None] = request.extensions.get("timeout") or {}
        key = (t.get("connect"), t.get("read"), t.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            connect, read, pool = key
            # aiohttp's ``connect`` spans the wait for a pooled connection and the connect itself.
            total_connect = None if connect is None and pool is None else (connect or 0.0) + (pool or 0.0)
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, connect=total_connect, sock_connect=connect, sock_read=read
            )
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session
        if session is None or session.closed:
            session = self._open()
        content = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        body = _TrackedBody(content) if content else None
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw if k.lower() != b"host"]
        failure: BaseException | None = None
        try:
            async with session.request(
                request.method,
                self._url(request),
                data=body,
                headers=headers,
                timeout=self._timeout(request),
                allow_redirects=False,
            ) as answer:
                payload = await answer.read()
                return httpx.Response(
                    answer.status,
                    headers=answer.raw_headers,
                    content=payload,
                    request=request,
                    extensions={"request_written": body is None or body.written},
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            failure = exc
        raise _translate(failure, request, written=body is None or body.written)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _translate(exc: BaseException, request: httpx.Request, *, written: bool) -> httpx.TransportError:
    where = f"{request.method} {request.url.path}"
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(f"{where}: no connection in time ({name}): not sent", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS, proxy: before any byte
        return httpx.ConnectError(f"{where}: could not connect ({name}): not sent", request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol(f"{where}: the URL cannot be requested ({name})", request=request)
    if not written:
        return RequestNotSentError(f"{where}: connection lost before the request was written ({name}): not sent", request=request)
    if isinstance(exc, asyncio.TimeoutError):  # SocketTimeoutError, ServerTimeoutError
        return httpx.ReadTimeout(f"{where}: no answer in time ({name}): possibly applied", request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(f"{where}: no valid answer ({name}): possibly applied", request=request)
    return httpx.ReadError(f"{where}: connection lost after the request was written ({name}): possibly applied", request=request)
