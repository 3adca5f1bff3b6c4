"""sitq's dashboard mounted in a FastAPI application, under /sitq.

    pip install 'sitq[web]' fastapi
    SITQ_URL=sqlite:///shop.db uvicorn fastapi_app:app    # then open http://127.0.0.1:8000/sitq/

The application enqueues on the same queue the dashboard shows (POST /signup?email=...); a
worker runs the tasks: `sitq worker sqlite:///shop.db --import fastapi_app`. Guard /sitq as
the rest of the application is guarded, or give create_app a token.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sitq import TaskQueue
from sitq.web import create_app

queue = TaskQueue(os.environ.get("SITQ_URL", "sqlite:///sitq.db"))


def send_welcome(email: str) -> str:
    return f"welcome mail sent to {email}"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await queue.connect()
    yield
    await queue.close()


app = FastAPI(lifespan=lifespan)
# Links, forms and the page scripts follow the mount point: everything lives under /sitq.
app.mount("/sitq", create_app(queue, token=os.environ.get("SITQ_WEB_TOKEN")))


@app.post("/signup")
async def signup(email: str) -> dict[str, str]:
    """Sign someone up; the welcome mail goes out through the queue."""
    task_id = await queue.enqueue(send_welcome, email)
    return {"task_id": task_id}
