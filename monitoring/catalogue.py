"""The metric catalogue: every ``rlef_*`` metric the code defines, and the naming rules they follow.

Scope: import ``rlef.monitoring.metrics`` and every ``monitoring/metrics_<role>.py`` module (they register
their metrics in prometheus_client's default REGISTRY at import), list the metric objects found there, render
docs/metrics.md from them (``rlef monitoring catalogue --write docs/metrics.md``) and check the naming rules.
tests/monitoring/test_monitoring_catalogue.py fails when the committed docs differ from the code.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

import rlef.monitoring as _pkg

#: Modules that define metrics: metrics.py (generic series) and metrics_<role>.py; metrics_log is a file format.
NOT_METRIC_MODULES = {"metrics_log"}

#: Units allowed as the last name segment of a histogram/summary (Prometheus base units plus counted things).
HISTOGRAM_UNITS = {"seconds", "bytes", "tokens", "ratio", "turns", "tests", "rollouts", "messages", "chunks", "versions", "jobs", "chars"}
#: Name segments that betray a non-base unit.
NON_BASE_UNITS = {"ms", "milliseconds", "microseconds", "us", "ns", "nanoseconds", "minutes", "hours", "days", "kb", "kib", "kilobytes", "mb", "mib", "megabytes", "gb", "gib", "gigabytes", "percent", "pct"}
#: Per-item identifiers that must never be labels (unbounded cardinality).
FORBIDDEN_LABELS = {"job_id", "rollout_id", "problem_id", "episode_id", "request_id", "le", "quantile"}
ROLES = ("actor", "executor", "learner")
#: Dimensionless quantities a histogram may be named after instead of a unit.
DIMENSIONLESS = {"reward", "episode", "lag", "norm", "advantage", "ratio"}
_NAME = re.compile(r"^rlef_[a-z0-9]+(_[a-z0-9]+)*$")
#: Series defined once in metrics.py for every role.
GENERIC_PREFIXES = ("rlef_role", "rlef_heartbeat_", "rlef_policy_version", "rlef_process_")


@dataclass(frozen=True)
class MetricDef:
    """One metric as exposed: ``name`` is the scraped family name (counters with ``_total``, info with ``_info``)."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str
    module: str
    buckets: tuple[float, ...] = ()


def metric_modules() -> list[str]:
    """Dotted names of every module that defines metrics (rlef.monitoring.metrics + metrics_<role>)."""
    names = [m.name for m in pkgutil.iter_modules(_pkg.__path__) if m.name == "metrics" or m.name.startswith("metrics_")]
    return [f"rlef.monitoring.{n}" for n in sorted(names) if n not in NOT_METRIC_MODULES]


def _exposed_name(metric: MetricWrapperBase) -> str:
    suffix = {"counter": "_total", "info": "_info"}.get(metric._type, "")
    return metric._name + suffix


def collect_metrics(registry: CollectorRegistry = REGISTRY) -> list[MetricDef]:
    """Import every metric module and return the ``rlef_*`` metric objects they registered, sorted by name."""
    owners: dict[int, str] = {}
    for dotted in metric_modules():
        module = importlib.import_module(dotted)
        for value in vars(module).values():
            for candidate in (value.values() if isinstance(value, dict) else [value]):
                if isinstance(candidate, MetricWrapperBase):
                    owners.setdefault(id(candidate), dotted.rsplit(".", 1)[1])
    found: list[MetricDef] = []
    for collector in list(registry._collector_to_names):  # noqa: SLF001 - the only way to list registered objects
        if not isinstance(collector, MetricWrapperBase) or not collector._name.startswith("rlef_"):
            continue
        buckets = tuple(getattr(collector, "_upper_bounds", ()) or ())
        found.append(
            MetricDef(
                name=_exposed_name(collector),
                type=collector._type,
                labels=tuple(collector._labelnames),
                help=collector._documentation,
                module=owners.get(id(collector), "?"),
                buckets=buckets,
            )
        )
    return sorted(found, key=lambda m: m.name)


