"""WeChat access tokens: one owner per account, refreshed ahead of expiry.

WeChat invalidates an account's previous ``access_token`` (after a grace of
about five minutes) every time a new one is fetched, so every process, every
worker and every retry must share *one* token per account. A
``TokenProvider`` is that owner inside a process; across processes use
``stable`` mode (``/cgi-bin/stable_token`` hands out the same token while it
is valid) or ``external`` mode (a central service owns the token), never
``classic`` in more than one instance.

The caching and concurrency rules live once, in ``CachingTokenProvider``:

- **Single flight.** Each appid has one ``asyncio.Lock``. A caller that finds
  no fresh token takes the lock, checks again, and only then fetches; callers
  queued behind it find the fresh token and return it. Fifty concurrent
  ``get`` calls on a cold cache make one HTTP call. A fetch that *fails* is
  shared the same way: callers that queued during that flight get its error
  instead of each hammering a struggling token endpoint in turn.
- **Refresh ahead.** A token is refreshed ``refresh_margin_s`` (default 300 s)
  before it expires, or at half its lifetime when that is shorter, so a
  request never carries a token that expires on the way. If that early
  refresh fails, the still-valid token is served (and the refresh retried
  after ``REFRESH_RETRY_S``) rather than failing deliveries that would work.
- **Compare-and-expire.** ``invalidate(appid, token)`` drops the cached token
  only if it is still the token the caller used. When many requests carried
  the same token and all got 40001, the first invalidation drops it and the
  rest are no-ops, so one refresh follows, not one per request; and a caller
  that got 40001 with an *old* token cannot throw away the new token another
  caller has just fetched (which, in ``classic`` mode, would make us fetch
  again and invalidate the token everyone else is using).
- **No recursion.** ``get`` fetches at most once per call; the single retry
  after a token error belongs to the caller (``adapters.wechat``), which
  does it once, in a bounded loop. The component provider's retry after an
  invalid ``component_access_token`` is likewise a loop of two.

Token-endpoint errors are translated at this boundary: a refusal of the
credentials (40001 wrong secret, 40013 bad appid, 40125 bad secret, 61023 bad
refresh token, 40164 IP not whitelisted, ...) is ``CredentialError``
(permanent; the message names the appid and errcode, never a secret); -1,
45011, HTTP 5xx, timeouts and connection errors are
``TransientWeChatError``; 45009 (daily quota of token calls) is
``QuotaExhaustedError``. Errors are raised *outside* the ``except`` block that
caught httpx's exception, so not even ``__context__`` keeps a URL with a
secret in it. Every secret and every fetched token is registered with
``adapters.logging.register_secret`` so that it is masked in any log line.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import os
import shlex
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import httpx
import msgspec
from pydantic import SecretStr

from adapters.logging import forget_secret, get_logger, register_secret
from adapters.settings import Settings, env_name
from domain.errors import (
    AuthorizerUnauthorizedError,
    ConfigurationError,
    CredentialError,
    MissingCredentialsError,
    QuotaExhaustedError,
    TransientWeChatError,
    WeChatError,
)
from domain.wechat_errors import MINUTE_QUOTA_ERRCODE, QUOTA_ERRCODES, TOKEN_ERRCODES

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_REFRESH_MARGIN_S",
    "NO_CREDENTIALS_ERRCODE",
    "REFRESH_RETRY_S",
    "TOKEN_APPID_ENV",
    "UNAUTHORIZED_ERRCODE",
    "AccessToken",
    "CachingTokenProvider",
    "ClassicTokenProvider",
    "ComponentTokenProvider",
    "ExternalTokenProvider",
    "RefreshHook",
    "RotationHook",
    "StableTokenProvider",
    "TokenProvider",
    "build_token_provider",
]

log = get_logger("invoice_sm.tokens")

DEFAULT_BASE_URL = "https://api.weixin.qq.com"
DEFAULT_REFRESH_MARGIN_S = 300.0
#: After a failed refresh-ahead, serve the still-valid token this long before trying again.
REFRESH_RETRY_S = 10.0
#: Environment variable naming the appid for an ``external`` token command.
TOKEN_APPID_ENV = "INVOICE_SM_TOKEN_APPID"  # noqa: S105 - the variable's name, not a secret
#: errcode of the ``CredentialError`` raised when no credentials are configured
#: for the asked appid. It is WeChat's "access_token missing", which is what
#: sending the call would get.
NO_CREDENTIALS_ERRCODE = 41001
#: errcode of ``AuthorizerUnauthorizedError``: WeChat's 61003 ("component is
#: not authorized by this account"), what a call for that authorizer would get.
UNAUTHORIZED_ERRCODE = 61003
# Token-endpoint errcodes worth retrying: busy and the per-minute quota.
_TRANSIENT_TOKEN_ERRCODES = frozenset({-1, MINUTE_QUOTA_ERRCODE})
# WeChat errmsgs are short; anything longer is not worth carrying around.
_MAX_ERRMSG = 200

_T = TypeVar("_T")
Clock = Callable[[], float]
#: ``on_refresh(appid, mode)``: called after every successful token fetch (metrics).
RefreshHook = Callable[[str, str], None]
#: ``on_refresh_token_rotated(authorizer_appid, new_refresh_token)``: persist it. May be async.
RotationHook = Callable[[str, str], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A token for one account. ``expires_at`` is on the provider's clock (monotonic seconds).

    ``value`` is left out of ``repr`` (and so of ``str``), so a token that
    ends up in a log line or an assertion message shows as ``AccessToken(expires_at=…, appid=…)``.
    """

    value: str = field(repr=False)
    expires_at: float
    appid: str


