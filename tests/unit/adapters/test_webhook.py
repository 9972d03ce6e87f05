"""The webhook in memory: hardened XML, the three modes, refusals, retries,
answers when Kafka is slow. The publisher is a fake that records what it is
handed; the broker tests are in tests/integration/test_webhook.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
import pytest

from adapters import wire
from adapters.webhook_messages import EventRecord, status_report
from adapters.webhook_server import WebhookConfig, WebhookServer
from adapters.webhook_xml import build_xml, parse_xml
from adapters.wechat_crypto import PushCipher, signature
from domain.errors import BrokerError, PushRefusedError
from domain.status import WECHAT_STATUS_REPORTED, Origin, ReimburseStatus

TOKEN = "push-token-under-test"
KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
APPID = "wx1234567890abcdef"
COMPONENT_APPID = "wxcomponent0000001"
CARD, CODE = "pjZ8Yt7Um2jYxzneP8GomnxoVFWo", "186921658591"

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<xml><MsgType>event</MsgType><Event>update_invoice_status</Event><Status>&lol9;</Status></xml>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><MsgType>event</MsgType><Event>update_invoice_status</Event><CardId>&xxe;</CardId></xml>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?><!DOCTYPE xml SYSTEM "http://127.0.0.1:1/evil.dtd"><xml><a>1</a></xml>"""


def status_fields(status: str = "INVOICE_REIMBURSE_CLOSURE", *, create_time: int = 1478068440) -> dict[str, str | int]:
    # The XML of wechatpy's test_parse_update_invoice_status_event.
    return {
        "ToUserName": "gh_9e1765b5568e",
        "FromUserName": "ojZ8Ytz4lESgdWZ34L_R1TvB2Kds",
        "CreateTime": create_time,
        "MsgType": "event",
        "Event": "update_invoice_status",
        "Status": status,
        "CardId": CARD,
        "Code": CODE,
    }


def signed_query(*, encrypt: str | None = None, timestamp: str = "1700000000", nonce: str = "n0nce") -> dict[str, str]:
    if encrypt is None:
        return {"signature": signature(TOKEN, timestamp, nonce), "timestamp": timestamp, "nonce": nonce, "openid": "o1"}
    return {
        "signature": signature(TOKEN, timestamp, nonce),
        "msg_signature": signature(TOKEN, timestamp, nonce, encrypt),
        "timestamp": timestamp,
        "nonce": nonce,
        "encrypt_type": "aes",
    }


def encrypted_body(cipher: PushCipher, inner: bytes, *, compatible: bytes | None = None) -> tuple[bytes, str]:
    encrypted = cipher.encrypt(inner)
    if compatible is None:  # safe mode: only the ciphertext
        return build_xml({"ToUserName": "gh_9e1765b5568e", "Encrypt": encrypted}), encrypted
    return compatible.replace(b"</xml>", f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>".encode()), encrypted


class FakePublisher:
    def __init__(self) -> None:
        self.records: list[EventRecord] = []
        self.delay_s = 0.0
        self.fail: BaseException | None = None

    async def publish(self, record: EventRecord) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        self.records.append(record)


async def _serve(config: WebhookConfig, publisher: FakePublisher) -> AsyncIterator[tuple[WebhookServer, httpx.AsyncClient]]:
    server = WebhookServer(config, publisher.publish)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            yield server, client
    finally:
        await server.stop()


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
async def plaintext(publisher: FakePublisher) -> AsyncIterator[tuple[WebhookServer, httpx.AsyncClient]]:
    async for pair in _serve(WebhookConfig(TOKEN, None, None, publish_timeout_s=0.5), publisher):
        yield pair


@pytest.fixture
async def encrypted(publisher: FakePublisher) -> AsyncIterator[tuple[WebhookServer, httpx.AsyncClient]]:
    config = WebhookConfig(TOKEN, PushCipher(KEY, APPID), PushCipher(KEY, COMPONENT_APPID), publish_timeout_s=0.5)
    async for pair in _serve(config, publisher):
        yield pair


def _refusals(server: WebhookServer, reason: str) -> float:
    return server.metrics.refusals_total.labels(reason)._value.get()


# ----------------------------------------------------------------- XML


def test_the_xml_of_a_status_push_reads_as_its_fields() -> None:
    fields = parse_xml(build_xml(status_fields()))
    assert fields["Event"] == "update_invoice_status"
    assert (fields["CardId"], fields["Code"], fields["Status"]) == (CARD, CODE, "INVOICE_REIMBURSE_CLOSURE")
    assert fields["CreateTime"] == "1478068440"


@pytest.mark.parametrize(
    "body", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD], ids=["billion_laughs", "external_entity", "external_dtd"]
)
def test_hostile_xml_is_refused_before_any_entity_is_expanded(body: bytes) -> None:
    with pytest.raises(PushRefusedError) as info:
        parse_xml(body)
    # Refused at the DOCTYPE, before an entity is defined, let alone expanded.
    assert info.value.reason == "hostile_xml" and "document type declaration" in info.value.detail
    assert "passwd" not in str(info.value)


