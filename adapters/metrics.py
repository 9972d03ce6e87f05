"""Every Prometheus metric of the service, defined once.

A ``Metrics`` owns its own ``CollectorRegistry`` instead of the process-wide
default one, so each test (and each component under test) can build a fresh
set without "Duplicated timeseries" errors, and ``/metrics`` shows exactly
these series. One ``Metrics`` is built at start and handed to the processor,
the deliverer, the token provider and the ``HealthServer``.

Labels with a closed set of values (outcome, result, errcode class, attempt
kind, role) are created at zero up front: a series that appears only on its
first increment makes ``rate()`` and alerts on it miss that first event.

Metric names (all prefixed ``invoice_sm_``; counters are exposed with the
``_total`` suffix, histograms with ``_bucket``/``_sum``/``_count``)::

    events_total{outcome}                 accepted|unchanged|duplicate|rejected|dlq
    dlq_total{reason}
    batches_total, batch_seconds          per processed batch, processing + commit
    decision_steps_total{step}            native|python: which step judged each input record (python: what the
                                          native step declined, every invalid record, or all when it is off)
    wechat_reports_total{legal}           WeChat status reports decided (not duplicates): true|false,
                                          false = the move was illegal from our state, a divergence
    deliveries_total{result}              delivered|already_applied|conflict|failed (domain.delivery.DeliveryResult)
    delivery_attempts_total{kind}         first|retry
    delivery_queue_depth, deliveries_in_flight
    wechat_calls_total{errcode_class}     ok|token|transient|quota|conflict|permanent (domain.wechat_errors.ErrorClass)|network
    wechat_latency_seconds                one updatestatus HTTP call
    consumer_lag{group,topic,partition}
    restore_records_total{partition}, restore_seconds{partition}, restore_in_progress
    token_refreshes_total{appid,mode}
    token_refresh_failures_total{appid,mode}  token fetches that failed (the old token may still serve)
    parked_appids, parked_appid{appid}    1 while an appid is parked on quota
    assigned_partitions{role}             processor|deliverer
    partition_stalled{role,partition,reason}  1 while a partition cannot make progress
                                          (fenced|broker_unavailable|producer_fatal|txn_timeout|unauthorized)
    broker_retries_total{role,reason}     Kafka operations retried (one per attempt; logged once per change)
    producer_replacements_total{role,reason}  transactional producers replaced after a fatal state or timeout
    dlq_truncated_total                   DLQ copies cut to fit the broker's limit (size and hash in headers)
    divergences_total{kind}               differences ``reconcile`` found, by kind (domain.reconcile.DIFFERENCE_KINDS)
    ready                                 1 while every readiness check passes

``NullMetrics`` has the same attributes, each a metric that records nothing:
code that is handed no metrics (a tool, a test, a one-off command) gets
``NULL_METRICS`` and calls it like the real thing, instead of checking for
``None`` before every increment. prometheus_client has no null object of its
own; a unit test keeps the two attribute sets equal.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from domain.delivery import DeliveryResult
from domain.wechat_errors import ErrorClass

__all__ = [
    "ATTEMPT_KINDS",
    "BATCH_BUCKETS",
    "DELIVERY_RESULTS",
    "ERRCODE_CLASSES",
    "EVENT_OUTCOMES",
    "METRIC_NAMES",
    "NAMESPACE",
    "NULL_METRICS",
    "REPORT_LEGALITY",
    "ROLES",
    "STALL_REASONS",
    "WECHAT_LATENCY_BUCKETS",
    "Metrics",
    "NullMetrics",
]

NAMESPACE: Final = "invoice_sm"

EVENT_OUTCOMES: Final = ("accepted", "unchanged", "duplicate", "rejected", "dlq")
DELIVERY_RESULTS: Final = tuple(result.value for result in DeliveryResult)
#: every errcode class, and ``network`` for an HTTP or transport failure without an errcode
ERRCODE_CLASSES: Final = (*(error_class.value for error_class in ErrorClass), "network")
ATTEMPT_KINDS: Final = ("first", "retry")
ROLES: Final = ("processor", "deliverer")
#: ``legal`` label of ``wechat_reports_total``: was the reported move legal from our state?
REPORT_LEGALITY: Final = ("true", "false")
#: Which step judged an input record (``consumers.processor.decide_batch``).
DECISION_STEPS: Final = ("native", "python")
STALL_REASONS: Final = ("fenced", "broker_unavailable", "producer_fatal", "txn_timeout", "unauthorized")

# WeChat answers in tens of milliseconds on a good day and the client times
# out at a few seconds: 5 ms to 10 s, roughly x2-x2.5 per step.
WECHAT_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# A batch is up to thousands of records plus a transaction commit: from about
# a millisecond (one record, no broker round trip) to tens of seconds (a
# broker stall).
BATCH_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The service's metrics, registered in ``self.registry``.

    Args:
        registry: where to register; a new ``CollectorRegistry`` if ``None``.
            Registering twice in the same registry raises ``ValueError``
            (prometheus_client's duplicate check), so build one ``Metrics``
            per registry.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ns = NAMESPACE

        # Processor
        self.events_total = Counter("events", "Input events by decision outcome", ["outcome"], namespace=ns, registry=r)
        self.dlq_total = Counter("dlq", "Records sent to the DLQ, by reason", ["reason"], namespace=ns, registry=r)
        self.batches_total = Counter("batches", "Batches processed and committed", namespace=ns, registry=r)
        self.decision_steps_total = Counter(
            "decision_steps",
            "Input records by the step that judged them: native (the common valid event), or python (what the native "
            "step declined: every invalid record, unusual valid ones, all of them with INVOICE_SM_NATIVE_STEP=off)",
            ["step"],
            namespace=ns,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "batch_seconds",
            "Time to process and commit one batch",
            namespace=ns,
            registry=r,
            buckets=BATCH_BUCKETS,
        )
        self.wechat_reports_total = Counter(
            "wechat_reports",
            "WeChat status reports decided (duplicates aside), by whether the move was legal from our state",
            ["legal"],
            namespace=ns,
            registry=r,
        )

        # Deliverer
        self.deliveries_total = Counter("deliveries", "Final delivery records, by result", ["result"], namespace=ns, registry=r)
        self.delivery_attempts_total = Counter(
            "delivery_attempts", "updatestatus attempts, first or retry", ["kind"], namespace=ns, registry=r
        )
        self.delivery_queue_depth = Gauge(
            "delivery_queue_depth", "Accepted outcomes waiting to be delivered", namespace=ns, registry=r
        )
        self.deliveries_in_flight = Gauge(
            "deliveries_in_flight", "Deliveries currently being attempted", namespace=ns, registry=r
        )

        # WeChat client
        self.wechat_calls_total = Counter(
            "wechat_calls",
            "WeChat API calls, by class of result errcode",
            ["errcode_class"],
            namespace=ns,
            registry=r,
        )
        self.wechat_latency_seconds = Histogram(
            "wechat_latency_seconds",
            "Latency of one WeChat API HTTP call",
            namespace=ns,
            registry=r,
            buckets=WECHAT_LATENCY_BUCKETS,
        )
        self.token_refreshes_total = Counter(
            "token_refreshes", "Access tokens fetched, by appid and token mode", ["appid", "mode"], namespace=ns, registry=r
        )
        self.token_refresh_failures_total = Counter(
            "token_refresh_failures",
            "Access token fetches that failed, by appid and token mode",
            ["appid", "mode"],
            namespace=ns,
            registry=r,
        )
        self.parked_appids = Gauge("parked_appids", "Appids parked until their quota resets", namespace=ns, registry=r)
        self.parked_appid = Gauge(
            "parked_appid",
            "1 while this appid is parked (quota, credentials); at most INVOICE_SM_METRICS_MAX_APPIDS series, the rest as _other",
            ["appid"],
            namespace=ns,
            registry=r,
        )
        self.deliveries_waiting = Gauge(
            "deliveries_waiting",
            "Deliveries in the waiting room, off the commit path, by reason",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.delivery_worker_errors_total = Counter(
            "delivery_worker_errors",
            "Unexpected exceptions in a delivery worker (the job is retried as possibly applied)",
            namespace=ns,
            registry=r,
        )

        # Kafka and local state
        self.consumer_lag = Gauge(
            "consumer_lag",
            "Records between the committed/consumed position and the end of the partition",
            ["group", "topic", "partition"],
            namespace=ns,
            registry=r,
        )
        self.restore_records_total = Counter(
            "restore_records", "Changelog records restored into local state", ["partition"], namespace=ns, registry=r
        )
        self.restore_seconds = Gauge(
            "restore_seconds", "Duration of the last state restore of a partition", ["partition"], namespace=ns, registry=r
        )
        self.restore_in_progress = Gauge(
            "restore_in_progress", "Partitions whose state is being restored now", namespace=ns, registry=r
        )
        self.assigned_partitions = Gauge(
            "assigned_partitions", "Partitions assigned to this instance, by role", ["role"], namespace=ns, registry=r
        )
        self.partition_stalled = Gauge(
            "partition_stalled",
            "1 while a partition cannot make progress, by reason",
            ["role", "partition", "reason"],
            namespace=ns,
            registry=r,
        )
        self.broker_retries_total = Counter(
            "broker_retries", "Kafka operations retried after an error, by reason", ["role", "reason"], namespace=ns, registry=r
        )
        self.producer_replacements_total = Counter(
            "producer_replacements",
            "Transactional producers replaced after a fatal state or a transaction timeout",
            ["role", "reason"],
            namespace=ns,
            registry=r,
        )
        self.dlq_truncated_total = Counter(
            "dlq_truncated", "DLQ copies whose value was cut to fit the broker's limit", namespace=ns, registry=r
        )
        self.divergences_total = Counter(
            "divergences", "Differences found by reconcile, by kind", ["kind"], namespace=ns, registry=r
        )
        self.ready = Gauge("ready", "1 while the component is ready", namespace=ns, registry=r)

        for outcome in EVENT_OUTCOMES:
            self.events_total.labels(outcome)
        for legal in REPORT_LEGALITY:
            self.wechat_reports_total.labels(legal)
        for step in DECISION_STEPS:
            self.decision_steps_total.labels(step)
        for result in DELIVERY_RESULTS:
            self.deliveries_total.labels(result)
        for errcode_class in ERRCODE_CLASSES:
            self.wechat_calls_total.labels(errcode_class)
        for kind in ATTEMPT_KINDS:
            self.delivery_attempts_total.labels(kind)
        for role in ROLES:
            self.assigned_partitions.labels(role)
            for reason in STALL_REASONS:
                self.broker_retries_total.labels(role, reason)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format (0.0.4)."""
        return generate_latest(self.registry)


