"""The Redis backend's own RESP encoder says what redis-py's encoder says, on every kind of
argument sitq sends; the enqueue call it encodes in one pass is the plain command; and the Lua
scripts hold the values the backend assumes."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("redis")

from redis.asyncio.connection import Connection

from sitq.backends.redis import _scripts
from sitq.backends.redis._keys import queue_keys
from sitq.backends.redis._wire import Raw, encode_enqueue, pack
from sitq.models import NewTask, TaskId

_REDIS_PY = Connection()


def _redis_py(*commands: tuple[Any, ...]) -> bytes:
    return b"".join(b"".join(_REDIS_PY.pack_command(*c)) for c in commands)


ARGS: list[Any] = [
    b"",
    "",
    b"\x00\r\n\xff binary\r\n",
    "unicode: é ✓ 𝄞 \r\n",
    0,
    -1,
    2**63 - 1,
    -(2**70),
    0.1,
    -1.5e-300,
    1e22,
    1722222222.123456,
    b"x" * 1_000_000,
    "ü" * 70_000,
    TaskId("0b6e4c1e-8f7f-4d43-a8ae-4d6f2b0b7c11"),  # a str subclass: sent as its text
]


@pytest.mark.parametrize("arg", ARGS, ids=lambda a: f"{type(a).__name__}-{len(str(a))}")
def test_one_argument_encodes_as_redis_py_does(arg: Any) -> None:
    assert pack([("SET", "key", arg)]) == _redis_py(("SET", "key", arg))


def test_many_commands_encode_as_redis_py_does() -> None:
    commands = [("EVALSHA", "ab" * 20, 2, "k1", b"k2", *ARGS), ("PING",), ("GET", "")]
    assert pack(commands) == _redis_py(*commands)


def test_a_raw_command_is_sent_as_encoded() -> None:
    raw = Raw(lambda: _redis_py(("GET", "a")), sha=None)
    assert pack([("PING",), raw, ("GET", b"b")]) == _redis_py(
        ("PING",), ("GET", "a"), ("GET", b"b")
    )


def _task(i: int, **kw: Any) -> NewTask:
    fields: dict[str, Any] = {
        "id": f"id-{i}-é",
        "queue": "q",
        "payload": bytes(range(256)) * i,
        "options": '{"a": "ü"}',
        "priority": i - 2,
        "eta": 100.0,
        "enqueued_at": 100.0,
        "result_ttl": 3600.0,
    }
    fields.update(kw)
    return NewTask(**fields)


def test_the_enqueue_call_is_the_plain_command() -> None:
    k = queue_keys("sitq", "q", "sitq:work:")
    sha = _scripts.SCRIPTS["enqueue"].sha
    chunk = [
        _task(0),
        _task(1, eta=200.5, fresh_id=True, concurrency_key="ck ✓", concurrency_limit=3),
        _task(2, payload=b"", options="", result_ttl=0.25, concurrency_key="x"),
        _task(3, function="app.jobs.<locals>.ünïcode"),
    ]
    plain: list[Any] = ["EVALSHA", sha, 6 + len(chunk)]
    plain += [k.ready, k.sched, k.seq, k.done_s, k.done_f, k.done_c]
    plain += [k.index + t.id for t in chunk]
    plain += [k.task, k.work, "q", k.prefix]
    for t in chunk:
        plain += [
            t.id,
            "1" if t.fresh_id else "0",
            t.priority,
            "" if t.eta <= t.enqueued_at else float(t.eta),
            t.payload,
            t.options,
            float(t.result_ttl),
            t.concurrency_key or "",
            "" if t.concurrency_limit is None else t.concurrency_limit,
            t.function,
        ]
    assert encode_enqueue(sha, k, chunk) == _redis_py(tuple(plain))


def test_the_scripts_hold_the_windows_the_backend_names() -> None:
    enqueue = _scripts.SCRIPTS["enqueue"].source
    revoke = _scripts.SCRIPTS["revoke"].source
    assert f"now_ms - tonumber(claimed) > {_scripts.CLAIM_WINDOW_MS} then" in enqueue
    replace = _scripts.SCRIPTS["replace"].source
    assert f"now_ms - tonumber(claimed) > {_scripts.CLAIM_WINDOW_MS} then" in replace
    assert f"if now - tonumber(ARGV[2]) < {_scripts.FENCE_MS} then" in revoke
    assert f"redis.call('PEXPIRE', KEYS[2], {_scripts.FENCE_MS})" in revoke
    for script in _scripts.SCRIPTS.values():
        # Each fragment a script uses comes before it once.
        assert script.source.count("local function now_s()") <= 1, script.name