@pytest.mark.parametrize("body", [b"", b"<xml><a>", b"<html/>", b"\xff\xfe<xml/>", b"<xml><a>&undefined;</a></xml>"])
def test_malformed_xml_is_refused(body: bytes) -> None:
    with pytest.raises(PushRefusedError) as info:
        parse_xml(body)
    assert info.value.reason in ("malformed", "hostile_xml")


def test_too_many_or_too_deep_elements_are_refused() -> None:
    with pytest.raises(PushRefusedError, match="elements"):
        parse_xml(b"<xml>" + b"<a>1</a>" * 1000 + b"</xml>")
    with pytest.raises(PushRefusedError, match="deeper"):
        parse_xml(b"<xml>" + b"<a>" * 10 + b"</a>" * 10 + b"</xml>")


def test_cdata_that_contains_its_own_terminator_round_trips() -> None:
    assert parse_xml(build_xml({"Content": "a]]>b<c>&"}))["Content"] == "a]]>b<c>&"


# ------------------------------------------------------------ messages


def test_a_status_push_becomes_a_wechat_report_keyed_by_the_invoice_key() -> None:
    record = status_report({k: str(v) for k, v in status_fields().items()}, appid=APPID)
    assert record.topic_role == "events" and record.key == f"{CARD}/{CODE}".encode()
    event = wire.decode_event(record.key, record.value, list(record.headers))
    assert event.event_type == WECHAT_STATUS_REPORTED and event.origin is Origin.WECHAT
    assert event.requested_status is ReimburseStatus.CLOSURE and event.appid == APPID
    assert msgspec.json.decode(record.value)["time"] == "2016-11-02T06:34:00Z"


def test_the_event_id_is_the_same_for_the_same_push_and_differs_for_another() -> None:
    fields = {k: str(v) for k, v in status_fields().items()}
    assert status_report(fields).event_id == status_report(dict(fields)).event_id
    assert status_report(fields).event_id != status_report({**fields, "Status": "INVOICE_REIMBURSE_LOCK"}).event_id
    assert status_report(fields).event_id != status_report({**fields, "CreateTime": "1478068441"}).event_id


@pytest.mark.parametrize("change", [{"Status": "PAID"}, {"CardId": "a/b"}, {"CreateTime": "soon"}, {"Code": ""}])
def test_a_status_push_that_would_not_decide_is_refused(change: dict[str, str]) -> None:
    fields = {**{k: str(v) for k, v in status_fields().items()}, **change}
    with pytest.raises(PushRefusedError) as info:
        status_report(fields)
    assert info.value.reason == "malformed"


# ---------------------------------------------------------- plaintext mode


async def test_url_verification_echoes_echostr_when_the_signature_holds(plaintext, publisher) -> None:
    _, client = plaintext
    ok = await client.get("/wechat/events", params={**signed_query(), "echostr": "echo-123"})
    assert (ok.status_code, ok.text) == (200, "echo-123")
    bad = await client.get("/wechat/events", params={**signed_query(), "signature": "0" * 40, "echostr": "echo-123"})
    assert bad.status_code == 403 and "echo-123" not in bad.text
    assert publisher.records == []


async def test_a_plaintext_status_push_is_published_and_answered_success(plaintext, publisher) -> None:
    _, client = plaintext
    answer = await client.post("/wechat/events", params=signed_query(), content=build_xml(status_fields()))
    assert (answer.status_code, answer.text) == (200, "success")
    (record,) = publisher.records
    assert record.key == f"{CARD}/{CODE}".encode()


async def test_a_bad_signature_is_refused_and_nothing_is_published(plaintext, publisher) -> None:
    server, client = plaintext
    query = {**signed_query(), "nonce": "another"}
    answer = await client.post("/wechat/events", params=query, content=build_xml(status_fields()))
    assert answer.status_code == 403
    assert publisher.records == []
    assert _refusals(server, "bad_signature") == 1


