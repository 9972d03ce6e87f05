"""Generators of hostile input records for the decoder (the fuzz suite and the intake tests).

Every generator returns ``Case``s: an aiokafka ``ConsumerRecord`` (or an
``UnreadableRecord``) shaped exactly as the consumer hands it to
``wire.decode_record``, a name that says how it was made (so a failure can be
reproduced from the seed and the name), and what is known for certain about
its fate: ``must_refuse`` when no correct decoder may accept it, ``reason``
when the DLQ reason is determined too.

Header names are what aiokafka can deliver: ``str``, and a name that is not
UTF-8 on the wire arrives decoded with ``surrogateescape`` (only
``\\udc80``-``\\udcff``), as ``adapters.kafka_records`` reads it. Values and
keys are ``bytes`` or ``None``.

JSON is written by ``dump`` rather than ``json.dumps`` so that a case can hold
what Python's encoder will not write: raw tokens (``NaN``, ``1e999``, a
400-digit integer, a lone ``\\ud800`` escape, nesting 5,000 deep) and
duplicate keys.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka.structs import ConsumerRecord

from domain.status import ReimburseStatus
from tests.factories import APPID, TYPE_FOR_STATUS, card

Headers = list[tuple[str, bytes | None]]
TOPIC = "fuzz.events"


class Raw(str):
    """A JSON fragment written as is (not quoted)."""


class Pairs(list):
    """A JSON object as ``(name, value)`` pairs: duplicate names are kept."""


def dump(obj: Any, *, ascii_only: bool = True) -> str:
    """JSON text of ``obj`` honouring ``Raw`` and ``Pairs``."""
    if isinstance(obj, Raw):
        return str(obj)
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=ascii_only)
    if isinstance(obj, Pairs):
        return (
            "{" + ", ".join(f"{json.dumps(k, ensure_ascii=ascii_only)}: {dump(v, ascii_only=ascii_only)}" for k, v in obj) + "}"
        )
    if isinstance(obj, dict):
        return (
            "{"
            + ", ".join(f"{json.dumps(k, ensure_ascii=ascii_only)}: {dump(v, ascii_only=ascii_only)}" for k, v in obj.items())
            + "}"
        )
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(dump(v, ascii_only=ascii_only) for v in obj) + "]"
    return json.dumps(obj)


@dataclass(frozen=True)
class Case:
    name: str
    record: ConsumerRecord
    must_refuse: bool = False
    reason: str | None = None


_offsets = iter(range(10**12))


def consumer_record(key: bytes | None, value: bytes | None, headers: Headers | None = None) -> ConsumerRecord:
    """A ``ConsumerRecord`` as aiokafka's fetcher builds it."""
    hdrs = tuple(headers or ())
    return ConsumerRecord(
        TOPIC,
        0,
        next(_offsets),
        1764000000000,
        0,
        key,
        value,
        None,
        len(key) if key is not None else -1,
        len(value) if value is not None else -1,
        hdrs,
    )


def unreadable_record(problem: str, key: bytes | None = None, value: bytes | None = None) -> ConsumerRecord:
    """What ``adapters.kafka_records`` delivers for a record it could not parse."""
    from adapters.kafka_records import UnreadableRecord

    return UnreadableRecord(
        TOPIC,
        0,
        next(_offsets),
        1764000000000,
        0,
        key,
        value,
        None,
        len(key) if key is not None else -1,
        len(value) if value is not None else -1,
        (),
        problem=problem,
    )


# ------------------------------------------------------------------ valid events

_STATUSES = list(ReimburseStatus)