class _NullMetric:
    """A counter, gauge or histogram (labelled or not) that records nothing."""

    __slots__ = ()

    def labels(self, *_values: Any, **_labels: Any) -> _NullMetric:
        return self

    def inc(self, _amount: float = 1) -> None:
        pass

    def dec(self, _amount: float = 1) -> None:
        pass

    def set(self, _value: float) -> None:
        pass

    def observe(self, _value: float) -> None:
        pass

    def time(self) -> AbstractContextManager[None]:
        return nullcontext()


_NULL_METRIC: Final = _NullMetric()


class NullMetrics(Metrics):
    """``Metrics`` whose every metric is a no-op, for code run without a registry to fill.

    A subclass so it goes wherever a ``Metrics`` does. Its ``registry`` is
    empty (``render`` gives an empty exposition), and nothing is registered,
    so any number of them can exist side by side.
    """

    def __init__(self) -> None:
        # Deliberately not calling Metrics.__init__: that registers real series.
        self.registry = CollectorRegistry()
        for name in METRIC_NAMES:
            setattr(self, name, _NULL_METRIC)


#: Every metric attribute of ``Metrics``, in definition order. ``NullMetrics``
#: nulls exactly these; tests/unit/adapters/test_metrics.py keeps the list complete.
METRIC_NAMES: Final = (
    "events_total",
    "dlq_total",
    "batches_total",
    "decision_steps_total",
    "batch_seconds",
    "wechat_reports_total",
    "deliveries_total",
    "delivery_attempts_total",
    "delivery_queue_depth",
    "deliveries_in_flight",
    "wechat_calls_total",
    "wechat_latency_seconds",
    "token_refreshes_total",
    "token_refresh_failures_total",
    "parked_appids",
    "parked_appid",
    "deliveries_waiting",
    "delivery_worker_errors_total",
    "consumer_lag",
    "restore_records_total",
    "restore_seconds",
    "restore_in_progress",
    "assigned_partitions",
    "partition_stalled",
    "broker_retries_total",
    "producer_replacements_total",
    "dlq_truncated_total",
    "divergences_total",
    "ready",
)

#: The one shared null object (it holds no state): the default wherever metrics are optional.
NULL_METRICS: Final = NullMetrics()
