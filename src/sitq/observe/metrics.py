"""Prometheus metrics of the tasks a worker runs (the ``sitq[metrics]`` extra: prometheus-client).

:class:`WorkerMetrics` counts, per queue and function, the attempts a worker starts and how
each one ends, and serves them as four series:

- ``sitq_tasks_started_total{queue,function}``: attempts this worker started, every claim it
  took, so it moves with the task's ``attempts`` in the store (a task failed or cancelled
  before its code ran counts too).
- ``sitq_tasks_finished_total{queue,function,status}``: attempts that ended, each once, under
  the status that ended it (:data:`STATUSES`).
- ``sitq_task_duration_seconds{queue,function}``: a histogram of those attempts' durations,
  from the claim to the end of the attempt; one observation per finished attempt, so its
  ``_count`` equals the sum of ``sitq_tasks_finished_total`` over ``status`` for the same
  queue and function.
- ``sitq_tasks_running{queue}``: attempts started and not yet finished, running or their
  outcome on its way to the backend. At any scrape, ``started == sum(finished) + running``
  for each queue.

An attempt is counted as finished when the backend has recorded its outcome (so an outcome the
backend refuses counts as ``refused``, never twice), or, when there is nothing to record, when
the attempt stops.

Importing this module does not import prometheus-client; making a :class:`WorkerMetrics` does,
and fails with :class:`~sitq.errors.MissingDependencyError` naming ``pip install
'sitq[metrics]'`` when it is not installed.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from sitq.errors import ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = ["BUCKETS", "STATUSES", "TaskSeries", "WorkerMetrics"]

BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
"""Upper bounds (seconds) of ``sitq_task_duration_seconds``'s buckets, ``+Inf`` besides: from
1 ms to 10 minutes."""

STATUSES: tuple[str, ...] = (
    "success",
    "failed",
    "timed_out",
    "cancelled",
    "retrying",
    "released",
    "rate_limited",
    "lost",
    "abandoned",
    "refused",
)
"""How an attempt ends, the ``status`` label of ``sitq_tasks_finished_total``:

- ``success``: it returned; its result is recorded.
- ``failed``: it failed for good (no retry left, or a task that could not run: an unreadable
  record, a bad payload, too many lost deliveries).
- ``timed_out``: it ran past its timeout with no retry left (recorded as failed).
- ``cancelled``: cancelled before or while it ran.
- ``retrying``: it failed or timed out, and runs again after its backoff.
- ``released``: a graceful stop ran out of time; the task went back to its queue.
- ``rate_limited``: it did not start, as its rate limit had no free slot; the task went back
  to its queue, due when a slot frees.
- ``lost``: the worker lost the lease (another claim may run the task); nothing recorded.
- ``abandoned``: a hard stop (a second SIGINT), or a stop that could not record the outcome
  in time; the lease brings the task back.
- ``refused``: the backend refused the outcome, as another claim holds the task.
"""

_LE = (*(repr(bound) for bound in BUCKETS), "+Inf")
"""The buckets' ``le`` labels."""

_NAMES = (
    "sitq_tasks_started",
    "sitq_tasks_finished",
    "sitq_task_duration_seconds",
    "sitq_tasks_running",
)


def _prometheus() -> Any:
    """The ``prometheus_client`` module, or an error naming the ``pip install`` it needs."""
    try:
        import prometheus_client
    except ImportError as exc:
        raise MissingDependencyError(
            "worker metrics need the 'prometheus_client' package, which is not installed: "
            "run  pip install 'sitq[metrics]'"
        ) from exc
    return prometheus_client


class TaskSeries:
    """The counts of one queue and function: what :meth:`WorkerMetrics.started` returns, to
    be handed back to :meth:`WorkerMetrics.finished` when the attempt ends."""

    __slots__ = ("buckets", "finished", "function", "queue", "seconds", "started")

    def __init__(self, queue: str, function: str) -> None:
        self.queue = queue
        self.function = function
        self.started = 0
        self.finished: dict[str, int] = dict.fromkeys(STATUSES, 0)
        self.buckets = [0] * (len(BUCKETS) + 1)
        """Observations per bucket, not cumulative; the last is above the largest bound."""
        self.seconds = 0.0