class TokenProvider(abc.ABC):
    """The port: the one owner of the access tokens of one or more accounts."""

    #: ``stable``, ``classic``, ``component`` or ``external`` (a metrics label).
    mode: ClassVar[str]
    #: Successful token fetches so far.
    refreshes: int
    #: Called as ``on_refresh(appid, mode)`` after each successful fetch.
    on_refresh: RefreshHook | None
    #: Called as ``on_refresh_failure(appid, mode)`` after each failed fetch
    #: (once per fetch, not per caller sharing it); set after construction.
    on_refresh_failure: RefreshHook | None = None

    @abc.abstractmethod
    async def get(self, appid: str) -> AccessToken:
        """A token for ``appid`` valid for at least a while; fetched only if needed."""

    @abc.abstractmethod
    async def invalidate(self, appid: str, token: AccessToken) -> None:
        """WeChat refused ``token``: forget it, unless a newer one has already replaced it."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Forget every token. The injected ``httpx.AsyncClient`` belongs to the caller."""


@dataclass(slots=True)
class _Slot:
    """Cache state of one appid; only touched under ``lock`` (except lock-free reads)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    token: AccessToken | None = None
    refresh_at: float = 0.0
    # Do not retry a failed refresh-ahead before this (the current token is still valid).
    retry_at: float = 0.0
    # Incremented when a fetch ends: a caller that queued before then can tell one ran.
    finished: int = 0
    # The error of the latest flight, shared with the callers that queued during it.
    failure: WeChatError | None = None
    # Tokens replaced by a refresh, kept registered for log masking until they expire.
    retired: list[AccessToken] = field(default_factory=list)


class CachingTokenProvider(TokenProvider):
    """Caching, single flight, refresh ahead and compare-and-expire; subclasses only fetch."""

    def __init__(
        self,
        *,
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        clock: Clock = time.monotonic,
        on_refresh: RefreshHook | None = None,
    ) -> None:
        if refresh_margin_s < 0:
            raise ValueError("refresh_margin_s must be >= 0")
        self.refreshes = 0
        self.on_refresh = on_refresh
        self._margin = refresh_margin_s
        self._clock = clock
        self._slots: dict[str, _Slot] = {}

    @abc.abstractmethod
    async def _fetch(self, appid: str) -> tuple[str, float]:
        """Ask the token source once: ``(token, expires_in seconds)``, or raise a ``WeChatError``."""

    def _on_invalidated(self, appid: str, token: AccessToken) -> None:
        """Hook: ``token`` was dropped after WeChat refused it (called once per dropped token)."""

    async def get(self, appid: str) -> AccessToken:
        slot = self._slots.get(appid)
        if slot is None:
            slot = self._slots[appid] = _Slot()
        token = self._usable(slot)
        if token is not None:
            return token
        seen = slot.finished
        async with slot.lock:
            token = self._usable(slot)
            if token is not None:
                return token  # refreshed by the caller we queued behind
            if slot.finished != seen and slot.failure is not None:
                return self._fallback(slot, slot.failure)  # that caller's fetch failed: share it
            slot.failure = None
            started = self._clock()
            try:
                value, expires_in = await self._fetch(appid)
            except WeChatError as exc:
                slot.failure = exc
                self._call_hook(self.on_refresh_failure, appid)
                return self._fallback(slot, exc)
            finally:
                slot.finished += 1
            return self._store(slot, appid, value, expires_in, started)

    async def invalidate(self, appid: str, token: AccessToken) -> None:
        # No lock and no await between the comparison and the drop: in asyncio
        # that is atomic, and it must not wait behind a refresh in flight
        # (that refresh stores a new token, which the comparison then keeps).
        slot = self._slots.get(appid)
        if slot is None or slot.token is None or slot.token.value != token.value:
            return
        slot.token = None
        slot.refresh_at = slot.retry_at = 0.0
        log.info("wechat_token_invalidated", appid=appid, mode=self.mode)
        self._on_invalidated(appid, token)

    async def aclose(self) -> None:
        self._slots.clear()

    def _usable(self, slot: _Slot) -> AccessToken | None:
        token = slot.token
        if token is None:
            return None
        now = self._clock()
        if now < slot.refresh_at:
            return token
        if now < slot.retry_at and now < token.expires_at:
            return token  # a refresh-ahead failed a moment ago; this one still works
        return None

    def _fallback(self, slot: _Slot, error: WeChatError) -> AccessToken:
        """After a failed fetch: the current token if it is still valid, else the error."""
        token = slot.token
        now = self._clock()
        if token is not None and now < token.expires_at:
            slot.retry_at = now + REFRESH_RETRY_S
            log.warning(
                "wechat_token_refresh_failed",
                appid=token.appid,
                mode=self.mode,
                errcode=error.errcode,
                error=str(error),
                expires_in_s=round(token.expires_at - now, 1),
            )
            return token
        raise error

    def _store(self, slot: _Slot, appid: str, value: str, expires_in: float, started: float) -> AccessToken:
        register_secret(value)
        now = self._clock()
        still_valid = [t for t in slot.retired if t.expires_at > now]
        for old in slot.retired:
            if old.expires_at <= now:
                forget_secret(old.value)
        if slot.token is not None and slot.token.value != value:
            still_valid.append(slot.token)
        slot.retired = still_valid
        # Lifetime counted from before the request: the token may be older than its answer.
        token = AccessToken(value=value, expires_at=started + expires_in, appid=appid)
        slot.token = token
        slot.refresh_at = token.expires_at - min(self._margin, expires_in / 2)
        slot.retry_at = 0.0
        self.refreshes += 1
        log.info("wechat_token_refreshed", appid=appid, mode=self.mode, expires_in_s=expires_in)
        self._call_hook(self.on_refresh, appid)
        return token

    def _call_hook(self, hook: RefreshHook | None, appid: str) -> None:
        if hook is not None:
            try:
                hook(appid, self.mode)
            except Exception:  # a metrics hook must never fail a delivery
                log.exception("wechat_token_refresh_hook_failed", appid=appid)


class _SingleAccountProvider(CachingTokenProvider):
    """An account's own token (stable or classic): serves exactly one appid."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        appid: str,
        secret: SecretStr | str,
        base_url: str = DEFAULT_BASE_URL,
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        clock: Clock = time.monotonic,
        on_refresh: RefreshHook | None = None,
    ) -> None:
        super().__init__(refresh_margin_s=refresh_margin_s, clock=clock, on_refresh=on_refresh)
        self._http = http
        self._appid = appid
        self._secret = secret if isinstance(secret, SecretStr) else SecretStr(secret)
        self._base_url = base_url.rstrip("/")
        register_secret(self._secret)

    def _check_appid(self, appid: str) -> None:
        if appid != self._appid:
            raise MissingCredentialsError(
                NO_CREDENTIALS_ERRCODE,
                f"no credentials for appid {appid}: token mode {self.mode!r} serves appid {self._appid} only",
            )


