"""Fixtures for the kube tests: one real Kubernetes API server (etcd + kube-apiserver)
for the session, a fresh namespace per test, real redis/nats servers for the pod mirror,
and the pods and broker Secret of the session's local stack (``stack_mirror``,
``broker_secret``), which the chart tests load from here too (tests/chart/conftest.py).
Missing binaries make the tests fail (not skip): `bash scripts/setup.sh`."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path
from typing import Iterator

import pytest

from blipguard.localstack.kube import KubeBinariesMissing, KubeServer, Watch, require_kube_binaries
from blipguard.localstack.nats import NatsServer
from blipguard.localstack.podmirror import PodMirror
from blipguard.localstack.redis import RedisServer

# (what flipped, seconds from the process change to the watch event), for the summary.
LATENCIES: list[tuple[str, float]] = []


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeServer]:
    missing = ""
    try:
        require_kube_binaries()
    except KubeBinariesMissing as exc:
        missing = str(exc)
    if missing:  # fail, not skip: scripts/setup.sh installs them
        pytest.fail(missing, pytrace=False)
    server = KubeServer(tmp_path_factory.mktemp("kube"))
    try:
        server.start()
        rss = {k: f"{v / 2**20:.0f} MiB" for k, v in server.rss_bytes().items()}
        print(f"\nkube server started in {server.started_in:.2f}s "
              f"({', '.join(f'{k} {v:.2f}s' for k, v in server.timings.items())}); RSS {rss}",
              file=sys.__stderr__)
        yield server
        rss = {k: f"{v / 2**20:.0f} MiB" for k, v in server.rss_bytes().items()}
        print(f"\nkube server RSS at the end of the session: {rss}", file=sys.__stderr__)
    except BaseException:
        print(server.log_tail(), file=sys.__stderr__)
        raise
    finally:
        server.stop()


@pytest.fixture(scope="session")
def latencies() -> list[tuple[str, float]]:
    """(what flipped, seconds from the process change to the watch event)."""
    return LATENCIES


@pytest.fixture
def namespace(kube: KubeServer, request: pytest.FixtureRequest) -> str:
    """A fresh namespace (with its `default` ServiceAccount) for each test."""
    prefix = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:40].strip("-")
    return kube.create_namespace(prefix or "test")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pod_watch(kube: KubeServer, namespace: str) -> Iterator[Watch]:
    """A real watch on the namespace's pods, opened before any pod exists."""
    with kube.client.watch(f"/api/v1/namespaces/{namespace}/pods") as w:
        yield w


@pytest.fixture
def mirror(kube: KubeServer, namespace: str, redis_server: RedisServer, nats_server: NatsServer,
           pod_watch: Watch) -> Iterator[PodMirror]:
    m = PodMirror(kube.client, namespace, redis=redis_server, nats=nats_server,
                  redis_release="cache", nats_release="bus", interval=0.05,
                  crashloop_threshold=3, crashloop_window=30)
    m.start()
    try:
        yield m
    finally:
        m.stop()  # re-raises an error of the mirror's thread


@pytest.fixture
def stack_mirror(kube: KubeServer, namespace: str, stack) -> Iterator[PodMirror]:
    """Pods of the stack's own Redis and NATS: the servers the workers use."""
    m = PodMirror(kube.client, namespace, redis=stack.redis, nats=stack.nats, redis_release="cache",
                  nats_release="bus", interval=0.05)
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def broker_secret(kube: KubeServer, namespace: str, stack) -> str:
    """The Secret ``celery-broker`` (key ``url``: the stack's RabbitMQ) a guard's
    ``pause.brokerSecretRef`` names."""
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "celery-broker"},
            "data": {"url": base64.b64encode(stack.rabbitmq.url.encode()).decode()}}
    kube.client.create(f"/api/v1/namespaces/{namespace}/secrets", body)
    return "celery-broker"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not LATENCIES:
        return
    values = sorted(v for _, v in LATENCIES)
    p50 = values[len(values) // 2]
    terminalreporter.write_line(
        f"pod mirror: process change -> watch event over {len(values)} flips: "
        f"p50 {p50 * 1000:.0f} ms, max {values[-1] * 1000:.0f} ms "
        f"({', '.join(f'{k} {v * 1000:.0f}' for k, v in LATENCIES)})"
    )
