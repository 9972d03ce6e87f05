"""The suite's order: longest modules first, so that two workers finish together.

``./dev test`` runs two pytest-xdist workers (``-n 2``); pyproject's addopts
make each take a whole module at a time (``--dist loadfile``, so a module's
own cluster starts once) in collection order (``--no-loadscope-reorder``;
xdist would otherwise put the modules with the most tests first). Most tests
wait on brokers, child processes and a slow simulated WeChat, so two workers
share 2 cores well. A minutes-long soak scheduled last would run alone at the
end; scheduled first, everything else runs beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar


class _Marker(Protocol):
    @property
    def name(self) -> str: ...


class _Item(Protocol):
    @property
    def path(self) -> Path: ...

    def iter_markers(self) -> Iterable[_Marker]: ...


ItemT = TypeVar("ItemT", bound=_Item)

#: Markers by how long their modules take, longest first; unmarked modules come last.
LONGEST_FIRST = ("soak", "slow")


def longest_modules_first(items: Sequence[ItemT]) -> list[ItemT]:
    """Modules with a ``soak`` test, then those with a ``slow`` one, then the
    rest; a module's tests stay together and in their order, as do the
    modules of one rank."""
    rank: dict[Path, int] = {}
    for item in items:
        names = {m.name for m in item.iter_markers()}
        here = next((i for i, name in enumerate(LONGEST_FIRST) if name in names), len(LONGEST_FIRST))
        rank[item.path] = min(here, rank.get(item.path, here))
    return sorted(items, key=lambda item: rank[item.path])
