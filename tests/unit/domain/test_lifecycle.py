"""The compiled table is the Machine: every (state, trigger) pair agrees."""

from __future__ import annotations

import itertools

import pytest
from transitions import MachineError

from domain.lifecycle import LEGAL_MOVES, MACHINE, TRIGGER_FOR_TARGET, build_machine
from domain.status import ReimburseStatus as S


class Card:
    state: str


@pytest.mark.parametrize(("source", "target"), list(itertools.product(S, S)))
def test_table_and_machine_agree_on_every_pair(source: S, target: S) -> None:
    model = Card()
    machine = build_machine(model)
    machine.set_state(source.value, model)
    trigger = TRIGGER_FOR_TARGET[target]
    table_says = LEGAL_MOVES.get((source, target))
    try:
        getattr(model, trigger)()
        machine_says = trigger
        assert model.state == target.value
    except MachineError:
        machine_says = None
    assert table_says == machine_says


def test_domain_table_matches_the_documented_lifecycle() -> None:
    assert set(LEGAL_MOVES) == {
        (S.INIT, S.LOCK),
        (S.LOCK, S.INIT),
        (S.LOCK, S.CLOSURE),
        (S.INIT, S.CANCEL),
        (S.LOCK, S.CANCEL),
    }


def test_machine_has_no_auto_transitions_back_doors() -> None:
    assert not [name for name in MACHINE.events if name.startswith("to_")]


def test_terminal_states_have_no_way_out() -> None:
    for (source, _), _trigger in LEGAL_MOVES.items():
        assert source not in (S.CLOSURE, S.CANCEL)
