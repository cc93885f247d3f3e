"""The alerting rules and their runbooks.

- promtool accepts the rule file and its unit tests pass (``alerts/tests/``), and every
  alert has a unit test where it fires and one where it stays silent;
- the committed rule file is ``alerts/render.py``'s output;
- every metric an expression names is exported by the code (``exported_names()`` of the
  app patch and of the operator, plus ``up``), every label it matches, groups or joins on
  exists on the metrics in scope, label values are ones the code emits, and each selector
  names the scrape job its metric comes from;
- every alert carries severity, summary, description and its runbook URL, and the runbook
  exists with the four prometheus-operator sections.

Each check runs on a broken example too (``test_checker_*``), so none is green by
construction. Fast: no server; promtool takes ~50 ms a call.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from blipguard.app_patch import metrics as app_metrics
from blipguard.operator import metrics as op_metrics
from blipguard.operator.model import Dependency

pytestmark = pytest.mark.observability

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.rules.yaml"))
TEST_FILES = sorted((ALERTS / "tests").glob("*.yaml"))
RUNBOOKS = ROOT / "docs" / "runbooks"
SECTIONS = ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation")
TARGET_LABELS = frozenset({"job", "instance"})  # added by the scrape to every series


def _load_render():
    spec = importlib.util.spec_from_file_location("blipguard_alerts_render", ALERTS / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()


# --- what the code exports ---------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """Series name -> its labels, label values and scrape job, from the metric modules."""

    labels: dict[str, frozenset[str]]
    values: dict[str, dict[str, frozenset[str]]]  # name -> label -> values the code emits
    jobs: dict[str, frozenset[str]]


def known_metrics() -> Known:
    labels: dict[str, frozenset[str]] = {"up": TARGET_LABELS}
    values: dict[str, dict[str, frozenset[str]]] = {}
    jobs = {"up": frozenset({app_metrics.SCRAPE_JOB, op_metrics.SCRAPE_JOB})}
    by_spec = {s.name + ("_total" if s.kind == "counter" else ""): s for s in app_metrics.SPECS}
    for name in app_metrics.exported_names():
        spec = by_spec[name]
        labels[name] = frozenset(spec.labels) | TARGET_LABELS
        values[name] = {label: frozenset(app_metrics.LABELS[label]) for label in spec.labels}
        jobs[name] = frozenset({app_metrics.SCRAPE_JOB})
    suffixes = ("_total", "_bucket", "_sum", "_count", "_created")
    for name in op_metrics.exported_names():
        base = name
        for suffix in suffixes:
            if name.endswith(suffix) and name[: -len(suffix)] in op_metrics.METRICS:
                base = name[: -len(suffix)]
        metric = op_metrics.METRICS[base]
        labels[name] = frozenset(metric._labelnames) | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
        if "dependency" in metric._labelnames:
            values[name] = {"dependency": frozenset(d.value for d in Dependency)}
        jobs[name] = frozenset({op_metrics.SCRAPE_JOB})
    return Known(labels, values, jobs)


KNOWN = known_metrics()


# --- a small PromQL reader ----------------------------------------------------------------

AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                          "bottomk", "topk", "quantile"})
FUNCTIONS = AGGREGATIONS | frozenset("""
abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max
clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv exp
floor histogram_quantile holt_winters hour idelta increase irate label_join label_replace last_over_time ln
log10 log2 max_over_time min_over_time minute month pi predict_linear present_over_time quantile_over_time
rad rate resets round scalar sgn sin sinh sort sort_desc sqrt stddev_over_time stdvar_over_time
sum_over_time tan tanh time timestamp vector year
""".split())
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"})

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)(?![A-Za-z0-9_:])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]:@])
""", re.VERBOSE)


@dataclass
class Token:
    kind: str
    text: str


def tokenize(expr: str) -> list[Token]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup not in ("space", "comment"):
            out.append(Token(m.lastgroup, m.group()))
    return out


@dataclass
class Selector:
    metric: str
    matchers: list[tuple[str, str, str]]  # (label, op, value)


@dataclass
class Reading:
    selectors: list[Selector] = field(default_factory=list)
    # (keyword, labels, metric names the labels must be on): by/without/on/ignoring/group_*
    groupings: list[tuple[str, list[str], list[set[str]]]] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)


