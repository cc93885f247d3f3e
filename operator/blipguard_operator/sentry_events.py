"""The operator's Sentry events: a blip started, ended, or a guard degraded.

One issue per (what happened, dependency): fingerprints never include the guard or the
blip, so every Redis blip of a cluster lands in one issue, whose events carry the blip id,
guard and namespace as tags (on-call follows one blip from its events to the guard's
status, Kubernetes events and the job logs). Events go out only when a DSN is given; the
broker URLs the operator reads from Secrets are scrubbed like everything else.
"""

from __future__ import annotations

from blipguard.app_patch.scrub import scrub

from .model import ReportReason

LEVELS = {ReportReason.BLIP_STARTED: "warning", ReportReason.RECOVERED: "info", ReportReason.DEGRADED: "error"}
TAG = "blipguard."

_enabled = False


class SentrySetupError(RuntimeError):
    pass


def setup(dsn: str | None, environment: str | None = None) -> bool:
    """Initialise the SDK for the operator process (once); False without a DSN."""
    global _enabled
    if not dsn:
        return False
    try:
        import sentry_sdk
    except ImportError as e:
        raise SentrySetupError("a Sentry DSN is set but sentry-sdk is not installed: "
                               "pip install 'blipguard[operator,sentry]'") from e
    sentry_sdk.init(dsn=dsn, environment=environment, traces_sample_rate=0.0,
                    before_send=lambda event, hint: scrub(event))
    _enabled = True
    return True


def event_for(namespace: str, guard: str, reason: ReportReason, dependency: str | None, blip_id: str | None,
              message: str) -> dict | None:
    """The event a report becomes, or None for reports that are not Sentry's business. Pure."""
    level = LEVELS.get(reason)
    if level is None:
        return None
    tags = {TAG + "guard": guard, TAG + "namespace": namespace, TAG + "dependency": dependency or "unknown",
            TAG + "event": str(reason)}
    if blip_id:
        tags[TAG + "blip"] = blip_id
    return {
        "level": level,
        "logger": "blipguard.operator",
        "message": f"{reason}: {message}" if not message.startswith(str(reason)) else message,
        "fingerprint": ["blipguard-operator", str(reason), dependency or "unknown"],
        "tags": tags,
    }


def report(namespace: str, guard: str, reason: ReportReason, dependency: str | None, blip_id: str | None,
           message: str) -> None:
    if not _enabled:
        return
    event = event_for(namespace, guard, reason, dependency, blip_id, message)
    if event is not None:
        import sentry_sdk

        sentry_sdk.capture_event(event)
