"""OpenTelemetry traces of enqueues and task runs, with the ``sitq[otel]`` extra
(``opentelemetry-api``); see docs/operating.md, Traces.

With a tracer provider configured, an enqueue records a ``PRODUCER`` span ``send <queue>`` and
stores its W3C trace context (``traceparent``, ``tracestate``) in the task's options; the worker
runs the task inside a ``CONSUMER`` span ``process <queue>`` whose parent is that context, and
makes it current while the task runs, so that what the task does (an enqueue included) joins the
trace. The names and attributes follow the OpenTelemetry messaging semantic conventions.

Nothing here imports OpenTelemetry until the first enqueue or the first task, and then only if
it is installed; whether it is, is remembered. Without it, or without a tracer provider (and no
trace context to pass on), each enqueue and each task pays one or two function calls.
"""

from __future__ import annotations

import json
import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sitq.models import Claim, Finish, Release, Reschedule, Settlement, TaskStatus
from sitq.options import stored_trace

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from sitq._task import Outcome

__all__ = [
    "Processing",
    "Sending",
    "current_carrier",
    "processing",
    "remote_parent",
    "sending",
]

log = logging.getLogger("sitq.tracing")

SYSTEM = "sitq"
"""``messaging.system`` of every span."""
SEND = "send"
PROCESS = "process"

_otel: _Otel | None = None
"""The loaded :class:`_Otel`; ``None`` before the first enqueue or task asked for it, or once
OpenTelemetry was found missing."""
_looked = False
"""Whether OpenTelemetry was looked for (it is, once)."""


def _load() -> _Otel | None:
    """Import OpenTelemetry (once): the :class:`_Otel` that uses it, or ``None`` if it is not
    installed (or cannot be imported: then a warning says why, once)."""
    global _otel, _looked
    _looked = True
    try:
        _otel = _Otel()
    except ImportError:
        _otel = None
    except Exception as exc:
        _otel = None
        log.warning("OpenTelemetry cannot be imported (%r): sitq records no traces", exc)
    return _otel


def _loaded() -> _Otel | None:
    return _otel if _looked else _load()


class _Otel:
    """OpenTelemetry's API, imported, and the tracer of the provider configured now."""

    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.context = context
        self.trace = trace
        self.link = Link
        self.producer = SpanKind.PRODUCER
        self.consumer = SpanKind.CONSUMER
        self.status = Status
        self.error = StatusCode.ERROR
        self.propagator = TraceContextTextMapPropagator()
        self.unset = trace.ProxyTracerProvider
        self._provider: object = None
        self._tracer: Tracer | None = None
        # Asked once now, so that a provider named by OTEL_PYTHON_TRACER_PROVIDER is set.
        trace.get_tracer_provider()
        # Whether a provider is set is then read from the global that ``set_tracer_provider``
        # sets (one attribute read per enqueue and per task, where ``get_tracer_provider()``
        # would look the environment variable up each time); any other version of the API
        # that lacks it is asked through ``get_tracer_provider()``.
        self._set_provider = "_TRACER_PROVIDER" if hasattr(trace, "_TRACER_PROVIDER") else None

    def tracer(self) -> Tracer | None:
        """sitq's tracer from the global tracer provider, or ``None`` while none is set."""
        if self._set_provider is not None:
            provider = getattr(self.trace, self._set_provider)
            if provider is None:
                return None
        else:
            provider = self.trace.get_tracer_provider()
            if isinstance(provider, self.unset):
                return None
        if provider is not self._provider:
            from sitq import __version__

            self._tracer = provider.get_tracer("sitq", __version__)
            self._provider = provider
        return self._tracer

    def carrier(self, context: Context | None = None) -> dict[str, str]:
        """The W3C headers of the span current in ``context`` (by default the current
        context; empty when it has none)."""
        if context is None:
            context = self.context.get_current()
            if not context:
                return {}  # nothing at all is current: the common case, made cheap
        headers: dict[str, str] = {}
        self.propagator.inject(headers, context)
        return headers

    def extract(self, headers: dict[str, str]) -> Context | None:
        """The context with the span those headers name as its (remote) span, or ``None``
        for headers that name none."""
        context = self.propagator.extract(headers)
        span = self.trace.get_current_span(context)
        return context if span.get_span_context().is_valid else None


def _trace_text(headers: dict[str, str]) -> str | None:
    return json.dumps(headers, separators=(",", ":")) if headers else None


