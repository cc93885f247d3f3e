"""The blip state machine: ``step(state, event, settings) -> (new_state, actions)``. Pure.

A *blip* starts when a watched pod loses readiness, restarts a container (restartCount
grows, even if Ready never flips), is deleted, is replaced (same name, new UID) or sits
in CrashLoopBackOff. A pod seen for the first time is a baseline, not a blip, unless it
is already in trouble. Trouble on any watched pod of any dependency is the blip; its id
is ``f"{dependency}-{start_ms}"`` (deterministic) and is on every action of that blip.

It is over when every watched pod is ready (none in CrashLoopBackOff, no deleted pod
waiting for its replacement) and stays so for ``settle_seconds``; trouble during the
settle wait restarts it. Then Celery resumes first and NATS only once the results the
workers held back are drained (``HeldResultsDrained``): resuming NATS earlier would
redeliver at once every task whose ack_wait ran out during the pause and whose result is
still on its way. A long pause can leave hundreds of results queued, so the wait is
bounded by progress, not by a fixed time: it gives up after ``drain_timeout_seconds``
without the count going down (``HeldResultsDraining``), or ``max_pause_seconds`` in all;
meanwhile NATS stays paused (``HoldNats`` at each renewal interval).
``CheckConsuming`` follows, because a resumed worker can silently stop consuming
(celery#7733). A pause lasts at most ``max_pause_seconds`` from the blip's start: then
the guard resumes anyway, goes ``degraded`` and does not pause again until the pods
recover, so a dependency that is really down fails jobs visibly instead of parking them.

Phases (``GuardState.phase``): ``watching``; ``paused`` from the Pause until NATS is
resumed (NATS is still held while the results drain); ``degraded``; ``suspended``.
Modes: ``active`` acts. ``observe-only`` is a dry run: the same detection, Reports and
counters, but no Pause/Renew/Resume; its phase stays ``watching`` during a blip (nothing
is paused; the BlipStarted report says "blip observed") and becomes ``degraded`` past
the max pause. ``suspended`` ignores every event. Leaving ``active`` resumes at once
(Celery and NATS together: the guard will not be around to finish a drain wait);
entering ``active`` mid-blip pauses for it; entering ``suspended`` forgets the pods, so
leaving it takes a fresh baseline instead of mistaking restarts it missed for new ones.
``ForceResume`` resumes at once and ends pausing for the current blip: the next pause
needs the pods to recover and trouble to start afresh.

Choices worth knowing:
- The event is applied before time advances to its ``now``: trouble seen at the moment
  a settle would end keeps the blip; the guard never resumes into known trouble.
- ``now`` never goes back: an event stamped earlier than one already seen (kopf runs
  handlers per pod concurrently) counts at the latest time seen.
- A deleted pod stays in the watch set as *missing* until a replacement shows up (same
  name, or any new pod of its dependency), so deleting the only Redis pod cannot count
  as "every pod ready". An intended scale-down therefore looks like a blip until the max
  pause; restart the guard (fresh baseline) after one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .model import (
    TROUBLE_WAITING_REASONS,
    Action,
    CheckConsuming,
    Dependency,
    Event,
    ForceResume,
    GuardSettings,
    HeldResultsDrained,
    HeldResultsDraining,
    HoldNats,
    Mode,
    Pause,
    Phase,
    PodObserved,
    Renew,
    Report,
    ReportReason,
    ResumeCelery,
    ResumeNats,
)

# --- state -------------------------------------------------------------------------


@dataclass(frozen=True)
class PodRecord:
    """The last known state of one watched pod."""

    dependency: Dependency
    name: str
    uid: str
    ready: bool
    crashloop: bool
    restarts: tuple[tuple[str, int], ...]  # (container, restartCount)
    missing: bool = False  # deleted, replacement not seen yet

    @property
    def healthy(self) -> bool:
        return self.ready and not self.crashloop and not self.missing


@dataclass(frozen=True)
class Blip:
    id: str
    dependency: Dependency  # of the pod whose trouble started it
    reason: str  # that first trouble
    started_at: float
    paused: bool  # our Pause is in force: renewed, not resumed yet
    renewed_at: float | None = None  # last Pause or Renew
    renewals: int = 0
    healthy_since: float | None = None  # every pod healthy since: the settle wait
    degraded: bool = False
    forced: bool = False  # on-call resumed it: no more pausing for it


@dataclass(frozen=True)
class Drain:
    """Celery resumed; NATS waits for the held results to drain."""

    blip_id: str
    since: float
    remaining: int | None = None  # held results still on their way, last counted
    progress_at: float | None = None  # when that count last went down (None: since)
    held_at: float | None = None  # last HoldNats (None: since)


@dataclass(frozen=True)
class Counters:
    blips_seen: int = 0
    pauses: int = 0
    renewals: int = 0
    degraded: int = 0
    forced_resumes: int = 0  # on-call's force-resumes that resumed something
    last_blip_seconds: float | None = None  # first trouble to the end of the settle wait


@dataclass(frozen=True)
class GuardState:
    mode: Mode = Mode.ACTIVE  # the mode the state was last stepped under
    pods: tuple[PodRecord, ...] = ()
    blip: Blip | None = None
    drain: Drain | None = None
    counters: Counters = Counters()
    now: float = -math.inf  # latest event time seen

    @property
    def phase(self) -> Phase:
        if self.mode is Mode.SUSPENDED:
            return Phase.SUSPENDED
        if self.blip is not None and self.blip.degraded:
            return Phase.DEGRADED
        if (self.blip is not None and self.blip.paused) or self.drain is not None:
            return Phase.PAUSED
        return Phase.WATCHING


def initial_state(settings: GuardSettings) -> GuardState:
    return GuardState(mode=settings.mode)


Step = tuple[GuardState, list[Action]]


# --- the step ----------------------------------------------------------------------


def step(state: GuardState, event: Event, settings: GuardSettings) -> Step:
    """Apply one event, then let time advance to its ``now``. A change of
    ``settings.mode`` since the last step is handled first."""
    if not isinstance(event, Event):
        raise TypeError(f"not a guard event: {event!r:.80}")
    now = max(state.now, event.now)
    state = replace(state, now=now)
    actions: list[Action] = []
    if settings.mode is not state.mode:
        state, actions = _change_mode(state, settings, now)
    if state.mode is Mode.SUSPENDED:
        return state, actions
    if isinstance(event, PodObserved):
        state, out = _observe(state, event, settings, now)
    elif isinstance(event, HeldResultsDrained):
        state, out = _resume_nats(state, "held results drained") if state.drain else (state, [])
    elif isinstance(event, HeldResultsDraining):
        state, out = _draining(state, event.remaining, now), []
    elif isinstance(event, ForceResume):
        state, out = _force_resume(state, event.by)
    else:
        out = []
    state, later = _advance(state, settings, now)
    return state, actions + out + later


# --- pods and trouble --------------------------------------------------------------


def _observe(state: GuardState, obs: PodObserved, settings: GuardSettings, now: float) -> Step:
    pods, trouble = _track(state.pods, obs)
    state = replace(state, pods=pods)
    if not trouble:
        return state, []
    reason = f"{obs.dependency} pod {obs.name} {', '.join(trouble)}"
    return _trouble(state, obs.dependency, reason, settings, now)


def _track(pods: tuple[PodRecord, ...], obs: PodObserved) -> tuple[tuple[PodRecord, ...], list[str]]:
    """The watch set after ``obs``, and what in ``obs`` is trouble (empty: none)."""
    old = next((p for p in pods if p.dependency is obs.dependency and p.name == obs.name), None)
    if old is not None and old.missing and old.uid == obs.uid:
        return pods, []  # a repeated delete, or a late update of a deleted pod
    others = [p for p in pods if p is not old]
    if obs.deleted:
        gone = PodRecord(obs.dependency, obs.name, obs.uid, False, False, (), missing=True)
        return _sorted(others + [gone]), ["deleted"]
    new = PodRecord(
        obs.dependency,
        obs.name,
        obs.uid,
        ready=obs.ready,
        crashloop=any(c.waiting_reason in TROUBLE_WAITING_REASONS for c in obs.containers),
        restarts=tuple((c.name, c.restart_count) for c in obs.containers),
    )
    trouble = []
    if old is None:
        # A new name can stand in for a deleted pod of its dependency (a Deployment's).
        stand_in = next((p for p in others if p.missing and p.dependency is obs.dependency), None)
        others = [p for p in others if p is not stand_in]
    elif old.uid != obs.uid:
        trouble.append("replaced (new UID)")
    else:
        trouble += _restarts(old, new)
    waiting = next((c.waiting_reason for c in obs.containers if c.waiting_reason in TROUBLE_WAITING_REASONS), None)
    if waiting is not None:
        trouble.append(f"in {waiting}")
    if not obs.ready:
        trouble.append("not ready")
    return _sorted(others + [new]), trouble


def _restarts(old: PodRecord, new: PodRecord) -> list[str]:
    before = dict(old.restarts)
    grown = [(name, before[name], count) for name, count in new.restarts if count > before.get(name, count)]
    if len(new.restarts) == 1:
        return [f"restarted (restartCount {was} -> {now})" for _, was, now in grown]
    return [f"restarted (container {name}: restartCount {was} -> {now})" for name, was, now in grown]


def _sorted(pods: list[PodRecord]) -> tuple[PodRecord, ...]:
    return tuple(sorted(pods, key=lambda p: (p.dependency, p.name)))


def _trouble(state: GuardState, dependency: Dependency, reason: str, settings: GuardSettings, now: float) -> Step:
    """Start a blip, or restart the settle wait of the one going on."""
    blip = state.blip
    if blip is not None:
        if blip.healthy_since is None:
            return state, []
        message = f"trouble while settling, blip continues: {reason}"
        return replace(state, blip=replace(blip, healthy_since=None)), [
            Report(blip.id, ReportReason.SETTLE_INTERRUPTED, message)
        ]
    blip_id = f"{dependency}-{round(now * 1000)}"
    acting = state.mode is Mode.ACTIVE
    blip = Blip(blip_id, dependency, reason, started_at=now, paused=acting, renewed_at=now if acting else None)
    counters = replace(
        state.counters, blips_seen=state.counters.blips_seen + 1, pauses=state.counters.pauses + acting
    )
    actions: list[Action] = []
    if acting:
        actions.append(Pause(blip_id, dependency, reason, settings.lease_seconds))
        message = f"blip started: {reason}; pausing result consumers (lease {_secs(settings.lease_seconds)} s)"
        if state.drain is not None:  # NATS was never resumed: this pause keeps holding it
            message += f"; NATS stays paused (its resume for {state.drain.blip_id} is cancelled)"
    else:
        message = f"blip observed: {reason} (observe-only: not pausing)"
    actions.append(Report(blip_id, ReportReason.BLIP_STARTED, message))
    return replace(state, blip=blip, drain=None, counters=counters), actions


# --- time ----------------------------------------------------------------------------


def _advance(state: GuardState, settings: GuardSettings, now: float) -> Step:
    """Settle, max pause, renewals and the drain wait, as of ``now``."""
    actions: list[Action] = []
    if state.blip is not None:
        state, actions = _advance_blip(state, state.blip, settings, now)
    if state.drain is not None:
        state, out = _advance_drain(state, state.drain, settings, now)
        actions += out
    return state, actions


def _draining(state: GuardState, remaining: int, now: float) -> GuardState:
    drain = state.drain
    if drain is None:
        return state
    if drain.remaining is None or remaining < drain.remaining:
        return replace(state, drain=replace(drain, remaining=remaining, progress_at=now))
    return replace(state, drain=replace(drain, remaining=remaining))


def _advance_drain(state: GuardState, drain: Drain, settings: GuardSettings, now: float) -> Step:
    progress_at = drain.since if drain.progress_at is None else drain.progress_at
    if now - progress_at >= settings.drain_timeout_seconds:
        if drain.remaining is None:
            why = f"drain wait timed out after {_secs(now - drain.since)} s"
        else:
            why = (f"held results stopped draining ({drain.remaining} still pending after "
                   f"{_secs(now - progress_at)} s without progress)")
        return _resume_nats(state, why)
    if now - drain.since >= settings.max_pause_seconds:
        left = "" if drain.remaining is None else f", {drain.remaining} still pending"
        return _resume_nats(state, f"drain longer than the max pause ({_secs(settings.max_pause_seconds)} s{left})")
    held_at = drain.since if drain.held_at is None else drain.held_at
    if now - held_at >= settings.renew_after_seconds:
        return replace(state, drain=replace(drain, held_at=now)), [HoldNats(drain.blip_id)]
    return state, []


def _advance_blip(state: GuardState, blip: Blip, settings: GuardSettings, now: float) -> Step:
    if not all(p.healthy for p in state.pods):
        blip = replace(blip, healthy_since=None)
    elif blip.healthy_since is None:
        blip = replace(blip, healthy_since=now)
    if blip.healthy_since is not None and now - blip.healthy_since >= settings.settle_seconds:
        return _recover(state, blip, now)
    if not (blip.degraded or blip.forced) and now - blip.started_at >= settings.max_pause_seconds:
        return _degrade(state, blip, settings, now)
    if blip.paused and now - blip.renewed_at >= settings.renew_after_seconds:
        blip = replace(blip, renewed_at=now, renewals=blip.renewals + 1)
        counters = replace(state.counters, renewals=state.counters.renewals + 1)
        renew = Renew(blip.id, blip.dependency, blip.reason, settings.lease_seconds)
        return replace(state, blip=blip, counters=counters), [renew]
    return replace(state, blip=blip), []


def _resume_celery(state: GuardState, blip: Blip, now: float) -> tuple[list[Action], Drain | None]:
    """A paused blip ends with Celery resumed and NATS held until the results drain."""
    if not blip.paused:
        return [], state.drain
    return [ResumeCelery(blip.id)], Drain(blip.id, now)


def _recover(state: GuardState, blip: Blip, now: float) -> Step:
    duration = now - blip.started_at
    message = f"recovered after {_secs(duration)} s"
    actions, drain = _resume_celery(state, blip, now)
    if blip.paused:
        renewals = _count(blip.renewals, "renewal")
        message += f" ({renewals}): Celery resumed, NATS resumes once the held results drain"
    elif blip.degraded:
        message += " (was degraded)"
    elif blip.forced:
        message += " (resumed earlier by force)"
    elif state.mode is Mode.OBSERVE_ONLY:
        message += " (observe-only)"
    actions.append(Report(blip.id, ReportReason.RECOVERED, message))
    counters = replace(state.counters, last_blip_seconds=duration)
    return replace(state, blip=None, drain=drain, counters=counters), actions


def _degrade(state: GuardState, blip: Blip, settings: GuardSettings, now: float) -> Step:
    limit = f"degraded: blip longer than the max pause ({_secs(settings.max_pause_seconds)} s)"
    actions, drain = _resume_celery(state, blip, now)
    if blip.paused:
        message = f"{limit}; resuming anyway, no new pause until the pods recover; first trouble: {blip.reason}"
    else:
        message = f"{limit} (observe-only: nothing to resume); first trouble: {blip.reason}"
    actions.append(Report(blip.id, ReportReason.DEGRADED, message))
    blip = replace(blip, degraded=True, paused=False)
    counters = replace(state.counters, degraded=state.counters.degraded + 1)
    return replace(state, blip=blip, drain=drain, counters=counters), actions


# --- resuming ----------------------------------------------------------------------


def _resume_nats(state: GuardState, why: str) -> Step:
    blip_id = state.drain.blip_id
    report = Report(blip_id, ReportReason.NATS_RESUMED, f"NATS resumed: {why}")
    return replace(state, drain=None), [ResumeNats(blip_id), CheckConsuming(blip_id), report]


def _resume_now(state: GuardState) -> tuple[GuardState, list[Action], str | None]:
    """Resume whatever of ours is paused, Celery and NATS at once; the resumed blip's id."""
    blip, drain = state.blip, state.drain
    paused = blip is not None and blip.paused
    blip_id = blip.id if paused else drain.blip_id if drain is not None else None
    if blip_id is None:
        return state, [], None
    actions: list[Action] = [ResumeCelery(blip_id)] if paused else []
    actions += [ResumeNats(blip_id), CheckConsuming(blip_id)]
    if paused:
        blip = replace(blip, paused=False)
    return replace(state, blip=blip, drain=None), actions, blip_id


