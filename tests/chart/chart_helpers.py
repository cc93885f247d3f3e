"""Helpers of the chart tests: Helm 4 and Helm 3 (each with its own temporary homes), the
rendered objects, namespaces that enforce Pod Security Standards "restricted", the
rendered operator container run here as the chart's ServiceAccount, and the permissions
the chart grants against those the audit log shows used."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import pytest
import yaml

from blipguard.localstack.guard_operator import metric_sum
from blipguard.localstack.kube import KubeBinariesMissing, KubeServer, require_kube_binaries
from blipguard.localstack.procs import log_tail, pid_alive, spawn, stop_pid, wait_until
from blipguard.operator import rbac

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "blipguard"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
HELMS = ("helm", "helm3")  # Helm 4 and Helm 3.17 (scripts/setup_kube.sh)
MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")


def binary(name: str) -> Path:
    """A tool from scripts/setup_kube.sh; missing, the test fails (not skips)."""
    try:
        return require_kube_binaries((name,))[name]
    except KubeBinariesMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@dataclass
class Helm:
    name: str
    binary: Path
    home: Path
    kubeconfig: Path | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_") and k != "KUBECONFIG"}
        for var in ("CACHE", "CONFIG", "DATA"):
            env[f"HELM_{var}_HOME"] = str(self.home / var.lower())
        if self.kubeconfig:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.binary), *args], capture_output=True, text=True, env=self.env(),
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stderr}{proc.stdout[-2000:]}")
        return proc

    def template(self, *args: str, chart: Path = CHART, namespace: str = "blipguard",
                 release: str = "guard") -> list[dict]:
        """The objects ``helm template`` renders (the CRD in crds/ is not among them)."""
        out = self.run("template", release, str(chart), "--namespace", namespace, *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def kinds(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = kinds(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def write_values(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


# Go-template-looking text in a rule file and a dashboard: it must reach Prometheus and
# Grafana exactly as written.
SAMPLE_ALERTS = """\
groups:
  - name: blipguard-sample
    rules:
      - alert: BlipguardSamplePaused
        expr: max by (namespace, guard) (blipguard_operator_paused{job="blipguard-operator"}) == 1
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: 'Guard {{ $labels.namespace }}/{{ $labels.guard }} paused'
          description: "Paused for {{ $value | humanizeDuration }}; {{ printf \\"%s\\" $labels.guard }}."
"""
SAMPLE_DASHBOARD = '{"title": "blipguard sample", "panels": [{"legendFormat": "{{namespace}}/{{guard}}"}]}\n'

PSS_RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/warn-version": "latest",
}


def restricted_namespace(kube, prefix: str) -> str:
    """A fresh namespace enforcing (and warning about pod templates breaking) PSS restricted."""
    prefix = re.sub(r"[^a-z0-9]+", "-", prefix.lower())[:30].strip("-")
    return kube.create_namespace(prefix, labels=PSS_RESTRICTED)


def suite_module(relpath: str) -> ModuleType:
    """A module of tests/ (e.g. ``kube/conftest.py``) loaded by its path under a name of its
    own, so that the chart tests take fixtures and helpers from it as they are."""
    name = "blipguard_tests_" + re.sub(r"\W", "_", relpath.removesuffix(".py"))
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / relpath)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


@dataclass
class RenderedOperator:
    """The chart's operator container, run here: the Deployment's command line (the image's
    ``blipguard`` is this interpreter's blipguard.cli; the pod's 0.0.0.0 becomes 127.0.0.1,
    nothing else changes), its environment, as its ServiceAccount (a token from the
    TokenRequest API, as the kubelet mounts it in the pod)."""

    container: dict
    namespace: str
    service_account: str
    token: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @classmethod
    def from_deployment(cls, kube: KubeServer, deployment: dict, workdir: Path) -> "RenderedOperator":
        workdir.mkdir(parents=True, exist_ok=True)
        namespace = deployment["metadata"]["namespace"]
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        sa = pod["serviceAccountName"]
        token = kube.service_account_token(namespace, sa)
        kubeconfig = kube.token_kubeconfig(token, workdir / "sa.kubeconfig")
        argv = [sys.executable, "-m", "blipguard.cli",
                *(a.replace("0.0.0.0", "127.0.0.1") for a in container["args"])]
        env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e},
               "HOME": str(workdir), "KUBECONFIG": str(kubeconfig)}
        return cls(container, namespace, sa, token, argv, env, workdir / "operator.log")

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def port(self, name: str) -> int:
        return next(p["containerPort"] for p in self.container["ports"] if p["name"] == name)

    @property
    def probe_url(self) -> str:
        probe = self.container["livenessProbe"]["httpGet"]
        return f"http://127.0.0.1:{self.port(probe['port'])}{probe['path']}"

    def start(self) -> "RenderedOperator":
        self.proc = spawn(self.argv, self.log, env=self.env)
        return self

    def stop(self) -> None:
        if self.proc is not None and pid_alive(self.proc.pid):
            stop_pid(self.proc.pid, timeout=15)

    @contextlib.contextmanager
    def running(self) -> Iterator["RenderedOperator"]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
            print(f"\n--- operator log tail\n{self.log_tail(3000)}")

    def log_tail(self, chars: int = 4000) -> str:
        return log_tail(self.log, chars)

    def healthz(self) -> dict | None:
        """kopf's probe answer on the rendered port and path (None while it does not answer);
        an exited operator fails the test with its log."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(self.probe_url, timeout=2) as r:
                return json.loads(r.read()) if r.status == 200 else None
        except OSError:
            return None

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port('metrics')}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(self.metrics_text(), name, **labels)


