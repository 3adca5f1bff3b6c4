"""Serializers: round trips of calls and values, and errors that name what cannot travel."""

from __future__ import annotations

import datetime
import functools
import json
import os.path
import pickle
import socket
import threading
from typing import Any

import pytest

from sitq.errors import ConfigurationError, SerializationError
from sitq.serializers import (
    JsonSerializer,
    PickleSerializer,
    function_path,
    import_path,
    serializer_from_name,
)

PICKLE = PickleSerializer()
JSON = JsonSerializer()


def add(a: int, b: int, *, c: int = 0) -> int:
    return a + b + c


async def async_add(a: int, b: int) -> int:
    return a + b


def run(call: tuple[Any, tuple[Any, ...], dict[str, Any]]) -> Any:
    func, args, kwargs = call
    return func(*args, **kwargs)


# -- PickleSerializer ----------------------------------------------------------------------


def test_pickle_round_trips_a_module_function_call() -> None:
    func, args, kwargs = PICKLE.loads_call(PICKLE.dumps_call(add, (1, 2), {"c": 3}))
    assert func is add
    assert args == (1, 2)
    assert kwargs == {"c": 3}


def test_pickle_round_trips_a_lambda() -> None:
    call = PICKLE.loads_call(PICKLE.dumps_call(lambda x: x * 10, (4,), {}))
    assert run(call) == 40


def test_pickle_round_trips_a_closure() -> None:
    offset = 100

    def shifted(x: int) -> int:
        return x + offset

    call = PICKLE.loads_call(PICKLE.dumps_call(shifted, (5,), {}))
    assert run(call) == 105


def test_pickle_round_trips_a_partial() -> None:
    call = PICKLE.loads_call(PICKLE.dumps_call(functools.partial(add, 1, c=10), (2,), {}))
    assert isinstance(call[0], functools.partial)
    assert run(call) == 13


def test_pickle_loads_call_returns_args_as_tuple_and_kwargs_as_dict() -> None:
    _, args, kwargs = PICKLE.loads_call(PICKLE.dumps_call(add, [1, 2], {"c": 3}))  # type: ignore[arg-type]
    assert args == (1, 2)
    assert type(args) is tuple
    assert type(kwargs) is dict


def test_pickle_round_trips_values() -> None:
    value = {"a": (1, 2.5, None), "b": {1, 2}, "when": datetime.date(2024, 1, 2), 3: b"x"}
    assert PICKLE.loads(PICKLE.dumps(value)) == value


def test_pickle_names_unpicklable_positional_argument() -> None:
    with socket.socket() as sock, pytest.raises(SerializationError) as info:
        PICKLE.dumps_call(add, ("fine", sock), {})
    message = str(info.value)
    assert "positional argument 1" in message
    assert "socket" in message


def test_pickle_names_unpicklable_keyword_argument() -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError, match=r"keyword argument 'x'") as info:
        PICKLE.dumps_call(add, (1,), {"ok": 2, "x": lock})
    assert "lock" in str(info.value).lower()
    assert "positional" not in str(info.value)


def test_pickle_dumps_unpicklable_value_raises_serialization_error() -> None:
    with pytest.raises(SerializationError, match="cannot be pickled"):
        PICKLE.dumps({"lock": threading.Lock()})


@pytest.mark.parametrize("garbage", [b"", b"not a pickle", b"\x80\x05garbage", b"\x00" * 16])
def test_pickle_loads_garbage_raises_serialization_error(garbage: bytes) -> None:
    with pytest.raises(SerializationError, match="cannot be unpickled"):
        PICKLE.loads(garbage)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ([1, 2], "not a task call"),
        ((add, (), {}, 4), "not a task call"),
        ("text", "not a task call"),
        ([42, (), {}], "not callable"),
        ([add, "ab", {}], "args must be a list"),
        ([add, (), [("c", 1)]], "kwargs a mapping"),
    ],
)
def test_pickle_loads_call_rejects_payloads_that_are_not_calls(obj: Any, match: str) -> None:
    with pytest.raises(SerializationError, match=match):
        PICKLE.loads_call(pickle.dumps(obj))


