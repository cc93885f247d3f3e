"""Django system checks on the *effective* Redis and retry settings of the running app.

Settings keys a client library silently ignores are the classic failure here, so these
checks read the live connection pool and a live socket, not the settings text.
Stable ids: blipguard.E0xx errors, blipguard.W0xx warnings (see README).
"""

import inspect
import socket
from urllib.parse import urlparse

from django.conf import settings
from django.core import checks

from .config import from_django
from .errors import ConfigurationError

# OPTIONS keys django-redis passes to the connection; anything else there is ignored
# unless django-redis itself knows it.
PASSED_OPTIONS = {"PASSWORD", "SOCKET_TIMEOUT", "SOCKET_CONNECT_TIMEOUT"}
DJANGO_REDIS_OPTIONS = {
    "CLIENT_CLASS", "CLIENT_KWARGS", "CONNECTION_POOL_CLASS", "CONNECTION_POOL_CLASS_KWARGS",
    "CONNECTION_POOL_KWARGS", "CONNECTION_FACTORY", "PARSER_CLASS", "SERIALIZER", "COMPRESSOR",
    "IGNORE_EXCEPTIONS", "LOG_IGNORED_EXCEPTIONS", "REDIS_CLIENT_CLASS", "REDIS_CLIENT_KWARGS",
    "SENTINELS", "SENTINEL_KWARGS", "CLOSE_CONNECTION", "DB", "PICKLE_VERSION", "REPLICA_READ_ONLY",
}
EVICTING_ALL = ("allkeys-",)
EVICTING_TTL = ("volatile-",)


def _cache_alias() -> str:
    try:
        return from_django().cache_alias
    except ConfigurationError:
        return "default"


@checks.register("blipguard")
def check_config(app_configs=None, **kwargs):
    try:
        from_django()
    except ConfigurationError as e:
        return [checks.Error(str(e), id="blipguard.E001", hint="See the README section 'Settings'.")]
    return []


@checks.register("blipguard")
def check_cache_options(app_configs=None, **kwargs):
    alias = _cache_alias()
    cache = settings.CACHES.get(alias)
    if cache is None:
        return [checks.Error(f"CACHES has no {alias!r} cache (BLIPGUARD['CACHE_ALIAS'])", id="blipguard.E002")]
    options = cache.get("OPTIONS", {}) or {}
    ignored = sorted(set(options) - PASSED_OPTIONS - DJANGO_REDIS_OPTIONS)
    if ignored:
        return [
            checks.Warning(
                f"CACHES[{alias!r}]['OPTIONS'] keys {ignored} are silently ignored by django-redis: "
                "they never reach the Redis connection",
                hint="Move connection settings into OPTIONS['CONNECTION_POOL_KWARGS'] "
                "(blipguard.app_patch.redis_options.cache_options builds them).",
                id="blipguard.W001",
            )
        ]
    return []


def _library_default(pool, name: str):
    """The connection class's own default (redis-py 8 turns keepalive on, 5.x does not)."""
    try:
        return inspect.signature(pool.connection_class.__init__).parameters[name].default
    except (KeyError, TypeError, ValueError):
        return None


def _pool(alias: str):
    from django_redis import get_redis_connection

    return get_redis_connection(alias).connection_pool


@checks.register("blipguard")
def check_connection_kwargs(app_configs=None, **kwargs):
    """What the pool will really give each connection."""
    alias = _cache_alias()
    try:
        pool = _pool(alias)
        kw = pool.connection_kwargs
    except Exception as e:
        return [checks.Warning(f"cannot build the {alias!r} Redis pool to inspect it: {e}", id="blipguard.W002")]
    found = []
    if not kw.get("socket_timeout"):
        found.append(checks.Error(
            "the job-state Redis connection has no socket (read) timeout: a stalled Redis blocks a task forever",
            hint="Set OPTIONS['SOCKET_TIMEOUT'] (e.g. 5).", id="blipguard.E003"))
    if not kw.get("socket_connect_timeout"):
        found.append(checks.Warning(
            "the job-state Redis connection has no connect timeout", hint="Set OPTIONS['SOCKET_CONNECT_TIMEOUT'].",
            id="blipguard.W003"))
    if not kw.get("socket_keepalive", _library_default(pool, "socket_keepalive")):
        found.append(checks.Error(
            "the job-state Redis connections have no TCP keepalive: idle pooled connections are dropped silently",
            hint="CONNECTION_POOL_KWARGS: socket_keepalive=True with socket_keepalive_options.", id="blipguard.E004"))
    retry = kw.get("retry")
    retries = getattr(retry, "_retries", 0) if retry is not None else 0
    if retries <= 0:
        found.append(checks.Error(
            "the job-state Redis pool does not retry connection errors (redis-py default for from_url pools)",
            hint="CONNECTION_POOL_KWARGS: retry=Retry(ExponentialBackoff(...), 3).", id="blipguard.E005"))
    else:
        from redis.exceptions import ConnectionError as RedisConnectionError

        on = kw.get("retry_on_error") or []
        if not any(issubclass(RedisConnectionError, t) for t in on if isinstance(t, type)):
            found.append(checks.Error(
                "the job-state Redis pool has a retry but no retry_on_error: pipelines (MULTI/EXEC) will not retry",
                hint="CONNECTION_POOL_KWARGS: retry_on_error=[ConnectionError, TimeoutError].", id="blipguard.E006"))
    if not kw.get("health_check_interval"):
        found.append(checks.Warning(
            "the job-state Redis connections have no health_check_interval", id="blipguard.W007",
            hint="CONNECTION_POOL_KWARGS: health_check_interval=30."))
    return found


