"""``sitq worker``: run a worker until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Sequence

from sitq._loop import LOOPS, resolve_loop
from sitq._loop import run as run_loop
from sitq.backends import backend_from_url, redact_url
from sitq.cli._common import add_url
from sitq.errors import ConfigurationError, MissingDependencyError
from sitq.observe.logs import LineHandler, configure
from sitq.observe.metrics import WorkerMetrics
from sitq.serializers import Serializer, serializer_from_name
from sitq.worker import PURGE_INTERVAL, WORKER_KINDS

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _env_list(name: str) -> list[str]:
    value = os.environ.get(name, "")
    return [item.strip() for item in value.split(",") if item.strip()]


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"sitq: {name}={value!r} is not a number") from None


def _env_port(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"sitq: {name}={value!r} is not a port number") from None


def _serializer(name: str) -> Serializer:
    # Comma-separated keys: the first signs, all verify. Never a flag: argv is visible.
    keys = _env_list("SITQ_SECRET")
    modules = _env_list("SITQ_JSON_MODULES")
    return serializer_from_name(name, secret=keys or None, modules=modules or None)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``worker`` command's options."""
    worker = sub.add_parser(
        "worker",
        help="run a worker until SIGINT/SIGTERM",
        description="Run a worker until SIGINT or SIGTERM, then shut down gracefully "
        "(a second SIGINT stops at once).",
    )
    add_url(worker)
    add_arguments(worker)


def add_arguments(worker: argparse.ArgumentParser) -> None:
    """Every option of ``sitq worker`` but the URL (``manage.py sitq_worker`` takes them too)."""
    worker.add_argument(
        "--kind",
        choices=sorted(WORKER_KINDS),
        default=os.environ.get("SITQ_KIND", "async"),
        help="where tasks run: the event loop, threads or processes (env SITQ_KIND; default async)",
    )
    worker.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=int(os.environ["SITQ_CONCURRENCY"]) if os.environ.get("SITQ_CONCURRENCY") else None,
        help="tasks at once (env SITQ_CONCURRENCY; default 10, or one per CPU for --kind process)",
    )
    worker.add_argument(
        "-q",
        "--queue",
        dest="queues",
        action="append",
        help="a queue to work on; repeat for several (env SITQ_QUEUES, "
        "comma-separated; default: default)",
    )
    worker.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import a module first, e.g. the one defining your tasks; repeat "
        "for several (env SITQ_IMPORTS)",
    )
    worker.add_argument(
        "--serializer",
        choices=["pickle", "json"],
        default=os.environ.get("SITQ_SERIALIZER", "pickle"),
        help="must match the enqueuing side (env SITQ_SERIALIZER)",
    )
    worker.add_argument(
        "--lease",
        type=float,
        default=_env_float("SITQ_LEASE", 30.0),
        help="seconds a claim holds without a heartbeat (env SITQ_LEASE)",
    )
    worker.add_argument(
        "--shutdown-timeout",
        type=float,
        default=_env_float("SITQ_SHUTDOWN_TIMEOUT", 30.0),
        help="seconds to let running tasks finish on shutdown (env SITQ_SHUTDOWN_TIMEOUT)",
    )
    worker.add_argument(
        "--poll-interval",
        type=float,
        default=_env_float("SITQ_POLL_INTERVAL", 1.0),
        help="longest idle wait between checks (env SITQ_POLL_INTERVAL)",
    )
    worker.add_argument(
        "--purge-interval",
        type=float,
        default=_env_float("SITQ_PURGE_INTERVAL", PURGE_INTERVAL),
        metavar="SECONDS",
        help="seconds between sweeps that remove expired results (env SITQ_PURGE_INTERVAL; "
        f"default {PURGE_INTERVAL:g})",
    )
    worker.add_argument(
        "--no-cron",
        dest="cron",
        action="store_false",
        default=os.environ.get("SITQ_CRON", "1").lower() not in ("0", "false", "no", "off"),
        help="do not drive cron schedules in this worker (env SITQ_CRON=0); any other "
        "worker may, and each tick still runs once",
    )
    worker.add_argument(
        "--connect-timeout",
        type=float,
        default=_env_float("SITQ_CONNECT_TIMEOUT", -1.0),
        metavar="SECONDS",
        help="while the backend is unreachable, retry connecting for this long, then exit "
        "(env SITQ_CONNECT_TIMEOUT; default: retry until it is up; 0 tries once)",
    )
    worker.add_argument(
        "--loop",
        choices=LOOPS,
        default=os.environ.get("SITQ_LOOP", "auto"),
        help="event loop: uvloop where installed (pip install 'sitq[uvloop]'), else asyncio "
        "(env SITQ_LOOP; default auto)",
    )
    worker.add_argument(
        "--log-level",
        default=os.environ.get("SITQ_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL, in any case (env SITQ_LOG_LEVEL; "
        "default INFO: one line per task outcome)",
    )
    worker.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("SITQ_LOG_FORMAT", "text"),
        help="text lines, or one JSON object per line (env SITQ_LOG_FORMAT; default text)",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=_env_port("SITQ_METRICS_PORT"),
        metavar="PORT",
        help="serve Prometheus metrics of the tasks this worker runs at "
        "http://HOST:PORT/metrics (0: any free port, shown at start; env SITQ_METRICS_PORT; "
        "needs pip install 'sitq[metrics]')",
    )
    worker.add_argument(
        "--metrics-host",
        default=os.environ.get("SITQ_METRICS_HOST", "127.0.0.1"),
        metavar="HOST",
        help="the address --metrics-port listens on (env SITQ_METRICS_HOST; default 127.0.0.1: "
        "this machine only)",
    )


