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
    bg_checks.check_host_shape,
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


# The platform's cache OPTIONS (fact sheet §10), keepalive from its env defaults.
PLATFORM_OPTIONS = {
    "CLIENT_CLASS": "django_redis.client.DefaultClient",
    "IGNORE_EXCEPTIONS": True,
    "SOCKET_KEEPALIVE": True,
    "SOCKET_KEEPALIVE_OPTIONS": {socket.TCP_KEEPIDLE: 60, socket.TCP_KEEPINTVL: 10, socket.TCP_KEEPCNT: 9},
    "SOCKET_CONNECT_TIMEOUT": 5,
}


def cache(url: str, options: dict) -> dict:
    return {"CACHES": {"default": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": url, "OPTIONS": options}}}


def good(redis_url, **blipguard):
    """The platform's settings with the one documented edit: OPTIONS = cache_options(OPTIONS)."""
    return {**cache(redis_url(), cache_options(PLATFORM_OPTIONS)), "BLIPGUARD": {"ACK_WAIT": 300, **blipguard}}


def unchanged(redis_url, **blipguard):
    return {**cache(redis_url(), dict(PLATFORM_OPTIONS)), "BLIPGUARD": {"ACK_WAIT": 300, **blipguard}}


REDIS_PY = int(redis.__version__.split(".")[0])


def test_a_good_app_passes_every_check(redis_url):
    assert ids_found(**good(redis_url)) == set()


def test_cache_options_keeps_the_hosts_options_and_values():
    merged = cache_options(PLATFORM_OPTIONS)
    assert merged["IGNORE_EXCEPTIONS"] is True and merged["CLIENT_CLASS"] == PLATFORM_OPTIONS["CLIENT_CLASS"]
    assert "SOCKET_KEEPALIVE" not in merged and "SOCKET_KEEPALIVE_OPTIONS" not in merged
    pool = merged["CONNECTION_POOL_KWARGS"]
    assert pool["socket_keepalive"] is True
    assert pool["socket_keepalive_options"] == PLATFORM_OPTIONS["SOCKET_KEEPALIVE_OPTIONS"]
    assert (merged["SOCKET_TIMEOUT"], merged["SOCKET_CONNECT_TIMEOUT"]) == (2.0, 2.0)
    assert pool["retry"]._retries == 1


def test_keepalive_really_reaches_the_live_socket_with_the_hosts_values(redis_url):
    from django_redis import get_redis_connection

    with variant(**good(redis_url)):
        live = bg_checks._live_socket_options(get_redis_connection("default").connection_pool)
    assert live == {"keepalive": 1, "idle": 60, "interval": 10, "count": 9}


def test_the_platforms_unchanged_settings_are_warnings_unless_strict(redis_url):
    found = ids_found(**unchanged(redis_url))
    assert {"blipguard.W021", "blipguard.W003", "blipguard.W005", "blipguard.W027"} <= found
    if REDIS_PY < 6:
        # redis-py 5 (the platform's pin): no keepalive, on paper and on the live socket.
        assert {"blipguard.W004", "blipguard.W009"} <= found
    else:
        # redis-py 6+ turns keepalive on by default: no false alarm.
        assert not {"blipguard.W004", "blipguard.W009"} & found
    assert not any(i.startswith("blipguard.E") for i in found), "an unchanged host must never be blocked"

    strict = ids_found(**unchanged(redis_url, STRICT=True))
    assert {"blipguard.E003", "blipguard.E005"} <= strict
    assert ("blipguard.E004" in strict) is (REDIS_PY < 6)
    assert "blipguard.W021" in strict, "advice stays advice in strict mode"


def test_live_checks_are_deploy_checks():
    from django.core.checks import registry

    deploy = {c.__name__ for c in registry.registry.get_checks(include_deployment_checks=True)}
    always = {c.__name__ for c in registry.registry.get_checks(include_deployment_checks=False)}
    assert {"check_live_socket", "check_eviction_policy"} <= deploy - always
    assert "check_connection_kwargs" in always


@pytest.mark.parametrize(
    "pool_kwargs, expected",
    [
        ({"socket_keepalive": False}, "blipguard.W004"),
        ({"retry": None}, "blipguard.W005"),
        ({"retry_on_error": []}, "blipguard.W006"),
        ({"health_check_interval": 0}, "blipguard.W027"),
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
    assert {"blipguard.W003", "blipguard.W023"} <= ids_found(**settings)


def test_invalid_blipguard_setting(redis_url):
    assert "blipguard.E001" in ids_found(**{**good(redis_url), "BLIPGUARD": {"MAX_RETRIES": -1}})
    assert "blipguard.W002" in ids_found(**good(redis_url, CACHE_ALIAS="nope"))


def test_retry_window_against_ack_wait(redis_url):
    assert "blipguard.W032" in ids_found(**good(redis_url, ACK_WAIT=100))
    # 6 retries of attempts up to 4.5 s each cannot fit in 30 s: fewer retries, said so.
    assert "blipguard.W031" in ids_found(**good(redis_url, ACK_WAIT=30))
    assert "blipguard.W031" in ids_found(**good(redis_url, ACK_WAIT=2))


def test_broker_on_the_job_state_redis(redis_url):
    settings = good(redis_url)
    broker = settings["CACHES"]["default"]["LOCATION"].rsplit("/", 1)[0] + "/9"
    assert "blipguard.W013" in ids_found(**settings, CELERY_BROKER_URL=broker)


@pytest.mark.parametrize("policy, expected", [("allkeys-lru", "blipguard.W015"), ("volatile-lru", "blipguard.W035")])
def test_evicting_redis(django_app, redis_url, policy, expected):
    admin = django_app.redis.client()
    admin.config_set("maxmemory-policy", policy)
    try:
        assert expected in ids_found(**good(redis_url))
    finally:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.close()


def test_unreachable_redis_is_a_bounded_warning_not_a_crash(redis_url):
    """A server that accepts and never answers: the live checks give up on their own."""
    import threading

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings = good(redis_url)
        settings["CACHES"]["default"]["LOCATION"] = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        found: set[str] = set()
        errors: list[BaseException] = []

        def run():
            try:
                found.update(ids_found(**settings))
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(5 * bg_checks.LIVE_TIMEOUT)
        assert not t.is_alive(), "the live checks must not hang on a silent Redis"
    if errors:
        raise errors[0]
    assert {"blipguard.W028", "blipguard.W034"} <= found
