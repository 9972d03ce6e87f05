"""An HTTP/1.1 ``httpx.AsyncBaseTransport`` on asyncio sockets: httpx's interface, our pool and parser.

httpx 0.28 over httpcore costs about 2.5 ms of CPU per call at high
concurrency (httpcore scans every pooled connection for every queued
request); aiohttp's client, which replaced it here, still built and tracked
per call what we never use (cookie jars, traces, multidicts, timers,
redirects): ``WeChatClient`` over it cost 494 CPU µs per call at
concurrency 256, over this transport 148 (``./dev bench --only deliverer``,
2026-12-07, side by side). What the service sends is narrow: small
requests to one or two origins, small answers, keep-alive.
``Http1Transport`` does exactly that: one ``asyncio.Protocol`` per socket, the
request head and body written in one ``transport.write``, the answer parsed
from the bytes as they arrive (status line, headers, then a body framed by
``Content-Length``, ``chunked``, or the connection's close), and a pool that
hands out an idle connection in O(1). It keeps ``httpx.AsyncClient`` as the
interface (timeouts, ``httpx.Response``, ``httpx.MockTransport`` in unit
tests). Content-Encoding is left to httpx, which decodes by the header.

Its exception mapping is its own, because the callers' decision rests on
it: was the request *written* before it failed? ::

    failure                                             raised (httpx)         meaning
    connect refused / DNS / TLS                         ConnectError           not sent
    connect or pool-wait timeout                        ConnectTimeout         not sent
    reset or close found before the request was written RequestNotSentError    not sent
                                                          (a ConnectError)
    reset / close after the request was written         ReadError              possibly applied
    server closed without an answer (after writing)     RemoteProtocolError    possibly applied
    malformed answer (status line, headers, body)       RemoteProtocolError    possibly applied
    no answer within the read timeout                   ReadTimeout            possibly applied
    a URL this transport cannot send (not http/https)   UnsupportedProtocol    our mistake

"Written" means the whole request (head and body, one ``transport.write``)
was handed to an open socket. Bytes in the kernel's send buffer may still
never reach the peer, so after that point "possibly applied" is the honest
answer, never the reverse. An idle pooled connection the server closed
meanwhile is dropped before anything is written to it and another one taken:
nothing was sent on it. Each answer carries
``response.extensions["request_written"]`` (always ``True`` here: an answer
is read only after the request was written), so a caller can tell a 5xx
after writing (possibly applied) from one before it.

There is no automatic resend of any request: httpx never resends, and a
resent ``GET /cgi-bin/token`` would invalidate the token just fetched.

Timeouts come from the request (``httpx.Timeout``): ``pool`` bounds the wait
for a free connection, ``connect`` the TCP (and TLS) connect, ``read`` the
wait for the whole answer (answers here are a few hundred bytes; a timeout
per read would be the same thing). There is no write timeout: a request of
a few hundred bytes never waits to be written.

Credentials ride in query strings (``?access_token=``): the httpx errors
raised here name only the failure and the request's method and path, and
are raised outside any ``except`` block, so neither ``__cause__`` nor
``__context__`` holds an exception that could carry the URL.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Final

import httpx

__all__ = ["Http1Transport", "RequestNotSentError", "ResponseBody"]

#: An answer's head (status line and headers) larger than this is refused as malformed.
MAX_HEAD_BYTES: Final = 64 * 1024
#: An answer's body larger than this is refused as malformed (WeChat's answers are tiny).
MAX_BODY_BYTES: Final = 16 * 1024 * 1024

_HEAD_END: Final = b"\r\n\r\n"
_NO_BODY_STATUS: Final = frozenset({204, 304})


class RequestNotSentError(httpx.ConnectError):
    """The connection failed before the request was written: it cannot have been applied."""


class ResponseBody(httpx.AsyncByteStream, httpx.SyncByteStream):
    """An answer's body, already read: ``body`` holds the bytes as received.

    ``identity``: the answer had no ``Content-Encoding``, so ``body`` is the
    content (else httpx decodes it: read ``response.content``).
    """

    __slots__ = ("body", "identity")

    def __init__(self, body: bytes, *, identity: bool = True) -> None:
        self.body = body
        self.identity = identity

    def __iter__(self) -> Iterator[bytes]:
        yield self.body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body


class _Failed(Exception):
    """Why a request on a connection failed; translated into httpx's errors by ``_translate``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind)
        self.kind = kind  # "reset", "closed", "protocol", "timeout"
        self.detail = detail


