"""Redis client settings that really reach the connection.

django-redis passes only PASSWORD, SOCKET_TIMEOUT and SOCKET_CONNECT_TIMEOUT from
``OPTIONS`` to the connection and silently ignores other keys there; everything else has
to go through ``CONNECTION_POOL_KWARGS``. Use :func:`cache_options` for the cache that
holds the job state: it merges into the host's own ``OPTIONS``; the system checks
(checks.py) verify the live connection.
"""

import logging
import socket

from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .context import current_job_id
from .errors import describe

logger = logging.getLogger(__name__)


class ReportingRetry(Retry):
    """redis-py's Retry that also writes each connection-level retry to the current
    job's log, so a blip absorbed by the client is still visible to the user."""

    def call_with_retry(self, do, fail, *args, **kwargs):
        failures = 0

        def reporting_fail(error, *rest):
            nonlocal failures
            failures += 1
            _report(error, failures, self._retries)
            return fail(error, *rest)

        return super().call_with_retry(do, reporting_fail, *args, **kwargs)


def _report(error: Exception, failure: int, retries: int) -> None:
    job_id = current_job_id()
    will_retry = failure <= retries
    what = f"the Redis client retried (retry {failure} of {retries})" if will_retry else "the Redis client gave up"
    message = f"Redis connection error: {describe(error)}; {what}."
    if job_id is None:
        logger.warning(message)
        return
    try:
        from .host import current_host

        current_host().job_logger(job_id).warning(message)
    except Exception:
        logger.warning("job %s: %s", job_id, message)


def keepalive_options(idle: int = 60, interval: int = 10, count: int = 3) -> dict:
    return {socket.TCP_KEEPIDLE: idle, socket.TCP_KEEPINTVL: interval, socket.TCP_KEEPCNT: count}


def connection_pool_kwargs(
    keepalive_idle: int = 60,
    keepalive_interval: int = 10,
    keepalive_count: int = 3,
    health_check_interval: int = 30,
    retries: int = 1,
    backoff_base: float = 0.05,
    backoff_cap: float = 0.5,
    client_name: str | None = None,
) -> dict:
    """Pool kwargs: TCP keepalive, health checks, retry with backoff on connection errors.

    ``client_name`` names each connection (``CLIENT SETNAME``), so ``CLIENT LIST`` tells
    the web, the workers and the breaker's probe (``<name>:probe``) apart: set it per
    process kind, e.g. from an environment variable the worker's Deployment sets.

    One client retry by default: it absorbs a reset of an idle pooled connection at once;
    anything longer is the result task's to retry, with backoff fitted inside the NATS
    ack_wait (each client retry multiplies how long one attempt can block)."""
    named = {"client_name": client_name} if client_name else {}
    return {
        **named,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(keepalive_idle, keepalive_interval, keepalive_count),
        "health_check_interval": health_check_interval,
        "retry": ReportingRetry(ExponentialBackoff(cap=backoff_cap, base=backoff_base), retries),
        # Pipelines (MULTI/EXEC) retry only on errors listed here.
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


# OPTIONS keys hosts set that django-redis never passes on: their pool-kwarg names.
TRANSLATED = {"SOCKET_KEEPALIVE": "socket_keepalive", "SOCKET_KEEPALIVE_OPTIONS": "socket_keepalive_options"}


def cache_options(
    options: dict | None = None, *, socket_timeout: float = 2.0, connect_timeout: float = 2.0, **pool_kwargs
) -> dict:
    """``CACHES[alias]["OPTIONS"]`` for a django-redis cache that holds job state.

    Merges into the host's ``options``: its other keys stay (``IGNORE_EXCEPTIONS``, its
    client class, its own pool kwargs win over these defaults), and the keepalive keys
    django-redis ignores are moved into ``CONNECTION_POOL_KWARGS`` with the host's values.
    The read and connect timeouts are these (short, so a stalled Redis costs seconds and
    retries fit inside the ack_wait); keepalive, health checks and retry with backoff are
    added where the host has none (``pool_kwargs`` go to :func:`connection_pool_kwargs`).
    """
    merged = dict(options or {})
    host_pool = dict(merged.pop("CONNECTION_POOL_KWARGS", None) or {})
    for key, kwarg in TRANSLATED.items():
        if key in merged:
            host_pool.setdefault(kwarg, merged.pop(key))
    if "socket_keepalive_options" in host_pool:
        host_pool["socket_keepalive_options"] = dict(host_pool["socket_keepalive_options"])
    merged.setdefault("CLIENT_CLASS", "django_redis.client.DefaultClient")
    merged["SOCKET_TIMEOUT"] = socket_timeout
    merged["SOCKET_CONNECT_TIMEOUT"] = connect_timeout
    pool = {**connection_pool_kwargs(**pool_kwargs), **host_pool}
    if not pool.get("socket_keepalive"):
        # The host asked for no keepalive (e.g. an env var set to False): respect it.
        pool.pop("socket_keepalive_options", None)
    merged["CONNECTION_POOL_KWARGS"] = pool
    return merged


def worst_attempt_seconds(connection_kwargs: dict) -> float:
    """How long one Redis command can block, retries included (0 when unbounded)."""
    # A try that times out connecting never waits for a reply too: the larger one bounds it.
    timeout = max(connection_kwargs.get("socket_timeout") or 0.0, connection_kwargs.get("socket_connect_timeout") or 0.0)
    retry = connection_kwargs.get("retry")
    retries = max(getattr(retry, "_retries", 0), 0) if retry is not None else 0
    backoff = getattr(retry, "_backoff", None)
    cap = getattr(backoff, "_cap", 0.0) if backoff is not None else 0.0
    return (retries + 1) * timeout + retries * cap
