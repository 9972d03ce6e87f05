"""The one table of topics: each topic's role, key, cleanup, retention,
partitions, replication and ``min.insync.replicas``.

Everything that creates or checks a topic reads :func:`topic_table`:
:func:`ensure_topics` (every command's start), ``invoice-sm topics
create|check|describe`` (``compose.yaml``'s ``kafka-init`` runs ``topics
create``) and the AsyncAPI document, whose channels and operations are the
rows' ``messages`` (formats of ``adapters.wire.SCHEMA_TYPES``) and
``operations``.

The events topic is the source of truth, so it never expires
(``retention.ms=-1``, ``retention.bytes=-1``). :func:`ensure_topics`
refuses to start on an events topic with a finite retention unless
``INVOICE_SM_ALLOW_FINITE_EVENT_RETENTION=true`` (:func:`guard_event_retention`),
and a repair (``replay --write-state-topic``, ``reconcile --repair``) refuses
a history whose beginning is gone unless forced
(:func:`refuse_truncated_history`): a fold of a suffix is not the state.

Replication: ``min.insync.replicas`` is 2 when the replication factor is 3
or more (one broker may fail without stopping writes and without an
acknowledged write living on a single disk), 1 otherwise, unless
``INVOICE_SM_TOPIC_MIN_INSYNC_REPLICAS`` says otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from adapters.kafka import broker_errors, client_options, translate
from adapters.settings import Settings, env_name
from domain.errors import BrokerError, ConfigurationError

log = structlog.get_logger("invoice_sm.topics")

Cleanup = Literal["delete", "compact"]

#: Never: Kafka's value for an unbounded retention.
FOREVER = -1

ALLOW_FINITE = env_name("allow_finite_event_retention")


@dataclass(frozen=True, slots=True)
class Operation:
    """What one service does on a topic (an AsyncAPI operation)."""

    #: ``processor``, ``deliverer`` or ``webhook``
    service: str
    action: Literal["send", "receive"]
    summary: str
    #: The topic's messages it sends or receives, when not all of them.
    messages: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One row of the table. ``retention_ms`` is ``None`` for a compacted
    topic (compaction keeps the latest record per key however old).

    ``messages`` names what its records are: rows of
    ``adapters.wire.SCHEMA_TYPES``, or messages written out in ``schemas``
    (``eventStructured``, ``eventBinary``).
    """

    name: str
    role: str
    key: str
    cleanup: Cleanup
    retention_ms: int | None
    partitions: int
    replication_factor: int
    min_insync_replicas: int
    description: str
    messages: tuple[str, ...]
    operations: tuple[Operation, ...]
    #: The ``Settings`` field that names the topic (``INVOICE_SM_<SETTING>``).
    setting: str

    @property
    def compact(self) -> bool:
        return self.cleanup == "compact"

    def configs(self) -> dict[str, str]:
        """The topic configs this row sets when it creates the topic."""
        configs = {"cleanup.policy": self.cleanup, "min.insync.replicas": str(self.min_insync_replicas)}
        if self.retention_ms is not None:
            configs["retention.ms"] = str(self.retention_ms)
            # Time bounds a delete topic, never size: a size bound would expire
            # the source of truth silently under load.
            configs["retention.bytes"] = str(FOREVER)
        return configs


def min_insync_replicas(settings: Settings) -> int:
    if settings.topic_min_insync_replicas is not None:
        return settings.topic_min_insync_replicas
    return 2 if settings.topic_replication_factor >= 3 else 1


