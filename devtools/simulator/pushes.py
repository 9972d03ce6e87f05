"""WeChat's side of the message push: what the simulator sends to a webhook.

Configured through the control API (``POST /_sim/pushes/config``) with the
webhook's URLs, the push Token, the EncodingAESKey, the appids and the
mode, the simulator pushes as WeChat does:

- ``update_invoice_status`` after a reimburser's change (``POST /_sim/reimburse``),
  to ``events_url`` in **plaintext** (``signature`` only), **compatible**
  (the plaintext fields plus ``Encrypt``, ``encrypt_type=aes`` and
  ``msg_signature``) or **safe** mode (only ``Encrypt``);
- ``component_verify_ticket`` every ``ticket_interval_s`` of simulated time,
  and ``authorized`` / ``unauthorized`` on request, to ``component_url``,
  always encrypted for the component appid (as WeChat does);
- each attempt freshly signed (new ``timestamp`` and ``nonce``; the body,
  and so the pushed message, is the same), retried up to ``retries`` (3)
  times when the answer is not a ``200`` with ``success`` (or empty) within
  ``answer_timeout_s`` (5). Every attempt is recorded (``GET /_sim/pushes``).

The signing and encryption are the service's own ``adapters.wechat_crypto``:
the vectors in ``tests/unit/adapters/test_wechat_crypto.py`` pin them to WeChat's
published samples, so the simulator cannot drift into a private dialect.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import threading
from collections.abc import Callable
from typing import Literal

import httpx
import msgspec

from adapters.webhook_xml import build_xml
from adapters.wechat_crypto import PushCipher, signature

Mode = Literal["plaintext", "compatible", "safe"]


class PushConfig(msgspec.Struct, frozen=True, kw_only=True):
    events_url: str | None = None
    component_url: str | None = None
    token: str
    encoding_aes_key: str | None = None
    appid: str | None = None
    component_appid: str | None = None
    mode: Mode = "safe"
    retries: int = 3
    answer_timeout_s: float = 5.0

    def __repr__(self) -> str:  # the token and key stay out of logs
        return f"PushConfig(events_url={self.events_url!r}, component_url={self.component_url!r}, mode={self.mode!r})"


class PushAttempt(msgspec.Struct, frozen=True, kw_only=True):
    push_id: int
    kind: str  #: the Event or InfoType pushed
    attempt: int
    http_status: int | None
    answer: str | None
    ok: bool
    error: str | None = None


class Pusher:
    """Sends pushes with WeChat's signatures, encryption and retries; records every attempt."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self.config: PushConfig | None = None
        self._lock = threading.Lock()
        self._attempts: list[PushAttempt] = []
        self._ids = itertools.count(1)
        self._tasks: dict[int, asyncio.Task[bool]] = {}

    def configure(self, config: PushConfig) -> None:
        if config.mode != "plaintext" or config.component_url:
            if not config.encoding_aes_key:
                raise ValueError("modes compatible and safe, and component pushes, need encoding_aes_key")
            PushCipher(config.encoding_aes_key, "x")  # a malformed key fails here, not at the first push
        self.config = config

    def attempts(self) -> list[PushAttempt]:
        with self._lock:
            return list(self._attempts)

    def clear(self) -> None:
        with self._lock:
            self._attempts.clear()

    # ------------------------------------------------------------ pushes

    def status_push(self, card_id: str, code: str, status: str, *, openid: str = "oSimulatedReimburser0000000") -> int:
        """Push ``update_invoice_status`` in the background; returns the push id."""
        fields: dict[str, str | int] = {
            "ToUserName": "gh_simulated000",
            "FromUserName": openid,
            "CreateTime": int(self._now()),
            "MsgType": "event",
            "Event": "update_invoice_status",
            "Status": status,
            "CardId": card_id,
            "Code": code,
        }
        config = self._require("events_url")
        return self._spawn("update_invoice_status", config.events_url or "", fields, component=False)

    def component_push(self, info_type: str, component_appid: str, **extra: str | int) -> int:
        fields: dict[str, str | int] = {"AppId": component_appid, "CreateTime": int(self._now()), "InfoType": info_type, **extra}
        config = self._require("component_url")
        return self._spawn(info_type, config.component_url or "", fields, component=True)

    async def wait(self, push_id: int) -> bool:
        """Until push ``push_id`` is answered ``success`` (``True``) or its retries are spent."""
        task = self._tasks.get(push_id)
        return True if task is None else await asyncio.shield(task)

    def cancel_all(self) -> None:
        """Stop every push in flight (the simulator is shutting down)."""
        for task in list(self._tasks.values()):
            task.cancel()

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    def _require(self, url_field: str) -> PushConfig:
        config = self.config
        if config is None or not getattr(config, url_field):
            raise LookupError(f"pushes are not configured with {url_field} (POST /_sim/pushes/config)")
        return config

    def _spawn(self, kind: str, url: str, fields: dict[str, str | int], *, component: bool) -> int:
        push_id = next(self._ids)
        task = asyncio.get_running_loop().create_task(self._deliver(push_id, kind, url, fields, component=component))
        self._tasks[push_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(push_id, None))
        return push_id

    async def _deliver(self, push_id: int, kind: str, url: str, fields: dict[str, str | int], *, component: bool) -> bool:
        config = self.config
        assert config is not None
        inner = build_xml(fields)
        # Status pushes are encrypted for ``appid`` (a platform: its component appid), component pushes always.
        encrypting = component or config.mode != "plaintext"
        appid = config.component_appid if component else config.appid
        cipher = PushCipher(config.encoding_aes_key or "", appid or "") if encrypting else None
        # One ciphertext for every attempt: WeChat resends the same message.
        encrypted = cipher.encrypt(inner) if cipher is not None else None
        async with httpx.AsyncClient(timeout=config.answer_timeout_s) as client:
            for attempt in range(1, config.retries + 2):
                params, body = self._signed(config, inner, encrypted, component=component, fields=fields)
                status = answer = error = None
                try:
                    response = await client.post(url, params=params, content=body, headers={"content-type": "text/xml"})
                    status, answer = response.status_code, response.text[:200]
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                ok = status == 200 and (answer or "").strip() in ("success", "")
                with self._lock:
                    self._attempts.append(
                        PushAttempt(
                            push_id=push_id, kind=kind, attempt=attempt, http_status=status, answer=answer, ok=ok, error=error
                        )
                    )
                if ok:
                    return True
        return False

    def _signed(
        self, config: PushConfig, inner: bytes, encrypted: str | None, *, component: bool, fields: dict[str, str | int]
    ) -> tuple[dict[str, str], bytes]:
        timestamp, nonce = str(int(self._now())), str(secrets.randbelow(10**10))
        params = {"timestamp": timestamp, "nonce": nonce, "signature": signature(config.token, timestamp, nonce)}
        if encrypted is None:
            params["openid"] = str(fields.get("FromUserName", ""))
            return params, inner
        params.update(encrypt_type="aes", msg_signature=signature(config.token, timestamp, nonce, encrypted))
        if component:
            return params, build_xml({"AppId": str(fields["AppId"]), "Encrypt": encrypted})
        if config.mode == "compatible":
            return params, inner.replace(b"</xml>", f"<Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>".encode())
        return params, build_xml({"ToUserName": str(fields["ToUserName"]), "Encrypt": encrypted})
