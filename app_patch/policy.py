"""The retry policy in force in this process, fitted to the host's ack_wait."""

from .redis_options import worst_attempt_seconds
from .retry_policy import RetryPolicy, fit_to_ack_wait

_cache: dict = {}


def redis_connection_kwargs(alias: str) -> dict:
    from django_redis import get_redis_connection

    return dict(get_redis_connection(alias).connection_pool.connection_kwargs)


def policy_for(host) -> RetryPolicy:
    cfg = host.config
    key = (repr(cfg), host.ack_wait())
    if key not in _cache:
        try:
            attempt = worst_attempt_seconds(redis_connection_kwargs(cfg.cache_alias))
        except Exception:
            attempt = 0.0
        # An attempt's Redis work fails before its ack, or its acks (re-acks included: they
        # share one ack timeout, ack.ack_time_left) fail.
        attempt = max(attempt, cfg.ack_timeout)
        _cache[key] = fit_to_ack_wait(
            host.ack_wait(),
            cfg.max_retries,
            cfg.backoff_base,
            cfg.backoff_max,
            attempt_max=attempt,
            budget_fraction=cfg.retry_budget_fraction,
        )
    return _cache[key]
