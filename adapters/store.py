"""Per-partition invoice state: an on-disk store behind a small LRU cache.

Each assigned input partition has its own store, a RocksDB database under
``INVOICE_SM_STATE_DIR/<topic>-<partition>`` (Quix Streams and Kafka Streams
do the same). The store is a *cache of the changelog* (``invoice.state``):
it only ever receives what was committed there, and it records, in the
same atomic write batch, the changelog offset up to which it is current.
On assignment the processor replays the changelog from that offset, so a
store that is behind (a crash between commit and store write), stale (the
partition lived elsewhere meanwhile) or missing is brought up to date in
time proportional to what it missed.

Values are the exact bytes of the changelog records, so a restore copies
bytes and decodes nothing; decoding happens on a cache miss.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from adapters.settings import env_name
from domain.errors import ConfigurationError
from domain.model import InvoiceState

#: Stored beside the invoices; invoice keys never start with NUL.
_OFFSET_KEY = b"\x00changelog-offset"


class PartitionStore(ABC):
    """Key -> changelog value bytes, plus the changelog offset it is current to."""

    @abstractmethod
    def get(self, key: bytes) -> bytes | None: ...

    def prefetch(self, keys: list[bytes]) -> None:  # noqa: B027  # optional: a store that reads fast enough on demand does nothing
        """Start reading ``keys`` now; the ``get`` of each is then answered from that read.

        A hint, never a change of meaning: ``get`` returns the same with or without it.
        """

    @abstractmethod
    def apply(self, items: Iterable[tuple[bytes, bytes | None]], changelog_offset: int | None) -> None:
        """Write ``items`` and (unless ``None``) the new offset atomically.

        A ``None`` value is a changelog tombstone: the key is deleted, as a
        compacted topic (and ``reconcile``) treats it.
        """

    @abstractmethod
    def delete(self, keys: Iterable[bytes]) -> None: ...

    @property
    @abstractmethod
    def changelog_offset(self) -> int | None:
        """Next changelog offset to read, or ``None`` if never written."""

    @abstractmethod
    def items(self) -> Iterator[tuple[bytes, bytes]]: ...

    @abstractmethod
    def wipe(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def approximate_count(self) -> int: ...


class MemoryPartitionStore(PartitionStore):
    """In-memory store for unit tests and ``replay`` of small histories."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._offset: int | None = None

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def apply(self, items: Iterable[tuple[bytes, bytes | None]], changelog_offset: int | None) -> None:
        data = self._data
        for key, value in items:
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        if changelog_offset is not None:
            self._offset = changelog_offset

    def delete(self, keys: Iterable[bytes]) -> None:
        for key in keys:
            self._data.pop(key, None)

    @property
    def changelog_offset(self) -> int | None:
        return self._offset

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(list(self._data.items()))

    def wipe(self) -> None:
        self._data.clear()
        self._offset = None

    def close(self) -> None:
        pass

    def approximate_count(self) -> int:
        return len(self._data)


#: One thread per process reads prefetched keys for every partition's store.
_reader_pool: ThreadPoolExecutor | None = None


def _reader() -> ThreadPoolExecutor:
    global _reader_pool  # noqa: PLW0603  # created on first use: most commands never prefetch
    if _reader_pool is None:
        _reader_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-prefetch")
    return _reader_pool


def _read_many(db: Any, keys: list[bytes]) -> dict[bytes, bytes | None]:
    # rocksdict releases the GIL for a list of keys (RocksDB MultiGet), not for one key.
    return dict(zip(keys, db.get(keys), strict=True))


#: ``get``'s marker for a key the prefetch did not read.
_UNREAD: Any = object()


