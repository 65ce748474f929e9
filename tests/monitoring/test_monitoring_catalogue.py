"""docs/metrics.md matches the metric modules, and every metric follows the naming rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlef.monitoring.catalogue import MetricDef, catalogue_text, collect_metrics, metric_modules, naming_problems

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_docs_match_code():
    expected = catalogue_text()
    assert DOCS.is_file(), "docs/metrics.md missing: rlef monitoring catalogue --write docs/metrics.md"
    assert DOCS.read_text() == expected, "docs/metrics.md is out of date: rlef monitoring catalogue --write docs/metrics.md"


def test_every_metric_module_is_imported_and_defines_metrics():
    modules = {m.rsplit(".", 1)[1] for m in metric_modules()}
    assert {"metrics", "metrics_actor", "metrics_executor"} <= modules
    defined = {m.module for m in collect_metrics()}
    assert modules == defined, f"modules defining no rlef_* metric: {sorted(modules - defined)}"


@pytest.mark.parametrize("metric", collect_metrics(), ids=lambda m: m.name)
def test_naming_rules(metric):
    assert naming_problems(metric) == []


@pytest.mark.parametrize(
    "bad,fragment",
    [
        (MetricDef("rlef_actor_rollouts", "counter", (), "h", "metrics_actor"), None),  # exposed names get _total from the type
        (MetricDef("rlef_actor_latency_ms", "gauge", (), "h", "metrics_actor"), "non-base unit"),
        (MetricDef("rlef_actor_size_total", "gauge", (), "h", "metrics_actor"), "only counters"),
        (MetricDef("rlef_learner_loss_total", "counter", (), "h", "metrics_actor"), "must start with rlef_actor_"),
        (MetricDef("rlef_actor_delay", "histogram", (), "h", "metrics_actor"), "must end in a unit"),
        (MetricDef("rlef_actor_jobs_total", "counter", ("job_id",), "h", "metrics_actor"), "unbounded"),
        (MetricDef("rlef_actor_jobs_total", "counter", (), " ", "metrics_actor"), "empty help"),
        (MetricDef("rlef_Actor_x", "gauge", (), "h", "metrics_actor"), "snake_case"),
        (MetricDef("rlef_learner_weights_sent_bytes_total", "counter", (), "h", "metrics_weights"), None),
        (MetricDef("rlef_weights_sent_bytes_total", "counter", (), "h", "metrics_weights"), None),
        (MetricDef("rlef_learner_sent_bytes_total", "counter", (), "h", "metrics_weights"), "rlef_<role>_weights_"),
    ],
)
def test_naming_rules_catch_violations(bad, fragment):
    problems = naming_problems(bad)
    if fragment is None:
        assert problems == []
    else:
        assert any(fragment in p for p in problems), problems
