"""Session fixtures: one real local stack, Django in this process, the reference app's
HTTP API, and Celery workers started per configuration (unpatched or patched).

One platform version per pytest process: ``--platform pre-fix`` (the reference app at
the pre-fix commit) or ``--platform current`` (HEAD, the default). ``scripts/test.sh``
runs one pytest process per version. Tests that use the ``platform`` fixture (directly or
through ``django_app``) carry the version in their ids.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from blipguard import refapp
from blipguard.harness.django_env import app_env, setup_django
from blipguard.localstack import CeleryWorkers, LocalStack


@dataclass(frozen=True)
class Platform:
    name: str  # "pre-fix" or "current": the --platform value, in test ids
    version: str  # the reference app's ANTENNA_VERSION: "pre" or "head"
    settings: str  # the unpatched settings module
    patched_settings: str  # the same with blipguard.app_patch in INSTALLED_APPS
    result_queue: str  # where process_nats_pipeline_result goes

    @property
    def is_pre(self) -> bool:
        return self.version == "pre"


PLATFORMS = {
    "pre-fix": Platform("pre-fix", "pre", refapp.SETTINGS["pre"], refapp.SETTINGS["pre_patched"], "antenna"),
    "current": Platform("current", "head", refapp.SETTINGS["head"], refapp.SETTINGS["head_patched"], "ml_results"),
}


def version_of(settings: str) -> str:
    """"pre" or "head" for one of the reference app's settings modules."""
    return "pre" if settings.rsplit(".", 1)[-1].startswith("pre") else "head"


def result_queue_of(settings: str) -> str:
    return "antenna" if version_of(settings) == "pre" else "ml_results"


def pytest_addoption(parser):
    parser.addoption(
        "--platform",
        choices=sorted(PLATFORMS),
        default="current",
        help="which reference-app version this pytest process runs (one Django per process)",
    )


def pytest_generate_tests(metafunc):
    if "platform" in metafunc.fixturenames:
        name = metafunc.config.getoption("--platform")
        metafunc.parametrize("platform", [PLATFORMS[name]], ids=[name], indirect=True, scope="session")


@pytest.fixture(scope="session")
def platform(request) -> Platform:
    return request.param


@pytest.fixture
def redis_server(tmp_path):
    """A throwaway redis-server of the test's own, stopped by PID at teardown."""
    from blipguard.localstack.redis import RedisServer

    server = RedisServer(tmp_path / "redis")
    try:
        server.start()
        yield server
    finally:
        server.stop(save=False)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    with LocalStack(tmp_path_factory.mktemp("stack")) as s:
        print(f"\nlocal stack started in {s.started_in:.1f}s", file=sys.__stderr__)
        yield s


@pytest.fixture(scope="session")
def django_app(stack, platform):
    setup_django(stack.env(), platform.settings)
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
    """Keeps one set of workers running; restarts them only when the config changes.

    Workers consume the result queue of their settings' version (PRE ``antenna``, HEAD
    ``ml_results``).
    """

    def __init__(self, stack: LocalStack, workdir: Path, default_settings: str):
        self.stack = stack
        self.workdir = workdir
        self.default_settings = default_settings
        self.current: tuple | None = None
        self.workers: CeleryWorkers | None = None
        self._starts = 0

    def ensure(self, settings: str | None = None, count: int = 2, concurrency: int = 2, **env: str):
        settings = settings or self.default_settings
        key = (settings, count, concurrency, tuple(sorted(env.items())))
        if key == self.current and self.workers and all(self.workers.alive(h) for h in self.workers.hostnames):
            return self.workers
        self.stop()
        self._starts += 1
        workers = CeleryWorkers(
            "config",
            result_queue_of(settings),
            app_env(self.stack.env(), settings, **env),
            self.workdir / f"w{self._starts}",
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
def worker_pool(django_app, platform, tmp_path_factory):
    pool = WorkerPool(django_app, tmp_path_factory.mktemp("workers"), platform.settings)
    yield pool
    pool.stop()


@pytest.fixture(scope="session")
def result_queue(platform) -> str:
    return platform.result_queue


@pytest.fixture
def queue_empty(stack, result_queue):
    """A settle condition: the result queue holds no message."""
    return lambda: stack.rabbitmq.queue_depth(result_queue) == 0


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
