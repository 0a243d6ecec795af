"""FaceBench settings: one module, driven by environment variables.

With nothing set it runs embedded: SQLite in WAL mode, media on the local disk and a Celery broker
on kombu's filesystem transport, all under ``var/``. ``DATABASE_URL=postgres://…`` and
``CELERY_BROKER_URL=redis://…`` switch the same code to PostgreSQL and Redis.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str) -> bool:
    value = os.getenv(name, default)
    if value not in ("True", "False"):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value == "True"


def envint(name: str, default: str) -> int:
    value = os.getenv(name, default)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


# Under pytest (which sets PYTEST_VERSION) each run gets its own var dir and queue names, so two
# runs on one machine never share a database file, a broker folder or a Redis queue.
_UNDER_TEST = bool(os.getenv("PYTEST_VERSION"))
_DEFAULT_VAR = Path(tempfile.gettempdir()) / f"facebench-test-{os.getpid()}" if _UNDER_TEST else BASE_DIR / "var"
VAR_DIR = Path(os.getenv("FACEBENCH_VAR_DIR", str(_DEFAULT_VAR)))
DEBUG = envbool("DEBUG", "False")
SECRET_KEY = os.getenv("SECRET_KEY", "facebench-insecure-development-key")
ALLOWED_HOSTS = os.getenv("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",")
CSRF_TRUSTED_ORIGINS = [o for o in os.getenv("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "jobs",
    "annotator",
    "benchmark",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "annotator.context_processors.roles",
            ]
        },
    }
]

# --- Database -------------------------------------------------------------------------------
if os.getenv("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=60)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Django's backend, with a health check that looks for a goodbye from the server instead
        # of asking it (config/postgresql/base.py).
        DATABASES["default"]["ENGINE"] = "config.postgresql"
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
        # The ORM binds parameters client-side and never prepares; the annotation hot path's
        # server-side cursors (annotator/assignment.py) prepare their statements once per
        # connection, which halves what PostgreSQL spends on them. Turn this off behind a pooler
        # that cannot keep prepared statements (PgBouncer in transaction mode before 1.21).
        if envbool("FACEBENCH_PREPARED_STATEMENTS", "True"):
            DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 5
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "facebench.sqlite3"),
            "OPTIONS": {
                # One writer at a time: IMMEDIATE takes the write lock at BEGIN, so two
                # claims can never interleave; WAL lets readers go on meanwhile.
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": (
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
                ),
            },
            "TEST": {"NAME": str(VAR_DIR / "test-facebench.sqlite3")},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static and media -----------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns on every request otherwise
STATICFILES_DIRS = [BASE_DIR / "annotator" / "static"]
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(os.getenv("MEDIA_ROOT", str(VAR_DIR / "media")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Uploads bigger than this stream to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# --- FaceBench ------------------------------------------------------------------------------
FACEBENCH_WEIGHTS_DIR = Path(os.getenv("FACEBENCH_WEIGHTS_DIR", str(VAR_DIR / "weights")))
# What launched jobs write (training checkpoints, trained Face Score weights, logs): one folder
# per job, job-<id>/. Workers on many machines must all see the same folder (shared storage:
# NFS, a mounted bucket), because a checkpoint written by a GPU worker is read back by the
# scoring workers and downloaded through the web server.
FACEBENCH_ARTIFACTS_DIR = Path(os.getenv("FACEBENCH_ARTIFACTS_DIR", str(VAR_DIR / "artifacts")))
# Server-side folders a launch form may read (inpainting models, folders of face photos), besides
# the weights and artifacts dirs; comma-separated. Any other path is refused, so a form can never
# make a worker read /etc or a user's home.
FACEBENCH_INPUT_DIRS = [Path(p) for p in os.getenv("FACEBENCH_INPUT_DIRS", "").split(",") if p]
# Refuse images over these limits before decoding them (decompression bombs, huge uploads).
FACEBENCH_MAX_IMAGE_PIXELS = envint("FACEBENCH_MAX_IMAGE_PIXELS", str(64 * 1024 * 1024))
FACEBENCH_MAX_IMAGE_BYTES = envint("FACEBENCH_MAX_IMAGE_BYTES", str(50 * 1024 * 1024))
FACEBENCH_MAX_UPLOAD_BYTES = envint("FACEBENCH_MAX_UPLOAD_BYTES", str(2 * 1024 * 1024 * 1024))
FACEBENCH_MAX_ZIP_ENTRIES = envint("FACEBENCH_MAX_ZIP_ENTRIES", "100000")
FACEBENCH_MAX_PROMPT_CHARS = envint("FACEBENCH_MAX_PROMPT_CHARS", "4000")
FACEBENCH_LEASE_SECONDS = envint("FACEBENCH_LEASE_SECONDS", "600")
# A running job's worker touches the job row this often; a job whose heartbeat is older than
# FACEBENCH_JOB_STALE_SECONDS counts as abandoned (its worker died) and a redelivery may take it.
FACEBENCH_JOB_HEARTBEAT_SECONDS = envint("FACEBENCH_JOB_HEARTBEAT_SECONDS", "30")
FACEBENCH_JOB_STALE_SECONDS = envint("FACEBENCH_JOB_STALE_SECONDS", "180")

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = os.getenv("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = VAR_DIR / "broker"
    for sub in ("queue", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),  # default is ./control in the cwd
        "store_processed": False,
    }
else:
    # A late-acked task running longer than the visibility timeout would be delivered twice.
    # A message not acknowledged within this many seconds (a killed worker's task) is delivered
    # again; keep it above the longest task, or a long task runs twice.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": envint("FACEBENCH_VISIBILITY_TIMEOUT", str(6 * 3600))}
# Job state lives in the database (jobs.Job); Celery results are not needed.
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
FACEBENCH_QUEUE_PREFIX = os.getenv("FACEBENCH_QUEUE_PREFIX", f"test{os.getpid()}-" if _UNDER_TEST else "")
FACEBENCH_QUEUES = {"default": FACEBENCH_QUEUE_PREFIX + "default", "gpu": FACEBENCH_QUEUE_PREFIX + "gpu"}
CELERY_TASK_DEFAULT_QUEUE = FACEBENCH_QUEUES["default"]
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- REST framework -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "FaceBench API",
    "DESCRIPTION": "Human face-quality judgments, metric scores and alignment reports.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.getenv("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# Serve static files straight from the apps' folders (no collectstatic step for the demo).
WHITENOISE_USE_FINDERS = True