async def test_other_messages_are_answered_success_and_kept_nowhere(plaintext, publisher) -> None:
    _, client = plaintext
    text: dict[str, str | int] = {
        "ToUserName": "gh_1",
        "FromUserName": "o1",
        "CreateTime": 1,
        "MsgType": "text",
        "Content": "hi",
        "MsgId": 7,
    }
    answer = await client.post("/wechat/events", params=signed_query(), content=build_xml(text))
    assert (answer.status_code, answer.text) == (200, "success")
    assert publisher.records == []


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion_laughs", "external_entity"])
async def test_hostile_xml_is_refused_and_nothing_is_published(plaintext, publisher, body: bytes) -> None:
    server, client = plaintext
    answer = await client.post("/wechat/events", params=signed_query(), content=body)
    assert answer.status_code == 400 and answer.text == "hostile_xml"
    assert publisher.records == []
    assert _refusals(server, "hostile_xml") == 1


async def test_a_10_mb_body_is_refused_unread_and_nothing_is_published(plaintext, publisher) -> None:
    server, client = plaintext
    body = build_xml(status_fields()) + b" " * (10 * 1024 * 1024)
    answer = await client.post("/wechat/events", params=signed_query(), content=body)
    assert answer.status_code == 413
    assert publisher.records == []
    assert _refusals(server, "too_large") == 1


async def test_a_10_mb_chunked_body_without_length_is_cut_and_refused(plaintext, publisher) -> None:
    _, client = plaintext

    async def chunks() -> AsyncIterator[bytes]:
        yield build_xml(status_fields())[:-6]
        for _ in range(160):
            yield b" " * 65536

    try:
        answer = await client.post("/wechat/events", params=signed_query(), content=chunks())
        assert answer.status_code == 413
    except httpx.HTTPError:
        pass  # the server may close the connection while the client still writes: refused either way
    assert publisher.records == []


async def test_the_same_push_three_times_is_published_once(plaintext, publisher) -> None:
    server, client = plaintext
    body = build_xml(status_fields())
    for nonce in ("try1", "try2", "try3"):  # WeChat signs each retry afresh
        answer = await client.post("/wechat/events", params=signed_query(nonce=nonce), content=body)
        assert answer.text == "success"
    assert len(publisher.records) == 1
    assert server.metrics.pushes_total.labels("events", "repeated")._value.get() == 2


async def test_a_retry_after_a_failed_publish_carries_the_same_event_id(plaintext, publisher) -> None:
    _, client = plaintext
    body = build_xml(status_fields())
    publisher.fail = BrokerError("down")
    assert (await client.post("/wechat/events", params=signed_query(nonce="a"), content=body)).status_code == 503
    publisher.fail = None
    assert (await client.post("/wechat/events", params=signed_query(nonce="b"), content=body)).text == "success"
    (record,) = publisher.records
    assert record.event_id == status_report({k: str(v) for k, v in status_fields().items()}).event_id


async def test_when_kafka_cannot_take_the_push_in_time_the_answer_is_not_success(plaintext, publisher) -> None:
    server, client = plaintext
    publisher.delay_s = 5  # the server gives up at its publish timeout (0.5 s here)
    slow = await client.post("/wechat/events", params=signed_query(), content=build_xml(status_fields()))
    assert slow.status_code == 503 and slow.text != "success"
    publisher.delay_s, publisher.fail = 0, BrokerError("broker down")
    down = await client.post("/wechat/events", params=signed_query(), content=build_xml(status_fields()))
    assert down.status_code == 503
    assert publisher.records == []
    assert server.metrics.pushes_total.labels("events", "unavailable")._value.get() == 2


# ---------------------------------------------------- compatible and safe mode


async def test_safe_mode_push_is_decrypted_and_published(encrypted, publisher) -> None:
    _, client = encrypted
    body, ciphertext = encrypted_body(PushCipher(KEY, APPID), build_xml(status_fields()))
    answer = await client.post("/wechat/events/" + APPID, params=signed_query(encrypt=ciphertext), content=body)
    assert (answer.status_code, answer.text) == (200, "success")
    (record,) = publisher.records
    assert wire.decode_event(record.key, record.value).appid == APPID


