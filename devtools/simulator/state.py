"""The WeChat simulator's state and rules, with no I/O.

``WeChatSimulator`` decides every answer; ``devtools.simulator.server`` only moves
bytes, sleeps and drops connections on its behalf. Keeping the decisions here
means tests can drive the rules directly and the HTTP layer stays thin.

Everything is guarded by one ``threading.RLock``: the HTTP server runs in its
own thread (``SimulatorServer``) while tests read records and cards from the
main thread.

Choices where WeChat is undocumented or where the simulator simplifies
(the errcodes are listed again in ``ERRMSG``):

* ``updatestatus`` token checks: missing ``access_token`` -> 41001; a token
  never issued, invalidated (``invalidate_tokens``) or superseded and past
  its grace period -> 40001; expired (past ``token_ttl_s`` or
  ``expire_tokens``) -> 42001. A component access token is not accepted there
  (40001): only an account's own token or an authorizer token is.
* Body: not a JSON object -> 47001 (WeChat's "data format error"; outside
  DOMAIN.md's bad-request group, so ``classify`` calls it permanent, which is
  right). A missing / non-string / empty ``card_id``, ``code`` or
  ``reimburse_status``, or a ``reimburse_status`` that is not one of the four
  -> 72031 ("invalid params", the e-invoice API's own parameter error). 40099
  was not used: WeChat means "code already consumed" by it.
* Transitions: ``domain.wechat_rules.wechat_answer`` (the rules reconcile
  judges repairs by): same status again -> 72024; from CLOSURE or CANCEL ->
  72024; INIT -> CLOSURE -> 72039; LOCK -> CANCEL -> 72023 only when
  ``refuse_lock_to_cancel``. A card unknown
  to the simulator is created in INIT when a call first reaches it.
* Quotas count ``updatestatus`` calls that passed the token check, per appid,
  including calls later refused by a transition rule (WeChat counts calls, not
  successes). A call answered 45009/45011 does not count. The daily counter
  only resets through ``reset_daily_quota`` (no midnight); the minute counter
  uses fixed windows of ``minute_window_s`` (default 60) on the clock.
* Tokens: ``/cgi-bin/token`` and ``/cgi-bin/stable_token`` keep separate
  series per appid, as WeChat does: fetching one never supersedes the other.
  Within a series each new token supersedes the previous one, which keeps
  working for ``token_grace_s``. ``token_ttl_s`` applies to tokens issued after
  it is set. Component and authorizer tokens follow the same rules in their
  own series.
* Token endpoints: unknown appid -> 40013; missing appid -> 41002; missing
  secret -> 41004; wrong secret -> 40001; missing / wrong ``grant_type`` ->
  40002. Component: unknown ``component_appid`` -> 40013, wrong secret ->
  40001, wrong ``component_verify_ticket`` -> 61006; authorizer not
  authorized to that component -> 61003; wrong refresh token -> 61023.
* Verify tickets (WeChat's side of the component pushes): each component's
  ticket rotates every ``ticket_interval_s`` (600, WeChat's 10 minutes) and
  lives ``ticket_ttl_s`` (43200, 12 hours); ``api_component_token`` with an
  expired or unknown ticket -> 61006. The configured ticket counts as issued
  when the simulator starts.
* Simulated time: ``now()`` is ``clock()`` plus what ``advance_clock`` added,
  and drives token and ticket expiry and the minute quota, so tests can live
  through 12 hours in seconds.
* Reimbursers (``reimburse``: WeChat's ``reimburse/updateinvoicestatus``)
  move cards under the same refusal rules; the server then pushes
  ``update_invoice_status`` (``devtools.simulator.pushes``). ``unauthorize``
  revokes an authorizer (its token calls -> 61003), ``authorize`` grants it again.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from domain.status import ReimburseStatus
from domain.wechat_rules import wechat_answer

# --------------------------------------------------------------------------
# Demo accounts (not real credentials; WeChat appids are "wx" + 16 hex chars)
# --------------------------------------------------------------------------

DEMO_APPID = "wx1234567890abcdef"
DEMO_SECRET = "demo-secret-not-real"
DEMO_COMPONENT_APPID = "wxc0ffee0000000001"
DEMO_COMPONENT_SECRET = "demo-component-secret-not-real"
DEMO_VERIFY_TICKET = "ticket@@@demo-verify-ticket-not-real"
DEMO_AUTHORIZER_APPIDS = ("wxa0000000000000a1", "wxa0000000000000a2")

#: appid -> secret
DEFAULT_ACCOUNTS: Mapping[str, str] = {DEMO_APPID: DEMO_SECRET}
#: component_appid -> (component_appsecret, component_verify_ticket)
DEFAULT_COMPONENTS: Mapping[str, tuple[str, str]] = {
    DEMO_COMPONENT_APPID: (DEMO_COMPONENT_SECRET, DEMO_VERIFY_TICKET),
}
#: authorizer_appid -> (component_appid, initial authorizer_refresh_token)
DEFAULT_AUTHORIZERS: Mapping[str, tuple[str, str]] = {
    DEMO_AUTHORIZER_APPIDS[0]: (DEMO_COMPONENT_APPID, "refreshtoken@@@demo-authorizer-1-not-real"),
    DEMO_AUTHORIZER_APPIDS[1]: (DEMO_COMPONENT_APPID, "refreshtoken@@@demo-authorizer-2-not-real"),
}

# --------------------------------------------------------------------------
# Errcodes
# --------------------------------------------------------------------------

#: The errmsg the simulator sends with each errcode (close to WeChat's own).
#: Clients must never parse errmsg; details are appended as `` hint: [...]``.
ERRMSG: Mapping[int, str] = {
    0: "ok",
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40013: "invalid appid",
    41001: "access_token missing",
    41002: "appid missing",
    41004: "appsecret missing",
    42001: "access_token expired",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach-limit must slower retry next minute",
    47001: "data format error",
    61003: "component is not authorized by this account",
    61006: "component ticket is invalid",
    61023: "invalid refresh token",
    72023: "invoice has been lock by others",
    72024: "invoice status error",
    72031: "invalid params",
    72036: "invoice is busy, try again later",
    72039: "invoice must be lock first",
}

UPDATESTATUS_PATH = "/card/invoice/platform/updatestatus"
TOKEN_PATH = "/cgi-bin/token"
STABLE_TOKEN_PATH = "/cgi-bin/stable_token"
COMPONENT_TOKEN_PATH = "/cgi-bin/component/api_component_token"
AUTHORIZER_TOKEN_PATH = "/cgi-bin/component/api_authorizer_token"


def errbody(errcode: int, hint: str | None = None) -> dict[str, Any]:
    """A WeChat error answer."""
    msg = ERRMSG.get(errcode, "simulated error")
    if hint:
        msg = f"{msg} hint: [{hint}]"
    return {"errcode": errcode, "errmsg": msg}


OK_BODY: Mapping[str, Any] = {"errcode": 0, "errmsg": "ok"}


def token_fingerprint(token: str | None) -> str | None:
    """First 12 hex chars of sha256(token): identifies a token in records and
    logs without revealing it (48 bits: collisions are negligible for the
    number of tokens a test or benchmark issues, 6 chars were not)."""
    if not token:
        return None
    return hashlib.sha256(token.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------
# Records, cards, fault rules (msgspec Structs: the control API sends them as
# JSON and SimulatorControl decodes them back into the same types)
# --------------------------------------------------------------------------


class CallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One ``updatestatus`` call. Never holds the token itself."""

    seq: int  #: shared, strictly increasing across calls and token calls
    time: float  #: wall clock (``time.time()``) when the call was decided
    path: str
    appid: str | None  #: from the token (even an expired one); None when the token is unknown
    card_id: str | None
    code: str | None
    reimburse_status: str | None  #: the status asked for
    idempotency_key: str | None  #: the ``Idempotency-Key`` header
    token_fp: str | None  #: ``token_fingerprint(access_token)``
    errcode: int | None  #: errcode answered; None for an HTTP-status fault or a reset
    applied: bool  #: the card's status changed
    status_before: str | None = None  #: card status when the call reached it
    http_status: int | None = 200  #: None for a reset
    fault: str | None = None  #: kind of the fault rule that acted
    fault_id: int | None = None


class TokenCallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One call to a token endpoint. Holds fingerprints, never a credential."""

    seq: int
    time: float
    path: str
    kind: Literal["token", "stable_token", "component_token", "authorizer_token"]
    appid: str | None  #: appid, component_appid or authorizer_appid
    token_fp: str | None  #: fingerprint of the token issued (or returned again)
    errcode: int | None
    issued: bool  #: a new token was issued (False when stable_token returned the same)
    force_refresh: bool | None = None
    http_status: int | None = 200
    fault: str | None = None
    fault_id: int | None = None


class Card(msgspec.Struct, frozen=True, kw_only=True):
    appid: str
    card_id: str
    code: str
    reimburse_status: str


FaultKind = Literal["errcode", "http_status", "latency", "timeout", "reset"]


class FaultRule(msgspec.Struct, kw_only=True):
    """A fault injection rule (see ``WeChatSimulator.add_fault``)."""

    kind: FaultKind
    path: str = "updatestatus"  #: substring of the request path
    appid: str | None = None  #: only calls for this appid (None: any)
    errcode: int | None = None  #: kind "errcode"
    errmsg: str | None = None  #: kind "errcode": overrides ERRMSG
    http_status: int | None = None  #: kind "http_status"
    body: str | None = None  #: kind "http_status": the body (default: a gateway page)
    latency_ms: int | None = None  #: kind "latency"; kind "timeout": how long to hold
    times: int | None = 1  #: calls it acts on; None = until cleared
    after: int = 0  #: skip the first N matching calls
    apply: bool = False  #: errcode/http_status/timeout/reset: process the call first
    # Bookkeeping, set by the simulator.
    id: int = 0
    seen: int = 0  #: matching calls so far
    fired: int = 0  #: calls it acted on so far


@dataclass(frozen=True)
class FaultPlan:
    """What the fault rules say about one call, before it is processed."""

    latency_s: float = 0.0  #: sum of all latency rules that fire
    action: FaultRule | None = None  #: the first non-latency rule that fires


@dataclass(frozen=True)
class Outcome:
    """What the HTTP layer must do with one call."""

    body: Mapping[str, Any] | None = None  #: JSON answer
    http_status: int = 200
    text: str | None = None  #: non-JSON answer (HTTP-status fault)
    reset: bool = False  #: abort the connection instead of answering
    delay_s: float = 0.0  #: hold the answer this long first (timeout fault)


_CONFIG_KEYS = frozenset(
    {
        "latency_ms",
        "daily_quota",
        "minute_quota",
        "minute_window_s",
        "refuse_lock_to_cancel",
        "token_ttl_s",
        "token_grace_s",
        "keep_old_refresh_token",
        "timeout_s",
        "finish_abandoned",
    }
)

_STATUS_VALUES = frozenset(s.value for s in ReimburseStatus)


@dataclass
class _Token:
    appid: str
    series: str  #: "token" | "stable_token" | "component" | "authorizer"
    issued_at: float
    expires_at: float
    grace_until: float | None = None  #: set when superseded
    invalidated: bool = False


@dataclass
class _Quota:
    daily: int = 0
    window: int = -1
    minute: int = 0


@dataclass
class _Config:
    latency_ms: int = 0
    daily_quota: int | None = None
    minute_quota: int | None = None
    minute_window_s: float = 60.0
    refuse_lock_to_cancel: bool = False
    token_ttl_s: float = 7200.0
    token_grace_s: float = 300.0
    keep_old_refresh_token: bool = False
    timeout_s: float = 30.0
    finish_abandoned: bool = False


@dataclass
class _Authorizer:
    component_appid: str
    refresh_tokens: set[str] = field(default_factory=set)
    current_refresh_token: str = ""


class WeChatSimulator:
    """WeChat's token and ``updatestatus`` behaviour, as state. No I/O.

    ``accounts``, ``components`` and ``authorizers`` default (when None) to
    ``DEFAULT_ACCOUNTS``, ``DEFAULT_COMPONENTS`` and ``DEFAULT_AUTHORIZERS``;
    pass ``{}`` for none. ``clock`` (default ``time.time``) drives token
    expiry and the minute quota, so tests can move time without sleeping.
    """

    def __init__(
        self,
        accounts: Mapping[str, str] | None = None,
        components: Mapping[str, tuple[str, str]] | None = None,
        authorizers: Mapping[str, tuple[str, str]] | None = None,
        *,
        latency_ms: int = 0,
        daily_quota: int | None = None,
        minute_quota: int | None = None,
        minute_window_s: float = 60.0,
        refuse_lock_to_cancel: bool = False,
        token_ttl_s: float = 7200.0,
        token_grace_s: float = 300.0,
        keep_old_refresh_token: bool = False,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
        ticket_interval_s: float = 600.0,
        ticket_ttl_s: float = 43200.0,
    ) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self._clock_offset = 0.0
        self.ticket_interval_s = ticket_interval_s
        self.ticket_ttl_s = ticket_ttl_s
        self._accounts = dict(DEFAULT_ACCOUNTS if accounts is None else accounts)
        self._components = dict(DEFAULT_COMPONENTS if components is None else components)
        self._authorizers: dict[str, _Authorizer] = {}
        for auth_appid, (component_appid, refresh_token) in (DEFAULT_AUTHORIZERS if authorizers is None else authorizers).items():
            self._authorizers[auth_appid] = _Authorizer(component_appid, {refresh_token}, refresh_token)
        self._initial_config = _Config(
            latency_ms=latency_ms,
            daily_quota=daily_quota,
            minute_quota=minute_quota,
            minute_window_s=minute_window_s,
            refuse_lock_to_cancel=refuse_lock_to_cancel,
            token_ttl_s=token_ttl_s,
            token_grace_s=token_grace_s,
            keep_old_refresh_token=keep_old_refresh_token,
            timeout_s=timeout_s,
        )
        self._config = _Config(**vars(self._initial_config))
        self._tokens: dict[str, _Token] = {}
        self._current: dict[tuple[str, str], str] = {}  # (series, appid) -> current token
        self._cards: dict[tuple[str, str, str], ReimburseStatus] = {}
        self._quota: dict[str, _Quota] = {}
        self._faults: list[FaultRule] = []
        self._fault_ids = 0
        self._seq = 0
        self._calls: list[CallRecord] = []
        self._token_calls: list[TokenCallRecord] = []
        # component_appid -> {ticket: issued at (now())}; the configured one counts as issued now.
        self._tickets: dict[str, dict[str, float]] = {
            appid: {ticket: self.now()} for appid, (_, ticket) in self._components.items()
        }
        self._revoked: set[str] = set()
        # Calls in progress per card (arrived, not answered or abandoned), and
        # every arrival of a call while another for the same card was in progress.
        self._in_progress: dict[tuple[str, str], list[str]] = {}
        self._overlaps: list[tuple[str, str, str, str]] = []
        self._arrivals: list[tuple[float, str, str, str]] = []

    # ------------------------------------------------------------------
    # Calls in progress (one per card at a time is the client's promise)
    # ------------------------------------------------------------------

    def call_arrived(self, raw_body: bytes, idempotency_key: str | None) -> tuple[str, str] | None:
        """Note an ``updatestatus`` request on arrival (before any latency);
        returns the card it is for, to pass to ``call_ended``."""
        try:
            payload = msgspec.json.decode(raw_body) if raw_body else None
        except msgspec.DecodeError:
            return None
        if not isinstance(payload, dict):
            return None
        card_id, code = _str_or_none(payload.get("card_id")), _str_or_none(payload.get("code"))
        if card_id is None or code is None:
            return None
        key = idempotency_key or ""
        with self._lock:
            running = self._in_progress.setdefault((card_id, code), [])
            for other in running:
                self._overlaps.append((card_id, code, other, key))
            running.append(key)
            self._arrivals.append((time.time(), card_id, code, key))
        return (card_id, code)

    def call_ended(self, card: tuple[str, str] | None, idempotency_key: str | None) -> None:
        if card is None:
            return
        with self._lock:
            running = self._in_progress.get(card)
            if running and (idempotency_key or "") in running:
                running.remove(idempotency_key or "")
            if not running:
                self._in_progress.pop(card, None)

    def overlaps(self) -> list[tuple[str, str, str, str]]:
        """``(card_id, code, key in progress, key that arrived)`` for every call
        that arrived while another call for the same card was in progress."""
        with self._lock:
            return list(self._overlaps)

    def in_flight(self) -> list[str]:
        """Idempotency keys of the ``updatestatus`` calls in progress now: arrived,
        and neither answered nor (unless ``finish_abandoned``) abandoned by their
        client. One per call, so a key may appear twice."""
        with self._lock:
            return [key for keys in self._in_progress.values() for key in keys]

    def arrivals(self) -> list[tuple[float, str, str, str]]:
        """``(time, card_id, code, idempotency key)`` of every request, on arrival."""
        with self._lock:
            return list(self._arrivals)

    # ------------------------------------------------------------------
    # Simulated time, verify tickets, reimbursers, authorizations
    # ------------------------------------------------------------------

    def now(self) -> float:
        """The simulator's clock: ``clock()`` plus every ``advance_clock``."""
        return self._clock() + self._clock_offset

    def advance_clock(self, seconds: float) -> float:
        """Move simulated time forward (tokens and tickets expire, quotas roll over)."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._clock_offset += seconds
            return self.now()

    def current_ticket(self, component_appid: str) -> str:
        with self._lock:
            tickets = self._tickets[component_appid]
            return max(tickets, key=tickets.__getitem__)

    def tickets_due(self) -> list[str]:
        """Components whose newest ticket is ``ticket_interval_s`` old: time to push a new one."""
        with self._lock:
            now = self.now()
            return [a for a, t in self._tickets.items() if now - max(t.values(), default=-1e18) >= self.ticket_interval_s]

    def rotate_ticket(self, component_appid: str) -> str:
        """Issue a new verify ticket (the old ones stay valid until they are ``ticket_ttl_s`` old)."""
        with self._lock:
            ticket = f"ticket@@@{secrets.token_urlsafe(24)}"
            now = self.now()
            tickets = self._tickets.setdefault(component_appid, {})
            for old, issued in list(tickets.items()):
                if now - issued >= self.ticket_ttl_s:
                    del tickets[old]
            tickets[ticket] = now
            return ticket

    def _ticket_valid(self, component_appid: str, given: Any) -> bool:
        if not isinstance(given, str):
            return False
        for ticket, issued in self._tickets.get(component_appid, {}).items():
            if secrets.compare_digest(ticket, given):
                return self.now() - issued < self.ticket_ttl_s
        return False

    def reimburse(self, appid: str, card_id: str, code: str, reimburse_status: str) -> dict[str, Any]:
        """A reimburser's lock/unlock/close (``reimburse/updateinvoicestatus``): WeChat's answer."""
        status = ReimburseStatus(reimburse_status)  # ValueError on an unknown status
        with self._lock:
            key = (appid, card_id, code)
            return self._transition(key, self._cards.setdefault(key, ReimburseStatus.INIT), status)

    def unauthorize(self, authorizer_appid: str) -> str:
        """The authorizer revokes its component; returns the component appid (for the push)."""
        with self._lock:
            self._revoked.add(authorizer_appid)
            return self._authorizers[authorizer_appid].component_appid

    def authorize(self, authorizer_appid: str) -> str:
        with self._lock:
            self._revoked.discard(authorizer_appid)
            return self._authorizers[authorizer_appid].component_appid

    # ------------------------------------------------------------------
    # Configuration
    # ------------------------------------------------------------------

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings: latency_ms, daily_quota, minute_quota,
        minute_window_s, refuse_lock_to_cancel, token_ttl_s, token_grace_s,
        keep_old_refresh_token, timeout_s. Returns the whole configuration.
        Unknown keys raise ``ValueError`` (a typo must not pass silently)."""
        unknown = set(settings) - _CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown setting(s): {sorted(unknown)}; known: {sorted(_CONFIG_KEYS)}")
        with self._lock:
            for key, value in settings.items():
                setattr(self._config, key, _check_setting(key, value))
            return dict(vars(self._config))

    def config(self) -> dict[str, Any]:
        with self._lock:
            return dict(vars(self._config))

    @property
    def latency_s(self) -> float:
        """The global latency added to every ``updatestatus`` call."""
        return self._config.latency_ms / 1000.0

    @property
    def finish_abandoned(self) -> bool:
        """Whether a call whose client went away is still processed, as a real
        server would (configure ``finish_abandoned``); by default it is dropped."""
        return self._config.finish_abandoned

    def reset(self, *, tokens: bool = False) -> None:
        """Back to the state after construction: no cards, records, faults or
        quota use, the constructor's configuration. Issued tokens survive
        unless ``tokens`` (clients holding one keep working)."""
        with self._lock:
            self._config = _Config(**vars(self._initial_config))
            self._cards.clear()
            self._quota.clear()
            self._faults.clear()
            self._calls.clear()
            self._token_calls.clear()
            if tokens:
                self._tokens.clear()
                self._current.clear()

    # ------------------------------------------------------------------
    # Records
    # ------------------------------------------------------------------

    def calls(self, since: int | None = None) -> list[CallRecord]:
        """``updatestatus`` records with ``seq > since`` (all when None), in order."""
        with self._lock:
            return _since(self._calls, since)

    def token_calls(self, since: int | None = None) -> list[TokenCallRecord]:
        with self._lock:
            return _since(self._token_calls, since)

    def clear_calls(self) -> None:
        """Forget both record lists. Sequence numbers keep increasing."""
        with self._lock:
            self._calls.clear()
            self._token_calls.clear()

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # ------------------------------------------------------------------
    # Cards
    # ------------------------------------------------------------------

    def cards(self) -> list[Card]:
        with self._lock:
            return [Card(appid=a, card_id=c, code=k, reimburse_status=s.value) for (a, c, k), s in self._cards.items()]

    def issued_secrets(self) -> set[str]:
        """Every credential this simulator knows or issued: account and component
        secrets, verify tickets, tokens, refresh tokens. Tests assert none of
        them ever shows up in a log line."""
        with self._lock:
            found = set(self._accounts.values()) | set(self._tokens)
            for secret, ticket in self._components.values():
                found |= {secret, ticket}
            for tickets in self._tickets.values():
                found |= set(tickets)
            for authorizer in self._authorizers.values():
                found |= authorizer.refresh_tokens
        return found

    def card_status(self, appid: str, card_id: str, code: str) -> ReimburseStatus | None:
        """The card's status, or None if no call ever reached it."""
        with self._lock:
            return self._cards.get((appid, card_id, code))

    def set_card(self, appid: str, card_id: str, code: str, reimburse_status: str) -> None:
        """Force a card's status (reconciliation tests: WeChat changed behind our back)."""
        status = ReimburseStatus(reimburse_status)  # ValueError on an unknown status
        with self._lock:
            self._cards[(appid, card_id, code)] = status

    # ------------------------------------------------------------------
    # Quotas
    # ------------------------------------------------------------------

    def reset_daily_quota(self, appid: str | None = None) -> None:
        with self._lock:
            for a, q in self._quota.items():
                if appid is None or a == appid:
                    q.daily = 0

    def reset_minute_quota(self, appid: str | None = None) -> None:
        with self._lock:
            for a, q in self._quota.items():
                if appid is None or a == appid:
                    q.minute = 0

    def reset_quota(self, appid: str | None = None) -> None:
        """Reset both the daily and the per-minute counters."""
        with self._lock:
            self.reset_daily_quota(appid)
            self.reset_minute_quota(appid)

    def _quota_check(self, appid: str) -> int:
        """0, or 45009/45011. Counts the call when it passes."""
        cfg = self._config
        q = self._quota.setdefault(appid, _Quota())
        window = int(self.now() // cfg.minute_window_s)
        if window != q.window:
            q.window, q.minute = window, 0
        if cfg.daily_quota is not None and q.daily >= cfg.daily_quota:
            return 45009
        if cfg.minute_quota is not None and q.minute >= cfg.minute_quota:
            return 45011
        q.daily += 1
        q.minute += 1
        return 0

    # ------------------------------------------------------------------
    # Faults
    # ------------------------------------------------------------------

    def add_fault(self, kind: FaultKind, **rule: Any) -> int:
        """Add a fault rule; returns its id. Fields (``FaultRule``):

        * ``kind``: "errcode" (answer ``errcode``), "http_status" (answer that
          HTTP status with a non-JSON ``body``), "latency" (sleep
          ``latency_ms`` then continue normally), "timeout" (hold the answer
          ``latency_ms``, default ``timeout_s`` = 30 s; if the client is
          still there it then gets errcode -1, or the real answer when
          ``apply``), "reset" (abort the TCP connection).
        * ``path``: substring of the request path ("updatestatus" default;
          "token" hits all four token endpoints). ``/_sim/`` is never faulted.
        * ``appid``: only calls for that appid.
        * ``times`` (default 1; None = until cleared), ``after`` (skip the
          first N matching calls).
        * ``apply``: process the call (change the card / issue the token)
          and then deliver the fault: "applied but the client never knew".

        Several rules may match one call: all firing latency rules add up;
        the first (oldest) firing non-latency rule acts and only its
        ``times`` is used up. ``after`` counts every matching call.
        """
        return self.add_faults([{"kind": kind, **rule}])[0]

    def add_faults(self, rules: Iterable[Mapping[str, Any]]) -> list[int]:
        """Add several rules at once (all or none); returns their ids."""
        parsed = [_parse_rule(r) for r in rules]
        with self._lock:
            ids = []
            for rule in parsed:
                self._fault_ids += 1
                rule.id = self._fault_ids
                self._faults.append(rule)
                ids.append(rule.id)
            return ids

    def faults(self) -> list[FaultRule]:
        """The rules, with their ``seen``/``fired`` counters (copies)."""
        with self._lock:
            return [msgspec.structs.replace(r) for r in self._faults]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def remove_fault(self, fault_id: int) -> bool:
        with self._lock:
            before = len(self._faults)
            self._faults = [r for r in self._faults if r.id != fault_id]
            return len(self._faults) != before

    def plan_faults(self, path: str, appid: str | None) -> FaultPlan:
        """Match the rules against one call and use them up (``seen``,
        ``fired``). Control paths are never faulted."""
        if path.startswith("/_sim"):
            return FaultPlan()
        with self._lock:
            latency_ms = 0
            action: FaultRule | None = None
            for rule in self._faults:
                if rule.path not in path or (rule.appid is not None and rule.appid != appid):
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                rule.seen += 1
                if rule.seen <= rule.after:
                    continue
                if rule.kind == "latency":
                    rule.fired += 1
                    latency_ms += rule.latency_ms or 0
                elif action is None:
                    rule.fired += 1
                    action = msgspec.structs.replace(rule)
            # Used-up rules stay listed (with their counters) until cleared.
            return FaultPlan(latency_s=latency_ms / 1000.0, action=action)

    def _fault_outcome(self, rule: FaultRule, processed: Mapping[str, Any]) -> tuple[Outcome, int | None]:
        """The answer for a firing non-latency rule, and the errcode to record.
        ``processed`` is the real answer when ``apply`` (else unused)."""
        if rule.kind == "errcode":
            code = rule.errcode if rule.errcode is not None else -1
            body = errbody(code)
            if rule.errmsg is not None:
                body["errmsg"] = rule.errmsg
            return Outcome(body=body), code
        if rule.kind == "http_status":
            status = rule.http_status or 502
            text = rule.body if rule.body is not None else _gateway_page(status)
            return Outcome(http_status=status, text=text), None
        if rule.kind == "timeout":
            delay = (rule.latency_ms / 1000.0) if rule.latency_ms is not None else self._config.timeout_s
            body = dict(processed) if rule.apply else errbody(-1, "simulated timeout")
            return Outcome(body=body, delay_s=delay), int(body.get("errcode", 0))
        if rule.kind == "reset":
            return Outcome(reset=True, http_status=0), None
        raise AssertionError(rule.kind)  # pragma: no cover - latency never acts

    # ------------------------------------------------------------------
    # Tokens
    # ------------------------------------------------------------------

    def appid_for_token(self, token: str | None) -> str | None:
        """The appid a token belongs to (valid or not), for fault matching."""
        if not token:
            return None
        with self._lock:
            info = self._tokens.get(token)
            return info.appid if info else None

    def issue_token(self, appid: str, series: str = "token") -> str:
        """Issue a token without HTTP (benchmarks, tests). Series: "token",
        "stable_token", "component", "authorizer"."""
        with self._lock:
            return self._issue(series, appid)

    def current_refresh_token(self, authorizer_appid: str) -> str:
        """The authorizer's newest refresh token (tests of the component flow)."""
        with self._lock:
            return self._authorizers[authorizer_appid].current_refresh_token

    def invalidate_tokens(self, appid: str | None = None) -> int:
        """Make the current tokens (of ``appid``, or all) answer 40001, as when
        another process refreshed them. Returns how many were invalidated."""
        with self._lock:
            n = 0
            for info in self._tokens.values():
                if (appid is None or info.appid == appid) and not info.invalidated:
                    info.invalidated = True
                    n += 1
            return n

    def expire_tokens(self, appid: str | None = None) -> int:
        """Make the tokens (of ``appid``, or all) answer 42001 from now on."""
        with self._lock:
            now = self.now()
            n = 0
            for info in self._tokens.values():
                if (appid is None or info.appid == appid) and info.expires_at > now:
                    info.expires_at = now
                    n += 1
            return n

    def _issue(self, series: str, appid: str) -> str:
        now = self.now()
        old = self._current.get((series, appid))
        if old is not None:
            info = self._tokens[old]
            if info.grace_until is None:
                info.grace_until = now + self._config.token_grace_s
        token = f"{appid[-4:]}_{secrets.token_urlsafe(48)}"
        self._tokens[token] = _Token(appid, series, now, now + self._config.token_ttl_s)
        self._current[(series, appid)] = token
        return token

    def _token_error(self, token: str | None, series: frozenset[str]) -> tuple[int, str | None]:
        """(0, appid) for a usable token of one of ``series``, else (errcode, appid-or-None)."""
        if not token:
            return 41001, None
        info = self._tokens.get(token)
        if info is None or info.series not in series:
            return 40001, None
        now = self.now()
        if info.invalidated:
            return 40001, info.appid
        if now >= info.expires_at:
            return 42001, info.appid
        if info.grace_until is not None and now >= info.grace_until:
            return 40001, info.appid
        return 0, info.appid

    def _expires_in(self, token: str) -> int:
        return max(0, math.ceil(self._tokens[token].expires_at - self.now()))

    def _stable_current(self, appid: str) -> str | None:
        token = self._current.get(("stable_token", appid))
        if token is None:
            return None
        code, _ = self._token_error(token, frozenset({"stable_token"}))
        return token if code == 0 else None

    def _record_token_call(
        self,
        *,
        path: str,
        kind: Any,
        appid: str | None,
        body: Mapping[str, Any],
        token_field: str,
        issued: bool,
        fault: FaultRule | None,
        force_refresh: bool | None = None,
    ) -> Outcome:
        """Record a token call and turn the real answer into the one to send."""
        outcome = Outcome(body=body)
        errcode: int | None = int(body.get("errcode", 0))
        if fault is not None:
            outcome, errcode = self._fault_outcome(fault, body)
        token = body.get(token_field)
        self._token_calls.append(
            TokenCallRecord(
                seq=self._next_seq(),
                time=time.time(),
                path=path,
                kind=kind,
                appid=appid,
                token_fp=token_fingerprint(token) if isinstance(token, str) else None,
                errcode=errcode,
                issued=issued,
                force_refresh=force_refresh,
                http_status=None if outcome.reset else outcome.http_status,
                fault=fault.kind if fault else None,
                fault_id=fault.id if fault else None,
            )
        )
        return outcome

    def get_token(
        self, grant_type: str | None, appid: str | None, secret: str | None, *, fault: FaultRule | None = None
    ) -> Outcome:
        """``GET /cgi-bin/token``: a new token every time, the previous one in grace."""
        with self._lock:
            issued = False
            if fault is not None and not fault.apply:
                body: dict[str, Any] = {}
            elif grant_type != "client_credential":
                body = errbody(40002)
            elif not appid:
                body = errbody(41002)
            elif not secret:
                body = errbody(41004)
            elif appid not in self._accounts:
                body = errbody(40013)
            elif not secrets.compare_digest(self._accounts[appid], secret):
                body = errbody(40001, "appsecret is wrong")
            else:
                token = self._issue("token", appid)
                issued = True
                body = {"access_token": token, "expires_in": self._expires_in(token)}
            return self._record_token_call(
                path=TOKEN_PATH,
                kind="token",
                appid=appid,
                body=body,
                token_field="access_token",
                issued=issued,
                fault=fault,
            )

    def get_stable_token(self, payload: Any, *, fault: FaultRule | None = None) -> Outcome:
        """``POST /cgi-bin/stable_token``: the same token while it is valid
        (with the remaining ``expires_in``); ``force_refresh`` issues a new one."""
        with self._lock:
            issued = False
            appid = payload.get("appid") if isinstance(payload, dict) else None
            appid = appid if isinstance(appid, str) else None
            force = bool(payload.get("force_refresh", False)) if isinstance(payload, dict) else None
            if fault is not None and not fault.apply:
                body: dict[str, Any] = {}
            elif not isinstance(payload, dict):
                body = errbody(47001)
            elif payload.get("grant_type") != "client_credential":
                body = errbody(40002)
            elif not appid:
                body = errbody(41002)
            elif not isinstance(payload.get("secret"), str) or not payload["secret"]:
                body = errbody(41004)
            elif appid not in self._accounts:
                body = errbody(40013)
            elif not secrets.compare_digest(self._accounts[appid], payload["secret"]):
                body = errbody(40001, "appsecret is wrong")
            else:
                token = None if force else self._stable_current(appid)
                if token is None:
                    token = self._issue("stable_token", appid)
                    issued = True
                body = {"access_token": token, "expires_in": self._expires_in(token)}
            return self._record_token_call(
                path=STABLE_TOKEN_PATH,
                kind="stable_token",
                appid=appid,
                body=body,
                token_field="access_token",
                issued=issued,
                fault=fault,
                force_refresh=force,
            )

    def get_component_token(self, payload: Any, *, fault: FaultRule | None = None) -> Outcome:
        """``POST /cgi-bin/component/api_component_token``."""
        with self._lock:
            issued = False
            appid = payload.get("component_appid") if isinstance(payload, dict) else None
            appid = appid if isinstance(appid, str) else None
            if fault is not None and not fault.apply:
                body: dict[str, Any] = {}
            elif not isinstance(payload, dict):
                body = errbody(47001)
            elif not appid:
                body = errbody(41002)
            elif appid not in self._components:
                body = errbody(40013)
            else:
                secret, _ = self._components[appid]
                given_secret = payload.get("component_appsecret")
                given_ticket = payload.get("component_verify_ticket")
                if not isinstance(given_secret, str) or not given_secret:
                    body = errbody(41004)
                elif not secrets.compare_digest(secret, given_secret):
                    body = errbody(40001, "component_appsecret is wrong")
                elif not self._ticket_valid(appid, given_ticket):
                    body = errbody(61006, "unknown or expired (12 h) component_verify_ticket")
                else:
                    token = self._issue("component", appid)
                    issued = True
                    body = {"component_access_token": token, "expires_in": self._expires_in(token)}
            return self._record_token_call(
                path=COMPONENT_TOKEN_PATH,
                kind="component_token",
                appid=appid,
                body=body,
                token_field="component_access_token",
                issued=issued,
                fault=fault,
            )

    def get_authorizer_token(
        self, component_access_token: str | None, payload: Any, *, fault: FaultRule | None = None
    ) -> Outcome:
        """``POST /cgi-bin/component/api_authorizer_token``: a new authorizer
        token and a ROTATED refresh token (the old one stops working unless
        ``keep_old_refresh_token``)."""
        with self._lock:
            issued = False
            appid = payload.get("authorizer_appid") if isinstance(payload, dict) else None
            appid = appid if isinstance(appid, str) else None
            if fault is not None and not fault.apply:
                body: dict[str, Any] = {}
            else:
                body = self._authorizer_token(component_access_token, payload, appid)
                issued = body.get("errcode", 0) == 0
            return self._record_token_call(
                path=AUTHORIZER_TOKEN_PATH,
                kind="authorizer_token",
                appid=appid,
                body=body,
                token_field="authorizer_access_token",
                issued=issued,
                fault=fault,
            )

    def _authorizer_token(self, component_token: str | None, payload: Any, appid: str | None) -> dict[str, Any]:
        code, component_appid = self._token_error(component_token, frozenset({"component"}))
        if code:
            return errbody(code)
        if not isinstance(payload, dict):
            return errbody(47001)
        if payload.get("component_appid") != component_appid:
            # The component token belongs to another platform.
            return errbody(40001, "component_access_token does not belong to component_appid")
        auth = self._authorizers.get(appid or "")
        if auth is None or auth.component_appid != component_appid or appid in self._revoked:
            return errbody(61003)
        given = payload.get("authorizer_refresh_token")
        if not isinstance(given, str) or given not in auth.refresh_tokens:
            return errbody(61023)
        new_refresh = f"refreshtoken@@@{secrets.token_urlsafe(32)}"
        if not self._config.keep_old_refresh_token:
            auth.refresh_tokens.clear()
        auth.refresh_tokens.add(new_refresh)
        auth.current_refresh_token = new_refresh
        assert appid is not None
        token = self._issue("authorizer", appid)
        return {
            "authorizer_access_token": token,
            "expires_in": self._expires_in(token),
            "authorizer_refresh_token": new_refresh,
        }

    # ------------------------------------------------------------------
    # updatestatus
    # ------------------------------------------------------------------

    def update_status(
        self,
        access_token: str | None,
        raw_body: bytes,
        idempotency_key: str | None = None,
        *,
        fault: FaultRule | None = None,
    ) -> Outcome:
        """``POST /card/invoice/platform/updatestatus``: decide, apply, record.

        With a ``fault`` that is not ``apply`` the call is recorded and the
        fault answered without touching the card; with ``apply`` the call is
        processed first and the fault answered instead of the real answer."""
        payload: Any
        try:
            payload = msgspec.json.decode(raw_body) if raw_body else None
        except msgspec.DecodeError:
            payload = None
        fields = payload if isinstance(payload, dict) else {}
        card_id, code, status = (
            _str_or_none(fields.get("card_id")),
            _str_or_none(fields.get("code")),
            _str_or_none(fields.get("reimburse_status")),
        )
        with self._lock:
            applied = False
            status_before: ReimburseStatus | None = None
            token_code, appid = self._token_error(access_token, frozenset({"token", "stable_token", "authorizer"}))
            if fault is not None and not fault.apply:
                body: dict[str, Any] = {}
            elif token_code:
                body = errbody(token_code)
            elif not isinstance(payload, dict):
                body = errbody(47001, "body is not a JSON object")
            elif not card_id or not code or not status:
                missing = [k for k, v in (("card_id", card_id), ("code", code), ("reimburse_status", status)) if not v]
                body = errbody(72031, f"missing or not a string: {', '.join(missing)}")
            elif status not in _STATUS_VALUES:
                body = errbody(72031, "unknown reimburse_status")
            elif quota_code := self._quota_check(appid or ""):
                body = errbody(quota_code)
            else:
                assert appid is not None
                key = (appid, card_id, code)
                status_before = self._cards.setdefault(key, ReimburseStatus.INIT)
                body = self._transition(key, status_before, ReimburseStatus(status))
                applied = body["errcode"] == 0
            outcome = Outcome(body=body)
            errcode: int | None = int(body["errcode"]) if body else None
            if fault is not None:
                outcome, errcode = self._fault_outcome(fault, body)
            self._calls.append(
                CallRecord(
                    seq=self._next_seq(),
                    time=time.time(),
                    path=UPDATESTATUS_PATH,
                    appid=appid,
                    card_id=card_id,
                    code=code,
                    reimburse_status=status,
                    idempotency_key=idempotency_key,
                    token_fp=token_fingerprint(access_token),
                    errcode=errcode,
                    applied=applied,
                    status_before=status_before.value if status_before else None,
                    http_status=None if outcome.reset else outcome.http_status,
                    fault=fault.kind if fault else None,
                    fault_id=fault.id if fault else None,
                )
            )
            return outcome

    def _transition(self, key: tuple[str, str, str], current: ReimburseStatus, target: ReimburseStatus) -> dict[str, Any]:
        """WeChat's refusals (``domain.wechat_rules``, the one statement of them); else apply."""
        answer = wechat_answer(current, target, refuse_lock_to_cancel=self._config.refuse_lock_to_cancel)
        if not answer.applied:
            return errbody(answer.errcode, answer.reason)
        self._cards[key] = target
        return dict(OK_BODY)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _since(records: list[Any], since: int | None) -> list[Any]:
    if since is None:
        return list(records)
    # Records are appended in seq order, so bisect on seq.
    start = bisect.bisect_right(records, since, key=lambda r: r.seq)
    return records[start:]


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _gateway_page(status: int) -> str:
    # What a proxy in front of WeChat sends: HTML, not a WeChat JSON answer.
    return (
        f"<html><head><title>{status}</title></head>"
        f"<body><center><h1>{status}</h1></center><hr><center>simulator</center></body></html>\n"
    )


def _parse_rule(rule: Mapping[str, Any]) -> FaultRule:
    """Validate a rule dict (from Python or the control API). ``ValueError`` if wrong."""
    data = {k: v for k, v in rule.items() if k not in ("id", "seen", "fired")}
    try:
        parsed = msgspec.convert(data, FaultRule, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(f"bad fault rule: {exc}") from None
    if parsed.kind == "errcode" and parsed.errcode is None:
        raise ValueError("fault kind 'errcode' needs 'errcode'")
    if parsed.kind == "http_status" and not (parsed.http_status and 100 <= parsed.http_status <= 599):
        raise ValueError("fault kind 'http_status' needs 'http_status' (100-599)")
    if parsed.kind == "latency" and not parsed.latency_ms:
        raise ValueError("fault kind 'latency' needs 'latency_ms'")
    if parsed.times is not None and parsed.times < 1:
        raise ValueError("'times' must be >= 1 or null")
    if parsed.after < 0:
        raise ValueError("'after' must be >= 0")
    if parsed.latency_ms is not None and parsed.latency_ms < 0:
        raise ValueError("'latency_ms' must be >= 0")
    return parsed


def _check_setting(key: str, value: Any) -> Any:
    """Validate one setting; ``ValueError`` with the key when wrong."""
    if key in ("refuse_lock_to_cancel", "keep_old_refresh_token", "finish_abandoned"):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be a boolean")
        return value
    if key in ("daily_quota", "minute_quota"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{key} must be a non-negative integer or null")
        return value
    if key == "latency_ms":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{key} must be a non-negative number")
        return value
    # token_ttl_s, token_grace_s, minute_window_s, timeout_s
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number")
    if (key == "token_grace_s" and value < 0) or (key != "token_grace_s" and value <= 0):
        raise ValueError(f"{key} out of range")
    return float(value)