class StableTokenProvider(_SingleAccountProvider):
    """``POST /cgi-bin/stable_token``: safe to run in many instances at once.

    Normal fetches send ``force_refresh: false``, which returns the account's
    current token and never invalidates the one other instances hold.

    After WeChat refused a token this provider fetched (40001/40014/42001 and
    ``invalidate``), the next fetch still asks with ``force_refresh: false``
    first: when the token really expired, stable_token already hands out a
    new one, and a forced refresh would needlessly invalidate the token
    every other instance is using (and spend a call of its small daily
    force-refresh allowance). Only if that answer is the very token that was
    refused does it ask once more with ``force_refresh: true``, at most once
    per ``force_refresh_min_interval_s`` (WeChat itself refuses forced
    refreshes closer than 30 s apart); inside that interval the refused
    token is returned and the caller's single retry fails with
    ``TokenInvalidError``, which the deliverer backs off from.
    """

    mode: ClassVar[str] = "stable"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        appid: str,
        secret: SecretStr | str,
        base_url: str = DEFAULT_BASE_URL,
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        clock: Clock = time.monotonic,
        on_refresh: RefreshHook | None = None,
        force_refresh_min_interval_s: float = 30.0,
    ) -> None:
        super().__init__(
            http,
            appid=appid,
            secret=secret,
            base_url=base_url,
            refresh_margin_s=refresh_margin_s,
            clock=clock,
            on_refresh=on_refresh,
        )
        self._force_interval = force_refresh_min_interval_s
        self._last_forced: float | None = None
        self._refused: str | None = None

    def _on_invalidated(self, appid: str, token: AccessToken) -> None:
        self._refused = token.value

    async def _fetch(self, appid: str) -> tuple[str, float]:
        self._check_appid(appid)
        value, expires_in = await self._request(force_refresh=False)
        if self._refused is not None and value == self._refused:
            now = self._clock()
            if self._last_forced is None or now - self._last_forced >= self._force_interval:
                self._last_forced = now
                log.warning("wechat_stable_token_forced", appid=appid)
                value, expires_in = await self._request(force_refresh=True)
            else:
                log.warning("wechat_stable_token_force_too_soon", appid=appid)
        self._refused = None
        return value, expires_in

    async def _request(self, *, force_refresh: bool) -> tuple[str, float]:
        data = await _call_token_endpoint(
            self._http,
            "POST",
            f"{self._base_url}/cgi-bin/stable_token",
            appid=self._appid,
            what="stable_token",
            json={
                "grant_type": "client_credential",
                "appid": self._appid,
                "secret": self._secret.get_secret_value(),
                "force_refresh": force_refresh,
            },
            secrets=(self._secret.get_secret_value(),),
        )
        return _token_from(data, "access_token", appid=self._appid, what="stable_token")


