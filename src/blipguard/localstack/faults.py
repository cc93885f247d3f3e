"""Named fault injections on a running LocalStack."""

from __future__ import annotations

import threading

from .stack import LocalStack
from .tcpproxy import FaultProxy


def _proxy(stack: LocalStack) -> FaultProxy:
    assert stack.redis_proxy is not None, "stack not started"
    return stack.redis_proxy


def inflight_reset(stack: LocalStack, match: bytes | None = b"SREM", count: int = 1) -> None:
    """RST the next app connection that sends ``match`` (the command is never delivered)."""
    _proxy(stack).reset_next(match=match, count=count)


def redis_down_for(stack: LocalStack, seconds: float) -> threading.Thread:
    """Stop redis (data saved), keep it down ``seconds``, start it on the same port."""
    return stack.redis.down_for(seconds)


def redis_stall(stack: LocalStack, seconds: float, match: bytes | None = None) -> None:
    """Hold redis replies to the app for ``seconds``."""
    _proxy(stack).stall(seconds, match=match)


def delete_job_state(stack: LocalStack, job_id: object) -> int:
    """Delete ``job:{job_id}:*`` keys directly on redis; return how many were deleted."""
    client = stack.redis.client()
    try:
        keys = list(client.scan_iter(match=f"job:{job_id}:*", count=500))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


def nats_down_for(stack: LocalStack, seconds: float) -> threading.Thread:
    """Stop nats-server, keep it down ``seconds``, start it on the same port (JetStream kept)."""
    return stack.nats.down_for(seconds)
