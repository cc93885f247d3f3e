"""The BlipGuard CRD on a real API server: defaults filled in, bad specs rejected with a
message naming the problem, printer columns served."""

from __future__ import annotations

import copy
import http.client
import json
import ssl

import pytest

from blipguard.localstack.kube import KubeServer
from blipguard.operator import crd
from blipguard.operator.kube_setup import install_crd
from blipguard.operator.model import MAX_LEASE_SECONDS
from blipguard.operator.spec import parse

pytestmark = [pytest.mark.kube, pytest.mark.operator]

MINIMAL = {
    "dependencies": [{"kind": "redis"}],
    "pause": {"brokerSecretRef": {"name": "celery-broker"}, "resultQueues": ["ml_results"]},
}


@pytest.fixture(scope="module")
def installed(kube: KubeServer) -> dict:
    return install_crd(kube.client)


def path(namespace: str, name: str = "") -> str:
    base = f"/apis/{crd.API_VERSION}/namespaces/{namespace}/{crd.PLURAL}"
    return f"{base}/{name}" if name else base


def guard(name: str, spec: dict) -> dict:
    return {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": name}, "spec": spec}


def changed(**changes: object) -> dict:
    """MINIMAL with top-level keys or dotted paths replaced (``...`` deletes)."""
    spec = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return spec


def test_install_is_idempotent(kube: KubeServer, installed: dict) -> None:
    again = install_crd(kube.client)
    assert again["metadata"]["uid"] == installed["metadata"]["uid"]
    assert again["spec"]["names"]["shortNames"] == crd.SHORT_NAMES


def test_minimal_guard_gets_the_defaults(kube: KubeServer, namespace: str, installed: dict) -> None:
    created = kube.client.create(path(namespace), guard("minimal", MINIMAL))
    assert created["spec"] == {
        "mode": "active",
        "dependencies": [{"kind": "redis"}],
        "pause": {"brokerSecretRef": {"name": "celery-broker", "key": "url"}, "resultQueues": ["ml_results"]},
        "timing": {"settleSeconds": 5, "leaseSeconds": 30, "maxPauseSeconds": 600, "drainTimeoutSeconds": 30},
    }
    assert parse(created["spec"], namespace) == parse(MINIMAL, namespace)


def test_nats_defaults_and_a_full_guard(kube: KubeServer, namespace: str, installed: dict) -> None:
    spec = changed(
        mode="observe-only",
        dependencies=[{"kind": "nats", "namespace": "messaging",
                       "selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}},
                      {"kind": "redis", "selector": {"matchLabels": {"app": "cache"}}}],
        pause__nats={"url": "nats://nats.messaging:4222"},
        pause__expectedWorkers=2,
        timing={"settleSeconds": 0.5, "leaseSeconds": 60},
    )
    created = kube.client.create(path(namespace), guard("full", spec))
    assert created["spec"]["pause"]["nats"] == {
        "url": "nats://nats.messaging:4222", "stream": "job_{id}", "consumer": "job-{id}-consumer"}
    assert created["spec"]["timing"] == {
        "settleSeconds": 0.5, "leaseSeconds": 60, "maxPauseSeconds": 600, "drainTimeoutSeconds": 30}
    parsed = parse(created["spec"], namespace)
    assert parsed == parse(spec, namespace)
    assert parsed.pause.nats.stream_for(5) == "job_5"


INVALID = f'{crd.KIND}.{crd.GROUP} "bad" is invalid: '

BAD = {
    "unknown mode": (
        changed(mode="yolo"),
        'spec.mode: Unsupported value: "yolo": supported values: "active", "observe-only", "suspended"'),
    "lease above the max": (
        changed(timing={"leaseSeconds": MAX_LEASE_SECONDS + 1, "maxPauseSeconds": 7200}),
        f"spec.timing.leaseSeconds: Invalid value: {MAX_LEASE_SECONDS + 1:g}: "
        f"spec.timing.leaseSeconds in body should be less than or equal to {MAX_LEASE_SECONDS:g}"),
    "max pause below the lease": (
        changed(timing={"leaseSeconds": 60, "maxPauseSeconds": 30}),
        "spec.timing.maxPauseSeconds: Invalid value: \"object\": maxPauseSeconds must be >= leaseSeconds"),
    "max pause below the default lease": (
        changed(timing={"maxPauseSeconds": 10}),
        "maxPauseSeconds must be >= leaseSeconds"),
    "duplicate dependency kinds": (
        changed(dependencies=[{"kind": "redis"}, {"kind": "nats"}, {"kind": "redis", "namespace": "other"}]),
        'spec.dependencies: Invalid value: "array": each dependency kind may appear only once'),
    "nats with url and urlSecretRef": (
        changed(pause__nats={"url": "nats://a:4222", "urlSecretRef": {"name": "nats"}}),
        'spec.pause.nats: Invalid value: "object": set exactly one of url and urlSecretRef'),
    "nats with neither url nor urlSecretRef": (
        changed(pause__nats={"stream": "s{id}"}),
        "set exactly one of url and urlSecretRef"),
    "consumer without {id}": (
        changed(pause__nats={"url": "nats://a:4222", "consumer": "job-consumer"}),
        'spec.pause.nats.consumer: Invalid value: "string": must contain {id}, the placeholder for the job id'),
    "stream without {id}": (
        changed(pause__nats={"url": "nats://a:4222", "stream": "jobs"}),
        'spec.pause.nats.stream: Invalid value: "string": must contain {id}'),
    "missing brokerSecretRef": (
        changed(pause__brokerSecretRef=...),
        "spec.pause.brokerSecretRef: Required value"),
    "empty resultQueues": (
        changed(pause__resultQueues=[]),
        "spec.pause.resultQueues: Invalid value: 0: spec.pause.resultQueues in body should have at least 1 items"),
    "duplicate resultQueues": (
        changed(pause__resultQueues=["a", "a"]),
        'spec.pause.resultQueues[1]: Duplicate value: "a"'),
    "empty selector": (
        changed(dependencies=[{"kind": "redis", "selector": {}}]),
        "an empty selector would watch every pod of the namespace"),
    "In without values": (
        changed(dependencies=[{"kind": "redis", "selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]),
        "In and NotIn need values; Exists and DoesNotExist take none"),
    "no dependencies": (
        changed(dependencies=[]),
        "spec.dependencies in body should have at least 1 items"),
    "no spec": (None, "spec: Required value"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_spec_is_rejected_with_a_readable_message(kube: KubeServer, namespace: str, installed: dict,
                                                      case: str) -> None:
    spec, expected = BAD[case]
    body = guard("bad", spec)
    if spec is None:
        del body["spec"]
    status, answer = kube.client.request_raw("POST", path(namespace), body)
    assert status == 422, answer
    assert answer["reason"] == "Invalid"
    assert answer["message"].startswith(INVALID)
    assert expected in answer["message"], answer["message"]


def test_status_schema(kube: KubeServer, namespace: str, installed: dict) -> None:
    kube.client.create(path(namespace), guard("g", MINIMAL))
    status, answer = kube.client.request_raw(
        "PATCH", path(namespace, "g") + "/status", {"status": {"phase": "asleep"}},
        content_type="application/merge-patch+json")
    assert status == 422
    assert 'status.phase: Unsupported value: "asleep"' in answer["message"]
    kopf_progress = {"progress": {"h": {"started": "2024-01-01T00:00:00Z"}}}
    patched = kube.client.patch(path(namespace, "g") + "/status", {"status": {
        "phase": "watching", "forceResumeHandled": "2024-01-01T00:00:00Z", "kopf": kopf_progress}})
    assert patched["status"]["forceResumeHandled"] == "2024-01-01T00:00:00Z"
    assert patched["status"]["kopf"] == kopf_progress  # kopf's own bookkeeping is not pruned


def _table(kube: KubeServer, url: str) -> dict:
    assert kube.certs is not None
    ctx = ssl.create_default_context(cafile=str(kube.certs.ca_crt))
    ctx.load_cert_chain(str(kube.certs.admin_crt), str(kube.certs.admin_key))
    conn = http.client.HTTPSConnection("127.0.0.1", int(kube.server.rsplit(":", 1)[1]), context=ctx, timeout=10)
    try:
        conn.request("GET", url, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200, body
    return body


def test_printer_columns(kube: KubeServer, namespace: str, installed: dict) -> None:
    kube.client.create(path(namespace), guard("g", MINIMAL))
    kube.client.patch(path(namespace, "g") + "/status", {"status": {
        "phase": "paused",
        "blip": {"id": "redis-1700000000000", "dependency": "redis", "reason": "redis pod cache-0 not ready",
                 "since": "2024-01-01T00:00:00Z"},
        "counters": {"blips": 3, "pauses": 3},
        "lastBlipSeconds": 12.5,
    }})
    table = _table(kube, path(namespace))
    assert table["kind"] == "Table"
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names == ["Name", "Phase", "Blip", "Dependency", "Blips", "Last blip", "Age"]
    cells = dict(zip(names, table["rows"][0]["cells"]))
    assert (cells["Phase"], cells["Blip"], cells["Dependency"], cells["Blips"], cells["Last blip"]) == (
        "paused", "redis-1700000000000", "redis", 3, 12.5)

    out = kube.kubectl("get", "bguard", "-n", namespace).stdout
    header, row = out.splitlines()
    assert header.split() == ["NAME", "PHASE", "BLIP", "DEPENDENCY", "BLIPS", "LAST", "BLIP", "AGE"]
    assert row.split()[:6] == ["g", "paused", "redis-1700000000000", "redis", "3", "12.5"]
