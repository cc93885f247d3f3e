"""Session fixtures: one real local stack, Django in this process, the reference app's
HTTP API, and Celery workers started per configuration (pre-fix or patched)."""

import sys
from pathlib import Path

import pytest

from blipguard.harness.django_env import app_env, setup_django
from blipguard.localstack import CeleryWorkers, LocalStack

RESULT_QUEUE = "ml_results"


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    with LocalStack(tmp_path_factory.mktemp("stack")) as s:
        print(f"\nlocal stack started in {s.started_in:.1f}s", file=sys.__stderr__)
        yield s


@pytest.fixture(scope="session")
def django_app(stack):
    setup_django(stack.env())
    return stack


@pytest.fixture(scope="session")
def web(django_app):
    from blipguard.harness.webserver import WebServer

    with WebServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_direct(stack):
    client = stack.redis.client()
    yield client
    client.close()


class WorkerPool:
    """Keeps one set of workers running; restarts them only when the config changes."""

    def __init__(self, stack: LocalStack, workdir: Path):
        self.stack = stack
        self.workdir = workdir
        self.current: tuple | None = None
        self.workers: CeleryWorkers | None = None

    def ensure(self, settings: str = "refsite.settings", count: int = 2, concurrency: int = 2, **env: str):
        key = (settings, count, concurrency, tuple(sorted(env.items())))
        if key == self.current and self.workers and all(self.workers.alive(h) for h in self.workers.hostnames):
            return self.workers
        self.stop()
        workers = CeleryWorkers(
            "refsite", RESULT_QUEUE, app_env(self.stack.env(), settings, **env), self.workdir / f"w{len(key)}"
        )
        self.workers = workers
        workers.start(count=count, concurrency=concurrency)
        workers.wait_ready(60)
        self.current = key
        return workers

    def stop(self):
        if self.workers is not None:
            self.workers.stop()
        self.workers = None
        self.current = None


@pytest.fixture(scope="session")
def worker_pool(django_app, tmp_path_factory):
    pool = WorkerPool(django_app, tmp_path_factory.mktemp("workers"))
    yield pool
    pool.stop()


@pytest.fixture
def queue_empty(stack):
    """A settle condition: the result queue holds no message."""
    return lambda: stack.rabbitmq.queue_depth(RESULT_QUEUE) == 0


@pytest.fixture(autouse=True)
def _healthy_stack(request):
    """Every test starts with Redis and NATS up and no fault armed."""
    yield
    if "stack" not in request.fixturenames:
        return
    s = request.getfixturevalue("stack")
    if not s.redis.is_up():
        s.redis.start()
    if not s.nats.is_up():
        s.nats.start()
