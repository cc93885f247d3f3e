"""The guard's spec: parsing, defaults, every SpecError, selectors, NATS name patterns,
and the CRD manifest as the single source of truth. No servers."""

import copy
import random
from pathlib import Path

import pytest
import yaml

from blipguard.operator import crd
from blipguard.operator.model import MAX_LEASE_SECONDS, Dependency, GuardSettings, Mode
from blipguard.operator.spec import (
    GuardSpec,
    NatsTarget,
    PauseTarget,
    Requirement,
    SecretRef,
    Selector,
    SpecError,
    WatchedDependency,
    default_selector,
    parse,
)

CRD_FILE = Path(__file__).resolve().parents[2] / "operator" / "crds" / "blipguards.blipguard.io.yaml"

MINIMAL = {
    "dependencies": [{"kind": "redis"}],
    "pause": {"brokerSecretRef": {"name": "celery-broker"}, "resultQueues": ["ml_results"]},
}

FULL = {
    "mode": "observe-only",
    "dependencies": [
        {"kind": "nats", "namespace": "messaging",
         "selector": {"matchLabels": {"app": "bus"},
                      "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["box"]},
                                           {"key": "example.com/canary", "operator": "DoesNotExist"}]}},
        {"kind": "redis"},
    ],
    "pause": {
        "brokerSecretRef": {"name": "broker", "key": "BROKER_URL"},
        "resultQueues": ["ml_results", "antenna"],
        "expectedWorkers": 3,
        "nats": {"urlSecretRef": {"name": "nats-creds"}, "stream": "pipeline-{id}", "consumer": "c{id}"},
    },
    "timing": {"settleSeconds": 2.5, "leaseSeconds": 60, "maxPauseSeconds": 900, "drainTimeoutSeconds": 0},
}


def with_(path: str, value: object, base: dict = MINIMAL) -> dict:
    """A copy of ``base`` with the dotted ``path`` set (``...`` deletes it)."""
    spec = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


# --- parsing -------------------------------------------------------------------------


def test_minimal_spec_gets_the_defaults() -> None:
    assert parse(MINIMAL, "jobs") == GuardSpec(
        dependencies=(WatchedDependency(Dependency.REDIS, "jobs", default_selector(Dependency.REDIS)),),
        pause=PauseTarget(SecretRef("celery-broker", "url"), ("ml_results",), None, None),
        settings=GuardSettings(),
    )


def test_full_spec() -> None:
    guard = parse(FULL, "jobs")
    nats, redis = guard.dependencies
    assert nats == WatchedDependency(Dependency.NATS, "messaging", Selector(
        (("app", "bus"),),
        (Requirement("tier", "NotIn", ("box",)), Requirement("example.com/canary", "DoesNotExist")),
    ))
    assert redis == WatchedDependency(Dependency.REDIS, "jobs", default_selector(Dependency.REDIS))
    assert guard.pause == PauseTarget(
        SecretRef("broker", "BROKER_URL"), ("ml_results", "antenna"), 3,
        NatsTarget(None, SecretRef("nats-creds", "url"), "pipeline-{id}", "c{id}"),
    )
    assert guard.settings == GuardSettings(settle_seconds=2.5, lease_seconds=60, max_pause_seconds=900,
                                           drain_timeout_seconds=0, mode=Mode.OBSERVE_ONLY)


def test_nats_url_and_default_names() -> None:
    spec = with_("pause.nats", {"url": "nats://nats.messaging:4222"})
    assert parse(spec, "jobs").pause.nats == NatsTarget("nats://nats.messaging:4222", None,
                                                       "job_{id}", "job-{id}-consumer")


