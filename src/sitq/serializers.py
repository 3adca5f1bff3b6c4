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
from collections.abc import Callable, Iterable, Mapping, Sequence
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


def _secret_keys(
    secret: bytes | str | Sequence[bytes | str] | None, owner: str
) -> tuple[bytes, ...]:
    if secret is None:
        return ()
    items = [secret] if isinstance(secret, bytes | str) else secret
    keys = tuple(k.encode() if isinstance(k, str) else k for k in _as_list(items))
    if not keys or not all(isinstance(k, bytes) and len(k) >= 16 for k in keys):
        raise ConfigurationError(
            f"{owner}(secret=...) takes a key of at least 16 bytes, or a list of them "
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


class _SigningSerializer(Serializer):
    """A serializer that signs what it writes when it has a secret (HMAC-SHA256, key rotation).

    A signed payload is ``sitq-hmac1:`` + the HMAC-SHA256 of the body + the body. With a secret,
    ``_open`` refuses a payload that is unsigned or whose signature matches none of the keys,
    before anything reads the body; without one, it strips a signature unchecked.
    """

    #: What a refused payload is spared, for the error message.
    _refusal = "reading it"

    def __init__(self, secret: bytes | str | Sequence[bytes | str] | None) -> None:
        self._keys = _secret_keys(secret, type(self).__name__)

    @property
    def signed(self) -> bool:
        """True if this serializer signs and verifies payloads."""
        return bool(self._keys)

    def _seal(self, data: bytes) -> bytes:
        if not self._keys:
            return data
        return _SIGNED + hmac.new(self._keys[0], data, hashlib.sha256).digest() + data

    def _open(self, payload: Any) -> bytes:
        data = _payload_bytes(payload)
        signed = data.startswith(_SIGNED)
        body = data[len(_SIGNED) + _MAC_SIZE :] if signed else data
        if not self._keys:
            return body
        if not signed:
            raise SerializationError(
                f"payload is not signed, refused without {self._refusal}: this "
                f"{type(self).__name__} has a secret and reads only payloads signed with one of "
                "its keys"
            )
        mac = data[len(_SIGNED) : len(_SIGNED) + _MAC_SIZE]
        for key in self._keys:
            if hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
                return body
        raise SerializationError(
            f"payload signature matches none of this serializer's keys, refused without "
            f"{self._refusal}: the payload was altered or signed with another secret"
        )


_PICKLE_START = b"\x80"  # the PROTO opcode every pickle of protocol 2 or later begins with
_JSON_STARTS = frozenset({b"{", b"["})  # how the json serializer's calls and values begin


class PickleSerializer(_SigningSerializer):
    """cloudpickle: carries closures, lambdas and functions defined in ``__main__`` by value.

    Unpickling runs code: anyone who can write to the backend can run code in the workers. With
    ``secret=`` every payload is signed (HMAC-SHA256), and a serializer with a secret refuses,
    without unpickling it, a payload that is unsigned or whose signature matches none of its
    keys. ``secret`` may be a list for key rotation: the first key signs, every key verifies.
    """

    name = "pickle"
    _refusal = "unpickling it"

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
        super().__init__(secret)

    def dumps(self, obj: Any) -> bytes:
        """Pickle ``obj`` with cloudpickle (and sign it when there is a secret)."""
        try:
            return self._seal(bytes(cloudpickle.dumps(obj, protocol=self.protocol)))
        except Exception as exc:
            raise SerializationError(f"{_describe(obj)} cannot be pickled: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        """Unpickle bytes made by ``dumps`` (after checking the signature, with a secret)."""
        body = self._open(data)
        if body[:1] in _JSON_STARTS:
            raise SerializationError(
                "payload is JSON, written by the json serializer, and this worker reads pickle: "
                "run the worker with --serializer json (JsonSerializer() in code), the "
                "serializer of the side that enqueues"
            )
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


def _module_list(modules: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if modules is None:
        return None
    items = [modules] if isinstance(modules, str) else _as_list(modules)
    if not items or not all(
        isinstance(m, str) and m and all(part.isidentifier() for part in m.split("."))
        for m in items
    ):
        raise ConfigurationError(
            f"JsonSerializer(modules={modules!r}): give dotted module names, e.g. "
            "modules=('myapp.tasks',), or None to allow any importable function"
        )
    return tuple(items)


class JsonSerializer(_SigningSerializer):
    """Standard-library JSON. The task function travels as its import path ``module:qualname``,
    so it must be a module-level function importable by the worker; tuples come back as lists.

    JSON unpickles nothing, but a worker imports and calls the function a payload names. Without
    ``secret`` or ``modules`` that is *any* importable callable, ``os:system`` included, so
    anyone who can write to the backend can run code in the workers. Two guards, together or
    alone:

    * ``secret=``: payloads and results are signed with HMAC-SHA256 as by
      :class:`PickleSerializer` (a list of keys rotates them: the first signs, every key
      verifies); a serializer with a secret refuses a payload that is unsigned or altered before
      decoding it.
    * ``modules=``: the dotted names of the modules whose functions may be called, e.g.
      ``("myapp.tasks", "myapp.jobs")``; a name also covers its submodules (``myapp.tasks``
      allows ``myapp.tasks.mail``, not ``myapp.tasksx``). Enqueueing any other function fails
      with :class:`SerializationError`; a worker refuses a payload naming another module before
      importing anything, and one whose name resolves to a callable defined elsewhere (a
      ``from os import system`` in an allowed module) before calling it.
    """

    name = "json"
    _refusal = "decoding it"

    def __init__(
        self,
        *,
        secret: bytes | str | Sequence[bytes | str] | None = None,
        modules: Iterable[str] | str | None = None,
    ) -> None:
        super().__init__(secret)
        #: The modules whose functions may be called, or ``None`` for any module.
        self.modules = _module_list(modules)

    def _allows(self, module: object) -> bool:
        if self.modules is None:
            return True
        return isinstance(module, str) and any(
            module == allowed or module.startswith(allowed + ".") for allowed in self.modules
        )

    def _allowed_names(self) -> str:
        return ", ".join(self.modules or ())

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` as compact UTF-8 JSON (signed when there is a secret)."""
        try:
            data = json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            _check_json(obj, "value")
            raise SerializationError(f"value cannot be encoded as JSON: {exc}") from exc
        return self._seal(data)

    def loads(self, data: bytes) -> Any:
        """Decode JSON bytes (after checking the signature, with a secret)."""
        body = self._open(data)
        if body[:1] == _PICKLE_START:
            raise SerializationError(
                "payload is a pickle, written by the pickle serializer, and this worker reads "
                "JSON: run the worker with --serializer pickle (PickleSerializer() in code), the "
                "serializer of the side that enqueues"
            )
        try:
            return json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SerializationError(f"payload is not valid JSON ({exc})") from exc

    def dumps_call(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> bytes:
        """Encode a call as ``{"f": "module:qualname", "a": [...], "k": {...}}``."""
        path = function_path(func)
        module, _, qualname = path.partition(":")
        if not self._allows(module):
            raise SerializationError(
                f"JsonSerializer: {path} is not in the modules this serializer allows "
                f"({self._allowed_names()}): add its module to modules=..., or enqueue a "
                "function of an allowed module"
            )
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
        """Decode a call and import its function (only from the allowed modules, if any)."""
        obj = self.loads(data)
        if not isinstance(obj, dict) or not {"f", "a", "k"} <= obj.keys():
            raise SerializationError("payload is not a JSON task call {f, a, k}")
        path, args, kwargs = obj["f"], obj["a"], obj["k"]
        if not isinstance(path, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
            raise SerializationError("JSON task call has wrong types for f, a or k")
        if not self._allows(path.partition(":")[0]):
            raise SerializationError(
                f"{path!r} is not in the modules this JsonSerializer allows "
                f"({self._allowed_names()}): refused without importing it"
            )
        func = import_path(path)
        if not callable(func):
            raise SerializationError(f"{path} is not callable")
        defined_in = getattr(func, "__module__", None)
        if not self._allows(defined_in):
            raise SerializationError(
                f"{path!r} is a callable of module {defined_in!r}, which is not in the modules "
                f"this JsonSerializer allows ({self._allowed_names()}): refused without calling it"
            )
        return func, tuple(args), kwargs

    def __repr__(self) -> str:
        shown = f"modules={self.modules!r}" if self.modules is not None else ""
        return f"JsonSerializer({shown})"


def serializer_from_name(
    name: str,
    *,
    secret: bytes | str | Sequence[bytes | str] | None = None,
    modules: Iterable[str] | None = None,
) -> Serializer:
    """``"pickle"`` or ``"json"`` as a serializer (for the command line), signing with
    ``secret`` if given; ``modules`` is the allow-list of :class:`JsonSerializer`."""
    if name == "pickle":
        if modules is not None:
            raise ConfigurationError(
                "an allow-list of modules applies to the json serializer only: pickle carries "
                "code by value (use a secret to protect it)"
            )
        return PickleSerializer(secret=secret)
    if name == "json":
        return JsonSerializer(secret=secret, modules=modules)
    raise ConfigurationError(f"unknown serializer {name!r}: use 'pickle' or 'json'")