def random_valid_event(rng: random.Random) -> dict[str, Any]:
    """A valid structured event with its optional attributes drawn at random."""
    card_id, code = card(rng.randrange(10**6))
    status = rng.choice(_STATUSES)
    set_type = rng.random() < 0.25
    data: dict[str, Any] = {"card_id": card_id, "code": code}
    if rng.random() < 0.8:
        data["appid"] = rng.choice([APPID, "wx_other-Account9", "A" * 64])
    if set_type:
        data["reimburse_status"] = status.value
    ev: dict[str, Any] = {
        "specversion": "1.0",
        "id": rng.choice([f"e-{rng.randrange(10**9):09d}", "id with spaces ü €", "x" * 256, "日本語-id"]),
        "source": rng.choice(["/erp/reimbursement", "urn:x", "s" * 1024]),
        "type": "invoice.status.set" if set_type else TYPE_FOR_STATUS[status],
        "data": data,
    }
    if rng.random() < 0.8:
        ev["time"] = rng.choice(["2026-11-23T10:00:00Z", "2026-11-23T10:00:00.123456789+08:00", "2026-11-23T10:00:00-05:00"])
    if rng.random() < 0.5:
        ev["subject"] = f"{card_id}/{code}"
    if rng.random() < 0.2:
        ev["datacontenttype"] = rng.choice(["application/json", "application/json; charset=utf-8", "text/json"])
    if rng.random() < 0.2:
        ev["partitionkey"] = f"{card_id}/{code}"
    if rng.random() < 0.1:
        ev["extension_x"] = rng.choice([1, None, [1, 2], {"a": "b"}])
    return ev


def key_of(ev: dict[str, Any]) -> bytes:
    data = ev["data"]
    return f"{data['card_id']}/{data['code']}".encode()


def structured_headers(rng: random.Random) -> Headers:
    return rng.choice(
        [
            [],
            [("content-type", b"application/cloudevents+json")],
            [("Content-Type", b"application/cloudevents+json; charset=UTF-8")],
            [("content-type", b"application/json")],
            # A structured event carrying ce_specversion too: content-type decides.
            [("content-type", b"application/cloudevents+json"), ("ce_specversion", b"1.0"), ("ce_id", None)],
            [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), ("x-null", None)],
        ]
    )


def binary_form(ev: dict[str, Any]) -> tuple[bytes, Headers]:
    """The same event in binary mode: attributes in ``ce_*`` headers, the value is the data."""
    headers: Headers = [("ce_specversion", ev["specversion"].encode())]
    for attr in ("id", "source", "type", "time", "subject", "partitionkey"):
        if attr in ev:
            headers.append((f"ce_{attr}", ev[attr].encode()))
    headers.append(("content-type", b"application/json"))
    return json.dumps(ev["data"]).encode(), headers


def valid_case(rng: random.Random, i: int) -> Case:
    ev = random_valid_event(rng)
    if rng.random() < 0.3:
        value, headers = binary_form(ev)
        return Case(f"valid binary #{i}", consumer_record(key_of(ev), value, headers))
    return Case(
        f"valid structured #{i}",
        consumer_record(key_of(ev), dump(ev, ascii_only=rng.random() < 0.5).encode(), structured_headers(rng)),
    )


# ---------------------------------------------------------------- hostile values

DEEP = 5000


