"""Tests for adapters.logging: rendering, context, stdlib routing and secret redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from pydantic import SecretStr
from structlog.testing import capture_logs

from adapters.logging import (
    MASK,
    NOISY_LOGGERS,
    configure_logging,
    forget_secret,
    get_logger,
    redact_secrets,
    register_secret,
)
from domain.errors import ConfigurationError

# configure_logging changes process-wide state: tests/conftest.py's
# restore_logging puts it back after each test here.
pytestmark = pytest.mark.usefixtures("restore_logging")


@pytest.fixture
def secret() -> Iterator[str]:
    value = "s3cr3t-VALUE-9f8e7d"
    register_secret(value)
    yield value
    forget_secret(value)


def configured(fmt: str, level: str = "INFO") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(fmt, level, stream=stream)
    return stream


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def redact(**event_dict: Any) -> MutableMapping[str, Any]:
    return redact_secrets(None, "info", event_dict)


# --- rendering ---------------------------------------------------------------


def test_json_format_renders_one_object_per_line_with_level_timestamp_event_and_context() -> None:
    stream = configured("json")
    log = get_logger("invoice_sm.test")
    with structlog.contextvars.bound_contextvars(partition=3):
        log.info("batch_committed", records=12)
        log.warning("batch_slow", seconds=1.5)

    first, second = json_lines(stream)
    assert first["event"] == "batch_committed"
    assert first["level"] == "info"
    assert first["records"] == 12
    assert first["partition"] == 3
    assert first["logger"] == "invoice_sm.test"
    assert first["timestamp"].endswith("Z")
    assert second["level"] == "warning"


def test_bound_context_adds_the_invoice_key_only_inside_the_block() -> None:
    stream = configured("json")
    log = get_logger()
    with structlog.contextvars.bound_contextvars(invoice="pjZ8/186921658591"):
        log.info("inside")
    log.info("outside")

    inside, outside = json_lines(stream)
    assert inside["invoice"] == "pjZ8/186921658591"
    assert "invoice" not in outside


def test_level_filters_structlog_and_stdlib_lines() -> None:
    stream = configured("json", level="WARNING")
    get_logger().info("hidden")
    logging.getLogger("invoice_sm.other").info("hidden too")
    get_logger().error("shown")

    assert [line["event"] for line in json_lines(stream)] == ["shown"]


def test_exceptions_are_rendered_into_the_json_line() -> None:
    stream = configured("json")
    try:
        raise ValueError("broken")
    except ValueError:
        get_logger().exception("failed")

    (line,) = json_lines(stream)
    assert line["level"] == "error"
    assert "ValueError: broken" in line["exception"]


def test_console_format_renders_a_readable_line_without_colours_on_a_non_tty() -> None:
    stream = configured("console")
    with structlog.contextvars.bound_contextvars(invoice="c/1"):
        get_logger("svc").info("started", port=8080)

    out = stream.getvalue()
    assert out.count("\n") == 1
    assert "started" in out and "port=8080" in out and "invoice=c/1" in out and "[svc]" in out
    assert "\x1b[" not in out


def test_auto_format_is_json_when_the_stream_is_not_a_tty() -> None:
    stream = configured("auto")
    get_logger().info("hello")

    assert json_lines(stream)[0]["event"] == "hello"


def test_auto_format_is_console_when_the_stream_is_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    configure_logging("auto", stream=stream)
    get_logger().info("hello")

    assert not stream.getvalue().startswith("{")


def test_a_second_configuration_replaces_the_first_instead_of_doubling_lines() -> None:
    first = configured("json")
    second = configured("json")
    logging.getLogger("invoice_sm.other").warning("once")

    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


@pytest.mark.parametrize(("fmt", "level"), [("xml", "INFO"), ("json", "LOUD"), ("json", "notset")])
def test_a_wrong_format_or_level_is_a_configuration_error_naming_the_setting(fmt: str, level: str) -> None:
    with pytest.raises(ConfigurationError, match="INVOICE_SM_LOG_"):
        configure_logging(fmt, level, stream=io.StringIO())


# --- standard-library logging ------------------------------------------------


def test_stdlib_lines_go_through_the_same_renderer_with_context_and_logger_name() -> None:
    stream = configured("json")
    with structlog.contextvars.bound_contextvars(invoice="c/2"):
        logging.getLogger("aiokafka.consumer").error("coordinator %s dead", "node-1")

    (line,) = json_lines(stream)
    assert line == {
        "event": "coordinator node-1 dead",
        "invoice": "c/2",
        "logger": "aiokafka.consumer",
        "level": "error",
        "timestamp": line["timestamp"],
    }


def test_noisy_libraries_are_held_at_warning_even_at_debug_level() -> None:
    stream = configured("json", level="DEBUG")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).info("request sent")
    logging.getLogger("invoice_sm.own").debug("own debug line")

    assert [line["logger"] for line in json_lines(stream)] == ["invoice_sm.own"]


def test_httpx_request_line_comes_out_with_the_access_token_masked() -> None:
    stream = configured("json")
    logging.getLogger("httpx").warning(
        'HTTP Request: POST https://api.weixin.qq.com/card/invoice/platform/updatestatus?access_token=ABC123 "HTTP/1.1 200 OK"'
    )

    out = stream.getvalue()
    assert "ABC123" not in out
    assert "updatestatus?access_token=***" in json_lines(stream)[0]["event"]


def test_stdlib_exception_text_is_redacted() -> None:
    stream = configured("console")
    try:
        raise RuntimeError("GET https://x/cgi-bin/token?grant_type=client_credential&appid=wx1&secret=APPSECRET1")
    except RuntimeError:
        logging.getLogger("httpx").exception("request failed")

    out = stream.getvalue()
    assert "APPSECRET1" not in out
    assert "secret=***" in out and "appid=wx1" in out


# --- redaction ---------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "secret",
        "app_secret",
        "access_token",
        "Refresh_Token",
        "password",
        "Authorization",
        "component_verify_ticket",
        "authorizer_refresh_token",
        "kafka_sasl_password",
    ],
)
def test_values_under_secret_named_keys_are_masked(key: str) -> None:
    assert redact(event="x", **{key: "value-1"})[key] == MASK


def test_secret_named_keys_are_masked_in_nested_dicts() -> None:
    out = redact(event="call", headers={"Authorization": "Bearer abc", "Idempotency-Key": "c/1#3"})

    assert out["headers"] == {"Authorization": MASK, "Idempotency-Key": "c/1#3"}


def test_numbers_and_booleans_under_token_keys_are_kept() -> None:
    out = redact(event="token.refreshed", token_expires_in=7200, token_valid=True, appid="wx1")

    assert out == {"event": "token.refreshed", "token_expires_in": 7200, "token_valid": True, "appid": "wx1"}


def test_secretstr_values_stay_masked_whatever_their_key() -> None:
    out = redact(event="settings", wechat_creds=SecretStr("hunter2-hunter2"), items=[SecretStr("x")])

    assert out["wechat_creds"] == MASK
    assert out["items"] == [MASK]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("POST /x?access_token=ABC&appid=wx1", "POST /x?access_token=***&appid=wx1"),
        (
            "GET /cgi-bin/token?grant_type=client_credential&appid=wx1&secret=S1",
            "GET /cgi-bin/token?grant_type=client_credential&appid=wx1&secret=***",
        ),
        (
            "POST /cgi-bin/component/api_authorizer_token?component_access_token=C-T0K",
            "POST /cgi-bin/component/api_authorizer_token?component_access_token=***",
        ),
        ('body {"access_token": "TKN", "expires_in": 7200}', 'body {"access_token": "***", "expires_in": 7200}'),
        ("headers {'Authorization': 'Bearer abc.def'}", "headers {'Authorization': 'Bearer ***'}"),
        ("nothing to see card_id=pj code=1", "nothing to see card_id=pj code=1"),
    ],
)
def test_secret_parameters_inside_strings_are_masked(text: str, expected: str) -> None:
    assert redact(event=text, detail=[text])["event"] == expected
    assert redact(event="x", detail=[text])["detail"] == [expected]


def test_registered_literal_secrets_are_masked_in_any_string(secret: str) -> None:
    out = redact(event=f"got {secret}!", note={"deep": [f"prefix{secret}suffix"]})

    assert out["event"] == "got ***!"
    assert out["note"] == {"deep": ["prefix***suffix"]}


def test_registered_secrets_are_masked_in_the_rendered_repr_of_any_object(secret: str) -> None:
    class Opaque:
        def __repr__(self) -> str:
            return f"<Opaque token {secret} url=https://x/y?access_token=ABC999>"

    stream = configured("json")
    get_logger().info("opaque", thing=Opaque())

    out = stream.getvalue()
    assert secret not in out and "ABC999" not in out


def test_registered_secrets_are_masked_in_stdlib_lines(secret: str) -> None:
    stream = configured("console")
    logging.getLogger("aiohttp.client").warning("sent %s", secret)

    assert secret not in stream.getvalue()


def test_a_forgotten_secret_is_no_longer_masked() -> None:
    register_secret("rotated-token-1234")
    forget_secret("rotated-token-1234")

    assert redact(event="rotated-token-1234")["event"] == "rotated-token-1234"


def test_register_secret_accepts_secretstr_and_ignores_empty_and_tiny_values() -> None:
    register_secret(SecretStr("from-settings-5678"))
    register_secret("")
    register_secret(None)
    register_secret("ab")
    try:
        assert redact(event="a from-settings-5678 b ab")["event"] == "a *** b ab"
    finally:
        forget_secret("from-settings-5678")


def test_a_secret_containing_another_is_masked_whole() -> None:
    register_secret("abcd")
    register_secret("abcdefgh")
    try:
        assert redact(event="x abcdefgh y")["event"] == "x *** y"
    finally:
        forget_secret("abcd")
        forget_secret("abcdefgh")


def test_capture_logs_sees_module_level_loggers_after_configuration() -> None:
    module_level = get_logger("invoice_sm.module")
    configured("json")
    with capture_logs() as logs:
        module_level.info("captured", x=1)

    assert logs == [{"event": "captured", "x": 1, "log_level": "info"}]


def test_redaction_is_in_the_configured_chain() -> None:
    stream = configured("json")
    get_logger().info("token_fetched", access_token="T0KEN-VALUE", appid="wx1", expires_in=7200)

    (line,) = json_lines(stream)
    assert line["access_token"] == MASK
    assert line["appid"] == "wx1" and line["expires_in"] == 7200
    assert "T0KEN-VALUE" not in stream.getvalue()
