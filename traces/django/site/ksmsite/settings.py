"""Settings of the ksm-planner sample site (a small blog + shop served by gunicorn).

Production-like on purpose: ``DEBUG = False``, SQLite in WAL mode, sessions in the
database, a per-process ``LocMemCache``. The site only ever listens on loopback.

Environment:

* ``KSM_SAMPLE_DB``: path of the SQLite database (default: ``db.sqlite3`` next to
  ``manage.py``). ``traces/django/regenerate.py`` points it at a temporary directory.
* ``KSM_SAMPLE_SECRET_KEY``: Django's secret key. The default is a fixed, public
  string: the site holds only generated sample data and is never exposed.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get(
    "KSM_SAMPLE_SECRET_KEY",
    "ksm-planner-sample-site-loopback-only-not-a-secret-0123456789abcdef",
)
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "ksmsite",
    "blog",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "ksmsite.urls"

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
                "ksmsite.context_processors.site",
            ],
        },
    },
]

WSGI_APPLICATION = "ksmsite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("KSM_SAMPLE_DB", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {
            # 8 worker processes share one file: WAL lets readers run during a write,
            # IMMEDIATE transactions wait for the lock instead of failing on upgrade.
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "ksm-sample",
        "OPTIONS": {"MAX_ENTRIES": 5000},
    }
}

SESSION_ENGINE = "django.contrib.sessions.backends.db"

AUTH_PASSWORD_VALIDATORS = []

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "WARNING"}},
}