def _live_socket_options(pool) -> dict:
    conn = pool.make_connection()
    try:
        conn.connect()
        sock = conn._sock
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        }
    finally:
        conn.disconnect()


@checks.register("blipguard")
def check_live_socket(app_configs=None, **kwargs):
    """Open one real connection the way the pool does and read its socket options back."""
    alias = _cache_alias()
    try:
        pool = _pool(alias)
        live = _live_socket_options(pool)
    except Exception as e:
        return [checks.Warning(f"could not open a Redis connection to verify its socket options: {e}",
                               id="blipguard.W008")]
    found = []
    if not live["keepalive"]:
        return [checks.Error("the live Redis socket has SO_KEEPALIVE off", id="blipguard.E009")]
    wanted = pool.connection_kwargs.get("socket_keepalive_options") or {}
    for opt, key in ((socket.TCP_KEEPIDLE, "idle"), (socket.TCP_KEEPINTVL, "interval"), (socket.TCP_KEEPCNT, "count")):
        if opt in wanted and wanted[opt] != live[key]:
            found.append(checks.Error(
                f"the live Redis socket has TCP keepalive {key}={live[key]}, settings ask for {wanted[opt]}",
                id="blipguard.E010"))
    return found


@checks.register("blipguard")
def check_retry_window(app_configs=None, **kwargs):
    from .host import Host
    from .policy import policy_for

    try:
        cfg = from_django()
        host = Host(cfg)
        policy = policy_for(host)
    except ConfigurationError as e:
        return [checks.Error(f"the retry window does not fit: {e}", id="blipguard.E011")]
    if policy.cap < cfg.backoff_max:
        return [checks.Warning(
            f"BACKOFF_MAX lowered from {cfg.backoff_max:g}s to {policy.cap:.2f}s so the retry window "
            f"(at most {policy.max_window:.1f}s) fits inside ack_wait={host.ack_wait():g}s",
            id="blipguard.W012")]
    return []


def _redis_address(url: str) -> tuple[str, int, int] | None:
    u = urlparse(url)
    if u.scheme not in ("redis", "rediss", "unix"):
        return None
    db = int((u.path or "/0").strip("/") or 0) if u.scheme != "unix" else 0
    return (u.hostname or "localhost", u.port or 6379, db)


@checks.register("blipguard")
def check_broker_not_state_redis(app_configs=None, **kwargs):
    broker = getattr(settings, "CELERY_BROKER_URL", None) or getattr(settings, "BROKER_URL", None)
    location = settings.CACHES.get(_cache_alias(), {}).get("LOCATION")
    if not broker or not location:
        return []
    locations = location if isinstance(location, (list, tuple)) else [location]
    b = _redis_address(broker)
    if b is None:
        return []
    for loc in locations:
        s = _redis_address(loc)
        if s is not None and s[:2] == b[:2]:
            return [checks.Error(
                f"the Celery broker ({b[0]}:{b[1]}) is the Redis server that holds the job state: "
                "a Redis blip then takes the queue down with the state",
                hint="Use a separate broker (RabbitMQ, as the reference platform does).", id="blipguard.E013")]
    return []


@checks.register("blipguard")
def check_eviction_policy(app_configs=None, **kwargs):
    alias = _cache_alias()
    try:
        from django_redis import get_redis_connection

        policy = get_redis_connection(alias).config_get("maxmemory-policy").get("maxmemory-policy", "")
    except Exception as e:
        return [checks.Warning(f"could not read Redis maxmemory-policy: {e}", id="blipguard.W014")]
    if policy.startswith(EVICTING_ALL):
        return [checks.Error(
            f"the Redis holding job state runs maxmemory-policy {policy}: under memory pressure it evicts job "
            "state and live jobs fail with 'Job state keys not found in Redis'",
            hint="Use noeviction, or keep job state in a Redis of its own.", id="blipguard.E015")]
    if policy.startswith(EVICTING_TTL):
        return [checks.Warning(
            f"the Redis holding job state runs maxmemory-policy {policy}: job state keys have a TTL, so they can "
            "be evicted", id="blipguard.W015")]
    return []
