"""The operator's pure pieces around the blip machine: pods as the machine sees them,
the consuming check, the unprotectable warning, the guard's status, the RBAC audit
comparison and the metrics. No servers, no kopf runtime, no clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from blipguard.operator import crd, metrics, rbac
from blipguard.operator.blip import GuardState, initial_state, step
from blipguard.operator.channels import not_consuming
from blipguard.operator.handlers.pods import slim
from blipguard.operator.model import ContainerStatus, Dependency, GuardSettings, Mode, PodObserved, Tick
from blipguard.operator.runtime import pod_observed, unprotectable
from blipguard.operator.spec import parse
from blipguard.operator.status import Observations, build, rfc3339

REDIS = Dependency.REDIS
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


# --- pods ----------------------------------------------------------------------------


def container(name: str = "redis", restarts: int = 0, waiting: str | None = None) -> dict:
    state = {"waiting": {"reason": waiting, "message": "back-off 10s"}} if waiting else {"running": {}}
    return {"name": name, "image": "bitnami/redis:7.2", "ready": waiting is None, "restartCount": restarts,
            "state": state}


def k8s_pod(name: str = "redis-master-0", uid: str = "uid-1", ready: bool = True,
            containers: list[dict] | None = None) -> dict:
    """A Pod as the API server sends it, with the noise a guard must ignore."""
    flag = "True" if ready else "False"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "jobs", "uid": uid, "resourceVersion": "4711",
            "labels": {"app.kubernetes.io/name": "redis", "app.kubernetes.io/component": "master"},
            "annotations": {"checksum/config": "abc"},
            "ownerReferences": [{"kind": "StatefulSet", "name": "redis-master"}],
            "managedFields": [{"manager": "kubelet"}],
        },
        "spec": {"nodeName": "node-1", "containers": [{"name": "redis", "image": "bitnami/redis:7.2"}]},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.7",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": flag},
                {"type": "Ready", "status": flag},
            ],
            "containerStatuses": [container()] if containers is None else containers,
        },
    }


def timeless(obs: PodObserved) -> PodObserved:
    """``pod_observed`` stamps the wall clock: compare everything else."""
    return replace(obs, now=0.0)


def test_a_ready_pod_is_seen_ready_with_its_containers() -> None:
    pod = k8s_pod(containers=[container("redis", restarts=2), container("metrics", restarts=0)])
    obs = pod_observed(pod, REDIS, deleted=False)
    assert timeless(obs) == PodObserved(
        0.0, REDIS, "redis-master-0", "uid-1", ready=True, deleted=False,
        containers=(ContainerStatus("redis", 2, None), ContainerStatus("metrics", 0, None)),
    )


def test_a_crashlooping_unready_pod_carries_the_waiting_reason() -> None:
    pod = k8s_pod(ready=False, containers=[container("redis", restarts=5, waiting="CrashLoopBackOff")])
    obs = pod_observed(pod, REDIS, deleted=False)
    assert not obs.ready and not obs.deleted
    assert obs.containers == (ContainerStatus("redis", 5, "CrashLoopBackOff"),)


def test_readiness_is_the_pods_ready_condition_not_its_containers() -> None:
    pod = k8s_pod(ready=True)  # a readiness gate still open: containers ready, pod not
    next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")["status"] = "False"
    assert not pod_observed(pod, REDIS, deleted=False).ready


def test_a_deleted_pod_is_never_ready() -> None:
    obs = pod_observed(k8s_pod(ready=True), REDIS, deleted=True)
    assert (obs.ready, obs.deleted, obs.uid) == (False, True, "uid-1")


@pytest.mark.parametrize("pod", [
    {},
    {"metadata": {"name": "redis-master-0"}},
    {"metadata": None, "status": None},
    {"metadata": {"name": "redis-master-0", "uid": "u"}, "status": {}},
    {"metadata": {"name": "redis-master-0", "uid": "u"}, "status": {"phase": "Pending"}},
    {"metadata": {"name": "redis-master-0", "uid": "u"},
     "status": {"conditions": None, "containerStatuses": [{"name": "redis", "state": {"waiting": None}}]}},
], ids=["empty", "no-status", "null-status", "empty-status", "pending", "nulls"])
def test_missing_status_fields_mean_not_ready_and_do_not_crash(pod: dict) -> None:
    obs = pod_observed(pod, REDIS, deleted=False)
    assert not obs.ready
    assert all(c.restart_count == 0 and c.waiting_reason is None for c in obs.containers)


def test_slim_keeps_only_what_the_guard_reads() -> None:
    pod = k8s_pod(containers=[container(restarts=3, waiting="CrashLoopBackOff")])
    kept = slim(pod)
    assert kept == {
        "metadata": {"name": "redis-master-0", "namespace": "jobs", "uid": "uid-1",
                     "labels": pod["metadata"]["labels"]},
        "status": {"conditions": pod["status"]["conditions"],
                   "containerStatuses": pod["status"]["containerStatuses"]},
    }


@pytest.mark.parametrize("deleted", [False, True])
@pytest.mark.parametrize("pod", [
    k8s_pod(),
    k8s_pod(ready=False, containers=[container(restarts=7, waiting="CrashLoopBackOff")]),
    {"metadata": {"name": "redis-master-1", "uid": "uid-2"}},
], ids=["ready", "crashloop", "no-status"])
def test_the_slim_pod_is_seen_as_the_full_one(pod: dict, deleted: bool) -> None:
    assert timeless(pod_observed(slim(pod), REDIS, deleted)) == timeless(pod_observed(pod, REDIS, deleted))


# --- consuming after a resume ----------------------------------------------------------

QUEUES = ("ml_results", "antenna")


def reply(consuming: list[str], queues: tuple[str, ...] = QUEUES, ok: bool = True, paused: bool = False) -> dict:
    """A worker's answer to the pause status command."""
    return {"ok": ok, "paused": paused, "consuming": consuming, "queues": list(queues)}


