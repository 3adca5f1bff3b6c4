"""Running one task call and describing how it ended, the same way in every executor."""

from __future__ import annotations

import asyncio
import functools
import inspect
import traceback as tb_module
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sitq.errors import Retry, SerializationError
from sitq.serializers import Serializer, TaskCall


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended.

    ``exc_types`` lists ``module:qualname`` of the exception's class and its bases, so a retry
    policy can match classes by name without importing them. ``permanent`` marks a task that
    cannot run at all (unloadable payload, bad signature): it is never retried.
    """

    ok: bool
    value: bytes | None = None
    error: str | None = None
    traceback: str | None = None
    exc_types: tuple[str, ...] = ()
    retry_requested: bool = False
    retry_delay: float | None = None
    permanent: bool = False
    timed_out: bool = False


def function_name(func: Any) -> str:
    """``module.qualname`` of a task's callable, for listings: a ``functools.partial`` names
    the function it wraps, a bound method its class and name, a callable object its class."""
    while isinstance(func, functools.partial):
        func = func.func
    target = func.__func__ if inspect.ismethod(func) else func
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(qualname, str):
        cls = type(target)
        module, qualname = cls.__module__, cls.__qualname__
    return f"{module}.{qualname}" if module else qualname


def exception_names(exc_type: type[BaseException]) -> tuple[str, ...]:
    """``module:qualname`` of a class and all of its bases."""
    return tuple(f"{c.__module__}:{c.__qualname__}" for c in exc_type.__mro__)


def one_line(exc: BaseException) -> str:
    """``TypeName: message`` on one line."""
    message = str(exc).strip().replace("\n", " ")
    name = type(exc).__qualname__
    return f"{name}: {message}" if message else name


def failure(exc: BaseException, *, permanent: bool = False, prefix: str = "") -> Outcome:
    """An outcome for an exception raised by (or while preparing) a task."""
    if isinstance(exc, Retry):
        return Outcome(
            ok=False,
            error=one_line(exc),
            traceback="".join(tb_module.format_exception(exc)),
            exc_types=exception_names(type(exc)),
            retry_requested=True,
            retry_delay=exc.delay,
        )
    return Outcome(
        ok=False,
        error=prefix + one_line(exc),
        traceback="".join(tb_module.format_exception(exc)),
        exc_types=exception_names(type(exc)),
        permanent=permanent,
    )


def timed_out(timeout: float) -> Outcome:
    """An outcome for an attempt that ran past its timeout."""
    return Outcome(
        ok=False,
        error=f"TimeoutError: task exceeded its timeout of {timeout:g} s",
        traceback="",
        exc_types=exception_names(TimeoutError),
        timed_out=True,
    )


def load_call(serializer: Serializer, payload: bytes) -> TaskCall | Outcome:
    """Read a task call and check its signature; a permanent failure outcome if it cannot run."""
    try:
        return serializer.loads_call(payload)
    except Exception as exc:
        return failure(exc, permanent=True, prefix=f"cannot load task ({serializer.name}): ")


def bad_call(call: TaskCall, exc: TypeError) -> Outcome:
    """The outcome of a call that raised ``TypeError``: permanent if the arguments do not fit
    the function's signature (checked only now, so the common path pays nothing for it)."""
    func, args, kwargs = call
    bad = check_signature(func, args, kwargs)
    if bad is None:
        return failure(exc)
    return Outcome(
        ok=False, error=bad, traceback="", permanent=True, exc_types=exception_names(TypeError)
    )


_signature_cache: dict[Any, inspect.Signature | None] = {}


_fitting_shapes: set[tuple[Any, int, frozenset[str]]] = set()


def check_signature(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str | None:
    """A clear message if ``func`` cannot be called with these arguments, else ``None``.

    Whether arguments bind depends only on how many are positional and which keywords are
    given, so a shape that fitted once is remembered and not checked again.
    """
    try:
        shape = (func, len(args), frozenset(kwargs))
        if shape in _fitting_shapes:
            return None
    except TypeError:  # unhashable callable
        shape = None
    message = _bind_message(func, args, kwargs)
    if message is None and shape is not None and len(_fitting_shapes) < 4096:
        _fitting_shapes.add(shape)
    return message


def _bind_message(
    func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> str | None:
    try:
        sig = _signature_cache.get(func)
        if sig is None and func not in _signature_cache:
            try:
                sig = inspect.signature(func)
            except (TypeError, ValueError):
                sig = None
            if len(_signature_cache) < 4096:
                _signature_cache[func] = sig
    except TypeError:  # unhashable callable
        sig = None
    if sig is None:
        return None
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        name = getattr(func, "__qualname__", repr(func))
        return f"TypeError: {name}{sig} cannot take these arguments: {exc}"
    return None


def succeeded(serializer: Serializer, value: Any) -> Outcome:
    """An outcome for a returned value; a failure if the serializer cannot carry it."""
    try:
        return Outcome(ok=True, value=serializer.dumps(value))
    except SerializationError as exc:
        return failure(exc, permanent=True, prefix="the return value cannot be serialized: ")


def is_async_callable(func: Callable[..., Any]) -> bool:
    """True for coroutine functions (also behind ``functools.partial``)."""
    while hasattr(func, "func") and not inspect.isfunction(func):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004
    )


def call_sync(serializer: Serializer, call: TaskCall) -> Outcome:
    """Run a loaded call to the end in this thread (a coroutine function under its own loop)."""
    func, args, kwargs = call
    try:
        result = func(*args, **kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
    except TypeError as exc:
        return bad_call(call, exc)
    except Exception as exc:
        return failure(exc)
    return succeeded(serializer, result)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def run_payload(serializer: Serializer, payload: bytes) -> Outcome:
    """Load and run a payload in this thread: what a child process does with each task."""
    call = load_call(serializer, payload)
    if isinstance(call, Outcome):
        return call
    return call_sync(serializer, call)
