"""The suite's order (tests/support/scheduling.py): soaks first, modules kept whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.scheduling import longest_modules_first


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class Item:
    path: Path
    test: str
    marks: tuple[str, ...] = field(default=())

    def iter_markers(self) -> list[Mark]:
        return [Mark(m) for m in self.marks]


def test_a_module_with_one_soak_test_moves_whole_before_slow_and_plain_modules() -> None:
    items = [
        Item(Path("unit.py"), "a"),
        Item(Path("slow.py"), "a", ("broker", "slow")),
        Item(Path("slow.py"), "b"),
        Item(Path("soak.py"), "quick"),
        Item(Path("soak.py"), "long", ("slow", "soak")),
        Item(Path("unit.py"), "b"),
        Item(Path("other.py"), "a"),
    ]
    ordered = [(i.path.name, i.test) for i in longest_modules_first(items)]
    assert ordered == [
        ("soak.py", "quick"),
        ("soak.py", "long"),
        ("slow.py", "a"),
        ("slow.py", "b"),
        ("unit.py", "a"),
        ("unit.py", "b"),
        ("other.py", "a"),
    ]


def test_this_suite_starts_with_its_soak_modules(request: pytest.FixtureRequest) -> None:
    """The real collection: the soak modules lead (so two workers start them at once)."""
    items = request.session.items
    soaks = {"test_delivery_crashes.py", "test_delivery_restarts.py"}
    collected = {item.path.name for item in items}
    if not soaks <= collected:
        pytest.skip("the soak modules were not collected in this run")
    leading = []
    for item in items:
        if item.get_closest_marker("soak") is None:
            break
        leading.append(item.path.name)
    assert set(leading) == soaks, [item.path.name for item in items[:5]]
