"""Hostile bytes against the serializers (property-based, with hypothesis).

Whatever bytes reach a serializer — arbitrary, truncated, altered, oversized, of the wrong kind —
reading them ends in a value or in ``SerializationError`` with a message, never in another
exception and never in a hang (hypothesis' deadline catches a slow example). A serializer with a
secret never unpickles bytes that are not signed with one of its keys, however they were
altered, and ``load_call`` (what every executor runs first) turns every failure into a
permanent failed outcome that starts with ``cannot load task``.
"""

from __future__ import annotations

import asyncio
import json
import pickle
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sitq import SerializationError, TaskQueue
from sitq._task import Outcome, load_call
from sitq.serializers import JsonSerializer, PickleSerializer, Serializer
from tests.conformance import tasks

KEY = b"k" * 32
OLD = b"o" * 32
FOREIGN = b"f" * 32
SETTINGS = settings(
    max_examples=80,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)

UNPICKLED: list[str] = []


def _unpickled(label: str) -> str:
    UNPICKLED.append(label)
    return label


class Tripwire:
    """Unpickling this appends to ``UNPICKLED``: proof that a payload was unpickled."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_unpickled, (self.label,))


def _reads(serializer: Serializer, data: Any) -> None:
    """Read ``data`` as a value and as a call: a result or SerializationError with a message."""
    for read in (serializer.loads, serializer.loads_call):
        message = "(read)"
        try:
            read(data)
        except SerializationError as exc:
            message = str(exc)
        assert message, "a SerializationError must say what is wrong"


def _check_call(serializer: Serializer, data: bytes) -> None:
    try:
        func, args, kwargs = serializer.loads_call(data)
    except SerializationError as exc:
        message = str(exc)
    else:
        assert callable(func) and isinstance(args, tuple) and isinstance(kwargs, dict)
        return
    assert message, "a SerializationError must say what is wrong"


def _valid_payloads(serializer: Serializer) -> list[bytes]:
    return [
        serializer.dumps_call(tasks.add, (1, 2), {}),
        serializer.dumps_call(tasks.record, ("/tmp", "x"), {"sleep": 0.0}),
        serializer.dumps({"a": [1, 2.5, "three", None]}),
    ]


SERIALIZERS = [
    PickleSerializer(),
    PickleSerializer(secret=KEY),
    PickleSerializer(secret=[KEY, OLD]),
    JsonSerializer(),
    JsonSerializer(secret=[KEY, OLD], modules=("tests.conformance",)),
]
IDS = ["pickle", "pickle-signed", "pickle-rotating", "json", "json-signed-allow-list"]


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=IDS)
@SETTINGS
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_give_a_value_or_a_serialization_error(
    serializer: Serializer, data: bytes
) -> None:
    _reads(serializer, data)
    _check_call(serializer, data)


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=IDS)
@SETTINGS
@given(which=st.integers(0, 2), cut=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_truncated_or_altered_payloads_fail_cleanly(
    serializer: Serializer, which: int, cut: int, flip: int
) -> None:
    payload = _valid_payloads(serializer)[which]
    cut %= len(payload)
    _reads(serializer, payload[:cut])
    altered = bytearray(payload)
    altered[cut] ^= flip
    _reads(serializer, bytes(altered))
    _reads(serializer, payload + bytes([flip]) * (cut % 64))


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=IDS)
@pytest.mark.parametrize(
    "data",
    ["text, not bytes", 12, 10**12, None, 3.5, ["a"], {"f": 1}, object()],
    ids=["str", "int", "huge-int", "None", "float", "list", "dict", "object"],
)
def test_wrong_types_are_refused_with_a_serialization_error(
    serializer: Serializer, data: Any
) -> None:
    # bytes(10**12) would try to allocate a terabyte: a reader must refuse, not convert.
    with pytest.raises(SerializationError, match="bytes"):
        serializer.loads(data)
    with pytest.raises(SerializationError, match="bytes"):
        serializer.loads_call(data)


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=IDS)
def test_oversized_and_deeply_nested_payloads_fail_cleanly(serializer: Serializer) -> None:
    _reads(serializer, b"\x80\x05" + b"(" * 1_000_000)  # a million MARKs, never closed
    _reads(serializer, b"[" * 1_000_000 + b"]" * 1_000_000)  # JSON nested a million deep
    _reads(serializer, b"\x00" * 20_000_000)  # 20 MB of nothing


@pytest.mark.parametrize("serializer", SERIALIZERS[1:3], ids=IDS[1:3])
@SETTINGS
@given(
    label=st.text(max_size=20),
    cut=st.integers(0, 10_000),
    flip=st.integers(1, 255),
    extra=st.binary(max_size=64),
)
def test_signed_serializer_never_unpickles_altered_bytes(
    serializer: PickleSerializer, label: str, cut: int, flip: int, extra: bytes
) -> None:
    UNPICKLED.clear()
    signed = serializer.dumps(Tripwire(label))
    unsigned = PickleSerializer().dumps(Tripwire(label))
    cut %= len(signed)
    altered = bytearray(signed)
    altered[cut] ^= flip
    candidates = [
        signed[:cut],  # truncated (signature or body)
        bytes(altered),  # one byte changed anywhere: prefix, MAC or body
        signed + extra + b"\x00",  # something appended
        unsigned,  # never signed
        PickleSerializer(secret=FOREIGN).dumps(Tripwire(label)),  # signed with another key
        b"sitq-hmac1:" + extra,  # a prefix with no valid MAC
    ]
    for data in candidates:
        with pytest.raises(SerializationError) as caught:
            serializer.loads(data)
        message = str(caught.value)
        assert "refused without unpickling" in message or "signature" in message
    assert UNPICKLED == [], "a signed serializer unpickled bytes it could not verify"
    assert serializer.loads(signed) == label
    assert [label] == UNPICKLED


@pytest.mark.parametrize("kind", [PickleSerializer, JsonSerializer])
@SETTINGS
@given(
    keys=st.lists(st.binary(min_size=16, max_size=48), min_size=1, max_size=4, unique=True),
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=10,
    ),
)
def test_key_rotation_first_key_signs_every_key_verifies(
    kind: type[PickleSerializer | JsonSerializer], keys: list[bytes], value: Any
) -> None:
    rotating = kind(secret=keys)
    signed = rotating.dumps(value)
    assert kind(secret=keys[0]).loads(signed) == value
    for key in keys:
        assert rotating.loads(kind(secret=key).dumps(value)) == value
    outsider = b"z" * 40
    assume(outsider not in keys)
    with pytest.raises(SerializationError, match="matches none"):
        rotating.loads(kind(secret=outsider).dumps(value))
    if len(keys) > 1:
        with pytest.raises(SerializationError, match="matches none"):
            kind(secret=keys[1:]).loads(signed)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@SETTINGS
@given(value=JSON_VALUES)
def test_json_task_calls_of_any_shape_load_or_fail_cleanly(value: Any) -> None:
    serializer = JsonSerializer()
    _check_call(serializer, json.dumps(value).encode())
    _check_call(serializer, json.dumps({"f": value, "a": value, "k": value}).encode())


@pytest.mark.parametrize(
    "path",
    [
        "no_such_module_xyz:func",
        "tests.conformance.tasks:no_such_function",
        "tests.conformance.tasks",
        ":add",
        "tests.conformance.tasks:",
        "tests.conformance.tasks:DEFAULT.x.y",
        "\x00:\x00",
    ],
)
def test_json_call_naming_nothing_importable_fails_with_a_message(path: str) -> None:
    data = json.dumps({"f": path, "a": [], "k": {}}).encode()
    with pytest.raises(SerializationError) as caught:
        JsonSerializer().loads_call(data)
    assert repr(path) in str(caught.value)


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=IDS)
@SETTINGS
@given(data=st.binary(max_size=512))
def test_load_call_turns_every_unreadable_payload_into_a_permanent_failure(
    serializer: Serializer, data: bytes
) -> None:
    got = load_call(serializer, data)
    if isinstance(got, Outcome):
        assert not got.ok and got.permanent
        assert got.error is not None and got.error.startswith("cannot load task")


@pytest.mark.parametrize("serializer", SERIALIZERS, ids=IDS)
def test_load_call_of_a_payload_that_is_not_bytes_is_a_permanent_failure(
    serializer: Serializer,
) -> None:
    for data in ("a string", None, 10**12):
        got = load_call(serializer, data)  # type: ignore[arg-type]
        assert isinstance(got, Outcome) and got.permanent
        assert got.error is not None and "cannot load task" in got.error


@settings(max_examples=60, deadline=timedelta(seconds=2))
@given(size=st.integers(0, 3000), limit=st.integers(100, 2500))
def test_oversized_calls_are_refused_at_enqueue_exactly_above_the_limit(
    size: int, limit: int
) -> None:
    payload = PickleSerializer().dumps_call(tasks.add, ("y" * size, ""), {})

    async def enqueue() -> None:
        queue = TaskQueue("memory://", max_payload=limit)
        try:
            await queue.enqueue(tasks.add, "y" * size, "")
        finally:
            await queue.close()

    if len(payload) > limit:
        with pytest.raises(SerializationError, match=f"max_payload={limit:,}"):
            asyncio.run(enqueue())
    else:
        asyncio.run(enqueue())


def test_plain_pickle_reads_what_it_is_given() -> None:
    """Without a secret, bytes that are a pickle are unpickled: the documented risk."""
    UNPICKLED.clear()
    assert PickleSerializer().loads(pickle.dumps(Tripwire("unsigned"))) == "unsigned"
    assert UNPICKLED == ["unsigned"]
