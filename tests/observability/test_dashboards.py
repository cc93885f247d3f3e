"""The Grafana dashboards (``dashboards/``): built from ``dashboards/build.py``, checked here.

- The committed JSON is what ``build.py`` renders now, and ``build.py --check`` says so.
- Every PromQL expression (panel targets, annotations) and every ``label_values()`` variable
  query names only series the code exports (``blipguard.app_patch.metrics`` and
  ``blipguard.operator.metrics``, plus ``up``) and only labels those series carry; every
  worker / operator series is selected by its scrape job.
- Every expression parses: the real ``promtool check rules`` on one recording rule per
  expression, Grafana's variables replaced by concrete values first.
- The queries that count the operator's blips (whose counters appear at their first
  increment) see the first blip, on synthetic series under ``promtool test rules``.
- The dashboards carry the panels on-call needs, stable uids, tags and no hard-coded
  data source.

Each checker has a negative test that feeds it a wrong input and expects a report.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from grafana_foundation_sdk.models import dashboard as dash_m

from blipguard.app_patch import metrics as app_metrics
from blipguard.operator import metrics as op_metrics

pytestmark = pytest.mark.observability

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
BUILD = DASHBOARDS / "build.py"
DATASOURCE_UID = "${datasource}"

OVERVIEW = "blipguard-overview.json"
GUARD = "blipguard-guard.json"


def load_build():
    spec = importlib.util.spec_from_file_location("blipguard_dashboards_build", BUILD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def build():
    return load_build()


@pytest.fixture(scope="module")
def committed() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARDS.glob("*.json"))}


# --- what the code exports ------------------------------------------------------------

COMMON_LABELS = frozenset({"job", "instance"})


def known_series() -> dict[str, frozenset[str]]:
    """Every series name a scrape can show -> the labels it carries."""
    series: dict[str, frozenset[str]] = {"up": COMMON_LABELS}
    for spec in app_metrics.SPECS:
        name = spec.name + "_total" if spec.kind == "counter" else spec.name
        series[name] = frozenset(spec.labels) | COMMON_LABELS
    for name in op_metrics.exported_names():
        base = max((m for m in op_metrics.METRICS if name == m or name.startswith(m + "_")), key=len)
        labels = frozenset(op_metrics.METRICS[base]._labelnames) | COMMON_LABELS
        series[name] = labels | {"le"} if name.endswith("_bucket") else labels
    return series


def scrape_job(metric: str) -> str | None:
    """The job label a series must be selected by (None: any job matcher will do)."""
    if metric in app_metrics.exported_names():
        return app_metrics.SCRAPE_JOB
    if metric in op_metrics.exported_names():
        return op_metrics.SCRAPE_JOB
    return None


def test_known_series_cover_both_modules():
    series = known_series()
    assert set(series) == app_metrics.exported_names() | op_metrics.exported_names() | {"up"}
    assert series["blipguard_transient_errors_total"] == {"dependency", "stage", "job", "instance"}
    assert series["blipguard_operator_blip_duration_seconds_bucket"] == {
        "namespace", "guard", "dependency", "le", "job", "instance"}
    assert "le" not in series["blipguard_operator_blip_duration_seconds_count"]


# --- a small PromQL reader: the series, matchers and grouping labels of an expression ----

TOKEN = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){},@])
  | (?P<space>\s+)
""", re.VERBOSE)
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
MATCH_OPS = {"=", "!=", "=~", "!~"}


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read {expr[pos:pos + 20]!r}")
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


