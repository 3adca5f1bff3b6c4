"""The worker-process side of :mod:`sitq._procpool`: ``python -m sitq._child REQ RESP ERR``.

``REQ`` and ``RESP`` are the request and response pipe ends, ``ERR`` a copy of the parent's
stderr. Every message is a frame: a 4-byte big-endian length, then that many bytes.

1. The parent sends an init frame, ``pickle((sys.path, PYTHONPATH, cloudpickle(serializer)))``.
2. The child answers ``b"ok"`` once it is ready, or ``b"error:"`` and a traceback, and exits 1.
3. Then, for each task, the parent sends a context frame (JSON: the task's id, queue, attempt,
   function and worker id, then the W3C trace context headers of the span the task runs in,
   or null; empty for none) and a payload frame. The child answers with any
   number of progress frames, ``b"progress:"`` and JSON ``[task_id, value, message]``, as the task
   reports them, then ``pickle(Outcome)``.

The child exits when the request pipe reaches end of file: the parent closed it, or died.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import sys
import threading
import traceback
from contextlib import suppress
from typing import BinaryIO

from sitq._task import Outcome, failure, run_payload
from sitq.context import TaskContext, running
from sitq.observe import tracing
from sitq.serializers import Serializer

HEADER = struct.Struct(">I")
MAX_FRAME = 2**32 - 1
READY = b"ok"
INIT_ERROR = b"error:"
PROGRESS = b"progress:"
_CONTEXT_FIELDS = ("task_id", "queue", "attempt", "function", "worker_id")


def encode_context(context: TaskContext | None, trace: dict[str, str] | None = None) -> bytes:
    """The context frame for a task (empty for none), with the W3C headers of the span it
    runs in (``trace``), if any."""
    if context is None:
        return b""
    return json.dumps([*(getattr(context, name) for name in _CONTEXT_FIELDS), trace]).encode()


def _decode_context(
    data: bytes, responses: BinaryIO, lock: threading.Lock
) -> tuple[TaskContext | None, object]:
    """The task's context from its frame, and the trace headers the frame carries."""
    if not data:
        return None, None
    *values, trace = json.loads(data)
    fields = dict(zip(_CONTEXT_FIELDS, values, strict=True))

    def report(value: float, message: str | None) -> None:
        frame = PROGRESS + json.dumps([fields["task_id"], value, message]).encode()
        with lock:  # the task may report from several threads
            write_frame(responses, frame)

    return TaskContext(_report=report, **fields), trace


def read_frame(stream: BinaryIO) -> bytes | None:
    """Read one frame; ``None`` at end of file (a frame cut short counts as end of file)."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return body


def write_frame(stream: BinaryIO, data: bytes) -> None:
    """Write one frame and flush it."""
    stream.write(HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _initialize(init: bytes) -> Serializer:
    sys_path, pythonpath, serializer_blob = pickle.loads(init)
    # The parent's sys.path first: functions pickled by reference, and the serializer itself,
    # must import the same modules the parent imported.
    sys.path[:] = list(sys_path)
    # The parent added sitq's own directory to PYTHONPATH only to start this process; the
    # task's own subprocesses should see the environment the parent had.
    if pythonpath is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = pythonpath
    serializer = pickle.loads(serializer_blob)
    if not isinstance(serializer, Serializer):
        raise TypeError(f"the init frame holds {type(serializer).__name__}, not a Serializer")
    return serializer


def _run(
    serializer: Serializer, payload: bytes, context: TaskContext | None, trace: object = None
) -> Outcome:
    try:
        # The span the parent runs the task in is current here too (as a remote parent), so
        # that what the task enqueues continues its trace.
        with running(context), tracing.remote_parent(trace):
            return run_payload(serializer, payload)
    except BaseException as exc:  # e.g. KeyboardInterrupt raised by the task itself
        return failure(exc)
    finally:
        # So a task's output reaches the terminal before the parent reports its result.
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):
                stream.flush()


def encode_outcome(outcome: Outcome) -> bytes:
    """Pickle an outcome; if that fails or is too large, a failure outcome that says why."""
    try:
        data = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        prefix = "the task's outcome cannot be sent back from its worker process: "
        data = pickle.dumps(failure(exc, permanent=True, prefix=prefix))
    if len(data) > MAX_FRAME:
        too_big = ValueError(
            f"the task's outcome is {len(data)} bytes pickled, more than the {MAX_FRAME} bytes "
            "a worker process can send back"
        )
        data = pickle.dumps(failure(too_big, permanent=True))
    return data


def _serve(requests: BinaryIO, responses: BinaryIO, err_fd: int) -> int:
    init = read_frame(requests)
    if init is None:
        return 0
    try:
        serializer = _initialize(init)
    except Exception:
        write_frame(responses, INIT_ERROR + traceback.format_exc().encode("utf-8", "replace"))
        return 1
    # Until now stderr was a pipe the parent reads, so a failed start can be reported with its
    # output; from here on the task writes to the parent's real stderr. Swapping before sending
    # "ready" lets the parent see that pipe's end of file right after.
    with suppress(Exception):
        sys.stderr.flush()
    os.dup2(err_fd, 2)
    os.close(err_fd)
    write_frame(responses, READY)
    lock = threading.Lock()
    while (header := read_frame(requests)) is not None:
        payload = read_frame(requests)
        if payload is None:
            break
        context, trace = _decode_context(header, responses, lock)
        outcome = encode_outcome(_run(serializer, payload, context, trace))
        with lock:
            write_frame(responses, outcome)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Serve the pool on the pipe file descriptors named in ``argv``; return the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m sitq._child REQUEST_FD RESPONSE_FD STDERR_FD", file=sys.stderr)
        return 2
    # Ctrl-C reaches the whole process group; the parent decides when children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    req_fd, resp_fd, err_fd = (int(arg) for arg in args)
    # Processes the task starts must not hold these pipes open: the parent detects this
    # process's end by the pipes closing.
    for fd in (req_fd, resp_fd, err_fd):
        os.set_inheritable(fd, False)
    requests = open(req_fd, "rb")  # noqa: SIM115 - closed below, whatever happens
    responses = open(resp_fd, "wb")  # noqa: SIM115
    try:
        return _serve(requests, responses, err_fd)
    except BrokenPipeError:
        return 0  # the parent is gone: nobody is left to answer
    finally:
        for stream in (requests, responses):
            with suppress(OSError):
                stream.close()


if __name__ == "__main__":
    sys.exit(main())
