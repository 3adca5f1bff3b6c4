"""The shop with sitq, on SQLite or PostgreSQL (SHOP_DATABASE=postgres): `python manage.py test`.

On PostgreSQL the tasks live in the test database and enqueueing joins the view's transaction;
on SQLite they live in a sitq file of their own (SHOP_SITQ_URL) and are enqueued on commit.
Tests that need a committed transaction (a worker, or sitq's own connections, must see the
rows) are TransactionTestCases.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any

from django.contrib.admin import site
from django.contrib.auth.models import Permission, User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.http import HttpResponse
from django.test import RequestFactory, SimpleTestCase, TransactionTestCase, override_settings

import sitq.contrib.django as sitq_django
from shop.models import Order
from shop.tasks import send_receipt
from sitq import ConfigurationError, TaskStatus
from sitq.contrib.django._settings import read_settings
from sitq.contrib.django.models import Task
from sitq.models import TaskInfo

PROJECT = Path(__file__).resolve().parent.parent
SAME_TRANSACTION = sitq_django.get_settings().same_transaction


def tearDownModule() -> None:
    # sitq's connections to the test database must be closed before it is dropped.
    sitq_django.close()


class ShopCase(TransactionTestCase):
    """Each test starts with no tasks on the default queue."""

    def setUp(self) -> None:
        self.queue = sitq_django.get_queue()
        self.queue.purge("default", "pending")
        self.queue.purge("default", "finished")

    def pending(self) -> list[TaskInfo]:
        return self.queue.list_tasks("pending", "default", limit=100).tasks

    def place(self, **body: Any) -> HttpResponse:
        return self.client.post("/orders/", json.dumps(body), content_type="application/json")


class OrderTests(ShopCase):
    def test_a_committed_order_leaves_exactly_one_task(self) -> None:
        response = self.place(email="ada@example.com", total_cents=1200)
        self.assertEqual(response.status_code, 201, response.content)
        task_id = response.json()["task_id"]
        order = Order.objects.get()
        self.assertEqual(order.receipt_task_id, task_id)
        self.assertEqual(
            [(t.task_id, t.function) for t in self.pending()],
            [(task_id, "shop.tasks.send_receipt")],
        )
        status = self.client.get(f"/orders/{order.pk}/").json()
        self.assertEqual(status["task_status"], "pending")

    def test_a_rolled_back_order_leaves_no_task(self) -> None:
        response = self.place(email="bob@example.com", total_cents=900, decline=True)
        self.assertEqual(response.status_code, 402, response.content)
        self.assertEqual(Order.objects.count(), 0)
        self.assertEqual(self.pending(), [])
        self.assertEqual(self.queue.list_tasks(limit=100).tasks, [])

    @unittest.skipUnless(SAME_TRANSACTION, "the tasks are in PostgreSQL only on PostgreSQL")
    def test_on_postgresql_the_task_is_inserted_in_the_views_transaction(self) -> None:
        import psycopg

        params = connection.get_connection_params()
        with psycopg.connect(
            dbname=params["dbname"],
            user=params.get("user"),
            password=params.get("password"),
            host=params.get("host"),
            port=params.get("port"),
            autocommit=True,
        ) as listener:
            listener.execute('LISTEN "sitq_work_sitq"')
            with transaction.atomic():
                task_id = sitq_django.enqueue(send_receipt, 1)
                with connection.cursor() as cursor:
                    cursor.execute("SELECT count(*) FROM sitq.tasks WHERE id = %s", [task_id])
                    self.assertEqual(cursor.fetchone()[0], 1, "the row is in this transaction")
                # Nobody else sees it, nor hears of it, before the commit.
                self.assertIsNone(self.queue.get_status(task_id))
                self.assertEqual(list(listener.notifies(timeout=0)), [])
            self.assertEqual(self.queue.get_status(task_id), TaskStatus.PENDING)
            # The commit wakes the workers listening on the queue's channel.
            heard = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
            self.assertEqual(heard, ["default"])

            with transaction.atomic():
                sid = transaction.savepoint()
                dropped = sitq_django.enqueue(send_receipt, 2)
                transaction.savepoint_rollback(sid)
                kept = sitq_django.options(priority=5).enqueue(send_receipt, 3)
            self.assertIsNone(self.queue.get_status(dropped))
            self.assertEqual(self.queue.get_task(kept).priority, 5)

    def test_with_a_url_the_task_is_enqueued_on_commit(self) -> None:
        with (
            tempfile.TemporaryDirectory() as tmp,
            override_settings(SITQ={"URL": f"sqlite:///{tmp}/commit.db"}),
        ):
            self.assertFalse(sitq_django.get_settings().same_transaction)
            queue = sitq_django.get_queue()
            with transaction.atomic():
                committed = sitq_django.options(queue="mail").enqueue(send_receipt, 1)
                self.assertIsNone(queue.get_status(committed), "not before the commit")
                # A call that cannot run fails at once, not at the commit.
                with self.assertRaisesMessage(ConfigurationError, "cannot enqueue"):
                    sitq_django.enqueue(send_receipt, 1, 2)
            self.assertEqual(queue.get_task(committed).queue, "mail")
            with self.assertRaises(RuntimeError), transaction.atomic():
                rolled_back = sitq_django.enqueue(send_receipt, 2)
                raise RuntimeError("rolled back")
            self.assertIsNone(queue.get_status(rolled_back))
            # Outside a transaction, at once.
            now = sitq_django.enqueue_in(3600, send_receipt, 3)
            self.assertEqual(queue.get_status(now), TaskStatus.PENDING)
            self.assertEqual(
                sorted(t.task_id for t in queue.list_tasks("pending").tasks),
                sorted([committed, now]),
            )
            sitq_django.close()


class WorkerCommandTests(ShopCase):
    def test_the_management_command_runs_a_task_to_success(self) -> None:
        response = self.place(email="cy@example.com", total_cents=500)
        order_id, task_id = response.json()["order"], response.json()["task_id"]
        env = dict(os.environ)
        # The worker's Django uses the test database, and sitq's tables in it (PostgreSQL).
        env["SHOP_DB_NAME"] = str(connection.settings_dict["NAME"])
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "sitq_worker", "--poll-interval", "0.2", "-c", "2"],
            cwd=PROJECT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            result = self.queue.get_result(task_id, timeout=30)
            self.assertIsNotNone(result, "the worker ran the task within 30 s")
            self.assertEqual(result.status, TaskStatus.SUCCESS, result.error)
            self.assertEqual(
                self.queue.get_value(task_id),
                f"receipt for order {order_id} sent to cy@example.com",
            )
            self.assertTrue(Order.objects.get(pk=order_id).receipt_sent, "the task used the ORM")
            status = self.client.get(f"/orders/{order_id}/").json()
            self.assertEqual(status["task_status"], "success")
            worker.send_signal(signal.SIGTERM)
            output = worker.communicate(timeout=30)[0].decode()
            self.assertEqual(worker.returncode, 0, output)
            self.assertIn("succeeded", output)
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()

    def test_process_workers_are_refused(self) -> None:
        with self.assertRaisesMessage(CommandError, "--kind process is not available here"):
            call_command("sitq_worker", kind="process")


class AdminTests(ShopCase):
    def setUp(self) -> None:
        super().setUp()
        self.task_id = self.queue.enqueue(send_receipt, 7)

    def test_the_admin_lists_tasks_and_shows_their_status(self) -> None:
        self.client.force_login(User.objects.create_superuser("admin", "a@example.com", "pw"))
        index = self.client.get("/admin/").content.decode()
        self.assertIn('href="/admin/sitq/task/"', index)
        self.assertNotIn("/admin/sitq/task/add/", index)

        listing = self.client.get("/admin/sitq/task/")
        self.assertEqual(listing.status_code, 200)
        row = listing.content.decode().split(f'data-task-id="{self.task_id}"')[1].split("</tr>")[0]
        self.assertIn('<td class="sitq-status">pending</td>', row)
        self.assertIn("shop.tasks.send_receipt", row)
        failed = self.client.get("/admin/sitq/task/?status=failed").content.decode()
        self.assertNotIn(self.task_id, failed)
        bad = self.client.get("/admin/sitq/task/?status=lost")
        self.assertEqual(bad.status_code, 400)
        self.assertIn("lost", bad.content.decode())

        page = self.client.get(f"/admin/sitq/task/{self.task_id}/")
        self.assertEqual(page.status_code, 200)
        self.assertContains(page, '<td class="sitq-status">pending</td>', html=False)
        self.assertEqual(self.client.get("/admin/sitq/task/no-such-task/").status_code, 404)

    def test_the_admin_is_read_only(self) -> None:
        admin = User.objects.create_superuser("admin", "a@example.com", "pw")
        self.client.force_login(admin)
        request = RequestFactory().get("/admin/sitq/task/")
        request.user = admin
        model_admin = site._registry[Task]
        self.assertEqual(
            model_admin.get_model_perms(request),
            {"add": False, "change": False, "delete": False, "view": True},
        )
        codenames = Permission.objects.filter(content_type__app_label="sitq")
        self.assertEqual([p.codename for p in codenames], ["view_task"])
        for path in ("/admin/sitq/task/", f"/admin/sitq/task/{self.task_id}/"):
            self.assertEqual(self.client.post(path).status_code, 405, path)
        # No add, change or delete page: "add" is taken for a task id, and there is none.
        for path in (
            "/admin/sitq/task/add/",
            f"/admin/sitq/task/{self.task_id}/change/",
            f"/admin/sitq/task/{self.task_id}/delete/",
        ):
            self.assertEqual(self.client.get(path).status_code, 404, path)
        self.assertEqual(self.queue.get_status(self.task_id), TaskStatus.PENDING)

    def test_staff_need_the_view_permission(self) -> None:
        staff = User.objects.create_user("staff", "s@example.com", "pw", is_staff=True)
        self.client.force_login(staff)
        self.assertEqual(self.client.get("/admin/sitq/task/").status_code, 403)
        staff.user_permissions.add(Permission.objects.get(codename="view_task"))
        self.client.force_login(User.objects.get(pk=staff.pk))
        self.assertContains(self.client.get("/admin/sitq/task/"), self.task_id)


class SettingsTests(SimpleTestCase):
    def check_refused(self, sitq: Any, message: str) -> None:
        with override_settings(SITQ=sitq), self.assertRaisesMessage(ImproperlyConfigured, message):
            read_settings()

    def test_mistakes_in_the_setting_are_named(self) -> None:
        self.check_refused(None, "SITQ setting: it is missing")
        self.check_refused("sqlite:///x.db", "it must be a dict, not str")
        self.check_refused({"URL": "memory://", "QUEUE": "x"}, "unknown key(s) ['QUEUE']")
        self.check_refused({"URL": ""}, "URL must be a sitq backend URL")
        self.check_refused({"URL": "memory://", "DATABASE": "other"}, "DATABASE='other'")
        self.check_refused(
            {"URL": "memory://", "BACKEND_OPTIONS": {"schema": "x"}}, "give the options in it"
        )
        self.check_refused({"URL": "memory://", "TASK_OPTIONS": []}, "TASK_OPTIONS must be")
        if not SAME_TRANSACTION:
            self.check_refused({}, "must be PostgreSQL (it is sqlite)")
