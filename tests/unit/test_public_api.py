"""The public surface: what ``import sitq`` offers, documented and consistently named."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import sitq

CONTRACT_NAMES = [
    "TaskQueue",
    "SyncTaskQueue",
    "AsyncWorker",
    "ThreadWorker",
    "ProcessWorker",
    "SQLiteBackend",
    "MemoryBackend",
    "PickleSerializer",
    "JsonSerializer",
    "RetryPolicy",
    "ExponentialBackoff",
    "FixedBackoff",
    "Retry",
    "TaskStatus",
    "Result",
    "SitqError",
    "SerializationError",
    "BackendError",
    "TaskFailedError",
    "LockTimeout",
    "TaskNotFound",
    "backend_from_url",
]

ERROR_NAMES = [
    "SitqError",
    "ConfigurationError",
    "MissingDependencyError",
    "SerializationError",
    "BackendError",
    "TaskFailedError",
    "LockTimeout",
    "TaskNotFound",
]


@pytest.mark.parametrize("name", sitq.__all__)
def test_every_name_in_all_is_importable(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from sitq import {name}", namespace)
    assert namespace[name] is getattr(sitq, name)


def test_all_has_no_duplicates() -> None:
    assert len(set(sitq.__all__)) == len(sitq.__all__)


def test_all_is_sorted() -> None:
    assert sitq.__all__ == sorted(sitq.__all__)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from sitq import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(sitq.__all__)


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in sitq.__all__
        if inspect.isclass(getattr(sitq, n)) or inspect.isfunction(getattr(sitq, n))
    ],
)
def test_public_classes_and_functions_have_docstrings(name: str) -> None:
    obj = getattr(sitq, name)
    doc = obj.__doc__
    assert doc and doc.strip(), f"sitq.{name} has no docstring"
    if dataclasses.is_dataclass(obj):  # not the signature dataclass() writes when none is given
        assert not doc.startswith(f"{name}("), f"sitq.{name} has no docstring"


def test_public_api_has_at_least_the_contract_classes_and_functions() -> None:
    documented = [
        n
        for n in sitq.__all__
        if inspect.isclass(getattr(sitq, n)) or inspect.isfunction(getattr(sitq, n))
    ]
    assert set(CONTRACT_NAMES) <= set(documented)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_contract_names_exist_and_are_exported(name: str) -> None:
    assert name in sitq.__all__
    assert hasattr(sitq, name)


def test_version_is_a_string() -> None:
    assert isinstance(sitq.__version__, str)
    assert sitq.__version__.count(".") >= 1


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_errors_are_sitq_errors(name: str) -> None:
    cls = getattr(sitq, name)
    assert issubclass(cls, sitq.SitqError)
    assert issubclass(cls, Exception)


def test_retry_is_not_a_sitq_error() -> None:
    assert issubclass(sitq.Retry, Exception)
    assert not issubclass(sitq.Retry, sitq.SitqError)


def test_errors_also_subclass_the_matching_builtin() -> None:
    assert issubclass(sitq.ConfigurationError, ValueError)
    assert issubclass(sitq.MissingDependencyError, ImportError)
    assert issubclass(sitq.TaskNotFound, KeyError)
    assert issubclass(sitq.LockTimeout, TimeoutError)


def test_task_not_found_message_names_the_id() -> None:
    exc = sitq.TaskNotFound("abc")
    assert exc.task_id == "abc"
    assert "'abc'" in str(exc)


def test_task_failed_error_carries_its_details() -> None:
    exc = sitq.TaskFailedError("t1", "failed", "ValueError: boom", "Traceback ...")
    assert (exc.task_id, exc.status, exc.error) == ("t1", "failed", "ValueError: boom")
    assert str(exc).startswith("task t1 failed: ValueError: boom")
    assert "Remote traceback:\nTraceback ..." in str(exc)
    assert str(sitq.TaskFailedError("t2", "cancelled", None, None)) == (
        "task t2 cancelled: no error recorded"
    )


def test_task_status_success_formats_as_its_value() -> None:
    status = sitq.TaskStatus.SUCCESS
    assert str(status) == "success"
    assert f"{status}" == "success"
    assert f"{status:>8}" == " success"
    assert "%s" % status == "success"  # noqa: UP031 - %-formatting is what is tested
    assert status == "success"
