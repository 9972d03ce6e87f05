"""What an invoice's recorded outcomes say about its delivery, one row per case."""

from __future__ import annotations

import pytest

from domain.history import RecordedOutcome, delivery_pending

UP, WECHAT = "upstream", "wechat"


@pytest.mark.parametrize(
    ("outcomes", "delivered", "pending"),
    [
        ([], None, False),
        ([("accepted", UP, 1)], None, True),
        ([("accepted", UP, 1)], 1, False),
        ([("accepted", UP, 1), ("accepted", UP, 2)], 1, True),
        ([("accepted", UP, 2), ("accepted", UP, 1)], 1, True),  # the newest version counts, not the last row
        ([("accepted", UP, 1), ("accepted", UP, 2)], 2, False),
        ([("accepted", UP, 1)], 3, False),  # a repair delivered a later version
        ([("accepted", WECHAT, 2)], 1, False),  # WeChat reported it: nothing to deliver
        ([("accepted", UP, 1), ("accepted", WECHAT, 2)], 1, False),
        ([("unchanged", UP, 2), ("rejected", UP, 3), ("duplicate", UP, 4)], 1, False),
        ([("rejected", UP, 2)], None, False),
    ],
)
def test_a_delivery_is_pending_while_an_accepted_upstream_version_is_newer_than_the_last_delivered(
    outcomes: list[RecordedOutcome], delivered: int | None, pending: bool
) -> None:
    assert delivery_pending(outcomes, delivered) is pending
