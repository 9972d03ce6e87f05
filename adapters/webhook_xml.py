"""WeChat push XML, read defensively and written plainly.

A push is a flat ``<xml>`` element whose children are the fields
(``<Event><![CDATA[update_invoice_status]]></Event>``). Whoever can reach
the webhook can send any bytes, so the parser (the standard library's
expat, driven directly) refuses, before a field is returned:

- a document type declaration of any kind (``<!DOCTYPE``): no DTD means no
  entity definitions, so no billion laughs (exponential internal entities)
  and no external entities (``SYSTEM "file:///etc/passwd"``), and expat is
  told not to read external DTDs or parameter entities anyway;
- any entity declaration or reference to an undefined entity (expat's
  handlers raise, as ``defusedxml`` does);
- more than ``MAX_FIELDS`` elements or nesting deeper than ``MAX_DEPTH``;
- bodies larger than the caller's limit (checked by the HTTP server before
  the body is read, see ``adapters.webhook_server``).

Nested elements (WeChat's ``<ScanCodeInfo>``-style groups) are kept as their
text-free children flattened into ``Parent.Child`` names; nothing we read
needs them, and nothing deeper than ``MAX_DEPTH`` is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.parsers import expat

from domain.errors import PushRefusedError

__all__ = ["MAX_DEPTH", "MAX_FIELDS", "build_xml", "parse_xml"]

MAX_FIELDS = 200
MAX_DEPTH = 4


class _Refuse(Exception):
    """Raised inside expat's callbacks; turned into ``PushRefusedError`` outside."""


def _refuse(what: str):  # type: ignore[no-untyped-def]
    def handler(*_args: object) -> None:
        raise _Refuse(what)

    return handler


def parse_xml(body: bytes) -> dict[str, str]:
    """The fields of a flat WeChat XML message; ``PushRefusedError`` if it is hostile or malformed.

    Reasons: ``hostile_xml`` (a DTD, an entity, too many elements or too
    deep) and ``malformed`` (not well-formed XML, or a root other than ``xml``).
    """
    parser = expat.ParserCreate(encoding=None)
    # Never fetch anything: no external DTD, no parameter entities.
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse("a document type declaration")
    parser.EntityDeclHandler = _refuse("an entity declaration")
    parser.UnparsedEntityDeclHandler = _refuse("an unparsed entity declaration")
    parser.ExternalEntityRefHandler = _refuse("an external entity reference")
    parser.NotationDeclHandler = _refuse("a notation declaration")
    # Undefined entities (``&x;`` without a DTD) reach here instead of failing quietly.
    parser.SkippedEntityHandler = _refuse("an entity reference")
    parser.DefaultHandler = None
    parser.buffer_text = True

    fields: dict[str, str] = {}
    path: list[str] = []
    text: list[str] = []
    count = 0
    root: list[str] = []

    def start(name: str, _attrs: Mapping[str, str]) -> None:
        nonlocal count
        count += 1
        if count > MAX_FIELDS:
            raise _Refuse(f"more than {MAX_FIELDS} elements")
        if len(path) >= MAX_DEPTH:
            raise _Refuse(f"nesting deeper than {MAX_DEPTH}")
        if not path:
            root.append(name)
        path.append(name)
        text.clear()

    def end(name: str) -> None:
        if len(path) >= 2:
            fields[".".join(path[1:])] = "".join(text).strip()
        path.pop()
        text.clear()

    def chars(data: str) -> None:
        text.append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(body, True)
    except _Refuse as exc:
        raise PushRefusedError("hostile_xml", f"the XML holds {exc}") from None
    except expat.ExpatError as exc:
        raise PushRefusedError("malformed", f"not well-formed XML ({expat.ErrorString(exc.code)})") from None
    if root != ["xml"]:
        raise PushRefusedError("malformed", "the root element is not <xml>")
    return fields


def _cdata(value: str) -> str:
    # "]]>" cannot appear inside one CDATA section: split it across two.
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def build_xml(fields: Mapping[str, str | int]) -> bytes:
    """A flat ``<xml>`` message as WeChat writes it: text in CDATA, numbers bare."""
    parts = ["<xml>"]
    for name, value in fields.items():
        body = str(value) if isinstance(value, int) else _cdata(value)
        parts.append(f"<{name}>{body}</{name}>")
    parts.append("</xml>")
    return "".join(parts).encode()