def test_a_worker_missing_a_result_queue_is_named_with_it() -> None:
    replies = {"w2@host": reply(["ml_results"]), "w1@host": reply(["ml_results", "antenna"])}
    assert not_consuming(replies, QUEUES) == ["w2@host: antenna"]


def test_workers_missing_several_queues_are_listed_in_order() -> None:
    replies = {"b@host": reply([]), "a@host": reply(["antenna"])}
    assert not_consuming(replies, QUEUES) == ["a@host: ml_results", "b@host: ml_results, antenna"]


def test_a_paused_worker_is_never_reported() -> None:
    assert not_consuming({"w@host": reply([], paused=True)}, QUEUES) == []


def test_only_the_guards_queues_of_a_worker_count() -> None:
    replies = {"video@host": reply([], queues=("video",)),
               "mixed@host": reply(["ml_results"], queues=("ml_results", "video"))}
    assert not_consuming(replies, QUEUES) == []


def test_workers_that_errored_are_skipped() -> None:
    replies = {"w1@host": reply([], ok=False), "w2@host": {"ok": False, "error": "boom"}, "w3@host": "timeout"}
    assert not_consuming(replies, QUEUES) == []


# --- unprotectable ---------------------------------------------------------------------


def guard_spec(*kinds: str):
    return parse({"dependencies": [{"kind": k} for k in kinds],
                  "pause": {"brokerSecretRef": {"name": "celery-broker"}, "resultQueues": ["ml_results"]}},
                 "jobs")


@pytest.mark.parametrize("url", ["redis://:pw@redis-master.jobs:6379/0", "rediss://redis-master.jobs:6380/1"])
def test_a_redis_broker_with_a_guarded_redis_names_the_host(url: str) -> None:
    message = unprotectable(guard_spec("redis", "nats"), url)
    assert message is not None and "redis-master.jobs" in message


@pytest.mark.parametrize(("kinds", "url"), [
    (("redis",), "amqp://guest:guest@rabbitmq.jobs:5672//"),
    (("nats",), "redis://redis-master.jobs:6379/0"),
    (("redis",), None),
    (("redis",), ""),
])
def test_a_separate_pause_channel_is_protectable(kinds: tuple[str, ...], url: str | None) -> None:
    assert unprotectable(guard_spec(*kinds), url) is None


# --- status ----------------------------------------------------------------------------

SETTINGS = GuardSettings(settle_seconds=5, lease_seconds=30, drain_timeout_seconds=30)


def redis_pod(now: float, ready: bool = True) -> PodObserved:
    return PodObserved(now, REDIS, "redis-master-0", "uid-1", ready, (ContainerStatus("redis", 0),))


def blip_timeline() -> list[tuple[str, float, GuardState]]:
    """The real machine through one Redis blip: (label, time, state) after each step."""
    events = [
        ("baseline", redis_pod(T0)),
        ("blip", redis_pod(T0 + 10.5, ready=False)),
        ("renewed", Tick(T0 + 26)),
        ("healthy", redis_pod(T0 + 27)),
        ("recovered", Tick(T0 + 32.25)),
        ("drained", Tick(T0 + 62.25)),
    ]
    state, out = initial_state(SETTINGS), []
    for label, event in events:
        state, _ = step(state, event, SETTINGS)
        out.append((label, event.now, state))
    return out


def statuses(obs: Observations | None = None) -> dict[str, dict]:
    """The status written after each step of the timeline, by label (one Observations, as a runtime keeps)."""
    obs = Observations() if obs is None else obs
    return {label: build(state, obs, now, 3) for label, now, state in blip_timeline()}


def conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def condition_status(status: dict, ctype: crd.ConditionType) -> str:
    return conditions(status)[ctype]["status"]


def test_the_phase_follows_the_blip() -> None:
    phases = {label: s["phase"] for label, s in statuses().items()}
    # Recovered: Celery resumed, NATS still held until the results drain.
    assert phases == {"baseline": "watching", "blip": "paused", "renewed": "paused", "healthy": "paused",
                      "recovered": "paused", "drained": "watching"}


def test_the_blip_is_shown_while_it_lasts() -> None:
    s = statuses()
    assert s["baseline"]["blip"] is None
    expected = {"id": "redis-1700000010500", "dependency": "redis",
                "reason": "redis pod redis-master-0 not ready", "since": "2023-11-14T22:13:30Z"}
    assert s["blip"]["blip"] == s["renewed"]["blip"] == s["healthy"]["blip"] == expected
    assert set(expected) == {f.value for f in crd.BlipField}
    assert s["recovered"]["blip"] is None and s["drained"]["blip"] is None


def test_counters_and_the_last_blip_duration() -> None:
    s = statuses()
    assert s["baseline"]["counters"] == {"blips": 0, "pauses": 0, "renewals": 0, "degraded": 0, "forcedResumes": 0}
    assert s["blip"]["counters"] == {"blips": 1, "pauses": 1, "renewals": 0, "degraded": 0, "forcedResumes": 0}
    assert s["renewed"]["counters"] == {"blips": 1, "pauses": 1, "renewals": 1, "degraded": 0, "forcedResumes": 0}
    assert [s[k]["lastBlipSeconds"] for k in ("blip", "recovered", "drained")] == [None, 21.75, 21.75]
    assert s["drained"]["observedGeneration"] == 3


def test_the_paused_condition_follows_the_phase() -> None:
    s = statuses()
    paused = {label: condition_status(st, crd.ConditionType.PAUSED) for label, st in s.items()}
    assert paused == {"baseline": "False", "blip": "True", "renewed": "True", "healthy": "True",
                      "recovered": "True", "drained": "False"}
    assert "redis pod redis-master-0 not ready" in conditions(s["blip"])["Paused"]["message"]
    assert "draining" in conditions(s["recovered"])["Paused"]["message"]


def test_every_declared_condition_type_once_with_a_declared_status() -> None:
    declared = {t.value for t in crd.ConditionType}
    for label, status in statuses().items():
        types = [c["type"] for c in status["conditions"]]
        assert sorted(types) == sorted(declared), label
        assert all(c["status"] in ("True", "False") for c in status["conditions"]), label


def test_status_uses_only_declared_fields() -> None:
    spec_error = Observations(spec_error="bad", workers_confirmed=2, not_consuming=["w: q"],
                              unprotectable="same redis", force_resume_handled="now")
    for status in [*statuses().values(), *statuses(spec_error).values()]:
        assert set(status) <= {f.value for f in crd.StatusField}
        assert set(status["counters"]) == {c.value for c in crd.Counter}


def test_last_transition_time_moves_only_when_the_status_flips() -> None:
    s = statuses()
    since = {label: {t: c["lastTransitionTime"] for t, c in conditions(st).items()} for label, st in s.items()}
    start, blip, drained = rfc3339(T0), rfc3339(T0 + 10.5), rfc3339(T0 + 62.25)
    assert since["baseline"]["Paused"] == start
    assert since["blip"]["Paused"] == since["recovered"]["Paused"] == blip
    assert since["drained"]["Paused"] == drained
    for label in s:  # never flipped
        assert since[label]["Ready"] == since[label]["SpecValid"] == start, label


def test_a_spec_error_makes_the_guard_not_ready_with_the_message() -> None:
    error = "spec.timing.leaseSeconds: must be > 0, got 0"
    status = build(GuardState(mode=Mode.SUSPENDED), Observations(spec_error=error), T0, 2)
    cs = conditions(status)
    assert (cs["SpecValid"]["status"], cs["SpecValid"]["message"]) == ("False", error)
    assert (cs["Ready"]["status"], cs["Ready"]["message"]) == ("False", error)
    assert status["phase"] == "suspended"


def test_a_fixed_spec_flips_spec_valid_and_ready_back() -> None:
    obs = Observations(spec_error="spec.pause: required")
    build(GuardState(), obs, T0, 1)
    obs.spec_error = None
    cs = conditions(build(GuardState(), obs, T0 + 60, 2))
    assert [cs[t]["status"] for t in ("SpecValid", "Ready")] == ["True", "True"]
    assert cs["SpecValid"]["lastTransitionTime"] == cs["Ready"]["lastTransitionTime"] == rfc3339(T0 + 60)


