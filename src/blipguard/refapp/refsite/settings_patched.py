"""The reference app with blipguard's app_patch installed, as a host would do it."""

import os

from blipguard.app_patch.redis_options import cache_options

from .settings import *  # noqa: F401,F403
from .settings import INSTALLED_APPS, REDIS_URL

INSTALLED_APPS = INSTALLED_APPS + ["blipguard.app_patch"]

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": cache_options(
            socket_timeout=float(os.environ.get("BLIPGUARD_SOCKET_TIMEOUT", "5")),
            connect_timeout=float(os.environ.get("BLIPGUARD_CONNECT_TIMEOUT", "3")),
            retries=int(os.environ.get("BLIPGUARD_REDIS_RETRIES", "3")),
        ),
    }
}

BLIPGUARD = {
    "MAX_RETRIES": int(os.environ.get("BLIPGUARD_MAX_RETRIES", "6")),
    "BACKOFF_BASE": float(os.environ.get("BLIPGUARD_BACKOFF_BASE", "1")),
    "BACKOFF_MAX": float(os.environ.get("BLIPGUARD_BACKOFF_MAX", "30")),
}
