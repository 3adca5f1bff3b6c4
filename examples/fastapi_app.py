"""sitq in a FastAPI application: the queue opened and closed with the application, handed to
endpoints as a dependency, and sitq's dashboard mounted under /sitq.

    pip install 'sitq[web]' fastapi
    SITQ_URL=sqlite:///shop.db uvicorn fastapi_app:app    # then open http://127.0.0.1:8000/sitq/
    SITQ_URL=sqlite:///shop.db sitq worker --import fastapi_app

POST /signup?email=... enqueues the welcome mail and answers 202 with the task's id;
GET /tasks/{task_id} says where it is (pending, running, success, failed, cancelled). Guard /sitq
as the rest of the application is guarded, or give create_app a token (SITQ_WEB_TOKEN here).
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request

from sitq import TaskQueue
from sitq.web import create_app as create_dashboard


def send_welcome(email: str) -> str:
    """The task: a plain function, so the worker runs it in a thread."""
    return f"welcome mail sent to {email}"


def get_queue(request: Request) -> TaskQueue:
    """The application's queue, as the lifespan opened it."""
    queue: TaskQueue = request.state.queue
    return queue


Queue = Annotated[TaskQueue, Depends(get_queue)]
router = APIRouter()


@router.post("/signup", status_code=202)
async def signup(email: str, queue: Queue) -> dict[str, str]:
    """Sign someone up; the welcome mail goes out through the queue."""
    return {"task_id": await queue.enqueue(send_welcome, email)}


@router.get("/tasks/{task_id:path}")
async def task_status(task_id: str, queue: Queue) -> dict[str, str]:
    """Where a task is: pending, running, success, failed or cancelled."""
    status = await queue.get_status(task_id)
    if status is None:
        raise HTTPException(404, f"no task {task_id!r} (unknown, or its result has expired)")
    return {"task_id": task_id, "status": status.value}


def create_app(url: str, *, dashboard_token: str | None = None) -> FastAPI:
    """The application on the sitq backend at ``url``."""
    queue = TaskQueue(url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, TaskQueue]]:
        # Connected before the first request, closed after the last; endpoints find it in
        # request.state (the dependency above).
        await queue.connect()
        try:
            yield {"queue": queue}
        finally:
            await queue.close()

    app = FastAPI(lifespan=lifespan)
    app.include_router(router)
    # Links, forms and the page scripts follow the mount point: everything lives under /sitq.
    app.mount("/sitq", create_dashboard(queue, token=dashboard_token))
    return app


app = create_app(
    os.environ.get("SITQ_URL", "sqlite:///sitq.db"),
    dashboard_token=os.environ.get("SITQ_WEB_TOKEN"),
)