def naming_problems(metric: MetricDef) -> list[str]:
    """Every naming rule ``metric`` breaks (empty = fine)."""
    problems: list[str] = []
    name = metric.name
    if not _NAME.match(name):
        problems.append("name must be rlef_ followed by lower-case snake_case")
    topic = metric.module.removeprefix("metrics_") if metric.module.startswith("metrics_") else None
    # metrics_<role>.py -> rlef_<role>_*; a module for a channel both roles share (metrics_weights.py) ->
    # rlef_<role>_<topic>_*, e.g. rlef_learner_weights_* and rlef_actor_weights_*.
    if topic and not (name.startswith(f"rlef_{topic}_") or any(name.startswith(f"rlef_{r}_{topic}_") for r in ROLES)):
        problems.append(f"defined in {metric.module}.py, so it must start with rlef_{topic}_ or rlef_<role>_{topic}_")
    if metric.module == "metrics" and not name.startswith(GENERIC_PREFIXES):
        problems.append("generic series in metrics.py must use one of the generic prefixes")
    if metric.type == "counter" and name.endswith("_total_total"):
        problems.append("counter declared with _total already in its name twice")
    if metric.type != "counter" and name.endswith("_total"):
        problems.append("only counters may end in _total")
    segments = set(name.split("_"))
    bad_units = segments & NON_BASE_UNITS
    if bad_units:
        problems.append(f"non-base unit(s) {sorted(bad_units)}: use seconds, bytes or a _ratio")
    if metric.type in ("histogram", "summary") and name.rsplit("_", 1)[1] not in HISTOGRAM_UNITS | DIMENSIONLESS:
        problems.append(f"{metric.type} must end in a unit, one of {sorted(HISTOGRAM_UNITS)} (or {sorted(DIMENSIONLESS)})")
    bad_labels = set(metric.labels) & FORBIDDEN_LABELS
    if bad_labels:
        problems.append(f"unbounded or reserved label(s) {sorted(bad_labels)}")
    if not metric.help.strip():
        problems.append("empty help text")
    return problems


HEADER = """# Metric catalogue

Every `rlef_*` metric the code defines, generated from the metric modules (`monitoring/metrics.py` and
`monitoring/metrics_<role>.py`) by `rlef monitoring catalogue --write docs/metrics.md`.
`tests/monitoring/test_monitoring_catalogue.py` fails when this file and the code differ, and checks the
naming rules: `rlef_<role>_<what>_<unit>`, counters end in `_total`, base units (seconds, bytes, `_ratio`
for fractions), histograms end in a unit, no per-item identifiers (job, rollout, problem ids) as labels.

Every process also exports `rlef_role_info{role,id,version}`, `rlef_heartbeat_timestamp_seconds` and
`rlef_policy_version` (monitoring/metrics.py), and Prometheus adds `job` (the role) and `id`/`instance`
target labels (a scraped `id` label, as in `rlef_role_info`, is then kept as `exported_id`).
The run's own JSONL metrics log (`RUN_DIR/metrics/*.jsonl`, `rlef.monitoring.metrics_log`) holds the same
series as registry snapshots plus the scalar keys `rlef report` plots. Derived series (rates, ratios) are the recording rules in
`monitoring/prometheus/rules/recording.yml`, listed at the end.
"""


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_catalogue(metrics: list[MetricDef], recording_rules: list[tuple[str, str]] | None = None) -> str:
    """docs/metrics.md text: one table per defining module, then the recording rules (name, expression)."""
    lines = [HEADER]
    for module in sorted({m.module for m in metrics}):
        lines.append(f"## `monitoring/{module}.py`\n")
        lines.append("| name | type | labels | meaning |")
        lines.append("| --- | --- | --- | --- |")
        for m in (m for m in metrics if m.module == module):
            labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
            meaning = _escape(m.help)
            if m.buckets:
                meaning += " Buckets: " + ", ".join(f"{b:g}" for b in m.buckets if b != float("inf")) + "."
                if m.buckets[0] < 0:
                    meaning += " No `_sum` sample: prometheus_client drops it when a bucket is negative."
            lines.append(f"| `{m.name}` | {m.type} | {labels} | {meaning} |")
        lines.append("")
    if recording_rules:
        lines.append("## Recording rules (`monitoring/prometheus/rules/recording.yml`)\n")
        lines.append("| name | expression |")
        lines.append("| --- | --- |")
        for name, expr in recording_rules:
            lines.append(f"| `{name}` | `{_escape(' '.join(expr.split()))}` |")
        lines.append("")
    return "\n".join(lines)


def recording_rules(path=None) -> list[tuple[str, str]]:
    """(record, expr) of every recording rule in monitoring/prometheus/rules/recording.yml."""
    from pathlib import Path

    import yaml

    p = Path(path) if path else Path(__file__).parent / "prometheus" / "rules" / "recording.yml"
    doc = yaml.safe_load(p.read_text()) or {}
    return [(r["record"], r["expr"]) for g in doc.get("groups", []) for r in g.get("rules", []) if "record" in r]


def catalogue_text() -> str:
    """The docs/metrics.md the code implies."""
    return render_catalogue(collect_metrics(), recording_rules())
