"""Drive a fleet's pause from outside the workers (the operator, tests, on-call)."""

from dataclasses import dataclass

from .worker import PAUSE, RESUME, STATUS

CONNECT_RETRIES = 3


class BrokerUnreachable(ConnectionError):
    """The control message could not be sent: no worker was asked anything."""


@dataclass
class FleetReply:
    replies: dict[str, dict]  # hostname -> reply

    @property
    def hostnames(self) -> list[str]:
        return sorted(self.replies)

    @property
    def confirmed(self) -> list[str]:
        return sorted(h for h, r in self.replies.items() if r.get("ok"))

    @property
    def errors(self) -> dict[str, str]:
        return {h: r.get("error", "") for h, r in self.replies.items() if not r.get("ok")}


def _call(app, command: str, arguments: dict, timeout: float, expect: int | None, destination=None) -> FleetReply:
    # A fresh connection per call, not one from the app's pool: a pooled connection that sat
    # idle past the broker's heartbeat timeout has been closed by the broker, and the first
    # pause after a quiet spell would fail on it. Pauses are rare; a connect is cheap.
    with app.connection_for_write() as conn:
        try:
            conn.ensure_connection(max_retries=CONNECT_RETRIES, interval_start=0.2, interval_step=0.5)
        except Exception as e:  # kombu raises OperationalError, or the transport's own error
            raise BrokerUnreachable(f"cannot send {command} to the workers: broker {conn.as_uri()} "
                                    f"unreachable after {CONNECT_RETRIES} retries: {e}") from e
        replies = app.control.broadcast(command, arguments=arguments, reply=True, timeout=timeout, limit=expect,
                                        destination=destination, connection=conn)
    merged: dict[str, dict] = {}
    for reply in replies or []:
        merged.update(reply)
    return FleetReply(merged)


def pause(app, lease: float, reason: str, dependency: str = "redis", queue: str | None = None,
          timeout: float = 1.0, expect: int | None = None, destination=None) -> FleetReply:
    """Pause the result queue on every worker (or `destination`) for `lease` seconds.
    Pass `expect` (how many workers should answer) to return as soon as they all have."""
    args = {"lease": lease, "reason": reason, "dependency": dependency}
    if queue is not None:
        args["queue"] = queue
    return _call(app, PAUSE, args, timeout, expect, destination)


def resume(app, dependency: str | None = None, timeout: float = 1.0, expect: int | None = None,
           destination=None, source: str | None = None) -> FleetReply:
    """End the pause. A worker whose own breaker holds it (it cannot reach the dependency
    itself) stays paused until its probe answers: see `held_by_breaker` in its reply.
    `source="breaker"` ends breaker holds instead, to override a breaker."""
    args = {} if dependency is None else {"dependency": dependency}
    if source is not None:
        args["source"] = source
    return _call(app, RESUME, args, timeout, expect, destination)


def status(app, timeout: float = 1.0, expect: int | None = None, destination=None) -> FleetReply:
    return _call(app, STATUS, {}, timeout, expect, destination)
