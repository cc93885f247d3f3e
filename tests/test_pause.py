"""Worker-side pause: real RabbitMQ, three real prefork workers, the patched app, on the
platform version this pytest process runs."""

import asyncio
import datetime
import json
import threading
import time

import pytest

from blipguard.app_patch.pause import client as fleet
from blipguard.harness import seed
from blipguard.harness.jobrun import _int, _params, collect, run_job
from blipguard.harness.simulator import ProcessingService
from blipguard.localstack.procs import free_port, wait_until

pytestmark = pytest.mark.pause

WORKERS = 3
# Small enough that the job log (read newest-first, 5000 lines) still holds the outage's lines.
OUTAGE_IMAGES = 300
WORKER_CLIENT = "antenna-worker"  # the workers' Redis connections say so in CLIENT LIST


@pytest.fixture
def app(django_app):
    from config import celery_app

    return celery_app


@pytest.fixture
def queue(platform) -> str:
    return platform.result_queue


@pytest.fixture
def workers(worker_pool, platform, app):
    w = worker_pool.ensure(platform.patched_settings, count=WORKERS, concurrency=1, BLIPGUARD_SOCKET_TIMEOUT="1",
                           BLIPGUARD_CONNECT_TIMEOUT="1", BLIPGUARD_REDIS_CLIENT_NAME=WORKER_CLIENT)
    yield w
    fleet.resume(app, expect=len(w.hostnames), source="breaker")


@pytest.fixture
def consuming(stack, queue):
    return lambda: stack.rabbitmq.consumer_count(queue)


def start_job(n: int):
    job = seed.start_async_job(seed.create_async_job(n))
    return job, seed.image_ids(job)


def job_status(job_id):
    from ami.jobs.models import Job

    return Job.objects.get(pk=job_id).status


def processed(job_id):
    from ami.jobs.models import Job

    return _int(_params(Job.objects.get(pk=job_id), "process").get("processed"))


def test_pause_holds_tasks_in_rabbitmq_and_resume_drains_them(stack, web, redis_direct, app, workers, queue, consuming):
    reply = fleet.pause(app, lease=60, reason="test: redis restart", expect=WORKERS)
    assert reply.confirmed == sorted(workers.hostnames), reply.replies
    wait_until(lambda: consuming() == 0, 10, "every worker to stop consuming")

    job, image_ids = start_job(120)
    with ProcessingService(web.url, job.pk, seed.processing_service_token(), batch_size=20) as sim:
        wait_until(lambda: stack.rabbitmq.queue_depth(queue) >= 100, 30, "results to queue up in RabbitMQ")
        assert processed(job.pk) == 0, "no result task may run while paused"
        reply = fleet.resume(app, expect=WORKERS)
        assert reply.confirmed == sorted(workers.hostnames)
        wait_until(lambda: job_status(job.pk) == "SUCCESS", 120, "the job to complete after resume")
    outcome = collect(job.pk, redis_direct, image_ids)
    assert (outcome.processed, outcome.failed, outcome.detections) == (120, 0, outcome.expected_detections)
    assert sim.errors == []


def _tally(app, kind: str) -> int:
    return sum(len(tasks) for tasks in (getattr(app.control.inspect(timeout=1.0), kind)() or {}).values())