def _force_resume(state: GuardState, by: str) -> Step:
    current = state.blip.id if state.blip is not None else None
    state, actions, resumed = _resume_now(state)
    if state.blip is not None:
        state = replace(state, blip=replace(state.blip, forced=True))
    if resumed:
        state = replace(state, counters=replace(state.counters, forced_resumes=state.counters.forced_resumes + 1))
    done = "resumed at once" if resumed else "nothing paused"
    report = Report(resumed or current, ReportReason.FORCE_RESUMED, f"force resume by {by}: {done}")
    return state, actions + [report]


def _change_mode(state: GuardState, settings: GuardSettings, now: float) -> Step:
    old, new = state.mode, settings.mode
    state = replace(state, mode=new)
    actions: list[Action] = []
    notes = []
    resumed = None
    if old is Mode.ACTIVE:
        state, actions, resumed = _resume_now(state)
        if resumed:
            notes.append("resumed at once")
    blip_id = resumed or (state.blip.id if state.blip is not None else None)
    if new is Mode.SUSPENDED:
        state = replace(state, pods=(), blip=None, drain=None)
    elif new is Mode.ACTIVE and state.blip is not None and not (state.blip.degraded or state.blip.forced):
        blip = replace(state.blip, paused=True, renewed_at=now)
        actions.append(Pause(blip.id, blip.dependency, blip.reason, settings.lease_seconds))
        notes.append(f"pausing for the ongoing blip: {blip.reason}")
        state = replace(state, blip=blip, counters=replace(state.counters, pauses=state.counters.pauses + 1))
    message = f"mode {old} -> {new}" + "".join(f"; {note}" for note in notes)
    return state, actions + [Report(blip_id, ReportReason.MODE_CHANGED, message)]


# --- wording -----------------------------------------------------------------------


def _secs(seconds: float) -> str:
    return f"{seconds:.0f}" if float(seconds).is_integer() else f"{seconds:.1f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
