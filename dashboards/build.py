"""The Grafana dashboards, as code: ``python dashboards/build.py`` writes ``dashboards/*.json``.

The rendered JSON is committed (the chart copies it into ConfigMaps); ``--check`` exits 1
when a committed file differs from what this script renders now, 0 otherwise.

Metric names and scrape job labels come from the two metric modules, never typed here:
``blipguard.app_patch.metrics`` (the workers) and ``blipguard.operator.metrics`` (the
operator). ``tests/observability/test_dashboards.py`` checks every expression against
them and parses it with ``promtool``.

- ``blipguard-overview``: on-call's first look. Are jobs surviving blips (transient errors,
  retries, held-back results) or failing (terminal failures, retries exhausted)? Is the
  result path moving, and are workers paused? Blips and guard pauses are annotations.
- ``blipguard-guard``: one guard (namespace, guard, dependency variables): what it sees of
  its dependencies, its blips and their duration, and what its pause commands achieved.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m

from blipguard.app_patch import metrics as app_metrics
from blipguard.operator import metrics as op_metrics

HERE = Path(__file__).resolve().parent
TAGS = ["blipguard"]
DATASOURCE = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Selectors: the scrape job labels the chart's PodMonitor / ServiceMonitor fix.
WORKERS = f'job="{app_metrics.SCRAPE_JOB}"'
OPERATOR = f'job="{op_metrics.SCRAPE_JOB}"'
GUARD = f'{OPERATOR}, namespace="$namespace", guard="$guard"'
GUARD_DEP = f'{GUARD}, dependency=~"$dependency"'
# Annotation queries run with their own step (ANNOTATION_STEP), not a panel's interval:
# a fixed window twice the step, so two consecutive scrapes (up to a step apart) always
# fall in one window and no increment is missed.
ANNOTATION_STEP = "60s"
ANNOTATION_WINDOW = "2m"


def app(name: str) -> str:
    """A worker series name, checked against the module (counters end in _total)."""
    exported = app_metrics.exported_names()
    full = name if name in exported else name + "_total"
    if full not in exported:
        raise KeyError(f"{name}: not a metric blipguard.app_patch.metrics exports")
    return full


def op(name: str, suffix: str = "") -> str:
    """An operator series name (``suffix``: _total, _bucket, ...), checked against the module."""
    full = op_metrics.PREFIX + name + suffix
    if full not in op_metrics.exported_names():
        raise KeyError(f"{full}: not a metric blipguard.operator.metrics exports")
    return full


def increase(series: str, selector: str, window: str, by: str) -> str:
    """``sum by (by) (increase(series[window]))``, counting a series' first increment too.

    The operator creates a counter's series at its first increment (at 1, not at 0):
    ``increase()`` cannot see that one, so a guard's first blip, restart or broadcast after
    an operator start would not show. Per series: its increase where it grew; else its value
    where it appeared within the window (``s unless s offset window``); else its increase (0).
    """
    sel = f"{series}{{{selector}}}"
    inc = f"increase({sel}[{window}])"
    return f"sum by ({by}) (({inc} > 0) or ({sel} unless {sel} offset {window}) or {inc})"


# --- small builders -------------------------------------------------------------------


class Ids:
    """Stable panel ids, in the order the panels are added."""

    def __init__(self) -> None:
        self.next = 0

    def __call__(self) -> int:
        self.next += 1
        return self.next


def query(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> prom_b.Dataquery:
    q = prom_b.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    q = q.legend_format(legend or "__auto")
    return q.instant() if instant else q.range()


def targets(*queries: tuple[str, str]) -> list[prom_b.Dataquery]:
    return [query(expr, legend, ref=chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def thresholds(*steps: tuple[float | None, str]) -> dash_b.ThresholdsConfig:
    return (dash_b.ThresholdsConfig().mode(dash_m.ThresholdsMode.ABSOLUTE)
            .steps([dash_m.Threshold(value=v, color=c) for v, c in steps]))


def timeseries(ids: Ids, title: str, description: str, queries: list[tuple[str, str]], unit: str,
               width: int = 12, height: int = 8, stacked: bool = False) -> ts_b.Panel:
    panel = (ts_b.Panel().id(ids()).title(title).description(description).datasource(DATASOURCE)
             .targets(targets(*queries)).unit(unit).min(0).span(width).height(height)
             .fill_opacity(10).line_width(1)
             .legend(common_b.VizLegendOptions().display_mode(common_m.LegendDisplayMode.LIST)
                     .placement(common_m.LegendPlacement.BOTTOM).show_legend(True))
             .tooltip(common_b.VizTooltipOptions().mode(common_m.TooltipDisplayMode.MULTI)
                      .sort(common_m.SortOrder.DESCENDING)))
    if stacked:
        panel = panel.stacking(common_b.StackingConfig().mode(common_m.StackingMode.NORMAL))
    return panel


def stat(ids: Ids, title: str, description: str, expr: str, unit: str = "short",
         steps: tuple[tuple[float | None, str], ...] = ((None, "green"),),
         mappings: dict[str, tuple[str, str]] | None = None, legend: str = "",
         width: int = 4, height: int = 4) -> stat_b.Panel:
    panel = (stat_b.Panel().id(ids()).title(title).description(description).datasource(DATASOURCE)
             .with_target(query(expr, legend, instant=True)).unit(unit).span(width).height(height)
             .thresholds(thresholds(*steps)).color_mode(common_m.BigValueColorMode.BACKGROUND)
             .graph_mode(common_m.BigValueGraphMode.NONE)
             .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    if mappings:
        panel = panel.mappings([dash_m.ValueMap(options={
            value: dash_m.ValueMappingResult(text=text, color=color, index=i)
            for i, (value, (text, color)) in enumerate(mappings.items())})])
    return panel


def row(ids: Ids, title: str) -> dash_b.Row:
    return dash_b.Row(title).id(ids())


def datasource_variable() -> dash_b.DatasourceVariable:
    return dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus")


def label_variable(name: str, label: str, selector: str, multi: bool = False) -> dash_b.QueryVariable:
    var = (dash_b.QueryVariable(name).label(label).datasource(DATASOURCE)
           .query(f"label_values({selector}, {name})")
           .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dash_m.VariableSort.ALPHABETICAL_ASC))
    if multi:
        var = var.multi(True).include_all(True).all_value(".*")
    return var


def annotation(name: str, expr: str, color: str) -> dash_b.AnnotationQuery:
    return dash_b.AnnotationQuery().name(name).datasource(DATASOURCE).enable(True).icon_color(color).expr(expr)


def blip_annotations(selector: str) -> list[dash_b.AnnotationQuery]:
    """Blips started (a mark) and guard pauses (a region while paused), of the guards the
    operator ``selector`` picks, on every time series panel."""
    blips = increase(op("blips", "_total"), selector, ANNOTATION_WINDOW, "namespace, guard, dependency")
    paused = f"max by (namespace, guard) ({op('paused')}{{{selector}}}) > 0"
    return [annotation("Blips", f"{blips} > 0", "orange"),
            annotation("Guard paused workers", paused, "blue")]


# Prometheus annotation fields the SDK's AnnotationQuery model does not carry: added to
# the rendered JSON by name (see render()).
ANNOTATION_EXTRAS = {
    "Blips": {"titleFormat": "Blip: {{dependency}}", "tagKeys": "namespace,guard,dependency"},
    "Guard paused workers": {"titleFormat": "Workers paused by {{namespace}}/{{guard}}",
                             "tagKeys": "namespace,guard"},
}


def dashboard(uid: str, title: str, description: str) -> dash_b.Dashboard:
    return (dash_b.Dashboard(title).uid(uid).description(description).tags(TAGS).editable()
            .time("now-6h", "now").refresh("1m").timezone("browser")
            .tooltip(dash_m.DashboardCursorSync.CROSSHAIR))


# --- the dashboards -----------------------------------------------------------------


def overview() -> dash_b.Dashboard:
    ids = Ids()
    d = dashboard("blipguard-overview", "blipguard / Overview",
                  "Are jobs riding out Redis and NATS blips, or failing? Worker and operator metrics.")
    d = d.with_variable(datasource_variable())

    d = d.annotations(blip_annotations(OPERATOR))

    d = d.with_row(row(ids, "Now"))
    d = d.with_panel(stat(
        ids, "Terminal job failures", "Jobs the result path failed terminally in the time range "
        "(state missing, or retries exhausted). Each is a job users saw fail.",
        f"sum(increase({app('blipguard_job_failures')}{{{WORKERS}}}[$__range]))",
        steps=((None, "green"), (1, "red")), width=5))
    d = d.with_panel(stat(
        ids, "Terminal failures during a blip", "Of those, failed while the worker was paused or in a "
        "streak of transient errors: failures the blip protection did not prevent.",
        f'sum(increase({app("blipguard_job_failures")}{{{WORKERS}, during_blip="true"}}[$__range]))',
        steps=((None, "green"), (1, "red")), width=5))
    d = d.with_panel(stat(
        ids, "Transient errors survived", "Transient Redis/NATS errors result tasks met in the time "
        "range (retried or held back, not failed).",
        f"sum(increase({app('blipguard_transient_errors')}{{{WORKERS}}}[$__range]))",
        steps=((None, "green"), (1, "yellow")), width=5))
    d = d.with_panel(stat(
        ids, "Workers paused", "Worker hosts holding their result queues paused now.",
        f"sum({app('blipguard_worker_paused')}{{{WORKERS}}})",
        steps=((None, "green"), (1, "blue")), width=5))
    d = d.with_panel(stat(
        ids, "Guards degraded", "Guards that gave up pausing at their maximum pause: the dependency "
        "is really down and jobs fail visibly.",
        f"sum({op('degraded')}{{{OPERATOR}}})",
        steps=((None, "green"), (1, "red")), width=4))

    d = d.with_row(row(ids, "Job outcomes"))
    d = d.with_panel(timeseries(
        ids, "Transient errors by dependency", "Transient dependency errors result tasks met and survived "
        "(retried or held back), per second.",
        [(f"sum by (dependency) (rate({app('blipguard_transient_errors')}{{{WORKERS}}}[$__rate_interval]))",
          "{{dependency}}")], unit="ops"))
    d = d.with_panel(timeseries(
        ids, "Terminal job failures by reason", "Jobs failed terminally, per interval, by reason and "
        "whether the worker was in a blip. Anything here is a job users saw fail.",
        [(f"sum by (reason, during_blip) "
          f"(increase({app('blipguard_job_failures')}{{{WORKERS}}}[$__rate_interval]))",
          "{{reason}} (during blip: {{during_blip}})")], unit="short", stacked=True))
    d = d.with_panel(timeseries(
        ids, "Result retries and retries exhausted", "Result tasks retried after a transient error, and "
        "those that used up their retries (each fails its job), per second.",
        [(f"sum by (dependency) (rate({app('blipguard_result_retries')}{{{WORKERS}}}[$__rate_interval]))",
          "retried: {{dependency}}"),
         (f"sum by (dependency) (rate({app('blipguard_retries_exhausted')}{{{WORKERS}}}[$__rate_interval]))",
          "exhausted: {{dependency}}")], unit="ops"))
    d = d.with_panel(timeseries(
        ids, "Results held back while paused", "Results sent back to the queue untouched because the "
        "worker was paused, per second: they are processed after the resume.",
        [(f"sum by (dependency) (rate({app('blipguard_results_held_back')}{{{WORKERS}}}[$__rate_interval]))",
          "{{dependency}}")], unit="ops"))

    d = d.with_row(row(ids, "Result path"))
    d = d.with_panel(timeseries(
        ids, "Result throughput", "Result tasks that ran to the end, per second. Annotations: blips "
        "(orange) and guard pauses (blue).",
        [(f"sum(rate({app('blipguard_results_processed')}{{{WORKERS}}}[$__rate_interval]))", "all workers"),
         (f"sum by (instance) (rate({app('blipguard_results_processed')}{{{WORKERS}}}[$__rate_interval]))",
          "{{instance}}")], unit="ops"))
    d = d.with_panel(timeseries(
        ids, "Paused workers and guards", "Worker hosts holding their result queues paused, and guards "
        "pausing (or draining) them.",
        [(f"sum({app('blipguard_worker_paused')}{{{WORKERS}}})", "workers paused"),
         (f"sum({op('paused')}{{{OPERATOR}}})", "guards paused"),
         (f"sum({op('degraded')}{{{OPERATOR}}})", "guards degraded")], unit="short"))
    d = d.with_panel(timeseries(
        ids, "Scrape targets up", "Worker and operator metrics endpoints Prometheus reaches. No target "
        "means every other panel here is empty, not calm.",
        [(f'sum by (job) (up{{job=~"{app_metrics.SCRAPE_JOB}|{op_metrics.SCRAPE_JOB}"}})', "{{job}}")],
        unit="short", width=24, height=6))
    return d


def guard() -> dash_b.Dashboard:
    ids = Ids()
    d = dashboard("blipguard-guard", "blipguard / Guard",
                  "One guard: its dependencies, its blips and what its pause commands achieved.")
    d = d.with_variable(datasource_variable())
    d = d.with_variable(label_variable("namespace", "Namespace", f"{op('spec_valid')}{{{OPERATOR}}}"))
    d = d.with_variable(label_variable(
        "guard", "Guard", f'{op("spec_valid")}{{{OPERATOR}, namespace="$namespace"}}'))
    d = d.with_variable(label_variable("dependency", "Dependency", f"{op('dependency_up')}{{{GUARD}}}",
                                       multi=True))
    d = d.annotations(blip_annotations(GUARD))

    d = d.with_row(row(ids, "State"))
    d = d.with_panel(stat(
        ids, "Spec valid", "0 while the guard's spec is wrong in a way the schema cannot catch "
        "(see the guard's status and events).",
        f"min({op('spec_valid')}{{{GUARD}}})",
        steps=((None, "red"), (1, "green")), mappings={"0": ("invalid", "red"), "1": ("valid", "green")}))
    d = d.with_panel(stat(
        ids, "Paused", "The guard holds the workers paused (or NATS awaits the drain).",
        f"max({op('paused')}{{{GUARD}}})",
        steps=((None, "green"), (1, "blue")), mappings={"0": ("no", "green"), "1": ("paused", "blue")}))
    d = d.with_panel(stat(
        ids, "Degraded", "The guard gave up pausing at its maximum pause: jobs fail visibly until the "
        "dependency recovers.",
        f"max({op('degraded')}{{{GUARD}}})",
        steps=((None, "green"), (1, "red")), mappings={"0": ("no", "green"), "1": ("degraded", "red")}))
    d = d.with_panel(stat(
        ids, "Workers not consuming", "Workers that answered but do not consume their result queue after "
        "the last resume: restart them.",
        f"max({op('workers_not_consuming')}{{{GUARD}}})", steps=((None, "green"), (1, "red"))))
    d = d.with_panel(stat(
        ids, "Dependency up", "1 while every watched pod of the dependency is healthy.",
        f"min by (dependency) ({op('dependency_up')}{{{GUARD_DEP}}})", legend="{{dependency}}",
        steps=((None, "red"), (1, "green")), mappings={"0": ("down", "red"), "1": ("up", "green")}, width=8))

    blip_buckets = increase(op("blip_duration_seconds", "_bucket"), GUARD_DEP, "1h", "le, dependency")
    d = d.with_row(row(ids, "Dependencies and blips"))
    d = d.with_panel(timeseries(
        ids, "Dependency up over time", "1 while every watched pod of the dependency is healthy.",
        [(f"min by (dependency) ({op('dependency_up')}{{{GUARD_DEP}}})", "{{dependency}}")], unit="short"))
    d = d.with_panel(timeseries(
        ids, "Restarts seen", "Pod troubles seen per interval: restart, replacement, readiness lost, "
        "deletion, CrashLoopBackOff.",
        [(increase(op("restarts_seen", "_total"), GUARD_DEP, "$__rate_interval", "dependency"), "{{dependency}}")],
        unit="short"))
    d = d.with_panel(timeseries(
        ids, "Blips", "Blips started per interval, by the dependency whose trouble started them.",
        [(increase(op("blips", "_total"), GUARD_DEP, "$__rate_interval", "dependency"), "{{dependency}}")],
        unit="short"))
    d = d.with_panel(timeseries(
        ids, "Blip duration", "First trouble to the end of the settle wait, for the blips that ended in "
        "the hour before each point (quantiles from the histogram).",
        [(f"histogram_quantile({q}, {blip_buckets})", f"p{int(q * 100)} {{{{dependency}}}}")
         for q in (0.5, 0.9, 0.99)], unit="s"))
    d = d.with_panel(timeseries(
        ids, "Paused and degraded", "1 while the guard holds the workers paused / has given up pausing.",
        [(f"max({op('paused')}{{{GUARD}}})", "paused"),
         (f"max({op('degraded')}{{{GUARD}}})", "degraded")], unit="short"))

    d = d.with_row(row(ids, "Pause commands"))
    d = d.with_panel(timeseries(
        ids, "Broadcasts by command and outcome", "Pause-channel commands sent per interval (pause, renew, "
        "resume_celery, resume_nats, status; _nats for the NATS consumers), ok or failed.",
        [(increase(op("broadcasts", "_total"), GUARD, "$__rate_interval", "command, outcome"),
          "{{command}} {{outcome}}")], unit="short", width=8))
    d = d.with_panel(timeseries(
        ids, "Workers confirmed", "Workers that confirmed the last command of each kind.",
        [(f"max by (command) ({op('workers_confirmed')}{{{GUARD}}})", "{{command}}")], unit="short", width=8))
    d = d.with_panel(timeseries(
        ids, "Workers not consuming over time", "Workers that answered but do not consume their result "
        "queue after a resume (catatonic): restart them.",
        [(f"max({op('workers_not_consuming')}{{{GUARD}}})", "not consuming")], unit="short", width=8))
    return d


DASHBOARDS = {
    "blipguard-overview.json": overview,
    "blipguard-guard.json": guard,
}


def render() -> dict[str, str]:
    """File name -> the JSON text to commit."""
    out = {}
    for name, build in DASHBOARDS.items():
        model = json.loads(json.dumps(build().build(), cls=JSONEncoder))
        for ann in model.get("annotations", {}).get("list", []):
            ann.update(ANNOTATION_EXTRAS.get(ann["name"], {}))
            ann.setdefault("step", ANNOTATION_STEP)
        out[name] = json.dumps(model, indent=2, ensure_ascii=False) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a committed file differs from what this renders (writes nothing)")
    parser.add_argument("--dir", type=Path, default=HERE, help="where the JSON lives (default: dashboards/)")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.dir / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"out of date (run: python dashboards/build.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    for name in stale:
        print(f"wrote {args.dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