class ClassicTokenProvider(_SingleAccountProvider):
    """``GET /cgi-bin/token``: every fetch invalidates the previous token.

    Only correct when this process is the account's one and only token
    owner; a warning at construction says so, because two instances (or
    another system using the same appid) silently invalidate each other's
    tokens and turn every few minutes into a burst of 40001s.
    """

    mode: ClassVar[str] = "classic"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        appid: str,
        secret: SecretStr | str,
        base_url: str = DEFAULT_BASE_URL,
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        clock: Clock = time.monotonic,
        on_refresh: RefreshHook | None = None,
    ) -> None:
        super().__init__(
            http,
            appid=appid,
            secret=secret,
            base_url=base_url,
            refresh_margin_s=refresh_margin_s,
            clock=clock,
            on_refresh=on_refresh,
        )
        log.warning(
            "wechat_classic_token_mode",
            appid=appid,
            detail=(
                "every /cgi-bin/token fetch invalidates the previous token: run exactly one "
                "instance with this appid, or use token mode 'stable' or 'external'"
            ),
        )

    async def _fetch(self, appid: str) -> tuple[str, float]:
        self._check_appid(appid)
        data = await _call_token_endpoint(
            self._http,
            "GET",
            f"{self._base_url}/cgi-bin/token",
            appid=appid,
            what="token",
            params={"grant_type": "client_credential", "appid": appid, "secret": self._secret.get_secret_value()},
            secrets=(self._secret.get_secret_value(),),
        )
        return _token_from(data, "access_token", appid=appid, what="token")