class RocksPartitionStore(PartitionStore):
    """RocksDB through rocksdict, raw bytes in and out.

    ``prefetch`` reads a batch's keys with one MultiGet on a background
    thread, which rocksdict runs without the GIL: the processor decodes the
    batch meanwhile. With a store much larger than the state cache most
    events read a state from an SST file (a pread and a decompression, ~8 us
    held under the GIL one key at a time); read this way the processor's
    thread spends about half as long per event. Every other use of the
    database waits for a read in flight first, and every write forgets what
    was read, so a ``get`` answered from a prefetch always says what the
    database holds.
    """

    def __init__(self, path: Path, *, write_ahead_log: bool = True) -> None:
        """``write_ahead_log=False`` only for a store that is a cache of a
        changelog (the processor's state): the deliverer's ledger has no
        changelog, and a kill -9 must not lose its in-flight marks."""
        from rocksdict import BlockBasedOptions, Options, Rdict, WriteOptions

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        # Small memtables: many partitions per process must not add up to GBs.
        options.set_write_buffer_size(16 * 1024 * 1024)
        options.set_max_write_buffer_number(2)
        options.increase_parallelism(2)
        # Most lookups of a growing invoice population miss (a first event):
        # bloom filters in the tables and the memtable answer those without a read.
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        options.set_memtable_prefix_bloom_ratio(0.1)
        options.set_memtable_whole_key_filtering(True)
        try:
            self._db = Rdict(str(path), options)
        except Exception as exc:  # rocksdict raises bare Exception  # noqa: BLE001  # rocksdict raises plain Exception for a locked database
            message = str(exc)
            if "lock" in message.lower():
                raise ConfigurationError(
                    env_name("state_dir"), f"{path} is in use by another process; give each instance its own state dir"
                ) from None
            raise ConfigurationError(env_name("state_dir"), f"cannot open {path}: {message}") from None
        # No fsync per write: the WAL still survives a process kill. Without a
        # WAL (a changelog cache), each WriteBatch (states with the changelog
        # offset they are current to) is still applied atomically and a crash
        # loses whole recent batches, never half of one: the checkpoint read
        # back is always one the data matches, and restore catches up.
        write_options = WriteOptions()
        write_options.sync = False
        write_options.disable_wal = not write_ahead_log  # type: ignore[method-assign,assignment]  # rocksdict's stub types this property as a method
        self._no_wal = not write_ahead_log
        self._db.set_write_options(write_options)
        raw = self._db.get(_OFFSET_KEY)
        self._offset: int | None = int(raw) if raw is not None else None
        self._reading: Future[dict[bytes, bytes | None]] | None = None
        self._read: dict[bytes, bytes | None] = {}

    def prefetch(self, keys: list[bytes]) -> None:
        self._forget_reads()
        if keys:
            self._reading = _reader().submit(_read_many, self._db, keys)

    def _settle(self) -> None:
        """Wait for the read in flight, if any, and keep what it read."""
        reading, self._reading = self._reading, None
        if reading is not None:
            try:
                self._read = reading.result()
            except Exception:  # noqa: BLE001  # rocksdict raises plain Exception; get() then reads each key itself
                self._read = {}

    def _forget_reads(self) -> None:
        """Before a write or a close: no read may be in flight, and what was read is stale."""
        self._settle()
        self._read = {}

    def get(self, key: bytes) -> bytes | None:
        if self._reading is not None:
            self._settle()
        if self._read:
            value = self._read.get(key, _UNREAD)
            if value is not _UNREAD:
                return value  # type: ignore[no-any-return]
        return self._db.get(key)

    def apply(self, items: Iterable[tuple[bytes, bytes | None]], changelog_offset: int | None) -> None:
        from rocksdict import WriteBatch

        self._forget_reads()
        batch = WriteBatch(raw_mode=True)
        for key, value in items:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if changelog_offset is not None:
            batch.put(_OFFSET_KEY, str(changelog_offset).encode())
        self._db.write(batch)
        if changelog_offset is not None:
            self._offset = changelog_offset

    def delete(self, keys: Iterable[bytes]) -> None:
        from rocksdict import WriteBatch

        self._forget_reads()
        batch = WriteBatch(raw_mode=True)
        for key in keys:
            batch.delete(key)
        self._db.write(batch)

    @property
    def changelog_offset(self) -> int | None:
        return self._offset

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._db.items():
            if key != _OFFSET_KEY:
                yield key, value  # type: ignore[misc]  # raw mode: keys and values are bytes

    def wipe(self) -> None:
        from rocksdict import Options, Rdict

        self._forget_reads()
        self._db.close()
        Rdict.destroy(str(self.path), Options(raw_mode=True))
        shutil.rmtree(self.path, ignore_errors=True)
        self.__init__(self.path, write_ahead_log=not self._no_wal)  # type: ignore[misc]

    def close(self) -> None:
        self._forget_reads()
        if self._no_wal:
            # Without a WAL only flushed memtables survive the process: a clean
            # close flushes, so the next owner restores from here, not from 0.
            self._db.flush()
        self._db.close()

    def approximate_count(self) -> int:
        return int(self._db.property_int_value("rocksdb.estimate-num-keys") or 0)


