"""Retries fitted inside the NATS ack_wait, end to end.

The patch's retry policy is fitted so its whole window fits inside the consumer's
ack_wait (``fit_to_ack_wait``): a result task the workers are still retrying is never
handed out again by JetStream. The scenario that shows it: a host that configured a long
backoff (``BACKOFF_BASE``/``BACKOFF_MAX`` 60 s, one retry: a retry waits 30-60 s, tuned
for a long ack_wait) runs with a 25 s ack_wait. Fitted, the retry waits 5-10 s and the
result is acked well inside the ack_wait; unfitted, the retry would wait at least 30 s, so
JetStream redelivers the task while the first delivery still waits for its retry.

Which retries the patch's policy governs depends on the platform version:
- pre-fix: every transient error of the result task, Redis included. The fault is a Redis
  outage (stopped and restarted) while results are being saved.
- current: Redis errors are the host's own ``autoretry_for`` (kept as they are, not fitted
  by the patch); the patch's own retries there are the unconfirmed ack's. The fault is an
  ack whose connection is reset: its request hangs for the whole ack time of that run, so
  no inline re-ack follows, and the ack alone is retried through the policy.

With the default backoff (base 1 s, doubling) no outage can tell the two apart: with the
ack timeout counted against every attempt, the fitted window at a short ack_wait is a few
seconds, and any outage that short is also over, unfitted, long before the ack_wait runs out.
"""

import os
import re

import pytest

from blipguard import refapp
from blipguard.app_patch.retry_policy import RetryPolicy, fit_to_ack_wait
from blipguard.harness.jobrun import consumer_stats, run_job
from blipguard.localstack import faults
from blipguard.localstack.tcpproxy import FaultProxy

pytestmark = pytest.mark.chaos

ACK_WAIT = 25  # seconds: the consumers' ack_wait, the host's own setting
MAX_RETRIES = 1
BACKOFF = 60.0  # BACKOFF_BASE and BACKOFF_MAX: unfitted, the one retry waits 30-60 s
ACK_TIMEOUT = 5.0  # the patch's default; an attempt's acks share it, counted against every attempt when fitting
# What the patch fits that to (pure; the workers do the same at start-up).
FITTED = fit_to_ack_wait(ACK_WAIT, MAX_RETRIES, BACKOFF, BACKOFF, attempt_max=ACK_TIMEOUT)
UNFITTED = RetryPolicy(MAX_RETRIES, BACKOFF, BACKOFF, ACK_TIMEOUT)
NO_CLIENT_RETRIES = {"BLIPGUARD_SOCKET_TIMEOUT": "1", "BLIPGUARD_CONNECT_TIMEOUT": "1", "BLIPGUARD_REDIS_RETRIES": "0"}
RETRYING = re.compile(r"Retrying in (\d+(?:\.\d+)?)s \(retry (\d+) of (\d+)\)")