def read(expr: str) -> tuple[list[tuple[str | None, dict[str, tuple[str, str]]]], set[str]]:
    """([(series name or None, {label: (op, value)})], grouping labels) of an expression."""
    toks = tokens(expr)
    selectors: list[tuple[str | None, dict[str, tuple[str, str]]]] = []
    grouping: set[str] = set()
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "ident" and text.lower() in GROUPING and nxt == "(":
            i += 2
            while i < len(toks) and toks[i][1] != ")":
                if toks[i][0] == "ident":
                    grouping.add(toks[i][1])
                i += 1
        elif kind == "ident" and (nxt == "(" or (nxt or "").lower() in GROUPING):
            pass  # a function, or an aggregation (``sum by (x) (...)``)
        elif kind == "ident" and text.lower() in KEYWORDS:
            pass
        elif (kind == "ident") or text == "{":
            name = text if kind == "ident" else None
            matchers: dict[str, tuple[str, str]] = {}
            j = i + 1 if kind == "ident" else i
            if j < len(toks) and toks[j][1] == "{":
                j += 1
                while j < len(toks) and toks[j][1] != "}":
                    if toks[j][0] == "ident" and j + 2 < len(toks) and toks[j + 1][1] in MATCH_OPS:
                        matchers[toks[j][1]] = (toks[j + 1][1], toks[j + 2][1][1:-1])
                        j += 3
                    else:
                        j += 1
                i = j
            if name is None and matchers.get("__name__", ("", ""))[0] == "=":
                name = matchers.pop("__name__")[1]
            selectors.append((name, matchers))
        i += 1
    return selectors, grouping


def expression_problems(expr: str) -> list[str]:
    """Unknown series, labels a series does not carry, series not selected by their job."""
    series = known_series()
    try:
        selectors, grouping = read(substitute(expr))
    except ValueError as e:
        return [str(e)]
    problems = []
    labels_here: set[str] = set()
    for name, matchers in selectors:
        if name is None:
            problems.append(f"a selector without a series name: {matchers}")
            continue
        if name not in series:
            problems.append(f"unknown metric {name}")
            continue
        labels_here |= series[name]
        for label in matchers:
            if label not in series[name]:
                problems.append(f"unknown label {label} on {name}")
        job = scrape_job(name)
        op, value = matchers.get("job", ("", ""))
        if job is not None and (op, value) != ("=", job):
            problems.append(f'{name} not selected by job="{job}"')
        if job is None and not op:
            problems.append(f"{name} has no job matcher")
    for label in sorted(grouping - labels_here):
        problems.append(f"unknown label {label} in a grouping (on none of the series)")
    return problems


LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$")


def variable_problems(query: str) -> list[str]:
    """A ``label_values(selector, label)`` query: the selector's checks, and the label on it."""
    m = LABEL_VALUES.match(query)
    if m is None:
        return [f"not a label_values(selector, label) query: {query}"]
    problems = expression_problems(m["selector"])
    selectors, _ = read(m["selector"])
    series = known_series()
    for name, _matchers in selectors:
        if name in series and m["label"] not in series[name]:
            problems.append(f"unknown label {m['label']} on {name}")
    return problems


# --- what a dashboard holds ---------------------------------------------------------


def panels(model: dict) -> list[dict]:
    out = []
    for panel in model.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold theirs
    return out


def expressions(model: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and annotation."""
    out = []
    for panel in panels(model):
        for target in panel.get("targets", []):
            out.append((f"panel {panel.get('title')!r} target {target.get('refId')}", target["expr"]))
    for ann in model.get("annotations", {}).get("list", []):
        if "expr" in ann:
            out.append((f"annotation {ann['name']!r}", ann["expr"]))
    return out


def variable_queries(model: dict) -> list[tuple[str, str]]:
    out = []
    for var in model.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]
            out.append((f"variable {var['name']}", query["query"] if isinstance(query, dict) else query))
    return out


GRAFANA_DURATIONS = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(text: str, values: dict[str, str] | None = None) -> str:
    """Grafana's variables replaced by values Prometheus accepts where they stand."""
    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if values and name in values:
            return values[name]
        return "5m" if name in GRAFANA_DURATIONS else "value"
    return VARIABLE.sub(value, text)


def promtool_errors(exprs: list[str], tmp_path: Path) -> dict[int, str]:
    """index -> promtool's error, for each expression it cannot parse."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH (Debian: apt-get install prometheus; scripts/setup.sh does)")
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard_expr_{i}", "expr": substitute(e)} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-exprs.rules.json"  # JSON is YAML
    path.write_text(json.dumps(rules, indent=1), encoding="utf-8")
    run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    output = run.stdout + run.stderr
    errors: dict[int, str] = {}
    for line in output.splitlines():
        m = re.search(r'"dashboard_expr_(\d+)": (.*)', line)
        if m:
            errors[int(m[1])] = m[2]
    if run.returncode != 0 and not errors:
        pytest.fail(f"promtool failed without naming a rule:\n{output}")
    if run.returncode == 0 and errors:
        pytest.fail(f"promtool passed but reported:\n{output}")
    return errors


def promtool_eval(tmp_path: Path, series: dict[str, str],
                  cases: list[tuple[str, str, list[tuple[str, float]]]]) -> str:
    """Evaluate expressions on synthetic series with ``promtool test rules``: "" when every
    case got exactly its expected samples, else promtool's report."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH (Debian: apt-get install prometheus; scripts/setup.sh does)")
    test = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": name, "values": values} for name, values in series.items()],
        "promql_expr_test": [
            {"expr": expr, "eval_time": at, "exp_samples": [{"labels": labels, "value": value}
                                                            for labels, value in expected]}
            for expr, at, expected in cases]}]}
    path = tmp_path / "dashboard-eval.test.json"
    path.write_text(json.dumps(test, indent=1), encoding="utf-8")
    run = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    output = "\n".join(line for line in (run.stdout + run.stderr).splitlines() if line.strip())
    if run.returncode != 0 and "FAILED" not in output:
        pytest.fail(f"promtool test rules did not run:\n{output}")
    return output if run.returncode != 0 else ""