class WorkerMetrics:
    """A worker's task metrics: counts kept in plain integers as tasks start and end, turned
    into Prometheus series when ``registry`` is scraped (so a task costs a dictionary lookup
    and two short locked updates, about a microsecond; nothing at all without metrics).

    ``registry`` defaults to a :class:`prometheus_client.CollectorRegistry` of this object's
    own, not the process-wide default, so two workers in one process never collide; pass
    another to add the series to it (e.g. ``prometheus_client.REGISTRY``, which an
    application may already serve). One ``WorkerMetrics`` may also be shared by several
    workers: their counts add up.

    Attach it to a worker and serve it::

        metrics = WorkerMetrics()
        worker = AsyncWorker(backend, metrics=metrics)   # or metrics=True, then worker.metrics
        metrics.serve(9100)                              # GET http://127.0.0.1:9100/metrics
        ...
        metrics.close()

    The series and the meaning of each status are in this module's documentation and in
    docs/operating.md (Metrics).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        prometheus = _prometheus()
        self.registry: CollectorRegistry = (
            registry if registry is not None else prometheus.CollectorRegistry()
        )
        """The registry whose scrapes show this worker's series."""
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], TaskSeries] = {}
        self._labelled: dict[tuple[str, str], TaskSeries] = {}
        self._queues: dict[str, None] = {}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.registry.register(self)

    # -- counting (called by the worker, on its event loop) ----------------------------------

    def include(self, queues: Iterable[str]) -> None:
        """Show ``sitq_tasks_running`` for these queues from the start (at 0)."""
        with self._lock:
            for queue in queues:
                self._queues.setdefault(queue, None)

    def started(self, queue: str, function: str) -> TaskSeries:
        """An attempt of ``function`` on ``queue`` starts: its series, for :meth:`finished`."""
        try:
            series = self._series.get((queue, function))
        except TypeError:  # unhashable fields from a damaged record
            series = None
        if series is None:
            series = self._add(queue, function)
        with self._lock:
            series.started += 1
        return series

    def finished(self, series: TaskSeries, status: str, duration: float) -> None:
        """An attempt :meth:`started` ended with ``status`` (one of :data:`STATUSES`) after
        ``duration`` seconds. Call it once per attempt."""
        index = bisect.bisect_left(BUCKETS, duration)
        with self._lock:
            series.finished[status] += 1
            series.buckets[index] += 1
            series.seconds += duration

    def _add(self, queue: str, function: str) -> TaskSeries:
        labels = (
            queue if isinstance(queue, str) else repr(queue),
            function if isinstance(function, str) and function else "unknown",
        )
        with self._lock:
            series = self._labelled.get(labels)
            if series is None:
                series = self._labelled[labels] = TaskSeries(*labels)
            with contextlib.suppress(TypeError):  # not a key: found by its labels each time
                self._series[(queue, function)] = series
        return series

    # -- the prometheus_client collector -----------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The four families, without samples (the registry checks their names are free)."""
        return self._families([], [])

    def collect(self) -> Iterator[Metric]:
        """The four families with the counts of this moment (called at each scrape)."""
        with self._lock:
            rows = [
                (s.queue, s.function, s.started, dict(s.finished), list(s.buckets), s.seconds)
                for s in self._labelled.values()
            ]
            queues = list(self._queues)
        return self._families(rows, queues)

    def _families(
        self,
        rows: list[tuple[str, str, int, dict[str, int], list[int], float]],
        queues: list[str],
    ) -> Iterator[Metric]:
        from prometheus_client.metrics_core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        started = CounterMetricFamily(
            _NAMES[0],
            "Task attempts this worker started (each claim it took).",
            labels=("queue", "function"),
        )
        finished = CounterMetricFamily(
            _NAMES[1],
            "Task attempts that ended, once each, by how they ended.",
            labels=("queue", "function", "status"),
        )
        duration = HistogramMetricFamily(
            _NAMES[2],
            "Seconds from the claim of a task attempt to its end.",
            labels=("queue", "function"),
        )
        running = GaugeMetricFamily(
            _NAMES[3],
            "Task attempts started and not yet finished (running, or being recorded).",
            labels=("queue",),
        )
        holding: dict[str, int] = dict.fromkeys(queues, 0)
        for queue, function, count, ends, buckets, seconds in rows:
            started.add_metric((queue, function), count)
            for status in STATUSES:
                finished.add_metric((queue, function, status), ends[status])
            cumulative: list[tuple[str, float]] = []
            total = 0
            for bound, observed in zip(_LE, buckets, strict=True):
                total += observed
                cumulative.append((bound, total))
            duration.add_metric((queue, function), cumulative, seconds)
            holding[queue] = holding.get(queue, 0) + count - sum(ends.values())
        for queue, count in holding.items():
            running.add_metric((queue,), count)
        yield from (started, finished, duration, running)

    # -- serving -----------------------------------------------------------------------------

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``registry`` at ``http://host:port/metrics`` from a background thread (port
        ``0``: any free port); the port it listens on. Stop it with :meth:`close`."""
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError(f"metrics port must be an int from 0 to 65535, not {port!r}")
        if self._server is not None:
            raise ConfigurationError(
                f"these metrics are already served on port {self._server.server_port}"
            )
        prometheus = _prometheus()
        try:
            server, thread = prometheus.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        self._server, self._thread = server, thread
        return int(server.server_port)

    @property
    def port(self) -> int | None:
        """The port :meth:`serve` listens on, or ``None`` when not serving."""
        return None if self._server is None else int(self._server.server_port)

    def close(self) -> None:
        """Stop serving (idempotent). The counts stay, and the registry still shows them."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()