def topic_table(settings: Settings) -> list[TopicSpec]:
    """Every topic the service reads or writes, with its settings."""
    n, rf, isr = settings.topic_partitions, settings.topic_replication_factor, min_insync_replicas(settings)
    invoice_key = "invoice key"  # "{card_id}/{code}"
    return [
        TopicSpec(
            settings.topic_events,
            "events",
            invoice_key,
            "delete",
            FOREVER,
            n,
            rf,
            isr,
            "lifecycle events (CloudEvents 1.0) from upstream and the webhook; the source of truth, never expires",
            setting="topic_events",
            messages=("eventStructured", "eventBinary"),
            operations=(
                Operation(
                    "processor",
                    "receive",
                    "Consumer group per INVOICE_SM_GROUP_ID, read_committed; decides each event in partition order.",
                ),
                Operation(
                    "webhook",
                    "send",
                    "WeChat's update_invoice_status push as an invoice.wechat.status_reported event (id derived from "
                    "the push, so WeChat's retries are one event), keyed by the invoice key; answered success only "
                    "once acknowledged.",
                    ("eventStructured",),
                ),
            ),
        ),
        TopicSpec(
            settings.topic_outcomes,
            "outcomes",
            invoice_key,
            "delete",
            settings.topic_outcomes_retention_ms,
            n,
            rf,
            isr,
            "one decision per valid event (and reconcile's repair records), read by the deliverer and analytics",
            setting="topic_outcomes",
            messages=("outcome",),
            operations=(
                Operation("processor", "send", "One outcome per valid event, in the input's transaction (exactly once)."),
                Operation(
                    "deliverer",
                    "receive",
                    "Accepted (and repair) outcomes become updatestatus calls to WeChat, per invoice in version order.",
                ),
            ),
        ),
        TopicSpec(
            settings.topic_state,
            "state",
            invoice_key,
            "compact",
            None,
            n,
            rf,
            isr,
            "latest state per invoice: the changelog local state is restored from (as many partitions as events)",
            setting="topic_state",
            messages=("state",),
            operations=(Operation("processor", "send", "The invoice's new state, in the same transaction."),),
        ),
        TopicSpec(
            settings.topic_deliveries,
            "deliveries",
            invoice_key,
            "delete",
            settings.topic_deliveries_retention_ms,
            n,
            rf,
            isr,
            "one final WeChat delivery record per accepted outcome; reconcile reads it",
            setting="topic_deliveries",
            messages=("delivery",),
            operations=(
                Operation(
                    "deliverer", "send", "The final record of each delivery, in one transaction with the consumed offsets."
                ),
            ),
        ),
        TopicSpec(
            settings.topic_delivery_waiting,
            "waiting",
            "idempotency key",
            "compact",
            None,
            n,
            rf,
            isr,
            "deliveries waiting off the commit path (parked account, long backoff) and each partition's "
            "ownership marker: the deliverer's changelog (as many partitions as outcomes)",
            setting="topic_delivery_waiting",
            messages=("waiting",),
            operations=(
                Operation(
                    "deliverer",
                    "send",
                    "Deliveries that wait for their account or a long backoff, and ownership markers, in the same transactions.",
                ),
                Operation(
                    "deliverer",
                    "receive",
                    "Read to its end when a partition is taken over: the waiting deliveries resume, "
                    "the marker says how the last owner left.",
                ),
            ),
        ),
        TopicSpec(
            settings.topic_dlq,
            "dlq",
            "original key",
            "delete",
            settings.topic_dlq_retention_ms,
            n,
            rf,
            isr,
            "input that could not be decided: original bytes and headers plus dlq.* headers",
            setting="topic_dlq",
            messages=("dlq",),
            operations=(Operation("processor", "send", "Every record it cannot decide, in the same transaction."),),
        ),
        TopicSpec(
            settings.topic_component,
            "component",
            "component appid (ticket) or component_appid/authorizer_appid",
            "compact",
            None,
            n,
            rf,
            isr,
            "component verify tickets and authorization events pushed by WeChat, written by the webhook; "
            "every deliverer instance reads all of it (third-party platform mode)",
            setting="topic_component",
            messages=("component",),
            operations=(
                Operation("webhook", "send", "component_verify_ticket, authorized, updateauthorized and unauthorized pushes."),
                Operation(
                    "deliverer",
                    "receive",
                    "Every partition from the beginning, no group: the newest ticket refreshes component tokens; "
                    "unauthorized ends that authorizer's deliveries with reason unauthorized.",
                ),
            ),
        ),
    ]


