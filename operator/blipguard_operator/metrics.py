"""The operator's Prometheus metrics: the one place their names and labels are defined.

Alerts, dashboards and the chart import ``METRICS`` (their tests fail on a name the code
does not export). A blip id is never a label: it is unbounded; it goes in events, status
and job logs instead.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PREFIX = "blipguard_operator_"
# The scrape job label the chart's ServiceMonitor fixes, so alert expressions do not depend
# on the release name (the workers' PodMonitor: blipguard.app_patch.metrics.SCRAPE_JOB).
SCRAPE_JOB = "blipguard-operator"
GUARD_LABELS = ("namespace", "guard")
DEP_LABELS = GUARD_LABELS + ("dependency",)
BROADCAST_LABELS = GUARD_LABELS + ("command", "outcome")
COMMANDS = ("pause", "renew", "pause_nats", "renew_nats", "resume_celery", "resume_nats", "status")
OUTCOMES = ("ok", "failed")

REGISTRY = CollectorRegistry(auto_describe=True)

DEPENDENCY_UP = Gauge(PREFIX + "dependency_up", "1 while every watched pod of the dependency is healthy.",
                      DEP_LABELS, registry=REGISTRY)
RESTARTS_SEEN = Counter(PREFIX + "restarts_seen", "Pod troubles seen (restart, replacement, readiness "
                        "lost, deletion, CrashLoopBackOff).", DEP_LABELS, registry=REGISTRY)
BLIPS = Counter(PREFIX + "blips", "Blips started.", DEP_LABELS, registry=REGISTRY)
BLIP_SECONDS = Histogram(PREFIX + "blip_duration_seconds", "First trouble to the end of the settle wait.",
                         DEP_LABELS, buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600), registry=REGISTRY)
PAUSED = Gauge(PREFIX + "paused", "1 while the guard holds the workers paused (or NATS awaits the drain).",
               GUARD_LABELS, registry=REGISTRY)
DEGRADED = Gauge(PREFIX + "degraded", "1 while the guard gave up pausing at its maximum pause.",
                 GUARD_LABELS, registry=REGISTRY)
BROADCASTS = Counter(PREFIX + "broadcasts", "Pause-channel commands sent, by outcome.", BROADCAST_LABELS,
                     registry=REGISTRY)
WORKERS_CONFIRMED = Gauge(PREFIX + "workers_confirmed", "Workers that confirmed the last command.",
                          GUARD_LABELS + ("command",), registry=REGISTRY)
WORKERS_NOT_CONSUMING = Gauge(PREFIX + "workers_not_consuming", "Workers that answered but do not consume "
                              "their result queue after a resume (catatonic).", GUARD_LABELS, registry=REGISTRY)
SPEC_VALID = Gauge(PREFIX + "spec_valid", "0 while the guard's spec is wrong in a way the schema cannot "
                   "catch.", GUARD_LABELS, registry=REGISTRY)

METRICS = {m._name: m for m in (DEPENDENCY_UP, RESTARTS_SEEN, BLIPS, BLIP_SECONDS, PAUSED, DEGRADED,
                                BROADCASTS, WORKERS_CONFIRMED, WORKERS_NOT_CONSUMING, SPEC_VALID)}


def exported_names() -> set[str]:
    """Every series name a scrape can show (counters add ``_total``, histograms
    ``_bucket``/``_sum``/``_count``), for the alert and dashboard checks."""
    names: set[str] = set()
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            names.add(sample.name)
        names.add(metric.name)
    for name, m in METRICS.items():
        if isinstance(m, Counter):
            names.add(name + "_total")
        elif isinstance(m, Histogram):
            names.update(name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


def initialize(namespace: str, guard: str, dependencies) -> None:
    """Create a guard's series at zero, so ``increase()`` sees its first blip, restart and
    failed broadcast after an operator start."""
    labels = {"namespace": namespace, "guard": guard}
    for dependency in dependencies:
        dep = {**labels, "dependency": str(dependency)}
        RESTARTS_SEEN.labels(**dep).inc(0)
        BLIPS.labels(**dep).inc(0)
        BLIP_SECONDS.labels(**dep)
    for command in COMMANDS:
        for outcome in OUTCOMES:
            BROADCASTS.labels(**labels, command=command, outcome=outcome).inc(0)
    PAUSED.labels(**labels)
    DEGRADED.labels(**labels)
    WORKERS_NOT_CONSUMING.labels(**labels)


def forget(namespace: str, guard: str) -> None:
    """Drop a deleted guard's series."""
    for m in METRICS.values():
        labelnames = m._labelnames
        for values in list(m._metrics):
            labels = dict(zip(labelnames, values))
            if labels.get("namespace") == namespace and labels.get("guard") == guard:
                m.remove(*values)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    start_http_server(port, addr=addr, registry=REGISTRY)
