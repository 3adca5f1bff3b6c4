"""The processes below a process, and what they have used: read from ``/proc`` (Linux)."""

from __future__ import annotations

import os
from pathlib import Path


def process_tree(pid: int, leave_out: frozenset[int] = frozenset()) -> list[int]:
    """``pid`` and every live process below it, but those in ``leave_out`` and below them."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current in leave_out:
            continue
        found.append(current)
        try:
            threads = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for tid in threads:
            try:
                children = Path(f"/proc/{current}/task/{tid}/children").read_text()
            except FileNotFoundError:
                continue
            todo += [int(child) for child in children.split()]
    return found


def usage(pids: list[int]) -> tuple[float, int]:
    """CPU seconds used and voluntary context switches made so far by these processes, over
    all their threads."""
    cpu, switches = 0.0, 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(stat[11]) + int(stat[12])) / tick
            for tid in os.listdir(f"/proc/{pid}/task"):
                status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
                for line in status.splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        switches += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread or process that ended meanwhile
    return cpu, switches