def spec_of(settings: Settings, role: str) -> TopicSpec:
    """The table's row for ``role`` (``events``, ``outcomes``, ``state``, ``deliveries``, ``waiting``, ``dlq``, ``component``)."""
    for spec in topic_table(settings):
        if spec.role == role:
            return spec
    raise KeyError(role)


def like(settings: Settings, role: str, name: str, partitions: int | None = None) -> TopicSpec:
    """A topic of another name (a replay's state topic, a benchmark's) with
    the settings of the table's ``role`` row."""
    spec = spec_of(settings, role)
    return replace(spec, name=name, partitions=spec.partitions if partitions is None else partitions)


def topic_names(prefix: str) -> dict[str, str]:
    """Settings naming every topic of the table ``<prefix>.<role>``: topics of
    their own for a test or a benchmark run, whatever rows the table gains."""
    return {spec.setting: f"{prefix}.{spec.role}" for spec in topic_table(Settings.model_construct())}


# -------------------------------------------------------------- the cluster


async def _admin(settings: Settings) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        with broker_errors("connect to Kafka"):
            await admin.start()
    except BrokerError:
        await admin.close()
        await explain_connect_failure(settings)
        raise
    return admin


async def explain_connect_failure(settings: Settings) -> None:
    """After a failed bootstrap, tell refused credentials or an untrusted
    certificate (a wrong setting, named) from an unreachable broker.

    aiokafka's bootstrap reports every failure as "unable to bootstrap", so
    one connection to the first server is opened again to see why. Nothing
    of the secret goes into the message.
    """
    import ssl

    from aiokafka.conn import create_conn
    from aiokafka.errors import AuthenticationFailedError, SaslAuthenticationFailed

    if settings.kafka_security_protocol == "PLAINTEXT":
        return
    host, _, port = settings.kafka_bootstrap_servers.split(",")[0].strip().rpartition(":")
    options = client_options(settings)
    try:
        conn = await asyncio.wait_for(
            create_conn(
                host,
                int(port),
                client_id=settings.kafka_client_id,
                request_timeout_ms=10_000,
                ssl_context=options.get("ssl_context"),
                security_protocol=settings.kafka_security_protocol,
                sasl_mechanism=options.get("sasl_mechanism"),
                sasl_plain_username=options.get("sasl_plain_username"),
                sasl_plain_password=options.get("sasl_plain_password"),
            ),
            15,
        )
    except (SaslAuthenticationFailed, AuthenticationFailedError):
        raise ConfigurationError(
            env_name("kafka_sasl_password"),
            f"the broker at {host}:{port} refused the SASL {settings.kafka_sasl_mechanism} credentials of user "
            f"{settings.kafka_sasl_username!r} (check {env_name('kafka_sasl_username')} and {env_name('kafka_sasl_password')})",
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise ConfigurationError(
            env_name("kafka_ssl_cafile"), f"the certificate of the broker at {host}:{port} is not trusted: {exc.verify_message}"
        ) from None
    except Exception:  # noqa: BLE001 - only a diagnosis: the broker error that follows says enough
        return  # unreachable or something else: the broker error says enough
    conn.close()


async def topic_configs(settings: Settings, names: list[str]) -> dict[str, dict[str, str]]:
    """Each existing topic's effective configs (defaults included)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = await _admin(settings)
    try:
        with broker_errors("describe topic configs"):
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in names])
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            # Each resource is the tuple error_code, error_message, resource_type, resource_name, config_entries.
            error_code, name, entries = resource[0], resource[3], resource[4]
            if error_code:
                continue
            out[name] = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
    return out


#: What a broker accepts when a topic does not say (Kafka's message.max.bytes default).
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


async def max_message_bytes(settings: Settings, names: list[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes``: the largest record batch the broker
    takes for it (a larger one is refused, and a transaction holding it can
    never commit)."""
    configs = await topic_configs(settings, names)
    return {name: int(configs.get(name, {}).get("max.message.bytes", DEFAULT_MAX_MESSAGE_BYTES)) for name in names}


async def describe_cluster_topics(settings: Settings, names: list[str]) -> dict[str, dict[str, Any]]:
    """Partitions, replication factor (the smallest replica set) and configs of
    each topic of ``names`` that exists."""
    admin = await _admin(settings)
    try:
        with broker_errors("describe topics"):
            described = await admin.describe_topics(names)
    finally:
        await admin.close()
    found: dict[str, dict[str, Any]] = {}
    for d in described:
        if d.get("error_code") or not d.get("partitions"):
            continue
        found[d["topic"]] = {
            "partitions": len(d["partitions"]),
            "replication_factor": min(len(p["replicas"]) for p in d["partitions"]),
        }
    configs = await topic_configs(settings, list(found)) if found else {}
    for name, info in found.items():
        info["configs"] = configs.get(name, {})
    return found


def _retention_text(ms: int) -> str:
    if ms < 0:
        return "never"
    days = ms / 86_400_000
    return f"{days:g} days" if days >= 1 else f"{ms / 3_600_000:g} hours"


def finite_retention(configs: dict[str, str]) -> str | None:
    """What bounds a topic's records, or ``None`` when nothing does."""
    reasons = []
    ms = int(configs.get("retention.ms", FOREVER))
    if ms != FOREVER:
        reasons.append(f"retention.ms={ms} ({_retention_text(ms)})")
    size = int(configs.get("retention.bytes", FOREVER))
    if size != FOREVER:
        reasons.append(f"retention.bytes={size}")
    return " and ".join(reasons) or None


async def guard_event_retention(settings: Settings, topic: str | None = None) -> None:
    """Refuse an events topic (default ``settings.topic_events``) whose records expire, unless allowed."""
    topic = topic or settings.topic_events
    configs = (await topic_configs(settings, [topic])).get(topic)
    if configs is None:
        return
    finite = finite_retention(configs)
    if finite is None:
        return
    if settings.allow_finite_event_retention:
        log.warning("finite_event_retention_allowed", topic=topic, retention=finite, alert=True)
        return
    raise ConfigurationError(
        ALLOW_FINITE,
        f"{topic} has {finite}: the events topic is the source of truth and must never expire "
        f"(set retention.ms=-1 and retention.bytes=-1 on it; `invoice-sm topics check` shows what differs), "
        f"or set {ALLOW_FINITE}=true to run on it anyway",
    )


async def truncated_partitions(settings: Settings, topic: str | None = None) -> dict[int, int]:
    """Partitions of the events topic whose beginning is gone: partition -> log start offset."""
    from aiokafka import TopicPartition

    from adapters import kafka

    topic = topic or settings.topic_events
    partitions = await kafka.partitions_of(settings, topic)
    if not partitions:
        return {}
    consumer = kafka.new_consumer(settings, group_id=None)
    async with kafka.started(consumer):
        begins = await kafka.beginning_offsets(consumer, [TopicPartition(topic, p) for p in partitions])
    return {tp.partition: offset for tp, offset in sorted(begins.items()) if offset > 0}


async def refuse_truncated_history(settings: Settings, what: str, *, force: bool, topic: str | None = None) -> None:
    """Stop a repair (``what``) from a history whose beginning is gone, unless ``force``."""
    topic = topic or settings.topic_events
    truncated = await truncated_partitions(settings, topic)
    if not truncated:
        return
    starts = ", ".join(f"{p}:{o}" for p, o in truncated.items())
    if force:
        log.warning("truncated_history_forced", what=what, log_start_offsets=starts, alert=True)
        return
    raise ConfigurationError(
        "--force",
        f"{topic} no longer holds its beginning (log start offsets {starts}): {what} from it "
        f"would rebuild invoices without their earlier events; pass --force to do it anyway",
    )


async def ensure_topics(
    settings: Settings, specs: Iterable[TopicSpec] | None = None, *, create: bool | None = None
) -> dict[str, int]:
    """Create missing topics from the table (or ``specs``); return partition counts.

    ``create`` defaults to ``INVOICE_SM_CREATE_TOPICS``. Fails with
    ``ConfigurationError`` when the changelog cannot be co-partitioned with
    the input, and (:func:`guard_event_retention`) whenever the events topic
    is among the topics ensured and its records expire.
    """
    specs = list(specs if specs is not None else topic_table(settings))
    create = settings.create_topics if create is None else create
    admin = await _admin(settings)
    try:
        with broker_errors("list topics"):
            existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing and create:
            new = [
                NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, topic_configs=s.configs())
                for s in missing
            ]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another instance won the race
            except KafkaError as exc:
                raise translate(exc, "create topics") from exc
        elif missing:
            names = ", ".join(s.name for s in missing)
            raise ConfigurationError(env_name("create_topics"), f"topics missing and creation disabled: {names}")
        # A topic just created may be described without partitions for a moment.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            with broker_errors("describe topics"):
                described = await admin.describe_topics([s.name for s in specs])
            counts = {d["topic"]: len(d["partitions"]) for d in described if d.get("partitions") and not d.get("error_code")}
            lacking = [s.name for s in specs if s.name not in counts]
            if not lacking:
                break
            if loop.time() > deadline:
                raise BrokerError(f"topics have no partitions after 30 s: {', '.join(lacking)}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    state, events = settings.topic_state, settings.topic_events
    if state in counts and events in counts and counts[state] != counts[events]:
        raise ConfigurationError(
            env_name("topic_state"),
            f"{state} has {counts[state]} partitions but {events} has {counts[events]}; the changelog must match the input",
        )
    waiting, outcomes = settings.topic_delivery_waiting, settings.topic_outcomes
    if waiting in counts and outcomes in counts and counts[waiting] != counts[outcomes]:
        raise ConfigurationError(
            env_name("topic_delivery_waiting"),
            f"{waiting} has {counts[waiting]} partitions but {outcomes} "
            f"has {counts[outcomes]}; the changelog must match the input",
        )
    if settings.topic_events in counts:
        await guard_event_retention(settings)
    return counts


# -------------------------------------------------------------- topics check


@dataclass(frozen=True, slots=True)
class Difference:
    topic: str
    setting: str
    expected: str
    actual: str

    def to_json(self) -> dict[str, str]:
        return {"topic": self.topic, "setting": self.setting, "expected": self.expected, "actual": self.actual}


def compare(specs: Iterable[TopicSpec], cluster: dict[str, dict[str, Any]]) -> list[Difference]:
    """What differs between the table and the cluster's topics. Pure."""
    out: list[Difference] = []
    for spec in specs:
        actual = cluster.get(spec.name)
        if actual is None:
            out.append(Difference(spec.name, "exists", "yes", "no"))
            continue
        configs = actual.get("configs", {})
        expected: list[tuple[str, str, str]] = [
            ("partitions", str(spec.partitions), str(actual["partitions"])),
            ("replication.factor", str(spec.replication_factor), str(actual["replication_factor"])),
            ("cleanup.policy", spec.cleanup, configs.get("cleanup.policy", "delete")),
            ("min.insync.replicas", str(spec.min_insync_replicas), configs.get("min.insync.replicas", "1")),
        ]
        if spec.retention_ms is not None:
            expected.append(("retention.ms", str(spec.retention_ms), configs.get("retention.ms", "604800000")))
            expected.append(("retention.bytes", str(FOREVER), configs.get("retention.bytes", str(FOREVER))))
        out.extend(Difference(spec.name, setting, want, have) for setting, want, have in expected if want != have)
    return out


async def check(settings: Settings) -> tuple[list[TopicSpec], dict[str, dict[str, Any]], list[Difference]]:
    specs = topic_table(settings)
    cluster = await describe_cluster_topics(settings, [s.name for s in specs])
    return specs, cluster, compare(specs, cluster)
