"""Configuration: ``INVOICE_SM_*`` environment variables and matching flags.

One ``Settings`` object is built at start (``load_settings``); a wrong or
missing setting raises ``ConfigurationError`` naming the variable, so the
command stops before touching Kafka or WeChat. Secrets are ``SecretStr``:
their ``repr`` and ``str`` are masked, so they cannot leak through logs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.errors import ConfigurationError

ENV_PREFIX = "INVOICE_SM_"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
CompressionType = Literal["none", "gzip", "snappy", "lz4", "zstd"]
TokenMode = Literal["stable", "classic", "component", "external"]


class Settings(BaseSettings):
    """Every setting of every command. Field ``x_y`` is ``INVOICE_SM_X_Y`` and ``--x-y``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Kafka connection
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers, comma separated")
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_client_id: str = "invoice-sm"
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1000, description="how soon a dead instance's partitions move")
    kafka_compression_type: CompressionType = Field(
        default="none", description="codec of the record batches this service writes (every codec is read)"
    )
    kafka_transaction_timeout_ms: int = Field(
        default=60_000,
        ge=1000,
        description="the broker aborts a transaction open longer than this (the processor then re-initialises)",
    )

    # Topics
    topic_events: str = "invoice.events"
    topic_outcomes: str = "invoice.outcomes"
    topic_state: str = "invoice.state"
    topic_deliveries: str = "invoice.deliveries"
    topic_delivery_waiting: str = "invoice.deliveries.waiting"
    topic_dlq: str = "invoice.events.dlq"
    topic_component: str = Field(
        default="invoice.wechat.component",
        description="compacted: component verify tickets and authorization events (webhook -> deliverers)",
    )
    topic_partitions: int = Field(default=6, ge=1, description="partitions when topics are created")
    topic_replication_factor: int = Field(default=1, ge=1)
    topic_min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        description="min.insync.replicas of created topics (default: 2 when the replication factor is 3 or more, else 1)",
    )
    topic_outcomes_retention_ms: int = Field(
        default=30 * 86_400_000, ge=-1, description="retention.ms of the outcomes topic (-1: never expires)"
    )
    topic_deliveries_retention_ms: int = Field(
        default=30 * 86_400_000,
        ge=-1,
        description="retention.ms of the deliveries topic: long enough for reconciliation (-1: never expires)",
    )
    topic_dlq_retention_ms: int = Field(default=30 * 86_400_000, ge=-1, description="retention.ms of the DLQ (-1: never expires)")
    allow_finite_event_retention: bool = Field(
        default=False, description="start even when the events topic (the source of truth) has a finite retention"
    )
    create_topics: bool = True

    # Processor
    processor_group_id: str = "invoice-sm-processor"
    max_event_bytes: int = Field(default=65536, ge=256, description="larger events go to the DLQ")
    batch_max_records: int = Field(default=5000, ge=1)
    batch_timeout_ms: int = Field(default=100, ge=0)
    validate_produced: Literal["all", "sample", "off"] = Field(
        default="sample",
        description="re-check produced records against their schema: every one, a sample (the processor's first "
        "record of each batch, one delivery record in 256), or none",
    )
    native_step: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="decide the common valid event in the native step (native/, built by ./dev): auto uses it when "
        "installed, on refuses to start without it, off decides every event on the Python path",
    )
    state_dir: Path = Path("state")
    state_cache_size: int = Field(
        default=200_000, ge=0, description="invoice states kept in memory per process (shared by its partitions)"
    )

    # Deliverer
    deliverer_group_id: str = "invoice-sm-deliverer"
    delivery_concurrency: int = Field(default=64, ge=1, description="invoices delivered concurrently")
    delivery_rate_limit: float = Field(default=500.0, gt=0, description="updatestatus calls per second per appid")
    delivery_max_backoff_s: float = Field(default=30.0, gt=0)
    quota_reset_hour: int = Field(default=0, ge=0, le=23, description="hour (Asia/Shanghai) when a 45009 daily quota resets")
    quota_park_s: float | None = Field(default=None, gt=0, description="park on 45009 for this long instead of until reset")
    minute_quota_wait_s: float | None = Field(
        default=None, gt=0, description="wait on 45011 for this long instead of until the next minute"
    )
    credential_park_s: float = Field(
        default=60.0, gt=0, description="retry an account whose credentials WeChat refused after this long"
    )
    delivery_commit_interval_ms: int = Field(default=200, ge=10, description="how often finished deliveries are committed")
    delivery_max_pending: int = Field(default=20_000, ge=10, description="outcomes held per partition before fetching pauses")
    delivery_park_after_s: float = Field(
        default=5.0,
        gt=0,
        description="a retry backoff longer than this moves the delivery to the waiting room, off the commit path",
    )
    delivery_no_credentials_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="deliveries for an appid without credentials end failed/no_credentials after waiting this long",
    )
    delivery_max_waiting: int = Field(
        default=200_000, ge=10, description="waiting deliveries held per partition before fetching pauses (memory bound)"
    )
    delivery_takeover_wait_s: float | None = Field(
        default=None,
        ge=0,
        description="after an unclean takeover, no call for this long (default: INVOICE_SM_WECHAT_TIMEOUT_S x 2 + 1, "
        "the longest a call of the previous owner can still be in flight)",
    )

    # WeChat
    wechat_base_url: str = "https://api.weixin.qq.com"
    wechat_appid: str | None = None
    wechat_secret: SecretStr | None = None
    wechat_token_mode: TokenMode = "stable"  # noqa: S105 - a mode name, not a secret
    wechat_component_appid: str | None = None
    wechat_component_secret: SecretStr | None = None
    wechat_component_verify_ticket: SecretStr | None = None
    wechat_authorizer_refresh_tokens: dict[str, SecretStr] = Field(
        default_factory=dict, description='JSON {"authorizer_appid": "refresh_token"} (component mode)'
    )
    wechat_token_url: str | None = None
    wechat_token_command: str | None = None
    wechat_timeout_s: float = Field(default=5.0, gt=0)
    wechat_token_refresh_margin_s: float = Field(default=300.0, ge=0)

    # Webhook (WeChat's pushes in)
    webhook_host: str = "127.0.0.1"
    webhook_port: int | None = Field(
        default=None, ge=0, le=65535, description="WeChat push endpoint; `run` starts the webhook only when it is set"
    )
    wechat_push_token: SecretStr | None = Field(default=None, description="the Token of WeChat's message-push configuration")
    wechat_encoding_aes_key: SecretStr | None = Field(
        default=None, description="the 43-character EncodingAESKey (compatible and safe mode)"
    )
    webhook_max_body_bytes: int = Field(default=65536, ge=1024, description="larger push bodies are refused unread (413)")
    webhook_publish_timeout_s: float = Field(
        default=3.0, gt=0, lt=5, description="a push not published within this is answered 503 (WeChat retries; it waits 5 s)"
    )

    @field_validator("wechat_encoding_aes_key")
    @classmethod
    def _aes_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from adapters.wechat_crypto import decode_aes_key

            decode_aes_key(value.get_secret_value())  # ValueError names the problem, never the key
        return value

    # Operations
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="Prometheus /metrics, /healthz, /readyz")
    metrics_host: str = "127.0.0.1"
    advertised_url: str | None = Field(
        default=None,
        description="URL other instances and `invoice-sm status` reach this instance's service port at (default http://METRICS_HOST:METRICS_PORT)",
    )
    status_scan_records: int = Field(
        default=1_000_000, ge=100, description="most records `status` reads back per topic partition to find an invoice's history"
    )
    metrics_max_appids: int = Field(
        default=50, ge=1, description="per-appid metric series kept; further appids are counted as _other"
    )
    log_format: Literal["json", "console", "auto"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("wechat_base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("advertised_url")
    @classmethod
    def _advertised(cls, value: str | None) -> str | None:
        return None if value is None else cls._url(value)

    @field_validator("topic_outcomes_retention_ms", "topic_deliveries_retention_ms", "topic_dlq_retention_ms")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (never expires) or a positive number of milliseconds")
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server.strip()!r} is not host:port")
        return value

    # Cross-field checks that only some commands need.
    def require_wechat(self) -> None:
        """Stop the start of a command that calls WeChat when its credentials are missing."""
        mode = self.wechat_token_mode
        if mode in ("stable", "classic"):
            _require(self, "wechat_appid", "wechat_secret", why=f"token mode {mode!r}")
        elif mode == "component":
            _require(
                self,
                "wechat_component_appid",
                "wechat_component_secret",
                "wechat_component_verify_ticket",
                why="token mode 'component'",
            )
            if not self.wechat_authorizer_refresh_tokens:
                raise ConfigurationError(env_name("wechat_authorizer_refresh_tokens"), "required by token mode 'component'")
        elif not (self.wechat_token_url or self.wechat_token_command):
            raise ConfigurationError(
                f"{env_name('wechat_token_url')} or {env_name('wechat_token_command')}",
                "one is required by token mode 'external'",
            )

    def require_webhook(self) -> None:
        """Stop the start of the webhook when it cannot verify pushes."""
        _require(self, "webhook_port", "wechat_push_token", why="the webhook")
        if self.wechat_token_mode == "component":  # noqa: S105 - a mode name, not a secret
            # The appid a platform's pushes are encrypted for.
            _require(self, "wechat_component_appid", why="the webhook in token mode 'component'")

    def require_sasl(self) -> None:
        if self.kafka_security_protocol.startswith("SASL"):
            _require(self, "kafka_sasl_mechanism", why=f"security protocol {self.kafka_security_protocol}")
            if self.kafka_sasl_mechanism != "OAUTHBEARER":
                _require(self, "kafka_sasl_username", "kafka_sasl_password", why=f"SASL {self.kafka_sasl_mechanism}")


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the ``INVOICE_SM_*`` variables that reproduce it in a child
    process (secrets revealed: the environment is where they belong)."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(exclude_none=True).items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, dict):
            value = json.dumps({k: v.get_secret_value() if isinstance(v, SecretStr) else v for k, v in value.items()})
        env[env_name(name)] = str(value)
    return env


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _require(settings: Settings, *fields: str, why: str) -> None:
    for field in fields:
        if getattr(settings, field) in (None, ""):
            raise ConfigurationError(env_name(field), f"required by {why}")


def load_settings(**overrides: Any) -> Settings:
    """Environment, then non-``None`` overrides (command-line flags) on top."""
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        # Never echo the input: it may be a secret.
        raise ConfigurationError(env_name(field), first["msg"]) from None
    settings.require_sasl()
    if settings.topic_min_insync_replicas is not None and settings.topic_min_insync_replicas > settings.topic_replication_factor:
        raise ConfigurationError(
            env_name("topic_min_insync_replicas"),
            f"{settings.topic_min_insync_replicas} is more than the replication factor "
            f"({settings.topic_replication_factor}): no write could ever be acknowledged",
        )
    return settings
