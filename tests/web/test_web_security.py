"""What keeps the dashboard safe, against a real ``sitq web`` on SQLite: the token (header and
login cookie), refusing cross-site POSTs, escaping what tasks wrote, read-only mode, static
files that cannot leave their folder, the response headers, binding 127.0.0.1 by default and
refusing other Host names there, and the errors when an extra is missing."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from http.client import HTTPMessage
from pathlib import Path
from urllib.parse import quote

import pytest

from sitq import AsyncWorker, TaskQueue
from tests.conformance import tasks
from tests.conftest import REPO, WorkerProcesses, wait_until
from tests.services import require_module
from tests.web import tasks as web_tasks
from tests.web.server import Client, Processes
from tests.web.tasks import HOSTILE

require_module("starlette")

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
TOKEN = "s3cret-token-for-tests"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


@pytest.fixture
async def store(tmp_path: Path) -> dict[str, str]:
    """A SQLite store with a succeeded, a failed, a pending and a cancelled task on ``q``."""
    url = f"sqlite:///{tmp_path / 'web.db'}"
    async with TaskQueue(url) as queue:
        q = queue.options(queue="q")
        made = {
            "url": url,
            "success": await q.enqueue(tasks.add, 1, 2),
            "failed": await q.enqueue(tasks.fail, "broken on purpose"),
        }
        async with AsyncWorker(queue.backend, queues=["q"], poll_interval=0.1):
            await queue.get_result(made["success"], timeout=30)
            await queue.get_result(made["failed"], timeout=30)
        later = datetime.now(UTC) + timedelta(hours=1)
        made["pending"] = await q.enqueue_at(later, tasks.add, 3, 4)
        made["cancelled"] = await q.enqueue_at(later, tasks.add, 5, 6)
        assert await queue.cancel(made["cancelled"])
    return made


async def status_of(url: str, task_id: str) -> str | None:
    async with TaskQueue(url) as queue:
        found = await queue.get_status(task_id)
    return None if found is None else found.value


def assert_security_headers(reply_headers: HTTPMessage, where: str) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert reply_headers.get(name) == value, (where, name)
    policy = reply_headers.get("Content-Security-Policy")
    assert policy is not None, where
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'", where
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, where


def assert_no_inline_script(html: str, where: str) -> None:
    """Every script of the page comes from a file; no element carries an event handler."""
    assert not re.search(r"<script(?![^>]*\ssrc=)[^>]*>", html), where
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", html, flags=re.IGNORECASE), where


# -- the token ---------------------------------------------------------------------------------


def test_a_token_guards_every_request_and_the_login_cookie_admits(
    store: dict[str, str], processes: Processes
) -> None:
    server = processes.web(store["url"], env={"SITQ_WEB_TOKEN": TOKEN})
    assert "token required" in server.output()
    failed = quote(store["failed"])

    for path in ("/", "/tasks", f"/tasks/{failed}", "/queues/q/purge?status=failed"):
        page = server.get(path)
        assert page.status == 303, path
        assert page.header("Location") == "/login?next=" + quote(path, safe=""), path
    for path in ("/api/queues", "/api/tasks", f"/api/tasks/{failed}", "/api/workers", "/metrics"):
        refused = server.get(path)
        assert refused.status == 401, path
        assert refused.header("WWW-Authenticate") == 'Bearer realm="sitq"'
        assert store["failed"] not in refused.text and "broken" not in refused.text
    # The stylesheet alone is open (the login page is styled); no other file is.
    css = server.get("/static/sitq.css")
    assert css.status == 200 and (css.header("Content-Type") or "").startswith("text/css")
    assert server.request("HEAD", "/static/sitq.css").status == 200
    assert server.post("/static/sitq.css").status == 401
    assert server.get("/static/sitq.js").status == 401
    assert server.get("/static/./sitq.css").status == 401
    assert server.post(f"/api/tasks/{failed}/requeue").status == 401
    assert server.post(f"/tasks/{failed}/requeue").status == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert server.get("/api/queues", headers=wrong).status == 401
    assert server.get("/api/queues", headers={"Authorization": TOKEN}).status == 401

    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/", "/tasks", f"/tasks/{failed}", "/api/queues", "/metrics", "/static/sitq.css"):
        assert server.get(path, headers=bearer).status == 200, path

    # The login form: a wrong token sets nothing, the right one a cookie that admits.
    form = server.get("/login")
    assert form.status == 200 and 'id="login"' in form.text and 'name="token"' in form.text
    assert 'href="/static/sitq.css"' in form.text and "sitq.js" not in form.text
    bad = server.post("/login", form={"token": "guess", "next": "/tasks"})
    assert bad.status == 401 and bad.header("Set-Cookie") is None
    assert 'id="login-error"' in bad.text
    good = server.post("/login", form={"token": TOKEN, "next": "/tasks?status=failed"})
    assert good.status == 303 and good.header("Location") == "/tasks?status=failed"
    set_cookie = good.header("Set-Cookie") or ""
    assert set_cookie.startswith("sitq_session=")
    attributes = {a.strip().split("=")[0].lower() for a in set_cookie.split(";")}
    assert {"httponly", "samesite", "path"} <= attributes
    assert "samesite=strict" in set_cookie.lower()
    assert TOKEN not in set_cookie
    cookie = {"Cookie": set_cookie.split(";", 1)[0]}
    for path in ("/", f"/tasks/{failed}", "/api/queues", "/metrics", "/static/sitq.js"):
        assert server.get(path, headers=cookie).status == 200, path
    requeued = server.post(
        f"/api/tasks/{failed}/requeue", headers={**cookie, "Origin": server.origin}
    )
    assert requeued.status == 200 and requeued.json()["requeued"] is True
    assert server.get("/api/queues", headers={"Cookie": "sitq_session=forged"}).status == 401

    # Logging in elsewhere than the dashboard's own pages goes nowhere else.
    for target in ("//evil.example/", "http://evil.example/", "\\\\evil.example"):
        away = server.post("/login", form={"token": TOKEN, "next": target})
        assert away.status == 303 and away.header("Location") == "/", target
    # A page elsewhere cannot log the visitor in (or out).
    evil = {"Origin": "http://evil.example"}
    assert server.post("/login", form={"token": TOKEN}, headers=evil).status == 403
    out = server.post("/logout", headers={**cookie, "Origin": server.origin})
    assert out.status == 303 and "sitq_session=" in (out.header("Set-Cookie") or "")
    assert "max-age=0" in (out.header("Set-Cookie") or "").lower()


def test_the_token_flag(store: dict[str, str], processes: Processes) -> None:
    server = processes.web(store["url"], "--token", TOKEN)
    assert server.get("/api/queues").status == 401
    assert server.get("/api/queues", headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    empty = subprocess.run(
        [sys.executable, "-m", "sitq", "web", store["url"], "--token", ""],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert empty.returncode == 2 and "--token must not be empty" in empty.stderr


# -- cross-site requests -----------------------------------------------------------------------


async def test_a_post_from_another_site_is_refused(
    store: dict[str, str], processes: Processes
) -> None:
    server = processes.web(store["url"])
    failed = quote(store["failed"])
    pending = quote(store["pending"])
    foreign = [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": f"http://{server.host}:{server.port + 1}"},
        {"Origin": f"https://{server.host}:{server.port}"},
        {"Referer": "http://evil.example/attack.html"},
    ]
    for headers in foreign:
        for path in (
            f"/api/tasks/{failed}/requeue",
            f"/api/tasks/{pending}/cancel",
            "/api/queues/q/purge?status=failed",
            f"/tasks/{failed}/requeue",
            f"/tasks/{pending}/cancel",
            "/queues/q/requeue",
        ):
            refused = server.post(path, headers=headers, form={"status": "failed"})
            assert refused.status == 403, (headers, path)
            assert_security_headers(refused.headers, path)
    assert await status_of(store["url"], store["failed"]) == "failed"
    assert await status_of(store["url"], store["pending"]) == "pending"

    # The dashboard's own origin, its own page as Referer, or no browser at all: accepted.
    own = server.post(f"/api/tasks/{pending}/cancel", headers={"Origin": server.origin})
    assert own.status == 200 and own.json()["cancelled"] is True
    referred = server.post(
        f"/api/tasks/{failed}/requeue", headers={"Referer": f"{server.origin}/tasks/{failed}"}
    )
    assert referred.status == 200
    plain = server.post(f"/api/tasks/{quote(store['cancelled'])}/requeue", headers={})
    assert plain.status == 200


# -- escaping ------------------------------------------------------------------------------------


def oddly_named() -> None:
    """A task function whose recorded name is markup."""


oddly_named.__qualname__ = SCRIPT + IMG


async def test_what_tasks_wrote_is_escaped(
    tmp_path: Path, processes: Processes, worker_processes: WorkerProcesses
) -> None:
    url = f"sqlite:///{tmp_path / 'xss.db'}"
    release = tmp_path / "release"
    later = datetime.now(UTC) + timedelta(hours=1)
    async with TaskQueue(url) as queue:
        q = queue.options(queue="q")
        failed = await q.enqueue(tasks.fail, HOSTILE)
        running = await q.enqueue(web_tasks.report_then_wait, 0.5, HOSTILE, str(release))
        named = await q.enqueue_at(later, oddly_named)
        odd_id = await queue.options(queue="q", task_id=f'">{SCRIPT}').enqueue_at(
            later, tasks.add, 1, 2
        )
        await queue.add_cron(SCRIPT, "0 3 * * *", tasks.add, args=(1, 2))
        worker = worker_processes.start(url, queues=("q",), extra=("--import", "tests.web.tasks"))
        await queue.get_result(failed, timeout=60)

        async def progress_shown() -> bool:
            info = await queue.get_task(running)
            return info is not None and info.progress_message == HOSTILE

        await wait_until(progress_shown, timeout=60, message="the hostile progress message")
        server = processes.web(url)
        pages = {
            "/": server.get("/"),
            "/tasks": server.get("/tasks"),
            "/tasks?status=running": server.get("/tasks?status=running"),
            "failed": server.get("/tasks/" + quote(failed, safe="")),
            "running": server.get("/tasks/" + quote(running, safe="")),
            "named": server.get("/tasks/" + quote(named, safe="")),
            "odd id": server.get("/tasks/" + quote(odd_id, safe="")),
        }
        for where, page in pages.items():
            assert page.status == 200, (where, page.text)
            html = page.text
            assert SCRIPT not in html, where
            assert "<img" not in html, where
            assert_no_inline_script(html, where)
        escaped_script = "&lt;script&gt;alert(1)&lt;/script&gt;"
        escaped_img = "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"
        assert escaped_script in pages["failed"].text and escaped_img in pages["failed"].text
        assert 'id="traceback"' in pages["failed"].text
        assert escaped_img in pages["running"].text  # the progress message
        assert escaped_script + escaped_img in pages["named"].text  # the function name
        assert escaped_img in pages["/tasks"].text  # errors and progress in the listing
        assert f'data-task-id="&#34;&gt;{escaped_script}"' in pages["/tasks"].text
        assert f'data-cron="{escaped_script}"' in pages["/"].text
        # The JSON API carries the text as it is, as JSON (never HTML).
        api = server.get("/api/tasks/" + quote(failed, safe=""))
        assert api.header("Content-Type") == "application/json"
        assert api.json()["error"] == f"ValueError: {HOSTILE}"
        release.touch()
        await queue.get_result(running, timeout=60)
        assert worker_processes.stop(worker) == 0


# -- read-only -----------------------------------------------------------------------------------


async def test_read_only_shows_no_action_and_refuses_every_post(
    store: dict[str, str], processes: Processes
) -> None:
    server = processes.web(store["url"], "--read-only")
    assert "read-only" in server.output()
    quoted = {k: quote(v, safe="") for k, v in store.items() if k != "url"}
    for path in (
        "/",
        "/tasks",
        "/tasks?queue=q&status=failed",
        *(f"/tasks/{task_id}" for task_id in quoted.values()),
    ):
        page = server.get(path)
        assert page.status == 200, path
        html = page.text
        assert 'data-read-only="true"' in html
        assert 'method="post"' not in html, path
        for hook in ('id="requeue"', 'id="cancel"', "data-action=", 'id="requeue-failed"'):
            assert hook not in html, (path, hook)
        assert 'id="purge-link"' not in html
    assert server.get("/queues/q/purge?status=failed").status == 403
    for path in (
        f"/api/tasks/{quoted['failed']}/requeue",
        f"/api/tasks/{quoted['pending']}/cancel",
        "/api/queues/q/purge?status=failed",
        "/api/queues/q/requeue",
        f"/tasks/{quoted['failed']}/requeue",
        f"/tasks/{quoted['pending']}/cancel",
        "/queues/q/requeue",
        "/queues/q/purge",
        "/",
        "/api/tasks",
    ):
        refused = server.post(path, form={"status": "failed", "confirm": "yes"})
        assert refused.status == 403, path
    for task, status in (("failed", "failed"), ("pending", "pending"), ("cancelled", "cancelled")):
        assert await status_of(store["url"], store[task]) == status
    assert server.get("/api/queues").status == 200


# -- static files and headers --------------------------------------------------------------------


def test_static_files_stay_in_their_folder(store: dict[str, str], processes: Processes) -> None:
    server = processes.web(store["url"])
    css = server.get("/static/sitq.css")
    assert css.status == 200 and (css.header("Content-Type") or "").startswith("text/css")
    js = server.get("/static/sitq.js")
    assert js.status == 200 and "javascript" in (js.header("Content-Type") or "")
    for path in (
        "/static/../_app.py",
        "/static/../templates/base.html",
        "/static/%2e%2e/_app.py",
        "/static/..%2f_app.py",
        "/static/..%2F..%2F__init__.py",
        "/static/../../../../../../etc/passwd",
        "/static//etc/passwd",
        "/static/",
        "/static/missing.css",
    ):
        reply = server.get(path)
        assert reply.status == 404, (path, reply.status)
        assert b"import" not in reply.body and b"root:" not in reply.body, path


def test_every_answer_carries_the_security_headers(
    store: dict[str, str], processes: Processes
) -> None:
    server = processes.web(store["url"])
    for path in (
        "/",
        "/tasks",
        "/tasks/" + quote(store["failed"], safe=""),
        "/queues/q/purge?status=failed",
        "/api/queues",
        "/api/tasks?status=nope",
        "/metrics",
        "/static/sitq.js",
        "/no-such-page",
        "/tasks/no-such-task",
    ):
        reply = server.get(path)
        assert_security_headers(reply.headers, path)
        if "text/html" in (reply.header("Content-Type") or ""):
            assert_no_inline_script(reply.text, path)
    assert server.get("/api/tasks").header("Cache-Control") == "no-store"


# -- where it listens ----------------------------------------------------------------------------


def _listening(port: int) -> list[str]:
    """The local addresses (hex, as /proc/net/tcp* show them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:
                    found.append(address)
    return found


def test_it_binds_127_0_0_1_by_default_and_answers_only_to_loopback_names(
    store: dict[str, str], processes: Processes
) -> None:
    server = processes.web(store["url"])
    assert server.host == "127.0.0.1"
    assert _listening(server.port) == ["0100007F"]  # 127.0.0.1, and nothing else
    assert server.get("/api/queues").status == 200
    local = server.get("/api/queues", headers={"Host": f"localhost:{server.port}"})
    assert local.status == 200
    rebound = server.get("/", headers={"Host": f"evil.example:{server.port}"})
    assert rebound.status == 400
    assert server.get("/api/queues", headers={"Host": "evil.example"}).status == 400


def test_another_host_without_a_token_is_warned_about(
    store: dict[str, str], processes: Processes
) -> None:
    server = processes.web(store["url"], "--host", "0.0.0.0")
    assert "without a token" in server.output()
    direct = Client("127.0.0.1", server.port)
    assert (
        direct.get("/api/queues", headers={"Host": f"example.internal:{server.port}"}).status == 200
    )


# -- missing extras ------------------------------------------------------------------------------


def test_metrics_without_prometheus_client_names_the_extra(
    store: dict[str, str], processes: Processes
) -> None:
    server = processes.web(store["url"], blocked=("prometheus_client",))
    reply = server.get("/metrics")
    assert reply.status == 501 and "pip install 'sitq[metrics]'" in reply.text
    assert server.get("/api/queues").status == 200


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
    )


def test_importing_sitq_imports_no_web_package() -> None:
    done = _python(
        "import sys, sitq, sitq.cli\n"
        "loaded = [m for m in ('starlette', 'jinja2', 'uvicorn', 'prometheus_client', 'sitq.web')"
        " if m in sys.modules]\n"
        "print(loaded)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("missing", ["starlette", "jinja2"])
def test_without_the_web_extra_the_error_names_it(missing: str) -> None:
    done = _python(
        f"import sys\nsys.modules[{missing!r}] = None\n"
        "from sitq.errors import MissingDependencyError\n"
        "try:\n    import sitq.web\n"
        "except MissingDependencyError as exc:\n    print(exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'sitq[web]'" in done.stdout and missing in done.stdout


def test_sitq_web_without_the_extra_says_what_to_install(tmp_path: Path) -> None:
    done = _python(
        "import sys\nsys.modules['uvicorn'] = None\nfrom sitq.cli import main\nsys.exit(main())",
        "web",
        f"sqlite:///{tmp_path / 'none.db'}",
    )
    assert done.returncode == 2
    assert "pip install 'sitq[web]'" in done.stderr and "uvicorn" in done.stderr
