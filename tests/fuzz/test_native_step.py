"""The native step answers only where the Python path decides, and with its bytes.

``consumers.processor.decide_batch`` hands each record to the native step
(``native/src/lib.rs``) first and takes the Python path (``decide_records``:
``wire.decode_record`` -> ``domain.decide.decide`` -> ``wire.outcome_bytes``
/ ``wire.encode_state``) where it answers ``None``. So the native step is
right if, for every input and every state, it either declines or gives
exactly the Python path's decision kind, WeChat legality, outcome bytes and
state bytes. Here both run on: the fuzz suite's hostile generators; valid
events in every form the suite writes; generated events against generated
states (statuses, versions, appids, remembered ids, plain or not); odd topic
names and header spellings; and whole streams of mixed requests and WeChat
reports, decided batch by batch both ways. Each test also checks that the
native step really answered a good share, so none passes by declining.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import wire
from adapters.kafka_records import UnreadableRecord
from adapters.native import NativeStep
from adapters.store import InvoiceStates, MemoryPartitionStore
from consumers.processor import decide_batch
from domain.model import InvoiceState
from domain.status import SET_STATUS, STATUS_EVENT_TYPES, WECHAT_STATUS_REPORTED, ReimburseStatus
from tests.factories import card
from tests.fuzz.test_decode_fuzz import structured_events
from tests.support.hostile import cases, consumer_record, key_of, random_valid_event, valid_event

MAX_BYTES = 65536
NOW = "2026-12-07T18:00:00.000Z"
APPIDS = ["", "wx1234567890abcdef", "wx_other-Account9"]


def python_verdict(record: Any, state: bytes | None, now: str | None = NOW) -> tuple[Any, ...]:
    """What the Python path makes of ``record`` against ``state`` (a changelog value)."""
    states = InvoiceStates(MemoryPartitionStore(), 0, wire.decode_state, wire.encode_state)
    if state is not None:
        states.stage(record.key, state)
    verdicts = decide_batch([record], states, native=None, max_bytes=MAX_BYTES, now=now)
    if verdicts.invalid:
        return ("refused", verdicts.invalid[0][1].reason)
    _, kind, legal, outcome, new_state = verdicts.decided[0]
    return (kind, legal, outcome, new_state)


def agree(step: NativeStep, record: Any, state: bytes | None = None, now: str | None = NOW) -> bool:
    """The native step declines ``record`` or answers as the Python path does; returns whether it answered."""
    if type(record) is UnreadableRecord:
        return False  # decide_batch never offers these to the native step
    answer = step.decide(
        record.key, record.value, record.headers, state, now, record.topic, record.partition, record.offset, MAX_BYTES
    )
    if answer is None:
        return False
    expected = python_verdict(record, state, now)
    assert tuple(answer) == expected, f"native {answer!r:.600}\n!= python {expected!r:.600}\nfor {record!r:.500} state {state!r}"
    return True


def test_the_fuzz_generators_are_declined_or_decided_alike(native_step: NativeStep) -> None:
    volume, answered = 30_000, 0
    for case in cases(seed=20261207, count=volume):
        answered += agree(native_step, case.record)
    # Valid structured events are a good share of the mix (ASCII ones are answered natively).
    assert answered > volume // 20, answered


def test_valid_events_in_every_written_form_are_decided_alike(native_step: NativeStep) -> None:
    rng = random.Random(11)
    answered = 0
    for _ in range(3000):
        ev = random_valid_event(rng)
        for value in (
            json.dumps(ev, separators=(",", ":")).encode(),
            json.dumps(ev).encode(),
            json.dumps(ev, ensure_ascii=False, indent=2).encode(),
        ):
            answered += agree(native_step, consumer_record(key_of(ev), value, []))
    assert answered > 3000, answered


# ------------------------------------------------- generated events x states

_plain_id = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'), min_size=1, max_size=40)
_odd_id = st.sampled_from(["ü-id", 'q"uote', "back\\slash", "tab\there", "€", "x" * 256])
_statuses = st.sampled_from(list(ReimburseStatus))


@st.composite
def event_and_state(draw: st.DrawFn) -> tuple[Any, bytes | None, bool]:
    """A valid event, a prior state of its invoice (or none), and whether both are plain."""
    card_id, code = card(draw(st.integers(0, 5)))
    status = draw(_statuses)
    kind = draw(st.sampled_from(["typed", "set", "wechat"]))
    event_id = draw(st.one_of(_plain_id, _odd_id))
    data: dict[str, Any] = {"card_id": card_id, "code": code}
    appid = draw(st.sampled_from(APPIDS))
    if appid:
        data["appid"] = appid
    if kind != "typed":
        data["reimburse_status"] = status.value
    ev: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": "/erp/reimbursement",
        "type": {"typed": STATUS_EVENT_TYPES.get(status, SET_STATUS), "set": SET_STATUS, "wechat": WECHAT_STATUS_REPORTED}[kind],
        "data": data,
    }
    if kind == "typed" and status not in STATUS_EVENT_TYPES:
        data["reimburse_status"] = status.value
    if draw(st.booleans()):
        ev["time"] = draw(st.sampled_from(["2026-11-23T10:00:00Z", "2026-11-23T10:00:00.123+08:00", "2026-11-23T10:00:00"]))
    if draw(st.booleans()):
        ev["subject"] = f"{card_id}/{code}"
    value = json.dumps(ev, ensure_ascii=False).encode()
    state: bytes | None = None
    plain_state = True
    if draw(st.integers(0, 3)):
        ids = draw(st.lists(st.one_of(_plain_id, _odd_id, st.just(event_id)), max_size=40))
        plain_state = all(i.isascii() and i.isprintable() and '"' not in i and "\\" not in i for i in ids)
        state = wire.encode_state(
            InvoiceState(
                card_id,
                code,
                draw(_statuses),
                draw(st.integers(0, 2**40)),
                draw(st.sampled_from(APPIDS)),
                draw(st.none() | st.just("2026-11-23T09:00:00.000Z")),
                tuple(ids),
            )
        )
    plain_event = (
        event_id.isascii() and '"' not in event_id and "\\" not in event_id and ev.get("time", "Z").endswith(("Z", ":00"))
    )
    return consumer_record(f"{card_id}/{code}".encode(), value, []), state, plain_event and plain_state


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_and_state(), st.sampled_from([NOW, None]))
def test_generated_events_against_generated_states_are_decided_alike(
    native_step: NativeStep, case: tuple[Any, bytes | None, bool], now: str | None
) -> None:
    record, state, plain = case
    answered = agree(native_step, record, state, now)
    # Plain events on plain states are the native step's to answer: it must not decline them.
    if plain and python_verdict(record, state, now)[0] != "refused":
        assert answered, (record, state)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structured_events())
def test_structure_aware_hostile_events_are_declined_or_decided_alike(
    native_step: NativeStep, case: tuple[bytes | None, bytes, list[tuple[str, bytes | None]]]
) -> None:
    key, value, headers = case
    agree(native_step, consumer_record(key, value, headers))


_plain_event = valid_event(7)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=400),
        # A plain event cut, spliced or with bytes flipped: close to what the native reader accepts.
        st.tuples(st.integers(0, 400), st.integers(0, 400), st.binary(max_size=6)).map(
            lambda cut: (raw := json.dumps(_plain_event, separators=(",", ":")).encode())[: cut[0]] + cut[2] + raw[cut[1] :]
        ),
    ),
    st.sampled_from([key_of(_plain_event), b"x/y", None]),
)
def test_arbitrary_and_spliced_bytes_are_declined_or_decided_alike(
    native_step: NativeStep, value: bytes, key: bytes | None
) -> None:
    agree(native_step, consumer_record(key, value, []))


_header_names = st.sampled_from(
    ["content-type", "Content-Type", "CONTENT-TYPE", "ce_specversion", "CE_SpecVersion", "ce_id", "x", "\u212a", "\udcff"]
)
_header_values = st.one_of(
    st.none(),
    st.sampled_from(
        [
            b"application/cloudevents+json",
            b"APPLICATION/CLOUDEVENTS+JSON; charset=utf-8",
            b"application/cloudevents-batch+json",
            b"application/cloudevents",
            b"application/json",
            b"text/plain",
            b"1.0",
        ]
    ),
    st.binary(max_size=20),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 50), st.lists(st.tuples(_header_names, _header_values), max_size=4))
def test_header_spellings_are_declined_or_decided_alike(
    native_step: NativeStep, n: int, headers: list[tuple[str, bytes | None]]
) -> None:
    ev = random_valid_event(random.Random(n))
    agree(native_step, consumer_record(key_of(ev), json.dumps(ev).encode(), headers))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=1, max_size=30), st.integers(0, 2**31 - 1), st.integers(0, 2**62))
def test_any_topic_partition_and_offset_are_written_into_the_outcome_alike(
    native_step: NativeStep, topic: str, partition: int, offset: int
) -> None:
    ev = valid_event(offset % 50)
    record = dataclasses.replace(
        consumer_record(key_of(ev), json.dumps(ev).encode(), []), topic=topic, partition=partition, offset=offset
    )
    assert agree(native_step, record), record


# ------------------------------------------------------------- whole streams


def mixed_stream(n_events: int, n_invoices: int, seed: int) -> list[Any]:
    """Requests, set-status events and WeChat reports over a few invoices, with
    changing appids and repeated ids: every branch of ``decide``, and ids
    enough per invoice to roll the 32-id window."""
    rng = random.Random(seed)
    records: list[Any] = []
    sent: list[Any] = []
    for offset in range(n_events):
        card_id, code = card(rng.randrange(n_invoices))
        if sent and rng.random() < 0.05:
            records.append(dataclasses.replace(rng.choice(sent), offset=offset))  # the same event again
            continue
        status = rng.choice(list(ReimburseStatus))
        kind = rng.choices(["typed", "set", "wechat"], [6, 2, 1])[0]
        data: dict[str, Any] = {"card_id": card_id, "code": code}
        appid = rng.choices(APPIDS, [1, 20, 1])[0]
        if appid:
            data["appid"] = appid
        event_type = WECHAT_STATUS_REPORTED if kind == "wechat" else STATUS_EVENT_TYPES.get(status, SET_STATUS)
        if kind != "typed" or event_type == SET_STATUS:
            event_type = WECHAT_STATUS_REPORTED if kind == "wechat" else SET_STATUS
            data["reimburse_status"] = status.value
        ev = {"specversion": "1.0", "id": f"m-{offset}", "source": "/erp", "type": event_type, "data": data}
        record = dataclasses.replace(consumer_record(f"{card_id}/{code}".encode(), json.dumps(ev).encode(), []), offset=offset)
        records.append(record)
        sent.append(record)
    return records


class Counting:
    """The native step, counting the records it answered."""

    def __init__(self, step: NativeStep) -> None:
        self.step, self.answered = step, 0

    def decide(self, *args: Any) -> Any:
        answer = self.step.decide(*args)
        self.answered += answer is not None
        return answer


def test_whole_streams_decided_batch_by_batch_give_the_same_records_and_states(native_step: NativeStep) -> None:
    records = mixed_stream(6000, 40, seed=5)
    counting = Counting(native_step)
    runs = {}
    steps: tuple[tuple[str, NativeStep | None], ...] = (("native", counting), ("python", None))
    for name, step in steps:
        states = InvoiceStates(MemoryPartitionStore(), 16, wire.decode_state, wire.encode_state)
        written = []
        for start in range(0, len(records), 250):
            verdicts = decide_batch(records[start : start + 250], states, native=step, max_bytes=MAX_BYTES, now=NOW)
            assert not verdicts.invalid
            written += [(r.offset, kind, legal, outcome, state) for r, kind, legal, outcome, state in verdicts.decided]
            states.commit(start)
        runs[name] = (written, dict(states.store.items()))
    assert runs["native"] == runs["python"]
    assert counting.answered == len(records)  # plain events, all decided natively
    kinds = {kind for _, kind, _, _, _ in runs["native"][0]}
    assert len(kinds) == 4, kinds  # every decision kind was exercised
    assert any(len(wire.decode_state(v).recent_event_ids) == 32 for v in runs["native"][1].values())


def test_the_cloudevents_sdks_events_are_declined_or_decided_alike(native_step: NativeStep) -> None:
    """The official SDKs (v1 and core, structured and binary, with and without
    a key, data as JSON or as data_base64): the plain structured ones are
    answered natively, and every answer is the Python path's."""
    from tests.integration.test_cloudevents_sdk import CASES, _message

    answered = set()
    for n, case in enumerate(CASES):
        _, message = _message(case, n)
        key = message.key.encode() if isinstance(message.key, str) else message.key
        record = consumer_record(key, message.value, list(message.headers.items()))
        if agree(native_step, record):
            answered.add(case.name)
    assert answered == {c.name for c in CASES if c.mode == "structured" and c.partitionkey and not c.data_as_bytes}
