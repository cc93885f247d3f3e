"""Installing app_patch into an Antenna-shaped host: idempotent, respectful, overridable."""

import logging
import types

import pytest
from redis.exceptions import RedisError

from blipguard.app_patch import patcher
from blipguard.app_patch.config import parse

pytestmark = pytest.mark.stack


@pytest.fixture
def installed(django_app):
    cfg = parse({"ACK_WAIT": 300})
    report = patcher.install(cfg)
    yield cfg, report
    patcher.uninstall(cfg)


def test_install_patches_the_host_once(installed, caplog):
    import ami.jobs.tasks as host_tasks
    from ami.ml.orchestration.async_job_state import AsyncJobStateManager

    cfg, first = installed
    assert "ami.jobs.tasks.process_nats_pipeline_result" in first.patched
    assert "ami.ml.orchestration.async_job_state.AsyncJobStateManager.update_state" in first.patched
    assert getattr(AsyncJobStateManager.update_state, patcher.MARK)
    with caplog.at_level(logging.INFO, logger="blipguard.app_patch"):
        second = patcher.install(cfg)
    assert second.patched == [] and len(second.already) == len(first.patched)
    assert "already patched" in caplog.text
    assert getattr(host_tasks.process_nats_pipeline_result.run, patcher.MARK)


def test_uninstall_restores_the_host(django_app):
    from ami.ml.orchestration.async_job_state import AsyncJobStateManager

    original = AsyncJobStateManager.update_state
    cfg = parse({"ACK_WAIT": 300})
    patcher.install(cfg)
    patcher.uninstall(cfg)
    assert AsyncJobStateManager.update_state is original


def test_a_host_with_an_equivalent_fix_is_left_alone(django_app, monkeypatch, caplog):
    import ami.jobs.tasks as host_tasks
    from ami.ml.orchestration.async_job_state import AsyncJobStateManager

    task = host_tasks.process_nats_pipeline_result
    monkeypatch.setattr(task, "autoretry_for", (RedisError, ConnectionError), raising=False)
    monkeypatch.setattr(task, "max_retries", 5)
    original = AsyncJobStateManager.update_state
    with caplog.at_level(logging.INFO, logger="blipguard.app_patch"):
        report = patcher.install(parse({"ACK_WAIT": 300}))
    assert report.patched == []
    assert "equivalent fix" in caplog.text
    assert AsyncJobStateManager.update_state is original


def test_targets_can_point_elsewhere(django_app):
    class OtherManager:
        def update_state(self, *a, **kw):
            return "host"

        def cleanup(self):
            pass

    module = types.ModuleType("other_host")
    module.OtherManager = OtherManager
    import sys

    sys.modules["other_host"] = module
    try:
        cfg = parse({"ACK_WAIT": 300, "TARGETS": {"STATE_MANAGER": "other_host.OtherManager"}})
        report = patcher.install(cfg)
        assert "other_host.OtherManager.update_state" in report.patched
        assert getattr(OtherManager.update_state, patcher.MARK)
        patcher.uninstall(cfg)
        assert OtherManager().update_state() == "host"
    finally:
        del sys.modules["other_host"]


def test_bad_target_gets_a_specific_error(django_app):
    from blipguard.app_patch.errors import ConfigurationError

    cfg = parse({"ACK_WAIT": 300, "TARGETS": {"RESULT_TASK": "ami.jobs.tasks.no_such_task"}})
    with pytest.raises(ConfigurationError, match="'ami.jobs.tasks' has no attribute 'no_such_task'"):
        patcher.install(cfg)


def test_host_helpers_are_looked_up_at_call_time(installed, monkeypatch, redis_direct):
    """A test double the host puts on its module is what the patched task calls."""
    import ami.jobs.tasks as host_tasks
    from ami.jobs.services import start_async_job

    calls = []
    monkeypatch.setattr(host_tasks, "_fail_job", lambda job_id, reason: calls.append((job_id, reason)))
    job = start_async_job(3)
    redis_direct.delete(f"job:{job.pk}:pending_images_total")
    result = {"source_images": [{"id": job.image_ids[0]}], "detections": []}
    host_tasks.process_nats_pipeline_result.apply(
        kwargs={"job_id": job.pk, "result_data": result, "reply_subject": "not-a-jetstream-subject"}
    ).get()
    assert calls and calls[0][0] == job.pk
    assert calls[0][1].startswith("Job state keys not found in Redis: ")