def _headers(text: str | None) -> dict[str, str] | None:
    """Stored trace context text back as headers; ``None`` for text that is not a JSON object
    of strings (a damaged record's: the task then runs without a parent span)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        return None
    return data


# -- enqueue --------------------------------------------------------------------------------


class Sending:
    """One enqueue's ``PRODUCER`` span (or, where no tracer provider is set, the trace context
    current at the call, passed on as it is). Use it as a context manager around the enqueue:
    the span is current meanwhile, records the exception if one escapes, and ends at the exit.
    """

    __slots__ = ("_otel", "_span", "_token", "trace")

    def __init__(self, otel: _Otel, span: Span | None, trace: str | None) -> None:
        self._otel = otel
        self._span = span
        self._token: Token[Context] | None = None
        self.trace = trace
        """The trace context to store with each task (JSON object text), or ``None``."""

    def __enter__(self) -> Sending:
        if self._span is not None:
            context = self._otel.trace.set_span_in_context(self._span)
            self._token = self._otel.context.attach(context)
        return self

    def sent(self, ids: list[str], function: str) -> None:
        """The ids of the tasks stored, and the function of the one task if there is one."""
        span = self._span
        if span is not None and len(ids) == 1:
            span.set_attribute("messaging.message.id", ids[0])
            span.set_attribute("messaging.sitq.function", function)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:
            return
        if self._token is not None:
            self._otel.context.detach(self._token)
        if exc is not None:
            span.record_exception(exc)
            span.set_attribute("error.type", _type_name(type(exc)))
            span.set_status(self._otel.status(self._otel.error, f"{type(exc).__name__}: {exc}"))
        span.end()


def sending(queue: str, count: int, batch: bool) -> Sending | None:
    """What an enqueue of ``count`` tasks to ``queue`` records and stores, or ``None`` when
    there is nothing to record or pass on (OpenTelemetry missing, or no tracer provider and
    no trace context current). ``batch``: the call was ``enqueue_many``."""
    otel = _otel if _looked else _load()
    if otel is None:
        return None
    try:
        return _sending(otel, queue, count, batch)
    except Exception:
        log.exception("starting the span of an enqueue failed; the tasks carry no trace")
        return None


def _sending(otel: _Otel, queue: str, count: int, batch: bool) -> Sending | None:
    tracer = otel.tracer()
    if tracer is None:
        # No SDK here, but a context may be current (a task run in a worker process): pass it
        # on, so that what this enqueues continues that trace.
        trace = _trace_text(otel.carrier())
        return None if trace is None else Sending(otel, None, trace)
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.destination.name": queue,
        "messaging.operation.type": SEND,
        "messaging.operation.name": SEND,
    }
    if batch:
        attributes["messaging.batch.message_count"] = count
    span = tracer.start_span(f"{SEND} {queue}", kind=otel.producer, attributes=attributes)
    trace = _trace_text(otel.carrier(otel.trace.set_span_in_context(span)))
    return Sending(otel, span, trace)


# -- running a task -------------------------------------------------------------------------


class Processing:
    """A task run's ``CONSUMER`` span (or, where no tracer provider is set, the stored trace
    context alone). ``with`` it around the run to make it current; :meth:`end` records how the
    attempt ended."""

    __slots__ = ("_context", "_otel", "_span", "_token", "outcome")

    def __init__(self, otel: _Otel, span: Span | None, context: Context) -> None:
        self._otel = otel
        self._span = span
        self._context = context
        self._token: Token[Context] | None = None
        self.outcome: Outcome | None = None
        """How the task's code ended, once it has (set by the worker)."""

    def __enter__(self) -> Processing:
        self._token = self._otel.context.attach(self._context)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._otel.context.detach(self._token)

    def end(self, settlement: Settlement | None, stop: object, *, timed_out: bool) -> None:
        """Record the attempt's outcome (``settlement``, or why it was stopped) and end the
        span: a failure, a retry or a timeout as an ``exception`` event and status ERROR."""
        span = self._span
        if span is None:
            return
        try:
            self._end(span, settlement, stop, timed_out)
        except Exception:
            log.exception("ending the span of a task failed")

    def _end(
        self, span: Span, settlement: Settlement | None, stop: object, timed_out: bool
    ) -> None:
        outcome = self.outcome
        failed = outcome is not None and not outcome.ok and settlement is not None
        if failed:
            assert outcome is not None
            _record_outcome(span, outcome)
        if timed_out:
            span.set_attribute("messaging.sitq.timed_out", True)
        word, error = _describe(settlement, stop, timed_out)
        span.set_attribute("messaging.sitq.outcome", word)
        if isinstance(settlement, Reschedule):
            span.set_attribute("messaging.sitq.retry_in", max(settlement.eta - time.time(), 0.0))
        if error is not None:
            span.set_status(self._otel.status(self._otel.error, error))
        span.end()