class InvoiceStates:
    """One partition's states as changelog values: pending writes, an LRU cache, the store.

    ``pending`` holds what the open transaction decided; it is visible to
    later events of the same batch, and moves to cache and store only after
    the transaction commits (``commit``), or is dropped on abort (``discard``).

    Everything is keyed by the invoice key's bytes (the Kafka key, and the
    store's key) and held encoded, as the changelog and the store hold it:
    the native step (``adapters.native``) reads and returns exactly that, so
    its hot path decodes no key and builds no state object. The Python path
    (``get``/``put``) decodes and encodes at this boundary.
    """

    def __init__(
        self,
        store: PartitionStore,
        cache_size: int,
        decode: Callable[[bytes], InvoiceState],
        encode: Callable[[InvoiceState], bytes],
    ) -> None:
        self.store = store
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cache_size = cache_size
        self._decode = decode
        self._encode = encode
        #: Invoice key -> the changelog value of the state the open transaction left it in.
        self.pending: dict[bytes, bytes] = {}

    def value(self, key: bytes) -> bytes | None:
        """The changelog value of the invoice's state so far, or ``None`` (never seen)."""
        value = self.pending.get(key)
        if value is not None:
            return value
        value = self._cache.get(key)
        if value is not None:
            self._cache.move_to_end(key)
            return value
        value = self.store.get(key)
        if value is not None:
            self._remember(key, value)
        return value

    def stage(self, key: bytes, value: bytes) -> None:
        """Stage a state's changelog value under its invoice key."""
        self.pending[key] = value

    def get(self, key: str) -> InvoiceState | None:
        value = self.value(key.encode())
        return None if value is None else self._decode(value)

    def put(self, key: str, state: InvoiceState) -> bytes:
        """Stage ``state`` under its invoice key; returns its encoded changelog value."""
        value: bytes = self._encode(state)
        self.pending[key.encode()] = value
        return value

    def prefetch(self, keys: Iterable[bytes | None]) -> None:
        """Have the store start reading the states of ``keys`` (a batch's record
        keys, about to be decided) that neither the open transaction nor the
        cache holds; ``value`` then finds them read. A null key is left to
        the decoder to refuse."""
        pending, cache = self.pending, self._cache
        cold: dict[bytes, None] = {}  # insertion-ordered set: each key once
        for key in keys:
            if type(key) is bytes and key not in pending and key not in cache:
                cold[key] = None
        self.store.prefetch(list(cold))

    def commit(self, changelog_offset: int) -> None:
        pending = self.pending
        if not pending:
            return
        self.store.apply(pending.items(), changelog_offset)
        if self._cache_size > 0:
            cache = self._cache
            move = cache.move_to_end
            for key, value in pending.items():
                cache[key] = value
                move(key)
            pop = cache.popitem
            for _ in range(len(cache) - self._cache_size):
                pop(last=False)
        pending.clear()

    def discard(self) -> None:
        self.pending.clear()

    def resize(self, cache_size: int) -> None:
        self._cache_size = cache_size
        while len(self._cache) > max(cache_size, 0):
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        self._cache.clear()

    def _remember(self, key: bytes, value: bytes) -> None:
        if self._cache_size <= 0:
            return
        self._cache[key] = value
        self._cache.move_to_end(key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
