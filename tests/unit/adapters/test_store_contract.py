"""One contract for every PartitionStore backend (as eventsourcing runs one
suite over each of its recorders): memory, RocksDB with and without a WAL."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapters.store import MemoryPartitionStore, PartitionStore, RocksPartitionStore

Factory = Callable[[], PartitionStore]


@pytest.fixture(params=["memory", "rocksdb", "rocksdb-no-wal"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    opened: list[PartitionStore] = []
    memory = MemoryPartitionStore()

    def factory() -> PartitionStore:
        if request.param == "memory":
            return memory  # the same object: "reopening" a memory store is keeping it
        store = RocksPartitionStore(tmp_path / "p0", write_ahead_log=request.param == "rocksdb")
        opened.append(store)
        return store

    yield factory
    for store in opened:
        with contextlib.suppress(Exception):  # already closed by the test, in whatever way that fails
            store.close()


def test_what_is_applied_is_read_back_with_its_checkpoint(open_store: Factory) -> None:
    store = open_store()
    assert (store.changelog_offset, store.get(b"k")) == (None, None)  # a tuple: mypy would keep the offset narrowed to None
    store.apply([(b"k", b"v1"), (b"j", b"w")], 10)
    store.apply([(b"k", b"v2")], 12)
    assert (store.get(b"k"), store.get(b"j"), store.changelog_offset) == (b"v2", b"w", 12)


def test_a_tombstone_deletes_the_key(open_store: Factory) -> None:
    store = open_store()
    store.apply([(b"k", b"v"), (b"j", b"w")], 3)
    store.apply([(b"k", None)], 4)
    assert store.get(b"k") is None and store.get(b"j") == b"w"
    assert dict(store.items()) == {b"j": b"w"}


def test_applying_without_an_offset_keeps_the_checkpoint(open_store: Factory) -> None:
    store = open_store()
    store.apply([(b"k", b"v")], 5)
    store.apply([(b"j", b"w")], None)
    assert store.changelog_offset == 5


def test_wipe_forgets_data_and_checkpoint(open_store: Factory) -> None:
    store = open_store()
    store.apply([(b"k", b"v")], 5)
    store.wipe()
    assert store.get(b"k") is None and store.changelog_offset is None and store.approximate_count() == 0


def test_a_clean_close_keeps_data_and_checkpoint(open_store: Factory) -> None:
    store = open_store()
    store.apply([(b"k", b"v")], 9)
    store.close()
    again = open_store()
    assert (again.get(b"k"), again.changelog_offset) == (b"v", 9)


def test_a_prefetch_changes_no_answer_even_across_writes(open_store: Factory) -> None:
    store = open_store()
    store.apply([(b"k", b"v1"), (b"j", b"w1")], 1)
    store.prefetch([b"k", b"j", b"absent"])
    assert (store.get(b"k"), store.get(b"j"), store.get(b"absent")) == (b"v1", b"w1", None)
    # Written after the read: the store must answer the write, not what it read.
    store.apply([(b"k", b"v2"), (b"j", None), (b"absent", b"now")], 2)
    assert (store.get(b"k"), store.get(b"j"), store.get(b"absent")) == (b"v2", None, b"now")
    # A write while the read may still be in flight, before any get.
    store.prefetch([b"k"])
    store.apply([(b"k", b"v3")], 3)
    assert store.get(b"k") == b"v3"
    store.prefetch([b"absent"])
    store.delete([b"absent"])
    assert store.get(b"absent") is None


def test_close_and_wipe_wait_for_a_prefetch_in_flight(open_store: Factory) -> None:
    store = open_store()
    keys = [f"card-{n:06d}/code".encode() for n in range(20_000)]
    store.apply([(k, b"state") for k in keys], 7)
    store.prefetch(keys)
    store.close()
    store = open_store()
    assert store.get(keys[-1]) == b"state" and store.changelog_offset == 7
    store.prefetch(keys)
    store.wipe()
    assert store.get(keys[0]) is None and store.changelog_offset is None
