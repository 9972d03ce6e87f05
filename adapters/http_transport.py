"""An HTTP/1.1 ``httpx.AsyncBaseTransport`` on asyncio sockets: httpx's interface, llhttp's parser, our pool.

httpx 0.28 over httpcore costs about 2.5 ms of CPU per call at high
concurrency (httpcore scans every pooled connection for every queued
request); aiohttp's client, which replaced it here, still built and tracked
per call what we never use (cookie jars, traces, multidicts, timers,
redirects): ``WeChatClient`` over it cost 494 CPU µs per call at
concurrency 256, over this transport 148 (``./dev bench --only deliverer``,
2026-12-07, side by side). What the service sends is narrow: small
requests to one or two origins, small answers, keep-alive.
``Http1Transport`` does exactly that: one ``asyncio.Protocol`` per socket, the
request head and body written in one ``transport.write``, and a pool that
hands out an idle connection in O(1). It keeps ``httpx.AsyncClient`` as the
interface (timeouts, ``httpx.Response``, ``httpx.MockTransport`` in unit
tests). Content-Encoding is left to httpx, which decodes by the header.

What parses the answers is not ours: llhttp (Node's HTTP/1.1 parser) through
``httptools`` (MagicStack's bindings, what uvicorn uses), one
``HttpResponseParser`` per answer, fed the bytes as they arrive. It reads the
status line and headers, frames the body (``Content-Length``, ``chunked``
with its extensions and trailers, or none) and refuses what is malformed.
Ours are its callbacks (``_Connection.on_*``) and what they decide: interim (1xx)
answers are skipped; a head over ``MAX_HEAD_BYTES`` or a body over
``MAX_BODY_BYTES`` is refused; an answer with neither length nor chunking
ends at the server's close (httptools has no call for the end of the
stream); bytes after a complete answer leave it whole but close its
connection (nothing is pipelined, so the stream is out of step); keep-alive
is llhttp's judgement (``should_keep_alive``: version and ``Connection``).
HEAD requests are refused before anything is sent: llhttp cannot be told
that an answer's announced body is absent, and the service sends none.
Side by side with the hand-written parser it replaced (``WeChatClient`` at
concurrency 256, 2026-12-07), the CPU per call was the same within noise,
and an answer's parse alone took about 4.7 µs against 8.3.

Its exception mapping is its own, because the callers' decision rests on
it: was the request *written* before it failed? ::

    failure                                             raised (httpx)         meaning
    connect refused / DNS / TLS                         ConnectError           not sent
    connect or pool-wait timeout                        ConnectTimeout         not sent
    reset or close found before the request was written RequestNotSentError    not sent
                                                          (a ConnectError)
    reset / close after the request was written         ReadError              possibly applied
    server closed without an answer (after writing)     RemoteProtocolError    possibly applied
    malformed answer (llhttp refuses it), or too large  RemoteProtocolError    possibly applied
    no answer within the read timeout                   ReadTimeout            possibly applied
    a URL this transport cannot send (not http/https),  UnsupportedProtocol    our mistake (not sent)
      or a HEAD request

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

import httptools
import httpx

__all__ = ["Http1Transport", "RequestNotSentError", "ResponseBody"]

#: An answer's head (status line and headers) larger than this is refused as malformed.
MAX_HEAD_BYTES: Final = 64 * 1024
#: An answer's body larger than this is refused as malformed (WeChat's answers are tiny).
MAX_BODY_BYTES: Final = 16 * 1024 * 1024


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
        self.kind = kind  # "reset", "protocol", "timeout"
        self.detail = detail


class _Answer:
    __slots__ = ("body", "headers", "identity", "keep_alive", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool, identity: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.identity = identity


class _Connection(asyncio.Protocol):
    """One socket: at most one request in flight, its answer read by a new llhttp parser.

    The connection is its parser's protocol: the ``on_*`` methods are the
    callbacks of an ``httptools.HttpResponseParser`` made for each request,
    so no parser state of one answer reaches the next on a kept-alive
    connection, and the answer's own state is reset with it in ``send``.
    llhttp frames the body; the callbacks keep the final answer's status,
    headers and body and enforce the limits (a callback's ``_Failed`` stops
    the parser: ``feed_data`` raises it wrapped).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[_Answer] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._status = 0  # the final (non-1xx) answer's status: 0 until its head is read
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_bytes = 0  # bytes received while the final head was incomplete (interim answers included)
        self._head_size = 0  # header names and values read (interim answers included)
        self._answered = False  # the final answer is read whole
        self._framed = False  # Content-Length or Transfer-Encoding seen: else the body runs to the close
        self._identity = True
        self._keep_alive = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._parser = None  # it refers back to this connection
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if exc is not None:
            self._fail("reset", f"connection lost after the request was written ({type(exc).__name__})")
        elif self._status and not self._framed:
            # Neither length nor chunked: llhttp reads the body until the close, which ends
            # it (httptools has no call for the end of the stream, so it is ours to say).
            self._complete(reusable=False)
        elif self._head_bytes == 0:
            self._fail("protocol", "server closed the connection without an answer")
        else:
            self._fail("protocol", "server closed the connection in the middle of the answer")

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._waiter is None or self._waiter.done():
            # Bytes nobody asked for (on an idle connection): it cannot be trusted with a request.
            self.close()
            return
        if not self._status:
            self._head_bytes += len(data)
        failed: _Failed | None = None
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # A callback's own refusal comes back wrapped (HttpParserCallbackError), as the context.
            cause = exc.__context__
            failed = cause if isinstance(cause, _Failed) else _Failed("protocol", f"malformed answer ({exc})")
        if self._answered:  # whatever followed the answer only makes the connection unusable
            self._complete(reusable=failed is None)
        elif failed is not None:
            self._fail(failed.kind, failed.detail)
        elif not self._status and self._head_bytes > MAX_HEAD_BYTES:
            # httptools hands a header over only once it is whole: this bounds one still arriving.
            self._fail("protocol", "answer head too large")

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost decides what the close means

    # -- the parser's callbacks

    def on_message_begin(self) -> None:
        if self._answered:  # a second answer: nothing pipelines here, so the stream is out of step
            raise _Failed("protocol", "bytes past the answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEAD_BYTES:
            raise _Failed("protocol", "answer head too large")
        value = value.rstrip(b" \t")  # llhttp drops only the whitespace before a value
        self._headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-encoding":
            self._identity = value.lower() in (b"", b"identity")
        elif lowered in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status >= 200 or status == 101:
            self._status = status

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            raise _Failed("protocol", "answer body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._status:  # an interim (1xx) answer: the real one follows
            self._headers = []
            self._identity = True
            self._framed = False
            return
        assert self._parser is not None
        self._answered = True
        self._keep_alive = self._parser.should_keep_alive()

    # -- one exchange

    def send(self, data: bytes, waiter: asyncio.Future[_Answer]) -> None:
        """Write ``data``; ``waiter`` gets the answer (or a ``_Failed``)."""
        assert self.transport is not None
        self._waiter = waiter
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._headers = []
        self._body = []
        self._body_size = self._head_bytes = self._head_size = 0
        self._answered = self._framed = self._keep_alive = False
        self._identity = True
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

    def _complete(self, *, reusable: bool) -> None:
        waiter, self._waiter = self._waiter, None
        keep_alive = reusable and self._keep_alive
        if waiter is not None and not waiter.done():
            waiter.set_result(_Answer(self._status, self._headers, b"".join(self._body), keep_alive, self._identity))
        self._body = []
        if not keep_alive:
            self.close()


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
        self._open: set[_Connection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.scheme, url.host, url.port)
        if key[0] not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"{_where(request)}: the URL cannot be requested", request=request)
        if request.method == "HEAD":  # its answer announces a body it lacks, which llhttp cannot be told
            raise httpx.UnsupportedProtocol(f"{_where(request)}: this transport sends no HEAD request: not sent", request=request)
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
                    f"{_where(request)}: connection lost before the request was written: not sent", request=request
                )
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[_Answer] = loop.create_future()
            conn.send(data, waiter)
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
        if answer is None:  # else ``await waiter`` raised something other than _Failed, which propagated
            assert failure is not None
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
            raise httpx.ConnectTimeout(f"{_where(request)}: no free connection in time: not sent", request=request)

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
        scheme, host, port = key
        tls = scheme == "https"
        loop = asyncio.get_running_loop()
        where = _where(request)
        error: httpx.TransportError | None = None
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    host,
                    port if port is not None else (443 if tls else 80),
                    ssl=self._tls() if tls else None,
                    server_hostname=host if tls else None,
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


def _where(request: httpx.Request) -> str:
    """What an error names of its request: the method and path, never the query (credentials ride there)."""
    return f"{request.method} {request.url.path}"


def _translate(failure: _Failed, request: httpx.Request) -> httpx.TransportError:
    message = f"{_where(request)}: {failure.detail}: possibly applied"
    if failure.kind == "timeout":
        return httpx.ReadTimeout(message, request=request)
    if failure.kind == "reset":
        return httpx.ReadError(message, request=request)
    return httpx.RemoteProtocolError(message, request=request)
