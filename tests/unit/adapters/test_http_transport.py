"""Http1Transport on real loopback sockets: every failure class lands in the right error.

Two layers are checked for each fault: the httpx exception the transport
raises ("not sent": ConnectError/ConnectTimeout; "possibly applied":
ReadError/ReadTimeout/RemoteProtocolError) and the domain error
``WeChatClient.update_status`` makes of it (``TransientWeChatError`` for
"not sent", ``UnknownResultError`` for "possibly applied"). Servers are the
WeChat simulator (``SimulatorServer``, faults by rule) and tiny asyncio
servers started here for what the simulator cannot do (refuse, reset before
reading, close without answering).
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import http_transport
from adapters.http_transport import Http1Transport
from adapters.tokens import StableTokenProvider
from adapters.wechat import UpdateResult, WeChatClient, new_http_client
from devtools.simulator import DEMO_APPID, DEMO_SECRET, SimulatorControl, SimulatorServer
from domain.errors import TransientWeChatError, UnknownResultError, WeChatError
from domain.status import ReimburseStatus

CARD_ID = "pjZ8Yt7Um2jYxzneP8GomnxoVFWo"
TOKEN = "TOKEN-SHOULD-NEVER-BE-SEEN"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    srv = SimulatorServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def sim(server: SimulatorServer) -> Iterator[SimulatorControl]:
    with SimulatorControl(server.base_url) as control:
        control.reset(tokens=True)
        control.clear_faults()
        yield control
        control.clear_faults()


@asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[str]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.close()
        await srv.wait_closed()


def abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    return head + await reader.readexactly(length)


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nobody listens there now


class WaitForPeerClose(Http1Transport):
    """Hands a new connection over only once the server's reset has been seen,
    as happens when the reset arrives before the request is written."""

    async def _connection(self, *args: Any, **kwargs: Any) -> Any:
        conn = await super()._connection(*args, **kwargs)
        for _ in range(200):
            if not conn.reusable():
                break
            await asyncio.sleep(0.01)
        return conn


def client_for(
    base_url: str,
    *,
    timeout: httpx.Timeout | float = 5.0,
    transport_class: type[Http1Transport] = Http1Transport,
    **transport_kw: Any,
) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, transport=transport_class(**transport_kw), timeout=timeout)


async def post(http: httpx.AsyncClient, path: str = "/card/invoice/platform/updatestatus") -> httpx.Response:
    return await http.post(path, params={"access_token": TOKEN}, content=b'{"card_id":"c"}')


def assert_clean(exc: BaseException) -> None:
    """No token in the message, and no aiohttp exception (which has the URL) behind it."""
    assert TOKEN not in str(exc) and TOKEN not in repr(exc)
    assert exc.__cause__ is None and exc.__context__ is None


class FixedToken(StableTokenProvider):
    async def _fetch(self, appid: str) -> tuple[str, float]:
        return TOKEN, 7200.0


def wechat_over(http: httpx.AsyncClient, base_url: str, *, real_token: bool = False) -> WeChatClient:
    """``real_token``: fetch one from the simulator's stable_token (else a fixed fake, for servers that check none)."""
    provider = StableTokenProvider if real_token else FixedToken
    tokens = provider(http, appid=DEMO_APPID, secret=DEMO_SECRET, base_url=base_url)
    return WeChatClient(tokens, base_url=base_url, client=http)


async def update(client: WeChatClient, code: str = "1001") -> UpdateResult:
    return await client.update_status(
        appid=DEMO_APPID, card_id=CARD_ID, code=code, status=ReimburseStatus.LOCK, idempotency_key=f"{CARD_ID}/{code}#1"
    )


async def domain_error(http: httpx.AsyncClient, base_url: str, *, real_token: bool = False) -> WeChatError:
    with pytest.raises(WeChatError) as caught:
        await update(wechat_over(http, base_url, real_token=real_token))
    assert TOKEN not in str(caught.value) and caught.value.__context__ is None
    return caught.value


