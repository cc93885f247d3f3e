"""Is a dependency answering again? Used by the in-worker breaker.

A probe gives one honest answer within its timeout: no client retries, and the whole
check (name lookup, connect, TLS handshake, AUTH, PING) is cut off at the timeout.
"""

import asyncio
import logging
import threading

logger = logging.getLogger("blipguard.pause")


def probe(dependency: str, timeout: float = 1.0) -> bool:
    try:
        if dependency == "redis":
            return _within(timeout, _redis, timeout)
        if dependency == "nats":
            return _within(timeout, lambda t: asyncio.run(_nats(t)), timeout)
    except Exception as e:
        logger.debug("probe of %s failed: %s", dependency, e)
        return False
    return True  # nothing we know how to probe: let the lease decide


def ping_pool(pool, timeout: float = 1.0) -> bool:
    """PING Redis over one new connection made exactly like `pool`'s own (its connection
    class and kwargs: TLS, unix socket, ACL user and password, db all carry over), with
    only the timeouts and retries replaced. True if it answered PONG within `timeout`."""
    return _within(timeout, _ping_once, pool, timeout)


def _ping_once(pool, timeout: float) -> bool:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs = {
        **pool.connection_kwargs,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry_on_timeout": False,
        "retry_on_error": [],
        "retry": Retry(NoBackoff(), 0),  # redis-py 6+ would retry by default
        "health_check_interval": 0,
    }
    if pool.connection_kwargs.get("client_name"):  # named only where the pool's own are (ACLs allow it)
        kwargs["client_name"] = f"{pool.connection_kwargs['client_name']}:probe"
    conn = pool.connection_class(**kwargs)
    try:
        conn.connect()
        conn.send_command("PING")
        return conn.read_response() in (b"PONG", "PONG")
    finally:
        conn.disconnect()


def _within(timeout: float, fn, *args) -> bool:
    """fn(*args) in a daemon thread; False if it raises or has not answered in `timeout`.
    Each socket step has its own timeout too, so a late thread ends by itself."""
    answer: list = []

    def run():
        try:
            answer.append(bool(fn(*args)))
        except Exception as e:
            logger.debug("probe failed: %s", e)
            answer.append(False)

    t = threading.Thread(target=run, name="blipguard-probe-once", daemon=True)
    t.start()
    t.join(timeout)
    return bool(answer and answer[0])


def _redis(timeout: float) -> bool:
    from django_redis import get_redis_connection

    from ..host import current_host

    return _ping_once(get_redis_connection(current_host().config.cache_alias).connection_pool, timeout)


async def _nats(timeout: float) -> bool:
    import nats
    from django.conf import settings

    async def quiet(e):
        pass

    nc = await nats.connect(settings.NATS_URL, connect_timeout=timeout, allow_reconnect=False, error_cb=quiet)
    await nc.close()
    return True
