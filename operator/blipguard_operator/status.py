"""The guard's ``status``, built from the machine's state (pure: no client, no clock)."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace

from .blip import Blip, Counters, Drain, GuardState, Step, initial_state
from .crd import BlipField, Counter, DrainField, StatusField
from .model import Dependency, GuardSettings, Mode, Phase, Report, ReportReason


def rfc3339(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(value) -> float | None:
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


@dataclass
class Observations:
    """What the I/O side learned that the machine does not track."""

    spec_error: str | None = None
    broker_error: str | None = None  # the pause channel failed (unreachable broker, bad secret)
    unprotectable: str | None = None  # the pause channel runs through a guarded dependency
    workers_confirmed: int | None = None  # answered the last pause/renew
    not_consuming: list[str] = field(default_factory=list)  # "worker: queue, ..." after a resume
    force_resume_handled: str | None = None  # the last force-resume annotation value acted on
    transitions: dict[str, str] = field(default_factory=dict)  # condition type -> since


def _condition(obs: Observations, now: float, ctype: str, ok: bool, reason: str, message: str) -> dict:
    status = "True" if ok else "False"
    key = f"{ctype}={status}"
    since = obs.transitions.get(key)
    if since is None:  # a new status for this type: it transitions now
        for k in [k for k in obs.transitions if k.startswith(ctype + "=")]:
            del obs.transitions[k]
        since = obs.transitions[key] = rfc3339(now)
    return {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": since}


def build(state: GuardState, obs: Observations, now: float, generation: int | None) -> dict:
    phase = state.phase
    blip = state.blip
    c = state.counters
    conditions = []
    if obs.spec_error:
        conditions.append(_condition(obs, now, "SpecValid", False, "InvalidSpec", obs.spec_error))
    else:
        conditions.append(_condition(obs, now, "SpecValid", True, "Valid", "the spec is valid"))
    if phase is Phase.PAUSED:
        why = blip.reason if blip is not None and blip.paused else "the results held back are draining"
        conditions.append(_condition(obs, now, "Paused", True, "Blip", f"result consumers paused: {why}"))
    else:
        conditions.append(_condition(obs, now, "Paused", False, "NoBlip" if blip is None else "NotPausing",
                                     "result consumers not paused by this guard"))
    if phase is Phase.DEGRADED:
        conditions.append(_condition(obs, now, "Degraded", True, "MaxPauseReached",
                                     f"blip outlasted the maximum pause; resumed anyway: {blip.reason}"))
    else:
        conditions.append(_condition(obs, now, "Degraded", False, "WithinLimits", "not degraded"))
    if obs.not_consuming:
        conditions.append(_condition(obs, now, "Consuming", False, "WorkersNotConsuming",
                                     "after the resume these workers do not consume their result queue: "
                                     + "; ".join(obs.not_consuming)))
    else:
        conditions.append(_condition(obs, now, "Consuming", True, "AllConsuming",
                                     "every worker that answered consumes its result queues"))
    if obs.unprotectable:
        conditions.append(_condition(obs, now, "Protectable", False, "PauseChannelThroughDependency",
                                     obs.unprotectable))
    else:
        conditions.append(_condition(obs, now, "Protectable", True, "SeparateChannel",
                                     "the pause channel does not run through a guarded dependency"))
    problem = obs.spec_error or obs.broker_error
    conditions.append(_condition(obs, now, "Ready", problem is None, "Error" if problem else "Watching",
                                 problem or f"guard is {phase}"))
    return {
        "phase": str(phase),
        "observedGeneration": generation,
        "blip": None if blip is None else {
            "id": blip.id,
            "dependency": str(blip.dependency),
            "reason": blip.reason,
            "since": rfc3339(blip.started_at),
        },
        "counters": {
            "blips": c.blips_seen,
            "pauses": c.pauses,
            "renewals": c.renewals,
            "degraded": c.degraded,
            "forcedResumes": c.forced_resumes,
        },
        "drain": None if state.drain is None else {
            "blipId": state.drain.blip_id,
            "since": rfc3339(state.drain.since),
            "remaining": state.drain.remaining,
        },
        "lastBlipSeconds": None if c.last_blip_seconds is None else round(c.last_blip_seconds, 3),
        "workersConfirmed": obs.workers_confirmed,
        "forceResumeHandled": obs.force_resume_handled,
        "conditions": conditions,
    }


def restore(status: dict | None, settings: GuardSettings, now: float) -> Step:
    """The state a restarted operator starts from: the blip (and its pause), the drain and
    the counters its predecessor wrote to ``status``. A pause taken up again is renewed at
    the first step (its lease may be about to run out on the workers) and its settle wait
    starts afresh; a drain's wait starts afresh. Anything unreadable starts clean."""
    status = status or {}
    state = initial_state(settings)
    counts = status.get(StatusField.COUNTERS) or {}
    last = status.get(StatusField.LAST_BLIP_SECONDS)
    state = replace(state, counters=Counters(
        blips_seen=_int(counts.get(Counter.BLIPS)), pauses=_int(counts.get(Counter.PAUSES)),
        renewals=_int(counts.get(Counter.RENEWALS)), degraded=_int(counts.get(Counter.DEGRADED)),
        forced_resumes=_int(counts.get(Counter.FORCED_RESUMES)),
        last_blip_seconds=float(last) if isinstance(last, (int, float)) and last >= 0 else None))
    phase = status.get(StatusField.PHASE)
    if phase == Phase.SUSPENDED:
        return state, []
    paused = phase == Phase.PAUSED
    active = replace(state, mode=Mode.ACTIVE)  # only an active guard pauses; a mode changed since
    # is then handled at the first step
    blip, drain = status.get(StatusField.BLIP) or {}, status.get(StatusField.DRAIN) or {}
    since = _epoch(blip.get(BlipField.SINCE))
    if blip.get(BlipField.ID) and blip.get(BlipField.DEPENDENCY) in set(Dependency) and since is not None:
        forced = phase == Phase.WATCHING and state.mode is Mode.ACTIVE  # a blip an active guard does not hold
        state = active if paused else state
        restored = Blip(str(blip[BlipField.ID]), Dependency(blip[BlipField.DEPENDENCY]),
                        str(blip.get(BlipField.REASON) or "unknown"), started_at=since, paused=paused,
                        renewed_at=-math.inf if paused else None, degraded=phase == Phase.DEGRADED, forced=forced)
        doing = "renewing the pause; the settle wait starts again" if paused else f"phase {phase}"
        return replace(state, blip=restored), [Report(restored.id, ReportReason.RESTORED,
                                                      f"operator restarted mid-blip: taken up from status, {doing}")]
    if paused and drain.get(DrainField.BLIP_ID):
        blip_id = str(drain[DrainField.BLIP_ID])
        return replace(active, drain=Drain(blip_id, now)), [Report(
            blip_id, ReportReason.RESTORED,
            "operator restarted while the held results drained: NATS stays paused until they have")]
    return state, []


def _int(value) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