# --- not sent ----------------------------------------------------------------


async def test_connection_refused_is_a_connect_error_and_not_sent() -> None:
    url = refused_url()
    async with client_for(url) as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await post(http)
        assert_clean(caught.value)
        error = await domain_error(http, url)
    assert type(error) is TransientWeChatError


async def test_a_reset_before_the_request_is_written_is_a_connect_error_and_not_sent() -> None:
    async def reset_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        abort_with_rst(writer)

    async with tcp_server(reset_at_once) as url, client_for(url, transport_class=WaitForPeerClose) as http:
        with pytest.raises(httpx.ConnectError) as caught:
            await post(http)
        assert_clean(caught.value)
        error = await domain_error(http, url)
    assert type(error) is TransientWeChatError


async def test_a_full_pool_past_the_pool_timeout_is_a_connect_timeout_and_not_sent() -> None:
    arrived = 0
    first_arrived = asyncio.Event()
    release = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        await read_request(reader)
        arrived += 1
        first_arrived.set()
        await release.wait()
        writer.close()

    async with tcp_server(hold) as url:
        timeout = httpx.Timeout(5.0, connect=0.1, pool=0.1)
        async with client_for(url, timeout=timeout, max_connections=1) as http:
            first = asyncio.ensure_future(post(http))
            await first_arrived.wait()
            with pytest.raises(httpx.ConnectTimeout) as caught:
                await post(http)
            assert_clean(caught.value)
            error = await domain_error(http, url)
            assert arrived == 1  # neither waiting call reached the server
            release.set()
            with pytest.raises(httpx.TransportError):
                await first
    assert type(error) is TransientWeChatError


# --- possibly applied ----------------------------------------------------------


async def test_a_reset_after_the_request_is_written_is_a_read_error_and_may_have_been_applied(
    server: SimulatorServer, sim: SimulatorControl
) -> None:
    sim.add_fault("reset", apply=True, times=2)
    async with client_for(server.base_url) as http:
        with pytest.raises(httpx.ReadError) as caught:
            await post(http)
        assert_clean(caught.value)
        error = await domain_error(http, server.base_url, real_token=True)
    assert type(error) is UnknownResultError
    assert sim.card_status(DEMO_APPID, CARD_ID, "1001") is ReimburseStatus.LOCK  # it was applied


async def test_a_close_without_an_answer_after_writing_is_a_protocol_error_and_may_have_been_applied() -> None:
    async def read_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async with tcp_server(read_then_close) as url, client_for(url) as http:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await post(http)
        assert_clean(caught.value)
        error = await domain_error(http, url)
    assert type(error) is UnknownResultError


