"""WeChat's refusal rules: every (current, requested) pair, once."""

from __future__ import annotations

import itertools

import pytest

from domain.lifecycle import LEGAL_MOVES
from domain.status import ReimburseStatus as S
from domain.wechat_errors import CONFLICT_ERRCODES
from domain.wechat_rules import wechat_answer

#: (card is, asked for) -> errcode, for every pair of statuses (DOMAIN.md's table).
ANSWERS = {
    (S.INIT, S.INIT): 72024,
    (S.INIT, S.LOCK): 0,
    (S.INIT, S.CLOSURE): 72039,
    (S.INIT, S.CANCEL): 0,
    (S.LOCK, S.INIT): 0,
    (S.LOCK, S.LOCK): 72024,
    (S.LOCK, S.CLOSURE): 0,
    (S.LOCK, S.CANCEL): 0,
    (S.CLOSURE, S.INIT): 72024,
    (S.CLOSURE, S.LOCK): 72024,
    (S.CLOSURE, S.CLOSURE): 72024,
    (S.CLOSURE, S.CANCEL): 72024,
    (S.CANCEL, S.INIT): 72024,
    (S.CANCEL, S.LOCK): 72024,
    (S.CANCEL, S.CLOSURE): 72024,
    (S.CANCEL, S.CANCEL): 72024,
}


def test_the_table_covers_every_pair_of_statuses() -> None:
    assert set(ANSWERS) == set(itertools.product(S, S))


@pytest.mark.parametrize(
    ("pair", "errcode"), ANSWERS.items(), ids=lambda v: "->".join(map(str, v)) if isinstance(v, tuple) else str(v)
)
def test_wechat_answers_each_move_as_domain_md_says(pair: tuple[S, S], errcode: int) -> None:
    answer = wechat_answer(*pair)
    assert answer.errcode == errcode and answer.applied is (errcode == 0)
    assert bool(answer.reason) is (errcode != 0)


def test_wechat_applies_exactly_the_legal_moves_of_the_lifecycle() -> None:
    assert {pair for pair in ANSWERS if wechat_answer(*pair).applied} == set(LEGAL_MOVES)


def test_every_refusal_is_a_conflict_errcode() -> None:
    refusals = {wechat_answer(*pair).errcode for pair in ANSWERS} - {0}
    assert refusals | {72023} <= CONFLICT_ERRCODES


def test_lock_to_cancel_is_refused_only_where_wechat_is_configured_to() -> None:
    assert wechat_answer(S.LOCK, S.CANCEL, refuse_lock_to_cancel=True).errcode == 72023
    assert wechat_answer(S.INIT, S.CANCEL, refuse_lock_to_cancel=True).applied


def test_the_reasons_say_why() -> None:
    assert "terminal" in wechat_answer(S.CLOSURE, S.INIT).reason
    assert "locked first" in wechat_answer(S.INIT, S.CLOSURE).reason
    assert "already" in wechat_answer(S.LOCK, S.LOCK).reason
