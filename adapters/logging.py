"""Structured logging: one configuration for structlog and the standard library.

``configure_logging`` is called once at start by every command. After it:

- structlog loggers (``get_logger``) and standard-library loggers (aiokafka,
  httpx, aiohttp, asyncio) render through the *same* processor chain and the
  same renderer, to one stream (stderr by default), one line per entry;
- the chain merges ``structlog.contextvars`` (so context bound with
  ``structlog.contextvars.bound_contextvars(invoice=key)`` appears on every
  line logged inside the block, the libraries' lines included; context
  variables follow asyncio tasks, so concurrent work on different invoices
  does not mix keys), adds ``level`` and an ISO-8601 UTC ``timestamp``, renders stack
  and exception information to text, and then **redacts secrets**;
- JSON (one object per line) is used for ``fmt="json"``, or for ``"auto"``
  when the stream is not a terminal; otherwise structlog's ``ConsoleRenderer``.

Exceptions are rendered to text *before* redaction, in both formats, because
an httpx error's message carries the request URL and with it the
``access_token`` query parameter; a renderer that formats tracebacks itself
(the console's rich tracebacks, which also print local variables) would do
so after redaction and could leak it.

Redaction happens twice, on purpose:

1. ``redact_secrets`` (a processor, exported for tests and for anyone building
   a chain) masks values under secret-like keys, ``SecretStr`` values,
   ``access_token=…``-style parameters and registered literal secrets inside
   every string of the event dict, the ``event`` message included;
2. the rendered line is scrubbed again for parameters and registered
   secrets, which catches secrets inside the ``repr`` of arbitrary objects
   (an ``httpx.Request`` passed as a value, say) that step 1 cannot see into.

Register every secret the process knows with ``register_secret`` (the
configured app secrets at start, every fetched access token) and it is
replaced by ``***`` wherever it would appear. Forget rotated tokens with
``forget_secret`` once they have expired, to keep the set (and the regex
built from it) small.

**Event names** are snake_case identifiers, ``<subject>_<what happened>``
in the past tense or as a state: ``processor_started``, ``delivery_final``,
``partition_stalled``, ``repair_enqueued``, ``wechat_token_refreshed``. No
spaces, dots or punctuation, and nothing variable in the name: values go in
key-value pairs. So a line is found by equality (``event ==
"delivery_final"`` in a log query, ``capture_logs`` in a test) rather than
by a text search that breaks when the wording is improved, the JSON key
needs no quoting in any query language, and a name reads the same in the
console and JSON renderers. (Lines of libraries, routed through the
standard library, keep their own messages.)

Structlog loggers are native (``make_filtering_bound_logger``), not routed
through ``logging``: a filtered-out debug call costs next to nothing and a
rendered one skips ``logging``'s record machinery. Loggers are not cached on
first use unless ``cache_loggers=True``: module-level loggers then pick up a
later reconfiguration, and ``structlog.testing.capture_logs`` works in tests.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Mapping
from typing import IO, Any, Final

import msgspec
import structlog
from pydantic import SecretBytes, SecretStr
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from adapters.settings import env_name
from domain.errors import ConfigurationError

__all__ = [
    "MASK",
    "configure_logging",
    "forget_secret",
    "get_logger",
    "redact_secrets",
    "register_secret",
]

MASK: Final = "***"

# Libraries that log every request or every fetch at INFO/DEBUG; below WARNING
# they would drown the service's own lines at thousands of events a second.
NOISY_LOGGERS: Final = ("aiokafka", "httpx", "httpcore")

_FORMATS: Final = ("auto", "json", "console")

# Key names (lower-cased, matched as substrings) whose values are secrets.
# ``token`` and ``secret`` also cover access_token, refresh_token,
# component_access_token, app_secret, component_appsecret, ...
_SECRET_KEY_PARTS: Final = ("secret", "token", "password", "authorization", "verify_ticket", "passwd")

# Cheap pre-check before running the parameter regex on a string: a
# lower-cased ``in`` test is much faster than a regex scan, and almost no
# log string contains any of these.
_PARAM_HINTS: Final = ("token", "secret", "ticket", "password", "authorization")

# ``name=value`` (query strings, key=value text), ``"name": "value"`` (JSON
# and dict reprs, possibly JSON-escaped inside a rendered line) and
# ``Authorization: Bearer value`` (headers), for any parameter name that
# contains token/secret/ticket/password. The value stops where a URL or a
# sentence would continue it.
_PARAM_RE: Final = re.compile(
    r"""(?ix)
    (?P<name>\b\w*(?:token|secret|ticket|password)\w*)
    (?:
        =
      | \\?["']:\s*\\?["']
    )
    (?P<value>[^\s&"'\\\#,;)}\]]+)
    |
    (?P<auth>\bauthorization\\?["']?:\s*\\?["']?(?:(?:bearer|basic)\s+)?)
    [^\s"'\\,;)}\]]+
    """
)


# Values that cannot be secrets: ``tokens_refreshed=3`` or
# ``token_valid=True`` as the console renderer writes them stay readable.
_NOT_SECRET_VALUE_RE: Final = re.compile(r"-?\d+(?:\.\d+)?|True|False|None|\*\*\*")


def _mask_param(match: re.Match[str]) -> str:
    if match.group("auth") is not None:
        return match.group("auth") + MASK
    value = match.group("value")
    if _NOT_SECRET_VALUE_RE.fullmatch(value):
        return match.group(0)
    offset = match.start()
    start, end = match.span("value")
    text = match.group(0)
    return text[: start - offset] + MASK + text[end - offset :]


# Literal secrets registered at run time, and one regex that matches any of
# them. Rebuilt on each registration (rare: start-up and token refreshes);
# ``None`` while the set is empty, so the common case costs one comparison.
_MIN_SECRET_LEN: Final = 4
_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None
_secrets_lock = threading.Lock()


def register_secret(value: str | SecretStr | None) -> None:
    """Replace ``value`` by ``***`` wherever it appears in any logged string from now on.

    Call it with every secret the process holds: configured app and component
    secrets at start, each access token when it is fetched. ``None``, empty
    and very short values (under 4 characters) are ignored: they are not
    real secrets, and masking them would garble every line.
    """
    global _secrets_re  # noqa: PLW0603  # one registry of secrets per process
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        _secrets_re = _build_secrets_re()


def forget_secret(value: str | SecretStr | None) -> None:
    """Stop masking ``value`` (a rotated token, once expired). Unknown values are ignored."""
    global _secrets_re  # noqa: PLW0603  # one registry of secrets per process
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not value:
        return
    with _secrets_lock:
        if value in _secrets:
            _secrets.discard(value)
            _secrets_re = _build_secrets_re()


def _build_secrets_re() -> re.Pattern[str] | None:
    if not _secrets:
        return None
    # Longest first, so a secret that contains another is masked whole.
    alternatives = sorted(_secrets, key=len, reverse=True)
    return re.compile("|".join(re.escape(s) for s in alternatives))


def _scrub(text: str) -> str:
    """Mask registered literal secrets and secret-named parameters in ``text``."""
    secrets_re = _secrets_re
    if secrets_re is not None:
        text = secrets_re.sub(MASK, text)
    lowered = text.lower()
    for hint in _PARAM_HINTS:
        if hint in lowered:
            return _PARAM_RE.sub(_mask_param, text)
    return text


# Per key name: is its value a secret, or is it one of the fields this chain
# adds itself (left alone)? Key names come from a small vocabulary, so the
# verdict is computed once per name; the cap only guards against callers
# that put unbounded data in key names.
_PLAIN, _SECRET, _SKIP = 0, 1, 2
_OWN_KEYS: Final = frozenset({"timestamp", "level", "logger", "log_level", "_record", "_from_structlog"})
_key_verdicts: dict[object, int] = {}
_MAX_KEY_VERDICTS: Final = 10_000


def _key_verdict(key: object) -> int:
    verdict = _key_verdicts.get(key)
    if verdict is None:
        if key in _OWN_KEYS:
            verdict = _SKIP
        elif isinstance(key, str) and any(part in key.lower() for part in _SECRET_KEY_PARTS):
            verdict = _SECRET
        else:
            verdict = _PLAIN
        if len(_key_verdicts) >= _MAX_KEY_VERDICTS:
            _key_verdicts.clear()
        _key_verdicts[key] = verdict
    return verdict


# Numbers, booleans and None cannot be secrets; keeping them keeps
# ``token_expires_in=7200`` or ``tokens_refreshed=3`` useful.
_NEVER_SECRET_TYPES: Final = (type(None), bool, int, float)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, SecretStr | SecretBytes):
        return MASK
    if isinstance(value, Mapping):
        return {k: _redact_item(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def _redact_item(key: object, value: Any) -> Any:
    if type(value) in _NEVER_SECRET_TYPES:
        return value
    verdict = _key_verdict(key)
    if verdict == _SECRET:
        return MASK
    if verdict == _SKIP:
        return value
    return _redact_value(value)


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Structlog processor that masks secrets anywhere in the event dict.

    - a value under a key whose name contains ``secret``, ``token``,
      ``password``, ``authorization`` or ``verify_ticket`` (any case; nested
      dicts too, e.g. request headers) becomes ``***``, unless it is a number,
      a boolean or ``None``;
    - a pydantic ``SecretStr``/``SecretBytes`` becomes ``***`` whatever its key;
    - inside every string (the ``event`` message, exception text, nested
      lists and dicts): ``access_token=…``, ``secret=…``,
      ``component_access_token=…`` and any other ``*token*``/``*secret*``/
      ``*ticket*``/``*password*`` parameter, ``"access_token": "…"`` in JSON
      text, ``Authorization: Bearer …``, and every string registered with
      ``register_secret``, are replaced by ``***``.

    The fields the chain adds itself (``timestamp``, ``level``, ``logger``)
    and ``ProcessorFormatter``'s ``_record`` are left alone.
    """
    for key, value in event_dict.items():
        event_dict[key] = _redact_item(key, value)
    return event_dict


class _ScrubRendered:
    """Wraps a renderer and scrubs its output line: the second redaction pass.

    ``redact_secrets`` cannot look inside objects that are only turned into
    text by the renderer (their ``repr``); this pass sees the final text.
    """

    def __init__(self, renderer: Callable[[WrappedLogger, str, EventDict], str]) -> None:
        self._renderer = renderer

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
        return _scrub(self._renderer(logger, method, event_dict))


_msgspec_encoder = msgspec.json.Encoder(enc_hook=repr)


def _serialize(obj: Any, **_kw: Any) -> str:
    """Fast JSON for ``JSONRenderer``; falls back to ``json.dumps`` for what msgspec refuses."""
    try:
        return _msgspec_encoder.encode(obj).decode()
    except (TypeError, ValueError, OverflowError):
        # e.g. dict keys of an unsupported type, or ints beyond 64 bits.
        return json.dumps(obj, default=repr, ensure_ascii=False)


def _is_tty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # closed or detached stream
        return False


class _NamedWriteLogger(structlog.WriteLogger):
    """A ``WriteLogger`` that knows the name ``get_logger`` was called with."""

    def __init__(self, file: IO[str], name: str | None) -> None:
        super().__init__(file)  # type: ignore[arg-type]
        self.name = name


class _NamedWriteLoggerFactory:
    """Logger factory: ``structlog.get_logger(name)`` passes ``name`` here."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._file, args[0] if args and isinstance(args[0], str) else None)


def _add_logger_name(logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Add ``logger``: the stdlib record's name, or the name given to ``get_logger``."""
    record = event_dict.get("_record")
    name = record.name if record is not None else getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


# The handler this module installed on the root logger, so a second
# configure_logging replaces it instead of doubling every stdlib line.
_installed_handler: logging.Handler | None = None


def configure_logging(
    fmt: str = "auto",
    level: str = "INFO",
    *,
    stream: IO[str] | None = None,
    cache_loggers: bool = False,
) -> None:
    """Configure structlog and standard-library logging for the whole process.

    Args:
        fmt: ``"json"``, ``"console"``, or ``"auto"`` (JSON unless ``stream``
            is a terminal).
        level: minimum level name (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``,
            ``CRITICAL``; any case) for the service's and the libraries' lines;
            aiokafka, httpx and httpcore are held at ``WARNING`` or above.
        stream: where lines go; ``sys.stderr`` (looked up at call time) if
            ``None``.
        cache_loggers: structlog's ``cache_logger_on_first_use``: faster, but
            a logger used before a later ``configure_logging`` keeps the old
            configuration, and ``capture_logs`` does not see it. Off by
            default; a long-running command may turn it on.

    Raises:
        ConfigurationError: ``fmt`` or ``level`` is not one of the above.

    Calling it again replaces the previous configuration.
    """
    global _installed_handler  # noqa: PLW0603  # one installed handler per process, replaced on reconfigure
    if fmt not in _FORMATS:
        raise ConfigurationError(env_name("log_format"), f"must be one of {', '.join(_FORMATS)}, not {fmt!r}")
    level_no = logging.getLevelNamesMapping().get(level.upper())
    if level_no is None or level.upper() == "NOTSET":
        raise ConfigurationError(env_name("log_level"), f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {level!r}")
    out: IO[str] = stream if stream is not None else sys.stderr
    tty = _is_tty(out)
    use_json = fmt == "json" or (fmt == "auto" and not tty)

    renderer: Callable[[WrappedLogger, str, EventDict], str]
    if use_json:  # noqa: SIM108  # two renderers with different types read better as branches
        renderer = structlog.processors.JSONRenderer(serializer=_serialize)  # type: ignore[assignment]  # _serialize returns str
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
    final = _ScrubRendered(renderer)

    common: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]

    structlog.configure(
        processors=[*common, final],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=_NamedWriteLoggerFactory(out),
        context_class=dict,
        cache_logger_on_first_use=cache_loggers,
    )

    # Standard-library records go through the same chain and renderer.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=common,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, final],
        )
    )
    from adapters.kafka_noise import RepeatedClientErrors, TransientStartupErrors

    handler.addFilter(TransientStartupErrors())
    handler.addFilter(RepeatedClientErrors())
    root = logging.getLogger()
    if _installed_handler is not None:
        root.removeHandler(_installed_handler)
    root.addHandler(handler)
    _installed_handler = handler
    root.setLevel(level_no)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(level_no, logging.WARNING))


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A structlog logger; ``name`` is logged as ``logger``.

    The service's loggers are named ``invoice_sm.<role>`` (``invoice_sm.processor``,
    ``invoice_sm.wechat``): one prefix to filter on, apart from the libraries' names.

    Safe to call at import time: the logger is a lazy proxy that takes the
    configuration in force when it is first used.
    """
    if name is None:
        return structlog.get_logger()  # type: ignore[no-any-return]
    return structlog.get_logger(name)  # type: ignore[no-any-return]
