"""The JetStream API as the NATS backend speaks it, apart from any connection: error codes,
replies to API calls and publishes, ack subjects, and the state kept per pull consumer. The
requests themselves (one reply subscription multiplexing every call, with one flush per
batch) are made by ``_client``."""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from datetime import UTC, datetime
from typing import Any, Final

from sitq.errors import BackendError

NS: Final = 1_000_000_000
"""Nanoseconds per second (JetStream durations and timestamps)."""
EXPECTED_LAST: Final = "Nats-Expected-Last-Subject-Sequence"
"""The header that makes a write conditional on the subject's last revision."""
ERR_WRONG_LAST_SEQUENCE: Final = 10071
ERR_STREAM_NOT_FOUND: Final = 10059
ERR_STREAM_NAME_IN_USE: Final = 10058
ERR_SUBJECTS_OVERLAP: Final = 10065
"""What a server answers the second of two clients creating the same stream at once, while
the first one's stream is being made (seen on 2.9 with many clients connecting together)."""
ERR_NO_MESSAGE: Final = 10037
ERR_DELETE_NO_MESSAGE: Final = 10057
ERR_CONSUMER_NOT_FOUND: Final = 10014
_ACK_SEQ = re.compile(rb'"seq":\s*(\d+)')


def api_result(reply: Any, ok: tuple[int, ...]) -> dict[str, Any] | None:
    """The body of a JetStream API reply; ``None`` for the error codes in ``ok``; raises on any
    other error."""
    if reply.headers and reply.headers.get("Status"):
        raise BackendError(
            f"NATS JetStream: status {reply.headers.get('Status')} "
            f"{reply.headers.get('Description', '')}".rstrip()
        )
    data = json.loads(reply.data)
    error = data.get("error")
    if error:
        if error.get("err_code") in ok:
            return None
        raise BackendError(
            f"NATS JetStream: {error.get('description')} (code {error.get('err_code')})"
        )
    return data  # type: ignore[no-any-return]


def ack_seq(reply: Any) -> int:
    """The sequence of a stored message from its publish ack; 0 if the expected last
    sequence did not match; raises on any other error."""
    if b'"error"' not in reply.data:
        match = _ACK_SEQ.search(reply.data)
        if match:
            return int(match.group(1))
    data = json.loads(reply.data)
    error = data.get("error")
    if error:
        if error.get("err_code") == ERR_WRONG_LAST_SEQUENCE:
            return 0
        raise BackendError(
            f"NATS JetStream: {error.get('description')} (code {error.get('err_code')})"
        )
    return int(data["seq"])


def parse_time(text: str) -> float:
    """A JetStream RFC 3339 timestamp (nanosecond precision) as POSIX seconds."""
    text = text.strip().rstrip("Z")
    whole, _, frac = text.partition(".")
    base = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def ack_info(reply: str | None) -> tuple[int, float]:
    """(delivery count, server timestamp) from a JetStream ack subject; (0, 0.0) if unknown."""
    if not reply:
        return 0, 0.0
    tokens = reply.split(".")
    try:
        if len(tokens) == 9:
            return int(tokens[4]), int(tokens[7]) / NS
        if len(tokens) >= 11:
            return int(tokens[6]), int(tokens[9]) / NS
    except ValueError:
        pass
    return 0, 0.0


def stream_seq(reply: str | None) -> int:
    """The stream sequence of a delivered message from its ack subject; 0 if unknown."""
    if not reply:
        return 0
    tokens = reply.split(".")
    try:
        if len(tokens) == 9:
            return int(tokens[5])
        if len(tokens) >= 11:
            return int(tokens[7])
    except ValueError:
        pass
    return 0


class Consumer:
    """One durable pull consumer, and this backend's two inboxes for it (fetches, long polls)."""

    def __init__(self, name: str, subject: str, next_subject: str) -> None:
        self.name = name
        self.subject = subject
        self.next_subject = next_subject
        self.buffer: deque[tuple[Any, float]] = deque()
        self.fetch_inbox = ""
        self.poll_inbox = ""
        self.subs: list[Any] = []
        self.fetch_waiter: asyncio.Future[None] | None = None
        self.fetch_need = 0
        self.fetch_got = 0
        self.poll_until = 0.0
        self.return_scheduled = False
        self.lock = asyncio.Lock()
