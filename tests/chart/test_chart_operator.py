"""The operator as the chart installs it, through a real Redis restart: the rendered
Deployment's command, arguments, environment and ports, run as the chart's ServiceAccount
(its token bound to exactly the chart's Role, or ClusterRole with operator.clusterWide),
the chart's example guard watching the local stack's real redis-server behind the pod
mirror, and real prefork Celery workers. Then the API server's audit log: the operator
used exactly the chart's rules, nothing unused, nothing missing.

The scenario, its fixtures and helpers are the operator suite's (tests/kube)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from blipguard.app_patch.pause import client as fleet
from blipguard.localstack.guard_operator import guard_path
from blipguard.localstack.kube import KubeAPIError, KubeServer
from blipguard.localstack.procs import free_port, wait_until
from chart_helpers import (CHART, Helm, RenderedOperator, bound_roles, granted_permissions, one,
                           permission_diff, suite_module, used_permissions, wait_authorized, write_values)

pytestmark = [pytest.mark.chart, pytest.mark.kube, pytest.mark.operator, pytest.mark.stack]

_suite = suite_module("kube/test_operator.py")
app = _suite.app
workers = _suite.workers
WORKERS, SETTLE = _suite.WORKERS, _suite.SETTLE
guard_status, events_of, wait_event = _suite.guard_status, _suite.events_of, _suite.wait_event
fleet_paused, everyone_paused, nobody_paused = _suite.fleet_paused, _suite.everyone_paused, _suite.nobody_paused
redis_down = _suite.redis_down

RELEASE = "blip"
# Generous: two cores shared with other heavy jobs. Every wait ends on its condition.
START, PAUSE, RECOVER = 120, 60, 90


@pytest.mark.parametrize("cluster_wide", [False, True], ids=["namespaced", "cluster-wide"])
def test_a_redis_restart_under_the_charts_install_pauses_and_resumes_with_exactly_its_rbac(
        kube: KubeServer, helm4: Helm, namespace, stack, stack_mirror, broker_secret, workers, app, platform,
        tmp_path: Path, cluster_wide: bool):
    helm = Helm(helm4.name, helm4.binary, helm4.home, kubeconfig=kube.kubeconfig)
    values = write_values(tmp_path / "values.yaml", {
        "operator": {"clusterWide": cluster_wide, "metricsPort": free_port(), "probePort": free_port()},
        "exampleGuard": {"enabled": True,
                         "pause": {"brokerSecretRef": {"name": broker_secret, "key": "url"},
                                   "resultQueues": [platform.result_queue], "expectedWorkers": WORKERS},
                         "timing": {"settleSeconds": SETTLE, "leaseSeconds": 30}}})
    helm.run("install", RELEASE, str(CHART), "--namespace", namespace, "--values", str(values), timeout=300)
    try:
        manifest = [d for d in yaml.safe_load_all(
            helm.run("get", "manifest", RELEASE, "--namespace", namespace).stdout) if d]
        guard = one(manifest, "BlipGuard")["metadata"]["name"]
        deployment = kube.client.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{RELEASE}-blipguard")
        op = RenderedOperator.from_deployment(kube, deployment, tmp_path / "operator")
        assert ("--all-namespaces" in op.argv) == cluster_wide
        roles = bound_roles(manifest, op.service_account, namespace)
        assert [r["kind"] for r in roles] == (["ClusterRole"] if cluster_wide else ["Role"]), roles
        granted = granted_permissions(roles)
        wait_authorized(kube, namespace, op.service_account, granted)

        with op.running():
            _the_core_scenario(kube, namespace, guard, stack, app, op)
            # The guard deleted: the operator releases its finalizer (a verb of the rules too).
            kube.client.delete(guard_path(namespace, guard))
            wait_until(lambda: not kube.client.get(guard_path(namespace)).get("items"), START,
                       "the guard to be deleted (its finalizer released)")

        # Exactly the chart's rules, read from the audit log: what the operator tried,
        # allowed or refused, equals what the chart grants, in the same scopes.
        audit = kube.audit_events()
        refused = used_permissions(audit, op.user, granted, forbidden=True)
        used = used_permissions(audit, op.user, granted) | refused
        assert used == granted, permission_diff(used, granted)
        assert refused == set(), f"refused: {sorted(refused)}\n{op.log_tail()}"

        # And outside the rules, the same token is refused.
        token_client = kube.token_client(op.token)
        with pytest.raises(KubeAPIError) as denied:
            token_client.delete(f"/api/v1/namespaces/{namespace}/pods/{stack_mirror.redis_pod}")
        assert denied.value.status == 403, denied.value
        if not cluster_wide:
            with pytest.raises(KubeAPIError) as denied:
                token_client.get("/api/v1/namespaces/kube-system/pods")
            assert denied.value.status == 403, denied.value
    finally:
        helm.run("uninstall", RELEASE, "--namespace", namespace, check=False, timeout=300)


def _the_core_scenario(kube: KubeServer, namespace: str, guard: str, stack, app, op: RenderedOperator) -> None:
    """tests/kube/test_operator.py's core scenario: a real Redis restart pauses every worker;
    after Redis is back and the settle time they resume; the guard's status and events
    say so."""
    wait_until(lambda: f"{namespace}/{guard}" in ((op.healthz() or {}).get("guards") or {}), START,
               f"{op.probe_url} to list the example guard")
    wait_until(lambda: guard_status(kube, namespace, guard).get("phase") == "watching", START, "the guard to watch")
    assert set(fleet_paused(app).values()) == {False}

    with redis_down(stack):
        down_at = time.monotonic()
        wait_until(everyone_paused(app), PAUSE, "every worker paused")
        paused_in = time.monotonic() - down_at
        wait_until(lambda: guard_status(kube, namespace, guard).get("phase") == "paused", PAUSE,
                   "status to say paused")
        status = guard_status(kube, namespace, guard)
        assert status["blip"]["dependency"] == "redis"
        blip_id = status["blip"]["id"]
        replies = fleet.status(app, expect=WORKERS).replies
        assert len(replies) == WORKERS and all(
            any(blip_id in lease["reason"] for lease in r["leases"]) for r in replies.values()), \
            "each worker's lease names the blip"
    up_at = time.monotonic()
    wait_until(nobody_paused(app), RECOVER, "every worker resumed")
    resumed_in = time.monotonic() - up_at
    assert resumed_in >= SETTLE, "resumed before the settle time"
    wait_until(lambda: guard_status(kube, namespace, guard).get("phase") == "watching", RECOVER,
               "the guard back to watching")
    print(f"paused {paused_in:.2f}s after Redis stopped; resumed {resumed_in:.2f}s after it started")
    status = guard_status(kube, namespace, guard)
    assert status["counters"]["blips"] == 1 and status["counters"]["pauses"] == 1
    assert status["lastBlipSeconds"] >= SETTLE
    assert status.get("blip") is None
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Consuming"]["status"] == "True", conditions["Consuming"]["message"]
    for reason in ("BlipStarted", "Paused", "Recovered"):
        wait_event(kube, namespace, reason, name=guard, timeout=PAUSE)
    assert all(blip_id in e["message"] for e in events_of(kube, namespace, guard)
               if e["reason"] in ("BlipStarted", "Recovered"))
    labels = {"namespace": namespace, "guard": guard}
    assert op.metric("blipguard_operator_blips_total", dependency="redis", **labels) == 1
    assert op.metric("blipguard_operator_workers_confirmed", command="pause", **labels) == WORKERS
