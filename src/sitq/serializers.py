"""How calls and results travel: :class:`PickleSerializer` (cloudpickle) and
:class:`JsonSerializer` (stdlib json, functions by import path).

A serializer turns a task call ``(func, args, kwargs)`` and a task's return value into bytes and
back. Whatever a serializer cannot carry fails at enqueue with :class:`SerializationError`, which
names the offending value, never later in a worker.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import importlib
import json
import pickle
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cloudpickle

from sitq.errors import ConfigurationError, SerializationError

TaskCall = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__module__}.{type(value).__qualname__} {text}"


def function_path(func: Callable[..., Any]) -> str:
    """``module:qualname`` of a function, as :class:`JsonSerializer` carries it."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname:
        raise SerializationError(f"{func!r} has no __module__/__qualname__ to import it by")
    return f"{module}:{qualname}"


def import_path(path: str) -> Any:
    """Import ``module:qualname`` and return the object it names."""
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise SerializationError(f"{path!r} is not an import path of the form 'module:qualname'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raised while importing
        raise SerializationError(
            f"cannot import module {module_name!r} for {path!r}: {type(exc).__name__}: {exc}"
        ) from exc
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise SerializationError(
                f"{path!r}: module {module_name!r} has no attribute {qualname!r}"
            ) from exc
    return obj


class Serializer(abc.ABC):
    """Turns values into bytes and back. Subclass it and implement ``dumps``/``loads``."""

    #: A short name for logs and the command line.
    name: str = "custom"

    @abc.abstractmethod
    def dumps(self, obj: Any) -> bytes:
        """Serialize a value; raise :class:`SerializationError` naming what cannot be carried."""

    @abc.abstractmethod
    def loads(self, data: bytes) -> Any:
        """Deserialize bytes made by ``dumps``, or raise :class:`SerializationError`."""

    def dumps_call(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> bytes:
        """Serialize a task call. The default carries ``[func, args, kwargs]`` through ``dumps``."""
        return self.dumps([func, tuple(args), dict(kwargs)])

    def loads_call(self, data: bytes) -> TaskCall:
        """Read a task call made by ``dumps_call``."""
        obj = self.loads(data)
        if not (isinstance(obj, list | tuple) and len(obj) == 3):
            raise SerializationError("payload is not a task call [func, args, kwargs]")
        func, args, kwargs = obj
        if not callable(func):
            raise SerializationError(f"payload's function is not callable: {_describe(func)}")
        if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
            raise SerializationError("payload's args must be a list and kwargs a mapping")
        return func, tuple(args), kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _find_unpicklable(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    candidates: list[tuple[str, Any]] = [("the task function", func)]
    candidates += [(f"positional argument {i}", a) for i, a in enumerate(args)]
    candidates += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in candidates:
        try:
            cloudpickle.dumps(value)
        except Exception as exc:
            return f"{label} ({_describe(value)}) cannot be pickled: {exc}"
    return "the call cannot be pickled"


_SIGNED = b"sitq-hmac1:"
_MAC_SIZE = hashlib.sha256().digest_size


def _secret_keys(secret: bytes | str | Sequence[bytes | str] | None) -> tuple[bytes, ...]:
    if secret is None:
        return ()
    items = [secret] if isinstance(secret, bytes | str) else secret
    keys = tuple(k.encode() if isinstance(k, str) else k for k in _as_list(items))
    if not keys or not all(isinstance(k, bytes) and len(k) >= 16 for k in keys):
        raise ConfigurationError(
            "PickleSerializer(secret=...) takes a key of at least 16 bytes, or a list of them "
            "(the first signs, all verify); make one with secrets.token_bytes(32)"
        )
    return keys


def _payload_bytes(data: Any) -> bytes:
    """``data`` as bytes; anything that is not bytes-like is refused, never converted."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise SerializationError(f"payload must be bytes, not {type(data).__name__}")


def _as_list(items: Any) -> list[Any]:
    try:
        return list(items)
    except TypeError:
        return [None]


class PickleSerializer(Serializer):
    """cloudpickle: carries closures, lambdas and functions defined in ``__main__`` by value.

    Unpickling runs code: anyone who can write to the backend can run code in the workers. With
    ``secret=`` every payload is signed (HMAC-SHA256), and a serializer with a secret refuses,
    without unpickling it, a payload that is unsigned or whose signature matches none of its
    keys. ``secret`` may be a list for key rotation: the first key signs, every key verifies.
    """

    name = "pickle"

    def __init__(
        self,
        protocol: int = pickle.HIGHEST_PROTOCOL,
        *,
        secret: bytes | str | Sequence[bytes | str] | None = None,
    ) -> None:
        if not 2 <= protocol <= pickle.HIGHEST_PROTOCOL:
            raise ConfigurationError(
                f"PickleSerializer(protocol={protocol}): use 2..{pickle.HIGHEST_PROTOCOL}"
            )
        self.protocol = protocol
        self._keys = _secret_keys(secret)

    @property
    def signed(self) -> bool:
        """True if this serializer signs and verifies payloads."""
        return bool(self._keys)

    def _seal(self, data: bytes) -> bytes:
        if not self._keys:
            return data
        return _SIGNED + hmac.new(self._keys[0], data, hashlib.sha256).digest() + data

    def _open(self, data: bytes) -> bytes:
        signed = data.startswith(_SIGNED)
        body = data[len(_SIGNED) + _MAC_SIZE :] if signed else data
        if not self._keys:
            return body
        if not signed:
            raise SerializationError(
                "payload is not signed, refused without unpickling it: this PickleSerializer "
                "has a secret and reads only payloads signed with one of its keys"
            )
        mac = data[len(_SIGNED) : len(_SIGNED) + _MAC_SIZE]
        for key in self._keys:
            if hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
                return body
        raise SerializationError(
            "payload signature matches none of this serializer's keys, refused without "
            "unpickling it: the payload was altered or signed with another secret"
        )

    def dumps(self, obj: Any) -> bytes:
        """Pickle ``obj`` with cloudpickle (and sign it when there is a secret)."""
        try:
            return self._seal(bytes(cloudpickle.dumps(obj, protocol=self.protocol)))
        except Exception as exc:
            raise SerializationError(f"{_describe(obj)} cannot be pickled: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        """Unpickle bytes made by ``dumps`` (after checking the signature, with a secret)."""
        body = self._open(_payload_bytes(data))
        try:
            return pickle.loads(body)
        except Exception as exc:
            raise SerializationError(
                f"payload cannot be unpickled ({type(exc).__name__}: {exc})"
            ) from exc

    def dumps_call(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> bytes:
        """Pickle a task call; on failure, name the argument that cannot be pickled."""
        if _plain_call(func, args, kwargs):
            # A module-level function and plain arguments pickle the same way with the C
            # pickler, five times faster; anything else goes through cloudpickle.
            return self._seal(
                pickle.dumps((func, tuple(args), dict(kwargs)), protocol=self.protocol)
            )
        try:
            data = cloudpickle.dumps((func, tuple(args), dict(kwargs)), protocol=self.protocol)
        except Exception as exc:
            raise SerializationError(_find_unpicklable(func, args, kwargs)) from exc
        return self._seal(bytes(data))


_PLAIN_TYPES = frozenset({int, float, str, bytes, bool, type(None)})


def _plain_call(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    module = getattr(func, "__module__", None)
    if (
        type(func) is not types.FunctionType
        or module is None
        or module == "__main__"
        or "<" in func.__qualname__
        or sys.modules.get(module) is None
        or getattr(sys.modules[module], func.__qualname__, None) is not func
    ):
        return False
    return all(type(a) in _PLAIN_TYPES for a in args) and all(
        type(v) in _PLAIN_TYPES for v in kwargs.values()
    )


def _json_default_path(obj: Any, path: str) -> str:
    return f"{path} ({_describe(obj)}) is not JSON serializable"


def _check_json(value: Any, path: str, parents: frozenset[int] = frozenset()) -> None:
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list | tuple | dict):
        if id(value) in parents:
            raise SerializationError(f"{path} refers back to itself: JSON cannot carry cycles")
        if len(parents) > 500:
            raise SerializationError(f"{path} is nested too deeply for JSON")
        inner = parents | {id(value)}
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise SerializationError(
                        f"{path} has a non-string key {key!r}: JSON object keys must be strings"
                    )
                _check_json(item, f"{path}[{key!r}]", inner)
        else:
            for i, item in enumerate(value):
                _check_json(item, f"{path}[{i}]", inner)
        return
    raise SerializationError(_json_default_path(value, path))


class JsonSerializer(Serializer):
    """Standard-library JSON. The task function travels as its import path ``module:qualname``,
    so it must be a module-level function importable by the worker; tuples come back as lists.
    """

    name = "json"

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` as compact UTF-8 JSON."""
        try:
            return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            _check_json(obj, "value")
            raise SerializationError(f"value cannot be encoded as JSON: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        """Decode JSON bytes."""
        try:
            return json.loads(_payload_bytes(data))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SerializationError(f"payload is not valid JSON ({exc})") from exc

    def dumps_call(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> bytes:
        """Encode a call as ``{"f": "module:qualname", "a": [...], "k": {...}}``."""
        path = function_path(func)
        module, _, qualname = path.partition(":")
        if "<lambda>" in qualname or "<locals>" in qualname or module == "__main__":
            raise SerializationError(
                f"JsonSerializer carries a task function by its import path, and {path} cannot "
                "be imported by a worker: define the function at module level in an importable "
                "module, or use PickleSerializer"
            )
        try:
            found = import_path(path)
        except SerializationError as exc:
            raise SerializationError(f"JsonSerializer cannot import {path}: {exc}") from exc
        if found is not func and getattr(found, "__wrapped__", None) is not func:
            raise SerializationError(
                f"JsonSerializer: {path} does not import back to the same function"
            )
        _check_json(list(args), "args")
        _check_json(dict(kwargs), "kwargs")
        return self.dumps({"f": path, "a": list(args), "k": dict(kwargs)})

    def loads_call(self, data: bytes) -> TaskCall:
        """Decode a call and import its function."""
        obj = self.loads(data)
        if not isinstance(obj, dict) or not {"f", "a", "k"} <= obj.keys():
            raise SerializationError("payload is not a JSON task call {f, a, k}")
        path, args, kwargs = obj["f"], obj["a"], obj["k"]
        if not isinstance(path, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
            raise SerializationError("JSON task call has wrong types for f, a or k")
        func = import_path(path)
        if not callable(func):
            raise SerializationError(f"{path} is not callable")
        return func, tuple(args), kwargs


def serializer_from_name(name: str) -> Serializer:
    """``"pickle"`` or ``"json"`` as a serializer (for the command line)."""
    if name == "pickle":
        return PickleSerializer()
    if name == "json":
        return JsonSerializer()
    raise ConfigurationError(f"unknown serializer {name!r}: use 'pickle' or 'json'")
