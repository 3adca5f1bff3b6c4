"""A peer's worker in its own process: imports and builds it, says ``ready``, runs it on ``go``.

    python -m benchmarks.peers._worker MODULE CONFIG_JSON

``benchmarks.peers.MODULE.worker(config)`` builds the peer's worker with the peer's own API
and returns the blocking call that runs it. The benchmark kills the process group when done.
"""

from __future__ import annotations

import importlib
import json
import sys


def main() -> None:
    module = importlib.import_module(f"benchmarks.peers.{sys.argv[1]}")
    run = module.worker(json.loads(sys.argv[2]))
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    print("started", flush=True)
    run()


if __name__ == "__main__":
    main()