def identity_problems(model: dict, uid: str) -> list[str]:
    problems = []
    if model.get("uid") != uid:
        problems.append(f"uid {model.get('uid')!r}, want {uid!r}")
    if model.get("tags") != ["blipguard"]:
        problems.append(f"tags {model.get('tags')}")
    if model.get("schemaVersion") != dash_m.Dashboard().schema_version:
        problems.append(f"schemaVersion {model.get('schemaVersion')}")
    variables = {v["name"]: v for v in model.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if ds is None or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no prometheus datasource variable named datasource")

    def walk(node, where):
        if isinstance(node, dict):
            ref = node.get("datasource")
            if isinstance(ref, dict) and ref.get("uid") != DATASOURCE_UID:
                problems.append(f"{where}: datasource uid {ref.get('uid')!r}, want {DATASOURCE_UID!r}")
            elif isinstance(ref, str):
                problems.append(f"{where}: datasource given by name {ref!r}")
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
    walk(model, "$")
    return problems


def undefined_variables(model: dict) -> list[str]:
    defined = {v["name"] for v in model.get("templating", {}).get("list", [])}
    used = set()
    for _where, text in expressions(model) + variable_queries(model):
        for m in VARIABLE.finditer(text):
            used.add(m.group(1) or m.group(2) or m.group(3))
    return sorted(name for name in used - defined - GRAFANA_DURATIONS)


def missing_titles(model: dict, titles: set[str]) -> list[str]:
    return sorted(titles - {p.get("title") for p in panels(model)})


# --- the committed JSON -----------------------------------------------------------


def test_committed_json_is_what_build_renders(build, committed):
    rendered = build.render()
    assert set(committed) == set(rendered), "dashboards/*.json and build.py's dashboards differ"
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text(encoding="utf-8") == text, (
            f"{name} is out of date: run python dashboards/build.py")


def run_build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BUILD), *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_check_flag_passes_on_the_committed_json_and_fails_on_a_stale_one(tmp_path):
    assert run_build("--check").returncode == 0
    for path in DASHBOARDS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    assert run_build("--check", "--dir", str(tmp_path)).returncode == 0
    stale = tmp_path / OVERVIEW
    stale.write_text(stale.read_text().replace("Result throughput", "Result thruput"))
    run = run_build("--check", "--dir", str(tmp_path))
    assert run.returncode == 1 and OVERVIEW in run.stderr
    assert "thruput" in stale.read_text(), "--check must not rewrite the file"
    (tmp_path / GUARD).unlink()
    run = run_build("--check", "--dir", str(tmp_path))
    assert run.returncode == 1 and GUARD in run.stderr


# --- metrics and labels -----------------------------------------------------------------


