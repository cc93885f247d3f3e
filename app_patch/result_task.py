"""The wrapper around the host's result task: its body runs unchanged inside.

What the wrapper adds, on both platform versions:
- a transient failure is retried with a bounded backoff fitted inside the consumer's
  ack_wait, never turned into a failed job; the pre-fix body's swallowed errors (after its
  ack) and an ack JetStream did not confirm are retried too (see context.py);
- where the host retries by itself (``autoretry_for``), its retries are kept and written
  to the job's own log, and when they run out the job is failed with the real cause
  instead of waiting in STARTED for a reaper;
- while the worker is paused, results go back to the broker untouched (no Redis, no
  retry spent); the in-worker breaker is fed;
- an unconfirmed ack is retried alone: the body, whose counters are already written,
  does not run twice.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

from . import context, messages, metrics, sentry
from .ack import ACK_AGAIN, ack_time_left
from .classify import classify
from .errors import TransientDependencyError, describe
from .pause import board, breaker
from .policy import policy_for

logger = logging.getLogger(__name__)

HEADER = "blipguard"  # retry history carried in the Celery message headers


def wrap_run(task, original, host):
    """A ``run`` for ``task`` that calls ``original`` (the host's, held in this closure)."""

    @functools.wraps(original)
    def run(*args, **kwargs):
        return _run(task, original, host, args, kwargs)

    return run


def _arguments(args, kwargs) -> tuple[int, str]:
    names = ("job_id", "result_data", "reply_subject")
    values = dict(zip(names, args), **kwargs)
    return values["job_id"], values["reply_subject"]


def retry_info(request) -> dict:
    info = getattr(request, HEADER, None) or (getattr(request, "headers", None) or {}).get(HEADER)
    return dict(info) if isinstance(info, dict) else {}


def _run(task, original, host, args, kwargs):
    job_id, reply_subject = _arguments(args, kwargs)
    info = retry_info(task.request)
    held = board.paused_for()
    if held:
        _hold_back(task, host, job_id, info, held)
    run = context.TaskRun(job_id, delivery=task.request.id)
    with context.running(run):
        if info.get("ack_only"):
            host.helper("ACK")(reply_subject, host.job_logger(job_id))
        else:
            try:
                original(*args, **kwargs)
            except Exception as e:
                _failed(task, host, job_id, e, run, info)
                raise
        if run.transient is not None:  # the pre-fix body swallowed it after its ack
            _transient(task, host, job_id, run.transient, info, ack_only=False)
        elif run.ack_unconfirmed is not None and run.missing_state is None and not _ended(host, job_id):
            cause = TransientDependencyError("nats", run.ack_unconfirmed, "acknowledging the task")
            if not _ack_again(host, job_id, reply_subject, run, cause):
                _transient(task, host, job_id, cause, info, ack_only=True)
    breaker.on_success()  # the breaker's streak and Sentry's blips: one board read
    metrics.inc("results_processed")
    held = info.get("held")
    if held and board.first_time(f"resumed:{job_id}:{held.get('reason', '')}"):
        host.job_logger(job_id).info(messages.resumed(held.get("dependency", "a dependency"), held.get("reason", ""),
                                                      time.time() - held.get("since", time.time())))
    if info.get("first_failure"):
        waited = time.time() - info["first_failure"]
        host.job_logger(job_id).info(messages.recovered(info.get("dependency", "a dependency"), task.request.retries, waited))


def _ended(host, job_id: int) -> bool:
    """The job is final: its stream went with its cleanup (on the current platform the last
    result acks after the cleanup it triggered), so there is nothing left to ack."""
    job = host.job(job_id)
    return job is None or job.status in messages.FINAL_STATUSES


def _ack_again(host, job_id: int, reply_subject: str, run, cause) -> bool:
    """Re-ack at once, a couple of times, before falling back to a Celery retry: the ack is
    cheap, and a retry waits behind every result queued meanwhile. Only while this run's
    ack time lasts: the retry policy is fitted to that (ack.ack_time_left)."""
    job_logger = host.job_logger(job_id)
    for attempt, pause in enumerate(ACK_AGAIN, start=2):
        if ack_time_left(run, host.config.ack_timeout) < pause + 0.05:
            return False
        threading.Event().wait(pause)
        run.ack_spent += pause
        host.helper("ACK")(reply_subject, job_logger)
        if run.ack_unconfirmed is None:
            job_logger.warning(messages.transient_acked(cause.cause, attempt))
            return True
    return False


def _failed(task, host, job_id: int, exc: Exception, run, info: dict) -> None:
    """The body raised. Retry a transient cause; let anything else through unchanged."""
    from celery.exceptions import Retry

    if isinstance(exc, Retry):  # the host's own autoretry scheduled a retry
        _note_host_retry(task, host, job_id, exc, run)
        return
    c = classify(exc)
    if not c.transient:
        return
    if isinstance(exc, tuple(getattr(task, "autoretry_for", None) or ())):
        # The host retries this by itself: reaching here means its retries ran out.
        _give_up(task, host, job_id, exc, c.dependency, info, seconds=None)
        return
    _transient(task, host, job_id, exc, info, ack_only=False)


def _note_host_retry(task, host, job_id: int, retry, run) -> None:
    cause = retry.exc
    dependency = classify(cause).dependency if cause is not None else ""
    _count_transient(dependency, run.stage)
    metrics.inc("result_retries", dependency=metrics.dependency_label(dependency))
    breaker.on_transient(task, dependency, cause, host.config)
    if cause is not None:
        sentry.transient(dependency, run.stage, cause, task.request.retries, job_id)
    if "process" in run.newly:
        return  # past the first stage the host writes this to the job log itself
    when = retry.when
    countdown = when if isinstance(when, (int, float)) else None
    host.job_logger(job_id).warning(
        messages.host_retry(dependency or "a dependency", cause, task.request.retries + 1, task.max_retries, countdown)
    )


def _transient(task, host, job_id: int, exc: BaseException, info: dict, ack_only: bool) -> None:
    """Retry (raises celery's Retry) or, when the retries are used up, fail the job."""
    from celery.exceptions import Ignore

    dependency = classify(exc).dependency or "a dependency"
    job = host.job(job_id)
    if job is None or job.status in messages.FINAL_STATUSES:
        logger.info("job %s ended meanwhile; not retrying after %s", job_id, describe(exc))
        raise Ignore()
    info = {**info, "dependency": dependency, "ack_only": ack_only}
    info.setdefault("first_failure", time.time())
    run = context.current()
    stage = "ack" if ack_only or run is None else run.stage
    _count_transient(dependency, stage)
    breaker.on_transient(task, dependency, exc, host.config)
    sentry.transient(dependency, stage, exc.cause if isinstance(exc, TransientDependencyError) else exc,
                     task.request.retries, job_id)
    held = board.paused_for()
    if held:
        _hold_back(task, host, job_id, info, held, exc)
    policy = policy_for(host)
    done = task.request.retries
    operation = exc.operation if isinstance(exc, TransientDependencyError) and exc.operation else "processing a result"
    cause = exc.cause if isinstance(exc, TransientDependencyError) else exc
    if done >= policy.max_retries:
        _give_up(task, host, job_id, cause, dependency, info, seconds=time.time() - info["first_failure"])
        raise Ignore()
    countdown = policy.countdown(done)
    metrics.inc("result_retries", dependency=metrics.dependency_label(dependency))
    job.logger.warning(messages.transient(dependency, operation, cause, done + 1, policy.max_retries, countdown))
    raise task.retry(countdown=countdown, max_retries=policy.max_retries, exc=exc, headers={HEADER: info})


def _count_transient(dependency: str, stage: str | None) -> None:
    metrics.inc("transient_errors", dependency=metrics.dependency_label(dependency),
                stage=metrics.stage_label(stage))


def _give_up(task, host, job_id: int, cause, dependency: str, info: dict, seconds: float | None) -> None:
    if seconds is None and info.get("first_failure"):
        seconds = time.time() - info["first_failure"]
    metrics.inc("retries_exhausted", dependency=metrics.dependency_label(dependency))
    # A streak of transient errors is what exhausts retries: only a pause in force (the
    # results should have been held back, not retried) makes this one "during a blip".
    during_blip = board.paused_for() is not None
    metrics.job_failed("retries_exhausted", during_blip, job_id)
    message = messages.retries_exhausted(task.request.retries, seconds, dependency, cause)
    run = context.current()
    sentry.terminal("retries_exhausted", dependency, run.stage if run else None, f"Job {job_id} failed: {message}",
                    task.request.retries, job_id, during_blip)
    host.fail_job(job_id, message)


def _hold_back(task, host, job_id: int, info: dict, held: dict, exc: BaseException | None = None):
    """While the worker is paused, send the task back to the broker untouched: no Redis,
    no retry spent. It waits in the queue until the pause ends."""
    from celery.exceptions import Ignore

    req = task.request
    info = {**info, "held": info.get("held") or {"dependency": held["dependency"], "reason": held["reason"],
                                                 "since": time.time()}}
    options = {"headers": {HEADER: info}}
    task.signature_from_request(req, req.args, req.kwargs, retries=req.retries, **options).apply_async()
    metrics.inc("results_held_back", dependency=metrics.dependency_label(held["dependency"]))
    host.job_logger(job_id).info(messages.held_back(held["dependency"], held["reason"], exc))
    raise Ignore()
