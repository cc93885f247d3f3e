"""The operator on a real kube-apiserver, with real kopf, RabbitMQ, prefork Celery workers,
and the stack's real redis-server / nats-server behind the pod mirror."""

from __future__ import annotations

import base64
import time

import pytest

from blipguard.app_patch.pause import client as fleet
from blipguard.localstack.guard_operator import OperatorProcess
from blipguard.localstack.podmirror import PodMirror
from blipguard.localstack.procs import wait_until
from blipguard.operator import crd
from blipguard.operator.kube_setup import install_crd

pytestmark = [pytest.mark.operator, pytest.mark.kube]

WORKERS = 2
SETTLE = 2.0


@pytest.fixture(scope="session")
def crd_installed(kube):
    install_crd(kube.client)


@pytest.fixture
def app(django_app):
    from config import celery_app

    return celery_app


@pytest.fixture
def workers(worker_pool, platform, app):
    w = worker_pool.ensure(platform.patched_settings, count=WORKERS, concurrency=1, BLIPGUARD_SOCKET_TIMEOUT="1",
                           BLIPGUARD_CONNECT_TIMEOUT="1")
    yield w
    fleet.resume(app, expect=len(w.hostnames), source="breaker")
    fleet.resume(app, expect=len(w.hostnames))


@pytest.fixture
def stack_mirror(kube, namespace, stack):
    """Pods of the stack's own Redis and NATS: the servers the workers use."""
    m = PodMirror(kube.client, namespace, redis=stack.redis, nats=stack.nats, redis_release="cache",
                  nats_release="bus", interval=0.05)
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def broker_secret(kube, namespace, stack):
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "celery-broker"},
            "data": {"url": base64.b64encode(stack.rabbitmq.url.encode()).decode()}}
    kube.client.create(f"/api/v1/namespaces/{namespace}/secrets", body)
    return "celery-broker"


@pytest.fixture
def operator(kube, namespace, crd_installed, tmp_path):
    op = OperatorProcess(kube.kubeconfig, [namespace], tmp_path / "operator")
    try:
        yield op.start()
    finally:
        op.stop()
        print(f"\n--- operator log tail\n{op.log_tail(3000)}")


def guard_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{crd.GROUP}/{crd.VERSION}/namespaces/{namespace}/{crd.PLURAL}"
    return f"{base}/{name}" if name else base


def make_guard(kube, namespace, queue, name="fleet", **timing):
    body = {
        "apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name},
        "spec": {
            "dependencies": [{"kind": "redis"}],
            "pause": {"brokerSecretRef": {"name": "celery-broker"}, "resultQueues": [queue],
                      "expectedWorkers": WORKERS},
            "timing": {"settleSeconds": SETTLE, "leaseSeconds": 30, **timing},
        },
    }
    return kube.client.create(guard_path(namespace), body)


def guard_status(kube, namespace, name="fleet") -> dict:
    return kube.client.get(guard_path(namespace, name)).get("status") or {}


def events_of(kube, namespace, name="fleet") -> list[dict]:
    items = kube.client.get(f"/api/v1/namespaces/{namespace}/events").get("items", [])
    return [e for e in items if (e.get("involvedObject") or {}).get("name") == name
            and (e.get("involvedObject") or {}).get("kind") == crd.KIND]


def fleet_paused(app) -> dict[str, bool]:
    return {h: bool(r.get("paused")) for h, r in fleet.status(app, expect=WORKERS).replies.items()}


def test_a_redis_restart_pauses_every_worker_and_resumes_after_the_settle_time(
        kube, namespace, stack, stack_mirror, broker_secret, operator, workers, app, platform):
    make_guard(kube, namespace, platform.result_queue)
    wait_until(lambda: guard_status(kube, namespace).get("phase") == "watching", 30, "the guard to watch")
    assert set(fleet_paused(app).values()) == {False}

    stack.redis.stop()
    down_at = time.monotonic()
    try:
        wait_until(lambda: list(fleet_paused(app).values()) == [True] * WORKERS, 20, "every worker paused")
        paused_in = time.monotonic() - down_at
        status = guard_status(kube, namespace)
        assert status["phase"] == "paused"
        assert status["blip"]["dependency"] == "redis"
        assert "not ready" in status["blip"]["reason"] or "restarted" in status["blip"]["reason"]
        blip_id = status["blip"]["id"]
        replies = fleet.status(app, expect=WORKERS).replies
        assert all(any(blip_id in lease["reason"] for lease in r["leases"]) for r in replies.values()), \
            "each worker's lease names the blip"
    finally:
        stack.redis.start()
    up_at = time.monotonic()
    wait_until(lambda: set(fleet_paused(app).values()) == {False}, 30, "every worker resumed")
    resumed_in = time.monotonic() - up_at
    assert resumed_in >= SETTLE, "resumed before the settle time"
    wait_until(lambda: guard_status(kube, namespace).get("phase") == "watching", 30, "the guard back to watching")
    status = guard_status(kube, namespace)
    print(f"paused {paused_in:.2f}s after Redis stopped; resumed {resumed_in:.2f}s after it started")
    assert status["counters"]["blips"] == 1 and status["counters"]["pauses"] == 1
    assert status["lastBlipSeconds"] >= SETTLE
    assert status.get("blip") is None  # a merge patch of null removes it
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Consuming"]["status"] == "True", conditions["Consuming"]["message"]
    reasons = [e["reason"] for e in events_of(kube, namespace)]
    for reason in ("BlipStarted", "Paused", "Recovered"):
        assert reason in reasons, reasons
    assert all(blip_id in e["message"] for e in events_of(kube, namespace) if e["reason"] in ("BlipStarted",
                                                                                                 "Recovered"))
    labels = {"namespace": namespace, "guard": "fleet"}
    assert operator.metric("blipguard_operator_blips_total", dependency="redis", **labels) == 1
    assert operator.metric("blipguard_operator_paused", **labels) == 0
    assert operator.metric("blipguard_operator_broadcasts_total", command="pause", outcome="ok", **labels) == 1
    assert operator.metric("blipguard_operator_workers_confirmed", command="pause", **labels) == WORKERS