class _ComponentAccessTokenProvider(CachingTokenProvider):
    """The third-party platform's own ``component_access_token`` (one appid: the component's)."""

    mode: ClassVar[str] = "component_access_token"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        component_appid: str,
        component_secret: SecretStr,
        verify_ticket: SecretStr,
        base_url: str,
        refresh_margin_s: float,
        clock: Clock,
        on_refresh: RefreshHook | None,
    ) -> None:
        super().__init__(refresh_margin_s=refresh_margin_s, clock=clock, on_refresh=on_refresh)
        self._http = http
        self._appid = component_appid
        self._secret = component_secret
        self.verify_ticket = verify_ticket
        self._base_url = base_url

    async def _fetch(self, appid: str) -> tuple[str, float]:
        secrets = (self._secret.get_secret_value(), self.verify_ticket.get_secret_value())
        data = await _call_token_endpoint(
            self._http,
            "POST",
            f"{self._base_url}/cgi-bin/component/api_component_token",
            appid=self._appid,
            what="api_component_token",
            json={
                "component_appid": self._appid,
                "component_appsecret": secrets[0],
                "component_verify_ticket": secrets[1],
            },
            secrets=secrets,
        )
        return _token_from(data, "component_access_token", appid=self._appid, what="api_component_token")


class ComponentTokenProvider(CachingTokenProvider):
    """Third-party platform: an ``authorizer_access_token`` per authorizer appid.

    Two levels of token, each with its own single-flight cache: the
    platform's ``component_access_token`` (from ``api_component_token``) and,
    per authorizer appid, the ``authorizer_access_token`` (from
    ``api_authorizer_token``). Each authorizer-token answer may carry a new
    ``authorizer_refresh_token``; the newest is kept in memory and used for
    the next refresh, and ``on_refresh_token_rotated(appid, new_token)`` is
    called so the caller can persist it (a restart with a stale refresh
    token would otherwise lose the authorization). If the authorizer-token
    call says the component token is invalid (40001/40014/42001), that
    component token is expired (compare-and-expire) and the call is made
    once more with a fresh one.
    """

    mode: ClassVar[str] = "component"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        component_appid: str,
        component_secret: SecretStr | str,
        verify_ticket: SecretStr | str,
        refresh_tokens: Mapping[str, SecretStr | str],
        base_url: str = DEFAULT_BASE_URL,
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        clock: Clock = time.monotonic,
        on_refresh: RefreshHook | None = None,
        on_refresh_token_rotated: RotationHook | None = None,
    ) -> None:
        super().__init__(refresh_margin_s=refresh_margin_s, clock=clock, on_refresh=on_refresh)
        self._http = http
        self._component_appid = component_appid
        self._base_url = base_url.rstrip("/")
        self.on_refresh_token_rotated = on_refresh_token_rotated
        self._refresh_tokens: dict[str, SecretStr] = {appid: _as_secret(token) for appid, token in refresh_tokens.items()}
        self._component = _ComponentAccessTokenProvider(
            http,
            component_appid=component_appid,
            component_secret=_as_secret(component_secret),
            verify_ticket=_as_secret(verify_ticket),
            base_url=self._base_url,
            refresh_margin_s=refresh_margin_s,
            clock=clock,
            on_refresh=on_refresh,
        )
        for secret in (component_secret, verify_ticket, *self._refresh_tokens.values()):
            register_secret(secret)
        # Authorizers whose ``unauthorized`` push arrived (adapters.component_feed).
        self._unauthorized: set[str] = set()

    @property
    def component_refreshes(self) -> int:
        """Successful ``component_access_token`` fetches (``refreshes`` counts authorizer tokens)."""
        return self._component.refreshes

    def set_verify_ticket(self, ticket: SecretStr | str) -> None:
        """Use a newer ``component_verify_ticket`` (WeChat pushes one every 10 minutes)."""
        secret = _as_secret(ticket)
        register_secret(secret)
        self._component.verify_ticket = secret

    def revoke_authorizer(self, appid: str) -> None:
        """The authorizer revoked us (``unauthorized`` push): its cached token is
        dropped and every later ``get`` for it raises ``AuthorizerUnauthorizedError``."""
        self._unauthorized.add(appid)
        self._forget_token(appid)
        log.warning("wechat_authorizer_unauthorized", appid=appid)

    def authorization_changed(self, appid: str) -> None:
        """``authorized`` / ``updateauthorized``: the authorizer is served again and
        its next ``get`` fetches a fresh token (it may carry other permissions now)."""
        self._unauthorized.discard(appid)
        self._forget_token(appid)
        log.info("wechat_authorizer_authorization_changed", appid=appid)

    def is_unauthorized(self, appid: str) -> bool:
        return appid in self._unauthorized

    def _forget_token(self, appid: str) -> None:
        # Not popped: a fetch in flight holds this slot's lock, and callers queued
        # behind it must see that a fresh fetch is due.
        slot = self._slots.get(appid)
        if slot is not None:
            slot.token = None
            slot.refresh_at = slot.retry_at = 0.0

    async def get(self, appid: str) -> AccessToken:
        if appid in self._unauthorized:
            raise AuthorizerUnauthorizedError(
                UNAUTHORIZED_ERRCODE,
                f"authorizer appid {appid} revoked this platform's authorization (unauthorized push): "
                f"nothing is sent for it until it authorizes again",
            )
        return await super().get(appid)

    async def aclose(self) -> None:
        await self._component.aclose()
        await super().aclose()

    async def _fetch(self, appid: str) -> tuple[str, float]:
        refresh = self._refresh_tokens.get(appid)
        if refresh is None:
            raise MissingCredentialsError(
                NO_CREDENTIALS_ERRCODE,
                f"no authorizer_refresh_token for authorizer appid {appid} (set {env_name('wechat_authorizer_refresh_tokens')})",
            )
        data: dict[str, Any] = {}
        # Two attempts at most: the second only after the component token was refused.
        for attempt in (1, 2):
            component = await self._component.get(self._component_appid)
            data = await _call_token_endpoint(
                self._http,
                "POST",
                f"{self._base_url}/cgi-bin/component/api_authorizer_token",
                appid=appid,
                what="api_authorizer_token",
                params={"component_access_token": component.value},
                json={
                    "component_appid": self._component_appid,
                    "authorizer_appid": appid,
                    "authorizer_refresh_token": refresh.get_secret_value(),
                },
                secrets=(component.value, refresh.get_secret_value()),
                pass_errcodes=TOKEN_ERRCODES if attempt == 1 else frozenset(),
            )
            if data.get("errcode", 0) in TOKEN_ERRCODES:
                await self._component.invalidate(self._component_appid, component)
                continue
            break
        value, expires_in = _token_from(data, "authorizer_access_token", appid=appid, what="api_authorizer_token")
        rotated = data.get("authorizer_refresh_token")
        if isinstance(rotated, str) and rotated and rotated != refresh.get_secret_value():
            register_secret(rotated)
            self._refresh_tokens[appid] = SecretStr(rotated)
            await self._notify_rotation(appid, rotated)
        return value, expires_in

    async def _notify_rotation(self, appid: str, new_token: str) -> None:
        log.info("wechat_authorizer_refresh_token_rotated", appid=appid)
        hook = self.on_refresh_token_rotated
        if hook is None:
            return
        try:
            result = hook(appid, new_token)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # The new refresh token is in memory and works; only its persistence failed.
            log.exception("wechat_refresh_token_persist_failed", appid=appid)