async def test_compatible_mode_reads_the_ciphertext_not_the_plaintext_copy(encrypted, publisher) -> None:
    _, client = encrypted
    forged_copy = build_xml(status_fields("INVOICE_REIMBURSE_INIT"))
    inner = build_xml(status_fields("INVOICE_REIMBURSE_LOCK"))
    body, ciphertext = encrypted_body(PushCipher(KEY, APPID), inner, compatible=forged_copy)
    answer = await client.post("/wechat/events", params=signed_query(encrypt=ciphertext), content=body)
    assert answer.text == "success"
    (record,) = publisher.records
    assert wire.decode_event(record.key, record.value).requested_status is ReimburseStatus.LOCK


async def test_with_a_key_configured_a_plaintext_push_is_refused(encrypted, publisher) -> None:
    _, client = encrypted
    answer = await client.post("/wechat/events", params=signed_query(), content=build_xml(status_fields()))
    assert answer.status_code == 403
    assert publisher.records == []


async def test_a_tampered_ciphertext_is_refused_and_nothing_is_published(encrypted, publisher) -> None:
    import base64

    server, client = encrypted
    ciphertext = PushCipher(KEY, APPID).encrypt(build_xml(status_fields()))
    raw = bytearray(base64.b64decode(ciphertext))
    raw[40] ^= 0xFF
    tampered = base64.b64encode(bytes(raw)).decode()
    body = build_xml({"ToUserName": "gh_1", "Encrypt": tampered})
    # Signed over the tampered text: only decryption can tell.
    answer = await client.post("/wechat/events", params=signed_query(encrypt=tampered), content=body)
    assert answer.status_code in (400, 403)
    # Signed over the original but carrying the tampered text: the signature tells.
    answer = await client.post("/wechat/events", params=signed_query(encrypt=ciphertext), content=body)
    assert answer.status_code == 403
    assert publisher.records == []
    assert _refusals(server, "bad_signature") == 1


async def test_a_push_encrypted_for_another_appid_is_refused(encrypted, publisher) -> None:
    server, client = encrypted
    body, ciphertext = encrypted_body(PushCipher(KEY, "wxsomeoneelse00000"), build_xml(status_fields()))
    answer = await client.post("/wechat/events", params=signed_query(encrypt=ciphertext), content=body)
    assert answer.status_code == 403
    assert publisher.records == []
    assert _refusals(server, "bad_appid") == 1


async def test_encrypted_url_verification_decrypts_echostr(encrypted) -> None:
    _, client = encrypted
    echostr = PushCipher(KEY, APPID).encrypt(b"1616140317555161061")
    query = signed_query(encrypt=echostr)
    answer = await client.get("/wechat/events?" + urlencode({**query, "echostr": echostr}))
    assert (answer.status_code, answer.text) == (200, "1616140317555161061")


# -------------------------------------------------------------- component


def component_push(info_type: str, **extra: str | int) -> bytes:
    return build_xml({"AppId": COMPONENT_APPID, "CreateTime": 1413192605, "InfoType": info_type, **extra})


async def test_a_verify_ticket_goes_to_the_component_topic_keyed_by_the_component_appid(encrypted, publisher) -> None:
    _, client = encrypted
    inner = component_push("component_verify_ticket", ComponentVerifyTicket="ticket@@@one")
    body, ciphertext = encrypted_body(PushCipher(KEY, COMPONENT_APPID), inner)
    answer = await client.post("/wechat/component", params=signed_query(encrypt=ciphertext), content=body)
    assert answer.text == "success"
    (record,) = publisher.records
    assert record.topic_role == "component" and record.key == COMPONENT_APPID.encode()
    decoded = wire.decode_component_record(record.value)
    assert (decoded.info_type, decoded.ticket) == ("component_verify_ticket", "ticket@@@one")


async def test_authorization_events_are_keyed_per_authorizer(encrypted, publisher) -> None:
    _, client = encrypted
    for info_type in ("authorized", "updateauthorized", "unauthorized"):
        inner = component_push(info_type, AuthorizerAppid="wxauthorizer000001", AuthorizationCode="code")
        body, ciphertext = encrypted_body(PushCipher(KEY, COMPONENT_APPID), inner)
        answer = await client.post("/wechat/component", params=signed_query(encrypt=ciphertext), content=body)
        assert answer.text == "success"
    assert [r.key for r in publisher.records] == [f"{COMPONENT_APPID}/wxauthorizer000001".encode()] * 3
    kinds = [wire.decode_component_record(r.value).info_type for r in publisher.records]
    assert kinds == ["authorized", "updateauthorized", "unauthorized"]
    assert all(b"code" not in r.value for r in publisher.records)  # the authorization code is not kept