async def test_a_garbled_answer_is_a_protocol_error_and_may_have_been_applied() -> None:
    async def garble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    async with tcp_server(garble) as url, client_for(url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await post(http)
        error = await domain_error(http, url)
    assert type(error) is UnknownResultError


async def test_no_answer_within_the_read_timeout_is_a_read_timeout_and_may_have_been_applied(
    server: SimulatorServer, sim: SimulatorControl
) -> None:
    sim.add_fault("timeout", latency_ms=3000, times=2)
    async with client_for(server.base_url, timeout=httpx.Timeout(5.0, read=0.2)) as http:
        with pytest.raises(httpx.ReadTimeout) as caught:
            await post(http)
        assert_clean(caught.value)
        error = await domain_error(http, server.base_url)
    assert type(error) is UnknownResultError


@pytest.mark.parametrize("status", [502, 504])
async def test_a_gateway_502_or_504_is_an_answer_and_may_have_been_applied(
    server: SimulatorServer, sim: SimulatorControl, status: int
) -> None:
    sim.add_fault("http_status", http_status=status, times=2)
    async with client_for(server.base_url) as http:
        response = await post(http)
        assert response.status_code == status and response.extensions["request_written"] is True
        error = await domain_error(http, server.base_url)
    assert type(error) is UnknownResultError and error.http_status == status


# --- the happy path, through the same pool as the token endpoint -----------------


async def test_token_and_updatestatus_share_one_pool_and_succeed(server: SimulatorServer, sim: SimulatorControl) -> None:
    http = new_http_client(timeout_s=5.0, max_connections=4)
    assert isinstance(http._transport, Http1Transport)  # the service's default transport
    tokens = StableTokenProvider(http, appid=DEMO_APPID, secret=DEMO_SECRET, base_url=server.base_url)
    async with WeChatClient(tokens, base_url=server.base_url, client=http, owns_client=True, owns_tokens=True) as client:
        results = await asyncio.gather(*(update(client, code=str(2000 + i)) for i in range(20)))
    assert all(r.errcode == 0 for r in results)
    assert len(sim.token_calls()) == 1
    assert sim.card_status(DEMO_APPID, CARD_ID, "2019") is ReimburseStatus.LOCK


async def test_a_token_endpoint_reset_is_transient_and_names_no_secret(server: SimulatorServer, sim: SimulatorControl) -> None:
    sim.add_fault("reset", path="token")
    http = new_http_client(timeout_s=5.0, max_connections=4)
    tokens = StableTokenProvider(http, appid=DEMO_APPID, secret=DEMO_SECRET, base_url=server.base_url)
    async with WeChatClient(tokens, base_url=server.base_url, client=http, owns_client=True, owns_tokens=True) as client:
        with pytest.raises(TransientWeChatError) as caught:
            await update(client)
        assert DEMO_SECRET not in str(caught.value) and caught.value.__context__ is None
        assert (await update(client)).errcode == 0


# --- framing and the pool: what llhttp, our callbacks around it and our pool must get right ----


def answering(*answers: bytes, then_close: bool = False) -> tuple[Handler, list[bytes]]:
    """A server that answers each request on a connection with the next of ``answers``."""
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            try:
                requests.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                break
            writer.write(answer)
            await writer.drain()
        if then_close:
            writer.close()
        else:
            await reader.read()  # until the client closes

    return handler, requests


OK_JSON = b'{"errcode":0,"errmsg":"ok"}'


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\nContent-Type: application/json\r\n\r\n" + OK_JSON,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n"
        + OK_JSON[:5]
        + b"\r\n16;x=y\r\n"
        + OK_JSON[5:]
        + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\n" + OK_JSON,
        b"HTTP/1.0 200 OK\r\n\r\n" + OK_JSON,  # no length: the body runs to the close
    ],
    ids=["content-length", "chunked", "interim-100", "until-close"],
)
async def test_an_answer_in_any_framing_is_read_whole(answer: bytes) -> None:
    handler, requests = answering(answer, then_close=True)
    async with tcp_server(handler) as url, client_for(url) as http:
        response = await post(http)
    assert response.status_code == 200 and response.content == OK_JSON
    head = requests[0].split(b"\r\n\r\n")[0]
    assert head.startswith(b"POST /card/invoice/platform/updatestatus?access_token=") and b"\r\nContent-Length: 15" in head


