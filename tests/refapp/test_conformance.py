"""Conformance of the reference app with the platform's interfaces, per version.

Written from the interface fact sheet (antenna-interfaces.md); each test names its
section. One version per pytest process (``--platform pre-fix`` = PRE, ``current`` =
HEAD). Servers come from the session's local stack.
"""

import dataclasses
import inspect
import logging
import uuid

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.refapp]


@pytest.fixture(scope="module")
def app(django_app, platform):
    return platform


def _new_job(n: int = 3):
    from blipguard.harness import seed

    return seed.create_async_job(n, name="conformance")


# --- §10 settings --------------------------------------------------------------------------------
def test_settings(app):
    """§1/§10: CACHES, Celery, NATS and time settings."""
    import socket

    from django.conf import settings

    assert settings.ANTENNA_VERSION == ("pre" if app.is_pre else "head")
    assert settings.USE_TZ is False and settings.TIME_ZONE == "America/New_York"
    cache = settings.CACHES["default"]
    assert cache["BACKEND"] == "django_redis.cache.RedisCache"
    assert cache["LOCATION"] == settings.REDIS_URL
    opts = cache["OPTIONS"]
    assert opts["CLIENT_CLASS"] == "django_redis.client.DefaultClient"
    assert opts["IGNORE_EXCEPTIONS"] is True
    assert opts["SOCKET_KEEPALIVE"] is True
    assert opts["SOCKET_KEEPALIVE_OPTIONS"] == {socket.TCP_KEEPIDLE: 60, socket.TCP_KEEPINTVL: 10, socket.TCP_KEEPCNT: 9}
    assert opts["SOCKET_CONNECT_TIMEOUT"] == 5
    assert "SOCKET_TIMEOUT" not in opts and "CONNECTION_POOL_KWARGS" not in opts
    assert settings.CELERY_RESULT_BACKEND.endswith("/1") and settings.CELERY_RESULT_BACKEND.startswith("redis://")
    assert settings.CELERY_TASK_DEFAULT_QUEUE == "antenna"
    assert settings.CELERY_RESULT_EXTENDED is True
    assert settings.CELERY_TASK_SERIALIZER == "json"
    assert settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1
    assert settings.CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS is True
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS == {"heartbeat": 30, "socket_keepalive": True, "socket_connect_timeout": 40}
    assert not hasattr(settings, "CELERY_TASK_ACKS_LATE")
    assert not hasattr(settings, "NATS_MAX_DELIVER") and not hasattr(settings, "NATS_MAX_ACK_PENDING")
    if app.is_pre:
        assert not hasattr(settings, "NATS_TASK_TTR")
        assert not hasattr(settings, "CELERY_TASK_ROUTES")
    else:
        assert settings.NATS_TASK_TTR == 300
        assert settings.CELERY_TASK_ROUTES == {
            "ami.jobs.tasks.run_job": {"queue": "jobs"},
            "ami.jobs.tasks.process_nats_pipeline_result": {"queue": "ml_results"},
            "ami.ml.models.pipeline.save_results": {"queue": "ml_results"},
            "ami.ml.tasks.create_detection_images": {"queue": "ml_results"},
        }


def test_celery_app_and_routing(app):
    """§1: Celery("ami") exported by config; task names; queues per version."""
    import config
    from ami.jobs import tasks
    from ami.ml import tasks as ml_tasks
    from ami.ml.models import pipeline

    assert config.celery_app.main == "ami"
    assert tasks.process_nats_pipeline_result.name == "ami.jobs.tasks.process_nats_pipeline_result"
    assert tasks.run_job.name == "ami.jobs.tasks.run_job"
    assert tasks.jobs_health_check.name == "ami.jobs.tasks.jobs_health_check"
    assert pipeline.save_results.name == "ami.ml.models.pipeline.save_results"
    assert ml_tasks.create_detection_images.name == "ami.ml.tasks.create_detection_images"

    def queue(name):
        return config.celery_app.amqp.router.route({}, name)["queue"].name

    expected_result_queue = "antenna" if app.is_pre else "ml_results"
    assert queue("ami.jobs.tasks.process_nats_pipeline_result") == expected_result_queue
    assert queue("ami.ml.models.pipeline.save_results") == expected_result_queue
    assert queue("ami.ml.tasks.create_detection_images") == expected_result_queue
    assert queue("ami.jobs.tasks.run_job") == ("antenna" if app.is_pre else "jobs")


