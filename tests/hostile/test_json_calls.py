"""JsonSerializer against someone who can write to the backend.

A stored JSON call names its function by ``module:qualname``, and a worker imports and calls it:
without a guard, a forged ``{"f": "os:system", ...}`` runs a shell command in the worker. The two
guards, and what the tests show of them:

* ``secret=``: payloads are signed with HMAC-SHA256 (the code PickleSerializer uses), keys
  rotate (the first signs, every key verifies), and a serializer with a secret refuses a
  payload that is unsigned, altered or signed with another key before decoding it;
* ``modules=``: an allow-list of dotted module names (a name covers its submodules, by dotted
  prefix, never by string prefix). Enqueueing any other function fails at once with
  ``SerializationError``; a worker refuses a payload naming another module without importing
  it, and a name that resolves to a callable defined outside the list (``os.system`` reached
  through an allowed module) without calling it.

Then, on every shared backend, forged calls written through the backend interface next to good
tasks, drained by a real ``sitq worker --serializer json`` process configured from the
environment (``SITQ_SECRET``, ``SITQ_JSON_MODULES``): each forged task fails with a clear error,
no command runs, every good task runs once, and the worker keeps running.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sitq import (
    ConfigurationError,
    JsonSerializer,
    PickleSerializer,
    SerializationError,
    TaskQueue,
    TaskStatus,
)
from sitq._task import Outcome, load_call
from sitq.models import NewTask
from sitq.options import TaskOptions
from tests.conformance import tasks
from tests.conftest import BackendFactory, WorkerProcesses

KEY = b"k" * 32
OLD = b"o" * 32
FOREIGN = b"f" * 32
ALLOWED = ("tests.conformance",)
SETTINGS = settings(
    max_examples=80,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
)


def _call(path: str, *args: Any) -> bytes:
    return json.dumps({"f": path, "a": list(args), "k": {}}).encode()


# -- signing ------------------------------------------------------------------------------------


def test_signed_json_round_trips_and_refuses_what_it_cannot_verify() -> None:
    signed = JsonSerializer(secret=KEY)
    assert signed.signed and not JsonSerializer().signed
    data = signed.dumps_call(tasks.add, (1,), {"y": 2})
    func, args, kwargs = signed.loads_call(data)
    assert func(*args, **kwargs) == 3
    assert signed.loads(signed.dumps({"a": [1, None]})) == {"a": [1, None]}
    with pytest.raises(SerializationError, match="not signed, refused without decoding it"):
        signed.loads_call(_call("os:system", "true"))
    with pytest.raises(SerializationError, match="matches none of this serializer's keys"):
        signed.loads_call(JsonSerializer(secret=FOREIGN).dumps_call(tasks.add, (1, 2), {}))
    # A reader without a secret reads signed payloads (it verifies nothing).
    assert JsonSerializer().loads_call(data)[0] is tasks.add
    # The two serializers sign alike but never read each other's calls as valid calls.
    with pytest.raises(SerializationError):
        PickleSerializer(secret=KEY).loads_call(data)


@SETTINGS
@given(cut=st.integers(0, 10_000), flip=st.integers(1, 255), extra=st.binary(max_size=32))
def test_any_change_to_a_signed_json_call_is_refused(cut: int, flip: int, extra: bytes) -> None:
    serializer = JsonSerializer(secret=KEY)
    signed = serializer.dumps_call(tasks.add, (1, 2), {})
    cut %= len(signed)
    altered = bytearray(signed)
    altered[cut] ^= flip
    for data in (signed[:cut], bytes(altered), signed + extra + b" "):
        with pytest.raises(SerializationError) as caught:
            serializer.loads_call(data)
        assert "refused without decoding it" in str(caught.value) or "signature" in str(
            caught.value
        )
        assert isinstance(load_call(serializer, data), Outcome)


def test_rotation_from_the_old_key_to_a_new_one() -> None:
    old = JsonSerializer(secret=OLD)
    rotating = JsonSerializer(secret=[KEY, OLD])
    assert rotating.loads_call(old.dumps_call(tasks.add, (1, 2), {}))[0] is tasks.add
    new_call = rotating.dumps_call(tasks.add, (1, 2), {})
    assert JsonSerializer(secret=KEY).loads_call(new_call)[0] is tasks.add
    with pytest.raises(SerializationError, match="matches none"):
        old.loads_call(new_call)


@pytest.mark.parametrize("secret", [b"short", "", [], [KEY, b"tiny"], 42])
def test_weak_or_bad_json_secrets_are_rejected(secret: object) -> None:
    with pytest.raises(ConfigurationError, match=r"JsonSerializer\(secret=...\).*16 bytes"):
        JsonSerializer(secret=secret)  # type: ignore[arg-type]


def test_repr_shows_the_modules_and_never_the_secret() -> None:
    shown = repr(JsonSerializer(secret=KEY, modules=ALLOWED))
    assert "tests.conformance" in shown and "k" * 16 not in shown


# -- the allow-list -----------------------------------------------------------------------------

MODULE = st.lists(
    st.sampled_from(["a", "b", "ab", "tasks", "app", "x1"]), min_size=1, max_size=4
).map(".".join)


@SETTINGS
@given(allowed=st.lists(MODULE, min_size=1, max_size=3), module=MODULE)
def test_a_module_is_allowed_exactly_when_a_listed_one_is_a_dotted_prefix_of_it(
    allowed: list[str], module: str
) -> None:
    """``app`` allows ``app`` and ``app.x``, never ``ab`` or ``apple`` (names overlap here)."""
    parts = module.split(".")
    inside = any(parts[: len(a.split("."))] == a.split(".") for a in allowed)
    assert JsonSerializer(modules=allowed)._allows(module) is inside


async def test_enqueueing_a_function_outside_the_allowed_modules_fails_at_once() -> None:
    queue = TaskQueue("memory://", JsonSerializer(modules=("tests.conformance.tasks",)))
    try:
        assert await queue.enqueue(tasks.add, 1, 2)
        with pytest.raises(SerializationError, match=r"not in the modules .*tests\.conformance"):
            await queue.enqueue(json.dumps, [1])
        with pytest.raises(SerializationError, match="not in the modules"):
            await queue.enqueue(time.sleep, 0)
    finally:
        await queue.close()


def test_a_payload_naming_another_module_is_refused_without_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "sitq_tripwire_" + uuid.uuid4().hex[:8]
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\ndef run():\n    return 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    serializer = JsonSerializer(modules=ALLOWED)
    for path in (f"{name}:run", "os:system", "tests.conformancex:add", "tests:conformance"):
        with pytest.raises(SerializationError, match="refused without importing it"):
            serializer.loads_call(_call(path, "true"))
    assert not marker.exists() and name not in sys.modules
    # Without an allow-list the same payload is imported and would be called: the documented
    # risk of a backend others can write to.
    assert JsonSerializer().loads_call(_call(f"{name}:run"))[0]() == 1
    assert marker.exists()


@pytest.mark.parametrize(
    "path", ["tests.conformance.tasks:os.system", "tests.conformance.tasks:time.sleep"]
)
def test_a_name_resolving_outside_the_allowed_modules_is_refused_without_calling_it(
    path: str,
) -> None:
    with pytest.raises(SerializationError, match="refused without calling it"):
        JsonSerializer(modules=ALLOWED).loads_call(_call(path, "true"))


@pytest.mark.parametrize("modules", [(), [""], ["a..b"], ["a b"], [1], "x-y"])
def test_bad_module_lists_are_rejected(modules: Any) -> None:
    with pytest.raises(ConfigurationError, match="dotted module names"):
        JsonSerializer(modules=modules)


# -- forged calls on every backend, with a real worker process ----------------------------------


def _forged(task_id: str, payload: bytes) -> NewTask:
    now = time.time()
    return NewTask(
        id=task_id,
        queue="default",
        payload=payload,
        options=TaskOptions().engine_options(),
        priority=0,
        eta=now,
        enqueued_at=now,
        result_ttl=3600.0,
    )


@pytest.mark.multiprocess
async def test_forged_json_calls_fail_their_task_and_the_worker_goes_on(
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    serializer = JsonSerializer(secret=KEY, modules=ALLOWED)
    genuine = serializer.dumps_call(tasks.add, (1, 2), {})
    altered = genuine.replace(b"[1,2]", b"[1,3]")
    assert altered != genuine
    forgeries = {
        "unsigned": (_call("os:system", command), "not signed"),
        "foreign-key": (
            JsonSerializer(secret=FOREIGN).dumps(json.loads(_call("os:system", command))),
            "matches none",
        ),
        "altered": (altered, "matches none"),
        # Signed with the right key (a leaked key, or a buggy enqueuer): the allow-list holds.
        "signed-outside": (serializer.dumps(json.loads(_call("os:system", command))), "modules"),
        "signed-reached": (
            serializer.dumps(json.loads(_call("tests.conformance.tasks:os.system", command))),
            "refused without calling it",
        ),
    }
    log_dir = tmp_path / "runs"
    log_dir.mkdir()
    assert shared_backends.url is not None
    queue = TaskQueue(shared_backends.make(), serializer)
    await queue.connect()
    try:
        good = [await queue.enqueue(tasks.record, str(log_dir), f"good-{i}") for i in range(6)]
        stored = await queue.backend.enqueue(
            [_forged(f"forged-{name}", data) for name, (data, _) in forgeries.items()]
        )
        assert all(stored)
        monkeypatch.setenv("SITQ_SECRET", KEY.decode())
        monkeypatch.setenv("SITQ_JSON_MODULES", ",".join(ALLOWED))
        proc = worker_processes.start(shared_backends.url, extra=("--serializer", "json"))
        for task_id in good:
            result = await queue.get_result(task_id, timeout=30)
            assert result is not None and result.status is TaskStatus.SUCCESS, result
        for name, (_, expected) in forgeries.items():
            result = await queue.get_result(f"forged-{name}", timeout=30)
            assert result is not None, name
            assert result.status is TaskStatus.FAILED, (name, result.status)
            assert "cannot load task" in (result.error or ""), (name, result.error)
            assert expected in (result.error or ""), (name, result.error)
        assert proc.poll() is None, worker_processes.output(proc)
        assert worker_processes.stop(proc) == 0, worker_processes.output(proc)
        assert not marker.exists(), "a forged call ran a command"
        runs = {i: len(tasks.executions(log_dir, f"good-{i}")) for i in range(len(good))}
        assert set(runs.values()) == {1}, runs
    finally:
        await queue.close()
