"""Pods for the servers the local stack really runs, with kubelet-style status.

``PodMirror`` plays the kubelet (and, at creation only, the StatefulSet/Deployment
controllers) for a local ``RedisServer`` and ``NatsServer``: it creates the Pods the
Bitnami Redis chart and the official NATS chart would make, labelled as those charts
label them, and keeps each Pod's ``status`` in step with the real process, written
through the ``status`` subresource as a kubelet writes it:

* process running and answering (PING / NATS ``/healthz``): ``state.running``,
  ``ready``, conditions ``Ready``/``ContainersReady`` True;
* running but not answering yet: ``state.running``, ``ready: false``;
* process gone: ``state.terminated`` (exitCode, reason ``Completed``/``Error``,
  startedAt, finishedAt, containerID); after ``crashloop_threshold`` quick exits within
  ``crashloop_window`` seconds, ``state.waiting`` ``CrashLoopBackOff`` with the
  kubelet's message, ``lastState.terminated`` holding the last exit;
* a new process: ``restartCount`` + 1, a new containerID, ``lastState.terminated``.

``phase`` stays ``Running`` through restarts (restartPolicy Always), as on a node.
Exit codes come from the process's wait status: a signal N reads as 128+N. When the
stack's ``stop_pid`` reaped the process first, the status is gone and 0 is reported.
The pods' ``podIP``/``hostIP`` is 127.0.0.1 and their container port the real one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.client
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from .kube import NODE_NAME, KubeAPIError, KubeClient
from .nats import NatsServer, nats_server_binary
from .redis import RedisServer
from .server import ManagedServer

def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _ts(t: dt.datetime) -> str:
    """metav1.Time: RFC 3339, whole seconds, UTC."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _version_of(argv: list[str], marker: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "latest"
    for word in out.replace(",", " ").split():
        if word.startswith(marker):
            return word[len(marker):]
    return "latest"


# ---------------------------------------------------------------- readiness probes

