"""sitq's web dashboard and its JSON API (``pip install 'sitq[web]'``).

``create_app(queue)`` returns the dashboard of a :class:`sitq.TaskQueue` as an ASGI application
(Starlette): serve it with ``sitq web URL``, or mount it in a FastAPI or Starlette application::

    app.mount("/sitq", create_app(TaskQueue("postgresql://...")))

The layers: ``_app`` (pages, and ``create_app``), ``_api`` (JSON API), ``_metrics``
(``/metrics``), ``_security`` (token, origin, host and header checks), ``_counts`` (cached counts
and throughput), ``_params`` (reading parameters), ``templates/`` (Jinja2, autoescaped) and
``static/`` (``sitq.css``, ``sitq.js``: every asset is served from here, nothing from the
internet). docs/dashboard.md describes it all.

Nothing here reads a task's arguments or result: pages and API show :class:`sitq.TaskInfo`,
which never holds a payload, so no page can run code through a stored call.

Element hooks, stable for browser tests and scripts:

- every page: ``body[data-page]`` (``overview``, ``tasks``, ``task``, ``purge``, ``login``,
  ``error``), ``body[data-root]`` (the mount point), ``body[data-read-only]``
  (``true``/``false``); ``#nav-overview``, ``#nav-tasks``, ``#nav-running``, ``#nav-failed``
  (the last three not on the login page);
  ``#flash`` (the outcome of an action); ``#read-only`` (the badge, read-only only);
  ``form#logout`` (with a token); ``#error-message`` (on an error page).
- overview: ``table#counts`` with a row ``tr[data-queue="<queue>"]`` per queue and a count
  ``a[data-count="<queue>:<state>"]`` for each state (``pending``, ``scheduled``,
  ``running``, ``succeeded``, ``failed``, ``cancelled``), refreshed every 2 s;
  ``#refreshed[data-counted-at]``; per queue ``form[data-action="requeue-failed"][data-queue]``
  and ``a[data-action="purge"][data-queue]``; ``#throughput`` with
  ``tr[data-throughput="60|300|900"]`` holding ``td[data-field="finished|failed|per_minute|
  observed"]``; ``#throughput-minutes .bar[data-minute]``; ``table#workers`` with
  ``tr[data-worker-id]``; ``table#crons`` with ``tr[data-cron]``; ``#cron-error``.
- task lists: ``table#tasks`` with ``tr[data-task-id][data-status]`` and ``a.task-link``
  (its ``title`` is the whole id);
  ``#status-filters a[data-filter-status]`` (``all`` or a status); ``#queue-filters
  a[data-filter-queue]``; ``#next-page``, ``#first-page``; ``#no-tasks``; for one queue,
  ``#purge-link`` and, listing its failed tasks, ``form#requeue-failed``.
- a task: ``body[data-task-id][data-status]``; ``#task-id``, ``#status[data-status]``,
  ``#function``, ``#queue``, ``#attempts``, ``#priority``, ``#enqueued-at``, ``#eta``,
  ``#started-at``, ``#finished-at``, ``#worker``; ``#progress-section`` (hidden unless
  running), ``progress#progress[data-progress]``, ``#progress-percent``,
  ``#progress-message`` (refreshed every 2 s while the task runs); ``#error``,
  ``#traceback`` (under ``#error-heading`` and ``#traceback-heading``, which say "of an
  earlier attempt" while the task is pending or running again); actions ``form#cancel``
  (pending or running) and ``form#requeue`` (failed or cancelled), each submitted by its
  ``button``.
- purge: ``#purge-choices a[data-purge-status]``; ``#purge-question``, ``#purge-count``,
  ``form#purge-confirm``, ``#purge-submit``, ``#purge-cancel``.
- login: ``form#login``, ``input#token``, ``#login-submit``, ``#login-error``.
"""

from __future__ import annotations

from sitq.errors import MissingDependencyError

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise MissingDependencyError(
        f"sitq.web needs the web extra ({exc.name or 'starlette'} is missing): "
        "pip install 'sitq[web]'"
    ) from exc

from sitq.web._app import create_app

__all__ = ["create_app"]
