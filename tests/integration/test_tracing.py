"""docs/operating.md, Traces: with a tracer provider configured, an enqueue records a PRODUCER
span and stores its W3C trace context with the task; the worker runs the task in a CONSUMER
span that is its child, with the messaging attributes, the exception of a failure, retries and
timeouts marked; a task that enqueues another continues the trace in async, thread and process
workers. Without OpenTelemetry nothing of it is imported, and ``import sitq`` imports none of it
even when it is installed.

The test process sets its tracer provider (the SDK, with an in-memory exporter) for each test
and takes it away after; a worker in another process records its spans with one of its own
(tests/tracing_worker.py) and writes them to a file when it stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.services import require_module

require_module("opentelemetry.sdk.trace")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.util._once import Once  # noqa: E402

from sitq import (  # noqa: E402
    AsyncWorker,
    ConfigurationError,
    MemoryBackend,
    RetryPolicy,
    TaskQueue,
    TaskStatus,
)
from sitq.models import NewTask  # noqa: E402
from sitq.options import TaskOptions, parse_engine_options  # noqa: E402
from sitq.retry import FixedBackoff  # noqa: E402
from sitq.worker import WORKER_KINDS, Worker  # noqa: E402
from tests import tracing_tasks  # noqa: E402
from tests.conformance import tasks  # noqa: E402
from tests.conftest import REPO, BackendFactory, WorkerProcesses  # noqa: E402
from tests.tracing_worker import span_record  # noqa: E402

Span = dict[str, Any]


def _reset_trace_globals() -> None:
    """Take the global tracer provider away again (a process may set it only once; this is
    what OpenTelemetry's own tests do between tests)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A tracer provider for this process, for one test: its spans, in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_trace_globals()


def _finished(exporter: InMemorySpanExporter) -> list[Span]:
    return [span_record(s) for s in exporter.get_finished_spans()]


def _one(spans: list[Span], name: str, **attributes: Any) -> Span:
    """The one span called ``name`` whose attributes include ``attributes``."""
    found = [
        s
        for s in spans
        if s["name"] == name and all(s["attributes"].get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, (name, attributes, spans)
    return found[0]


def _consumer_attributes(span: Span, task_id: str, queue: str, function: str, attempt: int) -> None:
    assert span["kind"] == "CONSUMER"
    attributes = span["attributes"]
    assert attributes["messaging.system"] == "sitq"
    assert attributes["messaging.destination.name"] == queue
    assert attributes["messaging.message.id"] == task_id
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.operation.name"] == "process"
    assert attributes["messaging.sitq.function"] == function
    assert attributes["messaging.sitq.attempt"] == attempt


def _child_of(child: Span, parent: Span) -> None:
    assert child["trace_id"] == parent["trace_id"], (child, parent)
    assert child["parent_id"] == parent["span_id"], (child, parent)


async def _run_until_done(worker: Worker, queue: TaskQueue, *task_ids: str) -> None:
    """Start ``worker``, wait for every task to finish, stop it."""
    await worker.start()
    try:
        for task_id in task_ids:
            assert await queue.get_result(task_id, timeout=60) is not None, task_id
    finally:
        await worker.stop()


# -- one trace across processes -------------------------------------------------------------


async def test_an_enqueue_here_and_its_run_in_a_worker_process_make_one_trace(
    shared_backends: BackendFactory,
    spans: InMemorySpanExporter,
    worker_processes: WorkerProcesses,
    tmp_path: Path,
) -> None:
    url = shared_backends.url
    assert url is not None
    out = tmp_path / "worker-spans.json"
    worker = worker_processes.call("tests.tracing_worker:main", url, str(out))
    async with TaskQueue(url) as queue:
        task_id = await queue.enqueue(tasks.add, 2, 3)
        assert await queue.get_value(task_id, timeout=60) == 5
        # The trace context stored with the task upsets no listing.
        info = await queue.get_task(task_id)
        assert info is not None and info.status is TaskStatus.SUCCESS
        assert info.function == "tests.conformance.tasks.add"
        page = await queue.list_tasks(status="success")
        assert [t.task_id for t in page.tasks] == [task_id]
    assert worker_processes.stop(worker) == 0
    worker_spans = json.loads(out.read_text())

    send = _one(_finished(spans), "send default")
    assert send["kind"] == "PRODUCER"
    assert send["parent_id"] is None
    assert send["attributes"] == {
        "messaging.system": "sitq",
        "messaging.destination.name": "default",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.message.id": task_id,
        "messaging.sitq.function": "tests.conformance.tasks.add",
    }
    assert send["status"] == "UNSET"
    process = _one(worker_spans, "process default")
    _child_of(process, send)
    assert process["links"] == [send["span_id"]]
    _consumer_attributes(process, task_id, "default", "tests.conformance.tasks.add", 1)
    assert process["attributes"]["messaging.sitq.outcome"] == "succeeded"
    assert process["status"] == "UNSET"
    assert process["events"] == []


# -- failures, retries, timeouts ------------------------------------------------------------


async def test_a_failure_records_the_exception_and_status_error(
    spans: InMemorySpanExporter,
) -> None:
    backend = MemoryBackend()
    queue = TaskQueue(backend)
    task_id = await queue.enqueue(tasks.fail, "the disk is full")
    await _run_until_done(AsyncWorker(backend, poll_interval=0.05), queue, task_id)

    recorded = _finished(spans)
    process = _one(recorded, "process default")
    _child_of(process, _one(recorded, "send default"))
    _consumer_attributes(process, task_id, "default", "tests.conformance.tasks.fail", 1)
    assert process["status"] == "ERROR"
    assert process["description"] == "ValueError: the disk is full"
    assert process["attributes"]["error.type"] == "ValueError"
    assert process["attributes"]["messaging.sitq.outcome"] == "failed"
    (event,) = process["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ValueError"
    assert event["attributes"]["exception.message"] == "the disk is full"
    assert "raise ValueError(message)" in event["attributes"]["exception.stacktrace"]


async def test_a_retry_and_a_timeout_are_marked(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    backend = MemoryBackend()
    queue = TaskQueue(backend)
    retried = await queue.options(
        retry=RetryPolicy(max_attempts=2, backoff=FixedBackoff(0.05))
    ).enqueue(tasks.flaky, str(tmp_path), "flaky", 1)
    timed_out = await queue.options(timeout=0.2).enqueue(tasks.sleep_async, 30)
    worker = AsyncWorker(backend, poll_interval=0.05)
    await _run_until_done(worker, queue, retried, timed_out)

    recorded = _finished(spans)
    send = _one(recorded, "send default", **{"messaging.message.id": retried})
    first = _one(
        recorded,
        "process default",
        **{"messaging.sitq.attempt": 1, "messaging.message.id": retried},
    )
    second = _one(
        recorded,
        "process default",
        **{"messaging.sitq.attempt": 2, "messaging.message.id": retried},
    )
    for attempt in (first, second):
        _child_of(attempt, send)
    assert first["status"] == "ERROR"
    assert first["attributes"]["messaging.sitq.outcome"] == "retrying"
    assert 0 <= first["attributes"]["messaging.sitq.retry_in"] <= 0.05
    assert first["attributes"]["error.type"] == "ConnectionError"
    (event,) = first["events"]
    assert event["attributes"]["exception.type"] == "ConnectionError"
    assert event["attributes"]["exception.message"] == "attempt 1 fails"
    assert second["status"] == "UNSET"
    assert second["attributes"]["messaging.sitq.outcome"] == "succeeded"

    late = _one(recorded, "process default", **{"messaging.message.id": timed_out})
    assert late["status"] == "ERROR"
    assert late["attributes"]["messaging.sitq.outcome"] == "timed_out"
    assert late["attributes"]["messaging.sitq.timed_out"] is True
    (event,) = late["events"]
    assert event["attributes"]["exception.type"] == "TimeoutError"
    assert event["attributes"]["exception.message"] == "task exceeded its timeout of 0.2 s"


async def test_a_failed_enqueue_records_its_exception(spans: InMemorySpanExporter) -> None:
    queue = TaskQueue(MemoryBackend())
    with pytest.raises(ConfigurationError):
        await queue.enqueue(tasks.add, 1)  # one argument short
    send = _one(_finished(spans), "send default")
    assert send["status"] == "ERROR"
    assert send["attributes"]["error.type"] == "sitq.errors.ConfigurationError"
    (event,) = send["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "sitq.errors.ConfigurationError"


# -- every way to enqueue -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["enqueue", "enqueue_at", "enqueue_in", "enqueue_many"])
async def test_every_enqueue_records_a_send_span_that_its_runs_continue(
    spans: InMemorySpanExporter, how: str
) -> None:
    backend = MemoryBackend()
    queue = TaskQueue(backend, queue="mail")
    if how == "enqueue":
        ids = [await queue.enqueue(tasks.add, 1, 2)]
    elif how == "enqueue_at":
        ids = [await queue.enqueue_at(datetime.now(UTC), tasks.add, 1, 2)]
    elif how == "enqueue_in":
        ids = [await queue.enqueue_in(0.0, tasks.add, 1, 2)]
    else:
        ids = await queue.enqueue_many([(tasks.add, (1, 2))] * 3)
    await _run_until_done(AsyncWorker(backend, queues=["mail"], poll_interval=0.05), queue, *ids)

    recorded = _finished(spans)
    send = _one(recorded, "send mail")
    assert send["kind"] == "PRODUCER"
    if how == "enqueue_many":
        assert send["attributes"]["messaging.batch.message_count"] == 3
        assert "messaging.message.id" not in send["attributes"]
    else:
        assert "messaging.batch.message_count" not in send["attributes"]
        assert send["attributes"]["messaging.message.id"] == ids[0]
    for task_id in ids:
        process = _one(recorded, "process mail", **{"messaging.message.id": task_id})
        _child_of(process, send)
        _consumer_attributes(process, task_id, "mail", "tests.conformance.tasks.add", 1)


# -- a task that enqueues another -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "enqueuer"),
    [
        ("async", tracing_tasks.enqueue_leaf_async),  # on the worker's loop
        ("async", tracing_tasks.enqueue_leaf_sync),  # in one of its threads
        ("thread", tracing_tasks.enqueue_leaf_sync),
        ("thread", tracing_tasks.enqueue_leaf_async),  # under the thread's own loop
        ("process", tracing_tasks.enqueue_leaf_sync),
        ("process", tracing_tasks.enqueue_leaf_async),
    ],
)
async def test_a_task_that_enqueues_another_continues_the_trace(
    spans: InMemorySpanExporter, tmp_path: Path, kind: str, enqueuer: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'chain.db'}"
    worker = WORKER_KINDS[kind](url, concurrency=2, poll_interval=0.05, cron=False)
    async with TaskQueue(url) as queue:
        first = await queue.enqueue(enqueuer, url, "default")
        await worker.start()
        try:
            leaf = await queue.get_value(first, timeout=60)
            assert await queue.get_value(leaf, timeout=60) == "leaf"
        finally:
            await worker.stop()

    recorded = _finished(spans)
    send = _one(recorded, "send default", **{"messaging.message.id": first})
    outer = _one(recorded, "process default", **{"messaging.message.id": first})
    inner = _one(recorded, "process default", **{"messaging.message.id": leaf})
    _child_of(outer, send)
    if kind == "process":
        # The worker process has no tracer provider of its own: the enqueue there records no
        # span, and passes on the context it runs in, its parent's CONSUMER span.
        assert [s["name"] for s in recorded].count("send default") == 1
        _child_of(inner, outer)
    else:
        send_leaf = _one(recorded, "send default", **{"messaging.message.id": leaf})
        _child_of(send_leaf, outer)
        _child_of(inner, send_leaf)
    _consumer_attributes(inner, leaf, "default", "tests.tracing_tasks.leaf", 1)


# -- stored contexts a worker cannot use ----------------------------------------------------


@pytest.mark.parametrize(
    "stored",
    ['{"traceparent":"00-garbage"}', "[1,2]", '{"traceparent":7}', "{"],
)
async def test_a_damaged_stored_context_runs_the_task_in_a_trace_of_its_own(
    spans: InMemorySpanExporter, stored: str
) -> None:
    backend = MemoryBackend()
    queue = TaskQueue(backend)
    await queue.connect()
    now = time.time()
    task = NewTask(
        id="damaged",
        queue="default",
        payload=queue.serializer.dumps_call(tasks.add, (1, 2), {}),
        options=TaskOptions().engine_options(stored),
        priority=0,
        eta=now,
        enqueued_at=now,
        result_ttl=60.0,
        function="tests.conformance.tasks.add",
    )
    await backend.enqueue([task])
    await _run_until_done(AsyncWorker(backend, poll_interval=0.05), queue, "damaged")

    assert await queue.get_value("damaged") == 3
    process = _one(_finished(spans), "process default")
    assert process["parent_id"] is None
    assert process["links"] == []


# -- without the extra ----------------------------------------------------------------------

_HIDE_OPENTELEMETRY = """
import importlib.abc, sys

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
try:
    import opentelemetry.trace
except ImportError:
    pass
else:
    raise SystemExit("the blocker let opentelemetry through")
"""

_RUN_WITHOUT_OPENTELEMETRY = """
import asyncio
import sitq
from sitq.observe import tracing
from tests.conformance import tasks

async def main(url, traced):
    async with sitq.TaskQueue(url) as queue:
        own = await queue.enqueue(tasks.add, 1, 2)
        worker = sitq.AsyncWorker(url, poll_interval=0.05, cron=False)
        await worker.start()
        try:
            assert await queue.get_value(own, timeout=60) == 3
            assert await queue.get_value(traced, timeout=60) == 5
        finally:
            await worker.stop()

asyncio.run(main(sys.argv[1], sys.argv[2]))
assert tracing._looked and tracing._otel is None, "sitq never looked for OpenTelemetry"
loaded = sorted(m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry."))
assert not loaded, loaded
print("ran without opentelemetry")
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new Python process with this checkout importable (killed if it
    runs past its timeout)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_without_opentelemetry_sitq_enqueues_and_runs_and_imports_none_of_it(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    # A task enqueued here, with a trace context, which the worker without OpenTelemetry runs.
    async with TaskQueue(url) as queue:
        traced = await queue.enqueue(tasks.add, 2, 3)
    assert _one(_finished(spans), "send default")["attributes"]["messaging.message.id"] == traced
    done = _python(_HIDE_OPENTELEMETRY + _RUN_WITHOUT_OPENTELEMETRY, url, traced)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "ran without opentelemetry"


def test_importing_sitq_imports_no_opentelemetry_module_when_it_is_installed() -> None:
    code = """
import importlib.util, sys
import sitq, sitq.worker, sitq.cli, sitq.observe.tracing
loaded = sorted(m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry."))
assert not loaded, loaded
assert importlib.util.find_spec("opentelemetry.trace") is not None, "not installed"
print("nothing imported")
"""
    done = _python(code)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "nothing imported"


async def test_without_a_tracer_provider_an_enqueue_stores_no_context() -> None:
    # The extra is installed, but no provider is set and no span is current.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    backend = MemoryBackend()
    queue = TaskQueue(backend)
    await queue.enqueue(tasks.add, 1, 2)
    (claim,) = await backend.claim(["default"], 1, "w", 30.0)
    assert claim.options == TaskOptions().engine_options()


async def test_with_a_provider_the_context_is_stored_after_the_options(
    spans: InMemorySpanExporter,
) -> None:
    backend = MemoryBackend()
    queue = TaskQueue(backend, timeout=5.0)
    await queue.enqueue(tasks.add, 1, 2)
    (claim,) = await backend.claim(["default"], 1, "w", 30.0)
    stored = json.loads(claim.options)
    send = _one(_finished(spans), "send default")
    (traceparent,) = stored["trace"].values()
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, trace_id, span_id) == ("00", send["trace_id"], send["span_id"])
    assert int(flags, 16) & 1, "sampled"
    # What the worker reads of them is what was set.
    assert parse_engine_options(claim.options) == parse_engine_options(
        TaskOptions(timeout=5.0).engine_options()
    )
