"""What WeChat's ``updatestatus`` answers to a requested move, as one pure function.

The one statement of WeChat's refusal rules (DOMAIN.md), read by both sides
that need them: ``domain.reconcile`` (a repair WeChat would refuse is
reported ``unrepairable`` instead of enqueued) and the WeChat simulator
(which answers exactly these errcodes). Checked in this order:

=======================  =======  ==============================================
card is, asked for       errcode  why
=======================  =======  ==============================================
X, X                     72024    WeChat refuses to set the status a card has
CLOSURE or CANCEL, any   72024    the status is terminal
INIT, CLOSURE            72039    the card must be locked first
LOCK, CANCEL             72023    only where WeChat refuses it (``refuse_lock_to_cancel``;
                                  undocumented, DOMAIN.md allows it)
any other illegal move   72024    not a move of the lifecycle
anything else            0        applied
=======================  =======  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from domain.lifecycle import LEGAL_MOVES
from domain.status import TERMINAL_STATUSES, ReimburseStatus

#: The errcodes these rules answer (all of the conflict class in ``domain.wechat_errors``).
LOCKED_BY_OTHERS: Final = 72023
STATUS_ERROR: Final = 72024
MUST_LOCK_FIRST: Final = 72039


@dataclass(frozen=True, slots=True)
class WeChatAnswer:
    """WeChat's answer to one move: ``errcode`` 0 when it applies it."""

    errcode: int
    #: Why it refuses, in words (empty when it applies the move).
    reason: str = ""

    @property
    def applied(self) -> bool:
        return self.errcode == 0


APPLIED: Final = WeChatAnswer(0)


def _short(status: ReimburseStatus) -> str:
    return status.value.removeprefix("INVOICE_REIMBURSE_")


def wechat_answer(current: ReimburseStatus, requested: ReimburseStatus, *, refuse_lock_to_cancel: bool = False) -> WeChatAnswer:
    """What WeChat answers when a card in ``current`` is asked to become ``requested``."""
    if requested is current:
        return WeChatAnswer(STATUS_ERROR, f"already {_short(current)}")
    if current in TERMINAL_STATUSES:
        return WeChatAnswer(STATUS_ERROR, f"{_short(current)} is terminal")
    if (current, requested) == (ReimburseStatus.INIT, ReimburseStatus.CLOSURE):
        return WeChatAnswer(MUST_LOCK_FIRST, "the card must be locked first")
    if (current, requested) == (ReimburseStatus.LOCK, ReimburseStatus.CANCEL) and refuse_lock_to_cancel:
        return WeChatAnswer(LOCKED_BY_OTHERS, "locked by another account")
    if (current, requested) not in LEGAL_MOVES:
        return WeChatAnswer(STATUS_ERROR, f"{_short(current)} -> {_short(requested)} is not a lifecycle move")
    return APPLIED