def test_held_back_results_touch_no_redis_while_paused(stack, redis_direct, app, workers, queue, consuming):
    """Results already prefetched, and results waiting as ETA tasks, when the pause starts:
    all go back to the queue untouched. While paused no worker connection sends Redis a
    single command (the connections are named, so the web, the result backend and this
    test's own clients do not blur the count); after resume the job completes exactly."""
    from ami.jobs.models import Job
    from ami.jobs.tasks import process_nats_pipeline_result
    from ami.main.models import Detection
    from blipguard.harness.simulator import fake_result
    from blipguard.localstack.redis_traffic import RedisTraffic

    n_now, n_eta, eta_in = 2 * WORKERS, 4, 15.0
    job, image_ids = start_job(n_now + n_eta)
    tasks = seed.reserve_tasks(job.pk, n_now + n_eta)

    def send(task, **options):
        result = fake_result(int(task.image_id), task.image_url)
        process_nats_pipeline_result.apply_async(
            kwargs={"job_id": job.pk, "result_data": result,
                    "reply_subject": task.reply_subject}, **options)

    def held_back() -> int:
        return sum(1 for h in stack.rabbitmq.peek(queue) if h.get("task") == process_nats_pipeline_result.name)

    saves = stack.postgres.connect()
    conn = redis_direct.connection_pool.connection_kwargs
    url = f"redis://{conn['host']}:{conn['port']}/0"
    try:
        with saves.cursor() as c:  # each worker's task in flight waits in its save
            c.execute(f'LOCK TABLE "{Detection._meta.db_table}" IN EXCLUSIVE MODE')
        # ETA ones first: a worker takes an ETA task beyond its prefetch limit, not after it is full.
        for t in tasks[n_now:]:
            send(t, countdown=eta_in)
        wait_until(lambda: _tally(app, "scheduled") == n_eta, 30, "the ETA results to reach the workers")
        for t in tasks[:n_now]:
            send(t)
        wait_until(lambda: _tally(app, "active") == WORKERS and _tally(app, "reserved") == WORKERS, 30, "tasks in flight, prefetched and ETA on every worker")
        reply = fleet.pause(app, lease=60, reason="test: hold-back", expect=WORKERS)
        assert reply.confirmed == sorted(workers.hostnames), reply.replies
        saves.commit()  # the tasks in flight finish; they started before the pause
        wait_until(lambda: _tally(app, "active") == 0 and _tally(app, "reserved") == 0, 30,
                   "the in-flight tasks to finish and the prefetched ones to be held back")
        assert _tally(app, "scheduled") == n_eta, "the ETA results must still be waiting when the quiet window opens"
        with RedisTraffic(url) as traffic:
            wait_until(lambda: _tally(app, "scheduled") == 0 and _tally(app, "active") == 0, eta_in + 30,
                       "the ETA results to come due while paused")
            wait_until(lambda: held_back() == WORKERS + n_eta, 15, "every prefetched and ETA result back in the queue")
        from_workers = traffic.commands_from(WORKER_CLIENT)
        assert [c for c in from_workers if not c[0].endswith(":probe")] == [], from_workers[:10]
        assert all(command.upper().startswith('"PING"') for _, command in from_workers), from_workers[:10]
        assert Job.objects.get(pk=job.pk).status == "STARTED" and processed(job.pk) == WORKERS
        reply = fleet.resume(app, expect=WORKERS)
        assert reply.confirmed == sorted(workers.hostnames)
        wait_until(lambda: job_status(job.pk) == "SUCCESS", 60, "the job to complete after resume")
    finally:
        saves.close()
    outcome = collect(job.pk, redis_direct, image_ids)
    assert (outcome.processed, outcome.failed) == (n_now + n_eta, 0)
    assert outcome.detections == outcome.expected_detections == outcome.detections_counter
    # The job's own log tells the story, once per worker for the resume. (The pre-fix job log
    # is one JSON field rewritten per line without a lock: the workers' output counts too.)
    worker_log = "".join(workers.logs(h) for h in workers.hostnames)
    for line in ("Result held back: workers are paused while redis is down (test: hold-back)",
                 "Resumed after the pause for redis (test: hold-back): held results are processed again"):
        assert outcome.log_contains(line) or line in worker_log, line
    resumed = [line for line in outcome.log if "Resumed after the pause" in line]
    assert 0 < len(resumed) <= WORKERS or (not resumed and "Resumed after the pause" in worker_log), resumed