# --- §3 decorators and signatures --------------------------------------------------------------
def test_result_task_decorator(app):
    """§3.2 and the summary table: decorator options per version."""
    from redis.exceptions import RedisError

    from ami.jobs.tasks import process_nats_pipeline_result as task

    assert task.soft_time_limit == 300 and task.time_limit == 360
    assert list(inspect.signature(task.run).parameters) == ["job_id", "result_data", "reply_subject"]
    assert getattr(task, "__self__", task).__class__.__name__  # a bound Celery task
    if app.is_pre:
        assert task.max_retries == 0
        assert not getattr(task, "autoretry_for", ())
    else:
        assert task.max_retries == 5
        assert tuple(task.autoretry_for) == (RedisError, ConnectionError)
        assert task.retry_backoff is True and task.retry_backoff_max == 15 and task.retry_jitter is True
        # @cachalot_disabled() sits under Celery's decorator: the task body is wrapped.
        assert hasattr(task.run, "__wrapped__")


def test_save_results_task(app):
    """§8: the save_results task's signature and limits; Pipeline.save_results' shape."""
    from ami.ml.models.pipeline import Pipeline, save_results

    assert save_results.soft_time_limit == 240 and save_results.time_limit == 300
    assert list(inspect.signature(save_results.run).parameters) == ["results", "results_json", "job_id", "return_created"]
    assert list(inspect.signature(Pipeline.save_results).parameters) == ["self", "results", "job_id"]


def test_helper_signatures(app):
    """§3.4-§3.6: _update_job_progress requires complete_state; helper shapes per version."""
    from ami.jobs import tasks

    sig = inspect.signature(tasks._update_job_progress)
    assert list(sig.parameters)[:4] == ["job_id", "stage", "progress_percentage", "complete_state"]
    assert sig.parameters["complete_state"].default is inspect.Parameter.empty
    assert sig.parameters["state_params"].kind is inspect.Parameter.VAR_KEYWORD
    assert list(inspect.signature(tasks._fail_job).parameters) == ["job_id", "reason"]
    assert list(inspect.signature(tasks._ack_task_via_nats).parameters) == ["reply_subject", "job_logger"]
    assert list(inspect.signature(tasks._get_current_counts_from_job_progress).parameters) == ["job", "stage"]
    assert tasks.FAILURE_THRESHOLD == 0.5
    assert hasattr(tasks, "_log_missing_state_context") is (not app.is_pre)
    assert hasattr(tasks, "mark_lost_images_failed") is (not app.is_pre)
    stale = inspect.signature(tasks.check_stale_jobs).parameters
    assert list(stale) == (["hours", "dry_run"] if app.is_pre else ["minutes", "dry_run"])
    # Names the patch points at, in ami.jobs.tasks (§3.1).
    for name in ("AsyncJobStateManager", "TaskQueueManager", "PipelineResultsError", "PipelineResultsResponse",
                 "async_to_sync", "transaction", "celery_app"):
        assert hasattr(tasks, name), name
    if not app.is_pre:
        for name in ("ConsumerState", "RedisError", "cachalot_disabled", "sync_to_async"):
            assert hasattr(tasks, name), name
    assert tasks.logger.name == "ami.jobs.tasks"


