"""The task queues users would pick instead of sitq, on sitq's benchmark workloads.

Each peer is a class with the :class:`~benchmarks.peers._common.PeerBench` interface, in
``<library>_peer.py``; ``sitq_peer.py`` runs sitq itself through the same harness.
``PEERS`` (peers by backend) and ``BASELINES`` (sitq by backend) import the peer libraries
when first read, so that worker processes import only the one they run. The libraries live
in their own virtualenv:

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -e '.[all,uvloop]' -r benchmarks/requirements-peers.txt
    .venv-bench/bin/python -m benchmarks.peers.run --backend redis --tasks 200 --runs 1

``scripts/bench`` does all of that (and starts the services) in one command.
"""

from __future__ import annotations

import importlib
from typing import Any

from benchmarks.peers._common import PeerBench

__all__ = [
    "BASELINES",
    "BASELINE_CLASSES",
    "KIND_CLASSES",
    "PEERS",
    "PEER_CLASSES",
    "PeerBench",
    "load",
]

PEER_CLASSES: dict[str, list[str]] = {
    "sqlite": ["huey_peer:HueySqlite"],
    "postgres": [
        "procrastinate_peer:ProcrastinatePostgres",
        "pgqueuer_peer:PgQueuerPostgres",
        "saq_peer:SaqPostgres",
    ],
    "redis": [
        "arq_peer:ArqRedis",
        "saq_peer:SaqRedis",
        "taskiq_peer:TaskiqRedis",
        "rq_peer:RqRedis",
        "huey_peer:HueyRedis",
        "dramatiq_peer:DramatiqRedis",
        "celery_peer:CeleryRedis",
    ],
    "nats": ["taskiq_peer:TaskiqNats"],
}

BASELINE_CLASSES: dict[str, str] = {
    "sqlite": "sitq_peer:SitqSqlite",
    "postgres": "sitq_peer:SitqPostgres",
    "redis": "sitq_peer:SitqRedis",
    "nats": "sitq_peer:SitqNats",
}

# sitq's other worker kinds (drain and latency only; the ratios use the baseline, AsyncWorker).
KIND_CLASSES: dict[str, list[str]] = {
    backend: [f"{spec}Thread", f"{spec}Process"] for backend, spec in BASELINE_CLASSES.items()
}


def load(spec: str) -> type:
    """The class ``module:Class`` of this package."""
    module, _, name = spec.partition(":")
    cls: type = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    return cls


def __getattr__(name: str) -> Any:
    if name == "PEERS":
        return {b: [load(s) for s in specs] for b, specs in PEER_CLASSES.items()}
    if name == "BASELINES":
        return {b: load(spec) for b, spec in BASELINE_CLASSES.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
