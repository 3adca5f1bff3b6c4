"""A worker process that records OpenTelemetry traces, for tests/integration/test_tracing.py.

    WorkerProcesses.call("tests.tracing_worker:main", URL, SPANS_JSON[, KIND])

It sets a tracer provider of its own (the OpenTelemetry SDK with an in-memory exporter), runs a
worker of ``KIND`` (``async`` by default) on ``URL`` until SIGTERM, then writes every span it
finished to ``SPANS_JSON``, as :func:`span_record` describes them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sitq.worker import WORKER_KINDS


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as plain data: ids as hex text, kind and status as names."""
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "description": span.status.description,
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "links": [f"{link.context.span_id:016x}" for link in span.links],
    }


async def _work(url: str, kind: str) -> None:
    worker = WORKER_KINDS[kind](url, concurrency=2, poll_interval=0.2, cron=False)
    await worker.run()


def main(url: str, out: str, kind: str = "async") -> None:
    """Run the worker with traces recorded; write its spans when it stops."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    asyncio.run(_work(url, kind))
    spans = [span_record(s) for s in exporter.get_finished_spans()]
    path = Path(out)
    path.with_suffix(".tmp").write_text(json.dumps(spans))
    path.with_suffix(".tmp").replace(path)