BAD = [
    # (path to set, value, error path, message fragment)
    ("mode", "yolo", "spec.mode", "must be one of active, observe-only, suspended, got 'yolo'"),
    ("mode", 3, "spec.mode", "must be one of"),
    ("timing.leaseSeconds", MAX_LEASE_SECONDS + 1, "spec.timing.leaseSeconds",
     f"must be > 0 and at most {MAX_LEASE_SECONDS:g}"),
    ("timing.leaseSeconds", 0, "spec.timing.leaseSeconds", "must be > 0"),
    ("timing.leaseSeconds", "30", "spec.timing.leaseSeconds", "must be a number of seconds, got a string"),
    ("timing.leaseSeconds", True, "spec.timing.leaseSeconds", "must be a number of seconds, got a boolean"),
    ("timing.leaseSeconds", float("nan"), "spec.timing.leaseSeconds", "must be a finite number"),
    ("timing.leaseSeconds", 10**400, "spec.timing.leaseSeconds", "too large"),
    ("timing.settleSeconds", -1, "spec.timing.settleSeconds", "must be >= 0, got -1"),
    ("timing.settleSeconds", 3601, "spec.timing.settleSeconds", "must be at most 3600"),
    ("timing.maxPauseSeconds", 10, "spec.timing.maxPauseSeconds", "must be >= leaseSeconds (30), got 10"),
    ("timing.maxPauseSeconds", 86401, "spec.timing.maxPauseSeconds", "must be at most 86400"),
    ("timing.drainTimeoutSeconds", -0.5, "spec.timing.drainTimeoutSeconds", "must be >= 0"),
    ("timing", [], "spec.timing", "must be an object, got a list"),
    ("dependencies", ..., "spec.dependencies", "required"),
    ("dependencies", [], "spec.dependencies", "must have 1 to 8 items, got 0"),
    ("dependencies", [{"kind": "redis"}] * 9, "spec.dependencies", "must have 1 to 8 items, got 9"),
    ("dependencies", {"kind": "redis"}, "spec.dependencies", "must be a list, got an object"),
    ("dependencies", "redis", "spec.dependencies", "must be a list, got a string"),
    ("dependencies.0", "redis", "spec.dependencies[0]", "must be an object, got a string"),
    ("dependencies.0.kind", "postgres", "spec.dependencies[0].kind", "must be one of redis, nats"),
    ("dependencies", [{"kind": "redis"}, {"kind": "redis", "namespace": "x"}], "spec.dependencies[1].kind",
     "redis appears more than once"),
    ("dependencies.0.namespace", "Bad_NS", "spec.dependencies[0].namespace", "must be a namespace name"),
    ("dependencies.0.selector", {}, "spec.dependencies[0].selector", "an empty selector would watch every pod"),
    ("dependencies.0.selector", {"matchLabels": {"-bad": "x"}}, "spec.dependencies[0].selector.matchLabels",
     "invalid label key '-bad'"),
    ("dependencies.0.selector", {"matchLabels": {"Bad_Prefix/name": "x"}},
     "spec.dependencies[0].selector.matchLabels", "the prefix must be a DNS subdomain"),
    ("dependencies.0.selector", {"matchLabels": {"app": "a b"}},
     "spec.dependencies[0].selector.matchLabels.app", "invalid label value 'a b'"),
    ("dependencies.0.selector", {"matchLabels": {"app": 1}},
     "spec.dependencies[0].selector.matchLabels.app", "invalid label value 1"),
    ("dependencies.0.selector", {"matchExpressions": [{"key": "a", "operator": "Has"}]},
     "spec.dependencies[0].selector.matchExpressions[0].operator", "must be one of In, NotIn"),
    ("dependencies.0.selector", {"matchExpressions": [{"key": "a", "operator": "In"}]},
     "spec.dependencies[0].selector.matchExpressions[0].values", "In and NotIn need values"),
    ("dependencies.0.selector", {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
     "spec.dependencies[0].selector.matchExpressions[0].values", "Exists and DoesNotExist take none"),
    ("dependencies.0.selector", {"matchExpressions": [{"operator": "Exists"}]},
     "spec.dependencies[0].selector.matchExpressions[0].key", "label keys must be strings, got null"),
    ("pause", ..., "spec.pause", "required"),
    ("pause.brokerSecretRef", ..., "spec.pause.brokerSecretRef", "required"),
    ("pause.brokerSecretRef", {"key": "url"}, "spec.pause.brokerSecretRef.name", "must be a string, got null"),
    ("pause.brokerSecretRef.name", "Not A Name", "spec.pause.brokerSecretRef.name", "must be a Secret name"),
    ("pause.brokerSecretRef.key", "a/b", "spec.pause.brokerSecretRef.key", "must be a Secret key"),
    ("pause.resultQueues", ..., "spec.pause.resultQueues", "required"),
    ("pause.resultQueues", [], "spec.pause.resultQueues", "must have 1 to 16 items, got 0"),
    ("pause.resultQueues", ["a", ""], "spec.pause.resultQueues[1]", "must be 1 to 255 characters long"),
    ("pause.resultQueues", ["a", "a"], "spec.pause.resultQueues[1]", "duplicate queue 'a'"),
    ("pause.expectedWorkers", 0, "spec.pause.expectedWorkers", "must be an integer >= 1, got 0"),
    ("pause.expectedWorkers", 2.0, "spec.pause.expectedWorkers", "must be an integer >= 1, got 2.0"),
    ("pause.nats", {}, "spec.pause.nats", "set exactly one of url and urlSecretRef"),
    ("pause.nats", {"url": "nats://a", "urlSecretRef": {"name": "n"}}, "spec.pause.nats",
     "set exactly one of url and urlSecretRef"),
    ("pause.nats", {"url": "http://a"}, "spec.pause.nats.url", "must be a URL starting with one of nats://"),
    ("pause.nats", {"url": "nats://a", "consumer": "job-consumer"}, "spec.pause.nats.consumer",
     "must contain {id}, the placeholder for the job id"),
    ("pause.nats", {"url": "nats://a", "stream": "job.{id}"}, "spec.pause.nats.stream", "must be a NATS name"),
]


@pytest.mark.parametrize(("path", "value", "where", "message"), BAD, ids=[f"{b[0]}={b[1]!r:.30}" for b in BAD])
def test_bad_spec_names_the_field(path: str, value: object, where: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse(with_(path, value), "jobs")
    assert err.value.path == where
    assert message in err.value.message
    assert str(err.value) == f"{where}: {err.value.message}"
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("spec", [None, [], "spec", 3, {"dependencies": None, "pause": None}])
def test_not_a_spec(spec: object) -> None:
    with pytest.raises(SpecError):
        parse(spec, "jobs")


def test_bad_namespace() -> None:
    with pytest.raises(SpecError, match=r"^metadata\.namespace: must be a namespace name"):
        parse(MINIMAL, "")


JUNK = [None, True, 0, -1, 1.5, float("inf"), "", "x", "{id}", [], [None], [{}], {}, {"a": None}, object()]


def _leaves(node: object, prefix: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [prefix] + [p for k, v in node.items() for p in _leaves(v, prefix + (k,))]
    if isinstance(node, list):
        return [prefix] + [p for i, v in enumerate(node) for p in _leaves(v, prefix + (i,))]
    return [prefix]


def test_fuzz_only_spec_errors() -> None:
    """Junk anywhere in a valid spec: parse accepts it or raises SpecError, nothing else."""
    rng = random.Random(7)
    paths = [p for p in _leaves(FULL) if p]
    outcomes = {"ok": 0, "SpecError": 0}
    for _ in range(3000):
        spec = copy.deepcopy(FULL)
        for _ in range(rng.randint(1, 3)):
            *parents, last = rng.choice(paths)
            node = spec
            try:
                for key in parents:
                    node = node[key]
                node[last] = rng.choice(JUNK)
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation replaced a parent
        try:
            parse(spec, "jobs")
            outcomes["ok"] += 1
        except SpecError:
            outcomes["SpecError"] += 1
    assert outcomes["SpecError"] > 2000


# --- selectors -----------------------------------------------------------------------

NATS_POD = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "nats",
            "app.kubernetes.io/instance": "bus", "statefulset.kubernetes.io/pod-name": "bus-nats-0"}
NATS_BOX_POD = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "nats-box",
                "app.kubernetes.io/instance": "bus"}


def redis_pod(component: str) -> dict:
    return {"app.kubernetes.io/name": "redis", "app.kubernetes.io/component": component,
            "app.kubernetes.io/instance": "cache", "helm.sh/chart": "redis-20.1.0"}


def test_default_nats_selector_skips_nats_box() -> None:
    selector = default_selector(Dependency.NATS)
    assert selector.matches(NATS_POD)
    assert not selector.matches(NATS_BOX_POD)
    assert not selector.matches(redis_pod("master"))


@pytest.mark.parametrize("component", ["master", "replica", "node"])
def test_default_redis_selector_matches_bitnami_pods(component: str) -> None:
    assert default_selector(Dependency.REDIS).matches(redis_pod(component))


@pytest.mark.parametrize("labels", [redis_pod("metrics"), {"app.kubernetes.io/name": "redis"}, NATS_POD, {}])
def test_default_redis_selector_skips_others(labels: dict) -> None:
    assert not default_selector(Dependency.REDIS).matches(labels)


def test_requirement_semantics() -> None:
    assert Requirement("a", "In", ("1", "2")).matches({"a": "2"})
    assert not Requirement("a", "In", ("1",)).matches({})
    assert Requirement("a", "NotIn", ("1",)).matches({})  # as in Kubernetes: absent is "not in"
    assert not Requirement("a", "NotIn", ("1",)).matches({"a": "1"})
    assert Requirement("a", "Exists").matches({"a": ""})
    assert Requirement("a", "DoesNotExist").matches({"b": "1"})
    assert not Requirement("a", "DoesNotExist").matches({"a": "1"})


def test_as_label_selector() -> None:
    assert default_selector(Dependency.REDIS).as_label_selector() == (
        "app.kubernetes.io/name=redis,app.kubernetes.io/component in (master,replica,node)"
    )
    assert default_selector(Dependency.NATS).as_label_selector() == (
        "app.kubernetes.io/component=nats,app.kubernetes.io/name=nats"
    )
    nats = parse(FULL, "jobs").dependencies[0].selector
    assert nats.as_label_selector() == "app=bus,tier notin (box),!example.com/canary"
    exists = Selector((), (Requirement("x", "Exists"),))
    assert exists.as_label_selector() == "x"


# --- NATS names ----------------------------------------------------------------------


def test_stream_and_consumer_names_and_their_inverse() -> None:
    target = NatsTarget("nats://a", None)
    assert (target.stream_for(42), target.consumer_for(42)) == ("job_42", "job-42-consumer")
    assert target.job_id_of_stream("job_42") == 42
    assert target.job_id_of_stream("job_0") == 0
    for name in ("job_", "job_x", "job_042", "job_4.2", "xjob_42", "job_42x", "job_-1", "JOB_42"):
        assert target.job_id_of_stream(name) is None, name


def test_inverse_with_regex_characters_and_repeats() -> None:
    target = NatsTarget(None, SecretRef("n"), stream="j+{id}(x){id}$", consumer="c-{id}")
    assert target.stream_for(7) == "j+7(x)7$"
    assert target.job_id_of_stream("j+7(x)7$") == 7
    assert target.job_id_of_stream("j+7(x)8$") is None  # both placeholders hold one id
    digits = NatsTarget(None, SecretRef("n"), stream="{id}1{id}")
    assert digits.job_id_of_stream(digits.stream_for(12)) == 12
    for job_id in (0, 1, 9, 10, 123456789):
        assert target.job_id_of_stream(target.stream_for(job_id)) == job_id


# --- the CRD manifest ----------------------------------------------------------------


def test_committed_crd_file_is_the_manifest() -> None:
    """Fails after a change to crd.py until the file is regenerated:
    python -m blipguard.operator.crd > operator/crds/blipguards.blipguard.io.yaml"""
    text = CRD_FILE.read_text()
    assert yaml.safe_load(text) == crd.manifest()
    assert text == crd.render()


def _schema() -> dict:
    return crd.manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]