# --- §2 the Redis state ---------------------------------------------------------------------------
def test_state_manager_shapes(app):
    """§2: attributes vs methods, key names, constants, dataclass fields."""
    from ami.ml.orchestration.async_job_state import AsyncJobStateManager, JobStateProgress

    m = AsyncJobStateManager(42)
    assert AsyncJobStateManager.TIMEOUT == 604800
    assert AsyncJobStateManager.STAGES == ["process", "results"]
    assert m.job_id == 42
    assert isinstance(m._pending_key, str) and m._pending_key == "job:42:pending_images"
    assert m._total_key == "job:42:pending_images_total"
    assert m._failed_key == "job:42:failed_images"
    assert callable(m._get_pending_key) and m._get_pending_key("results") == "job:42:pending_images:results"
    assert list(inspect.signature(m.update_state).parameters) == ["processed_image_ids", "stage", "failed_image_ids"]
    assert inspect.signature(m.update_state).parameters["failed_image_ids"].default is None
    assert list(inspect.signature(m.initialize_job).parameters) == ["image_ids"]
    assert list(inspect.signature(m.get_progress).parameters) == ["stage"]
    fields = [f.name for f in dataclasses.fields(JobStateProgress)]
    base = ["remaining", "total", "processed", "percentage", "failed"]
    assert fields == (base if app.is_pre else base + ["newly_removed"])
    assert bool(JobStateProgress()) is True
    assert hasattr(m, "get_pending_image_ids") is (not app.is_pre)


def test_state_manager_on_redis(app, redis_direct, caplog):
    """§2: keys, TTLs, the pipeline's results, the log template, None on a missing total."""
    from ami.ml.orchestration.async_job_state import AsyncJobStateManager

    job_id = 900000 + uuid.uuid4().int % 10000
    m = AsyncJobStateManager(job_id)
    m.initialize_job(["1", "2", "3"])
    assert redis_direct.smembers(f"job:{job_id}:pending_images:process") == {b"1", b"2", b"3"}
    assert redis_direct.get(f"job:{job_id}:pending_images_total") == b"3"
    assert 604700 < redis_direct.ttl(f"job:{job_id}:pending_images:results") <= 604800
    assert not redis_direct.exists(f"job:{job_id}:pending_images")  # the prefix is no key

    with caplog.at_level(logging.INFO, logger="ami.ml.orchestration.async_job_state"):
        p = m.update_state({"1"}, stage="process", failed_image_ids={"1"})
    assert (p.remaining, p.total, p.processed, p.failed) == (2, 3, 1, 1)
    assert p.percentage == 1 / 3
    assert f"Pending images from Redis for job {job_id} process: 2/3: {(1 / 3) * 100}%" in caplog.messages
    if not app.is_pre:
        assert p.newly_removed == 1
        assert m.update_state({"1"}, stage="process").newly_removed == 0  # a replay
        assert m.get_pending_image_ids() == {"1", "2", "3"}  # the results stage still holds 1
    assert 0 < redis_direct.ttl(f"job:{job_id}:failed_images") <= 604800
    assert m.get_progress("process").remaining == 2

    m.cleanup()
    assert redis_direct.keys(f"job:{job_id}:*") == []
    assert m.update_state({"2"}, stage="process") is None  # total key missing
    assert m.get_progress("process") is None


def test_update_state_on_redis_error(app, stack, caplog):
    """Summary table / §2: PRE swallows a RedisError (logs, returns None); HEAD raises it."""
    from redis.exceptions import RedisError

    from ami.ml.orchestration.async_job_state import AsyncJobStateManager

    job_id = 910000 + uuid.uuid4().int % 10000
    m = AsyncJobStateManager(job_id)
    m.initialize_job(["1", "2"])
    stack.redis_proxy.reset_next(match=b"SREM")
    with caplog.at_level(logging.INFO, logger="ami.ml.orchestration.async_job_state"):
        if app.is_pre:
            assert m.update_state({"1"}, stage="process") is None
        else:
            with pytest.raises(RedisError):
                m.update_state({"1"}, stage="process")
    errors = [r for r in caplog.records if r.name == "ami.ml.orchestration.async_job_state" and r.levelno == logging.ERROR]
    if app.is_pre:
        assert any(r.getMessage().startswith(f"Redis error updating job {job_id} state: ") for r in errors)
    else:
        assert errors == []
    m.cleanup()


