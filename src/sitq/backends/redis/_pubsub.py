"""The Redis backend's pub/sub: one listening connection per backend object, which hears the
work channels (``<prefix>:work:<queue>``, published by scripts that make tasks due) and the done
channels (``<prefix>:done:<id>``, published when a task finishes) its waiters subscribed to.

The connection is re-established with backoff if it drops, and pinged when it has been quiet
for 30 s (a dead connection may look idle). Whenever it was not listening, anything may have
been published unheard, so every waiter is woken to look again. Subscriptions are confirmed by
the server before a waiter relies on them (bounded waits: a waiter falls back to polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sitq.errors import BackendError

__all__ = ["Listener"]

log = logging.getLogger("sitq.redis")


class Listener:
    """The pub/sub listener of one backend object.

    ``client()`` gives the backend's redis-py client (``None`` while it is not connected);
    ``hello`` is the channel whose confirmation says the listener is subscribed, and the done
    and work channels start with ``done_prefix`` and ``work_prefix``. The listener calls back
    into the backend: ``on_work()`` for a message on a work channel, ``on_done(task_ids)`` for
    one on a done channel, ``on_gap()`` when it may have missed messages (it was not listening
    for a while, or has just started to).
    """

    def __init__(
        self,
        *,
        client: Callable[[], Any],
        cluster: bool,
        hello: str,
        done_prefix: str,
        work_prefix: str,
        on_work: Callable[[], None],
        on_done: Callable[[Iterable[str]], None],
        on_gap: Callable[[], None],
    ) -> None:
        self._exc: Any = importlib.import_module("redis.exceptions")
        self._client = client
        self._cluster = cluster
        self._hello = hello
        self._done_prefix = done_prefix
        self._work_prefix = work_prefix
        self._on_work = on_work
        self._on_done = on_done
        self._on_gap = on_gap
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._listening = asyncio.Event()
        self._wanted: dict[str, int] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._node = 0

    @property
    def listening(self) -> bool:
        """True while the connection is subscribed (pushes arrive)."""
        return self._listening.is_set()

    def open(self) -> None:
        """Allow the listener to start again (on the backend's ``connect()``)."""
        self._closing = False
        self._listening = asyncio.Event()

    async def close(self) -> None:
        """Stop the listener and close its connection."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def abandon(self) -> None:
        """Drop the listening task, its connection and every subscription without any I/O
        (their event loop has ended); the next ``start`` listens afresh."""
        self._task = None
        self._pubsub = None
        self._closing = False
        self._listening = asyncio.Event()
        self.forget()

    def forget(self) -> None:
        """Drop every subscription (after the backend closed its client)."""
        self._wanted.clear()
        self._confirmed.clear()

    def start(self) -> None:
        """Start the listener if it is not running and the backend is connected."""
        if self._task is None and not self._closing and self._client() is not None:
            self._task = asyncio.create_task(self._listen(), name="sitq-redis-pubsub")

    def _new_pubsub(self) -> Any:
        client = self._client()
        if client is None:
            raise BackendError("RedisBackend is not connected")
        if not self._cluster:
            return client.pubsub()
        # Classic pub/sub messages reach every node of a cluster: listen on any one of them,
        # moving on to the next when it fails.
        nodes = client.get_nodes()
        node = nodes[self._node % len(nodes)]
        self._node += 1
        return client.pubsub(node=node)

    async def _listen(self) -> None:
        delay = 0.05
        while not self._closing:
            pubsub = None
            try:
                pubsub = self._new_pubsub()
                self._confirmed = {}
                channels = [self._hello, *self._wanted]
                for channel in channels:
                    self._confirmed[channel] = asyncio.Event()
                await pubsub.subscribe(*channels)
                self._pubsub = pubsub
                awaiting_pong = False
                while not self._closing:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is None:
                        if awaiting_pong:
                            raise self._exc.ConnectionError("no reply to PING within 30 s")
                        # A quiet connection may be dead without the client knowing.
                        await pubsub.ping()
                        awaiting_pong = True
                        continue
                    awaiting_pong = False
                    if self._on_message(message):
                        delay = 0.05
            except asyncio.CancelledError:
                self._pubsub = None
                self._listening.clear()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(pubsub.aclose(), 2)
                raise
            except Exception as exc:
                if not self._closing:
                    log.warning("Redis pub/sub connection failed: %s; reconnecting", exc)
            self._pubsub = None
            self._listening.clear()
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 2)
            # Whatever was published while we were not listening must be looked at again.
            self._on_gap()
            if self._closing:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _on_message(self, message: dict[str, Any]) -> bool:
        """Dispatch one message; True once the listener is confirmed listening again."""
        kind = message.get("type")
        raw = message.get("channel")
        channel = raw.decode() if isinstance(raw, bytes) else str(raw)
        if kind in ("message", b"message"):
            if channel.startswith(self._done_prefix):
                self._on_done((channel[len(self._done_prefix) :],))
            elif channel.startswith(self._work_prefix):
                self._on_work()
            return False
        if kind in ("subscribe", b"subscribe"):
            # Only a subscription still wanted counts (a late reply to an undone one does not).
            event = self._confirmed.get(channel)
            if event is not None:
                event.set()
            if channel == self._hello and not self._listening.is_set():
                self._listening.set()
                # Anything that happened before this point must be looked at again.
                self._on_gap()
                return True
        return False

    async def subscribe(self, channels: Sequence[str], *, counted: bool) -> bool:
        """Subscribe to channels (``counted``: once per caller, undone by ``unsubscribe``)
        and wait, bounded, until the server confirms. True if a subscription was new."""
        self.start()
        new = []
        for channel in channels:
            count = self._wanted.get(channel, 0)
            if count == 0:
                new.append(channel)
            if counted or count == 0:
                self._wanted[channel] = count + 1
        if not new and all(self._is_confirmed(c) for c in channels):
            return False
        if not self._listening.is_set():
            # The listener subscribes to everything wanted once it is connected.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening.wait(), 1.0)
            if not self._listening.is_set():
                return bool(new)
        send = [c for c in new if c not in self._confirmed]
        events = [self._confirmed.setdefault(c, asyncio.Event()) for c in channels]
        pubsub = self._pubsub
        if pubsub is not None and send:
            try:
                await pubsub.subscribe(*send)
            except Exception as exc:  # the listener sees the broken connection too
                log.debug("subscribing to %s failed: %s", send, exc)
                return bool(new)
        waiting = [e.wait() for e in events if not e.is_set()]
        if waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waiting), 1.0)
        return bool(new)

    def _is_confirmed(self, channel: str) -> bool:
        event = self._confirmed.get(channel)
        return event is not None and event.is_set()

    async def unsubscribe(self, channel: str) -> None:
        """Undo one counted ``subscribe`` of ``channel``; the last one unsubscribes."""
        count = self._wanted.get(channel, 0) - 1
        if count > 0:
            self._wanted[channel] = count
            return
        self._wanted.pop(channel, None)
        self._confirmed.pop(channel, None)
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe(channel)