def test_a_lease_that_is_not_renewed_expires(stack, app, workers, consuming):
    reply = fleet.pause(app, lease=2, reason="test: operator crashed", expect=WORKERS)
    assert len(reply.confirmed) == WORKERS
    paused_at = time.monotonic()
    assert all(r["paused"] for r in fleet.status(app, expect=WORKERS).replies.values())
    wait_until(lambda: consuming() == WORKERS, 15, "every worker to resume by itself")
    # Not before the lease ran out: a resume that came early would be a lease ignored.
    assert time.monotonic() - paused_at >= 2.0 - 0.05
    assert not any(r["paused"] for r in fleet.status(app, expect=WORKERS).replies.values())


def test_pause_goes_out_after_the_broker_dropped_our_idle_connection(stack, app, workers, consuming):
    # A long-lived caller (the operator) keeps broker connections that sit idle between blips;
    # the broker closes them once heartbeats stop. The next pause must still reach every worker.
    fleet.status(app, expect=WORKERS)
    with app.pool.acquire(block=True) as conn:
        conn.ensure_connection()
        port = conn.connection.sock.getsockname()[1]
    assert stack.rabbitmq.close_connections_from({port}) == 1
    reply = fleet.pause(app, lease=30, reason="blip", expect=WORKERS)
    assert reply.confirmed == sorted(workers.hostnames), reply.replies
    wait_until(lambda: consuming() == 0, 10, "every worker to stop consuming")
    fleet.resume(app, expect=WORKERS)
    wait_until(lambda: consuming() == WORKERS, 10, "every worker to consume again")


