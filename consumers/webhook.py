"""``invoice-sm webhook`` (also inside ``invoice-sm run``): WeChat's pushes in.

Thin: settings -> ``WebhookConfig`` (ciphers from the EncodingAESKey), a
Kafka publisher, the HTTP server; it runs until ``stop`` is set. What each
route does, and how it answers, is ``adapters.webhook_server``'s docstring.
"""

from __future__ import annotations

import asyncio

from adapters import topics
from adapters.logging import register_secret
from adapters.settings import Settings, env_name
from adapters.webhook_publisher import KafkaPushPublisher
from adapters.webhook_server import WebhookConfig, WebhookMetrics, WebhookServer
from adapters.wechat_crypto import PushCipher

__all__ = ["build_config", "run_webhook"]


def build_config(settings: Settings) -> WebhookConfig:
    """The webhook's checks from the settings (``require_webhook`` first: a missing one is named)."""
    settings.require_webhook()
    assert settings.wechat_push_token is not None  # checked by require_webhook
    token = settings.wechat_push_token.get_secret_value()
    register_secret(token)
    events_cipher = component_cipher = None
    if settings.wechat_encoding_aes_key is not None:
        key = settings.wechat_encoding_aes_key.get_secret_value()
        register_secret(key)
        if settings.wechat_token_mode == "component" and settings.wechat_component_appid:  # noqa: S105 - a mode name
            # A platform receives its authorizers' pushes encrypted for the component appid.
            events_cipher = component_cipher = PushCipher(key, settings.wechat_component_appid)
        elif settings.wechat_appid:
            events_cipher = PushCipher(key, settings.wechat_appid)
        if settings.wechat_component_appid and component_cipher is None:
            component_cipher = PushCipher(key, settings.wechat_component_appid)
        if events_cipher is None and component_cipher is None:
            from domain.errors import ConfigurationError

            raise ConfigurationError(
                env_name("wechat_appid"),
                f"required with {env_name('wechat_encoding_aes_key')} (the appid pushes are encrypted for)",
            )
    return WebhookConfig(
        token=token,
        events_cipher=events_cipher,
        component_cipher=component_cipher,
        max_body_bytes=settings.webhook_max_body_bytes,
        publish_timeout_s=settings.webhook_publish_timeout_s,
    )


async def run_webhook(
    settings: Settings, stop: asyncio.Event, *, metrics: object | None = None, started: asyncio.Event | None = None
) -> None:
    """Serve until ``stop``; ``metrics`` is the process's ``Metrics`` (its registry gets the webhook's series)."""
    config = build_config(settings)
    await topics.ensure_topics(settings, [topics.spec_of(settings, "events"), topics.spec_of(settings, "component")])
    publisher = KafkaPushPublisher(settings)
    await publisher.start()
    registry = getattr(metrics, "registry", None)
    server = WebhookServer(
        config,
        publisher.publish,
        metrics=WebhookMetrics(registry),
        host=settings.webhook_host,
        port=settings.webhook_port or 0,
    )
    try:
        await server.start()
        if started is not None:
            started.set()
        await stop.wait()
    finally:
        await server.stop()
        await publisher.stop()
