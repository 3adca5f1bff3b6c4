"""``TaskId``: what enqueue returns is a ``str`` to every caller, and stores, pickles and
serializes as the plain string it is (its type parameter is for type checkers only; the types
themselves are checked by mypy in tests/typecheck)."""

from __future__ import annotations

import copy
import json
import pickle

import cloudpickle
import pytest

import sitq
from sitq import JsonSerializer, PickleSerializer, TaskId
from sitq.options import TaskOptions, check_task_id

TEXT = "0b6e4c1e-8f7f-4d43-a8ae-4d6f2b0b7c11"


def join(*parts: str, **named: str) -> str:
    return "".join(parts) + "".join(named.values())


def test_a_task_id_is_a_str_equal_to_its_text() -> None:
    task_id: TaskId[int] = TaskId(TEXT)
    assert isinstance(task_id, str) and isinstance(task_id, TaskId)
    assert task_id == TEXT and TEXT in [task_id] and hash(task_id) == hash(TEXT)
    assert {TEXT: 1}[task_id] == 1 and task_id in {TEXT} and TEXT in {task_id}
    assert repr(task_id) == repr(TEXT) and len(task_id) == len(TEXT)
    assert task_id.startswith("0b6e") and task_id.upper() == TEXT.upper()


def test_a_task_id_formats_and_encodes_as_plain_text() -> None:
    task_id: TaskId[int] = TaskId(TEXT)
    for text in (str(task_id), f"{task_id}", "%s" % task_id, f"{task_id:>40}".strip()):  # noqa: UP031
        assert text == TEXT and type(text) is str
    assert json.dumps(task_id) == json.dumps(TEXT)
    assert json.dumps({"id": task_id, "ids": [task_id]}) == json.dumps({"id": TEXT, "ids": [TEXT]})
    assert task_id.encode() == TEXT.encode()


def test_the_type_parameter_is_not_kept_at_run_time() -> None:
    task_id = TaskId[int](TEXT)
    assert type(task_id) is TaskId and task_id == TEXT
    assert not hasattr(task_id, "__dict__")  # no per-id attributes, no per-id dict


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_task_id_pickles_as_a_plain_str(protocol: int) -> None:
    data = pickle.dumps(TaskId(TEXT), protocol=protocol)
    assert b"sitq" not in data and b"TaskId" not in data
    loaded = pickle.loads(data)
    assert loaded == TEXT and type(loaded) is str


def test_cloudpickle_carries_a_task_id_as_a_plain_str() -> None:
    data = cloudpickle.dumps({"id": TaskId(TEXT)})
    assert b"TaskId" not in data
    loaded = pickle.loads(data)
    assert loaded == {"id": TEXT} and type(loaded["id"]) is str


def test_copies_of_a_task_id_are_the_task_id() -> None:
    task_id: TaskId[int] = TaskId(TEXT)
    assert copy.copy(task_id) is task_id and copy.deepcopy(task_id) is task_id
    assert copy.deepcopy({"id": task_id})["id"] is task_id


def test_a_task_id_passed_to_another_task_arrives_as_a_plain_str() -> None:
    """Chaining tasks by id: the payload names no sitq class, so any worker reads it."""
    pickled = PickleSerializer()
    payload = pickled.dumps_call(join, (TaskId(TEXT), "-next"), {"also": TaskId(TEXT)})
    assert b"TaskId" not in payload
    _, args, kwargs = pickled.loads_call(payload)
    assert args == (TEXT, "-next") and kwargs == {"also": TEXT}
    assert type(args[0]) is str and type(kwargs["also"]) is str

    as_json = JsonSerializer(modules=[__name__])
    assert as_json.dumps_call(join, (TaskId(TEXT), "x"), {}) == as_json.dumps_call(
        join, (TEXT, "x"), {}
    )


def test_an_explicit_task_id_given_as_a_task_id_is_kept_as_a_plain_str() -> None:
    assert type(check_task_id(TaskId(TEXT))) is str
    options = TaskOptions().merge(task_id=TaskId(TEXT))
    assert options.task_id == TEXT and type(options.task_id) is str


def test_task_id_is_exported_and_documented() -> None:
    assert sitq.TaskId is TaskId and "TaskId" in sitq.__all__
    assert TaskId.__doc__ is not None and "get_value" in TaskId.__doc__
