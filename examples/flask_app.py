"""sitq in a Flask application: a view enqueues with the blocking SyncTaskQueue, another says
where the task is.

    pip install sitq flask
    SITQ_URL=sqlite:///shop.db flask --app flask_app run
    SITQ_URL=sqlite:///shop.db sitq worker --import flask_app

POST /thumbnails (form: path, width) answers 202 with the task's id; GET /tasks/<task_id> its
status (pending, running, success, failed, cancelled).
"""

import atexit
import os
import threading

from flask import Blueprint, Flask, current_app, request

from sitq import SyncTaskQueue

bp = Blueprint("thumbnails", __name__)
_lock = threading.Lock()


def make_thumbnail(path: str, width: int) -> str:
    """The task: a plain function, run by a worker process."""
    return f"{path} resized to {width} px wide"


def get_queue() -> SyncTaskQueue:
    """The application's queue, made on first use in this process: after a server has forked
    its workers, since a SyncTaskQueue runs a thread of its own. Closed at exit."""
    with _lock:
        queue = current_app.extensions.get("sitq")
        if queue is None:
            queue = current_app.extensions["sitq"] = SyncTaskQueue(current_app.config["SITQ_URL"])
            atexit.register(queue.close)
        return queue


@bp.post("/thumbnails")
def thumbnail() -> tuple[dict[str, str], int]:
    """Enqueue a thumbnail; its task id at once."""
    width = int(request.form.get("width", "256"))
    task_id = get_queue().enqueue(make_thumbnail, request.form["path"], width)
    return {"task_id": task_id}, 202


@bp.get("/tasks/<path:task_id>")
def task_status(task_id: str) -> tuple[dict[str, str], int]:
    """Where a task is, or 404 for an id sitq does not know."""
    status = get_queue().get_status(task_id)
    if status is None:
        return {"error": f"no task {task_id!r} (unknown, or its result has expired)"}, 404
    return {"task_id": task_id, "status": status.value}, 200


def create_app(url: str | None = None) -> Flask:
    """The application on the sitq backend at ``url`` (default: SITQ_URL, or ./sitq.db)."""
    app = Flask(__name__)
    app.config["SITQ_URL"] = url or os.environ.get("SITQ_URL", "sqlite:///sitq.db")
    app.register_blueprint(bp)
    return app


app = create_app()
