"""The alerting rules, as data: ``blipguard.rules.yaml`` is this script's output.

    python alerts/render.py > alerts/blipguard.rules.yaml

A test fails while the committed file differs from ``render()``. Metric names and the
scrape ``job`` labels come from the two metric modules, the single source of truth
(``blipguard.app_patch.metrics``, ``blipguard.operator.metrics``); the Helm chart copies
``alerts/*.rules.yaml`` into its PrometheusRule, so the output stays a plain Prometheus
rule file. Unit tests of every alert: ``alerts/tests/blipguard.tests.yaml`` (promtool).
"""

from __future__ import annotations

import sys

import yaml

from blipguard.app_patch import metrics as app
from blipguard.operator import metrics as op

RUNBOOK_BASE = "https://github.com/blipguard/blipguard/blob/main/docs/runbooks/"
SEVERITIES = ("critical", "warning", "info")

WORKERS = f'job="{app.SCRAPE_JOB}"'
OPERATOR = f'job="{op.SCRAPE_JOB}"'
GUARD = "{{ $labels.namespace }}/{{ $labels.guard }}"
COUNT = '{{ printf "%.0f" $value }}'  # increase() extrapolates: 1.11 reads as 1

JOB_FAILURES = app.PREFIX + "job_failures_total"
RETRIES_EXHAUSTED = app.PREFIX + "retries_exhausted_total"
TRANSIENT_ERRORS = app.PREFIX + "transient_errors_total"
WORKER_PAUSED = app.PREFIX + "worker_paused"
PAUSED = op.PAUSED._name
DEGRADED = op.DEGRADED._name
BLIPS = op.BLIPS._name + "_total"
DEPENDENCY_UP = op.DEPENDENCY_UP._name
BROADCASTS = op.BROADCASTS._name + "_total"
NOT_CONSUMING = op.WORKERS_NOT_CONSUMING._name
SPEC_VALID = op.SPEC_VALID._name

FAILED_BROADCASTS = f'{BROADCASTS}{{{OPERATOR},outcome="failed"}}'
BLIP_SERIES = f"{BLIPS}{{{OPERATOR}}}"

# Transient errors the whole fleet may see in 5 minutes without any blip the operator knows
# of: a single reset connection costs one or two; the in-worker breaker trips at 5 in a row.
BLIND_ERRORS = 10


def alert(name: str, expr: str, severity: str, summary: str, description: str, for_: str | None = None) -> dict:
    assert severity in SEVERITIES, severity
    rule: dict = {"alert": name, "expr": expr.strip() + "\n" if "\n" in expr.strip() else expr.strip()}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": RUNBOOK_BASE + name + ".md",
    }
    return rule


def job_alerts() -> list[dict]:
    return [
        alert(
            "BlipguardJobFailedDuringBlip",
            f'sum by (job, reason) (increase({JOB_FAILURES}{{{WORKERS},during_blip="true"}}[10m])) > 0',
            "critical",
            "A job was failed while its worker was in a Redis or NATS blip.",
            f"{COUNT} job(s) failed terminally (reason {{{{ $labels.reason }}}}) in the last 10 minutes on a "
            "worker that was paused or in a streak of transient errors: a dependency blip reached users as a "
            "job failure, the misclassification blipguard exists to prevent.",
        ),
        alert(
            "BlipguardJobFailedTerminally",
            f'sum by (job, reason) (increase({JOB_FAILURES}{{{WORKERS},during_blip="false"}}[10m])) > 0',
            "warning",
            "Jobs were failed terminally by the result path.",
            f"{COUNT} job(s) failed terminally (reason {{{{ $labels.reason }}}}) in the last 10 minutes, "
            "outside any blip the worker knew of. state_missing: the job's Redis state was really gone; "
            "retries_exhausted: a dependency stayed unreachable past the retry window.",
        ),
        alert(
            "BlipguardRetriesExhausted",
            f"sum by (job, dependency) (increase({RETRIES_EXHAUSTED}{{{WORKERS}}}[10m])) > 0",
            "warning",
            "Result tasks ran out of retries on transient errors.",
            f"{COUNT} result task(s) used up their retries on {{{{ $labels.dependency }}}} errors in the last "
            "10 minutes; each one failed its job. The dependency stayed unreachable longer than the retry "
            "window and no pause held the workers in time.",
        ),
        alert(
            "BlipguardWorkerPausedTooLong",
            f"{WORKER_PAUSED}{{{WORKERS}}} == 1",
            "warning",
            "A worker has held its result queue paused for more than 15 minutes.",
            "Worker {{ $labels.instance }} has not consumed its result queue for more than 15 minutes: "
            "a lease that keeps being renewed (the operator's or its own breaker's, while its probe of "
            "the dependency fails). Results wait in the broker and jobs make no progress.",
            "15m",
        ),
        alert(
            "BlipguardGuardBlind",
            f"""
(
  sum by (job, dependency) (increase({TRANSIENT_ERRORS}{{{WORKERS},dependency=~"redis|nats"}}[5m])) > {BLIND_ERRORS}
)
unless on (dependency)
(
    max by (dependency) (increase({BLIP_SERIES}[15m]) > 0)
  or
    max by (dependency) (({BLIP_SERIES} > 0) unless {BLIP_SERIES} offset 15m)
  or
    max by (dependency) (min_over_time({DEPENDENCY_UP}{{{OPERATOR}}}[15m]) == 0)
)
unless on ()
(
  max(max_over_time({PAUSED}{{{OPERATOR}}}[15m])) == 1
)
""",
            "warning",
            "Workers hit transient errors the operator sees no blip for.",
            f"Workers met {COUNT} transient {{{{ $labels.dependency }}}} errors in 5 minutes, yet no guard "
            "saw a {{ $labels.dependency }} pod in trouble or paused the workers in the last 15 minutes: "
            "the trouble is invisible to the operator (network, overload, a pod it does not watch, or no "
            "operator at all). Only retries and the in-worker breaker protect jobs from it.",
            "2m",
        ),
    ]