class ExternalTokenProvider(CachingTokenProvider):
    """Tokens owned by another system (a central token service, a vault, a script).

    Either ``GET token_url?appid=…`` or run ``command`` (split with
    ``shlex``, no shell; the appid in the environment variable
    ``INVOICE_SM_TOKEN_APPID``, stdin closed, stderr passed through so the
    command's own diagnostics stay visible). Both answer JSON
    ``{"access_token": "…", "expires_in": 7200}``; an ``errcode`` in it is
    treated as a token-endpoint error. Invalidation only drops the cached
    token: refreshing it is the external owner's job, and the next ``get``
    asks it again.
    """

    mode: ClassVar[str] = "external"

    def __init__(
        self,
        *,
        http: httpx.AsyncClient | None = None,
        token_url: str | None = None,
        command: str | None = None,
        command_timeout_s: float = 30.0,
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        clock: Clock = time.monotonic,
        on_refresh: RefreshHook | None = None,
    ) -> None:
        super().__init__(refresh_margin_s=refresh_margin_s, clock=clock, on_refresh=on_refresh)
        url_setting, command_setting = env_name("wechat_token_url"), env_name("wechat_token_command")
        if (token_url is None) == (command is None):
            raise ConfigurationError(f"{url_setting} or {command_setting}", "exactly one is required by token mode 'external'")
        self._argv: list[str] = []
        if token_url is not None:
            if http is None:
                raise ValueError("token_url needs an httpx.AsyncClient")
            if not token_url.startswith(("http://", "https://")):
                raise ConfigurationError(url_setting, "must start with http:// or https://")
        if command is not None:
            try:
                self._argv = shlex.split(command)
            except ValueError as exc:
                raise ConfigurationError(command_setting, f"cannot be split: {exc}") from None
            if not self._argv:
                raise ConfigurationError(command_setting, "is empty")
            if shutil.which(self._argv[0]) is None:
                raise ConfigurationError(command_setting, f"program {self._argv[0]!r} not found or not executable")
        self._http = http
        self._url = token_url
        self._timeout = command_timeout_s

    async def _fetch(self, appid: str) -> tuple[str, float]:
        if self._url is not None and self._http is not None:
            # Merged into the URL's own query: ``params=`` would replace it.
            url = str(httpx.URL(self._url).copy_merge_params({"appid": appid}))
            data = await _call_token_endpoint(self._http, "GET", url, appid=appid, what="external token URL")
        else:
            data = await self._run_command(appid)
        return _token_from(data, "access_token", appid=appid, what="external token source")

    async def _run_command(self, appid: str) -> dict[str, Any]:
        what = f"token command {self._argv[0]!r}"
        error: WeChatError | None = None
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, TOKEN_APPID_ENV: appid},
            )
        except OSError as exc:
            error = TransientWeChatError(-1, f"{what} for appid {appid} could not start: {type(exc).__name__}")
        if error is not None:
            raise error
        try:
            stdout, _ = await asyncio.wait_for(process.communicate(), self._timeout)
        except BaseException as exc:  # timeout or cancellation: never leave the child behind
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            if not isinstance(exc, TimeoutError):
                raise
            error = TransientWeChatError(-1, f"{what} for appid {appid} timed out after {self._timeout:g} s")
        if error is not None:
            raise error
        if process.returncode != 0:
            raise TransientWeChatError(-1, f"{what} for appid {appid} exited with status {process.returncode}")
        data = _decode_object(stdout)
        if data is None:
            raise TransientWeChatError(-1, f"{what} for appid {appid} did not print a JSON object")
        return _check_errcode(data, appid=appid, what=what, http_status=None, secrets=())