@pytest.mark.parametrize("protocol", [0, 1, pickle.HIGHEST_PROTOCOL + 1])
def test_pickle_rejects_unsupported_protocol(protocol: int) -> None:
    with pytest.raises(ConfigurationError, match="protocol"):
        PickleSerializer(protocol=protocol)


def test_pickle_honours_protocol() -> None:
    data = PickleSerializer(protocol=2).dumps(1)
    assert data[:2] == b"\x80\x02"


# -- JsonSerializer ------------------------------------------------------------------------


def test_json_carries_function_by_import_path() -> None:
    data = JSON.dumps_call(add, (1, 2), {"c": 3})
    assert json.loads(data) == {"f": f"{__name__}:add", "a": [1, 2], "k": {"c": 3}}


def test_json_round_trips_a_call_to_the_same_function() -> None:
    func, args, kwargs = JSON.loads_call(JSON.dumps_call(add, (1, 2), {"c": 3}))
    assert func is add
    assert args == (1, 2)
    assert kwargs == {"c": 3}


def test_json_round_trips_coroutine_functions_and_stdlib_functions() -> None:
    assert JSON.loads_call(JSON.dumps_call(async_add, (1, 2), {}))[0] is async_add
    assert JSON.loads_call(JSON.dumps_call(os.path.join, ("a", "b"), {}))[0] is os.path.join


def test_json_tuples_come_back_as_lists() -> None:
    _, args, kwargs = JSON.loads_call(JSON.dumps_call(add, ((1, 2),), {"t": (3,)}))
    assert args == ([1, 2],)
    assert kwargs == {"t": [3]}


def test_json_rejects_lambda_pointing_to_pickle() -> None:
    with pytest.raises(SerializationError, match="PickleSerializer") as info:
        JSON.dumps_call(lambda: None, (), {})
    assert "<lambda>" in str(info.value)


def test_json_rejects_nested_function_pointing_to_pickle() -> None:
    def nested() -> None:
        pass

    with pytest.raises(SerializationError, match="PickleSerializer") as info:
        JSON.dumps_call(nested, (), {})
    assert "<locals>" in str(info.value)


def test_json_rejects_main_module_function_pointing_to_pickle() -> None:
    def main_func() -> None:
        pass

    main_func.__module__ = "__main__"
    main_func.__qualname__ = "main_func"
    with pytest.raises(SerializationError, match="PickleSerializer") as info:
        JSON.dumps_call(main_func, (), {})
    assert "__main__:main_func" in str(info.value)


def test_json_rejects_partial_which_has_no_import_path() -> None:
    with pytest.raises(SerializationError, match="__qualname__"):
        JSON.dumps_call(functools.partial(add, 1), (2,), {})


def test_json_rejects_function_that_imports_back_to_something_else() -> None:
    def impostor(a: int, b: int) -> int:
        return 0

    impostor.__module__ = __name__
    impostor.__qualname__ = "add"
    with pytest.raises(SerializationError, match="does not import back"):
        JSON.dumps_call(impostor, (1, 2), {})


@pytest.mark.parametrize(
    ("args", "kwargs", "path"),
    [
        ((), {"when": datetime.datetime(2024, 1, 1)}, "kwargs['when']"),
        ((1, {2, 3}), {}, "args[1]"),
        ((), {"a": [1, {"b": object()}]}, "kwargs['a'][1]['b']"),
        ((b"bytes",), {}, "args[0]"),
    ],
)
def test_json_rejects_non_json_arguments_naming_their_path(
    args: tuple[Any, ...], kwargs: dict[str, Any], path: str
) -> None:
    with pytest.raises(SerializationError, match="not JSON serializable") as info:
        JSON.dumps_call(add, args, kwargs)
    assert path in str(info.value)


def test_json_datetime_error_names_the_type() -> None:
    with pytest.raises(SerializationError, match=r"datetime\.datetime"):
        JSON.dumps_call(add, (), {"when": datetime.datetime(2024, 1, 1)})


