from __future__ import annotations

import errno
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from blipguard.localstack.procs import wait_until
from blipguard.localstack.redis import RedisServer
from blipguard.localstack.tcpproxy import FaultProxy

pytestmark = pytest.mark.stack


def no_retry_client(proxy: FaultProxy, **kw: object) -> redis.Redis:
    """redis-py >= 6 retries by default; these tests need to see the raw error."""
    return redis.Redis.from_url(proxy.url(), retry=Retry(NoBackoff(), 0), **kw)


@pytest.fixture
def proxy(redis_server: RedisServer):
    p = FaultProxy("127.0.0.1", redis_server.port)
    p.start()
    yield p
    p.stop()


def test_reset_next_resets_inflight_pipeline(proxy: FaultProxy, redis_server: RedisServer) -> None:
    client = no_retry_client(proxy)
    bystander = no_retry_client(proxy)
    client.sadd("jobs", "1", "2")
    assert bystander.ping()
    proxy.reset_next(b"SREM")
    pipe = client.pipeline(transaction=False)
    pipe.srem("jobs", "1")
    pipe.scard("jobs")
    with pytest.raises(redis.exceptions.ConnectionError, match="Connection reset by peer") as info:
        pipe.execute()
    cause = info.value.__cause__ or info.value.__context__
    assert isinstance(cause, ConnectionResetError) and cause.errno == errno.ECONNRESET
    assert proxy.wait_fired(1) and proxy.resets_fired == 1
    # the command was never delivered; other connections are unaffected
    assert redis_server.client().smembers("jobs") == {b"1", b"2"}
    assert bystander.scard("jobs") == 2
    assert client.srem("jobs", "1") == 1  # reconnects fine once the fault fired


def test_reset_next_any_chunk_count(proxy: FaultProxy) -> None:
    clients = [no_retry_client(proxy) for _ in range(2)]
    proxy.reset_next(None, count=2)
    for c in clients:
        with pytest.raises(redis.exceptions.ConnectionError):
            c.get("x")
    assert proxy.wait_fired(1) and proxy.resets_fired == 2
    assert clients[0].get("x") is None  # disarmed: traffic flows again


def test_refuse_next_fails_new_connections_fast_and_spares_open_ones(proxy: FaultProxy) -> None:
    open_client = no_retry_client(proxy)
    assert open_client.ping()
    proxy.refuse_next(count=1)
    t0 = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        no_retry_client(proxy, socket_connect_timeout=5, socket_timeout=5).ping()
    assert time.monotonic() - t0 < 1.0, "refused at once, not timed out"
    assert proxy.refusals_fired == 1
    assert open_client.ping(), "connections already open are left alone"
    assert no_retry_client(proxy).ping(), "disarmed after count connections"


def test_stall_times_out_short_socket_timeout(proxy: FaultProxy) -> None:
    client = no_retry_client(proxy, socket_timeout=0.5)
    patient = no_retry_client(proxy, socket_timeout=5)
    client.ping(), patient.ping()
    proxy.stall(2)
    t0 = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):
        client.get("k")
    assert time.monotonic() - t0 < 1.5
    assert patient.set("k", "v") is True  # held, then delivered
    assert time.monotonic() - t0 >= 1.5


def test_stall_with_match_only_holds_matching(proxy: FaultProxy) -> None:
    client = no_retry_client(proxy, socket_timeout=0.5)
    other = no_retry_client(proxy, socket_timeout=0.5)
    client.ping(), other.ping()
    proxy.stall(1.5, match=b"SREM")
    with pytest.raises(redis.exceptions.TimeoutError):
        client.srem("s", "a")
    assert other.ping()


def test_concurrent_clients_and_upstream_restart(proxy: FaultProxy, redis_server: RedisServer) -> None:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            c = no_retry_client(proxy, socket_timeout=5)
            for n in range(50):
                c.incr(f"ctr:{i}")
            c.close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    direct = redis_server.client()
    assert [int(direct.get(f"ctr:{i}")) for i in range(20)] == [50] * 20

    redis_server.stop()
    down = no_retry_client(proxy, socket_connect_timeout=1, socket_timeout=1)
    t0 = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        down.ping()
    assert time.monotonic() - t0 < 1.0
    redis_server.start()
    wait_until(lambda: proxy.connections() == 0, 2, "stale proxied connections closed")
    assert no_retry_client(proxy).get("ctr:0") == b"50"
