"""Worker-side Prometheus metrics: the one place their names, labels and label values live.

Alerts, dashboards and the chart are checked against ``exported_names()`` and ``LABELS``
(their tests fail on a name or label the code does not export). Every label has a closed
set of values, and every series is created at zero when a worker starts, so ``increase()``
sees the first terminal failure after a restart. Never a job id as a label.

Prefork Celery runs the result task in child processes: ``prometheus_client`` multiprocess
mode aggregates them. ``PROMETHEUS_MULTIPROC_DIR`` must be set in the worker's environment
before it starts (``prometheus_client`` reads it at import); ``serve()`` in the worker's main
process then exposes one endpoint per worker host. Without ``prometheus_client`` (the
``metrics`` extra) every call here is a no-op.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger(__name__)

PREFIX = "blipguard_"
# The scrape job label the chart's PodMonitor fixes (the operator's: blipguard-operator).
SCRAPE_JOB = "blipguard-workers"
DEPENDENCIES = ("redis", "nats", "other")
STAGES = ("process", "results", "ack", "other")  # the platform's job stages, and the NATS ack
TERMINAL_REASONS = ("state_missing", "retries_exhausted")
BOOL = ("true", "false")
LABELS = {"dependency": DEPENDENCIES, "stage": STAGES, "reason": TERMINAL_REASONS, "during_blip": BOOL}


@dataclass(frozen=True)
class Spec:
    name: str  # without the counter's _total
    kind: str  # counter | gauge
    help: str
    labels: tuple[str, ...] = ()


SPECS = (
    Spec(PREFIX + "results_processed", "counter", "Result tasks whose body ran to the end."),
    Spec(PREFIX + "transient_errors", "counter", "Transient dependency errors met by result tasks.",
         ("dependency", "stage")),
    Spec(PREFIX + "result_retries", "counter", "Result tasks scheduled for a retry after a transient error.",
         ("dependency",)),
    Spec(PREFIX + "retries_exhausted", "counter", "Result tasks that used up their retries (the job is failed).",
         ("dependency",)),
    Spec(PREFIX + "results_held_back", "counter", "Results sent back to the queue untouched while paused.",
         ("dependency",)),
    Spec(PREFIX + "job_failures", "counter", "Jobs failed terminally by the result path (once per worker host "
         "and job), by reason and whether this worker was in a blip (paused, or in a streak of transient errors).",
         ("reason", "during_blip")),
    Spec(PREFIX + "worker_paused", "gauge", "1 while this worker holds its result queues paused."),
)
BY_NAME = {s.name: s for s in SPECS}


def exported_names() -> set[str]:
    """Every series name a scrape shows (counters as ``_total``)."""
    return {s.name + "_total" if s.kind == "counter" else s.name for s in SPECS}


def label_sets(spec: Spec) -> list[dict[str, str]]:
    """Every combination of the spec's label values (the series pre-created at zero)."""
    combos: list[dict[str, str]] = [{}]
    for label in spec.labels:
        combos = [{**c, label: v} for c in combos for v in LABELS[label]]
    return combos


def dependency_label(dependency: str) -> str:
    return dependency if dependency in DEPENDENCIES else "other"


def stage_label(stage: str | None) -> str:
    return stage if stage in STAGES else "other"


_metrics: dict | None = None


def _build() -> dict:
    global _metrics
    if _metrics is None:
        try:
            from prometheus_client import Counter, Gauge
        except ImportError:
            _metrics = {}
            return _metrics
        built = {}
        for s in SPECS:
            if s.kind == "counter":
                built[s.name] = Counter(s.name, s.help, s.labels)
            else:
                built[s.name] = Gauge(s.name, s.help, s.labels, multiprocess_mode="livemax")
        _metrics = built
    return _metrics


def initialize() -> None:
    """Create every series at zero (in the calling process)."""
    for s in SPECS:
        metric = _build().get(s.name)
        if metric is None:
            return
        for labels in label_sets(s):
            child = metric.labels(**labels) if labels else metric
            if s.kind == "gauge":
                child.set(0)
            else:
                child.inc(0)


def inc(name: str, **labels: str) -> None:
    metric = _build().get(PREFIX + name)
    if metric is None:
        return
    try:
        (metric.labels(**labels) if labels else metric).inc()
    except Exception:  # noqa: BLE001 - metrics never break a result
        logger.exception("could not count %s%s", name, labels)


def job_failed(reason: str, during_blip: bool, job_id: int | None = None) -> None:
    """Count a job failed by the result path, once per worker host and job: several prefork
    children can find the same job's state gone before the job is marked FAILURE."""
    if job_id is not None:
        from .pause import board

        if not board.first_time(f"failed:{job_id}"):
            return
    inc("job_failures", reason=reason, during_blip="true" if during_blip else "false")


def set_gauge(name: str, value: float) -> None:
    metric = _build().get(PREFIX + name)
    if metric is not None:
        metric.set(value)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """The worker host's scrape endpoint (main process): every prefork child's samples."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, addr=addr, registry=registry)


def clear_dir(path: str) -> None:
    """Start a worker host with no stale files from a previous run of it (their gauges
    would count as live processes of this one)."""
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))


def process_dead(pid: int) -> None:
    """A prefork child exited: its live gauges go; its counters stay summed in."""
    if multiprocess_dir() is None:
        return
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(pid)
