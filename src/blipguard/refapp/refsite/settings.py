"""Reference-app settings, shaped like the reference platform's, pre-fix.

Every server address comes from the environment (see blipguard.localstack.LocalStack.env).
"""

import os
from urllib.parse import urlparse

SECRET_KEY = "reference-app-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "refsite.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "ami.main",
    "ami.jobs",
    "ami.ml",
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
        "CONN_MAX_AGE": 60,
    }


DATABASES = {"default": _database(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/blipguard"))}

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

# DB 0 is the Django cache and holds the async job state, as on the reference platform.
# `SOCKET_KEEPALIVE` here is the classic mistake: django-redis does not pass it to the
# connection (only PASSWORD, SOCKET_TIMEOUT and SOCKET_CONNECT_TIMEOUT are), so the
# pooled connections get no TCP keepalive and there is no read timeout at all.
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": {
            "CLIENT_CLASS": "django_redis.client.DefaultClient",
            "SOCKET_CONNECT_TIMEOUT": 5,
            "SOCKET_KEEPALIVE": True,
        },
    }
}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
CELERY_BROKER_HEARTBEAT = 30
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "antenna"
CELERY_TASK_ROUTES = {
    "ami.jobs.tasks.run_job": {"queue": "jobs"},
    "ami.jobs.tasks.process_nats_pipeline_result": {"queue": "ml_results"},
}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
# The task time-to-run: the JetStream consumer's ack_wait, in seconds.
NATS_TASK_TTR = int(os.environ.get("NATS_TASK_TTR", "300"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}