def deep(rng: random.Random, depth: int = DEEP) -> Raw:
    """JSON nested ``depth`` levels (arrays, objects or both), well formed or not."""
    form = rng.randrange(4)
    if form == 0:
        return Raw("[" * depth + "]" * depth)
    if form == 1:
        return Raw('{"a": ' * depth + "1" + "}" * depth)
    if form == 2:
        return Raw('[{"a": ' * (depth // 2) + "null" + "}]" * (depth // 2))
    return Raw("[" * depth)  # unclosed


#: Values that are wrong for every string attribute (wrong JSON type or not JSON).
WRONG_TYPES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    Raw("1e999"),
    Raw("-1e999"),
    Raw("9" * 400),
    Raw("-" + "9" * 400),
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("nan"),
    Raw("0x10"),
    Raw("01"),
    Raw("1."),
    [],
    {},
    [1, 2],
    {"a": 1},
    ["1.0"],
    Raw("undefined"),
]
#: Strings no token (card_id, code, appid) may be.
BAD_TOKENS: list[str] = [
    "",
    "a/b",
    "a b",
    "a\n",
    "a\r\n",
    "\na",
    "a\x00",
    "a\x7f",
    "a\x85",
    "ａｂｃ",
    "١٢٣",
    "é",
    "a.b",
    "a" * 65,
    "a\u200b",
    "a\u2028",
    "a\t",
    "😀",
    "a:b",
    "a\\b",
    '"',
    "-\n",
    "A" * 64 + "\n",
]
#: Strings no event id may be (control characters, empty, too long).
BAD_IDS: list[str] = ["", "\n", "e-1\n", "e\x00", "e\x1f", "e\x7f", "e\x85", "e\x9f", "\x80", "x" * 257, "e\r", "\t"]
#: Strings no RFC 3339 time may be.
BAD_TIMES: list[str] = [
    "",
    "yesterday",
    "2026-11-23T10:00:00Z\n",
    "２０２６-11-23T10:00:00Z",
    "٢٠٢٦-11-23T10:00:00Z",
    "2026-11-23 10:00:00Z",
    "2026-11-23T10:00:00",
    "2026-11-23T10:00:00.Z",
    "2026-11-23T10:00:00.1234567890Z",
    "2026-11-23T10:00:00+0800",
    "\n2026-11-23T10:00:00Z",
    "2026-11-23T10:00:00z",
    "2026-1-23T10:00:00Z",
    "2026-11-23T10:00:00Z ",
]
#: Strings that are hostile but may be legal somewhere (ids, sources, extensions).
ODD_STRINGS: list[Any] = [
    Raw('"\\ud800"'),
    Raw('"\\udfff"'),
    Raw('"\\udc80x"'),
    Raw('"\\ud83d\\ude00"'),
    Raw('"\\ud83d"'),
    Raw('"\\u0000"'),
    Raw('"\\u"'),
    Raw('"\\x41"'),
    Raw('"\\uZZZZ"'),
    "\x85",
    "\u2028\u2029",
    "\ufeff",
    "\U0010ffff",
    "a" * 70000,
    "b" * 5000,
    "line\nbreak",
    "tab\there",
    " ",
    "\\",
    '"',
    "😀" * 300,
]


def hostile_value(rng: random.Random) -> Any:
    pool = rng.randrange(6)
    if pool == 0:
        return rng.choice(WRONG_TYPES)
    if pool == 1:
        return rng.choice(BAD_TOKENS)
    if pool == 2:
        return rng.choice(BAD_IDS)
    if pool == 3:
        return rng.choice(BAD_TIMES)
    if pool == 4:
        return rng.choice(ODD_STRINGS)
    return deep(rng, rng.choice([DEEP, DEEP * 2, 600]))


def _is_string(value: Any) -> bool:
    return isinstance(value, str) and not isinstance(value, Raw)


_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _token_ok(value: Any) -> bool:
    return _is_string(value) and _TOKEN.fullmatch(value) is not None


# Which replacement of an attribute no correct decoder may accept.
def _refused_at(path: str, value: Any) -> bool:
    if isinstance(value, Raw) and value.startswith('"') and path in ("id", "source"):
        return False  # a raw string literal: may be a legal id or source (an emoji) or malformed JSON
    if path in ("data.card_id", "data.code"):
        return not _token_ok(value)
    if path == "data.appid":
        return value is not None and not _token_ok(value)
    if path == "id":
        return not _is_string(value) or value in BAD_IDS
    if path == "time":
        return value is not None and (not _is_string(value) or value in BAD_TIMES)
    if path == "data":
        return not isinstance(value, dict)
    if path == "source":
        return not _is_string(value) or not 1 <= len(value) <= 1024
    if path in ("specversion", "type"):
        return True  # every hostile value differs from "1.0" and from every known type
    if path in ("subject", "partitionkey"):
        return value is not None
    return False


_FIELDS = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "datacontenttype",
    "data",
    "data_base64",
    "partitionkey",
    "data.card_id",
    "data.code",
    "data.appid",
    "data.reimburse_status",
]


def field_case(rng: random.Random, i: int) -> Case:
    """A valid event with exactly one attribute changed (or removed)."""
    ev = random_valid_event(rng)
    key = key_of(ev)
    path = rng.choice(_FIELDS)
    value = hostile_value(rng)
    target = ev["data"] if path.startswith("data.") else ev
    name = path.split(".")[-1]
    if rng.random() < 0.1:
        removed = target.pop(name, None) is not None
        refused = removed and path in ("specversion", "id", "source", "type", "data.card_id", "data.code")
        return Case(f"field {path} removed #{i}", consumer_record(key, dump(ev).encode(), structured_headers(rng)), refused)
    target[name] = value
    refused = _refused_at(path, value)
    return Case(
        f"field {path} = {dump(value)[:60]!r} #{i}",
        consumer_record(key, dump(ev, ascii_only=rng.random() < 0.5).encode(), structured_headers(rng)),
        refused,
    )


