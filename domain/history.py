"""What an invoice's recorded history says, read back from its outcomes and
deliveries (``invoice-sm status``, ``GET /invoices/{card_id}/{code}``). Pure."""

from __future__ import annotations

from collections.abc import Iterable

from domain.model import DecisionKind
from domain.status import Origin

#: One recorded outcome as the status query reads it: (decision kind, origin, version).
RecordedOutcome = tuple[str, str, int]


def delivery_pending(outcomes: Iterable[RecordedOutcome], delivered_version: int | None) -> bool:
    """Whether a status accepted from upstream is newer than the last delivery:
    still on its way to WeChat.

    Only upstream requests are delivered; a WeChat report is a fact WeChat
    already holds, and the other decisions change nothing. ``delivered_version``
    is ``None`` before the first delivery (versions start at 1).
    """
    accepted = [version for kind, origin, version in outcomes if kind == DecisionKind.ACCEPTED and origin == Origin.UPSTREAM]
    return bool(accepted) and max(accepted) > (delivered_version or 0)
