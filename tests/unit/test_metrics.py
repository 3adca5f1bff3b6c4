"""sitq.observe.metrics on its own: the buckets an attempt's duration falls in, labels of a
damaged record, and serving over HTTP."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from sitq import ConfigurationError
from tests.services import require_module

prometheus_client = require_module("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from sitq.observe.metrics import BUCKETS, STATUSES, WorkerMetrics  # noqa: E402


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = prometheus_client.generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def bucket(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], le: str) -> float:
    labels = (("function", "f"), ("le", le), ("queue", "q"))
    return found[("sitq_task_duration_seconds_bucket", labels)]


def test_durations_fall_in_the_bucket_at_or_above_them() -> None:
    metrics = WorkerMetrics()
    for duration in (0.0002, 0.001, 0.0011, 59.0, 60.0, 700.0):
        metrics.finished(metrics.started("q", "f"), "success", duration)
    found = samples(metrics)
    assert bucket(found, "0.001") == 2  # 0.2 ms and exactly 1 ms
    assert bucket(found, "0.0025") == 3
    assert bucket(found, "30.0") == 3
    assert bucket(found, "60.0") == 5  # 59 s and exactly 60 s
    assert bucket(found, "600.0") == 5
    assert bucket(found, "+Inf") == 6
    key = (("function", "f"), ("queue", "q"))
    assert found[("sitq_task_duration_seconds_count", key)] == 6
    assert found[("sitq_task_duration_seconds_sum", key)] == pytest.approx(819.0023)
    assert BUCKETS[0] == 0.001 and BUCKETS[-1] == 600.0


def test_every_status_is_shown_from_the_first_attempt() -> None:
    metrics = WorkerMetrics()
    metrics.include(["q", "idle"])
    series = metrics.started("q", "f")
    found = samples(metrics)
    for status in STATUSES:
        labels = (("function", "f"), ("queue", "q"), ("status", status))
        assert found[("sitq_tasks_finished_total", labels)] == 0
    assert found[("sitq_tasks_running", (("queue", "q"),))] == 1
    assert found[("sitq_tasks_running", (("queue", "idle"),))] == 0
    metrics.finished(series, "refused", 0.5)
    found = samples(metrics)
    assert found[("sitq_tasks_running", (("queue", "q"),))] == 0
    refused = (("function", "f"), ("queue", "q"), ("status", "refused"))
    assert found[("sitq_tasks_finished_total", refused)] == 1
    with pytest.raises(KeyError):
        metrics.finished(series, "exploded", 0.1)


def test_a_damaged_record_is_counted_under_readable_labels() -> None:
    metrics = WorkerMetrics()
    for function in ("", None, ["not", "hashable"]):
        metrics.finished(metrics.started("q", function), "failed", 0.0)  # type: ignore[arg-type]
    found = samples(metrics)
    assert found[("sitq_tasks_started_total", (("function", "unknown"), ("queue", "q")))] == 3


def test_two_metrics_never_share_a_registry_unless_told() -> None:
    one, two = WorkerMetrics(), WorkerMetrics()
    assert one.registry is not two.registry
    one.started("q", "f")
    assert ("sitq_tasks_started_total", (("function", "f"), ("queue", "q"))) not in samples(two)
    registry = prometheus_client.CollectorRegistry()
    WorkerMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        WorkerMetrics(registry)  # one per registry: share the WorkerMetrics instead


def test_serve_and_close() -> None:
    metrics = WorkerMetrics()
    assert metrics.port is None
    port = metrics.serve(0)
    try:
        assert metrics.port == port
        metrics.started("q", "f")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'sitq_tasks_started_total{function="f",queue="q"} 1.0' in text
        with pytest.raises(ConfigurationError, match="already served on port"):
            metrics.serve(0)
        other = WorkerMetrics()
        with pytest.raises(ConfigurationError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            other.serve(port)
    finally:
        metrics.close()
    metrics.close()
    assert metrics.port is None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
    with socket.socket() as free:  # the port is given back (no listener left on it)
        free.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        free.bind(("127.0.0.1", port))
        free.listen()


@pytest.mark.parametrize("port", [-1, 65536, 1.5, True, "9100"])
def test_a_bad_port_is_refused(port: object) -> None:
    with pytest.raises(ConfigurationError, match="metrics port must be an int from 0 to 65535"):
        WorkerMetrics().serve(port)  # type: ignore[arg-type]