async def test_an_answer_arriving_in_pieces_is_reassembled() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\n" + OK_JSON

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for i in range(len(answer)):
            writer.write(answer[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        await reader.read()

    async with tcp_server(dribble) as url, client_for(url) as http:
        assert (await post(http)).content == OK_JSON


async def test_keep_alive_reuses_one_connection_and_connection_close_does_not() -> None:
    kept = b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\n" + OK_JSON
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1b\r\n" + OK_JSON + b"\r\n0\r\n\r\n"
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 27\r\n\r\n" + OK_JSON
    connections = 0
    handler, requests = answering(kept, chunked, closing, then_close=True)

    async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await handler(reader, writer)

    async with tcp_server(counting) as url, client_for(url) as http:
        for _ in range(4):
            assert (await post(http)).content == OK_JSON
    assert len(requests) == 4 and connections == 2  # three on the first, then a new one after "close"


async def test_an_idle_connection_the_server_closed_is_replaced_without_an_error() -> None:
    handler, requests = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\n" + OK_JSON, then_close=True)
    async with tcp_server(handler) as url, client_for(url) as http:
        assert (await post(http)).status_code == 200
        await asyncio.sleep(0.05)  # the server's close reaches the idle connection
        assert (await post(http)).status_code == 200
    assert len(requests) == 2


async def test_a_gzip_answer_is_decoded_for_the_token_endpoints_and_updatestatus() -> None:
    packed = gzip.compress(OK_JSON)
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed) + packed
    handler, requests = answering(answer, answer)
    async with tcp_server(handler) as url:
        http = new_http_client(timeout_s=5.0, max_connections=1)  # the service's client: updatestatus goes to the transport
        async with WeChatClient(
            FixedToken(http, appid=DEMO_APPID, secret=DEMO_SECRET, base_url=url), base_url=url, client=http
        ) as client:
            assert (await http.get(url + "/cgi-bin/token")).json() == {"errcode": 0, "errmsg": "ok"}
            assert (await update(client)).errcode == 0
        await http.aclose()
    assert len(requests) == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n" + OK_JSON,  # closed short of its length
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n" + OK_JSON,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ],
    ids=["short-body", "bad-length", "bad-chunk", "bad-header"],
)
async def test_a_broken_answer_after_writing_is_a_protocol_error_and_may_have_been_applied(answer: bytes) -> None:
    handler, _ = answering(answer, then_close=True)
    async with tcp_server(handler) as url, client_for(url) as http:
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            await post(http)
        assert_clean(caught.value)


async def test_a_caller_cancelled_while_waiting_for_the_pool_leaks_no_connection_slot() -> None:
    release = asyncio.Event()

    async def hold_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\n" + OK_JSON)
            await writer.drain()

    async with tcp_server(hold_first) as url, client_for(url, max_connections=1) as http:
        first = asyncio.ensure_future(post(http))
        await asyncio.sleep(0.05)
        cancelled = asyncio.ensure_future(post(http))
        third = asyncio.ensure_future(post(http))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        release.set()
        assert (await first).status_code == 200 and (await third).status_code == 200
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert (await post(http)).status_code == 200  # the one slot is free again


async def test_an_interim_answer_s_headers_are_not_the_final_answer_s() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    handler, _ = answering(early + b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\n" + OK_JSON, then_close=True)
    async with tcp_server(handler) as url, client_for(url) as http:
        response = await post(http)
    assert response.status_code == 200 and response.content == OK_JSON and "link" not in response.headers


async def test_bytes_past_an_answer_leave_the_answer_whole_and_its_connection_unused() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\n" + OK_JSON
    connections = 0
    handler, requests = answering(answer + b"HTTP/1.1 200 OK\r\n", answer, then_close=True)

    async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await handler(reader, writer)

    async with tcp_server(counting) as url, client_for(url) as http:
        assert (await post(http)).content == OK_JSON
        assert (await post(http)).content == OK_JSON
    assert len(requests) == 2 and connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nX-Filler: " + b"x" * (70 * 1024) + b"\r\nContent-Length: 27\r\n\r\n" + OK_JSON,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2048\r\n\r\n" + b"x" * 2048,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + (b"300\r\n" + b"x" * 768 + b"\r\n") * 2 + b"0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 2048,
    ],
    ids=["head", "content-length", "chunked", "until-close"],
)
async def test_an_answer_over_the_size_limits_is_a_protocol_error(answer: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_transport, "MAX_BODY_BYTES", 1024)
    handler, _ = answering(answer, then_close=True)
    async with tcp_server(handler) as url, client_for(url) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="too large"):
            await post(http)


