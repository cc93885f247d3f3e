"""The pod mirror: Pods of the real redis-server / nats-server, seen through a watch."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Callable

import pytest

from blipguard.localstack.kube import KubeAPIError, KubeServer, Watch, WatchEvent
from blipguard.localstack.nats import NatsServer
from blipguard.localstack.podmirror import PodMirror
from blipguard.localstack.procs import wait_until
from blipguard.localstack.redis import RedisServer

pytestmark = pytest.mark.kube

DEADLINE = 5.0  # seconds for any flip to show up on the watch


def container(obj: dict, name: str) -> dict:
    for cs in obj.get("status", {}).get("containerStatuses", []):
        if cs["name"] == name:
            return cs
    return {}


def condition(obj: dict, ctype: str) -> dict:
    for c in obj.get("status", {}).get("conditions", []):
        if c["type"] == ctype:
            return c
    return {}


def pod_ready(obj: dict) -> bool:
    return condition(obj, "Ready").get("status") == "True"


def on(pod: str, check: Callable[[dict], object]) -> Callable[[WatchEvent], bool]:
    def predicate(ev: WatchEvent) -> bool:
        return ev.type in ("ADDED", "MODIFIED") and ev.object["metadata"]["name"] == pod and bool(check(ev.object))
    return predicate


@pytest.fixture
def flip(pod_watch: Watch, latencies: list):
    def do(what: str, change, pod: str, check, record: bool = True) -> dict:
        """``change()`` (a real process change), then the watch event; records the latency."""
        mark = pod_watch.mark()
        change()
        changed_at = time.monotonic()
        ev = pod_watch.wait_for(on(pod, check), DEADLINE, what, start=mark)
        if record:
            latencies.append((what, max(ev.received_at - changed_at, 0.0)))
        return ev.object
    return do


def redis_terminated(obj: dict) -> dict:
    return container(obj, "redis").get("state", {}).get("terminated") or {}


def redis_running_ready(restarts: int):
    def check(obj: dict) -> bool:
        cs = container(obj, "redis")
        return ("running" in cs.get("state", {}) and cs.get("ready") is True
                and cs.get("restartCount") == restarts and pod_ready(obj))
    return check


def kill(server: RedisServer | NatsServer, sig: int = signal.SIGKILL) -> None:
    """A crash: the process dies without the server object knowing."""
    assert server.pid is not None
    os.kill(server.pid, sig)
    wait_until(lambda: server.proc is not None and server.proc.poll() is not None, 5, "process exit", 0.005)


def test_pods_labelled_like_the_charts(kube: KubeServer, namespace: str, mirror: PodMirror,
                                       pod_watch: Watch) -> None:
    c = kube.client
    pods = f"/api/v1/namespaces/{namespace}/pods"
    redis_pods = c.get(pods, labelSelector="app.kubernetes.io/name=redis,app.kubernetes.io/instance=cache,"
                                           "app.kubernetes.io/component=master")["items"]
    assert [p["metadata"]["name"] for p in redis_pods] == ["cache-redis-master-0"]
    sts = c.get(f"/apis/apps/v1/namespaces/{namespace}/statefulsets/cache-redis-master")
    owner = redis_pods[0]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
        ("StatefulSet", "cache-redis-master", sts["metadata"]["uid"], True)

    nats_servers = c.get(pods, labelSelector="app.kubernetes.io/name=nats,app.kubernetes.io/instance=bus,"
                                             "app.kubernetes.io/component=nats")["items"]
    assert [p["metadata"]["name"] for p in nats_servers] == ["bus-nats-0"]
    assert nats_servers[0]["metadata"]["ownerReferences"][0]["name"] == "bus-nats"
    all_nats = c.get(pods, labelSelector="app.kubernetes.io/name=nats,app.kubernetes.io/instance=bus")["items"]
    box = [p for p in all_nats if p["metadata"]["labels"]["app.kubernetes.io/component"] == "nats-box"]
    assert len(all_nats) == 2 and len(box) == 1
    assert re.fullmatch(r"bus-nats-box-[a-z0-9]+-[a-z0-9]{5}", box[0]["metadata"]["name"])
    assert box[0]["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"

    # All three come up Running and Ready, as a kubelet reports them.
    for name in ("cache-redis-master-0", "bus-nats-0", mirror.nats_box_pod):
        obj = pod_watch.wait_for(on(name, pod_ready), DEADLINE, f"{name} Ready").object
        st = obj["status"]
        assert st["phase"] == "Running" and st["podIP"] == "127.0.0.1" and st["qosClass"] == "BestEffort"
        assert [cd["type"] for cd in st["conditions"]] == [
            "PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
        for cs in st["containerStatuses"]:
            assert cs["ready"] and cs["started"] and cs["restartCount"] == 0
            assert cs["containerID"].startswith("containerd://") and "@sha256:" in cs["imageID"]
    redis_pod = c.get(f"{pods}/cache-redis-master-0")
    assert redis_pod["spec"]["containers"][0]["ports"][0]["containerPort"] == mirror.redis.port


def test_redis_stop_start_restart_count_and_ping_readiness(mirror: PodMirror, redis_server: RedisServer,
                                                          pod_watch: Watch, flip) -> None:
    pod = mirror.redis_pod
    pod_watch.wait_for(on(pod, redis_running_ready(0)), DEADLINE, "redis Ready")

    obj = flip("redis stop", redis_server.stop, pod, redis_terminated)
    term = redis_terminated(obj)
    assert term["exitCode"] == 0 and term["reason"] == "Completed"  # SHUTDOWN exits 0
    assert term["containerID"].startswith("containerd://") and term["startedAt"] <= term["finishedAt"]
    for ctype in ("Ready", "ContainersReady"):
        cond = condition(obj, ctype)
        assert (cond["status"], cond["reason"], cond["message"]) == \
            ("False", "ContainersNotReady", "containers with unready status: [redis]")
    cs = container(obj, "redis")
    assert cs["ready"] is False and cs["restartCount"] == 0 and obj["status"]["phase"] == "Running"

    obj = flip("redis start", redis_server.start, pod, redis_running_ready(1))
    cs = container(obj, "redis")
    assert cs["lastState"]["terminated"] == term
    assert cs["state"]["running"]["startedAt"] >= term["finishedAt"]
    assert cs["containerID"] != term["containerID"]

    # Alive but not answering PING (SIGSTOP): running, restartCount unchanged, not Ready.
    pid = redis_server.pid
    assert pid is not None
    try:
        obj = flip("redis frozen", lambda: os.kill(pid, signal.SIGSTOP), pod,
                   lambda o: condition(o, "Ready").get("status") == "False", record=False)
        cs = container(obj, "redis")
        assert "running" in cs["state"] and cs["ready"] is False and cs["restartCount"] == 1
    finally:
        mark = pod_watch.mark()
        os.kill(pid, signal.SIGCONT)
    pod_watch.wait_for(on(pod, redis_running_ready(1)), DEADLINE, "redis Ready after SIGCONT", start=mark)
    assert redis_server.is_up()


def test_redis_crashloop_backoff(mirror: PodMirror, redis_server: RedisServer, pod_watch: Watch, flip) -> None:
    pod = mirror.redis_pod
    obj = pod_watch.wait_for(on(pod, redis_running_ready(0)), DEADLINE, "redis Ready")
    uid = obj.object["metadata"]["uid"]
    for n in (1, 2):
        obj = flip(f"redis crash {n}", lambda: kill(redis_server), pod, redis_terminated)
        term = redis_terminated(obj)
        assert (term["exitCode"], term["reason"]) == (137, "Error")  # SIGKILL: 128 + 9
        assert "waiting" not in container(obj, "redis")["state"]
        flip(f"redis up {n}", redis_server.start, pod, redis_running_ready(n))

    def backoff(o: dict) -> bool:
        return container(o, "redis").get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff"

    obj = flip("redis crash 3", lambda: kill(redis_server), pod, backoff)
    cs = container(obj, "redis")
    assert cs["state"]["waiting"]["message"] == \
        f"back-off 10s restarting failed container=redis pod={pod}_{mirror.namespace}({uid})"
    assert cs["lastState"]["terminated"]["exitCode"] == 137
    assert cs["restartCount"] == 2 and cs["ready"] is False
    assert condition(obj, "Ready")["status"] == "False"

    obj = flip("redis up 3", redis_server.start, pod, redis_running_ready(3))
    assert container(obj, "redis")["lastState"]["terminated"]["exitCode"] == 137


def test_replaced_statefulset_pod_new_uid(kube: KubeServer, mirror: PodMirror, redis_server: RedisServer,
                                          pod_watch: Watch, flip) -> None:
    pod = mirror.redis_pod
    old_uid = pod_watch.wait_for(on(pod, redis_running_ready(0)), DEADLINE, "redis Ready").object["metadata"]["uid"]
    redis_server.stop()
    redis_server.start()
    pod_watch.wait_for(on(pod, redis_running_ready(1)), DEADLINE, "restartCount 1")

    mark = pod_watch.mark()
    new_uid = mirror.replace_pod(pod)
    assert new_uid != old_uid
    deleted = pod_watch.wait_for(lambda e: e.type == "DELETED" and e.object["metadata"]["name"] == pod,
                                 DEADLINE, "the old pod deleted", start=mark)
    assert deleted.object["metadata"]["uid"] == old_uid
    added = pod_watch.wait_for(lambda e: e.type == "ADDED" and e.object["metadata"]["name"] == pod,
                               DEADLINE, "the new pod added", start=mark)
    assert added.object["metadata"]["uid"] == new_uid
    obj = pod_watch.wait_for(on(pod, lambda o: o["metadata"]["uid"] == new_uid and redis_running_ready(0)(o)),
                             DEADLINE, "the new pod Ready", start=mark).object
    assert container(obj, "redis")["lastState"] == {}
    got = kube.client.get(f"/api/v1/namespaces/{mirror.namespace}/pods/{pod}")
    assert got["metadata"]["uid"] == new_uid and container(got, "redis")["restartCount"] == 0

    # Replaced with a new process behind it, as when a node runs the new pod.
    old_pid, mark = redis_server.pid, pod_watch.mark()
    third_uid = mirror.replace_pod(pod, restart_server=True)
    assert third_uid not in (old_uid, new_uid) and redis_server.pid != old_pid
    obj = pod_watch.wait_for(on(pod, lambda o: o["metadata"]["uid"] == third_uid and redis_running_ready(0)(o)),
                             DEADLINE, "the third pod Ready", start=mark).object
    assert container(obj, "redis")["containerID"] != container(got, "redis")["containerID"]


def test_nats_stop_leaves_nats_box_ready(kube: KubeServer, mirror: PodMirror, nats_server: NatsServer,
                                         pod_watch: Watch, flip) -> None:
    pod, box = mirror.nats_pod, mirror.nats_box_pod
    pod_watch.wait_for(on(pod, pod_ready), DEADLINE, "nats Ready")
    pod_watch.wait_for(on(box, pod_ready), DEADLINE, "nats-box Ready")
    mark = pod_watch.mark()

    obj = flip("nats stop", nats_server.stop, pod,
               lambda o: condition(o, "Ready").get("status") == "False")
    assert condition(obj, "Ready")["message"] == "containers with unready status: [nats]"
    assert "terminated" in container(obj, "nats")["state"]
    reloader = container(obj, "reloader")
    assert reloader["ready"] is True and "running" in reloader["state"]

    flip("nats start", nats_server.start, pod,
         lambda o: pod_ready(o) and container(o, "nats")["restartCount"] == 1)
    box_events = [e for e in pod_watch.events[mark:] if e.object["metadata"]["name"] == box]
    assert all(pod_ready(e.object) for e in box_events)
    got = kube.client.get(f"/api/v1/namespaces/{mirror.namespace}/pods/{box}")
    assert pod_ready(got) and container(got, "nats-box")["restartCount"] == 0


def test_mirror_thread_errors_reach_the_test(kube: KubeServer, namespace: str,
                                             redis_server: RedisServer) -> None:
    m = PodMirror(kube.client, namespace, redis=redis_server)
    m.start()
    try:
        # Someone else deletes the pod: the mirror's next status PATCH gets a 404.
        kube.client.delete(f"/api/v1/namespaces/{namespace}/pods/{m.redis_pod}", grace_period_seconds=0)
        redis_server.stop()
        wait_until(lambda: m.error is not None, DEADLINE, "the mirror's thread to fail")
        with pytest.raises(KubeAPIError) as failed:
            m.check()
        assert failed.value.status == 404 and failed.value.method == "PATCH"
    finally:
        with pytest.raises(KubeAPIError):
            m.stop()
