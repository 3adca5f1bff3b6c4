"""sitq: an async-first task queue that is correct on every backend.

Enqueue a function, run it on workers, get its result, over SQLite (the embedded default),
PostgreSQL, Redis or NATS JetStream.
"""

from __future__ import annotations

from sitq.backends import backend_from_url
from sitq.backends.base import Backend
from sitq.backends.memory import MemoryBackend
from sitq.backends.nats import NATSBackend
from sitq.backends.postgres import PostgresBackend
from sitq.backends.redis import RedisBackend
from sitq.backends.sqlite import SQLiteBackend
from sitq.context import TaskContext, current_task
from sitq.cron import CronInfo
from sitq.errors import (
    BackendError,
    ConfigurationError,
    LockTimeout,
    MissingDependencyError,
    Retry,
    SerializationError,
    SitqError,
    TaskFailedError,
    TaskNotFound,
)
from sitq.locks import Lock
from sitq.models import QueueStats, Result, TaskId, TaskInfo, TaskPage, TaskStatus, WorkerInfo
from sitq.queue import TaskOptionsView, TaskQueue
from sitq.retry import ExponentialBackoff, FixedBackoff, RetryPolicy
from sitq.serializers import JsonSerializer, PickleSerializer, Serializer
from sitq.sync import SyncTaskQueue
from sitq.worker import AsyncWorker, ProcessWorker, ThreadWorker, Worker

__version__ = "0.1.0"

__all__ = [
    "AsyncWorker",
    "Backend",
    "BackendError",
    "ConfigurationError",
    "CronInfo",
    "ExponentialBackoff",
    "FixedBackoff",
    "JsonSerializer",
    "Lock",
    "LockTimeout",
    "MemoryBackend",
    "MissingDependencyError",
    "NATSBackend",
    "PickleSerializer",
    "PostgresBackend",
    "ProcessWorker",
    "QueueStats",
    "RedisBackend",
    "Result",
    "Retry",
    "RetryPolicy",
    "SQLiteBackend",
    "SerializationError",
    "Serializer",
    "SitqError",
    "SyncTaskQueue",
    "TaskContext",
    "TaskFailedError",
    "TaskId",
    "TaskInfo",
    "TaskNotFound",
    "TaskOptionsView",
    "TaskPage",
    "TaskQueue",
    "TaskStatus",
    "ThreadWorker",
    "Worker",
    "WorkerInfo",
    "__version__",
    "backend_from_url",
    "current_task",
]
