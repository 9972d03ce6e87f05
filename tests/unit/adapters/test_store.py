"""What only one store does: RocksDB's prefetch and WAL setting, and the
keys ``InvoiceStates`` asks a store to prefetch (the contract every backend
keeps is in test_store_contract.py)."""

from __future__ import annotations

from pathlib import Path

from adapters import wire
from adapters.store import InvoiceStates, MemoryPartitionStore, RocksPartitionStore
from domain.model import InvoiceState


def test_a_wiped_rocksdb_store_keeps_its_write_ahead_log_setting(tmp_path: Path) -> None:
    for write_ahead_log in (False, True):
        store = RocksPartitionStore(tmp_path / f"wal-{write_ahead_log}", write_ahead_log=write_ahead_log)
        try:
            store.wipe()
            # The processor's store (a changelog cache) must not start paying for a WAL after a wipe.
            assert store._no_wal is not write_ahead_log
        finally:
            store.close()


def test_rocksdb_answers_a_prefetched_key_from_the_prefetch(tmp_path: Path) -> None:
    store = RocksPartitionStore(tmp_path / "p0")
    try:
        store.apply([(b"k", b"v")], 1)
        store.prefetch([b"k", b"absent"])
        real_db = store._db

        class NoReads:  # the database itself may not be asked again
            def get(self, key: object) -> None:
                raise AssertionError(f"read {key!r} although it was prefetched")

        store._db = NoReads()  # type: ignore[assignment]
        try:
            assert (store.get(b"k"), store.get(b"absent")) == (b"v", None)
        finally:
            store._db = real_db
    finally:
        store.close()


def test_invoice_states_prefetch_only_keys_they_cannot_answer() -> None:
    asked: list[list[bytes]] = []

    class Recording(MemoryPartitionStore):
        def prefetch(self, keys: list[bytes]) -> None:
            asked.append(keys)

    states = InvoiceStates(Recording(), 10, wire.decode_state, wire.encode_state)
    states.put("cached/1", InvoiceState("cached", "1"))
    states.commit(1)
    states.put("pending/1", InvoiceState("pending", "1"))
    hostile: list[object] = [None, bytearray(b"new/1"), memoryview(b"new/1"), b"\xff\xfe", "new/1"]
    states.prefetch([b"new/1", b"cached/1", b"pending/1", *hostile, b"new/2", b"new/1"])  # type: ignore[list-item]
    assert asked == [[b"new/1", b"new/2"]]
