"""Django system checks on the *effective* Redis and retry settings of the running app.

Settings keys a client library silently ignores are the classic failure here, so these
checks read the connection pool the app really builds, and (as deploy checks, run by
``manage.py check --deploy``) a live socket and the server's eviction policy.

Adding the app to an unchanged host never blocks ``migrate``, ``test`` or start-up: what
it finds about the host is a warning (``blipguard.W0nn``) unless ``BLIPGUARD['STRICT']``
makes it an error (``blipguard.E0nn``, same number). Only an invalid ``BLIPGUARD``
setting (E001) is always an error. Numbers 021 and up are advice: always warnings.
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


def _config():
    try:
        return from_django()
    except ConfigurationError:
        return None


def _cache_alias() -> str:
    cfg = _config()
    return cfg.cache_alias if cfg else "default"


def finding(number: int, msg: str, hint: str | None = None) -> checks.CheckMessage:
    """A finding about the host: a warning, or an error in strict mode."""
    cfg = _config()
    if cfg is not None and cfg.strict:
        return checks.Error(msg, hint=hint, id=f"blipguard.E{number:03d}")
    return checks.Warning(msg, hint=hint, id=f"blipguard.W{number:03d}")


def advice(number: int, msg: str, hint: str | None = None) -> checks.CheckMessage:
    return checks.Warning(msg, hint=hint, id=f"blipguard.W{number:03d}")


@checks.register("blipguard")
def check_config(app_configs=None, **kwargs):
    try:
        from_django()
    except ConfigurationError as e:
        return [checks.Error(str(e), id="blipguard.E001", hint="See the README section 'Settings'.")]
    return []


@checks.register("blipguard")
def check_host_shape(app_configs=None, **kwargs):
    from .patcher import last_report

    report = last_report()
    if report is None or not report.refused:
        return []
    return [finding(
        16, "blipguard did not patch the host: " + "; ".join(report.refused),
        hint="The host moved away from the shapes the patch knows (see the README, 'Supported versions'); "
        "BLIPGUARD['TARGETS'] and ['HELPERS'] can point at renamed symbols.")]


@checks.register("blipguard")
def check_cache_options(app_configs=None, **kwargs):
    alias = _cache_alias()
    cache = settings.CACHES.get(alias)
    if cache is None:
        return [finding(2, f"CACHES has no {alias!r} cache (BLIPGUARD['CACHE_ALIAS'])")]
    options = cache.get("OPTIONS", {}) or {}
    ignored = sorted(set(options) - PASSED_OPTIONS - DJANGO_REDIS_OPTIONS)
    if ignored:
        return [advice(
            21, f"CACHES[{alias!r}]['OPTIONS'] keys {ignored} are silently ignored by django-redis: "
            "they never reach the Redis connection",
            hint="OPTIONS = cache_options(OPTIONS) (blipguard.app_patch.redis_options) moves them into "
            "CONNECTION_POOL_KWARGS, keeping their values.")]
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
    """What the pool will really give each connection (no network I/O)."""
    alias = _cache_alias()
    try:
        pool = _pool(alias)
        kw = pool.connection_kwargs
    except Exception as e:
        return [advice(22, f"cannot build the {alias!r} Redis pool to inspect it: {e}")]
    found = []
    if not kw.get("socket_timeout"):
        found.append(finding(
            3, "the job-state Redis connection has no socket (read) timeout: a stalled Redis blocks a task forever",
            hint="cache_options(OPTIONS, socket_timeout=5) or OPTIONS['SOCKET_TIMEOUT'] = 5."))
    if not kw.get("socket_connect_timeout"):
        found.append(advice(23, "the job-state Redis connection has no connect timeout",
                            hint="Set OPTIONS['SOCKET_CONNECT_TIMEOUT']."))
    if not kw.get("socket_keepalive", _library_default(pool, "socket_keepalive")):
        found.append(finding(
            4, "the job-state Redis connections have no TCP keepalive: idle pooled connections are dropped silently",
            hint="cache_options(OPTIONS) puts socket_keepalive and its options into CONNECTION_POOL_KWARGS."))
    retry = kw.get("retry")
    retries = getattr(retry, "_retries", 0) if retry is not None else 0
    if retries <= 0:
        found.append(finding(
            5, "the job-state Redis pool does not retry connection errors (redis-py default for from_url pools)",
            hint="cache_options(OPTIONS) adds retry with backoff."))
    else:
        from redis.exceptions import ConnectionError as RedisConnectionError

        on = kw.get("retry_on_error") or []
        if not any(issubclass(RedisConnectionError, t) for t in on if isinstance(t, type)):
            found.append(finding(
                6, "the job-state Redis pool has a retry but no retry_on_error: pipelines (MULTI/EXEC) will not retry",
                hint="CONNECTION_POOL_KWARGS: retry_on_error=[ConnectionError, TimeoutError]."))
    if not kw.get("health_check_interval"):
        found.append(advice(27, "the job-state Redis connections have no health_check_interval",
                            hint="CONNECTION_POOL_KWARGS: health_check_interval=30."))
    return found


LIVE_TIMEOUT = 2.0  # seconds: a deploy check must not hang on an unreachable Redis


def _one_connection(pool):
    """A connection made like the pool's, but bounded: one try, short timeouts."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kw = dict(pool.connection_kwargs)
    kw["socket_connect_timeout"] = min(kw.get("socket_connect_timeout") or LIVE_TIMEOUT, LIVE_TIMEOUT)
    kw["socket_timeout"] = min(kw.get("socket_timeout") or LIVE_TIMEOUT, LIVE_TIMEOUT)
    kw["retry"] = Retry(NoBackoff(), 0)
    kw.pop("retry_on_error", None)
    return pool.connection_class(**kw)