def redis_ping(port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def nats_probe(server: NatsServer, timeout: float = 0.3) -> bool:
    """``/healthz`` on the monitoring port when there is one, else TCP + INFO line."""
    if server.monitor_port:
        return server.is_up()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
            return s.recv(8).startswith(b"INFO")
    except OSError:
        return False


# ---------------------------------------------------------------- container state

@dataclass
class ContainerMirror:
    """One container's history as the kubelet keeps it."""

    name: str
    image: str
    image_id: str
    server: ManagedServer | None  # None: a sidecar that is always up
    probe: Callable[[], bool]
    proc: subprocess.Popen | None = None  # the process behind the current container
    started_at: dt.datetime | None = None
    container_id: str = ""
    restart_count: int = 0
    ever_started: bool = False
    terminated: dict | None = None  # current state.terminated
    last_terminated: dict | None = None  # lastState.terminated
    exits: deque = field(default_factory=deque)  # monotonic times of exits
    ready: bool = False

    def reset(self) -> None:
        self.proc = None
        self.started_at = None
        self.container_id = ""
        self.restart_count = 0
        self.ever_started = False
        self.terminated = None
        self.last_terminated = None
        self.exits.clear()
        self.ready = False


def _exit_code(rc: int | None) -> int:
    if rc is None:
        return 0
    return 128 - rc if rc < 0 else rc


@dataclass
class MirroredPod:
    name: str
    labels: dict[str, str]
    owner: dict | None
    containers: list[ContainerMirror]
    spec: dict
    uid: str = ""
    created_at: dt.datetime | None = None
    conditions: dict[str, dict] = field(default_factory=dict)
    last_status: dict | None = None


# ---------------------------------------------------------------- the mirror

class PodMirror:
    """``with PodMirror(client, ns, redis=..., nats=...) as m:`` Pods kept in step.

    ``interval`` is the polling period; status is PATCHed only when it changes.
    ``check()`` re-raises an error of the background thread (so does ``stop()``).
    """

    def __init__(self, client: KubeClient, namespace: str, *, redis: RedisServer | None = None,
                 nats: NatsServer | None = None, redis_release: str = "redis",
                 nats_release: str = "nats", interval: float = 0.05,
                 crashloop_threshold: int = 3, crashloop_window: float = 60.0,
                 node_name: str = NODE_NAME) -> None:
        self.client = client
        self.namespace = namespace
        self.redis = redis
        self.nats = nats
        self.redis_release = redis_release
        self.nats_release = nats_release
        self.interval = interval
        self.crashloop_threshold = crashloop_threshold
        self.crashloop_window = crashloop_window
        self.node_name = node_name
        self.pods: dict[str, MirroredPod] = {}
        self.patches = 0
        self.api_errors = 0  # status updates that failed on an unreachable API server, retried
        self.error: BaseException | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- names
    @property
    def redis_pod(self) -> str:
        return f"{self.redis_release}-redis-master-0"

    @property
    def nats_pod(self) -> str:
        return f"{self.nats_release}-nats-0"

    @property
    def nats_box_pod(self) -> str:
        return next(n for n in self.pods if n.startswith(f"{self.nats_release}-nats-box-"))

    def _ns_path(self, group_version: str, resource: str, name: str = "") -> str:
        base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        path = f"{base}/namespaces/{self.namespace}/{resource}"
        return f"{path}/{name}" if name else path

    # -- objects
    def _ensure_sa(self, name: str) -> None:
        try:
            self.client.create(self._ns_path("v1", "serviceaccounts"), {
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": self.namespace}})
        except KubeAPIError as exc:
            if exc.status != 409:
                raise

    def _create(self, group_version: str, resource: str, body: dict) -> dict:
        return self.client.create(self._ns_path(group_version, resource), body)

    @staticmethod
    def _owner(obj: dict) -> dict:
        return {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"],
                "controller": True, "blockOwnerDeletion": True}

    def _statefulset(self, name: str, selector: dict[str, str], template_labels: dict[str, str],
                     service: str, spec: dict, labels: dict[str, str]) -> dict:
        return self._create("apps/v1", "statefulsets", {
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": {"replicas": 1, "serviceName": service,
                     "selector": {"matchLabels": selector},
                     "template": {"metadata": {"labels": template_labels}, "spec": spec}},
        })

    def _setup_redis(self) -> None:
        assert self.redis is not None
        rel = self.redis_release
        binary = _which("redis-server")
        version = _version_of([binary, "--version"], "v=")
        image = f"docker.io/bitnami/redis:{version}"
        image_id = f"docker.io/bitnami/redis@sha256:{_file_digest(binary)}"
        sa = f"{rel}-redis"
        self._ensure_sa(sa)
        common = {"app.kubernetes.io/name": "redis", "app.kubernetes.io/instance": rel,
                  "app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/version": version,
                  "helm.sh/chart": "redis-22.0.7"}
        selector = {"app.kubernetes.io/name": "redis", "app.kubernetes.io/instance": rel,
                    "app.kubernetes.io/component": "master"}
        tmpl_labels = {**common, "app.kubernetes.io/component": "master"}
        spec = {
            "serviceAccountName": sa, "automountServiceAccountToken": False,
            "containers": [{
                "name": "redis", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/bash"], "args": ["-c", "/opt/bitnami/scripts/start-scripts/start-master.sh"],
                "ports": [{"name": "redis", "containerPort": self.redis.port, "protocol": "TCP"}],
                "readinessProbe": {"exec": {"command": ["sh", "-c", "/health/ping_readiness_local.sh 1"]},
                                   "periodSeconds": 5, "timeoutSeconds": 2},
            }],
        }
        sts = self._statefulset(f"{rel}-redis-master", selector, tmpl_labels,
                                f"{rel}-redis-headless", spec, {**common, "app.kubernetes.io/component": "master"})
        container = ContainerMirror("redis", image, image_id, self.redis,
                                    lambda: redis_ping(self.redis.port))  # type: ignore[union-attr]
        self._add_statefulset_pod(self.redis_pod, tmpl_labels, sts, spec, [container])

    def _setup_nats(self) -> None:
        assert self.nats is not None
        rel = self.nats_release
        binary = nats_server_binary()
        version = _version_of([binary, "--version"], "v")
        image = f"nats:{version}-alpine"
        image_id = f"docker.io/library/nats@sha256:{_file_digest(binary)}"
        reloader_image = "natsio/nats-server-config-reloader:0.19.1"
        box_image = "natsio/nats-box:0.18.0"
        self._ensure_sa("default")
        common = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": rel,
                  "app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/version": version,
                  "helm.sh/chart": "nats-1.3.7"}
        selector = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": rel,
                    "app.kubernetes.io/component": "nats"}
        tmpl_labels = {**common, "app.kubernetes.io/component": "nats"}
        spec = {
            "enableServiceLinks": False, "shareProcessNamespace": True,
            "containers": [
                {"name": "nats", "image": image, "args": ["--config", "/etc/nats-config/nats.conf"],
                 "ports": [{"name": "nats", "containerPort": self.nats.port},
                           {"name": "monitor", "containerPort": self.nats.monitor_port}],
                 "readinessProbe": {"httpGet": {"path": "/healthz?js-enabled-only=true", "port": "monitor"},
                                    "periodSeconds": 10, "failureThreshold": 3}},
                {"name": "reloader", "image": reloader_image,
                 "args": ["-pid", "/var/run/nats/nats.pid", "-config", "/etc/nats-config/nats.conf"]},
            ],
        }
        sts = self._statefulset(f"{rel}-nats", selector, tmpl_labels, f"{rel}-nats-headless",
                                spec, {**common, "app.kubernetes.io/component": "nats"})
        nats_c = ContainerMirror("nats", image, image_id, self.nats, lambda: nats_probe(self.nats))  # type: ignore[arg-type]
        reloader = ContainerMirror("reloader", reloader_image,
                                   f"docker.io/natsio/nats-server-config-reloader@sha256:{'0' * 64}",
                                   None, lambda: True)
        self._add_statefulset_pod(self.nats_pod, tmpl_labels, sts, spec, [nats_c, reloader])

        # nats-box: a Deployment -> ReplicaSet -> Pod, always up, never a server.
        box_selector = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": rel,
                        "app.kubernetes.io/component": "nats-box"}
        box_labels = {**common, "app.kubernetes.io/component": "nats-box"}
        box_spec = {"enableServiceLinks": False,
                    "containers": [{"name": "nats-box", "image": box_image,
                                    "command": ["sh", "-ec", "trap true INT TERM; sleep infinity & wait"]}]}
        deploy = self._create("apps/v1", "deployments", {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"{rel}-nats-box", "namespace": self.namespace, "labels": box_labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": box_selector},
                     "template": {"metadata": {"labels": box_labels}, "spec": box_spec}},
        })
        hash_ = secrets.token_hex(5)[:10]
        hash_ = "".join("bcdfghjklmnpqrstvwxz2456789"[int(c, 16) % 27] for c in hash_)
        rs_labels = {**box_labels, "pod-template-hash": hash_}
        rs = self._create("apps/v1", "replicasets", {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": f"{rel}-nats-box-{hash_}", "namespace": self.namespace,
                         "labels": rs_labels, "ownerReferences": [self._owner(deploy)]},
            "spec": {"replicas": 1, "selector": {"matchLabels": {**box_selector, "pod-template-hash": hash_}},
                     "template": {"metadata": {"labels": rs_labels}, "spec": box_spec}},
        })
        suffix = "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        box = ContainerMirror("nats-box", box_image, f"docker.io/natsio/nats-box@sha256:{'1' * 64}",
                              None, lambda: True)
        pod = MirroredPod(f"{rel}-nats-box-{hash_}-{suffix}", rs_labels, self._owner(rs), [box], box_spec)
        self._register(pod)

    def _add_statefulset_pod(self, name: str, labels: dict[str, str], sts: dict, spec: dict,
                             containers: list[ContainerMirror]) -> None:
        pod_labels = {**labels, "statefulset.kubernetes.io/pod-name": name,
                      "apps.kubernetes.io/pod-index": "0",
                      "controller-revision-hash": f"{sts['metadata']['name']}-{secrets.token_hex(5)}"}
        self._register(MirroredPod(name, pod_labels, self._owner(sts), containers, spec))

    def _register(self, pod: MirroredPod) -> None:
        self.pods[pod.name] = pod
        self._create_pod(pod)

    def _create_pod(self, pod: MirroredPod) -> None:
        body = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": self.namespace, "labels": pod.labels,
                         "ownerReferences": [pod.owner] if pod.owner else []},
            "spec": {**pod.spec, "nodeName": self.node_name},  # bound, as after scheduling
        }
        created = self._create("v1", "pods", body)
        pod.uid = created["metadata"]["uid"]
        pod.created_at = _now()
        pod.conditions = {}
        pod.last_status = None
        for c in pod.containers:
            c.reset()

    # -- lifecycle
    def start(self) -> "PodMirror":
        with self._lock:
            if self.redis is not None:
                self._setup_redis()
            if self.nats is not None:
                self._setup_nats()
            self.sync()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"podmirror-{self.namespace}", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.sync()
        except BaseException as exc:  # noqa: BLE001 - re-raised by check()/stop()
            self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.check()

    def __enter__(self) -> "PodMirror":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def frozen(self):
        """Hold the kubelet's view: what happens meanwhile is seen in one sync afterwards,
        as when a blip falls between two probe periods (a restart, readiness never lost)."""
        with self._lock:
            yield

    def replace_pod(self, name: str, restart_server: bool = False) -> str:
        """Delete the Pod at once (grace period 0) and create it again under the same
        name, as the StatefulSet controller does: a new UID, restartCount 0. With
        ``restart_server`` the real server is restarted too (a new container).
        Returns the new UID."""
        with self._lock:
            pod = self.pods[name]
            self.client.delete(self._ns_path("v1", "pods", name), grace_period_seconds=0)
            servers = [c.server for c in pod.containers if c.server is not None]
            if restart_server:
                for s in servers:
                    s.stop()
            self._create_pod(pod)
            if restart_server:
                for s in servers:
                    s.start()
            self.sync()
            return pod.uid

    # -- the kubelet part
    def sync(self) -> None:
        """Observe every process once and PATCH each Pod whose status changed."""
        with self._lock:
            for pod in list(self.pods.values()):
                for c in pod.containers:
                    self._observe(pod, c)
                status = self._status(pod)
                if status != pod.last_status:
                    try:
                        self.client.patch(self._ns_path("v1", "pods", f"{pod.name}/status"),
                                          {"status": status})
                    except (OSError, http.client.HTTPException, KubeAPIError) as exc:
                        # An API server restarting: a kubelet retries its status update.
                        if isinstance(exc, KubeAPIError) and exc.status < 500:
                            raise
                        self.api_errors += 1
                        continue
                    pod.last_status = status
                    self.patches += 1

    def _observe(self, pod: MirroredPod, c: ContainerMirror) -> None:
        if c.server is None:  # sidecar: one container, running from pod creation on
            if not c.ever_started:
                c.ever_started = True
                c.started_at = pod.created_at
                c.container_id = f"containerd://{secrets.token_hex(32)}"
            c.ready = c.probe()
            return
        if c.proc is not None:
            rc = c.proc.poll()
            if rc is not None:  # the container's process exited
                code = _exit_code(rc)
                c.terminated = {
                    "exitCode": code, "reason": "Completed" if code == 0 else "Error",
                    "startedAt": _ts(c.started_at or _now()), "finishedAt": _ts(_now()),
                    "containerID": c.container_id,
                }
                c.exits.append(time.monotonic())
                c.proc = None
                c.ready = False
        if c.proc is None:
            cur = c.server.proc
            if cur is not None and cur.poll() is None:  # a new container started
                if c.ever_started:
                    c.restart_count += 1
                    if c.terminated is not None:
                        c.last_terminated = c.terminated
                c.terminated = None
                c.ever_started = True
                c.proc = cur
                c.started_at = _now()  # seen within one polling interval of the start
                c.container_id = f"containerd://{secrets.token_hex(32)}"
        c.ready = c.proc is not None and c.probe()

    def _crashlooping(self, c: ContainerMirror) -> bool:
        now = time.monotonic()
        while c.exits and now - c.exits[0] > self.crashloop_window:
            c.exits.popleft()
        return len(c.exits) >= self.crashloop_threshold

    def _backoff(self, c: ContainerMirror) -> str:
        seconds = min(10 * 2 ** max(len(c.exits) - self.crashloop_threshold, 0), 300)
        return f"{seconds // 60}m{seconds % 60}s" if seconds >= 60 else f"{seconds}s"

    def _container_status(self, pod: MirroredPod, c: ContainerMirror) -> dict:
        last: dict = {}
        if c.proc is not None or c.server is None:
            state: dict = {"running": {"startedAt": _ts(c.started_at or _now())}}
            if c.last_terminated:
                last = {"terminated": c.last_terminated}
        elif c.terminated is not None:
            if self._crashlooping(c):
                state = {"waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {self._backoff(c)} restarting failed container={c.name} "
                               f"pod={pod.name}_{self.namespace}({pod.uid})"}}
                last = {"terminated": c.terminated}
            else:
                state = {"terminated": c.terminated}
                if c.last_terminated:
                    last = {"terminated": c.last_terminated}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        status: dict[str, Any] = {
            "name": c.name, "image": c.image, "imageID": c.image_id if c.ever_started else "",
            "ready": c.ready, "restartCount": c.restart_count,
            "started": c.proc is not None or (c.server is None and c.ever_started),
            "state": state, "lastState": last,
        }
        if c.container_id and c.ever_started:
            status["containerID"] = c.container_id
        return status

    def _condition(self, pod: MirroredPod, ctype: str, ok: bool, reason: str = "",
                   message: str = "") -> dict:
        prev = pod.conditions.get(ctype)
        value = "True" if ok else "False"
        if prev is not None and prev["status"] == value:
            when = prev["lastTransitionTime"]
        else:
            when = _ts(_now())
        cond: dict[str, Any] = {"type": ctype, "status": value, "lastProbeTime": None,
                                "lastTransitionTime": when}
        if not ok and reason:
            cond["reason"] = reason
            cond["message"] = message
        pod.conditions[ctype] = cond
        return cond

    def _status(self, pod: MirroredPod) -> dict:
        statuses = [self._container_status(pod, c) for c in pod.containers]
        unready = [c.name for c in pod.containers if not c.ready]
        msg = f"containers with unready status: [{' '.join(unready)}]"
        any_started = any(c.ever_started for c in pod.containers)
        conditions = [
            self._condition(pod, "PodReadyToStartContainers", True),
            self._condition(pod, "Initialized", True),
            self._condition(pod, "Ready", not unready, "ContainersNotReady", msg),
            self._condition(pod, "ContainersReady", not unready, "ContainersNotReady", msg),
            self._condition(pod, "PodScheduled", True),
        ]
        return {
            "phase": "Running" if any_started else "Pending",
            "conditions": conditions,
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": _ts(pod.created_at or _now()),
            "qosClass": "BestEffort",
            "containerStatuses": statuses,
        }


def _which(name: str) -> str:
    return shutil.which(name) or f"/usr/bin/{name}"