def build_token_provider(
    settings: Settings,
    http: httpx.AsyncClient,
    *,
    on_refresh: RefreshHook | None = None,
    on_refresh_token_rotated: RotationHook | None = None,
    clock: Clock = time.monotonic,
) -> TokenProvider:
    """The provider ``settings.wechat_token_mode`` asks for; a missing setting raises ``ConfigurationError``.

    ``http`` is shared (usually the ``WeChatClient``'s pooled client) and
    stays the caller's to close.
    """
    settings.require_wechat()
    mode = settings.wechat_token_mode
    base_url = settings.wechat_base_url
    margin = settings.wechat_token_refresh_margin_s
    if mode in ("stable", "classic"):
        cls = StableTokenProvider if mode == "stable" else ClassicTokenProvider
        return cls(
            http,
            appid=_required(settings.wechat_appid, "wechat_appid"),
            secret=_required(settings.wechat_secret, "wechat_secret"),
            base_url=base_url,
            refresh_margin_s=margin,
            clock=clock,
            on_refresh=on_refresh,
        )
    if mode == "component":
        return ComponentTokenProvider(
            http,
            component_appid=_required(settings.wechat_component_appid, "wechat_component_appid"),
            component_secret=_required(settings.wechat_component_secret, "wechat_component_secret"),
            verify_ticket=_required(settings.wechat_component_verify_ticket, "wechat_component_verify_ticket"),
            refresh_tokens=settings.wechat_authorizer_refresh_tokens,
            base_url=base_url,
            refresh_margin_s=margin,
            clock=clock,
            on_refresh=on_refresh,
            on_refresh_token_rotated=on_refresh_token_rotated,
        )
    if settings.wechat_token_url and settings.wechat_token_command:
        raise ConfigurationError(
            f"{env_name('wechat_token_url')} and {env_name('wechat_token_command')}",
            "set only one for token mode 'external'",
        )
    return ExternalTokenProvider(
        http=http,
        token_url=settings.wechat_token_url or None,
        command=settings.wechat_token_command or None,
        refresh_margin_s=margin,
        clock=clock,
        on_refresh=on_refresh,
    )