def _live_socket_options(pool) -> dict:
    conn = _one_connection(pool)
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


@checks.register("blipguard", deploy=True)
def check_live_socket(app_configs=None, **kwargs):
    """Open one real connection the way the pool does and read its socket options back."""
    alias = _cache_alias()
    try:
        pool = _pool(alias)
        live = _live_socket_options(pool)
    except Exception as e:
        return [advice(28, f"could not open a Redis connection to verify its socket options: {e}")]
    if not live["keepalive"]:
        return [finding(9, "the live Redis socket has SO_KEEPALIVE off")]
    found = []
    wanted = pool.connection_kwargs.get("socket_keepalive_options") or {}
    for opt, key in ((socket.TCP_KEEPIDLE, "idle"), (socket.TCP_KEEPINTVL, "interval"), (socket.TCP_KEEPCNT, "count")):
        if opt in wanted and wanted[opt] != live[key]:
            found.append(finding(
                10, f"the live Redis socket has TCP keepalive {key}={live[key]}, settings ask for {wanted[opt]}"))
    return found


@checks.register("blipguard")
def check_retry_window(app_configs=None, **kwargs):
    from .host import Host
    from .policy import policy_for

    cfg = _config()
    if cfg is None:
        return []
    host = Host(cfg)
    try:
        policy = policy_for(host)
    except ConfigurationError as e:
        return [advice(31, f"the retry policy could not be fitted: {e}")]
    where = f"ack_wait={host.ack_wait():g}s (budget {cfg.retry_budget_fraction:g} of it)"
    if policy.max_retries < cfg.max_retries:
        return [advice(
            31, f"MAX_RETRIES lowered from {cfg.max_retries} to {policy.max_retries} so the retry window "
            f"(at most {policy.max_window:.1f}s, each attempt up to {policy.attempt_max:g}s) fits inside {where}",
            hint="Shorter Redis timeouts or a longer ack_wait leave room for more retries.")]
    if policy.cap < cfg.backoff_max:
        return [advice(
            32, f"BACKOFF_MAX lowered from {cfg.backoff_max:g}s to {policy.cap:.2f}s so the retry window "
            f"(at most {policy.max_window:.1f}s) fits inside {where}")]
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
            return [finding(
                13, f"the Celery broker ({b[0]}:{b[1]}) is the Redis server that holds the job state: "
                "a Redis blip then takes the queue down with the state",
                hint="Use a separate broker (RabbitMQ, as the reference platform does).")]
    return []


@checks.register("blipguard", deploy=True)
def check_eviction_policy(app_configs=None, **kwargs):
    alias = _cache_alias()
    try:
        conn = _one_connection(_pool(alias))
        try:
            conn.send_command("CONFIG", "GET", "maxmemory-policy")
            reply = conn.read_response()
        finally:
            conn.disconnect()
        # [name, value] over RESP2, {name: value} over RESP3 (redis-py 8's default)
        policy = next(iter(reply.values()), "") if isinstance(reply, dict) else (reply[1] if len(reply) > 1 else "")
        policy = policy.decode() if isinstance(policy, bytes) else str(policy)
    except Exception as e:
        return [advice(34, f"could not read Redis maxmemory-policy: {e}")]
    if policy.startswith(EVICTING_ALL):
        return [finding(
            15, f"the Redis holding job state runs maxmemory-policy {policy}: under memory pressure it evicts job "
            "state and live jobs fail with 'Job state keys not found in Redis'",
            hint="Use noeviction, or keep job state in a Redis of its own.")]
    if policy.startswith(EVICTING_TTL):
        return [advice(
            35, f"the Redis holding job state runs maxmemory-policy {policy}: job state keys have a TTL, so they can "
            "be evicted")]
    return []
