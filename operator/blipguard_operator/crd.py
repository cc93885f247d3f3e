"""The BlipGuard custom resource: its names, status fields, condition types and the
CustomResourceDefinition itself (``manifest()``), in one place for every other module.

On-call forces a resume by setting the annotation ``blipguard.io/force-resume``
(``FORCE_RESUME_ANNOTATION``) to any new value, e.g. the current time::

    kubectl annotate bguard <name> --overwrite blipguard.io/force-resume="$(date -u +%FT%TZ)"

Each new value asks for one resume now; setting the same value again does nothing.

``operator/crds/blipguards.blipguard.io.yaml`` is ``render()``'s output, regenerated with::

    python -m blipguard.operator.crd > operator/crds/blipguards.blipguard.io.yaml

and a test fails while the committed file differs from ``manifest()``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from .model import MAX_LEASE_SECONDS, Dependency, GuardSettings, Mode, Phase

GROUP = "blipguard.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "BlipGuard"
PLURAL = "blipguards"
SINGULAR = "blipguard"
SHORT_NAMES = ["bguard"]
CATEGORIES = ["blipguard"]
CRD_NAME = f"{PLURAL}.{GROUP}"

FORCE_RESUME_ANNOTATION = f"{GROUP}/force-resume"

# Spec defaults and limits, shared with spec.py so both enforce the same bounds.
JOB_ID_PLACEHOLDER = "{id}"
DEFAULT_SECRET_KEY = "url"
DEFAULT_NATS_STREAM = "job_{id}"
DEFAULT_NATS_CONSUMER = "job-{id}-consumer"
MAX_DEPENDENCIES = 8
MAX_RESULT_QUEUES = 16
MAX_SETTLE_SECONDS = 3600
MAX_MAX_PAUSE_SECONDS = 86400
MAX_SELECTOR_TERMS = 16
MAX_SELECTOR_VALUES = 32
NATS_URL_SCHEMES = ("nats", "tls", "ws", "wss")

DEFAULT_SELECTORS: dict[Dependency, dict[str, Any]] = {
    # The official NATS chart; its nats-box pod has component nats-box and must not match.
    Dependency.NATS: {
        "matchLabels": {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "nats"},
    },
    # Bitnami Redis: master/replica (replication) or node (sentinel) pods.
    Dependency.REDIS: {
        "matchLabels": {"app.kubernetes.io/name": "redis"},
        "matchExpressions": [
            {"key": "app.kubernetes.io/component", "operator": "In", "values": ["master", "replica", "node"]},
        ],
    },
}


class StatusField(StrEnum):
    PHASE = "phase"
    OBSERVED_GENERATION = "observedGeneration"
    BLIP = "blip"
    COUNTERS = "counters"
    LAST_BLIP_SECONDS = "lastBlipSeconds"
    WORKERS_CONFIRMED = "workersConfirmed"
    FORCE_RESUME_HANDLED = "forceResumeHandled"  # the FORCE_RESUME_ANNOTATION value acted on
    CONDITIONS = "conditions"
    DRAIN = "drain"  # NATS held while a resumed blip's results drain


class DrainField(StrEnum):
    """Keys of ``status.drain``: the blip whose held results are draining."""

    BLIP_ID = "blipId"
    SINCE = "since"  # RFC 3339
    REMAINING = "remaining"  # held results still on their way, last counted


class BlipField(StrEnum):
    """Keys of ``status.blip``, the blip going on."""

    ID = "id"
    DEPENDENCY = "dependency"
    REASON = "reason"
    SINCE = "since"  # RFC 3339


class Counter(StrEnum):
    """Keys of ``status.counters``."""

    BLIPS = "blips"
    PAUSES = "pauses"
    RENEWALS = "renewals"
    DEGRADED = "degraded"
    FORCED_RESUMES = "forcedResumes"


class ConditionType(StrEnum):
    READY = "Ready"
    PAUSED = "Paused"
    DEGRADED = "Degraded"
    SPEC_VALID = "SpecValid"
    CONSUMING = "Consuming"
    PROTECTABLE = "Protectable"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


# --- schema building blocks ----------------------------------------------------------

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
# NATS forbids whitespace, '.', '*', '>' and path separators in stream and consumer names.
_NATS_NAME = r"^[^\s.*>/\\]+$"


def _rule(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def _string(description: str, max_length: int, pattern: str | None = None, **extra: Any) -> dict:
    out = {"type": "string", "description": description, "minLength": 1, "maxLength": max_length}
    if pattern:
        out["pattern"] = pattern
    return out | extra


def _seconds(description: str, default: float, maximum: float | None, positive: bool) -> dict:
    out: dict[str, Any] = {"type": "number", "description": description, "default": _plain(default), "minimum": 0}
    if positive:
        out["exclusiveMinimum"] = True
    if maximum is not None:
        out["maximum"] = _plain(maximum)
    return out


def _plain(number: float) -> int | float:
    """5.0 -> 5, so the YAML and the API server's echo read as written."""
    return int(number) if float(number).is_integer() else number