@pytest.mark.parametrize("name", [OVERVIEW, GUARD])
def test_expressions_use_only_exported_metrics_and_their_labels(committed, name):
    model = committed[name]
    assert expressions(model), "no expressions found"
    problems = [f"{where}: {p}" for where, expr in expressions(model) for p in expression_problems(expr)]
    problems += [f"{where}: {p}" for where, query in variable_queries(model) for p in variable_problems(query)]
    assert problems == []


def test_every_exported_metric_is_on_a_dashboard(committed):
    seen = {name for model in committed.values()
            for _where, expr in expressions(model) + variable_queries(model)
            for name, _ in read(substitute(LABEL_VALUES.match(expr)["selector"] if LABEL_VALUES.match(expr)
                                           else expr))[0]}
    assert app_metrics.exported_names() <= seen
    families = {n for n in op_metrics.METRICS}
    assert {f for f in families if not any(s == f or s.startswith(f + "_") for s in seen)} == set()


def test_expression_checker_reports_unknown_metrics_labels_and_jobs():
    w, o = app_metrics.SCRAPE_JOB, op_metrics.SCRAPE_JOB
    good = f'sum by (dependency) (rate(blipguard_transient_errors_total{{job="{w}", stage="ack"}}[5m]))'
    assert expression_problems(good) == []
    assert expression_problems(f'histogram_quantile(0.9, sum by (le) (rate('
                               f'blipguard_operator_blip_duration_seconds_bucket{{job="{o}"}}[5m])))') == []
    assert expression_problems(f'rate(blipguard_results_procesed_total{{job="{w}"}}[5m])') == [
        "unknown metric blipguard_results_procesed_total"]
    assert expression_problems(f'blipguard_operator_paused{{job="{o}", dependency="redis"}}') == [
        "unknown label dependency on blipguard_operator_paused"]
    assert expression_problems(f'sum by (pod) (blipguard_worker_paused{{job="{w}"}})') == [
        "unknown label pod in a grouping (on none of the series)"]
    assert expression_problems("blipguard_worker_paused") == ['blipguard_worker_paused not selected by job="'
                                                              f'{w}"']
    assert expression_problems(f'blipguard_worker_paused{{job="{o}"}}') == [
        f'blipguard_worker_paused not selected by job="{w}"']
    assert expression_problems("up") == ["up has no job matcher"]
    assert expression_problems('{__name__="blipguard_nope", job="x"}') == ["unknown metric blipguard_nope"]
    assert expression_problems('rate({job="x"}[5m])')[0].startswith("a selector without a series name")
    # an operator counter's base name is exported too (prometheus_client), without _total
    assert expression_problems(f'blipguard_operator_blips{{job="{o}", namespace="a"}}') == []


def test_variable_checker_reports_unknown_metrics_and_labels():
    o = op_metrics.SCRAPE_JOB
    assert variable_problems(f'label_values(blipguard_operator_spec_valid{{job="{o}"}}, guard)') == []
    assert variable_problems(f'label_values(blipguard_operator_spec_valid{{job="{o}"}}, dependency)') == [
        "unknown label dependency on blipguard_operator_spec_valid"]
    assert variable_problems(f'label_values(blipguard_operator_nope{{job="{o}"}}, guard)') == [
        "unknown metric blipguard_operator_nope"]
    assert variable_problems("query_result(up)") == ["not a label_values(selector, label) query: query_result(up)"]


# --- PromQL parses ------------------------------------------------------------------------


def test_every_expression_parses_with_promtool(committed, tmp_path):
    found = [(f"{name} {where}", expr) for name, model in committed.items()
             for where, expr in expressions(model)]
    found += [(f"{name} {where}", LABEL_VALUES.match(q)["selector"])
              for name, model in committed.items() for where, q in variable_queries(model)]
    assert len(found) > 20
    errors = promtool_errors([expr for _where, expr in found], tmp_path)
    assert {found[i][0]: (found[i][1], e) for i, e in errors.items()} == {}


def test_promtool_check_reports_an_unparsable_expression(tmp_path):
    exprs = [
        "sum(rate(blipguard_results_processed_total[$__rate_interval]))",
        "sum(rate(blipguard_results_processed_total[$__rate_interval])",
        'blipguard_operator_paused{namespace="$namespace", guard=}',
        "no_such_function(up)",
    ]
    errors = promtool_errors(exprs, tmp_path)
    assert sorted(errors) == [1, 2, 3]
    assert "unclosed left parenthesis" in errors[1]
    assert "unknown function" in errors[3]