# --- the token endpoints' wire format, shared by every provider -------------


async def _call_token_endpoint(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    appid: str,
    what: str,
    params: Mapping[str, str] | None = None,
    json: Mapping[str, Any] | None = None,
    secrets: Iterable[str] = (),
    pass_errcodes: frozenset[int] = frozenset(),
) -> dict[str, Any]:
    """One token-endpoint call: the decoded JSON object, or a ``WeChatError``.

    Errcodes in ``pass_errcodes`` are returned to the caller instead of raised.
    """
    error: WeChatError | None = None
    response: httpx.Response | None = None
    try:
        response = await http.request(method, url, params=params, json=json)
    except httpx.HTTPError as exc:
        # Not even the exception's class name goes wrong here; its message has the URL.
        error = TransientWeChatError(-1, f"{what} for appid {appid} failed: {type(exc).__name__}")
    if error is not None or response is None:
        raise error or TransientWeChatError(-1, f"{what} for appid {appid} gave no answer")
    status = response.status_code
    if status >= 500 or status in (408, 429):
        raise TransientWeChatError(-1, f"{what} for appid {appid}: HTTP {status}", http_status=status)
    data = _decode_object(response.content)
    if data is None:
        if response.is_success:
            raise TransientWeChatError(-1, f"{what} for appid {appid}: answer is not a JSON object", http_status=status)
        raise CredentialError(-1, f"{what} for appid {appid}: HTTP {status}", http_status=status)
    errcode = data.get("errcode", 0)
    if isinstance(errcode, int) and errcode in pass_errcodes:
        return data
    data = _check_errcode(data, appid=appid, what=what, http_status=status, secrets=secrets)
    if not response.is_success:
        raise CredentialError(-1, f"{what} for appid {appid}: HTTP {status}", http_status=status)
    return data


def _check_errcode(
    data: dict[str, Any], *, appid: str, what: str, http_status: int | None, secrets: Iterable[str]
) -> dict[str, Any]:
    errcode = data.get("errcode", 0)
    if errcode == 0:
        return data
    if not isinstance(errcode, int) or isinstance(errcode, bool):
        raise TransientWeChatError(-1, f"{what} for appid {appid}: malformed errcode", http_status=http_status)
    errmsg = _clean(data.get("errmsg"), secrets)
    message = f"{what} refused appid {appid}: {errmsg}"
    if errcode in _TRANSIENT_TOKEN_ERRCODES:
        raise TransientWeChatError(errcode, message, http_status=http_status)
    if errcode in QUOTA_ERRCODES:
        raise QuotaExhaustedError(errcode, message, http_status=http_status)
    raise CredentialError(errcode, message, http_status=http_status)


def _token_from(data: Mapping[str, Any], key: str, *, appid: str, what: str) -> tuple[str, float]:
    value = data.get(key)
    expires_in = data.get("expires_in")
    if (
        not isinstance(value, str)
        or not value
        or not isinstance(expires_in, int | float)
        or isinstance(expires_in, bool)
        or expires_in <= 0
    ):
        raise TransientWeChatError(-1, f"{what} for appid {appid}: answer lacks {key} or expires_in")
    return value, float(expires_in)


def _decode_object(content: bytes) -> dict[str, Any] | None:
    try:
        data = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return None
    return data if isinstance(data, dict) else None


def _clean(errmsg: object, secrets: Iterable[str]) -> str:
    """WeChat's errmsg, without any secret we sent (defensive: it should never echo one)."""
    text = errmsg if isinstance(errmsg, str) else ""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:_MAX_ERRMSG]


def _as_secret(value: SecretStr | str) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(value)


def _required(value: _T | None, field_name: str) -> _T:
    # ``Settings.require_wechat`` has checked already; this narrows the type.
    if value is None:
        raise ConfigurationError(env_name(field_name), "required")
    return value
