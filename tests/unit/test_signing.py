"""PickleSerializer(secret=...): signed payloads, refused tampering, key rotation."""

from __future__ import annotations

import pytest

from sitq import ConfigurationError, PickleSerializer, SerializationError
from tests.conformance import tasks

KEY = b"k" * 32
OLD = b"o" * 32


def test_signed_round_trip_and_call() -> None:
    s = PickleSerializer(secret=KEY)
    assert s.signed
    assert s.loads(s.dumps({"a": 1})) == {"a": 1}
    func, args, kwargs = s.loads_call(s.dumps_call(tasks.add, (1,), {"y": 2}))
    assert func(*args, **kwargs) == 3
    closure = s.loads_call(s.dumps_call(lambda: 7, (), {}))[0]
    assert closure() == 7


def test_unsigned_payload_is_refused_without_unpickling(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (marker.touch, ())

    unsigned = PickleSerializer().dumps(Evil())
    with pytest.raises(SerializationError, match="not signed"):
        PickleSerializer(secret=KEY).loads(unsigned)
    assert not marker.exists()


def test_altered_or_foreign_payload_is_refused() -> None:
    s = PickleSerializer(secret=KEY)
    data = bytearray(s.dumps("hello"))
    data[-1] ^= 0xFF
    with pytest.raises(SerializationError, match="matches none"):
        s.loads(bytes(data))
    other = PickleSerializer(secret=b"x" * 32).dumps("hello")
    with pytest.raises(SerializationError, match="matches none"):
        s.loads(other)


def test_key_rotation_accepts_old_signs_new() -> None:
    old = PickleSerializer(secret=OLD)
    rotating = PickleSerializer(secret=[KEY, OLD])
    assert rotating.loads(old.dumps(1)) == 1
    new_payload = rotating.dumps(2)
    assert PickleSerializer(secret=KEY).loads(new_payload) == 2
    with pytest.raises(SerializationError):
        old.loads(new_payload)


def test_reader_without_secret_reads_signed_payloads() -> None:
    assert PickleSerializer().loads(PickleSerializer(secret=KEY).dumps([1, 2])) == [1, 2]


@pytest.mark.parametrize("secret", [b"short", "", [], [KEY, b"tiny"], 42])
def test_weak_or_bad_secrets_are_rejected(secret: object) -> None:
    with pytest.raises(ConfigurationError, match="16 bytes"):
        PickleSerializer(secret=secret)  # type: ignore[arg-type]


def test_repr_does_not_show_the_secret() -> None:
    assert "k" * 16 not in repr(PickleSerializer(secret=KEY))