def _describe(
    settlement: Settlement | None, stop: object, timed_out: bool
) -> tuple[str, str | None]:
    """The outcome's word (as the worker's log lines name it) and the error for a span whose
    status is ERROR (``None`` otherwise)."""
    if isinstance(settlement, Finish):
        if settlement.status is TaskStatus.SUCCESS:
            return "succeeded", None
        if settlement.status is TaskStatus.CANCELLED:
            return "cancelled", None
        error = settlement.error or "failed"
        return ("timed_out" if timed_out else "failed"), error
    if isinstance(settlement, Reschedule):
        return "retrying", settlement.error or "failed"
    if isinstance(settlement, Release):
        return ("rate_limited" if settlement.delay > 0 else "released"), None
    reason = getattr(stop, "value", None)
    if reason == "lost":
        return "lost", "the worker lost the task's lease: another claim runs it"
    return "abandoned", None


def _record_outcome(span: Span, outcome: Outcome) -> None:
    """The ``exception`` event ``record_exception`` would make, from an outcome (the exception
    itself may have been raised in another thread or process)."""
    module, _, qualname = (outcome.exc_types[0] if outcome.exc_types else ":Exception").partition(
        ":"
    )
    name = qualname if module in ("", "builtins") else f"{module}.{qualname}"
    error = outcome.error or ""
    head = qualname + ": "
    if error.startswith(head):
        message = error[len(head) :]
    elif error == qualname:
        message = ""
    else:
        message = error
    span.add_event(
        "exception",
        {
            "exception.type": name,
            "exception.message": message,
            "exception.stacktrace": outcome.traceback or "",
        },
    )
    span.set_attribute("error.type", name)


def _type_name(cls: type[BaseException]) -> str:
    module = cls.__module__
    return cls.__qualname__ if module in ("", "builtins") else f"{module}.{cls.__qualname__}"


def processing(claim: Claim, worker_id: str) -> Processing | None:
    """The span to run a claimed task in, or ``None`` when there is nothing to record or pass
    on (OpenTelemetry missing, or no tracer provider and no trace context stored)."""
    otel = _otel if _looked else _load()
    if otel is None:
        return None
    try:
        return _processing(otel, claim, worker_id)
    except Exception:
        log.exception("starting the span of task %s failed; it runs without one", claim.task_id)
        return None


def _processing(otel: _Otel, claim: Claim, worker_id: str) -> Processing | None:
    tracer = otel.tracer()
    headers = _headers(stored_trace(claim.options))
    parent = None if headers is None else otel.extract(headers)
    if tracer is None:
        # No SDK in this worker: the task still runs in the enqueuer's trace, so that what it
        # enqueues continues it.
        return None if parent is None else Processing(otel, None, parent)
    links = None
    if parent is not None:
        links = [otel.link(otel.trace.get_current_span(parent).get_span_context())]
    span = tracer.start_span(
        f"{PROCESS} {claim.queue}",
        # A task enqueued without a trace context starts a trace of its own (never a child
        # of whatever the worker's own code has current).
        context=parent if parent is not None else otel.context.Context(),
        kind=otel.consumer,
        links=links,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.destination.name": claim.queue,
            "messaging.message.id": claim.task_id,
            "messaging.operation.type": PROCESS,
            "messaging.operation.name": PROCESS,
            "messaging.client.id": worker_id,
            "messaging.sitq.function": claim.function,
            "messaging.sitq.attempt": claim.attempts,
        },
    )
    return Processing(otel, span, otel.trace.set_span_in_context(span, parent))


def current_carrier() -> dict[str, str] | None:
    """The W3C headers of the span current here, to hand to a worker process with its task;
    ``None`` when there is none (or OpenTelemetry was never loaded)."""
    otel = _otel
    if otel is None:
        return None
    return otel.carrier() or None


class _RemoteParent:
    __slots__ = ("_context", "_otel", "_token")

    def __init__(self, otel: _Otel, context: Context) -> None:
        self._otel = otel
        self._context = context
        self._token: Token[Context] | None = None

    def __enter__(self) -> None:
        self._token = self._otel.context.attach(self._context)

    def __exit__(self, *exc: object) -> None:
        self._otel.context.detach(self._token)


class _Nothing:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NOTHING = _Nothing()


def remote_parent(headers: object) -> _RemoteParent | _Nothing:
    """A context manager that makes the span those W3C headers name current (as a
    non-recording span), for a task a worker process runs for its parent; it does nothing
    for ``None`` or headers that name no span."""
    if not isinstance(headers, dict) or not headers:
        return _NOTHING
    otel = _loaded()
    if otel is None:
        return _NOTHING
    context = otel.extract({str(k): str(v) for k, v in headers.items()})
    return _NOTHING if context is None else _RemoteParent(otel, context)
