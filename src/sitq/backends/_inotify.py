"""Change notification for file-based stores: inotify on Linux, ``None`` elsewhere.

SQLite has no push channel, but every commit in WAL mode writes to the ``-wal`` file beside the
database; watching the directory with inotify wakes waiters in every process the moment another
process commits, at no cost while nothing happens.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import struct
import sys
from collections.abc import Callable

_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_HEADER = struct.Struct("iIII")


class DirectoryWatch:
    """Calls ``on_change`` (from the event loop) when one of ``names`` in ``directory`` is
    written. Use :func:`watch_directory` to create one; it may not be available."""

    def __init__(self, fd: int, names: frozenset[str]) -> None:
        self.fd = fd
        self.names = names

    def read_events(self) -> bool:
        """Drain pending events; True if one concerned a watched name."""
        hit = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return hit
            except OSError:
                return True
            if not data:
                return hit
            offset = 0
            while offset + _HEADER.size <= len(data):
                _, _, _, length = _HEADER.unpack_from(data, offset)
                start = offset + _HEADER.size
                name = data[start : start + length].rstrip(b"\0").decode(errors="replace")
                if name in self.names:
                    hit = True
                offset = start + length

    def close(self) -> None:
        """Stop watching."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def watch_directory(directory: str, names: frozenset[str]) -> DirectoryWatch | None:
    """An inotify watch on ``directory`` for writes to ``names``, or ``None`` if unsupported."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        init: Callable[[int], int] = libc.inotify_init1
        add: Callable[[int, bytes, int], int] = libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    fd = init(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        return None
    mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
    if add(fd, os.fsencode(directory), mask) < 0:
        os.close(fd)
        return None
    return DirectoryWatch(fd, names)