@pytest.mark.parametrize("key", [1, None, ("a", "b"), 2.5])
def test_json_rejects_non_string_dict_keys(key: Any) -> None:
    with pytest.raises(SerializationError, match="non-string key") as info:
        JSON.dumps_call(add, ({key: "v"},), {})
    assert "args[0]" in str(info.value)
    assert repr(key) in str(info.value)


def test_json_dumps_value_error_names_value() -> None:
    with pytest.raises(SerializationError, match=r"value\['x'\]"):
        JSON.dumps({"x": object()})


def test_json_round_trips_values() -> None:
    value = {"a": [1, 2.5, None, True, "é"], "b": {"c": []}}
    assert JSON.loads(JSON.dumps(value)) == value


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2, 3]",
        b'"text"',
        b"null",
        b'{"f": "os.path:join", "a": []}',
        b'{"f": 1, "a": [], "k": {}}',
        b'{"f": "os.path:join", "a": {}, "k": {}}',
        b'{"f": "os.path:join", "a": "ab", "k": {}}',
        b'{"f": "os.path:join", "a": [], "k": []}',
        b'{"f": "no_such_module_for_sitq_tests:f", "a": [], "k": {}}',
        b'{"f": "os.path:no_such_attribute", "a": [], "k": {}}',
        b'{"f": "os.path:join.nope", "a": [], "k": {}}',
        b'{"f": "os.path.join", "a": [], "k": {}}',
        b'{"f": ":join", "a": [], "k": {}}',
        b'{"f": "os.path:", "a": [], "k": {}}',
        b'{"f": "os:sep", "a": [], "k": {}}',
    ],
)
def test_json_loads_call_rejects_malformed_payloads(payload: bytes) -> None:
    with pytest.raises(SerializationError):
        JSON.loads_call(payload)


def test_json_loads_call_unknown_module_names_it() -> None:
    with pytest.raises(SerializationError, match="no_such_module_for_sitq_tests"):
        JSON.loads_call(b'{"f": "no_such_module_for_sitq_tests:f", "a": [], "k": {}}')


def test_json_loads_call_missing_attribute_names_it() -> None:
    with pytest.raises(SerializationError, match="no_such_attribute"):
        JSON.loads_call(b'{"f": "os.path:no_such_attribute", "a": [], "k": {}}')


def test_import_path_follows_dotted_qualname() -> None:
    assert import_path("os.path:join") is os.path.join
    assert import_path("datetime:datetime.fromtimestamp") == datetime.datetime.fromtimestamp


def test_function_path_of_a_module_function() -> None:
    assert function_path(add) == f"{__name__}:add"
    assert function_path(datetime.datetime) == "datetime:datetime"


# -- serializer_from_name ------------------------------------------------------------------


def test_serializer_from_name() -> None:
    assert isinstance(serializer_from_name("pickle"), PickleSerializer)
    assert isinstance(serializer_from_name("json"), JsonSerializer)
    assert serializer_from_name("json").name == "json"
    assert serializer_from_name("pickle").name == "pickle"


@pytest.mark.parametrize("name", ["yaml", "", "JSON", "Pickle"])
def test_serializer_from_name_rejects_unknown_names(name: str) -> None:
    with pytest.raises(ConfigurationError, match="'pickle' or 'json'") as info:
        serializer_from_name(name)
    assert repr(name) in str(info.value)


# -- edge cases that once slipped through ------------------------------------------------


def test_json_loads_call_relative_module_raises_serialization_error() -> None:
    with pytest.raises(SerializationError):
        JSON.loads_call(b'{"f": ".relative:f", "a": [], "k": {}}')


def test_json_dumps_circular_value_raises_serialization_error() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(SerializationError):
        JSON.dumps(cycle)


def test_json_dumps_call_circular_argument_raises_serialization_error() -> None:
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    with pytest.raises(SerializationError):
        JSON.dumps_call(add, (cycle,), {})


def test_json_loads_deeply_nested_payload_raises_serialization_error() -> None:
    with pytest.raises(SerializationError):
        JSON.loads(b"[" * 100_000 + b"]" * 100_000)