def test_substitute_replaces_grafana_variables():
    assert substitute('x{a="$namespace", b=~"${dependency:regex}"}[$__rate_interval] offset [[step]]') == (
        'x{a="value", b=~"value"}[5m] offset value')


# --- identity, variables, panels ------------------------------------------------------


@pytest.mark.parametrize("name,uid", [(OVERVIEW, "blipguard-overview"), (GUARD, "blipguard-guard")])
def test_uid_tags_schema_and_datasource_variable(committed, name, uid):
    assert identity_problems(committed[name], uid) == []


def test_identity_check_reports_a_hard_coded_datasource(committed):
    model = json.loads(json.dumps(committed[OVERVIEW]))
    model["panels"][1]["targets"][0]["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
    model["tags"] = []
    problems = identity_problems(model, "blipguard-overview")
    assert len(problems) == 2
    assert "P1809F7CD0C75ACF3" in problems[1] and "tags" in problems[0]
    assert identity_problems(committed[OVERVIEW], "another-uid") == ["uid 'blipguard-overview', want 'another-uid'"]


@pytest.mark.parametrize("name", [OVERVIEW, GUARD])
def test_variables_used_are_defined(committed, name):
    assert undefined_variables(committed[name]) == []


def test_undefined_variable_is_reported(committed):
    model = json.loads(json.dumps(committed[GUARD]))
    model["templating"]["list"] = [v for v in model["templating"]["list"] if v["name"] != "guard"]
    assert undefined_variables(model) == ["guard"]


def test_guard_variables_chain_namespace_guard_dependency(committed):
    variables = {v["name"]: v for v in committed[GUARD]["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "guard", "dependency"]
    assert 'namespace="$namespace"' in variables["guard"]["query"]
    assert 'guard="$guard"' in variables["dependency"]["query"]
    assert variables["dependency"]["multi"] and variables["dependency"]["includeAll"]
    for _where, expr in expressions(committed[GUARD]):
        assert 'namespace="$namespace"' in expr and 'guard="$guard"' in expr, expr


OVERVIEW_TITLES = {
    "Terminal job failures", "Terminal failures during a blip", "Transient errors survived", "Workers paused",
    "Guards degraded", "Transient errors by dependency", "Terminal job failures by reason",
    "Result retries and retries exhausted", "Results held back while paused", "Result throughput",
    "Paused workers and guards", "Scrape targets up",
}
GUARD_TITLES = {
    "Spec valid", "Paused", "Degraded", "Workers not consuming", "Dependency up", "Dependency up over time",
    "Restarts seen", "Blips", "Blip duration", "Paused and degraded", "Broadcasts by command and outcome",
    "Workers confirmed", "Workers not consuming over time",
}


def test_dashboards_have_the_on_call_panels(committed):
    assert missing_titles(committed[OVERVIEW], OVERVIEW_TITLES) == []
    assert missing_titles(committed[GUARD], GUARD_TITLES) == []
    assert missing_titles(committed[OVERVIEW], {"Result throughput", "Queue depth"}) == ["Queue depth"]


def panel(model: dict, title: str) -> dict:
    return next(p for p in panels(model) if p.get("title") == title)


def test_overview_tells_transient_from_terminal_and_marks_blips(committed):
    model = committed[OVERVIEW]
    transient = panel(model, "Transient errors by dependency")["targets"][0]["expr"]
    assert "rate(blipguard_transient_errors_total" in transient and "by (dependency)" in transient
    terminal = panel(model, "Terminal job failures by reason")["targets"][0]["expr"]
    assert "increase(blipguard_job_failures_total" in terminal and "by (reason, during_blip)" in terminal
    throughput = panel(model, "Result throughput")
    assert throughput["type"] == "timeseries"
    assert "rate(blipguard_results_processed_total" in throughput["targets"][0]["expr"]
    annotations = {a["name"]: a for a in model["annotations"]["list"]}
    assert "blipguard_operator_blips_total" in annotations["Blips"]["expr"]
    assert "blipguard_operator_paused" in annotations["Guard paused workers"]["expr"]
    for ann in annotations.values():
        assert ann["enable"] and not ann.get("filter"), "annotations show on every panel, throughput too"


def test_guard_blip_duration_is_a_histogram_quantile(committed):
    exprs = [t["expr"] for t in panel(committed[GUARD], "Blip duration")["targets"]]
    assert exprs and all(e.startswith("histogram_quantile(") for e in exprs)
    assert all("blipguard_operator_blip_duration_seconds_bucket" in e and "by (le, dependency)" in e
               for e in exprs)
    broadcasts = panel(committed[GUARD], "Broadcasts by command and outcome")["targets"][0]["expr"]
    assert "by (command, outcome)" in broadcasts


# --- the queries that work around counters created at their first increment ------------

OP_LABELS = (f'job="{op_metrics.SCRAPE_JOB}", instance="op:8080", namespace="ml", guard="antenna"')
BUCKETS = ("1", "5", "15", "30", "60", "120", "300", "600", "1800", "3600", "+Inf")
# The operator's series over 40 minutes (1m apart): the guard's first blip starts at 10m (its
# counter appears at 1), the workers are paused 10m-15m, the blip ends at 16m after 20 s
# (its duration histogram appears then) and a second blip starts at 21m.
OP_SERIES = {
    f"blipguard_operator_blips_total{{{OP_LABELS}, dependency=\"redis\"}}": "_x10 1x10 2x10",
    f"blipguard_operator_paused{{{OP_LABELS}}}": "0x9 1x5 0x25",
    **{f"blipguard_operator_blip_duration_seconds_bucket{{{OP_LABELS}, dependency=\"redis\", le=\"{le}\"}}":
       "_x16 " + ("0x24" if le in ("1", "5", "15") else "1x24") for le in BUCKETS},
}
GUARD_VALUES = {"namespace": "ml", "guard": "antenna", "dependency": ".*", "__rate_interval": "2m"}


def annotation_expr(model: dict, name: str) -> str:
    return substitute(next(a for a in model["annotations"]["list"] if a["name"] == name)["expr"], GUARD_VALUES)


def test_blip_annotations_mark_the_first_blip_and_the_pause(committed, tmp_path):
    where = '{dependency="redis", guard="antenna", namespace="ml"}'
    cases = []
    for model in committed.values():
        blips = annotation_expr(model, "Blips")
        paused = annotation_expr(model, "Guard paused workers")
        cases += [(blips, "10m", [(where, 1)]), (blips, "15m", []), (f"count({blips})", "21m", [("{}", 1)]),
                  (paused, "9m", []), (paused, "12m", [('{guard="antenna", namespace="ml"}', 1)]),
                  (paused, "17m", [])]
    assert promtool_eval(tmp_path, OP_SERIES, cases) == ""


def test_guard_panels_count_the_first_blip_and_its_duration(committed, tmp_path):
    model = committed[GUARD]
    blips = substitute(panel(model, "Blips")["targets"][0]["expr"], GUARD_VALUES)
    p50, p90, p99 = (substitute(t["expr"], GUARD_VALUES) for t in panel(model, "Blip duration")["targets"])
    redis = '{dependency="redis"}'
    cases = [(blips, "9m", []), (blips, "10m", [(redis, 1)]), (blips, "15m", [(redis, 0)]),
             (f"count(({blips}) > 0)", "21m", [("{}", 1)]),
             # the one 20 s blip, in the (15, 30] bucket: linear interpolation within it
             (p50, "16m", [(redis, 22.5)]), (p90, "30m", [(redis, 28.5)]), (p99, "30m", [(redis, 29.85)])]
    assert promtool_eval(tmp_path, OP_SERIES, cases) == ""


def test_eval_reports_a_query_that_misses_the_first_blip(tmp_path):
    naive = (f'sum by (namespace, guard, dependency) (increase(blipguard_operator_blips_total'
             f'{{job="{op_metrics.SCRAPE_JOB}"}}[2m])) > 0')
    report = promtool_eval(tmp_path, OP_SERIES, [(naive, "10m", [('{dependency="redis", guard="antenna", '
                                                                  'namespace="ml"}', 1)])])
    assert "FAILED" in report and "got: nil" in report
