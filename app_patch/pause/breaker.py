"""The in-worker breaker: a worker that keeps failing to reach a dependency pauses its own
result queue and stays paused, without spending retries, until it can reach it again.

``step`` is the whole policy, pure: events in, decisions out. The edges feed it:

- the result task (prefork child): ``on_transient`` / ``on_success``; the failure count and
  the breaker's lease live on the pause board, shared by the worker's children;
- the worker's main process (worker.py): the probe loop (``PROBE_OK`` / ``PROBE_FAILED``)
  and lease expiry (``LEASE_EXPIRED``).

A breaker hold has a lease like any pause, but the lease only schedules the next look:
while the probe fails the hold is extended, for an outage of any length, and it ends as
soon as the probe answers. It composes with the operator: the operator pauses on what
Kubernetes reports and bounds its own pause; when it gives up and resumes, a worker that
still cannot reach the dependency stays held by its breaker (an operator resume does not
end a breaker lease, see ``leases.Leases.resume``).
"""

import logging
import time
from dataclasses import dataclass
from enum import Enum

from ..errors import ConfigurationError, describe
from . import board
from .leases import BREAKER

logger = logging.getLogger("blipguard.pause")

PROBED = ("redis", "nats")  # dependencies the worker knows how to probe


class Event(Enum):
    TRANSIENT = "transient error"
    SUCCESS = "success"
    PROBE_OK = "probe ok"
    PROBE_FAILED = "probe failed"
    LEASE_EXPIRED = "lease expired"


class Decision(Enum):
    TRIP = "pause and start probing"
    EXTEND = "stay paused: extend the lease"
    RESUME = "end the breaker's pause"


@dataclass(frozen=True)
class State:
    failures: int = 0  # consecutive transient errors, this worker, one dependency
    holding: bool = False  # a breaker pause is in force


def step(state: State, event: Event, threshold: int | None = None) -> tuple[State, Decision | None]:
    """The next state and what to do. `threshold` (BREAKER_THRESHOLD) is needed for TRANSIENT."""
    if event is Event.TRANSIENT:
        if threshold is None or threshold < 1:
            raise ConfigurationError(f"BREAKER_THRESHOLD must be >= 1, got {threshold}")
        n = state.failures + 1
        # At or past the threshold, not just at it: a streak that outlives a hold trips again.
        if not state.holding and n >= threshold:
            return State(n, True), Decision.TRIP
        return State(n, state.holding), None
    if event is Event.SUCCESS:
        return State(0, state.holding), None
    if not state.holding:
        return state, None
    if event is Event.PROBE_OK:
        return State(0, False), Decision.RESUME
    return state, Decision.EXTEND  # PROBE_FAILED, LEASE_EXPIRED: the probe has not answered


def renewal(remaining: float, lease: float, cadence: float) -> float | None:
    """While the probe fails: how long to extend the hold by now, or None (not yet).

    Once half the lease is gone (one control message per half lease, not per probe), and
    always by enough to outlast the next probes (`cadence`: probe interval + timeout), so
    the hold never lapses between two probes even when the lease is short."""
    extend_by = max(lease, 3 * cadence)
    return extend_by if remaining <= max(lease / 2, 2 * cadence) else None


# -- the result task's edge (runs in the prefork child) ------------------------------
def on_transient(task, dependency: str, exc: BaseException, cfg) -> None:
    """Count a transient error to `dependency` for this worker; at the threshold, write the
    breaker's lease to the board (this and every sibling child hold back at once) and ask
    this worker's main process to pause its result queue and probe the dependency."""
    b = board.current()
    if not cfg.breaker or b is None or dependency not in PROBED:
        return
    decisions = []

    def count(data: dict) -> dict:
        now = time.time()
        failures = data.get("failures", {})
        held = data.get("breaker", {}).get(dependency, 0) > now
        state, decision = step(State(failures.get(dependency, 0), held), Event.TRANSIENT, cfg.breaker_threshold)
        decisions.append(decision)
        data = {**data, "failures": {**failures, dependency: state.failures}}
        if decision is Decision.TRIP:
            data = with_breaker_lease(data, dependency, now + cfg.breaker_lease, _reason(cfg, exc))
        return data

    b.update(count)
    if decisions[0] is not Decision.TRIP:
        return
    from .worker import PAUSE

    reason = _reason(cfg, exc)
    logger.warning("breaker tripped for %s on %s: %s", dependency, task.request.hostname, reason)
    task.app.control.broadcast(
        PAUSE,
        arguments={"lease": cfg.breaker_lease, "reason": reason, "dependency": dependency, "source": BREAKER},
        destination=[task.request.hostname],
    )


def on_success() -> None:
    """A result went through: the failure streak is over, and so are the Sentry blips quiet
    for long enough (``sentry.on_success``). One read of the board for both."""
    from .. import sentry

    b = board.current()
    data = b.read() if b is not None else None
    if data is not None and data.get("failures"):
        b.update(lambda d: {**d, "failures": {}})
    sentry.on_success(board_data=data)


def _reason(cfg, exc: BaseException) -> str:
    return f"{cfg.breaker_threshold} consecutive transient errors, last: {describe(exc)}"[:200]


def with_breaker_lease(data: dict, dependency: str, until: float, reason: str) -> dict:
    leases = dict(data.get("leases", {}))
    if leases.get(dependency, {}).get("until", 0) < until:
        leases[dependency] = {"until": until, "reason": reason}
    return {**data, "leases": leases, "breaker": {**data.get("breaker", {}), dependency: until}}
