"""The HTTP side of WeChat's message push (aiohttp).

Routes:

- ``GET /wechat/events``: URL verification. The ``signature`` over token,
  ``timestamp`` and ``nonce`` is checked and ``echostr`` echoed (when WeChat
  sends ``msg_signature`` instead, the ``echostr`` is encrypted: it is
  checked and decrypted, as WXBizMsgCrypt's ``VerifyURL`` does).
- ``POST /wechat/events`` (and ``/wechat/events/{appid}``, the ``$APPID$``
  form of a third-party platform's message URL, which names the
  authorizer): the account's push. ``update_invoice_status`` is published
  on the events topic; any other message is answered ``success`` and kept
  nowhere.
- ``POST /wechat/component``: a third-party platform's authorization events
  (always encrypted), published on the component topic.

Modes: without an EncodingAESKey the webhook is in **plaintext mode** and
checks ``signature``. With a key it accepts only encrypted pushes
(``encrypt_type=aes`` and ``msg_signature``, which covers the ciphertext):
that is WeChat's **compatible** mode (a plaintext copy beside ``Encrypt``,
ignored: only the authenticated ciphertext is read) and **safe** mode. A
plaintext body is refused then, because ``signature`` does not cover the
body and anyone holding one signed URL could replay it with another body.

Answers (WeChat waits 5 s and retries three times when it gets no answer
or not a 200):

- ``200 success`` only after the record is acknowledged by Kafka (acks=all);
- ``503`` when it cannot be published within ``INVOICE_SM_WEBHOOK_PUBLISH_TIMEOUT_S``
  (WeChat retries; a retry is the same event id, so a publish that did land
  late is decided once);
- ``403`` for a bad signature or appid, ``400`` for a bad ciphertext or
  hostile or malformed XML, ``413`` for a body over
  ``INVOICE_SM_WEBHOOK_MAX_BODY_BYTES`` (refused from its Content-Length,
  before it is read; a chunked body is cut at the limit): nothing published,
  one log line and ``invoice_sm_webhook_refusals_total{reason}``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from adapters.logging import get_logger
from adapters.webhook_messages import STATUS_EVENT, EventRecord, component_record, status_report
from adapters.webhook_xml import parse_xml
from adapters.wechat_crypto import PushCipher, verify_signature
from domain.errors import BrokerError, PushRefusedError

__all__ = ["REFUSAL_REASONS", "Publish", "WebhookConfig", "WebhookMetrics", "WebhookServer"]

log = get_logger("invoice_sm.webhook")

#: ``publish(record)``: put the record on its topic (``record.topic_role``);
#: returns once the broker acknowledged it, raises ``BrokerError`` otherwise.
Publish = Callable[[EventRecord], Awaitable[None]]

REFUSAL_REASONS = ("bad_signature", "bad_ciphertext", "bad_appid", "hostile_xml", "malformed", "too_large")
_STATUS = {"bad_signature": 403, "bad_appid": 403, "too_large": 413}
ROUTES = ("events", "component", "verify")
RESULTS = ("published", "repeated", "ignored", "refused", "unavailable")
#: Ids of pushes published lately, so WeChat's retries of one push reaching
#: this instance are answered without a second record (retries reaching
#: another instance are one event anyway: same id, decided once).
RECENT_PUSH_IDS = 10_000


class WebhookMetrics:
    """The webhook's series (prefixed ``invoice_sm_``), in the service's registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.pushes_total = Counter(
            "webhook_pushes",
            "WeChat pushes answered, by route and result",
            ["route", "result"],
            namespace="invoice_sm",
            registry=r,
        )
        self.refusals_total = Counter(
            "webhook_refusals",
            "WeChat pushes refused (nothing published), by reason",
            ["reason"],
            namespace="invoice_sm",
            registry=r,
        )
        self.publish_seconds = Histogram(
            "webhook_publish_seconds",
            "Time to have one push acknowledged by Kafka",
            namespace="invoice_sm",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        for route in ROUTES:
            for result in RESULTS:
                self.pushes_total.labels(route, result)
        for reason in REFUSAL_REASONS:
            self.refusals_total.labels(reason)


@dataclass(frozen=True)
class WebhookConfig:
    """What the server needs to check pushes. The token and key stay out of ``repr``."""

    token: str
    #: For ``/wechat/events``: the account's appid (component mode: the component appid). ``None``: plaintext mode.
    events_cipher: PushCipher | None
    #: For ``/wechat/component``; ``None`` when not a third-party platform.
    component_cipher: PushCipher | None
    max_body_bytes: int = 65536
    publish_timeout_s: float = 3.0

    def __repr__(self) -> str:
        return f"WebhookConfig(events_cipher={self.events_cipher!r}, component_cipher={self.component_cipher!r})"


class WebhookServer:
    """WeChat's pushes in; ``publish`` puts what they become on the topics."""

    def __init__(
        self,
        config: WebhookConfig,
        publish: Publish,
        *,
        metrics: WebhookMetrics | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._config = config
        self._publish = publish
        self.metrics = metrics or WebhookMetrics()
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self._bound: int | None = None
        self._recent: OrderedDict[str, None] = OrderedDict()
        self.app = web.Application(client_max_size=config.max_body_bytes)
        self.app.router.add_get("/wechat/events", self._verify)
        self.app.router.add_get("/wechat/events/{appid}", self._verify)
        self.app.router.add_post("/wechat/events", self._events)
        self.app.router.add_post("/wechat/events/{appid}", self._events)
        self.app.router.add_post("/wechat/component", self._component)

    @property
    def port(self) -> int:
        """The port actually bound. Raises ``RuntimeError`` before ``start()``."""
        if self._bound is None:
            raise RuntimeError("WebhookServer is not started")
        return self._bound

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        # After refusing a body unread, drain it for at most half a second (so an
        # honest client gets to read its 413), never aiohttp's default 10 s.
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, lingering_time=0.5)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound = int(runner.addresses[0][1])
        log.info("webhook_listening", url=self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            self._bound = None

    # ---------------------------------------------------------------- routes

    async def _verify(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            echostr = q.get("echostr", "")
            if "msg_signature" in q:
                cipher = self._config.events_cipher
                if cipher is None:
                    raise PushRefusedError("bad_ciphertext", "encrypted echostr but no EncodingAESKey is configured")
                verify_signature(q.get("msg_signature"), self._config.token, q.get("timestamp"), q.get("nonce"), echostr)
                echostr = cipher.decrypt(echostr).decode("utf-8", "replace")
            else:
                verify_signature(q.get("signature"), self._config.token, q.get("timestamp"), q.get("nonce"))
        except PushRefusedError as exc:
            return self._refused("verify", request, exc)
        self.metrics.pushes_total.labels("verify", "published").inc()
        log.info("wechat_url_verified")
        return web.Response(text=echostr)

    async def _events(self, request: web.Request) -> web.Response:
        try:
            fields = await self._read_push(request, self._config.events_cipher, require_encryption=False)
            if fields.get("MsgType") != "event" or fields.get("Event") != STATUS_EVENT:
                return self._ignored("events", fields.get("Event") or fields.get("MsgType") or "")
            record = status_report(fields, appid=request.match_info.get("appid", ""))
        except PushRefusedError as exc:
            return self._refused("events", request, exc)
        return await self._publish_answer("events", record, push=STATUS_EVENT, key=record.key.decode())

    async def _component(self, request: web.Request) -> web.Response:
        cipher = self._config.component_cipher
        try:
            if cipher is None:
                raise PushRefusedError(
                    "bad_ciphertext", "component pushes need INVOICE_SM_WECHAT_ENCODING_AES_KEY and a component appid"
                )
            fields = await self._read_push(request, cipher, require_encryption=True)
            received = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            record = component_record(fields, component_appid=cipher.appid, received_at=received)
        except PushRefusedError as exc:
            return self._refused("component", request, exc)
        if record is None:
            return self._ignored("component", fields.get("InfoType", ""))
        return await self._publish_answer("component", record, push=fields.get("InfoType", ""), key=record.key.decode())

    # --------------------------------------------------------------- helpers

    async def _read_push(self, request: web.Request, cipher: PushCipher | None, *, require_encryption: bool) -> dict[str, str]:
        """The authenticated fields of a push (decrypted when encrypted)."""
        length = request.content_length
        if length is not None and length > self._config.max_body_bytes:
            raise PushRefusedError("too_large", f"body of {length} bytes > {self._config.max_body_bytes}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise PushRefusedError("too_large", f"body over {self._config.max_body_bytes} bytes") from None
        q = request.query
        token = self._config.token
        if cipher is None:
            if require_encryption:
                raise PushRefusedError("bad_ciphertext", "no EncodingAESKey is configured")
            # Plaintext mode: the signature is checked before the body is parsed.
            verify_signature(q.get("signature"), token, q.get("timestamp"), q.get("nonce"))
            return parse_xml(body)
        if q.get("encrypt_type") != "aes" or "msg_signature" not in q:
            raise PushRefusedError(
                "bad_signature", "an EncodingAESKey is configured: only encrypted pushes (msg_signature) are taken"
            )
        envelope = parse_xml(body)
        encrypted = envelope.get("Encrypt")
        if not encrypted:
            raise PushRefusedError("malformed", "encrypted push without <Encrypt>")
        verify_signature(q.get("msg_signature"), token, q.get("timestamp"), q.get("nonce"), encrypted)
        return parse_xml(cipher.decrypt(encrypted))

    async def _publish_answer(self, route: str, record: EventRecord, *, push: str, key: str) -> web.Response:
        if record.event_id in self._recent:
            self.metrics.pushes_total.labels(route, "repeated").inc()
            log.info("wechat_push_repeated", route=route, push=push, key=key, event_id=record.event_id)
            return web.Response(text="success")
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self._publish(record), self._config.publish_timeout_s)
        except (BrokerError, TimeoutError) as exc:
            # Never "success" for what is not on the topic: WeChat retries it.
            self.metrics.pushes_total.labels(route, "unavailable").inc()
            log.warning(
                "wechat_push_not_published",
                route=route,
                push=push,
                key=key,
                event_id=record.event_id,
                error=type(exc).__name__,
                detail=str(exc)[:200],
            )
            return web.Response(status=503, text="unavailable")
        self.metrics.publish_seconds.observe(time.perf_counter() - started)
        self._recent[record.event_id] = None
        if len(self._recent) > RECENT_PUSH_IDS:
            self._recent.popitem(last=False)
        self.metrics.pushes_total.labels(route, "published").inc()
        log.info("wechat_push_published", route=route, push=push, key=key, event_id=record.event_id)
        return web.Response(text="success")

    def _ignored(self, route: str, what: str) -> web.Response:
        self.metrics.pushes_total.labels(route, "ignored").inc()
        log.info("wechat_push_ignored", route=route, push=what[:64])
        return web.Response(text="success")

    def _refused(self, route: str, request: web.Request, exc: PushRefusedError) -> web.Response:
        self.metrics.pushes_total.labels(route, "refused").inc()
        self.metrics.refusals_total.labels(exc.reason).inc()
        log.warning("wechat_push_refused", route=route, reason=exc.reason, detail=exc.detail, remote=request.remote)
        response = web.Response(status=_STATUS.get(exc.reason, 400), text=exc.reason)
        if exc.reason == "too_large":
            response.force_close()  # the rest of the body is never read: this connection is done
        return response
