"""HTTP endpoints for Prometheus, orchestrators and support: /metrics, /healthz, /readyz, /invoices.

``HealthServer`` is a small aiohttp server that runs in the service's own
asyncio loop, so ``/healthz`` answering at all proves the loop is not
blocked, and readiness checks read the components' state without locks.

- ``GET /metrics``: the ``Metrics`` registry; Prometheus text format 0.0.4 by
  default, OpenMetrics or text 1.0.0 when the scraper's ``Accept`` asks
  (prometheus_client's ``choose_encoder``).
- ``GET /healthz``: ``200 {"status": "ok"}`` while the loop runs (liveness).
- ``GET /readyz``: ``200`` when every registered readiness check returns
  ``True`` (vacuously so when none is registered), otherwise ``503`` with the
  failing checks named; a check that raises counts as failing. Body::

      {"status": "ready" | "not_ready", "checks": {"name": true, ...}, "failing": ["name", ...]}

While at least one check is registered, the server also sets the
``ready`` gauge (1 or 0) each time it evaluates the checks, on ``/readyz``
and on every ``/metrics`` scrape, so the metric and the probe never
disagree; components register checks rather than set the gauge.

- ``GET /invoices/{card_id}/{code}``: what the service knows of one invoice,
  answered by the function given to ``set_invoice_query`` (the command wires
  ``consumers.commands_status.InvoiceQuery``); ``404`` while none is set.

Access logging is off: a scrape every few seconds is not news.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from adapters.logging import get_logger
from adapters.metrics import Metrics

__all__ = ["HealthServer", "InvoiceQueryHandler", "ReadinessCheck"]

ReadinessCheck = Callable[[], bool]
#: ``(card_id, code, query parameters, request headers) -> (HTTP status, JSON body)``:
#: free of aiohttp, so the query lives outside this adapter.
InvoiceQueryHandler = Callable[[str, str, Mapping[str, str], Mapping[str, str]], Awaitable[tuple[int, dict[str, object]]]]

_log = get_logger("invoice_sm.health")


class HealthServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port``.

    Args:
        metrics: whose registry ``/metrics`` renders.
        host: interface to bind; loopback by default.
        port: TCP port; ``0`` picks a free one (read it back from ``.port``).

    Use ``await start()`` / ``await stop()``, or ``async with``.
    """

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> None:
        self._metrics = metrics
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._checks: dict[str, ReadinessCheck] = {}
        self._invoice_query: InvoiceQueryHandler | None = None
        self._runner: web.AppRunner | None = None

    def add_readiness_check(self, name: str, fn: ReadinessCheck) -> None:
        """Make ``/readyz`` depend on ``fn()`` returning true; a second check of the same name replaces the first.

        ``fn`` is called in the event loop on every probe and scrape: it must
        be cheap and synchronous (an ``async def`` is refused with ``TypeError``).
        """
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"readiness check {name!r} must be a plain function, not async")
        self._checks[name] = fn

    def set_invoice_query(self, fn: InvoiceQueryHandler) -> None:
        """Answer ``GET /invoices/{card_id}/{code}`` with ``fn`` (replaces any earlier one)."""
        self._invoice_query = fn

    @property
    def port(self) -> int:
        """The port actually bound. Raises ``RuntimeError`` before ``start()``."""
        if self._port is None:
            raise RuntimeError("HealthServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``. Raises ``RuntimeError`` before ``start()``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving in the running loop."""
        if self._runner is not None:
            raise RuntimeError("HealthServer is already started")
        app = web.Application()
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/healthz", self._handle_healthz)
        app.router.add_get("/readyz", self._handle_readyz)
        app.router.add_get("/invoices/{card_id}/{code}", self._handle_invoice)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        _log.info("health_server_started", url=self.url)

    async def stop(self) -> None:
        """Stop serving and release the port. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            self._port = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def evaluate(self) -> dict[str, bool]:
        """Run every readiness check now; also sets the ``ready`` gauge when any is registered."""
        results: dict[str, bool] = {}
        for name, fn in self._checks.items():
            try:
                results[name] = bool(fn())
            except Exception as exc:  # noqa: BLE001 - a check may fail any way; it reports not ready
                # A broken check must not take the probe down with it: it
                # reports "not ready" and says why in the log.
                _log.warning("readiness_check_failed", check=name, error=repr(exc))
                results[name] = False
        if results:
            self._metrics.ready.set(1 if all(results.values()) else 0)
        return results

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        self.evaluate()
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # aiohttp's content_type= refuses parameters (version, charset), so
        # the header is set whole.
        return web.Response(body=encoder(self._metrics.registry), headers={"Content-Type": content_type})

    async def _handle_healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _handle_invoice(self, request: web.Request) -> web.Response:
        query = self._invoice_query
        if query is None:
            return web.json_response({"error": "this process answers no invoice queries"}, status=404)
        status, body = await query(request.match_info["card_id"], request.match_info["code"], request.query, request.headers)
        return web.json_response(body, status=status)

    async def _handle_readyz(self, _request: web.Request) -> web.Response:
        results = self.evaluate()
        failing = [name for name, ok in results.items() if not ok]
        body = {"status": "not_ready" if failing else "ready", "checks": results, "failing": failing}
        return web.json_response(body, status=503 if failing else 200)
