"""The fixed result task: transient failures retry, terminal ones fail accurately.

Order of work, per result: validate -> state `process` -> progress -> save results ->
confirmed NATS ack -> state `results` -> progress. Every step is idempotent, so a retried
or redelivered result never double-counts: progress comes from Redis set sizes, counters
are added only by the call that moved the image out of the pending set, and the host's
save is keyed by image.
"""

import asyncio
import logging
import time

from . import messages
from .classify import classify
from .context import working_for
from .errors import InvalidResult, JobStateMissing, TransientDependencyError, describe
from .host import Host, current_host
from .pause import board
from .pause.leases import record_failure
from .payload import ParsedResult, best_image_id, parse_result
from .policy import policy_for

logger = logging.getLogger(__name__)

RETRY_KWARG = "blipguard_retry"
FINAL_STATUSES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "CANCELED", "CANCELLED"})


def run(task, job_id: int, result_data, reply_subject: str, blipguard_retry: dict | None = None, **_):
    host = current_host()
    job = host.job(job_id)
    status = getattr(job, "status", None)
    job_logger = host.job_logger(job_id, job)
    if status in FINAL_STATUSES:
        # A late result for a job that already ended: its stream and consumer are gone
        # with its cleanup, so there is nothing to ack and nothing to change.
        logger.info("result for job %s ignored: the job is already %s", job_id, status)
        return
    held = board.paused_for()
    if held:
        _hold_back(task, job_logger, held)
    retry_info = dict(blipguard_retry or {})
    with working_for(job_id, task.request.id):
        try:
            parsed = _parse(host, job_id, result_data, reply_subject, job_logger)
            if parsed is not None:
                _process(host, job_id, parsed, result_data, reply_subject, job_logger)
        except JobStateMissing as e:
            job = host.job(job_id)
            if getattr(job, "status", None) in FINAL_STATUSES:
                return  # another result already ended the job and cleaned up
            _ack_quietly(host, reply_subject, job_logger)
            host.fail_job(job_id, str(e))
            return
        except Exception as e:
            c = classify(e)
            if not c.transient:
                raise
            dependency = c.dependency or "a dependency"
            _trip_breaker(task, host, dependency, e)
            held = board.paused_for()
            if held:
                _hold_back(task, job_logger, held, e)
            _retry_or_give_up(task, host, job_id, e, dependency, retry_info, job_logger)
            return
    _breaker_success()
    if retry_info:
        waited = time.time() - retry_info.get("first_failure", time.time())
        job_logger.info(messages.recovered(retry_info.get("dependency", "dependency"), task.request.retries, waited))


def _parse(host: Host, job_id: int, data, reply_subject: str, job_logger) -> ParsedResult | None:
    try:
        return parse_result(data)
    except InvalidResult as e:
        image_id = task_image_id(host, reply_subject)
        if image_id is None:
            image_id = e.image_id if e.image_id is not None else best_image_id(data)
        if image_id is None:
            job_logger.error(
                messages.invalid_result(None, e.problem) + " The task could not be matched to an image;"
                " it is acknowledged so it is not redelivered with the same payload."
            )
            _ack_quietly(host, reply_subject, job_logger)
            return None
        return ParsedResult((image_id,), (image_id,), e.problem, 0, invalid=True)


def _process(host: Host, job_id: int, r: ParsedResult, data, reply_subject: str, job_logger) -> None:
    state = host.state_manager(job_id)
    p = state.update_state(list(r.image_ids), stage="process", failed_image_ids=list(r.failed_ids))
    if p.newly_done == 0 and r.error is None:
        # Nothing moved: a duplicate, or a result naming images outside the job.
        expected = task_image_id(host, reply_subject)
        if expected is not None and expected not in r.image_ids:
            problem = f"result names image(s) {list(r.image_ids)}, but the task was for image {expected}"
            invalid = ParsedResult((expected,), (expected,), problem, 0, invalid=True)
            return _process(host, job_id, invalid, data, reply_subject, job_logger)
    host.update_progress(job_id, "process", p.percentage, processed=p.processed, remaining=p.remaining, failed=p.failed)
    if r.error is not None:
        if p.newly_done:
            log = messages.invalid_result if r.invalid else messages.service_error
            job_logger.error(log(r.image_ids[0], r.error))
    else:
        host.save_results(data, job_id)
    if not host.ack(reply_subject, job_logger):
        raise TransientDependencyError("nats", "JetStream did not confirm the ack", "acknowledging the task")
    s = state.update_state(list(r.image_ids), stage="results")
    host.update_progress(
        job_id,
        "results",
        s.percentage,
        processed=s.processed,
        remaining=s.remaining,
        failed=s.failed,
        detections=r.detections if s.newly_done else 0,
    )


