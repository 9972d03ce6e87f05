"""``NullMetrics``: the same surface as ``Metrics``, recording nothing."""

from __future__ import annotations

import pytest
from prometheus_client.metrics import MetricWrapperBase

from adapters.metrics import METRIC_NAMES, NULL_METRICS, Metrics, NullMetrics

#: What code calls on a metric (or on one of its labelled children).
METRIC_METHODS = ("inc", "dec", "set", "observe", "time")


def metric_attributes(metrics: Metrics) -> dict[str, object]:
    return {name: value for name, value in vars(metrics).items() if name != "registry"}


def test_null_metrics_has_exactly_the_attributes_of_metrics() -> None:
    real = metric_attributes(Metrics())
    assert all(isinstance(m, MetricWrapperBase) for m in real.values())
    assert list(real) == list(METRIC_NAMES)
    assert set(metric_attributes(NullMetrics())) == set(real)


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_every_null_metric_answers_what_the_real_one_answers(name: str) -> None:
    real = getattr(Metrics(), name)
    null = getattr(NULL_METRICS, name)
    child = real.labels(*("x" for _ in real._labelnames)) if real._labelnames else real
    offered = [m for m in METRIC_METHODS if hasattr(child, m)]
    assert offered, f"{name} offers none of {METRIC_METHODS}"
    for method in offered:
        target = null.labels("x", kind="y")
        if method == "time":
            with target.time():
                pass
        else:
            assert getattr(target, method)(1) is None


def test_null_metrics_register_and_expose_nothing() -> None:
    first, second = NullMetrics(), NullMetrics()  # no "Duplicated timeseries" either
    first.events_total.labels(outcome="accepted").inc(5)
    assert first.render() == second.render() == b""
