"""docs/contract.md, Cancellation: ``cancel`` answers True (pending, now cancelled; or running,
asked to stop) or False (already finished), whatever a worker is doing to the task at that moment.

``TaskNotFound`` is only for ids the backend does not know: a cancel that lands while a worker
claims or finishes the task must still give one of the two answers, and the task's final result
must agree with it.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter

from sitq import AsyncWorker, Result, TaskQueue, TaskStatus
from sitq.backends.base import Backend
from tests.conftest import BackendFactory

# Completions of the task functions below, by the label each task is given. The workers run
# in the test's own process and loop, so the test sees exactly which attempts ran to the end.
_COMPLETED: Counter[str] = Counter()
# Gates the gated tasks wait on, by test run.
_GATES: dict[str, asyncio.Event] = {}


async def noop(label: str) -> None:
    """A task that finishes at once and records that it did."""
    await asyncio.sleep(0)
    _COMPLETED[label] += 1


async def gated(run: str, label: str) -> None:
    """A task that cannot finish before its test opens the gate; records that it did."""
    await _GATES[run].wait()
    _COMPLETED[label] += 1


def _label() -> str:
    return uuid.uuid4().hex


def _worker_backend(backends: BackendFactory, queue: TaskQueue) -> Backend:
    """The worker's own backend object (its own connections) where the store is shared."""
    return backends.make() if backends.shared else queue.backend


async def _cancel(queue: TaskQueue, task_id: str, delay: float) -> bool | Exception:
    # The delay only places the cancel at a random moment of the task's life.
    await asyncio.sleep(delay)
    try:
        answer = await queue.cancel(task_id)
        if answer is False and await queue.get_result(task_id, timeout=0) is None:
            return AssertionError("cancel answered False, but the task had no result yet")
    except Exception as exc:
        return exc
    return answer


async def test_cancel_racing_the_finish_answers_false_for_a_finished_task(
    backends: BackendFactory,
) -> None:
    """1,000 quick tasks drained by a worker, each cancelled 0-60 ms after its enqueue: many
    cancels land while the task finishes. Each answers True or False, never TaskNotFound;
    False means the result was already there; the final result agrees with the answer (True
    and success only for a task that was running and finished before its worker saw the
    flag, as the contract allows)."""
    rng = random.Random()
    async with TaskQueue(backends.make()) as queue:
        worker = AsyncWorker(_worker_backend(backends, queue), concurrency=10, poll_interval=0.2)
        async with worker:
            ids: list[str] = []
            labels: dict[str, str] = {}
            cancels: list[asyncio.Task[bool | Exception]] = []
            for _ in range(1000):
                label = _label()
                task_id = await queue.enqueue(noop, label)
                ids.append(task_id)
                labels[task_id] = label
                cancels.append(asyncio.create_task(_cancel(queue, task_id, rng.uniform(0, 0.06))))
                # Paces the enqueues so that the worker keeps up even where an enqueue does no
                # I/O (the in-memory backend): most cancels should meet a finishing or finished
                # task, not a backlog.
                await asyncio.sleep(0.001)
            outcomes = dict(zip(ids, await asyncio.gather(*cancels), strict=True))
            answers = {t: a for t, a in outcomes.items() if isinstance(a, bool)}
            wrong = [f"{t}: {a!r}" for t, a in outcomes.items() if not isinstance(a, bool)]
            assert not wrong, f"{len(wrong)} of {len(ids)} cancels went wrong, e.g. {wrong[:3]}"
            results = {t: await queue.get_result(t, timeout=15) for t in ids}
        _check_final_results(answers, results, labels)
        answered = Counter(answers.values())
        assert answered[False] > 0, f"no cancel landed after a finish: {answered}"


