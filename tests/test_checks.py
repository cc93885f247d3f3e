"""The system checks read the live app: each fires on a misconfigured app, none on a good one."""

import contextlib
import socket

import pytest
import redis
from django.test import override_settings

from blipguard.app_patch import checks as bg_checks
from blipguard.app_patch.redis_options import cache_options

pytestmark = [pytest.mark.stack, pytest.mark.checks]

ALL_CHECKS = [
    bg_checks.check_config,
    bg_checks.check_cache_options,
    bg_checks.check_connection_kwargs,
    bg_checks.check_live_socket,
    bg_checks.check_retry_window,
    bg_checks.check_broker_not_state_redis,
    bg_checks.check_eviction_policy,
]


@contextlib.contextmanager
def variant(**overrides):
    from django_redis.pool import ConnectionFactory

    location = overrides.get("CACHES", {}).get("default", {}).get("LOCATION")
    try:
        with override_settings(**overrides):
            yield
    finally:
        # django-redis keeps one pool per URL for the whole process: forget this one so
        # the next variant's settings build a fresh pool.
        ConnectionFactory._pools.pop(location, None)


def ids_found(**overrides) -> set[str]:
    with variant(**overrides):
        return {m.id for check in ALL_CHECKS for m in check()}


@pytest.fixture
def redis_url(django_app):
    return lambda: django_app.redis.url(1)


def good(redis_url, **options):
    return {
        "CACHES": {
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": redis_url(),
                "OPTIONS": {**cache_options(), **options},
            }
        },
        "NATS_TASK_TTR": 300,
        "BLIPGUARD": {},
    }


def test_a_good_app_passes_every_check(redis_url):
    assert ids_found(**good(redis_url)) == set()


def test_keepalive_really_reaches_the_live_socket(redis_url):
    from django_redis import get_redis_connection

    with variant(**good(redis_url)):
        live = bg_checks._live_socket_options(get_redis_connection("default").connection_pool)
    assert live == {"keepalive": 1, "idle": 60, "interval": 10, "count": 3}


def test_the_reference_platforms_cache_settings_are_caught(redis_url):
    # What the pre-fix app ships: SOCKET_KEEPALIVE in OPTIONS (ignored), no read timeout.
    prefix = {
        "CACHES": {
            "default": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": redis_url(),
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 5, "SOCKET_KEEPALIVE": True},
            }
        }
    }
    found = ids_found(**prefix)
    assert {"blipguard.W001", "blipguard.E003", "blipguard.E005"} <= found
    if int(redis.__version__.split(".")[0]) < 6:
        # redis-py 5 (the reference platform's pin): no keepalive, on paper and on the socket.
        assert {"blipguard.E004", "blipguard.E009"} <= found
    else:
        # redis-py 6+ turns keepalive on by default: no false alarm.
        assert not {"blipguard.E004", "blipguard.E009"} & found


@pytest.mark.parametrize(
    "pool_kwargs, expected",
    [
        ({"socket_keepalive": False}, "blipguard.E004"),
        ({"retry": None}, "blipguard.E005"),
        ({"retry_on_error": []}, "blipguard.E006"),
        ({"health_check_interval": 0}, "blipguard.W007"),
    ],
)
def test_each_pool_setting_is_checked(redis_url, pool_kwargs, expected):
    settings = good(redis_url)
    opts = settings["CACHES"]["default"]["OPTIONS"]
    opts["CONNECTION_POOL_KWARGS"] = {**opts["CONNECTION_POOL_KWARGS"], **pool_kwargs}
    assert expected in ids_found(**settings)


def test_missing_timeouts_are_checked(redis_url):
    settings = good(redis_url)
    del settings["CACHES"]["default"]["OPTIONS"]["SOCKET_TIMEOUT"]
    del settings["CACHES"]["default"]["OPTIONS"]["SOCKET_CONNECT_TIMEOUT"]
    assert {"blipguard.E003", "blipguard.W003"} <= ids_found(**settings)


def test_invalid_blipguard_setting(redis_url):
    assert "blipguard.E001" in ids_found(**{**good(redis_url), "BLIPGUARD": {"MAX_RETRIES": -1}})
    assert "blipguard.E002" in ids_found(**{**good(redis_url), "BLIPGUARD": {"CACHE_ALIAS": "nope"}})


def test_retry_window_against_ack_wait(redis_url):
    assert "blipguard.W012" in ids_found(**{**good(redis_url), "NATS_TASK_TTR": 250})
    # The older 30 s ack_wait cannot hold 6 retries of 5 s timeouts at all.
    assert "blipguard.E011" in ids_found(**{**good(redis_url), "NATS_TASK_TTR": 30})
    assert "blipguard.E011" in ids_found(**{**good(redis_url), "NATS_TASK_TTR": 2})


def test_broker_on_the_job_state_redis(redis_url):
    settings = good(redis_url)
    broker = settings["CACHES"]["default"]["LOCATION"].rsplit("/", 1)[0] + "/9"
    assert "blipguard.E013" in ids_found(**settings, CELERY_BROKER_URL=broker)


@pytest.mark.parametrize("policy, expected", [("allkeys-lru", "blipguard.E015"), ("volatile-lru", "blipguard.W015")])
def test_evicting_redis(django_app, redis_url, policy, expected):
    admin = django_app.redis.client()
    admin.config_set("maxmemory-policy", policy)
    try:
        assert expected in ids_found(**good(redis_url))
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.close()


def test_unreachable_redis_is_a_warning_not_a_crash(redis_url):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = good(redis_url)
    settings["CACHES"]["default"]["LOCATION"] = f"redis://127.0.0.1:{port}/0"
    settings["CACHES"]["default"]["OPTIONS"]["CONNECTION_POOL_KWARGS"]["retry"] = None
    found = ids_found(**settings)
    assert {"blipguard.W008", "blipguard.W014"} <= found
