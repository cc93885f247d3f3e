"""Is a dependency answering again? Used by the in-worker breaker."""

import asyncio
import logging

logger = logging.getLogger("blipguard.pause")


def probe(dependency: str, timeout: float = 1.0) -> bool:
    try:
        if dependency == "redis":
            return _redis(timeout)
        if dependency == "nats":
            return asyncio.run(_nats(timeout))
    except Exception as e:
        logger.debug("probe of %s failed: %s", dependency, e)
        return False
    return True  # nothing we know how to probe: let the lease decide


def _redis(timeout: float) -> bool:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from django_redis import get_redis_connection

    from ..host import current_host

    pool = get_redis_connection(current_host().config.cache_alias).connection_pool
    kwargs = dict(pool.connection_kwargs)
    client = redis.Redis(
        host=kwargs.get("host", "localhost"), port=kwargs.get("port", 6379), db=kwargs.get("db", 0),
        password=kwargs.get("password"), socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # one honest answer: redis-py 6+ would retry by default
    )
    try:
        return bool(client.ping())
    finally:
        client.close()


async def _nats(timeout: float) -> bool:
    import nats
    from django.conf import settings

    async def quiet(e):
        pass

    nc = await nats.connect(settings.NATS_URL, connect_timeout=timeout, allow_reconnect=False, error_cb=quiet)
    await nc.close()
    return True
