"""Settings of the example shop: orders whose receipts a sitq worker sends.

The database is SQLite by default; SHOP_DATABASE=postgres switches to PostgreSQL
(SHOP_POSTGRES_URL, default postgresql://root@127.0.0.1:5432/shop). SHOP_DB_NAME overrides the
database's name (a worker started by the tests points it at the test database).

On PostgreSQL the tasks live in the same database, in the schema "sitq", and enqueueing joins
the view's transaction. On SQLite they live in a sitq SQLite file of their own (SHOP_SITQ_URL,
default sqlite:///tasks.db next to this project), enqueued when the transaction commits.
"""

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("SHOP_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "sitq.contrib.django",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "shop_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if os.environ.get("SHOP_DATABASE", "sqlite") == "postgres":
    pg = urlsplit(os.environ.get("SHOP_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/shop"))
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("SHOP_DB_NAME") or pg.path.lstrip("/"),
            "USER": unquote(pg.username or ""),
            "PASSWORD": unquote(pg.password or ""),
            "HOST": pg.hostname or "",
            "PORT": str(pg.port or ""),
        }
    }
    # No URL: the tasks live in this database, and enqueue() joins its transactions.
    SITQ = {"DATABASE": "default"}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SHOP_DB_NAME") or BASE_DIR / "shop.sqlite3",
            # A file, not memory, so that a worker process sees the test database too.
            "TEST": {"NAME": os.environ.get("SHOP_TEST_DB") or BASE_DIR / "test-shop.sqlite3"},
        }
    }
    # A sitq backend of its own: enqueue() waits for the commit (transaction.on_commit).
    SITQ = {"URL": os.environ.get("SHOP_SITQ_URL") or f"sqlite:///{BASE_DIR / 'tasks.db'}"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"