def _secret_ref(description: str) -> dict:
    return {
        "type": "object",
        "description": description,
        "required": ["name"],
        "properties": {
            "name": _string("Secret name.", 253, _DNS_SUBDOMAIN),
            "key": _string("Key in the Secret.", 253, _SECRET_KEY, default=DEFAULT_SECRET_KEY),
        },
    }


def _name_pattern(what: str, default: str) -> dict:
    return _string(
        f"{what} name of a job; {JOB_ID_PLACEHOLDER} stands for the job id.", 200, _NATS_NAME,
        default=default,
        **{"x-kubernetes-validations": [_rule(
            f"self.contains('{JOB_ID_PLACEHOLDER}')",
            f"must contain {JOB_ID_PLACEHOLDER}, the placeholder for the job id",
        )]},
    )


def _selector() -> dict:
    expression = {
        "type": "object",
        "required": ["key", "operator"],
        "properties": {
            "key": _string("Label key.", 317),
            "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
            "values": {"type": "array", "maxItems": MAX_SELECTOR_VALUES,
                       "items": {"type": "string", "maxLength": 63}},
        },
        "x-kubernetes-validations": [_rule(
            "self.operator in ['Exists', 'DoesNotExist'] ? (!has(self.values) || size(self.values) == 0)"
            " : (has(self.values) && size(self.values) > 0)",
            "In and NotIn need values; Exists and DoesNotExist take none",
        )],
    }
    return {
        "type": "object",
        "description": "Which pods of the dependency to watch (a label selector); "
                       "omit it for the kind's default (the official NATS chart, Bitnami Redis).",
        "properties": {
            "matchLabels": {"type": "object", "maxProperties": MAX_SELECTOR_TERMS,
                            "additionalProperties": {"type": "string", "maxLength": 63}},
            "matchExpressions": {"type": "array", "maxItems": MAX_SELECTOR_TERMS, "items": expression},
        },
        "x-kubernetes-validations": [_rule(
            "(has(self.matchLabels) && size(self.matchLabels) > 0)"
            " || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
            "an empty selector would watch every pod of the namespace; omit it for the kind's default",
        )],
    }


def _spec_schema() -> dict:
    defaults = GuardSettings()
    dependency = {
        "type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {"type": "string", "enum": [d.value for d in Dependency], "maxLength": 16},
            "namespace": _string("Namespace of its pods; default: the guard's.", 63, _DNS_LABEL),
            "selector": _selector(),
        },
    }
    nats = {
        "type": "object",
        "description": "Also pause the per-job JetStream consumers.",
        "properties": {
            "url": _string("NATS server URL.", 2048, rf"^({'|'.join(NATS_URL_SCHEMES)})://\S+$"),
            "urlSecretRef": _secret_ref("Secret (in the guard's namespace) holding the NATS URL."),
            "stream": _name_pattern("JetStream stream", DEFAULT_NATS_STREAM),
            "consumer": _name_pattern("JetStream consumer", DEFAULT_NATS_CONSUMER),
        },
        "x-kubernetes-validations": [_rule(
            "has(self.url) != has(self.urlSecretRef)", "set exactly one of url and urlSecretRef",
        )],
    }
    pause = {
        "type": "object",
        "description": "What to pause during a blip.",
        "required": ["brokerSecretRef", "resultQueues"],
        "properties": {
            "brokerSecretRef": _secret_ref("Secret (in the guard's namespace) holding the Celery broker URL."),
            "resultQueues": {
                "type": "array", "description": "Celery queues whose consumers pause.",
                "minItems": 1, "maxItems": MAX_RESULT_QUEUES, "x-kubernetes-list-type": "set",
                "items": _string("Queue name.", 255),
            },
            "expectedWorkers": {"type": "integer", "minimum": 1,
                                "description": "How many workers should confirm a pause."},
            "nats": nats,
        },
    }
    timing = {
        "type": "object",
        "default": {},
        "properties": {
            "settleSeconds": _seconds("How long every pod must stay healthy before resuming.",
                                      defaults.settle_seconds, MAX_SETTLE_SECONDS, positive=False),
            "leaseSeconds": _seconds("Lease of each pause; renewed while the blip lasts.",
                                     defaults.lease_seconds, MAX_LEASE_SECONDS, positive=True),
            "maxPauseSeconds": _seconds("Longest pause; then resume anyway and go degraded.",
                                        defaults.max_pause_seconds, MAX_MAX_PAUSE_SECONDS, positive=True),
            "drainTimeoutSeconds": _seconds("Longest wait without progress (held results acked) before NATS resumes.",
                                            defaults.drain_timeout_seconds, None, positive=False),
        },
        "x-kubernetes-validations": [_rule(
            # has(): the rule also checks the default {} itself, before its fields' defaults.
            "!has(self.maxPauseSeconds) || !has(self.leaseSeconds) || self.maxPauseSeconds >= self.leaseSeconds",
            "maxPauseSeconds must be >= leaseSeconds",
            field_path=".maxPauseSeconds",
        )],
    }
    return {
        "type": "object",
        "required": ["dependencies", "pause"],
        "properties": {
            "mode": {"type": "string", "enum": [m.value for m in Mode], "default": defaults.mode.value,
                     "description": "active: pause and resume; observe-only: detect and report; "
                                    "suspended: ignore everything."},
            "dependencies": {
                "type": "array", "description": "The dependencies whose blips pause the workers.",
                "minItems": 1, "maxItems": MAX_DEPENDENCIES, "items": dependency,
                "x-kubernetes-validations": [_rule(
                    "self.all(d, self.exists_one(e, e.kind == d.kind))",
                    "each dependency kind may appear only once",
                )],
            },
            "pause": pause,
            "timing": timing,
        },
    }