def _check_final_results(
    answers: dict[str, bool], results: dict[str, Result | None], labels: dict[str, str]
) -> None:
    problems: list[str] = []
    for task_id, answer in answers.items():
        result = results[task_id]
        completed = _COMPLETED[labels[task_id]]
        if result is None:
            problems.append(f"{task_id}: no result")
        elif result.status == TaskStatus.CANCELLED:
            if not answer:
                problems.append(f"{task_id}: cancelled although cancel answered False")
            if completed:
                problems.append(f"{task_id}: cancelled although its function ran to the end")
        elif result.status == TaskStatus.SUCCESS:
            if completed != 1:
                problems.append(f"{task_id}: success with {completed} completed runs")
        else:
            problems.append(f"{task_id}: ended {result.status} ({result.error})")
    assert not problems, f"{len(problems)} tasks disagree with their cancel: {problems[:5]}"


async def test_cancel_racing_claims_of_several_workers(backends: BackendFactory) -> None:
    """Three workers claim tasks as they are enqueued while cancels arrive 0-8 ms after each
    enqueue, so they land before, during and after the claim. No task can finish before the
    gate opens, so every cancel must answer True (pending, or running and asked to stop), and
    every cancelled task must end ``cancelled`` without its function ever running to the end;
    the tasks nobody cancelled all succeed once the gate opens."""
    rng = random.Random()
    run = uuid.uuid4().hex
    _GATES[run] = asyncio.Event()
    try:
        async with TaskQueue(backends.make()) as queue:
            workers = [
                AsyncWorker(
                    _worker_backend(backends, queue), concurrency=60, lease=1.5, poll_interval=0.2
                )
                for _ in range(3)
            ]
            for worker in workers:
                await worker.start()
            try:
                ids: list[str] = []
                labels: dict[str, str] = {}
                cancels: dict[str, asyncio.Task[bool | Exception]] = {}
                for i in range(400):
                    label = _label()
                    task_id = await queue.enqueue(gated, run, label)
                    ids.append(task_id)
                    labels[task_id] = label
                    if i % 4:
                        delay = rng.choice([0.0, rng.uniform(0, 0.008)])
                        cancels[task_id] = asyncio.create_task(_cancel(queue, task_id, delay))
                answers = dict(zip(cancels, await asyncio.gather(*cancels.values()), strict=True))
                wrong = [f"{t}: {a!r}" for t, a in answers.items() if a is not True]
                assert not wrong, (
                    f"{len(wrong)} of {len(answers)} cancels of unfinished tasks did not answer "
                    f"True, e.g. {wrong[:3]}"
                )
                # Cancelled running tasks stop at their worker's next heartbeat.
                started = Counter[bool]()
                for task_id in cancels:
                    result = await queue.get_result(task_id, timeout=15)
                    assert result is not None, f"{task_id} was not cancelled in time"
                    assert result.status == TaskStatus.CANCELLED, (task_id, result.status)
                    started[result.started_at is not None] += 1
                # The cancels met both pending and claimed tasks.
                assert started[True] and started[False], started
                kept = [t for t in ids if t not in cancels]
                for task_id in kept:
                    status = await queue.get_status(task_id)
                    assert status in (TaskStatus.PENDING, TaskStatus.RUNNING), (task_id, status)
                _GATES[run].set()
                for task_id in kept:
                    result = await queue.get_result(task_id, timeout=15)
                    assert result is not None and result.status == TaskStatus.SUCCESS, task_id
                # Every task still waiting at the gate woke when it opened, before the results
                # above were read: a cancelled task that a worker still ran shows here.
                assert [t for t in kept if _COMPLETED[labels[t]] != 1] == []
                assert [t for t in cancels if _COMPLETED[labels[t]]] == []
                for task_id in cancels:
                    result = await queue.get_result(task_id, timeout=0)
                    assert result is not None and result.status == TaskStatus.CANCELLED
            finally:
                # Tasks left waiting (a failed check above) would hold each stop() for its
                # whole shutdown timeout.
                _GATES[run].set()
                for worker in workers:
                    await worker.stop()
    finally:
        del _GATES[run]