def binary_field_case(rng: random.Random, i: int) -> Case:
    """Binary mode with one ``ce_*`` header changed: null, not UTF-8, hostile text, or the data hostile."""
    ev = random_valid_event(rng)
    value, headers = binary_form(ev)
    key = key_of(ev)
    choice = rng.randrange(5)
    idx = rng.randrange(len(headers))
    header_name = headers[idx][0]
    if choice == 0:
        headers[idx] = (header_name, None)
        refused = header_name.startswith("ce_")
        return Case(
            f"binary {header_name} = None #{i}", consumer_record(key, value, headers), refused, "bad_header" if refused else None
        )
    if choice == 1:
        headers[idx] = (header_name, rng.choice([b"\xff", b"\xed\xa0\x80", b"e-\xc3", b"\xc0\xaf"]))
        refused = header_name.startswith("ce_")
        return Case(
            f"binary {header_name} not UTF-8 #{i}",
            consumer_record(key, value, headers),
            refused,
            "bad_header" if refused else None,
        )
    if choice == 2:
        bad = rng.choice(BAD_TOKENS + BAD_IDS + BAD_TIMES)
        headers[idx] = (header_name, bad.encode("utf-8"))
        attr = header_name[3:]
        refused = (
            (attr == "id" and bad in BAD_IDS)
            or (attr == "time" and bad in BAD_TIMES)
            or attr in ("type", "subject", "partitionkey")
        )
        if attr == "specversion":
            refused = True
        return Case(f"binary {header_name} = {bad[:40]!r} #{i}", consumer_record(key, value, headers), refused)
    if choice == 3:
        data = dict(ev["data"])
        field = rng.choice(["card_id", "code", "appid"])
        data[field] = hostile_value(rng)
        refused = not _token_ok(data[field]) and not (field == "appid" and data[field] is None)
        return Case(
            f"binary data.{field} = {dump(data[field])[:60]!r} #{i}", consumer_record(key, dump(data).encode(), headers), refused
        )
    hostile = rng.choice([deep(rng), Raw("[1, 2]"), Raw("null"), Raw('"x"'), Raw("1e999"), Raw("NaN")])
    return Case(f"binary data = {str(hostile)[:40]!r} #{i}", consumer_record(key, str(hostile).encode(), headers), True)


def mutation_case(rng: random.Random, i: int) -> Case:
    """A valid event's bytes flipped, inserted, deleted, cut or duplicated."""
    ev = random_valid_event(rng)
    key = key_of(ev)
    value = bytearray(dump(ev, ascii_only=rng.random() < 0.5).encode())
    ops = []
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        op = rng.randrange(6)
        if not value:
            value.extend(b"{")
        pos = rng.randrange(len(value))
        if op == 0:
            bit = 1 << rng.randrange(8)
            value[pos] ^= bit
            ops.append(f"flip {pos}^{bit}")
        elif op == 1:
            byte = rng.choice([0, 0x0A, 0x22, 0x5C, 0x7B, 0x7D, 0x80, 0xC3, 0xED, 0xFF, rng.randrange(256)])
            value.insert(pos, byte)
            ops.append(f"insert {pos}:{byte:#x}")
        elif op == 2:
            del value[pos]
            ops.append(f"delete {pos}")
        elif op == 3:
            del value[pos:]
            ops.append(f"cut {pos}")
            if not value:
                value.extend(b"{")
        elif op == 4:
            # Duplicate an attribute with another value: the last one wins.
            tail = rng.choice(
                [
                    b', "id": "dup"',
                    b', "data": {"card_id": "x", "code": "y"}',
                    b', "type": "invoice.red_flushed"',
                    b', "specversion": "0.3"',
                    b', "id": "dup\\n"',
                ]
            )
            end = value.rfind(b"}")
            value[end:end] = tail
            ops.append(f"dup {tail!r}")
        else:
            value.extend(rng.choice([b"\n", b" ", b"x", b"\x00", b"}", b"{}"]))
            ops.append("trail")
    return Case(f"mutation {'; '.join(ops)} #{i}", consumer_record(key, bytes(value), structured_headers(rng)))


