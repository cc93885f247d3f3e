"""The current platform's stale-job reapers must not reap a job held by a pause.

``jobs_health_check`` (beat, every 15 min) runs ``mark_lost_images_failed`` and
``check_stale_jobs``, which act on running jobs whose ``updated_at`` is older than
``Job.STALLED_JOBS_MAX_MINUTES`` (10 min). A pause writes nothing to a job, so a pause of
10 min or more would mark the job's pending images failed and complete it with them. While
this worker is paused the reapers are deferred; after a pause, the time spent paused does
not count toward the cutoff.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time

from .pause import board

logger = logging.getLogger("blipguard.reaper")

REAPERS = ("mark_lost_images_failed", "check_stale_jobs")


def cutoff_minutes(minutes: float, now: float, paused_since: float | None,
                   last_pause: tuple[float, float] | None) -> float | None:
    """The cutoff to reap with, or None to defer (pure). A pause that ended within the
    cutoff's window adds its length, so a job is stale only after ``minutes`` unpaused."""
    if paused_since is not None:
        return None
    if last_pause is not None:
        since, ended = last_pause
        if now - ended < minutes * 60 + (ended - since):
            return minutes + (ended - since) / 60
    return minutes


def applies(original) -> bool:
    """Only reapers that take a ``minutes`` cutoff (the current platform's)."""
    try:
        return "minutes" in inspect.signature(original).parameters
    except (TypeError, ValueError):
        return False


def wrap(original, default_minutes):
    @functools.wraps(original)
    def reaper(minutes=None, dry_run=False, **kwargs):
        base = default_minutes() if minutes is None else minutes
        span = board.pause_span()
        cutoff = cutoff_minutes(base, time.time(), span["paused_since"], span["last"])
        if cutoff is None:
            held = board.paused_for() or {}
            logger.warning("%s deferred: result consumers are paused (%s: %s)", original.__name__,
                           held.get("dependency", "?"), held.get("reason", ""))
            return []
        if cutoff != base:
            logger.info("%s: cutoff %.1f min (%.1f min + the last pause)", original.__name__, cutoff, base)
        return original(minutes=cutoff, dry_run=dry_run, **kwargs)

    return reaper
