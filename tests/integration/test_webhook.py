"""The webhook on the real broker: pushes become events the processor decides;
refused pushes publish nothing; WeChat's retries are one event."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from adapters import wire
from adapters.settings import Settings
from adapters.webhook_xml import build_xml
from adapters.wechat_crypto import PushCipher, signature
from consumers.webhook import run_webhook
from domain.status import ReimburseStatus as S
from tests.factories import APPID, card, event
from tests.support.kafka_io import produce_events, read_topic, values, wait_for_count
from tests.support.services import free_port, live_states, running

pytestmark = pytest.mark.broker

TOKEN = "integration-push-token"
KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"


def push_settings(make_settings: Callable[..., Settings], **overrides: object) -> Settings:
    return make_settings(
        topic_component=f"t{uuid.uuid4().hex[:8]}.component",
        webhook_port=free_port(),
        wechat_push_token=TOKEN,
        wechat_encoding_aes_key=KEY,
        wechat_appid=APPID,
        wechat_secret="s",
        **overrides,
    )


@contextlib.asynccontextmanager
async def webhook(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_webhook(settings, stop, started=started))
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what stopped the start
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.webhook_port}", timeout=10) as client:
            yield client
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def status_push(card_id: str, code: str, status: S, create_time: int = 1764000000) -> bytes:
    return build_xml(
        {
            "ToUserName": "gh_9e1765b5568e",
            "FromUserName": "ojZ8Ytz4lESgdWZ34L_R1TvB2Kds",
            "CreateTime": create_time,
            "MsgType": "event",
            "Event": "update_invoice_status",
            "Status": status.value,
            "CardId": card_id,
            "Code": code,
        }
    )


def safe_mode(inner: bytes, *, nonce: str = "n1", appid: str = APPID) -> tuple[dict[str, str], bytes]:
    encrypted = PushCipher(KEY, appid).encrypt(inner)
    query = {
        "timestamp": "1764000001",
        "nonce": nonce,
        "encrypt_type": "aes",
        "signature": signature(TOKEN, "1764000001", nonce),
        "msg_signature": signature(TOKEN, "1764000001", nonce, encrypted),
    }
    return query, build_xml({"ToUserName": "gh_9e1765b5568e", "Encrypt": encrypted})


async def test_a_reimburser_s_closure_pushed_by_wechat_is_followed_and_never_echoed(make_settings) -> None:
    settings = push_settings(make_settings)
    card_id, code = card(1)
    key = f"{card_id}/{code}"
    async with running(settings, in_memory_state=True), webhook(settings) as client:
        await produce_events(settings, [event(card_id, code, S.LOCK)])
        await wait_for_count(settings, settings.topic_outcomes, 1)
        query, body = safe_mode(status_push(card_id, code, S.CLOSURE))
        answer = await client.post(f"/wechat/events/{APPID}", params=query, content=body)
        assert (answer.status_code, answer.text) == (200, "success")
        await produce_events(settings, [event(card_id, code, S.CANCEL)])  # a later upstream red-flush
        outcomes = values(await wait_for_count(settings, settings.topic_outcomes, 3))
    assert [(o["type"], o["data"]["origin"]) for o in outcomes] == [
        ("invoice.status.accepted", "upstream"),
        ("invoice.status.accepted", "wechat"),
        ("invoice.status.rejected", "upstream"),
    ]
    reported = outcomes[1]["data"]
    assert (reported["from_status"], reported["to_status"], reported["legal"], reported["version"]) == (
        "INVOICE_REIMBURSE_LOCK",
        "INVOICE_REIMBURSE_CLOSURE",
        True,
        2,
    )
    assert outcomes[2]["data"]["reason"] == "terminal_state"
    state = (await live_states(settings))[key]
    assert (state.status, state.version) == (S.CLOSURE, 2)
    (pushed,) = [r for r in await read_topic(settings, settings.topic_events) if b"status_reported" in (r.value or b"")]
    assert pushed.key == key.encode()  # keyed (and so partitioned) like the invoice's other events


async def test_the_same_push_delivered_three_times_is_one_event_and_one_outcome(make_settings) -> None:
    settings = push_settings(make_settings)
    card_id, code = card(2)
    inner = status_push(card_id, code, S.LOCK)
    async with running(settings, in_memory_state=True), webhook(settings) as client:
        for nonce in ("retry-1", "retry-2", "retry-3"):
            query, body = safe_mode(inner, nonce=nonce)  # each retry encrypted and signed afresh
            assert (await client.post("/wechat/events", params=query, content=body)).text == "success"
        await wait_for_count(settings, settings.topic_outcomes, 1)
        events = await read_topic(settings, settings.topic_events)
        outcomes = values(await read_topic(settings, settings.topic_outcomes))
    assert len(events) == 1
    assert [o["type"] for o in outcomes] == ["invoice.status.accepted"]
    assert outcomes[0]["data"]["origin"] == "wechat"


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
    b"<xml><MsgType>event</MsgType><Event>update_invoice_status</Event><Status>&lol2;</Status></xml>"
)
EXTERNAL_ENTITY = (
    b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b"<xml><MsgType>event</MsgType><Event>update_invoice_status</Event><CardId>&xxe;</CardId></xml>"
)


async def test_refused_pushes_publish_nothing(make_settings) -> None:
    settings = push_settings(make_settings)
    card_id, code = card(3)
    inner = status_push(card_id, code, S.LOCK)
    query, body = safe_mode(inner)
    encrypted = body.split(b"<![CDATA[")[2].split(b"]]>")[0].decode()
    raw = bytearray(base64.b64decode(encrypted))
    raw[20] ^= 0x55
    tampered = base64.b64encode(bytes(raw)).decode()
    tampered_query = {**query, "msg_signature": signature(TOKEN, query["timestamp"], query["nonce"], tampered)}
    hostile = []
    for xml in (BILLION_LAUGHS, EXTERNAL_ENTITY):
        hostile.append(safe_mode(xml))
    cases = [
        ("bad signature", {**query, "msg_signature": "0" * 40}, body, 403),
        ("tampered ciphertext", tampered_query, build_xml({"ToUserName": "gh_1", "Encrypt": tampered}), None),
        ("other appid", *safe_mode(inner, appid="wx0000000000000000"), 403),
        ("billion laughs", *hostile[0], 400),
        ("external entity", *hostile[1], 400),
        ("billion laughs as envelope", query, BILLION_LAUGHS, 400),
        ("10 MB body", query, body + b" " * (10 * 1024 * 1024), 413),
    ]
    async with webhook(settings) as client:
        for name, q, b, status in cases:
            answer = await client.post("/wechat/events", params=q, content=b)
            assert answer.status_code >= 400, name
            if status is not None:
                assert answer.status_code == status, name
            assert answer.text != "success", name
        # A good push afterwards is published: the refusals did not stop the webhook.
        assert (await client.post("/wechat/events", params=query, content=body)).text == "success"
    records = await read_topic(settings, settings.topic_events)
    assert len(records) == 1
    assert wire.decode_event(records[0].key, records[0].value).requested_status is S.LOCK
