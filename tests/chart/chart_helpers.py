"""Helpers of the chart tests: Helm 4 and Helm 3 (each with its own temporary homes), the
rendered objects, and namespaces that enforce Pod Security Standards "restricted"."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from blipguard.localstack.kube import KubeBinariesMissing, require_kube_binaries

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
