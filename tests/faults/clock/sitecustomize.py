"""A clock jump on demand, for the fault-injection suite (tests/faults/test_faults.py).

The test puts this directory on PYTHONPATH for one worker process only, with
``SITQ_FAULT_CLOCK_JUMP=<seconds>`` (negative: backwards) in its environment. Python imports
this module at startup; from the moment the process receives SIGUSR1, ``time.time()`` and
``time.time_ns()`` return the real time shifted by that many seconds, as after an NTP step or a
wrong manual setting. The process says so on stderr (its log) when the jump happens.
"""

from __future__ import annotations

import os
import signal
import time
from types import FrameType

_JUMP = float(os.environ.get("SITQ_FAULT_CLOCK_JUMP") or 0)

if _JUMP:
    _real_time = time.time
    _real_time_ns = time.time_ns
    _offset = [0.0]

    def _time() -> float:
        return _real_time() + _offset[0]

    def _time_ns() -> int:
        return _real_time_ns() + int(_offset[0] * 1e9)

    def _jump(signum: int, frame: FrameType | None) -> None:
        _offset[0] = _JUMP
        os.write(2, f"sitq-faults: clock jumped by {_JUMP:+g} s\n".encode())

    time.time = _time
    time.time_ns = _time_ns
    signal.signal(signal.SIGUSR1, _jump)
    # Only this process jumps, not the processes it starts.
    del os.environ["SITQ_FAULT_CLOCK_JUMP"]