def test_an_unreachable_broker_is_a_clear_error(django_app, monkeypatch):
    from celery import Celery

    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)  # it would win over the app's own broker
    dead = Celery("dead", broker=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    with pytest.raises(fleet.BrokerUnreachable, match=r"cannot send blipguard_pause to the workers: broker amqp://"):
        fleet.pause(dead, lease=10, reason="blip")


def test_renewal_extends_and_resume_ends_at_once(stack, app, workers, consuming):
    first = fleet.pause(app, lease=3, reason="blip", expect=WORKERS)
    second = fleet.pause(app, lease=30, reason="blip", expect=WORKERS)
    assert all(r["renewed"] for r in second.replies.values())
    assert all(r["lease"]["remaining"] > 25 for r in second.replies.values())
    assert first.confirmed == second.confirmed
    fleet.resume(app, expect=WORKERS)
    wait_until(lambda: consuming() == WORKERS, 10, "every worker to consume again")


def test_queue_survives_resume_then_broker_restart(stack, web, redis_direct, app, workers, consuming):
    fleet.pause(app, lease=30, reason="blip", expect=WORKERS)
    wait_until(lambda: consuming() == 0, 10, "pause")
    fleet.resume(app, expect=WORKERS)
    wait_until(lambda: consuming() == WORKERS, 10, "resume")
    stack.rabbitmq.restart()
    # Celery bug 7733 would leave every worker without the result queue after reconnecting.
    wait_until(lambda: consuming() == WORKERS, 90, "every worker to consume the result queue again")
    outcome = run_job(web.url, redis_direct, 60)
    assert outcome.status == "SUCCESS" and outcome.processed == 60


def test_a_worker_started_during_a_pause_takes_nothing(stack, web, redis_direct, app, workers, queue, consuming):
    fleet.pause(app, lease=60, reason="blip", expect=WORKERS)
    late = workers.start_one(concurrency=1)
    workers.wait_ready(60)
    try:
        status = fleet.status(app, destination=[late], expect=1).replies[late]
        assert status["paused"] and status["consuming"] == []
        job, _ = start_job(40)
        with ProcessingService(web.url, job.pk, seed.processing_service_token(), batch_size=20):
            wait_until(lambda: stack.rabbitmq.queue_depth(queue) >= 40, 30, "results to queue up")
            assert consuming() == 0 and processed(job.pk) == 0
            fleet.resume(app, expect=WORKERS + 1)
            # The late worker, too, consumes the result queue once the pause ends.
            wait_until(lambda: consuming() == WORKERS + 1, 15, "all four workers to consume")
            wait_until(lambda: job_status(job.pk) == "SUCCESS", 120, "the job to complete")
    finally:
        workers.stop(late)


@pytest.mark.parametrize(
    "arguments, error",
    [
        ({"lease": -5, "reason": "x", "dependency": "redis"}, "lease must be > 0"),
        ({"lease": 10**9, "reason": "x", "dependency": "redis"}, "lease must be at most"),
        ({"lease": "soon", "reason": "x", "dependency": "redis"}, "lease must be a number"),
        ({"lease": 10, "reason": "x", "dependency": "redis", "queue": "nope"}, "unknown queue 'nope'"),
        ({"lease": 10, "reason": "x", "dependency": "redis", "colour": "red"}, "unknown arguments ['colour']"),
        ({"lease": 10, "reason": "x", "dependency": ""}, "dependency must be a non-empty name"),
    ],
)
def test_bad_pause_requests_are_refused_and_change_nothing(stack, app, workers, consuming, arguments, error):
    replies = app.control.broadcast("blipguard_pause", arguments=arguments, reply=True, timeout=2, limit=WORKERS)
    answers = [a for r in replies for a in r.values()]
    assert len(answers) == WORKERS
    assert all(not a["ok"] and error in a["error"] for a in answers), answers
    assert not any(r["paused"] for r in fleet.status(app, expect=WORKERS).replies.values())
    assert consuming() == WORKERS


@pytest.mark.outage
def test_fleet_paused_through_a_120s_redis_outage(stack, web, redis_direct, app, workers, queue):
    """The test stands in for the operator: pause on outage, renew, resume on recovery.
    Every pause must be confirmed by every worker (an exception here fails the test)."""
    seen = {"renewals": 0, "held_in_queue": 0}

    def pause_confirmed():
        reply = fleet.pause(app, lease=15, reason="redis pod restarting", expect=WORKERS)
        assert reply.confirmed == sorted(workers.hostnames), reply.replies

    def outage():
        pause_confirmed()
        stack.redis.stop()
        t_end = time.monotonic() + 120
        while time.monotonic() < t_end:
            threading.Event().wait(min(5, max(0.0, t_end - time.monotonic())))  # the renewal cadence
            pause_confirmed()
            seen["renewals"] += 1
            seen["held_in_queue"] = max(seen["held_in_queue"], stack.rabbitmq.queue_depth(queue))
        stack.redis.start()
        reply = fleet.resume(app, expect=WORKERS)
        assert reply.confirmed == sorted(workers.hostnames), reply.replies

    outcome = run_job(web.url, redis_direct, OUTAGE_IMAGES, fault=outage, fault_at=0.3,
                      settle=lambda: stack.rabbitmq.queue_depth(queue) == 0, timeout=400)
    print(outcome.summary(), seen)
    assert seen["renewals"] >= 20
    assert seen["held_in_queue"] > 0, "results must have waited in RabbitMQ during the outage"
    assert outcome.status == "SUCCESS"
    assert (outcome.processed, outcome.failed) == (OUTAGE_IMAGES, 0)
    assert outcome.detections == outcome.expected_detections == outcome.detections_counter
    assert not outcome.log_contains("Retries exhausted")


@pytest.mark.outage
def test_the_breaker_alone_carries_a_job_through_60s(stack, web, redis_direct, workers, queue):
    def outage():
        stack.redis.stop()
        try:
            threading.Event().wait(60)  # the fault itself: Redis stays down for 60 s
        finally:
            stack.redis.start()

    outcome = run_job(web.url, redis_direct, OUTAGE_IMAGES, fault=outage, fault_at=0.3,
                      settle=lambda: stack.rabbitmq.queue_depth(queue) == 0, timeout=400)
    print(outcome.summary())
    assert outcome.status == "SUCCESS"
    assert (outcome.processed, outcome.failed) == (OUTAGE_IMAGES, 0)
    assert not outcome.log_contains("Retries exhausted")
    assert outcome.log_contains("Result held back")


def test_nats_consumer_pause_holds_deliveries_and_expires(stack):
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    from blipguard.app_patch.pause.nats_consumers import pause_consumer, resume_consumer

    async def scenario():
        nc = await nats.connect(stack.nats.url)
        js = nc.jetstream()
        await js.add_stream(name="pausetest", subjects=["pausetest.x"])
        await js.add_consumer("pausetest", ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT))
        for i in range(5):
            await js.publish("pausetest.x", json.dumps({"i": i}).encode())
        sub = await js.pull_subscribe_bind(durable="c", stream="pausetest")
        paused_at = time.monotonic()
        paused = await pause_consumer(nc, "pausetest", "c", 2.0)
        assert paused["paused"] and 0 < paused["pause_remaining_s"] <= 2.0
        with pytest.raises((asyncio.TimeoutError, nats.errors.TimeoutError)):
            await sub.fetch(1, timeout=0.5)
        t0 = time.monotonic()
        got = []
        while not got and time.monotonic() - t0 < 10:
            try:
                got = await sub.fetch(5, timeout=0.5)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                pass
        assert got, "deliveries resume when the deadline passes"
        assert time.monotonic() - paused_at >= 2.0 - 0.05, "not before the pause deadline"
        again = await pause_consumer(nc, "pausetest", "c", 30.0)
        assert again["paused"]
        resumed = await resume_consumer(nc, "pausetest", "c")
        assert not resumed["paused"]
        await js.delete_stream("pausetest")
        await nc.close()

    asyncio.run(scenario())


