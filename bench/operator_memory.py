"""Operator memory and idle CPU with 2,000 Pods in its namespace, against 0 extra Pods.

Real kube-apiserver (etcd + kube-apiserver) and the real operator process under its
least-privilege ServiceAccount. Two namespaces are filled before any operator starts:

* ``load``: P Pods (default 2,000), of which G (default 6) carry labels that guards
  select (Bitnami Redis master labels, one instance each) and the rest look like an
  application's pods (Deployment labels, a container with env, resources and probes);
* ``base``: only the same G guarded Pods.

Each namespace has the same guards (default 6, each selecting its own guarded Pod) and a
broker Secret. No kubelet runs: the script writes every Pod's status (Running, Ready) as
a kubelet would, so nothing is in trouble and no blip starts (the broker is never
contacted; the script checks that no broadcast was sent). Pods created without status
would look unready and start blips.

For each namespace in turn (baseline first), a fresh operator serving only that namespace
is started; once every guard reports ``watching`` (kopf fills its pod index before it
starts the guards' daemons) and its RSS has stopped growing, the script reads VmRSS and
VmHWM from /proc/PID/status, then the CPU seconds (utime + stime from /proc/PID/stat,
all threads) over a quiet window (default 30 s), then stops it.

    .venv/bin/python bench/operator_memory.py              # full: 2,000 pods, 30 s window
    .venv/bin/python bench/operator_memory.py --quick      # validation: 200 pods, 5 s window

Goal: operator RSS < 150 MiB with 2,000 Pods.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GOAL_MIB = 150.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 2**20


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def _ts(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_body(name: str, labels: dict[str, str], image: str, node: str) -> dict:
    """An application pod as a Deployment would make it (what kopf lists and the index reads)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"}},
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "app", "image": image, "imagePullPolicy": "IfNotPresent",
                "args": ["--port", "8080"],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": f"SETTING_{i}", "value": f"value-{i}"} for i in range(8)],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "500m", "memory": "512Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}],
            }],
            "volumes": [{"name": "config", "configMap": {"name": "app-config"}}],
        },
    }


def ready_status(name: str, image: str, started: float) -> dict:
    t = _ts(started)
    conditions = [{"type": c, "status": "True", "lastProbeTime": None, "lastTransitionTime": t}
                  for c in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
                            "PodScheduled")]
    return {
        "phase": "Running", "conditions": conditions,
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": t, "qosClass": "Burstable",
        "containerStatuses": [{
            "name": "app", "image": image, "imageID": f"{image.split(':')[0]}@sha256:{'0' * 64}",
            "containerID": f"containerd://{abs(hash(name)):064x}"[:77],
            "ready": True, "started": True, "restartCount": 0,
            "state": {"running": {"startedAt": t}}, "lastState": {},
        }],
    }


def fill_namespace(kube, ns: str, total: int, guarded: int, threads: int = 4) -> float:
    """``total`` Pods (the first ``guarded`` selected by guards), each Running and Ready."""
    from blipguard.localstack.kube import NODE_NAME

    started = time.time()
    t0 = time.monotonic()
    def make(i: int) -> None:
        if i < guarded:
            name = f"cache{i}-redis-master-0"
            labels = {"app.kubernetes.io/name": "redis", "app.kubernetes.io/instance": f"cache{i}",
                      "app.kubernetes.io/component": "master", "app.kubernetes.io/managed-by": "Helm"}
            image = "docker.io/bitnami/redis:7.4.2"
        else:
            app = f"web{i % 40}"
            name = f"{app}-7d9f8c6b5-{i:05d}"
            labels = {"app.kubernetes.io/name": app, "app.kubernetes.io/instance": "shop",
                      "app.kubernetes.io/component": "api", "pod-template-hash": "7d9f8c6b5"}
            image = f"registry.example.com/shop/{app}:1.2.3"
        c = kube.client  # one keep-alive connection per thread
        c.create(f"/api/v1/namespaces/{ns}/pods", pod_body(name, labels, image, NODE_NAME))
        c.patch(f"/api/v1/namespaces/{ns}/pods/{name}/status", {"status": ready_status(name, image, started)})

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(make, range(total)))
    return time.monotonic() - t0


