"""``sitq web``: serve the dashboard and its JSON API (``sitq[web]``) with uvicorn until SIGINT
or SIGTERM.

It binds 127.0.0.1 unless ``--host`` says otherwise; on a loopback address it answers only
requests whose ``Host`` names a loopback address or ``localhost``. ``--token`` (or, better, since
a command line is visible to every user of the machine, ``SITQ_WEB_TOKEN``) makes every request
need the token. Like every command but ``worker``, it never creates a store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator

from sitq.backends import redact_url
from sitq.cli._common import add_url, existing_store
from sitq.errors import ConfigurationError, MissingDependencyError
from sitq.queue import TaskQueue

__all__ = ["add_parser", "run"]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
"""The host names a dashboard bound to a loopback address answers to."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``web`` command's options."""
    web = sub.add_parser(
        "web",
        help="serve the web dashboard and its JSON API (sitq[web])",
        description="Serve the dashboard (counts, tasks, workers, cron schedules; cancel, "
        "requeue, purge) and its JSON API until SIGINT or SIGTERM. Needs sitq[web].",
    )
    add_url(web)
    web.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; give 0.0.0.0 to listen "
        "on every interface, and then set a token)",
    )
    web.add_argument(
        "--port", type=int, default=8000, help="port to listen on (default 8000; 0 picks one)"
    )
    web.add_argument(
        "--token",
        help="every request then needs it: 'Authorization: Bearer T' or the login form's "
        "cookie (env SITQ_WEB_TOKEN, which other users of the machine cannot read from the "
        "process list)",
    )
    web.add_argument(
        "--read-only",
        action="store_true",
        help="show, never act: no action is rendered and every POST is refused",
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _token(args: argparse.Namespace) -> str | None:
    if args.token is not None:
        if not args.token.strip():
            raise ConfigurationError("--token must not be empty")
        return str(args.token)
    value = os.environ.get("SITQ_WEB_TOKEN")
    if value is not None and not value.strip():
        raise ConfigurationError("SITQ_WEB_TOKEN is set but empty: give it a value or unset it")
    return value


def run(args: argparse.Namespace) -> int:
    """Run ``sitq web`` with parsed arguments."""
    if not 0 <= args.port <= 65535:
        raise ConfigurationError(f"--port must be from 0 to 65535, not {args.port}")
    token = _token(args)
    try:
        import uvicorn

        from sitq.web import create_app
    except MissingDependencyError:
        raise
    except ImportError as exc:
        raise MissingDependencyError(
            f"sitq web needs the web extra ({exc.name or 'uvicorn'} is missing): "
            "pip install 'sitq[web]'"
        ) from exc
    queue = TaskQueue(existing_store(args.url))
    loopback = _is_loopback(args.host)
    app = create_app(
        queue,
        token=token,
        read_only=args.read_only,
        allowed_hosts=[*LOOPBACK_NAMES, args.host.strip("[]")] if loopback else None,
    )
    if not loopback and token is None:
        print(
            f"sitq web: warning: listening on {args.host} without a token: anyone who can "
            "reach this port can see and act on the tasks (set SITQ_WEB_TOKEN)",
            file=sys.stderr,
        )
    notes = [n for n, on in (("token required", token), ("read-only", args.read_only)) if on]
    described = redact_url(queue.backend.describe())

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # Stop gracefully on SIGINT or SIGTERM and return (exit status 0, as `sitq worker`
            # does), instead of raising the signal again once stopped.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            wanted = (signal.SIGINT, signal.SIGTERM)
            before = {sig: signal.signal(sig, self.handle_exit) for sig in wanted}
            try:
                yield
            finally:
                for sig, handler in before.items():
                    signal.signal(sig, handler)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.should_exit:
                return
            for listener in self.servers:
                for sock in listener.sockets:
                    host, port = sock.getsockname()[:2]
                    shown = f"[{host}]" if ":" in host else host
                    extra = f" ({', '.join(notes)})" if notes else ""
                    print(f"sitq web: {described} at http://{shown}:{port}/{extra}", flush=True)

    config = uvicorn.Config(
        app, host=args.host, port=args.port, lifespan="off", server_header=False
    )

    async def serve() -> None:
        try:
            await Server(config).serve()
        finally:
            await queue.close()

    asyncio.run(serve())
    return 0
