"""The ``BLIPGUARD`` Django setting: defaults, validation with specific errors."""

import math
from dataclasses import dataclass, field

from .errors import ConfigurationError

DEFAULT_TARGETS = {
    "STATE_MANAGER": "ami.ml.orchestration.async_job_state.AsyncJobStateManager",
    "PROGRESS": "ami.ml.orchestration.async_job_state.JobStateProgress",
    "RESULT_TASK": "ami.jobs.tasks.process_nats_pipeline_result",
    "TASKS_MODULE": "ami.jobs.tasks",
    "QUEUE_MANAGER": "ami.ml.orchestration.nats_queue.TaskQueueManager",
    "JOB_MODEL": "ami.jobs.models.Job",
}
# The host's helpers on TASKS_MODULE: FAIL_JOB is called when retries run out; ACK and
# UPDATE_PROGRESS are wrapped (see patcher.py).
DEFAULT_HELPERS = {
    "FAIL_JOB": "_fail_job",
    "ACK": "_ack_task_via_nats",
    "UPDATE_PROGRESS": "_update_job_progress",
}
DEFAULTS = {
    "AUTO_PATCH": True,  # patch the host at start-up (INSTALLED_APPS)
    "TARGETS": DEFAULT_TARGETS,
    "HELPERS": DEFAULT_HELPERS,
    "STRICT": False,  # report host findings as errors (they then block manage.py commands)
    # The ack_wait the host's consumers are created with: its module constant, read once at
    # its import (30 s where NATS_TASK_TTR does not exist, the setting's value where it does).
    "ACK_WAIT_SOURCE": "ami.ml.orchestration.nats_queue.TASK_TTR",
    "ACK_WAIT": None,  # seconds; overrides ACK_WAIT_SOURCE
    "MAX_RETRIES": 6,
    "BACKOFF_BASE": 1.0,
    "BACKOFF_MAX": 30.0,
    "RETRY_BUDGET_FRACTION": 0.8,  # share of ack_wait the whole retry window may use
    "ACK_TIMEOUT": 5.0,  # seconds to wait for JetStream to confirm an ack
    "RESULT_QUEUE": None,  # the result task's queue; None: ask the host's Celery router
    "CACHE_ALIAS": "default",  # the django-redis cache holding the job state
    # In-worker breaker: after this many consecutive transient errors to one dependency a
    # worker holds its own result queue on a BREAKER_LEASE-second lease (at most 3600) and
    # probes the dependency every second: the lease is extended while the probe fails, and
    # the worker resumes as soon as it answers.
    "BREAKER": True,
    "BREAKER_THRESHOLD": 5,
    "BREAKER_LEASE": 15.0,
    # Each worker host's Prometheus endpoint (None: none). Needs PROMETHEUS_MULTIPROC_DIR in
    # the worker's environment (prefork children write their samples there).
    "METRICS_PORT": None,
    "METRICS_ADDRESS": "0.0.0.0",
}


@dataclass(frozen=True)
class Config:
    auto_patch: bool
    strict: bool = False
    targets: dict = field(default_factory=dict)
    helpers: dict = field(default_factory=dict)
    ack_wait_source: str = DEFAULTS["ACK_WAIT_SOURCE"]
    ack_wait: float | None = None
    max_retries: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    retry_budget_fraction: float = 0.8
    ack_timeout: float = 5.0
    result_queue: str | None = None
    cache_alias: str = "default"
    breaker: bool = True
    breaker_threshold: int = 5
    breaker_lease: float = 15.0
    metrics_port: int | None = None
    metrics_address: str = "0.0.0.0"


def _number(raw: dict, key: str, kind=float, minimum=0.0, allow_none=False, maximum=math.inf):
    value = raw[key]
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"BLIPGUARD['{key}'] must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(f"BLIPGUARD['{key}'] must be a finite number, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"BLIPGUARD['{key}'] must be >= {minimum}, got {value!r}")
    if value > maximum:
        raise ConfigurationError(f"BLIPGUARD['{key}'] must be <= {maximum}, got {value!r}")
    if kind is int and int(value) != value:
        raise ConfigurationError(f"BLIPGUARD['{key}'] must be a whole number, got {value!r}")
    return kind(value)


def _mapping(raw: dict, key: str, defaults: dict) -> dict:
    value = raw[key]
    if not isinstance(value, dict):
        raise ConfigurationError(f"BLIPGUARD['{key}'] must be a dict, got {type(value).__name__}")
    unknown = set(value) - set(defaults)
    if unknown:
        raise ConfigurationError(
            f"BLIPGUARD['{key}'] has unknown keys {sorted(unknown)}; known keys: {sorted(defaults)}"
        )
    merged = {**defaults, **value}
    for k, v in merged.items():
        if not isinstance(v, str) or not v:
            raise ConfigurationError(f"BLIPGUARD['{key}']['{k}'] must be a non-empty string, got {v!r}")
    return merged


def parse(raw: dict | None) -> Config:
    raw = dict(raw or {})
    unknown = set(raw) - set(DEFAULTS)
    if unknown:
        raise ConfigurationError(f"BLIPGUARD has unknown keys {sorted(unknown)}; known keys: {sorted(DEFAULTS)}")
    raw = {**DEFAULTS, **raw}
    for key in ("AUTO_PATCH", "STRICT", "BREAKER"):
        if not isinstance(raw[key], bool):
            raise ConfigurationError(f"BLIPGUARD['{key}'] must be True or False, got {raw[key]!r}")
    for key in ("ACK_WAIT_SOURCE", "RESULT_QUEUE", "CACHE_ALIAS", "METRICS_ADDRESS"):
        if key == "RESULT_QUEUE" and raw[key] is None:
            continue
        if not isinstance(raw[key], str) or not raw[key]:
            raise ConfigurationError(f"BLIPGUARD['{key}'] must be a non-empty string, got {raw[key]!r}")
    return Config(
        auto_patch=raw["AUTO_PATCH"],
        strict=raw["STRICT"],
        targets=_mapping(raw, "TARGETS", DEFAULT_TARGETS),
        helpers=_mapping(raw, "HELPERS", DEFAULT_HELPERS),
        ack_wait_source=raw["ACK_WAIT_SOURCE"],
        ack_wait=_number(raw, "ACK_WAIT", minimum=1.0, allow_none=True),
        max_retries=_number(raw, "MAX_RETRIES", int, 0),
        backoff_base=_number(raw, "BACKOFF_BASE", minimum=0.001),
        backoff_max=_number(raw, "BACKOFF_MAX", minimum=0.001),
        retry_budget_fraction=_number(raw, "RETRY_BUDGET_FRACTION", minimum=0.01),
        ack_timeout=_number(raw, "ACK_TIMEOUT", minimum=0.01),
        result_queue=raw["RESULT_QUEUE"],
        cache_alias=raw["CACHE_ALIAS"],
        breaker=raw["BREAKER"],
        breaker_threshold=_number(raw, "BREAKER_THRESHOLD", int, 1),
        breaker_lease=_number(raw, "BREAKER_LEASE", minimum=1.0, maximum=3600.0),  # the pause lease limit
        metrics_port=_number(raw, "METRICS_PORT", int, 1, allow_none=True, maximum=65535),
        metrics_address=raw["METRICS_ADDRESS"],
    )


def from_django() -> Config:
    from django.conf import settings

    return parse(getattr(settings, "BLIPGUARD", None))