class _Answer:
    __slots__ = ("body", "headers", "identity", "keep_alive", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool, identity: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.identity = identity


# Body framing of the answer being read.
_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class _Connection(asyncio.Protocol):
    """One socket: at most one request in flight; parses its answer as bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[_Answer] | None = None
        self._buf = bytearray()
        self._state = _HEAD
        self._head_only = False
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._keep_alive = True
        self._identity = True
        self._remaining = 0
        self._chunks: list[bytes] = []
        self._in_trailers = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if exc is None and self._state == _UNTIL_CLOSE:
            self._complete(bytes(self._buf), keep_alive=False)
        elif exc is not None:
            self._fail("reset", f"connection lost after the request was written ({type(exc).__name__})")
        elif self._state == _HEAD and not self._buf:
            self._fail("closed", "server closed the connection without an answer")
        else:
            self._fail("protocol", "server closed the connection in the middle of the answer")

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Bytes nobody asked for (on an idle connection): it cannot be trusted with a request.
            self.close()
            return
        self._buf += data
        try:
            self._parse()
        except _Failed as failed:
            self._fail(failed.kind, failed.detail)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost decides what the close means

    # -- one exchange

    def send(self, data: bytes, waiter: asyncio.Future[_Answer], *, head_only: bool) -> None:
        """Write ``data``; ``waiter`` gets the answer (or a ``_Failed``)."""
        assert self.transport is not None
        self._waiter = waiter
        self._state = _HEAD
        self._head_only = head_only
        self._buf.clear()
        self.transport.write(data)

    def timed_out(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._fail("timeout", "no answer in time")

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    def reusable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def _fail(self, kind: str, detail: str) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(_Failed(kind, detail))
        self.close()

    def _complete(self, body: bytes, *, keep_alive: bool) -> None:
        waiter, self._waiter = self._waiter, None
        if self._buf:  # bytes past the answer: nothing pipelines here, so the stream is out of step
            keep_alive = False
        if waiter is not None and not waiter.done():
            waiter.set_result(_Answer(self._status, self._headers, body, keep_alive, self._identity))
        if not keep_alive:
            self.close()

    # -- parsing

    def _parse(self) -> None:
        buf = self._buf
        if self._state == _HEAD:
            end = buf.find(_HEAD_END)
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise _Failed("protocol", "answer head too large")
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if self._read_head(head):
                if buf:
                    self._parse()  # a 1xx answer came first: the real one follows
                return
        if self._state == _LENGTH:
            if len(buf) >= self._remaining:
                body = bytes(buf[: self._remaining])
                del buf[: self._remaining]
                self._complete(body, keep_alive=self._keep_alive)
        elif self._state == _CHUNKED:
            self._read_chunks()
        elif len(buf) > MAX_BODY_BYTES:  # _UNTIL_CLOSE
            raise _Failed("protocol", "answer body too large")

    def _read_head(self, head: bytes) -> bool:
        """Parse the status line and headers; ``True`` when it was an interim (1xx) answer."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise _Failed("protocol", "malformed status line")
        status = int(parts[1])
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        identity = True
        keep_alive = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or b" " in name or b"\t" in name:
                raise _Failed("protocol", "malformed header line")
            value = value.strip(b" \t")
            headers.append((name, value))
            lowered = name.lower()
            if lowered == b"content-length":
                if not value.isdigit() or (length is not None and length != int(value)):
                    raise _Failed("protocol", "malformed Content-Length")
                length = int(value)
            elif lowered == b"transfer-encoding":
                chunked = value.lower().split(b",")[-1].strip() == b"chunked"
                if not chunked:
                    raise _Failed("protocol", "unsupported Transfer-Encoding")
            elif lowered == b"content-encoding":
                identity = value.lower() in (b"", b"identity")
            elif lowered == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
        if 100 <= status < 200 and status != 101:
            return True
        self._status = status
        self._headers = headers
        self._keep_alive = keep_alive
        self._identity = identity
        if self._head_only or status in _NO_BODY_STATUS:
            self._state, self._remaining = _LENGTH, 0
        elif chunked:
            self._state, self._remaining = _CHUNKED, 0
            self._chunks = []
            self._in_trailers = False
        elif length is not None:
            if length > MAX_BODY_BYTES:
                raise _Failed("protocol", "answer body too large")
            self._state, self._remaining = _LENGTH, length
        else:
            self._state = _UNTIL_CLOSE
        return False

    def _read_chunks(self) -> None:
        buf = self._buf
        while True:
            if self._in_trailers:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:
                    self._complete(b"".join(self._chunks), keep_alive=self._keep_alive)
                    return
                continue
            if self._remaining == 0:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise _Failed("protocol", "malformed chunk size")
                    return
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise _Failed("protocol", "malformed chunk size") from None
                del buf[: end + 2]
                if size == 0:
                    self._in_trailers = True
                    continue
                if size > MAX_BODY_BYTES:
                    raise _Failed("protocol", "answer body too large")
                self._remaining = size + 2  # the chunk and its CRLF
            if len(buf) < self._remaining:
                return
            chunk = bytes(buf[: self._remaining])
            del buf[: self._remaining]
            self._remaining = 0
            if not chunk.endswith(b"\r\n"):
                raise _Failed("protocol", "malformed chunk")
            self._chunks.append(chunk[:-2])


class _Origin:
    __slots__ = ("host", "port", "server_hostname", "tls")

    def __init__(self, scheme: str, host: str, port: int | None) -> None:
        self.host = host
        self.tls = scheme == "https"
        self.port = port if port is not None else (443 if self.tls else 80)
        self.server_hostname = host if self.tls else None


class Http1Transport(httpx.AsyncBaseTransport):
    """Send httpx requests over a keep-alive pool of at most ``max_connections`` sockets.

    Idle connections stay open ``keepalive_s`` and are reused most recently
    used first. ``ssl_context`` verifies https origins (default:
    ``ssl.create_default_context()``). ``aclose`` (which
    ``httpx.AsyncClient.aclose`` calls) closes every socket; a later request
    opens new ones.
    """

    def __init__(
        self,
        *,
        max_connections: int = 64,
        keepalive_s: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self._limit = max_connections
        self._keepalive_s = keepalive_s
        self._ssl_context = ssl_context
        self._busy = 0  # requests holding a slot
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._idle: dict[tuple[str, str, int | None], list[_Connection]] = {}
        self._origins: dict[tuple[str, str, int | None], _Origin] = {}
        self._open: set[_Connection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.scheme, url.host, url.port)
        if key[0] not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"{request.method} {url.path}: the URL cannot be requested", request=request)
        stream = request.stream
        # A ByteStream yields its bytes in one piece (``Request(content=...)``); a streaming body is read first.
        body = b"".join(stream) if isinstance(stream, httpx.ByteStream) else await request.aread()
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout") or {}
        head = [request.method.encode(), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        length_given = False
        for name, value in request.headers.raw:
            lowered = name.lower()
            if lowered == b"content-length":
                length_given = True
            elif lowered == b"transfer-encoding":  # the body is sent whole, with its Content-Length
                continue
            head += (name, b": ", value, b"\r\n")
        if body and not length_given:
            head += (b"Content-Length: ", str(len(body)).encode(), b"\r\n")
        head.append(b"\r\n")
        head.append(body)
        data = b"".join(head)

        failure: _Failed | None = None
        answer: _Answer | None = None
        await self._acquire(timeouts.get("pool"), request)
        conn: _Connection | None = None
        try:
            conn = await self._connection(key, timeouts.get("connect"), request)
            if not conn.reusable():  # a new connection reset before we wrote a byte
                raise RequestNotSentError(
                    f"{request.method} {url.path}: connection lost before the request was written: not sent", request=request
                )
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[_Answer] = loop.create_future()
            conn.send(data, waiter, head_only=request.method == "HEAD")
            read = timeouts.get("read")
            timer = loop.call_later(read, conn.timed_out) if read is not None else None
            try:
                answer = await waiter
            except _Failed as exc:
                failure = exc
            finally:
                if timer is not None:
                    timer.cancel()
        finally:
            if conn is not None and (answer is None or not answer.keep_alive or not conn.reusable()):
                conn.close()
                self._open.discard(conn)
            elif conn is not None:
                conn.idle_since = time.monotonic()
                self._idle.setdefault(key, []).append(conn)
            self._release()
        if failure is not None or answer is None:
            raise _translate(failure, request)
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=ResponseBody(answer.body, identity=answer.identity),
            request=request,
            extensions={"request_written": True, "http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()

    # -- the pool

    async def _acquire(self, timeout: float | None, request: httpx.Request) -> None:
        if self._busy < self._limit and not self._waiting:
            self._busy += 1
            return
        loop = asyncio.get_running_loop()
        slot: asyncio.Future[None] = loop.create_future()
        self._waiting.append(slot)
        timer = loop.call_later(timeout, _expire, slot) if timeout is not None else None
        expired = False
        # An expired or cancelled slot stays in ``_waiting``, done: ``_release`` skips it.
        try:
            await slot
        except TimeoutError:
            expired = True
        except BaseException:
            if slot.done() and not slot.cancelled() and slot.exception() is None:
                self._release()  # the slot was handed over just as we were cancelled: pass it on
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if expired:
            where = f"{request.method} {request.url.path}"
            raise httpx.ConnectTimeout(f"{where}: no free connection in time: not sent", request=request)

    def _release(self) -> None:
        while self._waiting:
            slot = self._waiting.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot passes to the waiter: _busy stays
                return
        self._busy -= 1

    async def _connection(self, key: tuple[str, str, int | None], timeout: float | None, request: httpx.Request) -> _Connection:
        idle = self._idle.get(key)
        if idle:
            oldest_usable = time.monotonic() - self._keepalive_s
            while idle:
                conn = idle.pop()
                if conn.reusable() and conn.idle_since >= oldest_usable:
                    return conn
                conn.close()
                self._open.discard(conn)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(*key)
        loop = asyncio.get_running_loop()
        where = f"{request.method} {request.url.path}"
        error: httpx.TransportError | None = None
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    origin.host,
                    origin.port,
                    ssl=self._tls() if origin.tls else None,
                    server_hostname=origin.server_hostname,
                )
        except TimeoutError:
            error = httpx.ConnectTimeout(f"{where}: no connection in time: not sent", request=request)
        except (OSError, ssl.CertificateError) as exc:  # refused, DNS, TLS: before any byte of the request
            error = httpx.ConnectError(f"{where}: could not connect ({type(exc).__name__}): not sent", request=request)
        if error is not None:
            raise error
        self._open.add(conn)
        return conn

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context


def _expire(slot: asyncio.Future[None]) -> None:
    if not slot.done():
        slot.set_exception(TimeoutError())


def _translate(failure: _Failed | None, request: httpx.Request) -> httpx.TransportError:
    where = f"{request.method} {request.url.path}"
    if failure is None:
        return httpx.RemoteProtocolError(f"{where}: no answer: possibly applied", request=request)
    message = f"{where}: {failure.detail}: possibly applied"
    if failure.kind == "timeout":
        return httpx.ReadTimeout(message, request=request)
    if failure.kind == "reset":
        return httpx.ReadError(message, request=request)
    return httpx.RemoteProtocolError(message, request=request)
