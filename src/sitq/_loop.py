"""The command line's event loop: uvloop where installed (``sitq[uvloop]``), else asyncio."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

from sitq.errors import ConfigurationError, MissingDependencyError

T = TypeVar("T")

LOOPS = ("auto", "asyncio", "uvloop")


def resolve_loop(loop: str) -> str:
    """``asyncio`` or ``uvloop``: what ``loop`` (``auto``, ``asyncio`` or ``uvloop``) means here."""
    if loop not in LOOPS:
        raise ConfigurationError(f"loop={loop!r}: use one of {list(LOOPS)}")
    have_uvloop = importlib.util.find_spec("uvloop") is not None
    if loop == "uvloop" and not have_uvloop:
        raise MissingDependencyError("uvloop is not installed: pip install 'sitq[uvloop]'")
    if loop == "auto":
        return "uvloop" if have_uvloop else "asyncio"
    return loop


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """Run ``main`` to completion on the event loop ``loop`` names (see :func:`resolve_loop`)."""
    try:
        chosen = resolve_loop(loop)
    except BaseException:
        main.close()
        raise
    if chosen == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