@pytest.fixture
def reaper_worker(stack, platform, workers, tmp_path):
    """One more patched worker, on the queue the beat's jobs_health_check goes to."""
    from blipguard.harness.django_env import app_env
    from blipguard.localstack import CeleryWorkers

    w = CeleryWorkers("config", "antenna", app_env(stack.env(), platform.patched_settings), tmp_path / "reaper")
    w.start(count=1, concurrency=1)
    try:
        w.wait_ready(60)
        yield w
    finally:
        w.stop()


def test_the_reapers_leave_a_paused_job_alone(stack, platform, app, workers, reaper_worker):
    """The current platform reaps running jobs not updated for 10 min (pending images marked
    failed, the job completed with them). A pause writes nothing to a job: at 600 s paused,
    the reaper would fail every held image. Deferred while paused; reaped when really stale."""
    if platform.is_pre:
        pytest.skip("the pre-fix reaper's cutoff is 72 h")
    from ami.jobs.models import Job

    job, ids = start_job(10)
    eleven_minutes_ago = Job.objects.get(pk=job.pk).updated_at - datetime.timedelta(minutes=11)
    Job.objects.filter(pk=job.pk).update(updated_at=eleven_minutes_ago)  # as after an 11-min pause
    everyone = WORKERS + 1
    reply = fleet.pause(app, lease=60, reason="blip redis-1: test", expect=everyone)
    assert len(reply.confirmed) == everyone, reply.replies
    try:
        report = app.send_task("ami.jobs.tasks.jobs_health_check", queue="antenna").get(timeout=60)
        assert report == {"lost_images": [], "stale_jobs": []}
        assert job_status(job.pk) not in ("SUCCESS", "FAILURE", "REVOKED")
        log = reaper_worker.logs(reaper_worker.hostnames[0])
        assert "mark_lost_images_failed deferred: result consumers are paused (redis: blip redis-1: test)" in log
    finally:
        fleet.resume(app, expect=everyone)
    # Not paused, and stale for real: the reapers act as the platform means them to.
    report = app.send_task("ami.jobs.tasks.jobs_health_check", queue="antenna").get(timeout=60)
    assert [r["job_id"] for r in report["lost_images"]] == [job.pk], report
    assert job_status(job.pk) == "FAILURE"  # every image failed: what a long pause would do to a held job
