"""Debounce, on SQLite: a search index updated once per burst of edits, not once per edit."""

import asyncio
import json
import time
from pathlib import Path

from sitq import AsyncWorker, TaskQueue

INDEX = Path("search_index.jsonl")  # stands for a real index (Elasticsearch, Meilisearch...)


def reindex(doc_id: int, text: str) -> str:
    with INDEX.open("a") as index:  # one line per update of the index
        index.write(json.dumps({"doc": doc_id, "text": text.lower()}) + "\n")
    return f"indexed doc {doc_id}: {text!r}"


def updates() -> list[str]:
    return INDEX.read_text().splitlines() if INDEX.exists() else []


async def main() -> None:
    INDEX.unlink(missing_ok=True)
    async with (
        TaskQueue("sqlite:///search_index.db") as queue,
        AsyncWorker(queue.backend, poll_interval=0.1),
    ):
        # Someone types into document 42: each save asks for a reindex. With task_id and
        # debounce, each call replaces the pending one and moves it 0.5 s later, so the
        # index is updated once, 0.5 s after the last save, with the last text.
        text = ""
        for word in ["Debounce", "runs", "a", "burst", "of", "calls", "once"]:
            text = f"{text} {word}".strip()
            last_save = time.time()
            await queue.options(task_id="reindex:42", debounce=0.5).enqueue(reindex, 42, text)
            await asyncio.sleep(0.1)  # the next save comes well inside the 0.5 s
        print(await queue.get_value("reindex:42", timeout=10))
        result = await queue.get_result("reindex:42")
        started = result.started_at.timestamp() if result and result.started_at else 0.0
        after = "at least" if started - last_save >= 0.5 else "less than"
        print(f"index updates: {len(updates())}, {after} 0.5 s after the last save")

        # Once it has run, the next save starts a new run (its result replaces the last).
        await queue.options(task_id="reindex:42", debounce=0.2).enqueue(reindex, 42, "Edited")
        print(await queue.get_value("reindex:42", timeout=10))
        print(f"index updates: {len(updates())}")


if __name__ == "__main__":
    asyncio.run(main())