async def test_a_plaintext_component_push_is_refused(encrypted, publisher) -> None:
    _, client = encrypted
    inner = component_push("component_verify_ticket", ComponentVerifyTicket="forged")
    answer = await client.post("/wechat/component", params=signed_query(), content=inner)
    assert answer.status_code == 403
    assert publisher.records == []


async def test_a_component_push_encrypted_for_the_account_appid_is_refused(encrypted, publisher) -> None:
    _, client = encrypted
    inner = component_push("component_verify_ticket", ComponentVerifyTicket="t")
    body, ciphertext = encrypted_body(PushCipher(KEY, APPID), inner)
    answer = await client.post("/wechat/component", params=signed_query(encrypt=ciphertext), content=body)
    assert answer.status_code == 403
    assert publisher.records == []


# ------------------------------------------------------- the component feed


class RecordingProvider:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def set_verify_ticket(self, ticket: str) -> None:
        self.calls.append(("ticket", ticket))

    def revoke_authorizer(self, appid: str) -> None:
        self.calls.append(("revoke", appid))

    def authorization_changed(self, appid: str) -> None:
        self.calls.append(("changed", appid))


def _record(info_type: wire.ComponentInfoType, create_time: int, **extra: Any) -> wire.ComponentRecord:
    return wire.ComponentRecord(
        id=f"r{create_time}",
        info_type=info_type,
        component_appid=COMPONENT_APPID,
        create_time=create_time,
        received_at="2026-12-02T00:00:00Z",
        **extra,
    )


def test_the_feed_applies_the_newest_ticket_and_skips_an_older_one() -> None:
    from adapters.component_feed import ComponentFeed
    from adapters.settings import load_settings

    provider = RecordingProvider()
    feed = ComponentFeed(load_settings(wechat_component_appid=COMPONENT_APPID), provider)
    assert feed.apply(_record("component_verify_ticket", 100, ticket="t100"))
    assert not feed.apply(_record("component_verify_ticket", 50, ticket="t50"))  # published late by another webhook
    assert feed.apply(_record("component_verify_ticket", 700, ticket="t700"))
    other = msgspec.structs.replace(_record("component_verify_ticket", 900, ticket="theirs"), component_appid="wxanother")
    assert not feed.apply(other)
    assert provider.calls == [("ticket", "t100"), ("ticket", "t700")]


def test_the_feed_follows_each_authorizer_s_latest_authorization() -> None:
    from adapters.component_feed import ComponentFeed
    from adapters.settings import load_settings

    provider = RecordingProvider()
    feed = ComponentFeed(load_settings(wechat_component_appid=COMPONENT_APPID), provider)
    feed.apply(_record("authorized", 10, authorizer_appid="wxa1"))
    feed.apply(_record("unauthorized", 20, authorizer_appid="wxa1"))
    feed.apply(_record("updateauthorized", 15, authorizer_appid="wxa1"))  # older than the revocation: skipped
    feed.apply(_record("authorized", 30, authorizer_appid="wxa1"))
    assert provider.calls == [("changed", "wxa1"), ("revoke", "wxa1"), ("changed", "wxa1")]


async def test_the_provider_refuses_a_revoked_authorizer_until_it_authorizes_again() -> None:
    from adapters.tokens import ComponentTokenProvider
    from domain.errors import AuthorizerUnauthorizedError

    def wechat(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("api_component_token"):
            return httpx.Response(200, json={"component_access_token": "cat", "expires_in": 7200})
        return httpx.Response(200, json={"authorizer_access_token": "aat", "expires_in": 7200})

    async with httpx.AsyncClient(transport=httpx.MockTransport(wechat)) as http:
        provider = ComponentTokenProvider(
            http,
            component_appid=COMPONENT_APPID,
            component_secret="s",
            verify_ticket="t",
            refresh_tokens={"wxa1": "r1", "wxa2": "r2"},
        )
        assert (await provider.get("wxa1")).value == "aat"
        provider.revoke_authorizer("wxa1")
        with pytest.raises(AuthorizerUnauthorizedError) as info:
            await provider.get("wxa1")
        assert info.value.errcode == 61003 and "wxa1" in str(info.value) and info.value.retriable is False
        assert (await provider.get("wxa2")).value == "aat"
        refreshes = provider.refreshes
        provider.authorization_changed("wxa1")
        assert (await provider.get("wxa1")).value == "aat"
        assert provider.refreshes == refreshes + 1  # a fresh token, not the one cached before the revocation