def _surrogate_name(rng: random.Random) -> str:
    """A header name that is not UTF-8 on the wire, as aiokafka delivers it."""
    raw = rng.choice(
        [
            b"\xff\xfe",
            b"ce_id\xff",
            b"\xed\xa0\x80",
            b"content-type\xc0",
            b"\xc3",
            bytes(rng.randrange(128, 256) for _ in range(3)),
        ]
    )
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")
    return (raw + b"\xff").decode("utf-8", "surrogateescape")  # the random bytes happened to be UTF-8


_HEADER_NAMES = [
    "content-type",
    "Content-Type",
    "ce_specversion",
    "CE_SPECVERSION",
    "ce_id",
    "ce_type",
    "ce_source",
    "ce_time",
    "ce_subject",
    "ce_partitionkey",
    "ce_datacontenttype",
    "x",
    "",
    "é",
    "😀",
    "a" * 5000,
    "ce_",
    "\x00",
    "ce_id\n",
]
_HEADER_VALUES: list[bytes | None] = [
    None,
    b"",
    b"1.0",
    b"application/cloudevents+json",
    b"application/cloudevents-batch+json",
    b"application/xml",
    b"text/plain",
    b"application/json",
    b"\xff",
    b"\x00",
    b"x" * 100000,
    b"application/cloudevents+json\n",
    b"APPLICATION/CLOUDEVENTS+JSON",
]


def header_case(rng: random.Random, i: int) -> Case:
    """A valid value (structured or binary) under hostile headers."""
    ev = random_valid_event(rng)
    key = key_of(ev)
    binary = rng.random() < 0.4
    if binary:
        value, headers = binary_form(ev)
    else:
        value, headers = dump(ev).encode(), structured_headers(rng)
    headers = list(headers)
    surrogate = False
    for _ in range(rng.randrange(1, 6)):
        if rng.random() < 0.15:
            name = _surrogate_name(rng)
            surrogate = True
        else:
            name = rng.choice(_HEADER_NAMES)
        headers.insert(rng.randrange(len(headers) + 1), (name, rng.choice(_HEADER_VALUES)))
    return Case(
        f"headers {'binary' if binary else 'structured'} "
        f"{[(n.encode('utf-8', 'backslashreplace')[:20], v[:20] if v else v) for n, v in headers]!r} #{i}",
        consumer_record(key, value, headers),
        surrogate,
        "bad_header" if surrogate else None,
    )


def key_case(rng: random.Random, i: int) -> Case:
    """A valid event under a wrong key."""
    ev = random_valid_event(rng)
    good = key_of(ev)
    bad = rng.choice(
        [
            None,
            b"",
            good + b"\n",
            good.upper(),
            good[:-1],
            b"\xff" + good,
            good.replace(b"/", b"\\"),
            good + b"\x00",
            b"x" * 100000,
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))),
        ]
    )
    refused = bad != good
    return Case(
        f"key {bad[:40] if bad else bad!r} #{i}",
        consumer_record(bad, dump(ev).encode(), structured_headers(rng)),
        refused,
        "key_mismatch" if refused else None,
    )


def binary_blob_case(rng: random.Random, i: int) -> Case:
    """Random bytes, or bytes that start like JSON."""
    n = rng.choice([0, 1, 2, 8, 64, 512, 4096])
    blob = bytes(rng.randrange(256) for _ in range(n))
    prefix = rng.choice([b"", b"{", b'{"specversion": "1.0", ', b"[", b'"', b"\xef\xbb\xbf{"])
    value = prefix + blob
    headers = structured_headers(rng) if rng.random() < 0.7 else binary_form(random_valid_event(rng))[1]
    return Case(f"blob {value[:40]!r}...({len(value)} bytes) #{i}", consumer_record(b"k/1", value, headers), True)


