"""The blipguard operator as a real process (``blipguard operator run``), for tests and
the demo: free 127.0.0.1 ports, its own log, stopped (or killed) by PID."""

from __future__ import annotations

import signal
import sys
import urllib.request
from pathlib import Path

from .procs import free_port, log_tail, pid_alive, spawn, stop_pid, wait_until


OPERATOR_SA = "blipguard-operator"


def operator_kubeconfig(kube, namespace: str, path: Path, service_account: str = OPERATOR_SA) -> Path:
    """A kubeconfig for a ServiceAccount bound to exactly the operator's Role (``rbac``),
    never admin."""
    from blipguard.operator import rbac

    kube.ensure_service_account(namespace, service_account)
    kube.client.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles", rbac.role(namespace))
    kube.client.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings",
                       rbac.role_binding(namespace, service_account))
    return kube.token_kubeconfig(kube.service_account_token(namespace, service_account), path)


def guard_path(namespace: str, name: str = "") -> str:
    """The API path of a namespace's BlipGuards, or of one."""
    from blipguard.operator import crd

    base = f"/apis/{crd.GROUP}/{crd.VERSION}/namespaces/{namespace}/{crd.PLURAL}"
    return f"{base}/{name}" if name else base


class OperatorProcess:
    def __init__(self, kubeconfig: Path, namespaces: list[str], workdir: Path, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None):
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "operator.log"
        self.env = env
        self.extra_args = list(extra_args or [])
        self.proc = None
        self.metrics_port = 0
        self.probe_port = 0
        self.starts = 0

    def start(self, timeout: float = 60) -> "OperatorProcess":
        self.metrics_port, self.probe_port = free_port(), free_port()
        argv = [sys.executable, "-m", "blipguard.cli", "operator", "run", "--kubeconfig", str(self.kubeconfig),
                "--metrics-port", str(self.metrics_port), "--metrics-address", "127.0.0.1",
                "--liveness", f"http://127.0.0.1:{self.probe_port}/healthz"]
        for ns in self.namespaces:
            argv += ["--namespace", ns]
        argv += self.extra_args
        self.starts += 1
        with open(self.log_path, "a") as f:
            f.write(f"\n===== start {self.starts}\n")
        self.proc = spawn(argv, self.log_path, env=self.env)
        wait_until(self._healthy, timeout, "the operator's probe endpoint to answer", interval=0.1)
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
        return self.healthz() is not None

    def healthz(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.probe_port}/healthz", timeout=1) as r:
                return r.read().decode()
        except OSError:
            return None

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(self.metrics_text(), name, **labels)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return log_tail(self.log_path, chars)

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a node loss or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and pid_alive(self.proc.pid):
            stop_pid(self.proc.pid, timeout=15)
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except Exception:  # noqa: BLE001 - already reaped by stop_pid
                pass


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` in a /metrics page whose labels include ``labels``
    (0 if none)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
