"""``invoice-sm status CARD_ID/CODE...`` and ``GET /invoices/{card_id}/{code}``:
what the service knows of one invoice, asked of any instance.

The answer has the invoice's current ``status``, ``version`` and ``appid``,
its last events with their decisions (``invoice.outcomes``) and its last
delivery with result and errcode (``invoice.deliveries``), and says where
each came from. The choice, as Kafka Streams' interactive queries make it:

1. **The owner's store** (``source: owner``). The processor instance holding
   the invoice's ``invoice.events`` partition has its current state in its
   local store, written only after each commit: the freshest committed
   answer, and a point lookup. An instance looks in every store it holds
   first, whichever partitioner the publisher used.
2. **Forwarded to the owner** (``source: forwarded``). Any other instance
   finds the owner of the key's partition from the processor group's
   description (each member advertises its service URL in its subscription,
   ``adapters.owners``) and asks it once, marked as forwarded; the owner
   answers from its stores or says it is not the owner (``421``), and never
   forwards again.
3. **The compacted topic** (``source: topic``). With no owner to ask (a
   rebalance in progress, an owner restoring or unreachable, a member that
   advertises nothing) the latest ``invoice.state`` record of the key is
   read back from its partition's end (``adapters.key_history``): the same
   committed state, found in bounded time rather than a point lookup.

History is always read from the topics, by the instance that answers, with
a bounded backward scan of the invoice's partitions; ``history_complete`` is
false when the budget (``INVOICE_SM_STATUS_SCAN_RECORDS`` per partition)
ran out before the last events were found. Keeping a per-invoice history in
the processor would answer faster, but it would add a write per event to the
processor's hot path for the sake of a support question.

``invoice-sm status`` asks a running service (``--url``, default this host's
service port) and, when none answers, runs the same query itself, as an
instance that holds nothing: owners first, then the topics.

The answer (HTTP body, and each line of ``status --json``): ``key``,
``card_id``, ``code``, ``found``, ``status``, ``version``, ``appid``,
``updated_at``, ``partition`` (of ``invoice.events``), ``source``,
``answered_by`` (the owner's URL; ``null`` from the topic), ``events``
(oldest first: ``decision``, ``event_id``, ``event_type``, ``from_status``,
``requested_status``, ``to_status``, ``version``, ``reason``, ``origin``,
``legal``, ``event_time``, ``processed_at``, ``offset``), ``last_delivery``
(``result``, ``errcode``, ``errmsg``, ``version``, ``reimburse_status``,
``idempotency_key``, ``attempts``, ``completed_at``, ``repair``, ``reason``;
``null`` before the first), ``delivery_pending``, ``history_complete`` and
``notes`` (why a source was passed over). Not found: ``404`` with
``found: false``; a bad key or ``events``: ``400``; topics unreadable: ``503``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, Protocol

import msgspec

from adapters import kafka, wire
from adapters.key_history import latest_records
from adapters.owners import FORWARDED_HEADER, OwnerClient, advertised_url, candidate_partitions, new_admin, partition_owners
from adapters.settings import Settings
from consumers.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from domain.errors import BrokerError
from domain.history import delivery_pending
from domain.model import invoice_key

DEFAULT_EVENTS, MAX_EVENTS = 10, 100
#: HTTP status of a forwarded query that reached an instance not holding the key's partition.
NOT_OWNER = 421
_TOKEN = re.compile(wire.TOKEN_PATTERN)
#: Partition counts change rarely (and only grow); re-read them after this long.
_COUNTS_TTL_S = 60.0
#: Queries an instance works on at once; more wait their turn.
_CONCURRENT_QUERIES = 2


class HoldsPartitions(Protocol):
    """What the query needs of a processor: its registered partition workers
    (registered only once restored, unregistered before they close)."""

    workers: Mapping[Any, Any]


def valid_part(part: str) -> bool:
    return bool(_TOKEN.search(part))


def parse_key(text: str) -> tuple[str, str] | None:
    """``CARD_ID/CODE`` as its two parts, or ``None`` when it is not an invoice key."""
    card_id, slash, code = text.partition("/")
    if not slash or not valid_part(card_id) or not valid_part(code):
        return None
    return card_id, code


class InvoiceQuery:
    """The query behind the endpoint and the command (module docstring).

    Args:
        settings: topics, the processor group, the scan budget.
        url: this instance's advertised URL (``None`` for the command line):
            an owner listed under it is this process, not a peer to ask.
    """

    def __init__(self, settings: Settings, *, url: str | None) -> None:
        self.settings = settings
        self.url = url
        self._processor: HoldsPartitions | None = None
        self._client = OwnerClient(origin=url)
        self._admin: Any = None
        self._counts: tuple[float, dict[str, int]] | None = None
        # A processor answers in its own event loop: a burst of questions,
        # each a few topic reads, must not take its CPU from the events.
        self._concurrent = asyncio.Semaphore(_CONCURRENT_QUERIES)

    def answer_from(self, processor: HoldsPartitions) -> None:
        """Answer from ``processor``'s stores (the owner's part of the query)."""
        self._processor = processor

    async def close(self) -> None:
        await self._client.close()
        if self._admin is not None:
            admin, self._admin = self._admin, None
            await admin.close()

    # -- HTTP

    async def handle(
        self, card_id: str, code: str, query: Mapping[str, str], headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any]]:
        """``GET /invoices/{card_id}/{code}[?events=N]`` as (HTTP status, JSON body)."""
        key = f"{card_id}/{code}"
        if not (valid_part(card_id) and valid_part(code)):
            return 400, {"key": key, "error": "not an invoice key: card_id and code are [A-Za-z0-9_-]{1,64}"}
        raw_events = query.get("events", str(DEFAULT_EVENTS))
        if not raw_events.isdigit() or not 1 <= int(raw_events) <= MAX_EVENTS:
            return 400, {"key": key, "error": f"events must be a whole number from 1 to {MAX_EVENTS}"}
        try:
            async with self._concurrent:
                return await self.answer(card_id, code, events=int(raw_events), forwarded=FORWARDED_HEADER in headers)
        except BrokerError as exc:
            return 503, {"key": key, "error": str(exc)}

    # -- the query

    async def answer(
        self, card_id: str, code: str, *, events: int = DEFAULT_EVENTS, forwarded: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """(200, answer) or (404, not found), or (421, not the owner) for a
        forwarded query this instance cannot answer from its stores.
        Raises ``BrokerError`` when the topics cannot be read."""
        key = invoice_key(card_id, code)
        raw_key = key.encode()
        counts = await self._partition_counts()
        candidates = candidate_partitions(key, counts[self.settings.topic_events])
        notes: list[str] = []
        held = self._held_stores()
        for partition, (store, stall) in held.items():
            value = store.get(raw_key)
            if value is not None:
                if stall:
                    notes.append(f"partition {partition} is stalled ({stall}): its state may be behind the topic")
                return 200, await self._complete(card_id, code, partition, value, "owner", self.url, events, notes)
        # Held here and the key is not in it: that partition is settled.
        settled = {p for p in candidates if p in held}
        if forwarded:
            if settled:
                body = _not_found(card_id, code, "owner", complete=len(settled) == len(candidates), notes=notes)
                return 404, {**body, "searched_partitions": sorted(settled)}
            return NOT_OWNER, {"key": key, "found": False, "error": "not_owner", "partitions": candidates}

        owners = await self._owners(notes)
        for partition in candidates:
            owner = owners.get(partition)
            if partition in settled or owner is None or owner == self.url:
                continue
            reply = await self._client.ask(owner, card_id, code, events=events)
            if reply.status == 200 and reply.body.get("found"):
                return 200, {**reply.body, "source": "forwarded", "answered_by": owner}
            searched = reply.body.get("searched_partitions") if reply.status == 404 else None
            if isinstance(searched, list):
                # Authoritative for the partitions the owner holds, whichever we asked about.
                settled.update(p for p in searched if isinstance(p, int))
                if partition in settled:
                    continue
            notes.append(f"owner {owner} of partition {partition} could not answer ({reply.body.get('error') or reply.status})")
        if not owners:
            notes.append("no owner known (group rebalancing, or no instance advertises a URL): read the topics")

        complete = True
        for partition in candidates:
            if partition in settled:
                continue
            found = await latest_records(
                self.settings, self.settings.topic_state, partition, raw_key, want=1, budget=self.settings.status_scan_records
            )
            if found.records and found.records[0].value is not None:
                return 200, await self._complete(card_id, code, partition, found.records[0].value, "topic", None, events, notes)
            # A tombstone is a deleted invoice: as absent as one never seen.
            complete = complete and found.complete
            if not found.complete:
                notes.append(
                    f"{self.settings.topic_state}[{partition}]: not in its last {found.scanned} records; older ones not read"
                )
        return 404, _not_found(card_id, code, "topic" if not settled else "owner", complete=complete, notes=notes)

    async def _complete(
        self,
        card_id: str,
        code: str,
        partition: int,
        state_bytes: bytes,
        source: str,
        answered_by: str | None,
        events: int,
        notes: list[str],
    ) -> dict[str, Any]:
        """The answer: the state found, plus the history read from the topics."""
        settings = self.settings
        state = wire.decode_state(state_bytes)
        counts = await self._partition_counts()
        # Outcomes go to the input partition modulo their count, deliveries to
        # the outcome partition modulo theirs (processor and deliverer).
        outcomes_partition = partition % counts[settings.topic_outcomes]
        deliveries_partition = outcomes_partition % counts[settings.topic_deliveries]
        raw_key = invoice_key(card_id, code).encode()
        budget = settings.status_scan_records
        outcomes, deliveries = await asyncio.gather(
            latest_records(settings, settings.topic_outcomes, outcomes_partition, raw_key, want=events, budget=budget),
            latest_records(settings, settings.topic_deliveries, deliveries_partition, raw_key, want=1, budget=budget),
        )
        history = [_event(r.value, r.offset, notes) for r in reversed(outcomes.records) if r.value is not None]
        found_events = [e for e in history if e is not None]
        last_delivery = (
            _delivery(deliveries.records[0].value, notes) if deliveries.records and deliveries.records[0].value else None
        )
        for topic, part, found in (
            (settings.topic_outcomes, outcomes_partition, outcomes),
            (settings.topic_deliveries, deliveries_partition, deliveries),
        ):
            if not found.complete:
                notes.append(f"{topic}[{part}]: only its last {found.scanned} records were read")
        return {
            "key": state.key,
            "card_id": state.card_id,
            "code": state.code,
            "found": True,
            "status": str(state.status),
            "version": state.version,
            "appid": state.appid,
            "updated_at": state.updated_at,
            "partition": partition,
            "source": source,
            "answered_by": answered_by,
            "events": found_events,
            "last_delivery": last_delivery,
            "delivery_pending": delivery_pending(
                ((e["decision"], e["origin"], e["version"]) for e in found_events),
                last_delivery["version"] if last_delivery else None,
            ),
            "history_complete": outcomes.complete and deliveries.complete,
            "notes": notes,
        }

    # -- where things are

    def _held_stores(self) -> dict[int, tuple[Any, str | None]]:
        """Partition -> (store, why it is stalled or ``None``), for the partitions held here."""
        processor = self._processor
        if processor is None:
            return {}
        held: dict[int, tuple[Any, str | None]] = {}
        for tp, worker in list(processor.workers.items()):
            if tp.topic == self.settings.topic_events and worker.store is not None and not worker.closing.is_set():
                held[tp.partition] = (worker.store, getattr(worker, "stall", None))
        return held

    async def _owners(self, notes: list[str]) -> dict[int, str]:
        try:
            if self._admin is None:
                admin = new_admin(self.settings)
                with kafka.broker_errors("connect to Kafka"):
                    await admin.start()
                self._admin = admin
            return await partition_owners(self.settings, self._admin)
        except BrokerError as exc:
            notes.append(f"could not describe the processor group: {exc}")
            return {}

    async def _partition_counts(self) -> dict[str, int]:
        now = time.monotonic()
        if self._counts is not None and now - self._counts[0] < _COUNTS_TTL_S:
            return self._counts[1]
        s = self.settings
        names = (s.topic_events, s.topic_outcomes, s.topic_deliveries)
        found = await asyncio.gather(*(kafka.partitions_of(s, name) for name in names))
        counts = {name: len(parts) for name, parts in zip(names, found, strict=True)}
        missing = [name for name, n in counts.items() if n == 0]
        if missing:
            raise BrokerError(f"topics missing: {', '.join(missing)}")
        self._counts = (now, counts)
        return counts


def _event(value: bytes, offset: int, notes: list[str]) -> dict[str, Any] | None:
    try:
        outcome = wire.decode_outcome(value)
    except msgspec.DecodeError as exc:
        notes.append(f"outcome at offset {offset} unreadable: {exc}")
        return None
    d = outcome.data
    return {
        "decision": outcome.type.removeprefix("invoice.status."),
        "event_id": d.event_id,
        "event_type": d.event_type,
        "from_status": str(d.from_status),
        "requested_status": str(d.requested_status),
        "to_status": None if d.to_status is None else str(d.to_status),
        "version": d.version,
        "reason": d.reason,
        "origin": d.origin,
        "legal": d.legal,
        "event_time": d.event_time,
        "processed_at": d.processed_at,
        "offset": offset,
    }


def _delivery(value: bytes, notes: list[str]) -> dict[str, Any] | None:
    try:
        d = wire.decode_delivery(value)
    except msgspec.DecodeError as exc:
        notes.append(f"delivery record unreadable: {exc}")
        return None
    return {
        "result": str(d.result),
        "errcode": d.errcode,
        "errmsg": d.errmsg,
        "version": d.version,
        "reimburse_status": str(d.reimburse_status),
        "idempotency_key": d.idempotency_key,
        "attempts": d.attempts,
        "completed_at": d.completed_at,
        "repair": d.repair,
        "reason": None if d.reason is None else str(d.reason),
    }


def _not_found(card_id: str, code: str, source: str, *, complete: bool, notes: list[str]) -> dict[str, Any]:
    return {
        "key": invoice_key(card_id, code),
        "card_id": card_id,
        "code": code,
        "found": False,
        "source": source,
        "history_complete": complete,
        "notes": notes,
    }


# ------------------------------------------------------------------ command


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("keys", nargs="+", metavar="CARD_ID/CODE", help="invoice keys")
    p.add_argument("--json", action="store_true", help="one JSON object per key and line (the HTTP answer)")
    p.add_argument(
        "--url", help="a service to ask (default: this host's service port, INVOICE_SM_ADVERTISED_URL or METRICS_HOST:PORT)"
    )
    p.add_argument("--direct", action="store_true", help="ask no service: find the owners and read the topics from here")
    p.add_argument("--events", type=int, default=DEFAULT_EVENTS, help=f"how many of the last events to show (1-{MAX_EVENTS})")


def status(settings: Settings, args: argparse.Namespace) -> int:
    keys = []
    for text in args.keys:
        parsed = parse_key(text)
        if parsed is None:
            print(f"invoice-sm status: {text!r} is not an invoice key CARD_ID/CODE ([A-Za-z0-9_-]{{1,64}} each)", file=sys.stderr)
            return EXIT_CONFIG
        keys.append(parsed)
    if not 1 <= args.events <= MAX_EVENTS:
        print(f"invoice-sm status: --events must be from 1 to {MAX_EVENTS}", file=sys.stderr)
        return EXIT_CONFIG
    url = None if args.direct else (args.url or advertised_url(settings))
    answers = asyncio.run(_ask_all(settings, keys, url=url, events=args.events))
    if args.json:
        for _, body in answers:
            print(json.dumps(body, ensure_ascii=False))
    else:
        from consumers.render import print_invoice_answers

        print_invoice_answers(answers)
    return EXIT_OK if all(code == 200 for code, _ in answers) else EXIT_FAILED


async def _ask_all(
    settings: Settings, keys: list[tuple[str, str]], *, url: str | None, events: int
) -> list[tuple[int, dict[str, Any]]]:
    import httpx

    from consumers.render import print_no_service

    answers: list[tuple[int, dict[str, Any]]] = []
    direct: InvoiceQuery | None = None
    client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0))
    try:
        for card_id, code in keys:
            if url is not None and direct is None:
                try:
                    response = await client.get(f"{url}/invoices/{card_id}/{code}", params={"events": events})
                    answers.append((response.status_code, response.json()))
                    continue
                except (httpx.TransportError, ValueError) as exc:
                    # No service there: do what a service that holds nothing would.
                    print_no_service(url, type(exc).__name__)
            if direct is None:
                direct = InvoiceQuery(settings, url=None)
            answers.append(await direct.answer(card_id, code, events=events))
    finally:
        await client.aclose()
        if direct is not None:
            await direct.close()
    return answers