def operator_alerts() -> list[dict]:
    return [
        alert(
            "BlipguardOperatorDown",
            f"absent(up{{{OPERATOR}}} == 1)",
            "warning",
            "The blipguard operator is down or not scraped.",
            f'No target of scrape job "{op.SCRAPE_JOB}" has been up for 5 minutes: the operator is not '
            "running, or Prometheus does not find it. Without it no blip pauses the workers; only "
            "retries and the in-worker breaker protect jobs.",
            "5m",
        ),
        alert(
            "BlipguardFleetPausedTooLong",
            f"{PAUSED}{{{OPERATOR}}} == 1",
            "warning",
            "A guard has held the workers paused for more than 15 minutes.",
            f"Guard {GUARD} has held the result consumers paused (or NATS waiting for the drain) for more "
            "than 15 minutes. Jobs make no progress meanwhile; a pause should end at the guard's "
            "maxPauseSeconds (default 600 s).",
            "15m",
        ),
        alert(
            "BlipguardGuardDegraded",
            f"{DEGRADED}{{{OPERATOR}}} == 1",
            "warning",
            "A blip outlasted the guard's maximum pause.",
            f"Guard {GUARD} resumed the workers at its maxPauseSeconds although the dependency has not "
            "recovered, and will not pause again until its pods are healthy: jobs now fail visibly "
            "instead of waiting.",
            "1m",
        ),
        alert(
            "BlipguardDependencyFlapping",
            f"sum by (namespace, guard, dependency) (increase({BLIP_SERIES}[30m])) >= 3",
            "warning",
            "A guarded dependency keeps blipping.",
            f"Guard {GUARD} saw {COUNT} {{{{ $labels.dependency }}}} blips in 30 minutes; each one pauses "
            "the workers. Its pods keep restarting, losing readiness or being replaced.",
        ),
        alert(
            "BlipguardPauseBroadcastFailing",
            f"""
sum by (namespace, guard, command) (increase({FAILED_BROADCASTS}[15m])) > 0
or
sum by (namespace, guard, command) (({FAILED_BROADCASTS} > 0) unless {FAILED_BROADCASTS} offset 15m)
""",
            "warning",
            "The guard's pause-channel commands are failing.",
            f"{COUNT} {{{{ $labels.command }}}} command(s) of guard {GUARD} failed or were confirmed by "
            "fewer workers than expected in the last 15 minutes: during a blip the workers may not be "
            "paused, or not resumed after it.",
        ),
        alert(
            "BlipguardWorkerNotConsuming",
            f"{NOT_CONSUMING}{{{OPERATOR}}} > 0",
            "critical",
            "Workers answer but do not consume their result queue after a resume.",
            f"{{{{ $value }}}} worker(s) of guard {GUARD} did not consume their result queue after the "
            "last resume: results pile up in the broker and their jobs stall until the workers are "
            "restarted.",
        ),
        alert(
            "BlipguardGuardSpecInvalid",
            f"{SPEC_VALID}{{{OPERATOR}}} == 0",
            "warning",
            "A BlipGuard's spec is invalid.",
            f"Guard {GUARD} has a spec the operator rejects (its InvalidSpec event names the field, e.g. a "
            "selector's label key or a timing rule the schema cannot check). It keeps acting on its last "
            "valid spec, or protects nothing if it never had one.",
            "5m",
        ),
    ]


def groups() -> dict:
    return {"groups": [
        {"name": "blipguard-jobs", "rules": job_alerts()},
        {"name": "blipguard-operator", "rules": operator_alerts()},
    ]}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    header = "# Generated by `python alerts/render.py` from alerts/render.py: do not edit.\n"
    return header + yaml.dump(groups(), Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


if __name__ == "__main__":
    sys.stdout.write(render())
