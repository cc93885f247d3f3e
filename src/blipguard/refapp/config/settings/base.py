"""Settings shared by both platform versions (fact sheet §1 and §10).

Server addresses come from the environment (blipguard.localstack.LocalStack.env):
DATABASE_URL, REDIS_URL, CELERY_BROKER_URL, NATS_URL. The version modules
(``pre.py``, ``head.py``) set ``ANTENNA_VERSION`` and what differs between commits.
"""

import os
import socket
from urllib.parse import urlparse, urlunparse

SECRET_KEY = "reference-app-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "config.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# All datetimes are naive local time on the platform.
USE_TZ = False
TIME_ZONE = "America/New_York"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
    "rest_framework.authtoken",
    "ami.main",
    "ami.ml",
    "ami.jobs",
]

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
]


def _database(url: str) -> dict:
    u = urlparse(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": u.path.lstrip("/"),
        "USER": u.username or "postgres",
        "PASSWORD": u.password or "",
        "HOST": u.hostname or "127.0.0.1",
        "PORT": str(u.port or 5432),
    }


DATABASES = {"default": _database(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/antenna"))}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

# --- Redis: the Django cache (DB 0) also holds the async job state ----------------------
REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")

TCP_KEEPALIVE_OPTIONS = {
    socket.TCP_KEEPIDLE: int(os.environ.get("TCP_KEEPALIVE_IDLE", "60")),
    socket.TCP_KEEPINTVL: int(os.environ.get("TCP_KEEPALIVE_INTVL", "10")),
    socket.TCP_KEEPCNT: int(os.environ.get("TCP_KEEPALIVE_CNT", "9")),
}


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "IGNORE_EXCEPTIONS": True,
            # django-redis 5.3.0 passes neither of these two keys to the connection.
            "SOCKET_KEEPALIVE": _env_bool("REDIS_CACHE_SOCKET_KEEPALIVE", True),
            "SOCKET_KEEPALIVE_OPTIONS": TCP_KEEPALIVE_OPTIONS,
            "SOCKET_CONNECT_TIMEOUT": int(os.environ.get("REDIS_CACHE_SOCKET_CONNECT_TIMEOUT", "5")),
        },
    }
}


def _redis_db(url: str, db: int) -> str:
    u = urlparse(url)
    return urlunparse(u._replace(path=f"/{db}"))


# --- Celery ------------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//")
if os.environ.get("CELERY_RESULT_BACKEND"):
    CELERY_RESULT_BACKEND = os.environ["CELERY_RESULT_BACKEND"]
elif os.environ.get("REDIS_URL"):
    # Celery's own result backend on Redis DB 1: a Redis blip hits it too.
    CELERY_RESULT_BACKEND = _redis_db(os.environ["REDIS_URL"], 1)
else:
    CELERY_RESULT_BACKEND = "rpc://"
CELERY_RESULT_EXTENDED = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_COMPRESSION = "gzip"
CELERY_RESULT_COMPRESSION = "gzip"
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_DEFAULT_QUEUE = "antenna"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CONCURRENCY = int(os.environ.get("CELERY_WORKER_CONCURRENCY", "8"))
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "heartbeat": 30,
    "socket_keepalive": True,
    "socket_connect_timeout": 40,
}
# task_acks_late is deliberately not set: Celery's default (early ack) applies.
CELERY_TASK_EAGER_PROPAGATES = True  # as in the platform's local settings
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE = {
    "jobs_health_check": {
        "task": "ami.jobs.tasks.jobs_health_check",
        "schedule": 15 * 60,  # crontab */15 minutes on the platform
        "options": {"expires": 840},
    },
}

# --- NATS --------------------------------------------------------------------------------
NATS_URL = os.environ.get("NATS_URL", "nats://localhost:4222")
# NATS_MAX_ACK_PENDING and NATS_MAX_DELIVER are not defined: the code defaults apply.

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}

# Test-only knob, NOT part of the platform: overrides the PRE code constant
# ``ami.ml.orchestration.nats_queue.TASK_TTR`` (30 s) in every process of the app, so a
# test can shorten the NATS ack_wait at PRE. Unset in production.
REFAPP_TEST_TASK_TTR = os.environ.get("REFAPP_TEST_TASK_TTR") or None

# --- Sentry: as the platform's production settings set it up (fact sheet §10), when a DSN
# is given. Error-level log lines (the job logger's among them) become events.
SENTRY_DSN = os.environ.get("SENTRY_DSN") or None
if SENTRY_DSN:
    import logging as _logging

    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.integrations.redis import RedisIntegration

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        integrations=[
            LoggingIntegration(level=int(os.environ.get("DJANGO_SENTRY_LOG_LEVEL", _logging.INFO)),
                               event_level=_logging.ERROR),
            DjangoIntegration(),
            CeleryIntegration(),
            RedisIntegration(),
        ],
        environment=os.environ.get("SENTRY_ENVIRONMENT", "production"),
        traces_sample_rate=0.0,
    )
