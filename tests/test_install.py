"""Installing app_patch into the reference app, as a new user would, on the version this
pytest process runs: it patches once, keeps the host's contracts, undoes exactly, never
blocks manage.py on an unchanged host, and changes none of the host's pinned packages."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from blipguard.app_patch import context, patcher
from blipguard.app_patch.config import parse
from blipguard.harness import seed
from blipguard.harness.django_env import app_env

pytestmark = [pytest.mark.stack, pytest.mark.checks]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def installed(django_app):
    report = patcher.install(parse({}))
    yield report
    patcher.uninstall()


def test_install_patches_the_hosts_own_steps_once(installed, platform):
    from ami.ml.orchestration.async_job_state import AsyncJobStateManager

    assert not installed.refused, installed.refused
    assert set(installed.patched) == {
        "ami.ml.orchestration.async_job_state.AsyncJobStateManager.update_state",
        "ami.ml.orchestration.async_job_state.AsyncJobStateManager.cleanup",
        "ami.ml.orchestration.nats_queue.TaskQueueManager.acknowledge_task",
        "ami.jobs.tasks._ack_task_via_nats",
        "ami.jobs.tasks._update_job_progress",
        "ami.jobs.tasks.process_nats_pipeline_result.run",
    } | (set() if platform.is_pre else {  # the reapers that take a minutes cutoff (HEAD)
        "ami.jobs.tasks.mark_lost_images_failed",
        "ami.jobs.tasks.check_stale_jobs",
    })
    assert getattr(AsyncJobStateManager.update_state, patcher.MARK)
    assert patcher.install(parse({})).already == installed.patched
    # The ack_wait the host's consumers really get, and the queue its router picks.
    from blipguard.app_patch.host import current_host

    host = current_host()
    assert host.ack_wait() == (30.0 if platform.is_pre else 300.0)
    assert host.config.result_queue == platform.result_queue


def test_uninstall_restores_exactly_what_was_there(django_app):
    import ami.jobs.tasks as tasks
    from ami.ml.orchestration.async_job_state import AsyncJobStateManager
    from ami.ml.orchestration.nats_queue import TaskQueueManager

    task = tasks.process_nats_pipeline_result
    before = (AsyncJobStateManager.update_state, AsyncJobStateManager.cleanup, TaskQueueManager.acknowledge_task,
              tasks._ack_task_via_nats, tasks._update_job_progress, vars(task).get("run"), task.max_retries)
    patcher.install(parse({}))
    patcher.uninstall()
    after = (AsyncJobStateManager.update_state, AsyncJobStateManager.cleanup, TaskQueueManager.acknowledge_task,
             tasks._ack_task_via_nats, tasks._update_job_progress, vars(task).get("run"), task.max_retries)
    assert after == before


def test_update_state_keeps_the_hosts_contract(installed, redis_direct, platform):
    """The host's own JobStateProgress back; None only for a missing total; a Redis failure
    raised as the RedisError it is (what HEAD's autoretry_for and callers rely on)."""
    from ami.ml.orchestration.async_job_state import AsyncJobStateManager, JobStateProgress

    job = seed.create_async_job(4)
    manager = AsyncJobStateManager(job.pk)
    ids = [str(i) for i in seed.image_ids(job)]
    manager.initialize_job(ids)

    with context.running(context.TaskRun(job.pk, delivery="delivery-1")):
        progress = manager.update_state({ids[0]}, stage="process", failed_image_ids={ids[1]})
        replay = manager.update_state({ids[0]}, stage="process")  # the same delivery, its reply lost
    with context.running(context.TaskRun(job.pk, delivery="delivery-2")) as run:
        # A NATS redelivery before delivery-1 wrote its counts (its worker died): it takes over.
        takeover = manager.update_state({ids[0]}, stage="process")
        run.claims["process"].count()
        again = manager.update_state({ids[0]}, stage="process")  # its own retry (a reply lost) still counts
    with context.running(context.TaskRun(job.pk, delivery="delivery-3")):
        duplicate = manager.update_state({ids[0]}, stage="process")  # counted by another: a duplicate
    assert type(progress) is JobStateProgress
    assert (progress.total, progress.remaining, progress.processed, progress.failed) == (4, 3, 1, 1)
    assert progress.percentage == 0.25
    if not platform.is_pre:
        newly = (progress.newly_removed, replay.newly_removed, takeover.newly_removed, again.newly_removed,
                 duplicate.newly_removed)
        assert newly == (1, 1, 1, 1, 0)

    redis_direct.delete(manager._total_key)
    assert manager.update_state({ids[2]}, stage="process") is None

    class Down(AsyncJobStateManager):
        def _get_redis(self):
            import redis

            return redis.Redis(port=1, socket_connect_timeout=0.2)

    with pytest.raises(RedisError):
        Down(job.pk).update_state({ids[3]}, stage="process")
    manager.cleanup()
    assert redis_direct.keys(f"job:{job.pk}:*") == []


def manage(platform, *args, settings: str, env: dict | None = None, stack=None) -> subprocess.CompletedProcess:
    full = app_env(stack.env(), settings, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "django", *args], env={**os.environ, **full}, capture_output=True, text=True, timeout=300
    )


def test_an_unchanged_host_with_the_app_added_is_never_blocked(stack, django_app, platform, tmp_path):
    """The platform's CACHES untouched, only INSTALLED_APPS += the app: check and migrate
    succeed; what the app finds about Redis is said as warnings; strict mode blocks."""
    module = tmp_path / "added_only.py"
    module.write_text(
        f"from {platform.settings} import *  # noqa\n"
        f"from {platform.settings} import INSTALLED_APPS\n"
        "import os\n"
        "INSTALLED_APPS = INSTALLED_APPS + ['blipguard.app_patch']\n"
        "BLIPGUARD = {'STRICT': os.environ.get('STRICT') == '1'}\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), app_env(stack.env())["PYTHONPATH"]])}
    check = manage(platform, "check", settings="added_only", env=env, stack=stack)
    assert check.returncode == 0, check.stderr
    assert "blipguard.W003" in check.stderr and "blipguard.W005" in check.stderr
    assert "patched: ami.ml.orchestration.async_job_state.AsyncJobStateManager.update_state" in check.stderr
    migrate = manage(platform, "migrate", "--noinput", settings="added_only", env=env, stack=stack)
    assert migrate.returncode == 0, migrate.stderr
    deploy = manage(platform, "check", "--deploy", settings="added_only", env=env, stack=stack)
    assert ("blipguard.W009" in deploy.stderr) is (int(__import__("redis").__version__.split(".")[0]) < 6)
    strict = manage(platform, "check", settings="added_only", env={**env, "STRICT": "1"}, stack=stack)
    assert strict.returncode != 0 and "blipguard.E003" in strict.stderr


def test_installing_blipguard_changes_none_of_the_hosts_pins(tmp_path):
    """pip's own resolver, against the packages of this (pinned) environment."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-build-isolation", "--quiet", "--report",
         str(report), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    would_install = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert would_install == {"blipguard"}, f"pip would also change: {sorted(would_install - {'blipguard'})}"