# (apiGroup, resource[/subresource], verb, scope): the scope is a Role's namespace, or
# EVERYWHERE for a ClusterRole (bound by a ClusterRoleBinding: every namespace and the
# cluster-scoped requests); a request's own scope is its namespace, "" when cluster-scoped.
Permission = tuple[str, str, str, str]
EVERYWHERE = "*"


def bound_roles(objects: list[dict], service_account: str, namespace: str) -> list[dict]:
    """The Roles and ClusterRoles among ``objects`` that a (Cluster)RoleBinding among them
    binds to the ServiceAccount ``namespace/service_account``."""
    sa = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
    bound = set()
    for b in objects:
        if b.get("kind") in ("RoleBinding", "ClusterRoleBinding") and any(
                {k: s.get(k) for k in sa} == sa for s in b.get("subjects") or []):
            bound.add((b["roleRef"]["kind"], b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None,
                       b["roleRef"]["name"]))
    return [o for o in objects if (o.get("kind"), o["metadata"].get("namespace"), o["metadata"]["name"]) in bound]


def granted_permissions(roles: list[dict]) -> set[Permission]:
    """Every (apiGroup, resource, verb, scope) the rules of these Roles/ClusterRoles grant."""
    return {(group, resource, verb, EVERYWHERE if role["kind"] == "ClusterRole" else role["metadata"]["namespace"])
            for role in roles for rule in role["rules"] for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", []) for verb in rule.get("verbs", [])}


def used_permissions(audit_events: list[dict], username: str, granted: set[Permission],
                     forbidden: bool = False) -> set[Permission]:
    """The user's requests in the audit log, read by ``rbac.used`` (the operator suite's own
    reading: allowed ones, or with ``forbidden`` the refused ones), each in its scope:
    EVERYWHERE when ``granted`` comes from a ClusterRole, else its namespace."""
    everywhere = any(scope == EVERYWHERE for *_, scope in granted)
    by_namespace: dict[str, list[dict]] = defaultdict(list)
    for event in audit_events:
        by_namespace[(event.get("objectRef") or {}).get("namespace", "")].append(event)
    return {(*used, EVERYWHERE if everywhere else namespace)
            for namespace, events in by_namespace.items() for used in rbac.used(events, username, forbidden)}


def wait_authorized(kube: KubeServer, namespace: str, service_account: str, permissions: set[Permission],
                    timeout: float = 60) -> None:
    """Until the API server's authorizer grants the ServiceAccount every permission (its RBAC
    cache follows new Roles and bindings with a delay): asked as the admin through
    SubjectAccessReviews, so that nothing is added to the ServiceAccount's own audit trail."""
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]
    user = f"system:serviceaccount:{namespace}:{service_account}"

    def allowed(group: str, resource: str, verb: str, scope: str) -> bool:
        name, _, sub = resource.partition("/")
        attributes = {"group": group, "resource": name, "subresource": sub, "verb": verb,
                      "namespace": "" if scope == EVERYWHERE else scope}
        review = kube.client.create("/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": groups, "resourceAttributes": attributes}})
        return bool(review["status"].get("allowed"))

    wait_until(lambda: all(allowed(*p) for p in sorted(permissions)), timeout,
               f"the authorizer to grant {user} its rules", interval=0.2)


def permission_diff(used: set[Permission], granted: set[Permission]) -> str:
    """Both differences, one a line, for a failing equality's message."""
    def show(ps: set[Permission]) -> str:
        return ", ".join(f"{verb} {group + '/' if group else ''}{resource} in {scope or '(cluster)'}"
                         for group, resource, verb, scope in sorted(ps)) or "-"
    return f"\nused, not granted: {show(used - granted)}\ngranted, never used: {show(granted - used)}"


# ---------------------------------------------------------------- the Prometheus operator's CRDs

def monitoring_crd_files() -> dict[str, Path]:
    """The ServiceMonitor, PodMonitor and PrometheusRule CRDs scripts/setup_kube.sh fetches, by
    plural; missing, the test fails (not skips) naming the setup command."""
    from blipguard.localstack.kube import require_monitoring_crds

    try:
        return require_monitoring_crds()
    except KubeBinariesMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def helm_warnings(stderr: str) -> list[str]:
    """The lines of Helm's stderr that carry a warning (the API server's, PodSecurity's, Helm's)."""
    return [line for line in stderr.splitlines() if "warning" in line.lower() or "podsecurity" in line.lower()]