def test_workers_not_consuming_and_unprotectable_show_in_conditions() -> None:
    obs = Observations(not_consuming=["w1@host: antenna"], unprotectable="the Celery broker is Redis (r)")
    cs = conditions(build(GuardState(), obs, T0, 1))
    assert cs["Consuming"]["status"] == "False" and "w1@host: antenna" in cs["Consuming"]["message"]
    assert cs["Protectable"]["status"] == "False" and cs["Protectable"]["message"] == obs.unprotectable
    assert cs["Ready"]["status"] == "True"


# --- RBAC ------------------------------------------------------------------------------

OPERATOR = "system:serviceaccount:blipguard:blipguard-operator"


def audit(verb: str, resource: str | None, group: str | None = None, subresource: str | None = None,
          user: str = OPERATOR, decision: str = "allow", stage: str = "ResponseComplete") -> dict:
    """An audit.k8s.io/v1 Event; core-group requests carry no apiGroup, as the API server writes them."""
    event = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "stage": stage,
             "verb": verb, "user": {"username": user, "groups": ["system:serviceaccounts"]},
             "annotations": {"authorization.k8s.io/decision": decision, "authorization.k8s.io/reason": ""}}
    if resource is None:
        event["requestURI"] = "/apis"
        return event
    ref = {"resource": resource, "namespace": "jobs", "apiVersion": "v1"}
    if group is not None:
        ref["apiGroup"] = group
    if subresource is not None:
        ref["subresource"] = subresource
    event["objectRef"] = ref
    event["requestURI"] = f"/{resource}"
    return event


AUDIT_LOG = [
    audit("watch", "blipguards", crd.GROUP),
    audit("patch", "blipguards", crd.GROUP, subresource="status"),
    audit("list", "pods"),
    audit("create", "events"),
    audit("get", "secrets", decision="forbid"),
    audit("list", "namespaces", decision="forbid"),
    audit("get", None),  # discovery: a non-resource URL
    audit("delete", "pods", user="system:admin"),
    audit("delete", "pods", stage="RequestReceived"),
]


def test_used_lists_the_allowed_requests_of_the_user() -> None:
    assert rbac.used(AUDIT_LOG, OPERATOR) == {
        (crd.GROUP, "blipguards", "watch"),
        (crd.GROUP, "blipguards/status", "patch"),
        ("", "pods", "list"),
        ("", "events", "create"),
    }


def test_used_lists_the_forbidden_requests_with_forbidden() -> None:
    assert rbac.used(AUDIT_LOG, OPERATOR, forbidden=True) == {("", "secrets", "get"), ("", "namespaces", "list")}


def test_the_role_grants_exactly_the_declared_permissions() -> None:
    role = rbac.role("jobs")
    rules = {(g, r, v) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert rules == rbac.granted()
    assert role["metadata"]["namespace"] == "jobs"
    assert rbac.used(AUDIT_LOG, OPERATOR) <= rbac.granted()


def test_the_binding_names_the_role_and_the_service_account() -> None:
    binding = rbac.role_binding("jobs", "blipguard-operator", "blipguard")
    assert binding["roleRef"]["name"] == rbac.role("jobs")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "blipguard-operator",
                                    "namespace": "blipguard"}]


# --- metrics ---------------------------------------------------------------------------


def test_the_exported_names_include_what_alerts_use() -> None:
    names = metrics.exported_names()
    for name in ("blips_total", "blip_duration_seconds_bucket", "paused"):
        assert metrics.PREFIX + name in names


def guard_series(namespace: str, guard: str) -> set[str]:
    """Names of the samples the registry exports for one guard."""
    return {s.name for m in metrics.REGISTRY.collect() for s in m.samples
            if s.labels.get("namespace") == namespace and s.labels.get("guard") == guard}


def record(namespace: str, guard: str) -> None:
    labels = {"namespace": namespace, "guard": guard}
    metrics.PAUSED.labels(**labels).set(1)
    metrics.BLIPS.labels(**labels, dependency="redis").inc()
    metrics.BLIP_SECONDS.labels(**labels, dependency="redis").observe(12.5)
    metrics.BROADCASTS.labels(**labels, command="pause", outcome="ok").inc()


@pytest.fixture
def two_guards():
    guards = [("units-a", "fleet"), ("units-b", "fleet")]  # same name, other namespace
    for g in guards:
        record(*g)
    yield guards
    for g in guards:
        metrics.forget(*g)


def test_forget_drops_only_the_given_guards_series(two_guards) -> None:
    gone, kept = two_guards
    before = guard_series(*kept)
    assert metrics.PREFIX + "blip_duration_seconds_bucket" in before
    metrics.forget(*gone)
    assert guard_series(*gone) == set()
    assert guard_series(*kept) == before