def _status_schema() -> dict:
    count = {"type": "integer", "format": "int64", "minimum": 0}
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string", "maxLength": 316},
            "status": {"type": "string", "enum": [s.value for s in ConditionStatus]},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "reason": {"type": "string", "maxLength": 1024},
            "message": {"type": "string", "maxLength": 32768},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
        },
    }
    return {
        "type": "object",
        "properties": {
            StatusField.PHASE: {"type": "string", "enum": [p.value for p in Phase]},
            StatusField.OBSERVED_GENERATION: {"type": "integer", "format": "int64"},
            StatusField.BLIP: {
                "type": "object", "nullable": True, "description": "The blip going on.",
                "properties": {
                    BlipField.ID: {"type": "string"},
                    BlipField.DEPENDENCY: {"type": "string", "enum": [d.value for d in Dependency]},
                    BlipField.REASON: {"type": "string"},
                    BlipField.SINCE: {"type": "string", "format": "date-time"},
                },
            },
            StatusField.DRAIN: {
                "type": "object", "nullable": True,
                "description": "Celery resumed; the job consumers stay paused until these held results drain.",
                "properties": {
                    DrainField.BLIP_ID: {"type": "string"},
                    DrainField.SINCE: {"type": "string", "format": "date-time"},
                    DrainField.REMAINING: {"type": "integer", "nullable": True, "minimum": 0},
                },
            },
            StatusField.COUNTERS: {"type": "object", "properties": {c.value: count for c in Counter}},
            StatusField.LAST_BLIP_SECONDS: {"type": "number", "nullable": True, "minimum": 0},
            StatusField.WORKERS_CONFIRMED: count,
            StatusField.FORCE_RESUME_HANDLED: {
                "type": "string", "nullable": True,
                "description": f"The last {FORCE_RESUME_ANNOTATION} value acted on: a new value asks again.",
            },
            StatusField.CONDITIONS: {
                "type": "array", "items": condition,
                "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
            },
            # kopf keeps its handler progress here; without it the API server prunes it.
            "kopf": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }


def _printer_columns() -> list[dict]:
    def status(name: str, type_: str, *path: str, description: str) -> dict:
        return {"name": name, "type": type_, "jsonPath": ".status." + ".".join(path), "description": description}

    return [
        status("Phase", "string", StatusField.PHASE, description="watching, paused, degraded or suspended"),
        status("Blip", "string", StatusField.BLIP, BlipField.ID, description="The blip going on"),
        status("Dependency", "string", StatusField.BLIP, BlipField.DEPENDENCY,
               description="The dependency of the blip going on"),
        status("Blips", "integer", StatusField.COUNTERS, Counter.BLIPS, description="Blips seen"),
        status("Last blip", "number", StatusField.LAST_BLIP_SECONDS,
               description="Seconds the last blip lasted"),
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def manifest() -> dict:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1): plain JSON data, a fresh
    copy each call."""
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": list(SHORT_NAMES), "categories": list(CATEGORIES)},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": _printer_columns(),
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "Pauses Celery result consumers (and NATS JetStream consumers) "
                                   "while a Redis or NATS pod blips, and resumes them after.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": _spec_schema(),
                        "status": _status_schema(),
                    },
                }},
            }],
        },
    }
    return json.loads(json.dumps(crd))  # StrEnum keys and values become plain str


def render() -> str:
    """``manifest()`` as the YAML file the chart ships."""
    import yaml  # kopf depends on PyYAML; imported here so manifest() needs nothing

    header = "# Generated by `python -m blipguard.operator.crd` from crd.py: do not edit.\n"
    return header + yaml.safe_dump(manifest(), sort_keys=False, width=100)


if __name__ == "__main__":
    print(render(), end="")