def make_guards(kube, ns: str, guards: int, guarded: int, broker_url: str) -> list[str]:
    """``guards`` guards; guard j selects the guarded pods i with i % guards == j."""
    from blipguard.localstack.guard_operator import guard_path
    from blipguard.operator import crd

    kube.client.create(f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "celery-broker"},
        "data": {"url": base64.b64encode(broker_url.encode()).decode()}})
    names = []
    for j in range(guards):
        instances = [f"cache{i}" for i in range(guarded) if i % guards == j]
        selector = {"matchLabels": {"app.kubernetes.io/name": "redis"},
                    "matchExpressions": [{"key": "app.kubernetes.io/instance", "operator": "In",
                                          "values": instances or [f"none{j}"]}]}
        name = f"guard-{j}"
        kube.client.create(guard_path(ns), {
            "apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name},
            "spec": {"dependencies": [{"kind": "redis", "selector": selector}],
                     "pause": {"brokerSecretRef": {"name": "celery-broker"}, "resultQueues": ["ml_results"],
                               "expectedWorkers": 8},
                     "timing": {"settleSeconds": 5, "leaseSeconds": 30}}})
        names.append(name)
    return names


def measure(kube, ns: str, guards: list[str], workdir: Path, window: float, settle_timeout: float) -> dict:
    """Start an operator for ``ns``, wait until it settles, measure, stop it."""
    from blipguard.localstack.guard_operator import OperatorProcess, guard_path, operator_kubeconfig
    from blipguard.localstack.procs import wait_until

    op = OperatorProcess(operator_kubeconfig(kube, ns, workdir / f"{ns}.kubeconfig"), [ns], workdir / ns)
    try:
        t0 = time.monotonic()
        op.start()
        pid = op.proc.pid

        def phases() -> list:
            return [(kube.client.get(guard_path(ns, g)).get("status") or {}).get("phase") for g in guards]

        wait_until(lambda: all(p == "watching" for p in phases()), settle_timeout, f"every guard in {ns} watching",
                   interval=0.25)
        watching_in = time.monotonic() - t0
        # Settled: RSS grew by less than 0.25 MiB over the last 3 s.
        samples: list[int] = []
        deadline = time.monotonic() + settle_timeout
        while True:
            samples.append(proc_status(pid)["VmRSS"])
            if len(samples) >= 7 and max(samples[-7:]) - min(samples[-7:]) < MIB // 4:
                break
            if time.monotonic() >= deadline:
                print(f"warning: {ns}: RSS still moving after {settle_timeout:.0f}s", file=sys.stderr)
                break
            time.sleep(0.5)
        settled_in = time.monotonic() - t0
        mem = proc_status(pid)
        cpu_start = cpu_seconds(pid)
        w0 = time.monotonic()
        time.sleep(window)
        cpu = cpu_seconds(pid) - cpu_start
        elapsed = time.monotonic() - w0
        end = proc_status(pid)
        broadcasts = op.metric("blipguard_operator_broadcasts_total")
        blips = op.metric("blipguard_operator_blips_total")
        if broadcasts or blips:
            raise RuntimeError(f"{ns}: the operator was not idle: {blips:g} blips, {broadcasts:g} broadcasts")
        if op.proc.poll() is not None:
            raise RuntimeError(f"{ns}: the operator exited:\n{op.log_tail()}")
        return {"rss": mem["VmRSS"], "hwm": end["VmHWM"], "rss_end": end["VmRSS"], "cpu": cpu,
                "window": elapsed, "watching_in": watching_in, "settled_in": settled_in, "pid": pid}
    except BaseException:
        print(f"--- operator log tail ({ns})\n{op.log_tail(3000)}", file=sys.stderr)
        raise
    finally:
        op.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Full size: the defaults. Validation: --quick (200 pods, 5 s window).")
    p.add_argument("--pods", type=int, default=2000, help="Pods in the loaded namespace, guarded ones included")
    p.add_argument("--guarded", type=int, default=6, help="of them, Pods selected by guards (default 6)")
    p.add_argument("--guards", type=int, default=6, help="BlipGuards per namespace (default 6)")
    p.add_argument("--window", type=float, default=30.0, help="quiet window for idle CPU, seconds (default 30)")
    p.add_argument("--settle-timeout", type=float, default=120.0, help="seconds to wait for the listing to settle")
    p.add_argument("--quick", action="store_true", help="a short validation run: 200 pods, 5 s window")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs) after a good run")
    a = p.parse_args()
    if a.quick:
        a.pods, a.window = 200, 5.0
    if not 0 <= a.guarded <= a.pods or a.guards < 1 or a.window <= 0:
        p.error("need 0 <= --guarded <= --pods, --guards >= 1 and --window > 0")

    from blipguard.localstack.kube import KubeServer
    from blipguard.localstack.procs import free_port
    from blipguard.operator.kube_setup import install_crd

    workdir = Path(tempfile.mkdtemp(prefix="blipguard-bench-memory-"))
    broker = f"amqp://guest:guest@127.0.0.1:{free_port()}//"  # never contacted: no blip, no broadcast
    ok = False
    results: dict[str, dict] = {}
    with contextlib.ExitStack() as es:
        try:
            kube = es.enter_context(KubeServer(workdir / "kube"))
            install_crd(kube.client)
            base = kube.create_namespace("bench-mem-base")
            load = kube.create_namespace("bench-mem-load")
            fill_base = fill_namespace(kube, base, a.guarded, a.guarded)
            fill_load = fill_namespace(kube, load, a.pods, a.guarded)
            print(f"pods created with status: {a.guarded} in {fill_base:.1f}s, {a.pods} in {fill_load:.1f}s",
                  file=sys.stderr)
            guards = {ns: make_guards(kube, ns, a.guards, a.guarded, broker) for ns in (base, load)}
            for ns in (base, load):  # baseline first, each operator alone on the machine's cores
                results[ns] = measure(kube, ns, guards[ns], workdir, a.window, a.settle_timeout)
                r = results[ns]
                print(f"{ns}: watching after {r['watching_in']:.1f}s, settled after {r['settled_in']:.1f}s",
                      file=sys.stderr)
            api_rss = kube.rss_bytes()
            ok = True
        except BaseException:
            print(f"failed; logs kept in {workdir}", file=sys.stderr)
            raise
    if ok and not a.keep:
        shutil.rmtree(workdir, ignore_errors=True)

    b, ld = results[base], results[load]
    print(f"operator memory and idle CPU: {a.guards} guards, {a.guarded} guarded pods; "
          f"quiet window {a.window:g}s")
    print(f"{'':28s} {'RSS':>9s} {'peak (HWM)':>11s} {'RSS at end':>11s} {'CPU s':>7s} {'% of a core':>11s}")
    for name, r in (("baseline: 0 extra pods", b), (f"loaded: {a.pods} pods", ld)):
        print(f"{name:28s} {r['rss'] / MIB:7.1f}Mi {r['hwm'] / MIB:9.1f}Mi {r['rss_end'] / MIB:9.1f}Mi "
              f"{r['cpu']:7.2f} {100 * r['cpu'] / r['window']:10.2f}%")
    extra = a.pods - a.guarded
    per_pod = (ld["rss"] - b["rss"]) / extra / 1024 if extra else 0.0
    cpu_ratio = f"{ld['cpu'] / b['cpu']:.2f}" if b["cpu"] else "n/a (baseline 0)"
    print(f"ratio loaded/baseline: RSS {ld['rss'] / b['rss']:.2f}, peak {ld['hwm'] / b['hwm']:.2f}, CPU {cpu_ratio}")
    print(f"RSS per extra pod: {per_pod:.1f} KiB  (CPU resolution {1000 / CLK_TCK:.0f} ms)")
    print(f"kube-apiserver RSS {api_rss.get('kube-apiserver', 0) / MIB:.0f} MiB, etcd "
          f"{api_rss.get('etcd', 0) / MIB:.0f} MiB (context, not the operator)")
    worst = max(ld["rss"], ld["hwm"]) / MIB
    print(f"goal: operator RSS < {GOAL_MIB:.0f} MiB with {a.pods} pods: {'met' if worst < GOAL_MIB else 'NOT met'} "
          f"(peak {ld['hwm'] / MIB:.1f} MiB)")


if __name__ == "__main__":
    main()