# --- §3.2 the order of steps ----------------------------------------------------------------------
class _FakeState:
    """Stands in for AsyncJobStateManager in ami.jobs.tasks: records calls, returns what
    the test scripts per stage."""

    script: dict = {}
    calls: list = []

    def __init__(self, job_id):
        self.job_id = job_id

    def update_state(self, processed_image_ids, stage, failed_image_ids=None):
        self.calls.append(("update_state", stage))
        result = self.script[stage]
        if isinstance(result, BaseException):
            raise result
        return result


@pytest.fixture
def spied(app, monkeypatch):
    """Spies on the module-level helpers of ami.jobs.tasks and Pipeline.save_results."""
    from ami.jobs import tasks
    from ami.ml.models.pipeline import Pipeline

    calls: list = []
    _FakeState.calls = calls
    monkeypatch.setattr(tasks, "AsyncJobStateManager", _FakeState)
    monkeypatch.setattr(
        tasks, "_update_job_progress", lambda job_id, stage, pct, complete_state, **kw: calls.append(("progress", stage, kw))
    )
    monkeypatch.setattr(
        tasks,
        "_ack_task_via_nats",
        lambda reply_subject, job_logger: calls.append(("ack", job_logger.name)) or True,
    )
    monkeypatch.setattr(tasks, "_fail_job", lambda job_id, reason: calls.append(("fail", reason)))
    if not app.is_pre:
        monkeypatch.setattr(tasks, "_log_missing_state_context", lambda job_id, stage: calls.append(("context", stage)))
    monkeypatch.setattr(Pipeline, "save_results", lambda self, results, job_id=None: calls.append(("save",)))
    return calls


def _progress(remaining=0, total=1, failed=0, newly_removed=1):
    from ami.ml.orchestration.async_job_state import JobStateProgress

    p = JobStateProgress(remaining=remaining, total=total, processed=total - remaining, percentage=1.0, failed=failed)
    if hasattr(p, "newly_removed"):
        p.newly_removed = newly_removed
    return p


def _result(image_id: int) -> dict:
    from blipguard.harness.simulator import fake_result

    return fake_result(image_id, "http://x/1.jpg")


def _run(job, result_data):
    from ami.jobs.tasks import process_nats_pipeline_result

    return process_nats_pipeline_result.run(job_id=job.pk, result_data=result_data, reply_subject="$JS.ACK.x")


def test_step_order_success(app, spied):
    """§3.2 / summary table: PRE acks after save_results and before the results stage;
    HEAD acks last."""
    job = _new_job(1)
    _FakeState.script = {"process": _progress(), "results": _progress()}
    _run(job, _result(1))
    job_logger = f"ami.jobs.{job.pk}"
    counts = {"detections": 2, "classifications": 2, "captures": 1}
    if app.is_pre:
        assert spied == [
            ("update_state", "process"),
            ("progress", "process", {"processed": 1, "remaining": 0, "failed": 0}),
            ("save",),
            ("ack", job_logger),
            ("update_state", "results"),
            ("progress", "results", counts),
        ]
    else:
        assert spied == [
            ("update_state", "process"),
            ("progress", "process", {"processed": 1, "remaining": 0, "failed": 0}),
            ("save",),
            ("update_state", "results"),
            ("progress", "results", counts),
            ("ack", job_logger),
        ]


def test_step_order_missing_state(app, spied):
    """§3.2 step 4: missing state at the process stage acks through the module logger,
    then fails the job with the version's reason."""
    job = _new_job(1)
    _FakeState.script = {"process": None, "results": None}
    _run(job, _result(1))
    if app.is_pre:
        assert spied == [("update_state", "process"), ("ack", "ami.jobs.tasks"), ("fail", "Redis state missing for job")]
    else:
        reason = "Job state keys not found in Redis (likely cleaned up concurrently)"
        assert spied == [("update_state", "process"), ("context", "process"), ("ack", "ami.jobs.tasks"), ("fail", reason)]