def _unquote(text: str) -> str:
    return text[1:-1] if text[:1] in "\"'`" else text


def _close(tokens: list[Token], i: int) -> int:
    """Index of the bracket closing the one at ``i``."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    opening, depth = tokens[i].text, 0
    for j in range(i, len(tokens)):
        if tokens[j].text == opening and tokens[j].kind == "op":
            depth += 1
        elif tokens[j].text == pairs[opening] and tokens[j].kind == "op":
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"unbalanced {opening!r}")


def _open(tokens: list[Token], j: int) -> int:
    """Index of the '(' that the ')' at ``j`` closes."""
    depth = 0
    for i in range(j, -1, -1):
        if tokens[i].text == ")" and tokens[i].kind == "op":
            depth += 1
        elif tokens[i].text == "(" and tokens[i].kind == "op":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced ')'")


def _label_list(tokens: list[Token], i: int) -> tuple[list[str], int]:
    """The labels of ``(a, b)`` starting at ``i`` (a '('), and the index after it."""
    end = _close(tokens, i)
    return [t.text for t in tokens[i + 1:end] if t.kind == "ident"], end + 1


def _operand_end(tokens: list[Token], i: int) -> int:
    """Index after the operand starting at ``i``: a bracketed group, a call, or a selector
    with its matchers, range and offset."""
    t = tokens[i]
    if t.text == "(":
        end = _close(tokens, i) + 1
    elif t.kind == "ident" and i + 1 < len(tokens) and tokens[i + 1].text == "(":
        end = _close(tokens, i + 1) + 1
    else:
        end = i + 1
    while end < len(tokens):
        if tokens[end].text in ("{", "["):
            end = _close(tokens, end) + 1
        elif tokens[end].text.lower() == "offset":
            end += 2
        else:
            break
    return end


def _operand_start(tokens: list[Token], j: int) -> int | None:
    """Start of the operand ending at ``j`` when it is a bracketed group or call; else None
    (a comparison's left side needs a full parser: the label is then checked on the right)."""
    if tokens[j].text != ")":
        return None
    i = _open(tokens, j)
    if i > 0 and tokens[i - 1].kind == "ident":
        i -= 1
    return i


def read(expr: str) -> Reading:
    tokens = tokenize(expr)
    reading = Reading()
    spans: list[tuple[int, int, Selector]] = []  # every selector's token span, for scopes
    i = 0
    while i < len(tokens):
        t = tokens[i]
        nxt = tokens[i + 1].text if i + 1 < len(tokens) else None
        if t.kind == "ident" and t.text.lower() in GROUPING and nxt == "(":
            labels, after = _label_list(tokens, i + 1)
            reading.groupings.append((t.text.lower(), labels, [(i, after)]))  # scopes resolved below
            i = after
            continue
        if t.kind == "ident" and t.text.lower() in GROUPING:  # group_left without labels
            i += 1
            continue
        if t.kind == "ident" and (nxt == "(" or (t.text in AGGREGATIONS and str(nxt).lower() in ("by", "without"))):
            reading.functions.append(t.text)
            i += 1
            continue
        if t.kind == "ident" and t.text.lower() in KEYWORDS:
            i += 1
            continue
        if (t.kind == "ident") or (t.text == "{" and (i == 0 or tokens[i - 1].kind != "ident")):
            metric = t.text if t.kind == "ident" else ""
            start = i
            matchers: list[tuple[str, str, str]] = []
            j = i + 1 if t.kind == "ident" else i
            if j < len(tokens) and tokens[j].text == "{":
                end = _close(tokens, j)
                inner = tokens[j + 1:end]
                k = 0
                while k < len(inner):
                    if inner[k].kind == "ident" and k + 2 < len(inner) and inner[k + 2].kind == "string":
                        matchers.append((inner[k].text, inner[k + 1].text, _unquote(inner[k + 2].text)))
                        k += 3
                    else:
                        k += 1
                j = end + 1
            for label, op, value in matchers:
                if label == "__name__" and op == "=":
                    metric = value
            selector = Selector(metric, [m for m in matchers if m[0] != "__name__"])
            reading.selectors.append(selector)
            spans.append((start, j, selector))
            i = j
            continue
        i += 1

    def metrics_in(lo: int, hi: int) -> set[str]:
        return {s.metric for a, _, s in spans if lo <= a < hi}

    resolved = []
    for keyword, labels, ((at, after),) in reading.groupings:
        scopes: list[set[str]] = []
        if keyword in ("by", "without"):
            if after < len(tokens) and tokens[after].text == "(":  # sum by (x) (...)
                scopes.append(metrics_in(after, _close(tokens, after) + 1))
            elif at > 0 and tokens[at - 1].text == ")":  # sum (...) by (x)
                scopes.append(metrics_in(_open(tokens, at - 1), at))
        elif keyword in ("on", "ignoring"):
            k = after
            while k < len(tokens) and tokens[k].text.lower() in ("group_left", "group_right"):
                k += 1
                if k < len(tokens) and tokens[k].text == "(":
                    k = _close(tokens, k) + 1
            if k < len(tokens):
                scopes.append(metrics_in(k, _operand_end(tokens, k)))  # the right operand
            op_at = at - 1
            if op_at > 0 and tokens[op_at].kind in ("ident", "op"):
                left = _operand_start(tokens, op_at - 1)
                if left is not None:
                    scopes.append(metrics_in(left, op_at))
        else:  # group_left / group_right: labels taken from the "one" side, after the operator
            scopes.append(metrics_in(after, _operand_end(tokens, after)) if after < len(tokens) else set())
        resolved.append((keyword, labels, scopes))
    reading.groupings = resolved
    return reading


def _values(op: str, value: str) -> list[str] | None:
    """The literal values a matcher names, or None for a regex it cannot list."""
    if op in ("=", "!="):
        return [value]
    if re.fullmatch(r"[A-Za-z0-9_.-]+(\|[A-Za-z0-9_.-]+)*", value):
        return value.split("|")
    return None


def check_expr(expr: str, known: Known = KNOWN) -> list[str]:
    """What in ``expr`` the code does not export: metrics, labels, label values, jobs,
    functions. Empty when all is well."""
    problems = []
    try:
        reading = read(expr)
    except ValueError as e:
        return [str(e)]
    for fn in reading.functions:
        if fn not in FUNCTIONS:
            problems.append(f"unknown function {fn}()")
    for sel in reading.selectors:
        if sel.metric not in known.labels:
            problems.append(f"unknown metric {sel.metric or '{...}'}: not in exported_names() nor up")
            continue
        labels = known.labels[sel.metric]
        for label, op, value in sel.matchers:
            if label not in labels:
                problems.append(f"{sel.metric} has no label {label!r} (it has {sorted(labels)})")
                continue
            allowed = known.values.get(sel.metric, {}).get(label)
            if label == "job":
                allowed = known.jobs[sel.metric]
            literal = _values(op, value)
            if allowed is not None and literal is not None:
                for v in literal:
                    if v not in allowed:
                        problems.append(f"{sel.metric}{{{label}{op}{value!r}}}: {v!r} is never emitted "
                                        f"(values: {sorted(allowed)})")
        if not any(label == "job" and op == "=" for label, op, _ in sel.matchers):
            problems.append(f"{sel.metric} selected without its scrape job "
                            f"(job=\"{sorted(known.jobs[sel.metric])[0]}\")")
    for keyword, labels, scopes in reading.groupings:
        for scope in scopes:
            names = {m for m in scope if m in known.labels}
            if not names:
                continue
            have = set().union(*(known.labels[m] for m in names))
            for label in labels:
                if label not in have:
                    problems.append(f"{keyword} ({label}): no metric in scope has it ({sorted(names)})")
    return problems


def metric_names(expr: str) -> set[str]:
    return {s.metric for s in read(expr).selectors}


# --- rules, runbooks, unit tests ------------------------------------------------------------

ALERT_NAME = re.compile(r"^Blipguard[A-Z][A-Za-z0-9]*$")
TEMPLATE_LABEL = re.compile(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)")


def check_rule(rule: dict, known: Known = KNOWN) -> list[str]:
    name = rule.get("alert")
    if name is None:
        return [f"not an alerting rule: {rule!r:.80}"]
    problems = [f"{name}: {p}" for p in check_expr(rule.get("expr", ""), known)]
    if not ALERT_NAME.match(name):
        problems.append(f"{name}: alert names are CamelCase and start with Blipguard")
    severity = (rule.get("labels") or {}).get("severity")
    if severity not in render.SEVERITIES:
        problems.append(f"{name}: severity {severity!r} is not one of {render.SEVERITIES}")
    annotations = rule.get("annotations") or {}
    for key in ("summary", "description", "runbook_url"):
        if not str(annotations.get(key, "")).strip():
            problems.append(f"{name}: no {key} annotation")
    want = render.RUNBOOK_BASE + f"{name}.md"
    if annotations.get("runbook_url") and annotations["runbook_url"] != want:
        problems.append(f"{name}: runbook_url {annotations['runbook_url']!r} is not {want!r}")
    in_scope: set[str] = set()
    for metric in metric_names(rule.get("expr", "")):
        in_scope |= known.labels.get(metric, set())
    for key, text in annotations.items():
        for label in TEMPLATE_LABEL.findall(str(text)):
            if label not in in_scope:
                problems.append(f"{name}: annotation {key} uses $labels.{label}, on none of its metrics")
    return problems


def check_runbook(name: str, runbooks: Path = RUNBOOKS) -> list[str]:
    path = runbooks / f"{name}.md"
    if not path.is_file():
        return [f"{name}: no runbook {path.relative_to(path.parents[2])}"]
    lines = path.read_text().splitlines()
    problems = []
    if not lines or lines[0] != f"# {name}":
        problems.append(f"{name}: the runbook's first line is not '# {name}'")
    at = [lines.index(s) if s in lines else -1 for s in SECTIONS]
    missing = [s for s, i in zip(SECTIONS, at) if i < 0]
    if missing:
        problems.append(f"{name}: runbook lacks {', '.join(missing)}")
    elif at != sorted(at):
        problems.append(f"{name}: runbook sections are not in the order {', '.join(SECTIONS)}")
    else:
        bodies = [lines[a + 1:b] for a, b in zip(at, at[1:] + [len(lines)])]
        for section, body in zip(SECTIONS, bodies):
            if not any(line.strip() for line in body):
                problems.append(f"{name}: runbook section {section} is empty")
    return problems


def check_unit_tests(alert_names: set[str], test_docs: list[dict]) -> list[str]:
    """Each alert has a unit-test case where it fires and one where it stays silent."""
    fires, silent = set(), set()
    for doc in test_docs:
        for test in doc.get("tests") or []:
            for case in test.get("alert_rule_test") or []:
                (fires if case.get("exp_alerts") else silent).add(case.get("alertname"))
    problems = [f"{n}: no unit test where it fires" for n in sorted(alert_names - fires)]
    problems += [f"{n}: no unit test where it stays silent" for n in sorted(alert_names - silent)]
    problems += [f"{n}: unit tests name an alert no rule defines" for n in sorted((fires | silent) - alert_names)]
    return problems


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def all_rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in load(path)["groups"] for rule in group["rules"]]