async def test_a_head_request_is_refused_before_anything_is_sent() -> None:
    handler, requests = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\n")
    async with tcp_server(handler) as url, client_for(url) as http:
        with pytest.raises(httpx.UnsupportedProtocol, match="sends no HEAD request: not sent"):
            await http.head("/cgi-bin/token")
    assert requests == []


async def test_a_head_still_arriving_past_the_limit_is_a_protocol_error() -> None:
    async def endless_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Filler: ")
        for _ in range(10):  # one header, never finished: 80 KiB in pieces
            writer.write(b"x" * 8192)
            await writer.drain()
            await asyncio.sleep(0.01)
        await reader.read()

    async with tcp_server(endless_header) as url, client_for(url) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="head too large"):
            await post(http)


# ------------------------------------------------- generated hostile answers


def _framed_answer() -> st.SearchStrategy[bytes]:
    """Answers built like HTTP (status line, headers, a framing, a body), then bent."""
    header = st.sampled_from(
        [
            b"Content-Length: 27",
            b"Content-Length: 5",
            b"Content-Length: 999999",
            b"Content-Length: -1",
            b"Content-Length: 27, 28",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: gzip, chunked",
            b"Transfer-Encoding: identity",
            b"Content-Encoding: gzip",
            b"Connection: close",
            b"Connection: keep-alive",
            b"X-Odd : spaced name",
            b"NoColon",
            b"\x00\xff: binary",
        ]
    )
    status = st.sampled_from(
        [
            b"HTTP/1.1 200 OK",
            b"HTTP/1.0 200 OK",
            b"HTTP/1.1 100 Continue",
            b"HTTP/1.1 502 Bad",
            b"HTTP/2 200",
            b"HTP/1.1 2000 X",
            b"HTTP/1.1 204 No Content",
        ]
    )
    body = st.sampled_from([OK_JSON, b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n", b"", b"\x1f\x8b\x08garbage"])
    answer = st.builds(
        lambda s, hs, b: s + b"\r\n" + b"".join(h + b"\r\n" for h in hs) + b"\r\n" + b, status, st.lists(header, max_size=4), body
    )
    cut = st.integers(min_value=0, max_value=400)
    noise = st.binary(max_size=16)
    bent = st.builds(lambda a, at, n: a[:at] + n + a[at:], answer, cut, noise) | st.builds(lambda a, at: a[:at], answer, cut)
    return answer | bent | st.binary(max_size=300)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=_framed_answer())
def test_any_answer_after_the_request_was_written_is_a_response_or_possibly_applied(answer: bytes) -> None:
    """Whatever bytes come back once the request is written, the transport ends
    with an answer or an error that says "possibly applied", never "not sent",
    never another exception, and never with the token in it. (A body that
    its Content-Encoding cannot decode is httpx's DecodingError, which the
    WeChat client counts as possibly applied too.)"""

    async def run() -> httpx.Response | httpx.HTTPError:
        handler, requests = answering(answer, then_close=True)
        async with tcp_server(handler) as url, client_for(url, timeout=httpx.Timeout(2.0, read=0.5)) as http:
            try:
                return await post(http)
            except httpx.HTTPError as exc:
                assert requests, "the request was written before the answer came"
                return exc

    outcome = asyncio.run(run())
    if isinstance(outcome, httpx.HTTPError):
        possibly_applied = httpx.RemoteProtocolError | httpx.ReadError | httpx.ReadTimeout | httpx.DecodingError
        assert isinstance(outcome, possibly_applied), repr(outcome)
        assert not isinstance(outcome, http_transport.RequestNotSentError)
        if isinstance(outcome, httpx.DecodingError):  # httpx's, with zlib's error behind it: no URL in either
            assert TOKEN not in str(outcome) and TOKEN not in repr(outcome.__cause__)
        else:
            assert_clean(outcome)
    else:
        assert 100 <= outcome.status_code <= 599