def test_step_order_missing_state_at_results(app, spied):
    """§3.2: PRE only fails (already acked); HEAD logs context, acks, then fails."""
    job = _new_job(1)
    _FakeState.script = {"process": _progress(), "results": None}
    _run(job, _result(1))
    job_logger = f"ami.jobs.{job.pk}"
    head = [("update_state", "process"), ("progress", "process", {"processed": 1, "remaining": 0, "failed": 0}), ("save",)]
    if app.is_pre:
        assert spied == head + [("ack", job_logger), ("update_state", "results"), ("fail", "Redis state missing for job")]
    else:
        reason = "Job state keys not found in Redis (likely cleaned up concurrently)"
        assert spied == head + [("update_state", "results"), ("context", "results"), ("ack", job_logger), ("fail", reason)]


def test_redis_error_handling(app, spied, caplog):
    """Summary table: HEAD re-raises a RedisError (process stage: module WARNING; results
    stage: job WARNING) with nothing acked; PRE swallows one at the results stage."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    job = _new_job(1)
    if not app.is_pre:
        _FakeState.script = {"process": RedisConnectionError("Connection reset by peer"), "results": None}
        with caplog.at_level(logging.WARNING, logger="ami.jobs.tasks"), pytest.raises(RedisConnectionError):
            _run(job, _result(1))
        assert spied == [("update_state", "process")]
        assert any(
            r.name == "ami.jobs.tasks"
            and r.getMessage().startswith(f"Transient Redis error updating job {job.pk} state (stage=process); Celery will retry: ")
            and r.exc_info
            for r in caplog.records
        )
        spied.clear()
        _FakeState.script = {"process": _progress(), "results": RedisConnectionError("reset")}
        with pytest.raises(RedisConnectionError):
            _run(job, _result(1))
        assert ("ack", f"ami.jobs.{job.pk}") not in spied
        from ami.jobs.models import render_job_logs

        assert any("(stage=results); Celery will retry: reset" in line for line in render_job_logs(job)["stdout"])
    else:
        _FakeState.script = {"process": _progress(), "results": RedisConnectionError("reset")}
        assert _run(job, _result(1)) is None  # swallowed by the broad except
        from ami.jobs.models import Job, render_job_logs

        logs = render_job_logs(Job.objects.get(pk=job.pk))
        assert f"Error processing pipeline result for job {job.pk}: reset" in logs["stderr"]


def test_replay_counts_at_head(app, spied):
    """§3.2 HEAD: results-stage counts only when newly_removed > 0."""
    if app.is_pre:
        pytest.skip("HEAD only")
    job = _new_job(1)
    _FakeState.script = {"process": _progress(), "results": _progress(newly_removed=0)}
    _run(job, _result(1))
    assert ("progress", "results", {"detections": 0, "classifications": 0, "captures": 0}) in spied


def test_validation_error_propagates(app, spied):
    """§3.2 step 2: a pydantic ValidationError fails the task before any step."""
    import pydantic

    job = _new_job(1)
    with pytest.raises(pydantic.ValidationError):
        _run(job, {"pipeline": "x"})
    assert spied == []


# --- §3.4 / §3.5 progress and failing, on the database ---------------------------------------------
def test_update_job_progress_and_fail_job(app, monkeypatch):
    """§3.4: results counts add up, max() clamp, sticky FAILURE; §3.5: _fail_job."""
    from ami.jobs import tasks
    from ami.jobs.models import Job, JobState, render_job_logs
    from ami.ml.orchestration import jobs as orchestration_jobs

    cleaned: list = []
    monkeypatch.setattr(orchestration_jobs, "cleanup_async_job_resources", lambda job_id: cleaned.append(job_id) or True)
    job = _new_job(2)
    job.run()  # STARTED, collect 100%
    tasks._update_job_progress(job.pk, "results", 0.5, complete_state=JobState.SUCCESS, detections=2, classifications=2, captures=1)
    tasks._update_job_progress(job.pk, "results", 0.4, complete_state=JobState.SUCCESS, detections=1, classifications=1, captures=1)
    job = Job.objects.get(pk=job.pk)
    assert tasks._get_current_counts_from_job_progress(job, "results") == (3, 3, 2)
    stage = job.progress.get_stage("results")
    assert stage.progress == 0.5 and stage.status == JobState.STARTED
    assert any(f"Updated job {job.pk} progress in stage 'results' to 50.0%" in line for line in render_job_logs(job)["stdout"])

    tasks._update_job_progress(job.pk, "process", 0.5, complete_state=JobState.FAILURE, processed=1, remaining=1, failed=1)
    tasks._update_job_progress(job.pk, "process", 0.6, complete_state=JobState.SUCCESS, processed=2, remaining=0, failed=1)
    assert Job.objects.get(pk=job.pk).progress.get_stage("process").status == JobState.FAILURE  # sticky

    tasks._fail_job(job.pk, "a reason")
    job = Job.objects.get(pk=job.pk)
    assert job.status == "FAILURE" and job.finished_at is not None
    lines = render_job_logs(job)["stdout"]
    assert any(line.endswith(f"ERROR Job {job.pk} marked as FAILURE: a reason") for line in lines)
    assert any(line.endswith(f"INFO Changing status of job {job.pk} from STARTED to FAILURE") for line in lines)
    assert cleaned == [job.pk]
    tasks._fail_job(job.pk, "again")  # final status: a silent no-op
    assert cleaned == [job.pk]


def test_completion_and_coercion(app, monkeypatch):
    """§3.4 step 6 / §9: completion needs every stage at 100% with a final status and fires
    the gated cleanup; PRE's save() coerces final-status stages to 100%, HEAD's does not."""
    from ami.jobs import tasks
    from ami.jobs.models import Job, JobState
    from ami.ml.orchestration import jobs as orchestration_jobs

    cleaned: list = []
    monkeypatch.setattr(orchestration_jobs, "cleanup_async_job_resources", lambda job_id: cleaned.append(job_id) or True)
    job = _new_job(2)
    job.run()
    tasks._update_job_progress(job.pk, "process", 0.5, complete_state=JobState.FAILURE, processed=1, remaining=1, failed=1)
    job = Job.objects.get(pk=job.pk)
    assert job.progress.get_stage("process").status == JobState.FAILURE
    job.save()
    job = Job.objects.get(pk=job.pk)
    assert job.progress.get_stage("process").progress == (1.0 if app.is_pre else 0.5)

    tasks._update_job_progress(job.pk, "process", 1.0, complete_state=JobState.SUCCESS, processed=2, remaining=0, failed=0)
    tasks._update_job_progress(job.pk, "results", 1.0, complete_state=JobState.SUCCESS, detections=0, classifications=0, captures=0)
    job = Job.objects.get(pk=job.pk)
    assert job.progress.is_complete()
    assert job.progress.get_stage("process").status == JobState.FAILURE  # sticky, per stage
    assert job.status == "SUCCESS"  # the complete_state of the update that completed the job
    assert job.finished_at is not None
    assert cleaned == [job.pk]


# --- §3.6 the ack helper ---------------------------------------------------------------------------
def test_ack_helper(app, monkeypatch, caplog):
    """§3.6: a plain publish; PRE returns None, HEAD a bool; never raises; logs to the
    logger passed in."""
    from ami.jobs import tasks

    log = logging.getLogger("blipguard.test.ack")
    with caplog.at_level(logging.INFO, logger="blipguard.test.ack"):
        result = tasks._ack_task_via_nats("$JS.ACK.nobody.listens", log)
    assert result is (None if app.is_pre else True)
    assert "Successfully acknowledged task via NATS: $JS.ACK.nobody.listens" in caplog.messages

    from django.conf import settings

    monkeypatch.setattr(settings, "NATS_URL", "nats://127.0.0.1:1")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="blipguard.test.ack"):
        result = tasks._ack_task_via_nats("$JS.ACK.x", log)
    assert result is (None if app.is_pre else False)
    [record] = [r for r in caplog.records if r.name == "blipguard.test.ack"]
    assert record.levelno == logging.ERROR and record.getMessage().startswith("Error acknowledging task via NATS: ")
    assert bool(record.exc_info) is (not app.is_pre)


# --- §4 the NATS queue ------------------------------------------------------------------------------
def test_nats_queue_shapes(app):
    """§4: constants, constructor, names, outside-context errors."""
    import asyncio

    from ami.ml.orchestration import nats_queue
    from ami.ml.orchestration.nats_queue import TaskQueueManager

    assert nats_queue.NATS_JETSTREAM_TIMEOUT == 10
    assert nats_queue.ADVISORY_STREAM_NAME == "advisories"
    assert nats_queue.TASK_TTR == (30 if app.is_pre else 300)
    assert hasattr(nats_queue, "NATS_MAX_DELIVER") is (not app.is_pre)
    if not app.is_pre:
        assert nats_queue.NATS_MAX_DELIVER == 2
    params = inspect.signature(TaskQueueManager.__init__).parameters
    assert list(params) == ["self", "nats_url", "max_ack_pending", "job_logger"]
    m = TaskQueueManager()
    assert m.max_ack_pending == 1000 and m.job_logger is None and m.nc is None and m.js is None
    assert m._streams_logged == set() and m._consumers_logged == set()
    assert (m._get_stream_name(7), m._get_subject(7), m._get_consumer_name(7), m._get_dlq_consumer_name(7)) == (
        "job_7", "job.7.tasks", "job-7-consumer", "job-7-dlq"
    )
    with pytest.raises(RuntimeError, match="Connection is not open. Use TaskQueueManager as an async context manager."):
        asyncio.run(m.acknowledge_task("x"))
    with pytest.raises(RuntimeError, match="Connection is not open"):
        asyncio.run(m.reserve_tasks(7, 1))
    for name in ("ensure_job_resources", "list_job_stream_snapshots", "populate_redelivered_counts", "get_consumer_state"):
        assert hasattr(m, name) is (not app.is_pre), name


def test_nats_queue_on_server(app, django_app):
    """§4: the advisories stream, stream/consumer config, publish/reserve/ack, cleanup."""
    from asgiref.sync import async_to_sync

    from ami.ml.orchestration.nats_queue import TaskQueueManager
    from ami.ml.schemas import PipelineProcessingTask

    job_id = 920000 + uuid.uuid4().int % 10000

    async def scenario():
        async with TaskQueueManager() as m:
            assert (await m.js.stream_info("advisories")).config.subjects == ["$JS.EVENT.ADVISORY.>"]
            task = PipelineProcessingTask(id="5", image_id="5", image_url="http://x/5.jpg")
            assert await m.publish_task(job_id, task) is True
            stream = await m.js.stream_info(f"job_{job_id}")
            consumer = await m.js.consumer_info(f"job_{job_id}", f"job-{job_id}-consumer")
            reserved = await m.reserve_tasks(job_id, count=2, timeout=0.5)
            acked = await m.acknowledge_task(reserved[0].reply_subject)
            done = await m.cleanup_job_resources(job_id)
            empty = await m.reserve_tasks(job_id, count=1, timeout=0.2)
            return stream, consumer, reserved, acked, done, empty

    stream, consumer, reserved, acked, done, empty = async_to_sync(scenario)()
    assert stream.config.subjects == [f"job.{job_id}.tasks"] and stream.config.max_age == 86400
    cfg = consumer.config
    assert cfg.durable_name == f"job-{job_id}-consumer" and cfg.filter_subject == f"job.{job_id}.tasks"
    assert cfg.ack_wait == (30 if app.is_pre else 300)
    assert cfg.max_deliver == (5 if app.is_pre else 2)
    assert cfg.max_ack_pending == 1000
    assert getattr(cfg.ack_policy, "value", cfg.ack_policy) == "explicit"
    assert getattr(cfg.deliver_policy, "value", cfg.deliver_policy) == "all"
    assert [t.image_id for t in reserved] == ["5"] and reserved[0].reply_subject.startswith("$JS.ACK.")
    assert acked is True and done is True and empty == []


# --- §6 schemas --------------------------------------------------------------------------------------
def test_schemas(app):
    """§6: pydantic v1 models: bbox object, ids coerced to str, the error shape."""
    import pydantic

    from ami.jobs.schemas import QueuedTaskAcknowledgment
    from ami.ml.schemas import BoundingBox, PipelineResultsError, PipelineResultsResponse, PipelineTaskResult

    assert pydantic.VERSION.startswith("1.")
    data = _result(4)
    data["source_images"][0]["id"] = 4  # an int
    data["unknown"] = "ignored"
    r = PipelineResultsResponse(**data)
    assert r.source_images[0].id == "4"
    assert isinstance(r.detections[0].bbox, BoundingBox) and r.detections[0].bbox.x2 == 10.0
    assert "errors" in r.dict() and "error" not in r.dict() and "unknown" not in r.dict()
    assert BoundingBox.from_coords([1, 2, 3, 4]).to_string() == "1.0,2.0,3.0,4.0"
    assert BoundingBox.from_coords([1, 2], raise_on_error=False) is None
    err = PipelineTaskResult.parse_obj({"reply_subject": "s", "result": {"error": "boom", "image_id": 9}})
    assert isinstance(err.result, PipelineResultsError) and err.result.image_id == "9"
    ok = PipelineTaskResult.parse_obj({"reply_subject": "s", "result": _result(4)})
    assert isinstance(ok.result, PipelineResultsResponse)
    assert set(QueuedTaskAcknowledgment.__fields__) == {"reply_subject", "status", "task_id"}


# --- §9 job model -------------------------------------------------------------------------------------
def test_job_states_and_logger(app):
    """§9: state sets per version; the job logger's name, propagation and single handler."""
    from ami.jobs.models import Job, JobDispatchMode, JobLogHandler, JobState

    assert [s.value for s in JobState.final_states()] == ["SUCCESS", "FAILURE", "REVOKED"]
    assert [s.value for s in JobState.failed_states()] == ["FAILURE", "REVOKED", "UNKNOWN"]
    assert [s.value for s in JobState.active_states()] == ["STARTED", "RETRY"]
    running = [s.value for s in JobState.running_states()]
    assert ("CREATED" in running) is app.is_pre
    assert hasattr(JobState, "finalizable_states") is (not app.is_pre)
    if not app.is_pre:
        assert [s.value for s in JobState.finalizable_states()] == ["CREATED", "PENDING", "STARTED", "RETRY"]
        assert list(inspect.signature(Job._guarded_status_update).parameters) == ["self", "to_status", "from_statuses", "set_finished"]
    assert JobDispatchMode.ASYNC_API == "async_api"

    job = _new_job(1)
    log = job.logger
    again = Job.objects.get(pk=job.pk)
    assert again.logger is log and log.name == f"ami.jobs.{job.pk}" and log.propagate is False
    handlers = [h for h in log.handlers if isinstance(h, JobLogHandler)]
    assert len(handlers) == 1 and handlers[0].job is again
    log.debug("dropped")
    log.info("kept")
    from ami.jobs.models import render_job_logs

    lines = render_job_logs(again)["stdout"]
    assert any(line.endswith("] INFO kept") for line in lines) and not any("dropped" in line for line in lines)
    assert lines[0].endswith("INFO kept")  # newest first
    if app.is_pre:
        assert Job.objects.get(pk=job.pk).logs.stdout[0].endswith("INFO kept")
    else:
        assert again.log_entries.filter(message="kept", level="INFO").count() == 1


def test_job_progress_schema(app):
    """§9: ML stages and params; get_stage raises ValueError; update_stage upserts params."""
    job = _new_job(1)
    assert [s.key for s in job.progress.stages] == ["collect", "process", "results"]
    with pytest.raises(ValueError):
        job.progress.get_stage("nope")
    job.progress.update_stage("process", progress=0.25, status="STARTED", custom=7)
    stage = job.progress.get_stage("process")
    assert stage.progress == 0.25 and {p.key: p.value for p in stage.params}["custom"] == 7
    assert not job.progress.is_complete()
