"""``SimulatorControl``: a small sync httpx client for the simulator's control
API, for when the simulator runs in another process (``python -m devtools wechat-sim``,
the benchmarks). Method names follow ``WeChatSimulator`` where they can, and the
records come back as the same msgspec types (``CallRecord``, ``Card``...).
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from devtools.simulator.pushes import PushAttempt
from devtools.simulator.state import CallRecord, Card, FaultKind, FaultRule, TokenCallRecord
from domain.status import ReimburseStatus


class SimulatorError(RuntimeError):
    """The control API refused a request (bad rule, unknown setting...)."""


class SimulatorControl:
    """``SimulatorControl("http://127.0.0.1:8088").add_fault("errcode", errcode=-1)``"""

    def __init__(self, base_url: str, *, timeout: float = 10.0, client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._own_client = client is None
        self._client = client if client is not None else httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> SimulatorControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        resp = self._client.request(method, self._url(path), json=json, params=params)
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("error", resp.text)
            except ValueError:
                detail = resp.text
            raise SimulatorError(f"{method} {path}: HTTP {resp.status_code}: {detail}")
        return resp.json()

    # Health
    def health(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/health")

    # Records
    def calls(self, since: int | None = None) -> list[CallRecord]:
        params = {"since": since} if since is not None else None
        return msgspec.convert(self._call("GET", "/_sim/calls", params=params)["calls"], list[CallRecord])

    def token_calls(self, since: int | None = None) -> list[TokenCallRecord]:
        params = {"since": since} if since is not None else None
        data = self._call("GET", "/_sim/token_calls", params=params)["token_calls"]
        return msgspec.convert(data, list[TokenCallRecord])

    def last_seq(self) -> int:
        return int(self.health()["last_seq"])

    def clear_calls(self) -> None:
        self._call("DELETE", "/_sim/calls")

    # Cards
    def cards(self) -> list[Card]:
        return msgspec.convert(self._call("GET", "/_sim/cards")["cards"], list[Card])

    def card_status(self, appid: str, card_id: str, code: str) -> ReimburseStatus | None:
        resp = self._client.get(self._url(f"/_sim/cards/{appid}/{card_id}/{code}"))
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return ReimburseStatus(resp.json()["reimburse_status"])

    def set_card(self, appid: str, card_id: str, code: str, reimburse_status: str) -> None:
        self._call(
            "PUT",
            "/_sim/cards",
            json={"appid": appid, "card_id": card_id, "code": code, "reimburse_status": str(reimburse_status)},
        )

    # Faults
    def add_fault(self, kind: FaultKind, **rule: Any) -> int:
        return int(self._call("POST", "/_sim/faults", json={"kind": kind, **rule})["ids"][0])

    def add_faults(self, rules: list[dict[str, Any]]) -> list[int]:
        return [int(i) for i in self._call("POST", "/_sim/faults", json={"rules": rules})["ids"]]

    def faults(self) -> list[FaultRule]:
        return msgspec.convert(self._call("GET", "/_sim/faults")["faults"], list[FaultRule])

    def clear_faults(self) -> None:
        self._call("DELETE", "/_sim/faults")

    def remove_fault(self, fault_id: int) -> bool:
        resp = self._client.delete(self._url(f"/_sim/faults/{fault_id}"))
        return resp.status_code == 200

    # Configuration, quota, tokens
    def configure(self, **settings: Any) -> dict[str, Any]:
        return self._call("POST", "/_sim/config", json=settings)

    def config(self) -> dict[str, Any]:
        return self._call("GET", "/_sim/config")

    def reset_quota(self, appid: str | None = None, which: str = "both") -> None:
        body: dict[str, Any] = {"which": which}
        if appid is not None:
            body["appid"] = appid
        self._call("POST", "/_sim/quota/reset", json=body)

    def reset_daily_quota(self, appid: str | None = None) -> None:
        self.reset_quota(appid, "daily")

    def invalidate_tokens(self, appid: str | None = None) -> int:
        body = {"appid": appid} if appid is not None else {}
        return int(self._call("POST", "/_sim/tokens/invalidate", json=body)["invalidated"])

    def expire_tokens(self, appid: str | None = None) -> int:
        body = {"appid": appid} if appid is not None else {}
        return int(self._call("POST", "/_sim/tokens/expire", json=body)["expired"])

    def reset(self, *, tokens: bool = False) -> None:
        self._call("POST", "/_sim/reset", json={"tokens": tokens})

    # Pushes (WeChat's side of the message push)
    def configure_pushes(self, **config: Any) -> None:
        """``events_url``, ``component_url``, ``token``, ``encoding_aes_key``, ``appid``,
        ``component_appid``, ``mode`` (plaintext|compatible|safe), ``retries``, ``answer_timeout_s``."""
        self._call("POST", "/_sim/pushes/config", json=config)

    def pushes(self) -> list[PushAttempt]:
        return msgspec.convert(self._call("GET", "/_sim/pushes")["pushes"], list[PushAttempt])

    def clear_pushes(self) -> None:
        self._call("DELETE", "/_sim/pushes")

    def reimburse(self, appid: str, card_id: str, code: str, reimburse_status: str, *, wait: bool = True) -> dict[str, Any]:
        """A reimburser's lock/unlock/close, then its ``update_invoice_status`` push
        (``wait``: until the webhook answered success or WeChat's retries are spent)."""
        body = {"appid": appid, "card_id": card_id, "code": code, "reimburse_status": str(reimburse_status), "wait": wait}
        return self._call("POST", "/_sim/reimburse", json=body)

    def advance_clock(self, seconds: float, *, wait: bool = True) -> dict[str, Any]:
        """Simulated time forward; a verify ticket due is rotated and pushed."""
        return self._call("POST", "/_sim/clock/advance", json={"seconds": seconds, "wait": wait})

    def unauthorize(self, authorizer_appid: str, *, wait: bool = True) -> dict[str, Any]:
        return self._call("POST", f"/_sim/authorizers/{authorizer_appid}/unauthorize", json={"wait": wait})

    def authorize(self, authorizer_appid: str, *, wait: bool = True) -> dict[str, Any]:
        return self._call("POST", f"/_sim/authorizers/{authorizer_appid}/authorize", json={"wait": wait})

    def _url(self, path: str) -> str:
        return path if self._own_client else self.base_url + path