def deep_case(rng: random.Random, i: int) -> Case:
    """Nesting 5,000+ deep: the whole value, the data, an attribute, or an extension."""
    ev = random_valid_event(rng)
    key = key_of(ev)
    where = rng.randrange(5)
    depth = rng.choice([DEEP, DEEP * 2, DEEP * 4])
    nest = deep(rng, depth)
    if where == 0:
        return Case(f"deep root {depth} #{i}", consumer_record(key, str(nest).encode(), structured_headers(rng)), True)
    if where == 1:
        ev["data"] = nest
        return Case(f"deep data {depth} #{i}", consumer_record(key, dump(ev).encode(), structured_headers(rng)), True)
    if where == 2:
        ev["extension_deep"] = nest
        # An unknown attribute is ignored by the spec, but a reader must still
        # parse it; either way the decoder must answer.
        return Case(f"deep extension {depth} #{i}", consumer_record(key, dump(ev).encode(), structured_headers(rng)))
    if where == 3:
        ev["data"]["extra"] = nest
        return Case(f"deep data.extra {depth} #{i}", consumer_record(key, dump(ev).encode(), structured_headers(rng)))
    _, headers = binary_form(ev)
    return Case(f"deep binary data {depth} #{i}", consumer_record(key, str(nest).encode(), headers), True)


def oversized_case(rng: random.Random, i: int) -> Case:
    """Over ``INVOICE_SM_MAX_EVENT_BYTES``: padding, a long attribute, or huge headers with it."""
    ev = random_valid_event(rng)
    ev["pad"] = "x" * rng.choice([65536, 70000, 200000])
    headers = structured_headers(rng)
    if rng.random() < 0.3:
        headers = headers + [(f"h{n}", b"v" * 4000) for n in range(rng.randrange(1, 40))]
    return Case(f"oversized {len(ev['pad'])} #{i}", consumer_record(key_of(ev), dump(ev).encode(), headers), True, "oversized")


def unreadable_case(rng: random.Random, i: int) -> Case:
    ev = random_valid_event(rng)
    key = rng.choice([None, key_of(ev), b"\xff\xfe"])
    value = rng.choice([None, b"", dump(ev).encode(), b"\x00" * 3000])
    problem = rng.choice(["record at offset 7 cannot be parsed: varint runs past the record", "", "\udcff", "x" * 5000])
    return Case(f"unreadable problem={problem[:30]!r} #{i}", unreadable_record(problem, key, value), True, "unreadable_record")


def null_case(rng: random.Random, i: int) -> Case:
    ev = random_valid_event(rng)
    value = rng.choice([None, b"", b"null", b"{}", b"[]", b"0", b" ", b"\n", b"\x00"])
    return Case(
        f"null-ish value {value!r} #{i}",
        consumer_record(key_of(ev), value, structured_headers(rng)),
        True,
        "empty_value" if not value else None,
    )


#: (generator, weight) of the seeded mix: the weights put volume where the
#: decoder has branches (fields, mutations, headers).
GENERATORS: list[tuple[Callable[[random.Random, int], Case], int]] = [
    (valid_case, 10),
    (field_case, 30),
    (binary_field_case, 12),
    (mutation_case, 25),
    (header_case, 10),
    (key_case, 5),
    (binary_blob_case, 4),
    (deep_case, 1),
    (oversized_case, 1),
    (unreadable_case, 1),
    (null_case, 1),
]


def cases(seed: int, count: int) -> Iterator[Case]:
    """``count`` cases drawn from ``GENERATORS`` with a seeded ``random.Random``."""
    rng = random.Random(seed)
    generators = [g for g, _ in GENERATORS]
    weights = [w for _, w in GENERATORS]
    for i in range(count):
        (generator,) = rng.choices(generators, weights)
        yield generator(rng, i)


# ----------------------------------------------------------------- fixed cases


def valid_event(n: int) -> dict[str, Any]:
    """The valid structured event number ``n`` (id ``h-{n}``): the base that fixed cases mutate."""
    card_id, code = card(n)
    return {
        "specversion": "1.0",
        "id": f"h-{n}",
        "source": "/erp/reimbursement",
        "type": TYPE_FOR_STATUS[ReimburseStatus.LOCK],
        "time": "2026-11-23T10:00:00Z",
        "subject": f"{card_id}/{code}",
        "data": {"card_id": card_id, "code": code, "appid": APPID},
    }


def nested_json(depth: int) -> bytes:
    """An event-looking object whose one attribute is nested ``depth`` arrays deep."""
    return b'{"specversion": "1.0", "x": ' + b"[" * depth + b"]" * depth + b"}"
