"""One outcome partition's deliveries, as bookkeeping: no Kafka, no WeChat.

A lane holds, per consumed outcome offset, what its commit will write
(``work``), and per invoice the queue of its deliveries in version order
(``invoices``): only the head of a queue is ever called, so an invoice has
at most one call in flight and its versions reach WeChat in order.

What an offset holds until it is committed:

- a ``Job``: not finished; it pins the commit point (a short retry keeps it here);
- ``bytes``: the final delivery record, committed with the offset;
- ``Waiting``: the job left the commit path; its waiting-room entry is
  committed with the offset, and from then on the job lives in the room;
- ``None``: nothing to deliver (a rejected outcome, WeChat's own report).

A job that waits takes every later job of its invoice with it (reason
``behind``): order is kept, and no other invoice waits for it.

The ledger (a small RocksDB per partition in the state dir) holds final
records written but not yet committed, so a restart on the same host does
not call WeChat again for them. It is a cache of facts: losing it (a host
crash: it writes without fsync) costs repeated calls, never a wrong record,
because after an unclean takeover every uncommitted outcome is treated as
possibly applied (a repeat answered 72024 is recorded ``already_applied``).
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapters import wire
from adapters.store import PartitionStore
from domain.delivery import WaitReason
from domain.model import invoice_key
from domain.status import ReimburseStatus

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer, TopicPartition

#: Ledger key of the ownership token the ledger's records belong to.
LEDGER_TOKEN_KEY = b"\x00owner-token"


@dataclass(eq=False)
class Job:
    """One delivery: a status for a card, with its stable idempotency key."""

    lane: PartitionLane
    offset: int | None  # None: restored from the waiting room (its offset is committed)
    outcome_id: str
    card_id: str
    code: str
    appid: str
    status: ReimburseStatus
    version: int
    key: str
    repair: bool
    possibly_applied: bool
    attempts: int = 0
    first_attempt: float | None = None
    #: set while the job is in the waiting room (staged or committed)
    waiting: WaitReason | None = None
    waiting_since: float | None = None
    resume_at: float = 0.0
    #: its waiting-room entry is committed: the final record goes with a tombstone
    in_room: bool = False

    @property
    def invoice(self) -> str:
        return invoice_key(self.card_id, self.code)

    def entry(self) -> wire.WaitingEntry:
        assert self.waiting is not None and self.waiting_since is not None
        return wire.WaitingEntry(
            idempotency_key=self.key,
            outcome_id=self.outcome_id,
            card_id=self.card_id,
            code=self.code,
            appid=self.appid,
            reimburse_status=self.status,
            version=self.version,
            repair=self.repair,
            reason=self.waiting,
            waiting_since=self.waiting_since,
            resume_at=self.resume_at,
            possibly_applied=self.possibly_applied,
            attempts=self.attempts,
            first_attempt=self.first_attempt,
        )


class Done:
    """A final delivery record, with the keys its commit needs.

    ``in_room``: the record is on ``invoice.deliveries`` already and a
    ``d:<key>`` entry in the room says so, because a commit wrote it before
    its offset could be committed; ``record`` is then ``None`` once written.
    """

    __slots__ = ("in_room", "invoice", "key", "record")

    def __init__(self, record: bytes | None, key: str, invoice: str, *, in_room: bool = False) -> None:
        self.record = record
        self.key = key
        self.invoice = invoice
        self.in_room = in_room


class CommitPlan:
    """What one transaction of a lane writes, taken in one synchronous step."""

    __slots__ = ("offset", "prefix", "records", "released", "room")

    def __init__(self) -> None:
        self.prefix: list[tuple[int, Item]] = []
        #: delivery records to write: (invoice key, record)
        self.records: list[tuple[str, bytes]] = []
        #: waiting-room writes: (key, value or None for a tombstone)
        self.room: list[tuple[bytes, bytes | None]] = []
        #: jobs whose previous version's record this transaction makes durable
        self.released: list[Job] = []
        self.offset: int | None = None

    def __bool__(self) -> bool:
        return bool(self.prefix or self.records or self.room or self.released)


class Waiting:
    """An offset whose job moved to the waiting room; the entry is committed with it."""

    __slots__ = ("job",)

    def __init__(self, job: Job) -> None:
        self.job = job


Item = Job | Done | Waiting | None


class PartitionLane:
    """One outcome partition: its queues, commit point, waiting jobs and ledger."""

    def __init__(self, tp: TopicPartition, producer: AIOKafkaProducer, ledger: PartitionStore) -> None:
        self.tp = tp
        self.producer = producer
        self.ledger = ledger
        self.work: OrderedDict[int, Item] = OrderedDict()
        self.unfinished = 0
        self.invoices: dict[str, deque[Job]] = {}
        #: jobs in the waiting room (staged or committed), for gauges and the memory bound
        self.waiting: set[Job] = set()
        #: resumed room jobs that finished, committed with a tombstone of their entry
        self.finished_in_room: list[Done] = []
        #: next versions of invoices whose last record is not committed yet:
        #: called only once it is, so a new owner never repeats an older
        #: version after a newer one reached WeChat
        self.after_commit: list[Job] = []
        #: released by the last commit, for the scheduler to resume
        self.released: list[Job] = []
        #: keys whose record a previous owner committed ahead of its offset (``d:`` entries)
        self.done_in_room: set[str] = set()
        self.revoked = False
        self.fenced = False
        self.paused = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.commit_lock = asyncio.Lock()
        #: ownership: token of this ownership, and what the takeover decided
        self.token = ""
        self.possibly_applied_below = 0
        self.calls_allowed_at = 0.0  # epoch seconds; after an unclean takeover, later than now
        #: one past the highest offset ever called here (the closed marker carries it)
        self.attempted_below = 0
        self._planned_ahead: list[Done] = []
        self._planned_in_room = 0

    @property
    def partition(self) -> int:
        return self.tp.partition

    @property
    def calling(self) -> bool:
        """Whether calls for this lane may start: not revoked, not fenced."""
        return not (self.revoked or self.fenced)

    # -- intake

    def known_record(self, key: str) -> bytes | None:
        """A final record finished before a restart and not committed, if any."""
        return self.ledger.get(key.encode())

    def skip(self, offset: int) -> None:
        self.work[offset] = None

    def reuse(self, offset: int, record: bytes, key: str, invoice: str) -> None:
        self.work[offset] = Done(record, key, invoice)

    def already_recorded(self, offset: int, key: str, invoice: str) -> bool:
        """A previous owner committed this outcome's record ahead of its offset:
        nothing to call or write, only its ``d:`` entry to drop with the offset."""
        if key not in self.done_in_room:
            return False
        self.work[offset] = Done(None, key, invoice, in_room=True)
        return True

    def add(self, job: Job) -> Job | None:
        """Register a consumed delivery; returns it when it may be called now."""
        assert job.offset is not None
        queue = self.invoices.get(job.invoice)
        if queue is None:
            self.invoices[job.invoice] = deque([job])
            self.work[job.offset] = job
            self.unfinished += 1
            return job
        queue.append(job)
        head = queue[0]
        if head.waiting is not None:
            # Its invoice is in the waiting room: it follows, off the commit path.
            self._to_room(job, WaitReason.BEHIND, head.waiting_since or 0.0, head.resume_at)
            self.work[job.offset] = Waiting(job)
        else:
            self.work[job.offset] = job
            self.unfinished += 1
        return None  # its turn comes when the version before it finishes

    def restore(self, entries: list[wire.WaitingEntry]) -> list[Job]:
        """Jobs from the room (committed before a restart or a move); returns the
        heads of their invoices, which the scheduler resumes at ``resume_at``."""
        heads: list[Job] = []
        for entry in sorted(entries, key=lambda e: (e.card_id, e.code, e.version)):
            job = Job(
                lane=self,
                offset=None,
                outcome_id=entry.outcome_id,
                card_id=entry.card_id,
                code=entry.code,
                appid=entry.appid,
                status=entry.reimburse_status,
                version=entry.version,
                key=entry.idempotency_key,
                repair=entry.repair,
                # The last owner may have called it; 72024 then means ours.
                possibly_applied=True,
                attempts=entry.attempts,
                first_attempt=entry.first_attempt,
                waiting=entry.reason,
                waiting_since=entry.waiting_since,
                resume_at=entry.resume_at,
                in_room=True,
            )
            self.waiting.add(job)
            queue = self.invoices.setdefault(job.invoice, deque())
            if not queue:
                heads.append(job)
            queue.append(job)
        return heads

    # -- calls

    def call_started(self, job: Job) -> None:
        self.in_flight += 1
        self.idle.clear()
        if job.offset is not None and job.offset >= self.attempted_below:
            self.attempted_below = job.offset + 1

    def call_ended(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    def wait(self, job: Job, reason: WaitReason, until: float, now: float) -> None:
        """``job`` (the head of its invoice) waits until ``until``; the invoice's
        later jobs follow it into the room."""
        self._to_room(job, reason, job.waiting_since or now, until)
        for follower in list(self.invoices.get(job.invoice, ()))[1:]:
            if follower.waiting is None:
                self._to_room(follower, WaitReason.BEHIND, job.waiting_since or now, until)
                self._release(follower)
        self._release(job)

    def _to_room(self, job: Job, reason: WaitReason, since: float, until: float) -> None:
        job.waiting = reason
        job.waiting_since = since if job.waiting_since is None else job.waiting_since
        job.resume_at = until
        self.waiting.add(job)

    def _release(self, job: Job) -> None:
        """Take a job's offset off the commit path: its entry is committed instead."""
        if job.offset is not None and self.work.get(job.offset) is job:
            self.work[job.offset] = Waiting(job)
            self.unfinished -= 1

    def finish(self, job: Job, record: bytes) -> None:
        """Record the final result. The invoice's next job, if any, becomes
        ready after the commit that makes this record durable."""
        self.ledger.apply([(job.key.encode(), record)], None)
        self.waiting.discard(job)
        done = Done(record, job.key, job.invoice)
        if job.in_room:
            self.finished_in_room.append(done)
        else:
            assert job.offset is not None
            current = self.work.get(job.offset)
            if current is job:
                self.unfinished -= 1
            # A Job or a Waiting not yet committed: the record replaces it.
            self.work[job.offset] = done
        queue = self.invoices[job.invoice]
        queue.popleft()
        if queue:
            self.after_commit.append(queue[0])
        else:
            del self.invoices[job.invoice]

    # -- commit bookkeeping (the transaction itself is delivery_commit's)

    def finished_prefix(self) -> list[tuple[int, Item]]:
        """The longest run of consumed offsets with nothing left to call."""
        prefix: list[tuple[int, Item]] = []
        for offset, item in self.work.items():
            if isinstance(item, Job):
                break
            prefix.append((offset, item))
        return prefix

    def plan(self, *, done_value: bytes) -> CommitPlan:
        """Everything the next transaction writes (no await: a consistent cut).

        - the finished prefix's records and room entries, and its offset;
        - every other finished record too, ahead of its offset, with a
          ``d:<key>`` room entry saying it is recorded (tombstoned when the
          offset is committed): so the next version of its invoice may be
          called, and no later owner calls it again;
        - the records of room jobs that finished, with their entries' tombstones.
        """
        plan = CommitPlan()
        plan.prefix = self.finished_prefix()
        in_prefix = len(plan.prefix)
        for n, item in enumerate(self.work.values()):
            if isinstance(item, Done):
                if n < in_prefix:
                    if item.record is not None:
                        plan.records.append((item.invoice, item.record))
                    if item.in_room:
                        plan.room.append((wire.waiting_done_key(item.key), None))
                elif not item.in_room:
                    assert item.record is not None
                    plan.records.append((item.invoice, item.record))
                    plan.room.append((wire.waiting_done_key(item.key), done_value))
            elif isinstance(item, Waiting) and n < in_prefix:
                plan.room.append((wire.waiting_entry_key(item.job.key), wire.encode(item.job.entry())))
        for done in self.finished_in_room:
            assert done.record is not None
            plan.records.append((done.invoice, done.record))
            plan.room.append((wire.waiting_entry_key(done.key), None))
        plan.released = list(self.after_commit)
        if plan.prefix:
            plan.offset = plan.prefix[-1][0] + 1
        self._planned_in_room = len(self.finished_in_room)
        self._planned_ahead = [
            item
            for n, (_, item) in enumerate(self.work.items())
            if n >= in_prefix and isinstance(item, Done) and not item.in_room
        ]
        return plan

    def committed(self, plan: CommitPlan) -> list[bytes]:
        """After the transaction: forget what it wrote, release the next
        versions it made durable; returns ledger keys to drop."""
        dropped: list[bytes] = []
        for done in self._planned_ahead:
            done.in_room = True
            done.record = None
            dropped.append(done.key.encode())
        for offset, item in plan.prefix:
            current = self.work.pop(offset)
            if isinstance(item, Waiting):
                item.job.in_room = True
                if current is not item:
                    # Finished while the transaction carried its room entry:
                    # the record goes out next time, with a tombstone.
                    assert isinstance(current, Done)
                    self.finished_in_room.append(current)
            elif isinstance(item, Done):
                dropped.append(item.key.encode())
        for done in self.finished_in_room[: self._planned_in_room]:
            dropped.append(done.key.encode())
        del self.finished_in_room[: self._planned_in_room]
        del self.after_commit[: len(plan.released)]
        self.released.extend(plan.released)
        self._planned_ahead = []
        self._planned_in_room = 0
        return dropped

    def waiting_by_reason(self) -> Counter[str]:
        return Counter(job.waiting.value for job in self.waiting if job.waiting is not None)
