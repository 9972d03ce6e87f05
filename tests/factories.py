"""Builders of test events and streams, shared by unit, integration and bench."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from typing import Any

from domain.model import invoice_key
from domain.status import SET_STATUS, STATUS_EVENT_TYPES
from domain.status import ReimburseStatus as S

APPID = "wx1234567890abcdef"
_ids = itertools.count(1)

#: The event type that asks for each status (the domain's table, inverted there).
TYPE_FOR_STATUS = STATUS_EVENT_TYPES


def card(n: int) -> tuple[str, str]:
    return f"pjZ8Yt7Um2jYxzneP8Gom{n:07d}", f"{186921658591 + n}"


def event(
    card_id: str,
    code: str,
    status: S | str,
    *,
    event_id: str | None = None,
    appid: str | None = APPID,
    set_type: bool = False,
    time: str = "2026-11-23T10:00:00Z",
) -> dict[str, Any]:
    status = S(status)
    data: dict[str, Any] = {"card_id": card_id, "code": code}
    if appid:
        data["appid"] = appid
    if set_type:
        data["reimburse_status"] = status.value
    return {
        "specversion": "1.0",
        "id": event_id or f"e-{next(_ids):09d}",
        "source": "/erp/reimbursement",
        "type": SET_STATUS if set_type else TYPE_FOR_STATUS[status],
        "time": time,
        "subject": invoice_key(card_id, code),
        "data": data,
    }


def encode(ev: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) as upstream publishes them."""
    return invoice_key(ev["data"]["card_id"], ev["data"]["code"]).encode(), json.dumps(ev).encode()


def random_stream(n_events: int, n_invoices: int, seed: int = 7, *, dup_rate: float = 0.03) -> Iterator[dict[str, Any]]:
    """Random legal and illegal requests over ``n_invoices``, with repeated ids.

    Requests are drawn with a bias towards legal next steps, so streams reach
    every status, including the terminal ones.
    """
    rng = random.Random(seed)
    statuses = list(S)
    last: dict[int, dict[str, Any]] = {}
    for _ in range(n_events):
        n = rng.randrange(n_invoices)
        if n in last and rng.random() < dup_rate:
            yield last[n]
            continue
        status = rng.choices(statuses, weights=[3, 5, 2, 1])[0]
        ev = event(*card(n), status, set_type=rng.random() < 0.2)
        last[n] = ev
        yield ev
