"""The shipped alert rules against the real system: a real Prometheus server loads
alerts/blipguard.rules.yaml unchanged and scrapes a real prefork worker host and the real
operator (scrape jobs ``blipguard-workers`` / ``blipguard-operator``) while the local stack
goes through a Redis outage the operator carries, then through genuine state loss.

What each alert should do here (docs/runbooks/):

* the outage: the guard pauses (``blipguard_operator_paused`` 1, one blip counted), the
  worker holds its result queue (``blipguard_worker_paused`` 1); FleetPausedTooLong and
  WorkerPausedTooLong (``for: 15m``) only reach ``pending`` while paused; no job fails, so
  JobFailedTerminally, JobFailedDuringBlip and RetriesExhausted never become active; the
  operator saw the blip, so GuardBlind never does either; one blip is no flapping.
* the state loss: the job fails, ``reason="state_missing"``, outside any blip:
  JobFailedTerminally (no ``for``) fires, JobFailedDuringBlip stays silent.

PauseBroadcastFailing: no broadcast fails here (every ``outcome="failed"`` counter is created
at 0 when the operator loads the guard and stays 0), so it stays silent throughout.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from blipguard.app_patch import metrics as worker_metrics
from blipguard.app_patch.pause import client as fleet
from blipguard.harness.jobrun import run_job
from blipguard.localstack import faults
from blipguard.localstack.guard_operator import OperatorProcess, guard_path, operator_kubeconfig
from blipguard.localstack.procs import free_port, wait_until
from blipguard.localstack.prometheus import PrometheusServer
from blipguard.operator import crd
from blipguard.operator import metrics as operator_metrics
from blipguard.operator.kube_setup import install_crd

pytestmark = [pytest.mark.observability, pytest.mark.operator, pytest.mark.kube, pytest.mark.stack]

RULES = Path(__file__).resolve().parents[2] / "alerts" / "blipguard.rules.yaml"
WORKERS_JOB = worker_metrics.SCRAPE_JOB
OPERATOR_JOB = operator_metrics.SCRAPE_JOB
GUARD = "fleet"
IMAGES = 150
OUTAGE = 12.0
TERMINAL = ("BlipguardJobFailedTerminally", "BlipguardJobFailedDuringBlip", "BlipguardRetriesExhausted")
# Never active in this run: nothing here is blind, flapping, degraded, stuck or invalid.
QUIET = ("BlipguardGuardBlind", "BlipguardDependencyFlapping", "BlipguardGuardDegraded",
         "BlipguardWorkerNotConsuming", "BlipguardGuardSpecInvalid")


@pytest.fixture
def app(django_app):
    from config import celery_app

    return celery_app


@pytest.fixture
def metered_worker(worker_pool, platform, app, tmp_path):
    """One prefork worker host (two children) with its metrics endpoint."""
    port = free_port()
    mpdir = tmp_path / "worker-metrics"
    mpdir.mkdir()
    w = worker_pool.ensure(platform.patched_settings, count=1, concurrency=2, BLIPGUARD_SOCKET_TIMEOUT="1",
                           BLIPGUARD_CONNECT_TIMEOUT="1", BLIPGUARD_METRICS_PORT=str(port),
                           PROMETHEUS_MULTIPROC_DIR=str(mpdir))
    try:
        yield w, port
    finally:
        try:
            fleet.resume(app, expect=1, source="breaker")
            fleet.resume(app, expect=1)
        finally:
            worker_pool.stop()  # the next test's workers must not inherit this port and directory


@pytest.fixture
def guarded(kube, namespace, stack, stack_mirror, broker_secret, platform, tmp_path):
    """The real operator (as its ServiceAccount bound to exactly its Role) and one guard."""
    install_crd(kube.client)
    kubeconfig = operator_kubeconfig(kube, namespace, tmp_path / "operator.kubeconfig")
    op = OperatorProcess(kubeconfig, [namespace], tmp_path / "operator")
    try:
        op.start()
        kube.client.create(guard_path(namespace), {
            "apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": GUARD},
            "spec": {"dependencies": [{"kind": "redis"}],
                     "pause": {"brokerSecretRef": {"name": broker_secret},
                               "resultQueues": [platform.result_queue], "expectedWorkers": 1},
                     "timing": {"settleSeconds": 2, "leaseSeconds": 30, "maxPauseSeconds": 600}}})
        wait_until(lambda: phase(kube, namespace) == "watching", 30, "the guard to watch")
        yield op
    finally:
        op.stop()
        print(f"\n--- operator log tail\n{op.log_tail(2000)}")


@pytest.fixture
def prometheus(metered_worker, guarded, tmp_path):
    _, worker_port = metered_worker
    server = PrometheusServer(tmp_path / "prometheus",
                              {WORKERS_JOB: [f"127.0.0.1:{worker_port}"],
                               OPERATOR_JOB: [f"127.0.0.1:{guarded.metrics_port}"]},
                              rule_files=[RULES])
    try:
        server.start()
        yield server
    finally:
        server.stop()
        print(f"\n--- prometheus log tail\n{server.log_tail(1500)}")


def check_broadcast_alert(prom: PrometheusServer) -> None:
    """No broadcast failed: BlipguardPauseBroadcastFailing is neither pending nor firing
    (its series exist at zero from the operator's start: that must not look like a failure)."""
    alerts = prom.active("BlipguardPauseBroadcastFailing")
    assert not alerts, [(a["labels"], a["state"], a["value"]) for a in alerts]


def phase(kube, namespace) -> str | None:
    return (kube.client.get(guard_path(namespace, GUARD)).get("status") or {}).get("phase")


def active(prom: PrometheusServer, *names: str) -> dict[str, list[dict]]:
    """alertname -> its active alerts (pending or firing), for the names given."""
    out: dict[str, list[dict]] = {}
    for a in prom.alerts():
        if a["labels"]["alertname"] in names:
            out.setdefault(a["labels"]["alertname"], []).append(a)
    return out


def states(prom: PrometheusServer, name: str) -> set[str]:
    return {a["state"] for a in prom.active(name)}


def ever_active(prom: PrometheusServer, names, since: float, at: float | None = None) -> dict[str, set[str]]:
    """alertname -> the states it was in between ``since`` and ``at``, from Prometheus' own
    ``ALERTS`` series (every rule evaluation writes one sample per active alert)."""
    at = at or time.time()
    window = math.ceil(at - since) + 1
    regex = "|".join(names)
    found: dict[str, set[str]] = {}
    for s in prom.query(f'count_over_time(ALERTS{{alertname=~"{regex}"}}[{window}s])', at):
        found.setdefault(s["metric"]["alertname"], set()).add(s["metric"]["alertstate"])
    return found


def over_window(prom: PrometheusServer, fn: str, selector: str, since: float, at: float) -> float | None:
    window = math.ceil(at - since) + 1
    return prom.value(f"max({fn}({selector}[{window}s]))", at)


def settled(prom: PrometheusServer) -> float:
    """A wall time by which Prometheus has scraped, and evaluated the rules on, everything
    that happened before the call."""
    prom.wait_scraped_after(time.time())
    prom.wait_evaluated_after(time.time())
    return time.time()


def test_alerts_stay_silent_through_a_carried_outage_and_fire_on_genuine_state_loss(
        kube, namespace, stack, guarded, metered_worker, prometheus, platform, web, redis_direct):
    prom = prometheus
    ns_guard = f'namespace="{namespace}",guard="{GUARD}"'
    op_paused = f'blipguard_operator_paused{{job="{OPERATOR_JOB}",{ns_guard}}}'
    blips = f'blipguard_operator_blips_total{{job="{OPERATOR_JOB}",{ns_guard},dependency="redis"}}'
    worker_paused = f'blipguard_worker_paused{{job="{WORKERS_JOB}"}}'
    queue_empty = lambda: stack.rabbitmq.queue_depth(platform.result_queue) == 0  # noqa: E731

    t0 = time.time()
    prom.wait_targets_up(30)
    assert {r["file"] for r in prom.rule_groups()} == {str(RULES)}
    assert sum(len(g["rules"]) for g in prom.rule_groups()) == 12
    settled(prom)
    assert prom.value(op_paused) == 0 and prom.value(blips) == 0
    baseline = {a["labels"]["alertname"]: a["state"] for a in prom.alerts()}
    print(f"\nprometheus scraping after {time.time() - t0:.1f}s; active before any fault: {baseline}")

    # (1) A Redis outage (the pod goes not ready through the mirror) carried by the pause.
    seen: dict[str, object] = {}

    def outage() -> None:
        stack.redis.stop()
        down_at = time.monotonic()
        try:
            wait_until(lambda: prom.value(op_paused) == 1, OUTAGE - 4, "Prometheus to see the guard pause")
            seen["operator paused seen after"] = round(time.monotonic() - down_at, 1)
            wait_until(lambda: states(prom, "BlipguardFleetPausedTooLong") == {"pending"}, 5,
                       "BlipguardFleetPausedTooLong pending while the guard is paused")
            wait_until(lambda: states(prom, "BlipguardWorkerPausedTooLong") == {"pending"}, 5,
                       "BlipguardWorkerPausedTooLong pending while the worker is paused")
            seen["pending seen after"] = round(time.monotonic() - down_at, 1)

            def outage_over() -> bool:  # watching the alerts for as long as Redis is down
                bad = active(prom, *TERMINAL)
                assert not bad, f"terminal-failure alert during the outage: {bad}"
                return time.monotonic() - down_at >= OUTAGE

            wait_until(outage_over, OUTAGE + 5, "the end of the outage", interval=0.5)
        finally:
            stack.redis.start()

    t1 = time.time()
    outcome = run_job(web.url, redis_direct, IMAGES, fault=outage, fault_at=0.3, settle=queue_empty,
                      timeout=150, ack_wait=None if platform.is_pre else 15,
                      batch_seconds=4.0 if platform.is_pre else 0.0)
    print(outcome.summary(), seen, f"refused by the API: {outcome.results_refused}")
    assert outcome.status == "SUCCESS", outcome.log[-5:]
    assert (outcome.processed, outcome.failed) == (IMAGES, 0)
    wait_until(lambda: phase(kube, namespace) == "watching", 30, "the guard to recover")
    wait_until(lambda: prom.value(op_paused) == 0, 10, "Prometheus to see the guard resume")
    t2 = settled(prom)

    assert over_window(prom, "max_over_time", op_paused, t1, t2) == 1
    assert prom.value(f"max_over_time({blips}[{math.ceil(t2 - t1) + 1}s]) - "
                      f"min_over_time({blips}[{math.ceil(t2 - t1) + 1}s])", t2) == 1, "one blip counted"
    assert over_window(prom, "max_over_time", worker_paused, t1, t2) == 1
    held = prom.value(f'sum(blipguard_results_held_back_total{{job="{WORKERS_JOB}"}})', t2)
    transient = prom.value(f'sum(blipguard_transient_errors_total{{job="{WORKERS_JOB}"}})', t2)
    print(f"results held back {held:.0f}, transient errors {transient:.0f}")
    assert prom.value(f'sum(blipguard_job_failures_total{{job="{WORKERS_JOB}"}})', t2) == 0
    history = ever_active(prom, TERMINAL + QUIET + ("BlipguardFleetPausedTooLong",
                                                    "BlipguardWorkerPausedTooLong"), t1, t2)
    print(f"alerts active during the outage run: {history}")
    assert history.get("BlipguardFleetPausedTooLong") == {"pending"}
    assert history.get("BlipguardWorkerPausedTooLong") == {"pending"}
    assert not {n: s for n, s in history.items() if n in TERMINAL + QUIET}
    check_broadcast_alert(prom)
    now = active(prom, *TERMINAL, *QUIET, "BlipguardFleetPausedTooLong", "BlipguardWorkerPausedTooLong",
                 "BlipguardOperatorDown")
    assert now == {}, f"active after the outage: {now}"

    # (2) Genuine state loss: the running job's Redis keys deleted.
    def lose_state() -> None:
        from ami.jobs.models import Job

        seen["keys deleted"] = faults.delete_job_state(
            stack, Job.objects.order_by("-pk").values_list("pk", flat=True).first())

    t3 = time.time()
    lost = run_job(web.url, redis_direct, 40, fault=lose_state, fault_at=0.3, settle=queue_empty, timeout=90)
    print(lost.summary(), seen)
    assert lost.status == "FAILURE", lost.log[-5:]
    assert seen["keys deleted"] > 0
    firing = wait_until(lambda: active(prom, "BlipguardJobFailedTerminally"), 15,
                        "BlipguardJobFailedTerminally to become active")["BlipguardJobFailedTerminally"]
    print(f"BlipguardJobFailedTerminally {time.time() - t3:.1f}s after the job started: "
          f"{[(a['state'], a['labels'], a['value']) for a in firing]}")
    assert [a["labels"]["reason"] for a in firing] == ["state_missing"]
    assert all(a["labels"]["job"] == WORKERS_JOB for a in firing)
    t4 = settled(prom)
    counted = prom.value(f'sum(blipguard_job_failures_total{{job="{WORKERS_JOB}",during_blip="false",'
                         f'reason="state_missing"}})', t4)
    print(f"job failures counted for the one failed job: {counted:.0f}")
    assert counted >= 1
    assert prom.value(f'sum(blipguard_job_failures_total{{job="{WORKERS_JOB}",during_blip="true"}})', t4) == 0
    now = active(prom, "BlipguardJobFailedDuringBlip", "BlipguardRetriesExhausted", *QUIET)
    assert now == {}, f"active after the state loss: {now}"
    history = ever_active(prom, ("BlipguardJobFailedDuringBlip", "BlipguardRetriesExhausted"), t0, t4)
    assert history == {}, history
    broadcasts = f'blipguard_operator_broadcasts_total{{job="{OPERATOR_JOB}",{ns_guard}'
    assert prom.value(f'sum({broadcasts},outcome="failed"}})', t4) == 0
    assert prom.value(f'sum({broadcasts},command="pause",outcome="ok"}})', t4) == 1
    check_broadcast_alert(prom)
    print(f"whole run {time.time() - t0:.1f}s from the first scrape wait; "
          f"active at the end: {[(a['labels']['alertname'], a['state']) for a in prom.alerts()]}")