def configure_logging(level_name: str, log_format: str) -> LineHandler:
    """Log to stderr at ``level_name`` (a standard level name, any case) as text or JSON."""
    level = level_name.strip().upper()
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise ConfigurationError(
            f"--log-level {level_name!r} is not a logging level: use one of "
            f"{', '.join(LOG_LEVELS)} (any case)"
        )
    return configure(level, log_format, sys.stderr)


def _import_modules(modules: Sequence[str]) -> None:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SystemExit(f"sitq: cannot import {module!r}: {exc}") from exc


def serve_metrics(port: int, host: str) -> WorkerMetrics:
    """Task metrics for ``sitq worker``, with the process's own (CPU, memory, file
    descriptors, garbage collection), served at ``http://host:port/metrics``."""
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"--metrics-port {port} is not a port: use 0 to 65535")
    try:
        import prometheus_client

        metrics = WorkerMetrics(prometheus_client.CollectorRegistry())
    except ImportError as exc:
        raise MissingDependencyError(
            "--metrics-port needs the 'prometheus_client' package, which is not installed: "
            "run  pip install 'sitq[metrics]'"
        ) from exc
    prometheus_client.ProcessCollector(registry=metrics.registry)
    prometheus_client.PlatformCollector(registry=metrics.registry)
    prometheus_client.GCCollector(registry=metrics.registry)
    metrics.serve(port, host)
    return metrics


async def _run_worker(
    args: argparse.Namespace, handler: LineHandler, metrics: WorkerMetrics | None
) -> None:
    backend = backend_from_url(args.url)
    kind = WORKER_KINDS[args.kind]
    queues = args.queues or _env_list("SITQ_QUEUES") or ["default"]
    concurrency = args.concurrency
    if concurrency is None and args.kind != "process":
        concurrency = 10
    worker = kind(
        backend,
        _serializer(args.serializer),
        concurrency,
        queues=queues,
        lease=args.lease,
        shutdown_timeout=args.shutdown_timeout,
        poll_interval=args.poll_interval,
        cron=args.cron,
        purge_interval=args.purge_interval,
        metrics=metrics if metrics is not None else False,
    )
    print(
        f"sitq {args.kind} worker {worker.worker_id} on {redact_url(backend.describe())}, "
        f"queues {', '.join(worker.queues)}, concurrency {worker.concurrency}, "
        f"{resolve_loop(args.loop)} loop",
        file=sys.stderr,
        flush=True,
    )
    if metrics is not None:
        where = f"[{args.metrics_host}]" if ":" in args.metrics_host else args.metrics_host
        print(f"metrics at http://{where}:{metrics.port}/metrics", file=sys.stderr, flush=True)
    flusher = asyncio.create_task(_flush_every(handler, handler.flush_interval))
    try:
        await worker.run(connect_timeout=None if args.connect_timeout < 0 else args.connect_timeout)
    finally:
        flusher.cancel()


async def _flush_every(handler: LineHandler, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        handler.flush()


def run(args: argparse.Namespace) -> int:
    """Run ``sitq worker`` with parsed arguments."""
    handler = configure_logging(args.log_level, args.log_format)
    metrics = None
    if args.metrics_port is not None:
        metrics = serve_metrics(args.metrics_port, args.metrics_host)
    try:
        _import_modules(args.imports or _env_list("SITQ_IMPORTS"))
        run_loop(_run_worker(args, handler, metrics), args.loop)
    finally:
        if metrics is not None:
            metrics.close()
        handler.flush()
    return 0