def _retry_or_give_up(task, host: Host, job_id: int, exc: Exception, dependency: str, info: dict, job_logger):
    now = time.time()
    info.setdefault("first_failure", now)
    info["dependency"] = dependency
    policy = policy_for(host)
    done = task.request.retries
    operation = exc.operation if isinstance(exc, TransientDependencyError) and exc.operation else "processing a result"
    cause = exc.cause if isinstance(exc, TransientDependencyError) else exc
    if done < policy.max_retries:
        countdown = policy.countdown(done)
        job_logger.warning(messages.transient(dependency, operation, cause, done + 1, policy.max_retries, countdown))
        kwargs = {**(task.request.kwargs or {}), RETRY_KWARG: info}
        raise task.retry(countdown=countdown, max_retries=policy.max_retries, exc=exc, kwargs=kwargs)
    host.fail_job(job_id, messages.retries_exhausted(done, now - info["first_failure"], dependency, cause))


def _hold_back(task, job_logger, held: dict, exc: Exception | None = None):
    """While the worker is paused, send the task back to the broker untouched: no Redis,
    no retry spent. It waits in the queue until the pause ends."""
    from celery.exceptions import Ignore

    req = task.request
    task.signature_from_request(req, req.args, req.kwargs, retries=req.retries).apply_async()
    why = f" after {describe(exc)}" if exc is not None else ""
    job_logger.info(
        f"Result held back{why}: workers are paused while {held['dependency']} is down ({held['reason']}); "
        "it returns to the queue without spending a retry."
    )
    raise Ignore()


def _trip_breaker(task, host: Host, dependency: str, exc: Exception) -> None:
    cfg = host.config
    b = board.current()
    if not cfg.breaker or b is None or dependency not in ("redis", "nats"):
        return
    tripped = []

    def count(d: dict) -> dict:
        failures, trip = record_failure(d.get("failures", {}), dependency, cfg.breaker_threshold)
        tripped.append(trip)
        return {**d, "failures": failures}

    b.update(count)
    if not tripped[0] or board.paused_for():
        return
    from .pause.worker import PAUSE

    reason = f"{cfg.breaker_threshold} consecutive transient errors, last: {describe(exc)}"[:200]
    logger.warning("breaker tripped for %s on %s: %s", dependency, task.request.hostname, reason)
    b.update(lambda d: {**d, "leases": {**d.get("leases", {}), dependency: {"until": time.time() + cfg.breaker_lease, "reason": reason}}})
    task.app.control.broadcast(
        PAUSE,
        arguments={"lease": cfg.breaker_lease, "reason": reason, "dependency": dependency, "source": "breaker"},
        destination=[task.request.hostname],
    )


def _breaker_success() -> None:
    b = board.current()
    if b is not None and b.read().get("failures"):
        b.update(lambda d: {**d, "failures": {}})


def _ack_quietly(host: Host, reply_subject: str, job_logger) -> None:
    try:
        host.ack(reply_subject, job_logger)
    except Exception as e:  # settling a message for a finished job is best effort
        logger.warning("could not acknowledge %s: %s", reply_subject, e)


def task_image_id(host: Host, reply_subject: str) -> int | None:
    """The image the NATS task was for, read back from the stream by its sequence."""
    from .ack import stream_and_seq

    where = stream_and_seq(reply_subject)
    if where is None:
        return None

    async def read() -> int | None:
        async with host.target("QUEUE_MANAGER")() as manager:
            msg = await manager.js.get_msg(*where)
            import json

            return int(json.loads(msg.data)["image_id"])

    try:
        return asyncio.run(read())
    except Exception as e:
        logger.info("could not read the task behind %s: %s", reply_subject, e)
        return None
