"""A BlipGuard's spec, parsed and checked: ``parse(spec, namespace) -> GuardSpec``. Pure.

The API server applies the CRD's defaults and most of its checks (crd.py), but parse
does not count on that: it fills missing defaults and repeats every check, plus those
the schema cannot make (label keys, GuardSettings' own rules). Anything wrong raises
``SpecError`` naming the camelCase field, e.g. ``spec.timing.leaseSeconds: must be ...``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import crd
from .model import Dependency, GuardSettings, Mode


class SpecError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


# --- selectors ---------------------------------------------------------------------

_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # one of In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        inside = self.key in labels and labels[self.key] in self.values
        return inside if self.operator == "In" else not inside

    def as_label_selector(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        return f"{self.key} {self.operator.lower()} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    match_labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def as_label_selector(self) -> str:
        """The ``labelSelector`` query parameter Kubernetes accepts for this selector."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        return ",".join(parts + [r.as_label_selector() for r in self.match_expressions])


# --- the spec ----------------------------------------------------------------------


@dataclass(frozen=True)
class WatchedDependency:
    kind: Dependency
    namespace: str
    selector: Selector


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str = crd.DEFAULT_SECRET_KEY


@dataclass(frozen=True)
class NatsTarget:
    url: str | None
    url_secret: SecretRef | None
    stream: str = crd.DEFAULT_NATS_STREAM
    consumer: str = crd.DEFAULT_NATS_CONSUMER

    def stream_for(self, job_id: int) -> str:
        return self.stream.replace(crd.JOB_ID_PLACEHOLDER, str(job_id))

    def consumer_for(self, job_id: int) -> str:
        return self.consumer.replace(crd.JOB_ID_PLACEHOLDER, str(job_id))

    def job_id_of_stream(self, name: str) -> int | None:
        """The job whose stream is ``name``; None for a stream of no job."""
        first, *rest = self.stream.split(crd.JOB_ID_PLACEHOLDER)
        if not rest:
            return None
        # Every placeholder holds the same id, written as stream_for writes it (no leading zeros).
        pattern = re.escape(first) + "(?P<id>0|[1-9][0-9]*)" + "(?P=id)".join(map(re.escape, rest))
        match = re.fullmatch(pattern, name)
        return int(match.group("id")) if match else None


@dataclass(frozen=True)
class PauseTarget:
    broker_secret: SecretRef
    result_queues: tuple[str, ...]
    expected_workers: int | None = None
    nats: NatsTarget | None = None


@dataclass(frozen=True)
class GuardSpec:
    dependencies: tuple[WatchedDependency, ...]
    pause: PauseTarget
    settings: GuardSettings


def default_selector(kind: Dependency) -> Selector:
    return _selector(crd.DEFAULT_SELECTORS[kind], "default selector")


def parse(spec: Any, namespace: str) -> GuardSpec:
    """The guard's spec (as kopf hands it over) in namespace ``namespace``, checked."""
    if not isinstance(namespace, str) or not _DNS_LABEL.fullmatch(namespace):
        raise SpecError("metadata.namespace", f"must be a namespace name, got {namespace!r:.60}")
    spec = _mapping(spec, "spec")
    settings = _settings(spec)
    dependencies = _dependencies(_required(spec, "dependencies", "spec"), namespace)
    pause = _pause(_mapping(_required(spec, "pause", "spec"), "spec.pause"))
    return GuardSpec(dependencies, pause, settings)


# --- parsing helpers -----------------------------------------------------------------

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_NATS_NAME = re.compile(r"[^\s.*>/\\]+")
_NATS_URL = re.compile(rf"({'|'.join(crd.NATS_URL_SCHEMES)})://\S+")

# GuardSettings names its fields in its errors; the spec names them in camelCase.
_SETTINGS_PATHS = {
    "settle_seconds": "spec.timing.settleSeconds",
    "lease_seconds": "spec.timing.leaseSeconds",
    "max_pause_seconds": "spec.timing.maxPauseSeconds",
    "drain_timeout_seconds": "spec.timing.drainTimeoutSeconds",
    "mode": "spec.mode",
}
_TIMING = {"settleSeconds": "settle_seconds", "leaseSeconds": "lease_seconds",
           "maxPauseSeconds": "max_pause_seconds", "drainTimeoutSeconds": "drain_timeout_seconds"}


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__)