def settings_with_backoff(tmp_path, platform) -> tuple[str, dict]:
    """A settings module of the patched host with the long backoff and the breaker off
    (the host's ``BLIPGUARD`` setting, as a host would write it), and the worker
    environment that imports it."""
    name = f"{'pre' if platform.is_pre else 'head'}_patched_long_backoff"
    folder = tmp_path / "settings"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(
        f"from {platform.patched_settings} import *  # noqa: F401,F403\n"
        f"BLIPGUARD = {{**BLIPGUARD, 'MAX_RETRIES': {MAX_RETRIES}, 'BACKOFF_BASE': {BACKOFF},\n"
        f"             'BACKOFF_MAX': {BACKOFF}, 'BREAKER': False}}\n"
    )
    # The reference app, this module, then whatever the caller had (a scratch copy of the
    # patch when run from scripts/mutants.py).
    path = [refapp.path(), str(folder), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    ack_wait = {"REFAPP_TEST_TASK_TTR" if platform.is_pre else "NATS_TASK_TTR": str(ACK_WAIT)}
    return name, {"PYTHONPATH": os.pathsep.join(dict.fromkeys(path)), **ack_wait}


def said(outcome, worker_log: str, text: str) -> bool:
    """In the job's log or the workers' output (the pre-fix job log can lose lines)."""
    return outcome.log_contains(text) or text in worker_log


def retries_scheduled(outcome, worker_log: str) -> list[tuple[float, int, int]]:
    """(countdown, retry, of) of every "Retrying in ..." line, job log first, else the workers'."""
    found = [RETRYING.search(line) for line in outcome.log]
    found = [m for m in found if m] or list(RETRYING.finditer(worker_log))
    return [(float(m.group(1)), int(m.group(2)), int(m.group(3))) for m in found]


def test_fitted_retries_end_inside_ack_wait(stack, web, redis_direct, platform, worker_pool, tmp_path):
    """A transient fault while results are saved: the fitted retry carries it and every
    result is acked before the ack_wait runs out. The job succeeds with exact counts, and
    JetStream never hands a task out twice."""
    # The premise: fitted, the retry window fits the ack_wait; unfitted, even the shortest
    # wait before the one retry outlasts it.
    assert FITTED.max_retries == MAX_RETRIES and FITTED.max_window <= 0.8 * ACK_WAIT
    assert UNFITTED.delay(0) / 2 > ACK_WAIT
    settings, env = settings_with_backoff(tmp_path, platform)
    proxy = None
    if platform.is_pre:
        # One worker process, and every result posted at once: they wait in RabbitMQ, and
        # the worker takes them one by one while Redis is down for 2 s. (The API's own
        # Celery result backend is on Redis too: results posted during the outage are
        # queued only after it, so the outage must find them already queued.) Each fails
        # at its first Redis call, before its ack, and waits for its retry. 2 s plus the
        # restart is shorter than the fitted retry's shortest wait (5 s): one retry does.
        workers = worker_pool.ensure(settings, count=1, concurrency=1, **NO_CLIENT_RETRIES, **env)
        n = 10
        kw = dict(batch_size=n, sim_threads=1, fault_at=0.2)

        def fault():
            faults.redis_down_for(stack, 2.0).join()
    else:
        # One worker process. The reset ack hangs for the run's whole ack time, so the ack
        # is retried through the policy. The job runs past the ack_wait (a slow service:
        # 2 s per image), so an unfitted retry would be redelivered.
        proxy = FaultProxy("127.0.0.1", stack.nats.port)
        proxy.start()
        workers = worker_pool.ensure(settings, count=1, concurrency=1, NATS_URL=f"nats://127.0.0.1:{proxy.port}",
                                     **NO_CLIENT_RETRIES, **env)
        n = 16
        kw = dict(batch_size=1, sim_threads=1, batch_seconds=2.0, fault_at=0.1)

        def fault():
            proxy.reset_next(match=b"+ACK", count=1)
            if not proxy.wait_fired(60):
                raise AssertionError("no ack was reset")
    start = {h: len(workers.logs(h)) for h in workers.hostnames}
    try:
        outcome = run_job(web.url, redis_direct, n, fault=fault, ack_wait=ACK_WAIT, timeout=180,
                          settle=lambda: stack.rabbitmq.queue_depth(platform.result_queue) == 0, **kw)
        if proxy is not None:
            assert proxy.resets_fired == 1, proxy.resets_fired
    finally:
        if proxy is not None:
            proxy.stop()
    worker_log = "".join(workers.logs(h)[offset:] for h, offset in start.items())
    print(outcome.summary())

    # What users see: the job succeeded, every image once, nothing failed.
    assert outcome.status == "SUCCESS", outcome.errors[-5:] or outcome.log[-5:]
    assert (outcome.processed, outcome.failed, outcome.results_processed) == (n, 0, n)
    assert outcome.detections == outcome.expected_detections and outcome.duplicate_detections == 0
    assert outcome.detections_counter == outcome.expected_detections
    assert outcome.redis_keys == [] and not outcome.stream_exists and not outcome.stream_lost_while_running
    assert not said(outcome, worker_log, "marked as FAILURE")

    # JetStream never redelivered: every task was acked inside its ack_wait.
    marker = f"Finalizing NATS consumer job-{outcome.job_id}-consumer"
    stats = outcome.consumer_at_cleanup() or consumer_stats(line for line in worker_log.splitlines() if marker in line)
    assert stats, "the consumer's counters at cleanup must be in the job log or the workers' output"
    # ``delivered`` is the consumer's sequence: n when no task was handed out twice.
    # (``num_redelivered`` counts only redelivered messages still unacked at that moment.)
    assert stats["delivered"] == n, f"NATS redelivered tasks the workers were still retrying: {stats}"
    assert stats["num_redelivered"] == 0, stats

    # The fault really hit result tasks, and the patch's fitted retry carried it.
    retries = retries_scheduled(outcome, worker_log)
    assert retries, "no result task was retried: the fault missed the result tasks"
    assert all(of == FITTED.max_retries and retry == 1 for _, retry, of in retries), retries
    assert all(countdown <= FITTED.cap for countdown, _, _ in retries), (retries, FITTED)
    assert not said(outcome, worker_log, "the Redis client retried"), "client retries were meant to be off"
    if platform.is_pre:
        assert said(outcome, worker_log, "Recovered from a transient redis error")
    else:
        assert said(outcome, worker_log, "Transient nats error while acknowledging the task")
