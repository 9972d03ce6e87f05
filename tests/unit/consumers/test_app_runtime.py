"""The long-running commands' process wiring (``consumers.app``)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from adapters.settings import load_settings
from consumers import app


@pytest.fixture
def collector_restored() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector_restored")
def test_runtime_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    startup_object = [object()]  # alive before the runtime starts: frozen with the rest

    async def inside_runtime() -> tuple[tuple[int, int, int], int, bool]:
        async with app.runtime(load_settings(kafka_bootstrap_servers="127.0.0.1:9")):
            tracked = {id(o) for o in gc.get_objects()}
            return gc.get_threshold(), gc.get_freeze_count(), id(startup_object) in tracked

    threshold, frozen, still_scanned = asyncio.run(inside_runtime())
    assert threshold == (app.GC_YOUNG_THRESHOLD, 20, 20)
    assert frozen > 0
    # gc.get_objects() lists what collections scan; frozen objects are not among them.
    assert not still_scanned
