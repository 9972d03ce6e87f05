from __future__ import annotations

import pytest

from adapters.settings import load_settings
from consumers.cli import main
from domain.errors import ConfigurationError


def test_a_bad_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOICE_SM_KAFKA_SECURITY_PROTOCOL", "CARRIER_PIGEON")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert info.value.setting == "INVOICE_SM_KAFKA_SECURITY_PROTOCOL"


def test_a_bad_bootstrap_address_is_named() -> None:
    with pytest.raises(ConfigurationError, match="INVOICE_SM_KAFKA_BOOTSTRAP_SERVERS"):
        load_settings(kafka_bootstrap_servers="localhost")


def test_sasl_without_credentials_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="INVOICE_SM_KAFKA_SASL_MECHANISM"):
        load_settings(kafka_security_protocol="SASL_SSL")


def test_wechat_credentials_are_required_by_the_token_mode() -> None:
    settings = load_settings(wechat_token_mode="component")
    with pytest.raises(ConfigurationError, match="INVOICE_SM_WECHAT_COMPONENT_APPID"):
        settings.require_wechat()


def test_the_secret_never_shows_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOICE_SM_WECHAT_SECRET", "s3cr3t-value")
    monkeypatch.setenv("INVOICE_SM_METRICS_PORT", "s3cr3t-value")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert "s3cr3t-value" not in str(info.value)
    monkeypatch.delenv("INVOICE_SM_METRICS_PORT")
    settings = load_settings()
    assert "s3cr3t-value" not in repr(settings) and "s3cr3t-value" not in str(settings.wechat_secret)


def test_the_command_line_stops_with_exit_2_naming_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["process", "--topic-partitions", "zero"]) == 2
    assert "INVOICE_SM_TOPIC_PARTITIONS" in capsys.readouterr().err


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOICE_SM_TOPIC_EVENTS", "from.env")
    assert load_settings(topic_events="from.flag").topic_events == "from.flag"
    assert load_settings().topic_events == "from.env"


def test_an_unknown_codec_is_named() -> None:
    with pytest.raises(ConfigurationError, match="INVOICE_SM_KAFKA_COMPRESSION_TYPE"):
        load_settings(kafka_compression_type="brotli")