def test_crd_enums_come_from_the_model() -> None:
    spec = _schema()["spec"]["properties"]
    assert spec["mode"]["enum"] == [m.value for m in Mode]
    assert spec["mode"]["default"] == GuardSettings().mode.value
    assert spec["dependencies"]["items"]["properties"]["kind"]["enum"] == [d.value for d in Dependency]
    assert set(crd.DEFAULT_SELECTORS) == set(Dependency)
    timing = spec["timing"]["properties"]
    assert timing["leaseSeconds"]["maximum"] == MAX_LEASE_SECONDS
    defaults = GuardSettings()
    assert [timing[k]["default"] for k in ("settleSeconds", "leaseSeconds", "maxPauseSeconds",
                                            "drainTimeoutSeconds")] == [
        defaults.settle_seconds, defaults.lease_seconds, defaults.max_pause_seconds, defaults.drain_timeout_seconds]


def test_every_cel_rule_has_a_message() -> None:
    rules = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            rules.extend(node.get("x-kubernetes-validations", []))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(_schema())
    assert len(rules) >= 6
    assert all(r.get("message") for r in rules), rules


def test_crd_names() -> None:
    m = crd.manifest()
    assert m["metadata"]["name"] == "blipguards.blipguard.io" == f"{crd.PLURAL}.{crd.GROUP}"
    assert m["spec"]["names"]["shortNames"] == ["bguard"]
    version = m["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase", "Blip", "Dependency", "Blips", "Last blip", "Age"]
    assert crd.FORCE_RESUME_ANNOTATION == "blipguard.io/force-resume"
    assert m is not crd.manifest()