# --- the real files ---------------------------------------------------------------------------


def test_rule_files_are_plain_prometheus_rule_files():
    assert [p.name for p in RULE_FILES] == ["blipguard.rules.yaml"]
    for path in RULE_FILES:
        doc = load(path)
        assert list(doc) == ["groups"], f"{path.name}: the chart copies it into a PrometheusRule as is"


def test_committed_rules_are_the_rendered_ones():
    committed = (ALERTS / "blipguard.rules.yaml").read_text()
    assert committed == render.render(), "regenerate: python alerts/render.py > alerts/blipguard.rules.yaml"


def test_promtool_check_rules(promtool):
    out = subprocess.run([promtool, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in out.stdout


def test_promtool_unit_tests(promtool):
    assert TEST_FILES
    out = subprocess.run([promtool, "test", "rules", *map(str, TEST_FILES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_fires_in_one_unit_test_and_stays_silent_in_another():
    names = {r["alert"] for r in all_rules()}
    assert check_unit_tests(names, [load(p) for p in TEST_FILES]) == []


def test_the_alerts_asked_for_exist():
    assert {r["alert"] for r in all_rules()} >= {
        "BlipguardJobFailedTerminally", "BlipguardJobFailedDuringBlip", "BlipguardRetriesExhausted",
        "BlipguardFleetPausedTooLong", "BlipguardWorkerPausedTooLong", "BlipguardDependencyFlapping",
        "BlipguardGuardDegraded", "BlipguardOperatorDown", "BlipguardPauseBroadcastFailing",
        "BlipguardGuardBlind", "BlipguardWorkerNotConsuming", "BlipguardGuardSpecInvalid",
    }


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.get("alert", "?"))
def test_rule_names_only_what_the_code_exports_and_carries_its_annotations(rule):
    assert check_rule(rule) == []


@pytest.mark.parametrize("name", [r["alert"] for r in all_rules()])
def test_runbook(name):
    assert check_runbook(name) == []


def test_no_runbook_without_an_alert():
    names = {r["alert"] for r in all_rules()}
    assert {p.stem for p in RUNBOOKS.glob("*.md")} <= names


def test_readme_table_lists_each_alert_with_its_severity_and_for():
    rows = re.findall(r"^\| (Blipguard\w+) \| (\w+) \|\s*(\w*)\s*\|$", (ALERTS / "README.md").read_text(), re.M)
    assert rows == [(r["alert"], r["labels"]["severity"], r.get("for", "")) for r in all_rules()]


def test_every_metric_the_alerts_use_is_exported():
    used = set().union(*(metric_names(r["expr"]) for r in all_rules()))
    exported = app_metrics.exported_names() | op_metrics.exported_names() | {"up"}
    assert used and used <= exported, sorted(used - exported)


# --- each check can fail ----------------------------------------------------------------------

W = f'job="{app_metrics.SCRAPE_JOB}"'
O = f'job="{op_metrics.SCRAPE_JOB}"'


def test_reader_takes_only_series_names_for_metrics():
    expr = (f'sum by (dependency) (rate(blipguard_transient_errors_total{{{W},stage="ack"}}[5m] offset 1h)) '
            f'> bool 0 unless on () vector(1) or label_replace(up{{{O}}}, "x", "blipguard_fake", "job", ".*") '
            f"and ignoring (instance) group_left blipguard_operator_paused{{{O}}} * 2.5e3 + 0x1F")
    assert metric_names(expr) == {"blipguard_transient_errors_total", "up", "blipguard_operator_paused"}
    assert check_expr(expr) == []


@pytest.mark.parametrize("expr, problem", [
    (f"increase(blipguard_nope_total{{{W}}}[5m]) > 0", "unknown metric blipguard_nope_total"),
    (f"blipguard_operator_blips{{{O}}} > 0", None),  # the bare counter name: in exported_names()
    (f'blipguard_job_failures_total{{{W},queue="ml_results"}}', "has no label 'queue'"),
    (f'blipguard_job_failures_total{{{W},during_blip="yes"}}', "'yes' is never emitted"),
    (f'blipguard_transient_errors_total{{{W},dependency=~"redis|postgres"}}', "'postgres' is never emitted"),
    (f'blipguard_operator_blips_total{{{O},dependency="other"}}', "'other' is never emitted"),
    (f'blipguard_operator_paused{{{W}}}', "'blipguard-workers' is never emitted"),
    ("blipguard_operator_paused == 1", "selected without its scrape job"),
    (f"sum by (guard) (increase(blipguard_job_failures_total{{{W}}}[5m]))", "by (guard)"),
    (f"sum (increase(blipguard_job_failures_total{{{W}}}[5m])) by (stage)", "by (stage)"),
    (f"blipguard_job_failures_total{{{W}}} unless on (dependency) blipguard_operator_paused{{{O}}}",
     "on (dependency)"),
    (f"(blipguard_operator_paused{{{O}}}) unless on (reason) (blipguard_job_failures_total{{{W}}})",
     "on (reason)"),
    (f"increse(blipguard_job_failures_total{{{W}}}[5m])", "unknown function increse()"),
])
def test_checker_expr(expr, problem):
    problems = check_expr(expr)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def _rule(**changes) -> dict:
    rule = {
        "alert": "BlipguardExample",
        "expr": f"blipguard_operator_paused{{{O}}} == 1",
        "labels": {"severity": "warning"},
        "annotations": {"summary": "s", "description": "guard {{ $labels.guard }}",
                        "runbook_url": render.RUNBOOK_BASE + "BlipguardExample.md"},
    }
    for key, value in changes.items():
        if value is None:
            rule.pop(key, None)
        else:
            rule[key] = value
    return rule


@pytest.mark.parametrize("changes, problem", [
    ({}, None),
    ({"labels": {}}, "severity None"),
    ({"labels": {"severity": "page"}}, "severity 'page'"),
    ({"annotations": {"description": "d", "runbook_url": render.RUNBOOK_BASE + "BlipguardExample.md"}},
     "no summary"),
    ({"annotations": {"summary": "s", "runbook_url": render.RUNBOOK_BASE + "BlipguardExample.md"}},
     "no description"),
    ({"annotations": {"summary": "s", "description": "d"}}, "no runbook_url"),
    ({"annotations": {"summary": "s", "description": "d", "runbook_url": render.RUNBOOK_BASE + "Other.md"}},
     "is not"),
    ({"annotations": {"summary": "s", "description": "{{ $labels.reason }}",
                      "runbook_url": render.RUNBOOK_BASE + "BlipguardExample.md"}}, "$labels.reason"),
    ({"alert": "fleet_paused"}, "CamelCase"),
    ({"expr": f"blipguard_operator_pased{{{O}}} == 1"}, "unknown metric"),
])
def test_checker_rule(changes, problem):
    problems = check_rule(_rule(**changes))
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


GOOD_RUNBOOK = "# BlipguardExample\n\n## Meaning\nm\n\n## Impact\ni\n\n## Diagnosis\nd\n\n## Mitigation\nx\n"


@pytest.mark.parametrize("text, problem", [
    (GOOD_RUNBOOK, None),
    (None, "no runbook"),
    (GOOD_RUNBOOK.replace("# BlipguardExample", "# Example"), "first line"),
    (GOOD_RUNBOOK.replace("## Impact\ni\n\n", ""), "lacks ## Impact"),
    (GOOD_RUNBOOK.replace("## Meaning\nm", "## Diagnosis\nd").replace("## Diagnosis\nd\n\n## Mit",
                                                                        "## Meaning\nm\n\n## Mit"), "order"),
    (GOOD_RUNBOOK.replace("## Mitigation\nx\n", "## Mitigation\n\n"), "## Mitigation is empty"),
])
def test_checker_runbook(tmp_path, text, problem):
    books = tmp_path / "docs" / "runbooks"
    books.mkdir(parents=True)
    if text is not None:
        (books / "BlipguardExample.md").write_text(text)
    problems = check_runbook("BlipguardExample", books)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_checker_unit_tests():
    doc = {"tests": [{"alert_rule_test": [
        {"alertname": "A", "exp_alerts": [{"exp_labels": {"severity": "warning"}}]},
        {"alertname": "A", "exp_alerts": []},
        {"alertname": "B", "exp_alerts": [{"exp_labels": {}}]},
        {"alertname": "Gone", "exp_alerts": []},
    ]}]}
    assert check_unit_tests({"A", "B", "C"}, [doc]) == [
        "C: no unit test where it fires",
        "B: no unit test where it stays silent",
        "C: no unit test where it stays silent",
        "Gone: unit tests name an alert no rule defines",
    ]


# Each clause of the rules that a unit test relies on: without it, that test goes red.
MUTANTS = {
    "flapping threshold": (">= 3", ">= 5", "BlipguardDependencyFlapping"),
    "ordinary failures only": (',during_blip="false"}', "}", "BlipguardJobFailedTerminally"),
    "blind: per dependency": ("unless on (dependency)", "unless on ()", "BlipguardGuardBlind"),
    "blind: new blip series": ('max by (dependency) ((blipguard_operator_blips_total{job="blipguard-operator"} > 0) '
                               'unless', 'max by (dependency) ((blipguard_operator_blips_total{job="blipguard-operator"}'
                               ' > 0) and', "BlipguardGuardBlind"),
    "blind: zero-born series": ('max by (dependency) ((blipguard_operator_blips_total{job="blipguard-operator"} > 0)',
                                'max by (dependency) ((blipguard_operator_blips_total{job="blipguard-operator"} >= 0)',
                                "BlipguardGuardBlind"),
    "blind: blips counted": ('max by (dependency) (increase(blipguard_operator_blips_total{job="blipguard-operator"}'
                             '[15m]) > 0)', 'max by (dependency) (vector(0) < 0)', "BlipguardGuardBlind"),
    "blind: pods unhealthy": ("[15m]) == 0)", "[15m]) < 0)", "BlipguardGuardBlind"),
    "blind: paused": ("[15m])) == 1", "[15m])) == 2", "BlipguardGuardBlind"),
    "first failed broadcast": ('outcome="failed"} > 0) unless', 'outcome="failed"} > 0) and',
                               "BlipguardPauseBroadcastFailing"),
    "zero-born failed series": ('outcome="failed"} > 0) unless', 'outcome="failed"} >= 0) unless',
                                "BlipguardPauseBroadcastFailing"),
}


def test_promtool_unit_tests_can_fail(promtool, tmp_path):
    """Every mutant of the rules (a clause the tests rely on, removed or changed) turns the
    unit tests red, naming the alert it broke. The mutants run in parallel."""
    rules = (ALERTS / "blipguard.rules.yaml").read_text()
    runs = {}
    for name, (old, new, alert) in MUTANTS.items():
        assert rules.count(old) == 1, f"mutant {name!r}: {old!r} is not in the rules once"
        folder = tmp_path / re.sub(r"\W+", "-", name)
        (folder / "tests").mkdir(parents=True)
        (folder / "blipguard.rules.yaml").write_text(rules.replace(old, new))
        for path in TEST_FILES:
            (folder / "tests" / path.name).write_text(path.read_text())
        runs[name] = (alert, subprocess.Popen([promtool, "test", "rules", *map(str, (folder / "tests").glob("*.yaml"))],
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    survived = []
    for name, (alert, proc) in runs.items():
        output = proc.communicate()[0]
        if proc.returncode == 0 or f"alertname: {alert}" not in output:
            survived.append(name)
    assert survived == [], f"the unit tests did not catch: {survived}"


# --- the exposition the workers and the operator serve ----------------------------------------

_EXPOSE = {
    "app": "from blipguard.app_patch import metrics as m\n"
           "m.initialize()\n"
           "from prometheus_client import REGISTRY, generate_latest\n",
    "operator": "from blipguard.operator import metrics as m\n"
                "for c in (m.BLIPS, m.RESTARTS_SEEN, m.DEPENDENCY_UP): c.labels('ns', 'g', 'redis')\n"
                "m.BLIP_SECONDS.labels('ns', 'g', 'redis').observe(3)\n"
                "for c in (m.PAUSED, m.DEGRADED, m.WORKERS_NOT_CONSUMING, m.SPEC_VALID): c.labels('ns', 'g')\n"
                "m.BROADCASTS.labels('ns', 'g', 'pause', 'failed').inc()\n"
                "m.WORKERS_CONFIRMED.labels('ns', 'g', 'pause').set(2)\n"
                "from prometheus_client import generate_latest\n"
                "REGISTRY = m.REGISTRY\n",
}


@pytest.mark.parametrize("side", sorted(_EXPOSE))
def test_promtool_check_metrics(promtool, side):
    """What a scrape shows passes promtool's lint, and holds every name the alerts may use.
    A fresh process: the default registry holds nothing else, no multiprocess directory."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"}
    code = _EXPOSE[side] + "import sys\nsys.stdout.write(generate_latest(REGISTRY).decode())\n"
    text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr
    module = app_metrics if side == "app" else op_metrics
    shown = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    shown = {n for n in shown if n.startswith(module.PREFIX) and not n.endswith("_created")}
    assert shown <= module.exported_names()
    used = set().union(*(metric_names(r["expr"]) for r in all_rules())) & module.exported_names()
    assert used and used <= shown, sorted(used - shown)