def _mapping(value: Any, path: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be an object, got {_kind(value)}")
    return value


def _get(parent: Mapping, key: str, default: Any) -> Any:
    value = parent.get(key)
    return default if value is None else value


def _required(parent: Mapping, key: str, path: str) -> Any:
    value = parent.get(key)
    if value is None:
        raise SpecError(f"{path}.{key}", "required")
    return value


def _list(value: Any, path: str, min_items: int, max_items: int) -> Sequence:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise SpecError(path, f"must be a list, got {_kind(value)}")
    if not min_items <= len(value) <= max_items:
        raise SpecError(path, f"must have {min_items} to {max_items} items, got {len(value)}")
    return value


def _string(value: Any, path: str, max_length: int, pattern: re.Pattern | None = None,
            what: str = "") -> str:
    if not isinstance(value, str):
        raise SpecError(path, f"must be a string, got {_kind(value)}")
    if not value or len(value) > max_length:
        raise SpecError(path, f"must be 1 to {max_length} characters long, got {len(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise SpecError(path, f"must be {what or 'valid'}, got {value!r:.80}")
    return value


def _label_key(key: Any, path: str) -> str:
    if not isinstance(key, str):
        raise SpecError(path, f"label keys must be strings, got {_kind(key)}")
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise SpecError(path, f"invalid label key {key!r:.80}: the prefix must be a DNS subdomain")
    if not (len(name) <= 63 and _LABEL_NAME.fullmatch(name)):
        raise SpecError(path, f"invalid label key {key!r:.80}: the name must be 1 to 63 alphanumerics, "
                              "'-', '_' or '.', starting and ending with an alphanumeric")
    return key


def _label_value(value: Any, path: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or (value and not _LABEL_NAME.fullmatch(value)):
        raise SpecError(path, f"invalid label value {value!r:.80}: at most 63 alphanumerics, '-', '_' or '.', "
                              "starting and ending with an alphanumeric")
    return value


def _seconds(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(path, f"must be a number of seconds, got {_kind(value)}")
    try:
        return float(value)
    except OverflowError:
        raise SpecError(path, "too large") from None


# --- the parts -----------------------------------------------------------------------


def _settings(spec: Mapping) -> GuardSettings:
    mode = spec.get("mode", Mode.ACTIVE.value)
    if not isinstance(mode, str) or mode not in set(Mode):
        raise SpecError("spec.mode", f"must be one of {', '.join(Mode)}, got {mode!r:.40}")
    timing = _mapping(_get(spec, "timing", {}), "spec.timing")
    values = {field: _seconds(timing[key], f"spec.timing.{key}")
              for key, field in _TIMING.items() if timing.get(key) is not None}
    try:
        settings = GuardSettings(mode=Mode(mode), **values)
    except ValueError as exc:
        field, _, message = str(exc).partition(" ")
        raise SpecError(_SETTINGS_PATHS.get(field, "spec"), message) from None
    if settings.settle_seconds > crd.MAX_SETTLE_SECONDS:
        raise SpecError("spec.timing.settleSeconds", f"must be at most {crd.MAX_SETTLE_SECONDS}, "
                                                     f"got {settings.settle_seconds:g}")
    if settings.max_pause_seconds > crd.MAX_MAX_PAUSE_SECONDS:
        raise SpecError("spec.timing.maxPauseSeconds", f"must be at most {crd.MAX_MAX_PAUSE_SECONDS}, "
                                                       f"got {settings.max_pause_seconds:g}")
    if settings.max_pause_seconds < settings.lease_seconds:
        raise SpecError("spec.timing.maxPauseSeconds", f"must be >= leaseSeconds ({settings.lease_seconds:g}), "
                                                       f"got {settings.max_pause_seconds:g}")
    return settings


def _dependencies(value: Any, namespace: str) -> tuple[WatchedDependency, ...]:
    items = _list(value, "spec.dependencies", 1, crd.MAX_DEPENDENCIES)
    out: list[WatchedDependency] = []
    for i, item in enumerate(items):
        path = f"spec.dependencies[{i}]"
        item = _mapping(item, path)
        kind = item.get("kind")
        if not isinstance(kind, str) or kind not in set(Dependency):
            raise SpecError(f"{path}.kind", f"must be one of {', '.join(Dependency)}, got {kind!r:.40}")
        kind = Dependency(kind)
        if any(d.kind is kind for d in out):
            raise SpecError(f"{path}.kind", f"{kind} appears more than once: each dependency kind may appear only once")
        ns = item.get("namespace")
        ns = namespace if ns is None else _string(ns, f"{path}.namespace", 63, _DNS_LABEL, "a namespace name")
        selector = item.get("selector")
        selector = default_selector(kind) if selector is None else _selector(selector, f"{path}.selector")
        out.append(WatchedDependency(kind, ns, selector))
    return tuple(out)


def _selector(value: Any, path: str) -> Selector:
    value = _mapping(value, path)
    labels = _mapping(_get(value, "matchLabels", {}), f"{path}.matchLabels")
    if len(labels) > crd.MAX_SELECTOR_TERMS:
        raise SpecError(f"{path}.matchLabels", f"must have at most {crd.MAX_SELECTOR_TERMS} labels")
    pairs = []
    for key, label in labels.items():
        _label_key(key, f"{path}.matchLabels")
        pairs.append((key, _label_value(label, f"{path}.matchLabels.{key}")))
    exprs = _list(_get(value, "matchExpressions", []), f"{path}.matchExpressions", 0, crd.MAX_SELECTOR_TERMS)
    requirements = tuple(_requirement(e, f"{path}.matchExpressions[{i}]") for i, e in enumerate(exprs))
    if not pairs and not requirements:
        raise SpecError(path, "an empty selector would watch every pod of the namespace; "
                              "omit it for the kind's default")
    return Selector(tuple(sorted(pairs)), requirements)


def _requirement(value: Any, path: str) -> Requirement:
    value = _mapping(value, path)
    key = _label_key(value.get("key"), f"{path}.key")
    op = value.get("operator")
    if not isinstance(op, str) or op not in _OPERATORS:
        raise SpecError(f"{path}.operator", f"must be one of {', '.join(_OPERATORS)}, got {op!r:.40}")
    raw = _list(_get(value, "values", []), f"{path}.values", 0, crd.MAX_SELECTOR_VALUES)
    values = tuple(_label_value(v, f"{path}.values[{i}]") for i, v in enumerate(raw))
    if (op in ("In", "NotIn")) != bool(values):
        raise SpecError(f"{path}.values", "In and NotIn need values; Exists and DoesNotExist take none")
    return Requirement(key, op, values)


def _secret_ref(value: Any, path: str) -> SecretRef:
    value = _mapping(value, path)
    name = _string(value.get("name"), f"{path}.name", 253, _DNS_SUBDOMAIN, "a Secret name")
    key = value.get("key")
    key = crd.DEFAULT_SECRET_KEY if key is None else _string(key, f"{path}.key", 253, _SECRET_KEY, "a Secret key")
    return SecretRef(name, key)


def _pause(pause: Mapping) -> PauseTarget:
    broker = _secret_ref(_required(pause, "brokerSecretRef", "spec.pause"), "spec.pause.brokerSecretRef")
    queues = _list(_required(pause, "resultQueues", "spec.pause"), "spec.pause.resultQueues",
                   1, crd.MAX_RESULT_QUEUES)
    names: list[str] = []
    for i, queue in enumerate(queues):
        name = _string(queue, f"spec.pause.resultQueues[{i}]", 255)
        if name in names:
            raise SpecError(f"spec.pause.resultQueues[{i}]", f"duplicate queue {name!r}")
        names.append(name)
    workers = pause.get("expectedWorkers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SpecError("spec.pause.expectedWorkers", f"must be an integer >= 1, got {workers!r:.40}")
    nats = pause.get("nats")
    return PauseTarget(broker, tuple(names), workers, None if nats is None else _nats(nats, "spec.pause.nats"))


def _nats(value: Any, path: str) -> NatsTarget:
    value = _mapping(value, path)
    url, secret = value.get("url"), value.get("urlSecretRef")
    if (url is None) == (secret is None):
        raise SpecError(path, "set exactly one of url and urlSecretRef")
    if url is not None:
        url = _string(url, f"{path}.url", 2048, _NATS_URL,
                      f"a URL starting with one of {', '.join(s + '://' for s in crd.NATS_URL_SCHEMES)}")
    if secret is not None:
        secret = _secret_ref(secret, f"{path}.urlSecretRef")
    names = {}
    for key, default in (("stream", crd.DEFAULT_NATS_STREAM), ("consumer", crd.DEFAULT_NATS_CONSUMER)):
        name = value.get(key)
        name = default if name is None else _string(
            name, f"{path}.{key}", 200, _NATS_NAME, "a NATS name (no whitespace, '.', '*', '>', '/' or '\\')")
        if crd.JOB_ID_PLACEHOLDER not in name:
            raise SpecError(f"{path}.{key}", f"must contain {crd.JOB_ID_PLACEHOLDER}, the placeholder for the job id")
        names[key] = name
    return NatsTarget(url, secret, names["stream"], names["consumer"])
