"""What only one store does: RocksDB's prefetch and WAL setting, and the
keys ``InvoiceStates`` asks a store to prefetch (the contract every backend
keeps is in test_store_contract.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    # Keys that are not bytes are left to the decoder; bytes that are no
    # invoice key (not UTF-8) are read like any other (a read changes nothing).
    hostile: list[object] = [None, bytearray(b"new/1"), memoryview(b"new/1"), "new/1"]
    states.prefetch([b"new/1", b"cached/1", b"pending/1", *hostile, b"\xff\xfe", b"new/2", b"new/1"])  # type: ignore[list-item]
    assert asked == [[b"new/1", b"\xff\xfe", b"new/2"]]


# Generated interleavings of every store operation, checked against a dict:
# whatever the order of prefetches, gets, writes, deletes and reopenings, a
# RocksDB store with prefetching answers what the model holds. A get or a
# write may come while a read is in flight; after each write every key is checked.
_KEY_SET = [b"a/1", b"\xff\xfe", b"d/4" * 30]
_KEYS = st.sampled_from(_KEY_SET)
_OPERATIONS = st.lists(
    st.one_of(
        # With True, every key is read at once (the read settles); with False
        # the next operation may meet the read in flight.
        st.tuples(st.just("prefetch"), st.tuples(st.lists(_KEYS, min_size=1, max_size=4), st.booleans())),
        st.tuples(
            st.just("apply"), st.lists(st.tuples(_KEYS, st.one_of(st.none(), st.binary(max_size=40))), min_size=1, max_size=4)
        ),
        st.tuples(st.just("delete"), st.lists(_KEYS, max_size=3)),
        st.tuples(st.just("get"), _KEYS),
        st.tuples(st.just("reopen"), st.none()),
    ),
    min_size=4,
    max_size=30,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=_OPERATIONS)
def test_a_prefetching_store_answers_what_a_dict_holds_whatever_the_order(tmp_path: Path, operations: list) -> None:
    path = tmp_path / f"gen-{uuid.uuid4().hex}"
    store = RocksPartitionStore(path, write_ahead_log=False)
    model: dict[bytes, bytes] = {}
    try:
        for name, argument in operations:
            if name == "prefetch":
                keys, read_now = argument
                store.prefetch(keys)
                if not read_now:
                    continue
            if name == "get":
                assert store.get(argument) == model.get(argument), (argument, operations)
                continue
            if name == "apply":
                store.apply(argument, None)
                for key, value in argument:
                    if value is None:
                        model.pop(key, None)
                    else:
                        model[key] = value
            elif name == "delete":
                store.delete(argument)
                for key in argument:
                    model.pop(key, None)
            else:
                store.close()  # a clean close flushes: nothing is lost without a WAL
                store = RocksPartitionStore(path, write_ahead_log=False)
            assert {key: store.get(key) for key in _KEY_SET} == {key: model.get(key) for key in _KEY_SET}, operations
    finally:
        store.close()
