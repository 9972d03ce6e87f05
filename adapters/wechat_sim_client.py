"""Card statuses from the WeChat simulator's control API (``reconcile --wechat-sim-url``).

WeChat has no API that lists e-invoice cards with their reimbursement
status; the simulator's control API (``GET /_sim/cards/{appid}/{card_id}/{code}``)
stands in for one, one card per request, as a real per-card lookup would be.

httpx's errors are translated: a connection error or a 5xx is a
``TransientWeChatError``, any other unexpected HTTP status a
``PermanentWeChatError`` (errcode -1: WeChat gave none), so callers catch
``domain.errors`` classes only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator

import httpx

from domain.errors import PermanentWeChatError, TransientWeChatError, WeChatError
from domain.status import ReimburseStatus

#: One card to ask about: ``(key, appid, card_id, code)``; the answer is filed under ``key``.
CardQuery = tuple[str, str, str, str]


def _http_error(base_url: str, key: str, status: int) -> WeChatError:
    kind = TransientWeChatError if status >= 500 else PermanentWeChatError
    return kind(-1, f"asking {base_url} about {key}: HTTP {status}", http_status=status)


async def card_statuses(
    base_url: str,
    cards: Iterable[CardQuery],
    *,
    concurrency: int = 32,
    timeout: float = 10.0,
    on_answer: Callable[[], None] | None = None,
) -> dict[str, ReimburseStatus | None]:
    """WeChat's status of each card, by key; ``None`` when WeChat has no record of it.

    ``concurrency`` requests run at a time; ``on_answer`` is called after each
    answer (a progress bar). The first failure stops them all and is raised.
    """
    out: dict[str, ReimburseStatus | None] = {}
    queue: Iterator[CardQuery] = iter(list(cards))

    async def worker(client: httpx.AsyncClient) -> None:
        # Workers share one iterator: each takes the next card when it is free.
        for key, appid, card_id, code in queue:
            try:
                resp = await client.get(f"/_sim/cards/{appid}/{card_id}/{code}")
            except httpx.HTTPError as exc:
                raise TransientWeChatError(-1, f"asking {base_url} about {key}: {type(exc).__name__}: {exc}") from exc
            if resp.status_code == 404:
                out[key] = None
            elif resp.status_code == 200:
                try:
                    out[key] = ReimburseStatus(resp.json()["reimburse_status"])
                except (ValueError, KeyError, TypeError) as exc:  # not JSON, no status, or not one of the four
                    raise PermanentWeChatError(-1, f"asking {base_url} about {key}: unexpected answer: {exc}") from exc
            else:
                raise _http_error(base_url, key, resp.status_code)
            if on_answer is not None:
                on_answer()

    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout) as client:
        await asyncio.gather(*(worker(client) for _ in range(max(1, concurrency))))
    return out
