"""Prometheus metrics of the in-training evaluator (``rlef evaluator``: one per run, so no evaluator label).

The evaluator runs the actor's episode runner, so it also counts ``rlef_actor_*`` series in-process; it
serves only :data:`EXPOSED` (these and the generic identity/heartbeat series, see :func:`evaluator_registry`)
so that training dashboards summing ``rlef_actor_*`` over every target never count evaluation episodes.

Curve (PromQL): ``rlef_evaluator_solve_rate{estimate="1@3"}`` against ``rlef_evaluator_evaluated_version``;
the selected checkpoint: ``rlef_evaluator_best_version`` and ``rlef_evaluator_best_solve_rate``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SOLVE_RATE = Gauge(
    "rlef_evaluator_solve_rate",
    "Estimate of the last finished evaluation on the selection split (mean over problems), by estimate "
    "(1@3, 1@3 single-turn, pass@1, 10@100 when the rollouts suffice).",
    ["estimate"],
)
SOLVE_RATE_CI_LOW = Gauge("rlef_evaluator_solve_rate_ci_low", "Lower end of the 95% bootstrap CI of rlef_evaluator_solve_rate.", ["estimate"])
SOLVE_RATE_CI_HIGH = Gauge("rlef_evaluator_solve_rate_ci_high", "Upper end of the 95% bootstrap CI of rlef_evaluator_solve_rate.", ["estimate"])
EVALUATED_VERSION = Gauge("rlef_evaluator_evaluated_version", "Policy version of the last finished evaluation (-1 before the first).")
BEST_VERSION = Gauge("rlef_evaluator_best_version", "Policy version selected on the evaluation split so far (-1 before the first).")
BEST_SOLVE_RATE = Gauge("rlef_evaluator_best_solve_rate", "Selection estimate of the best version so far.")
EVALUATIONS = Counter("rlef_evaluator_evaluations_total", "Evaluations finished (one per evaluated version).")
VERSIONS_SKIPPED = Counter(
    "rlef_evaluator_versions_skipped_total", "Versions received and replaced by a newer one before they were due for evaluation.",
)
EVALUATION_SECONDS = Histogram(
    "rlef_evaluator_evaluation_seconds", "Wall time of one evaluation of the split.",
    buckets=(5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)

EXPOSED = (SOLVE_RATE, SOLVE_RATE_CI_LOW, SOLVE_RATE_CI_HIGH, EVALUATED_VERSION, BEST_VERSION, BEST_SOLVE_RATE,
           EVALUATIONS, VERSIONS_SKIPPED, EVALUATION_SECONDS)


def evaluator_registry() -> CollectorRegistry:
    """A registry holding the evaluator's series and the generic identity/heartbeat/version series only."""
    from rlef.monitoring.metrics import HEARTBEAT, POLICY_VERSION, ROLE_INFO

    registry = CollectorRegistry(auto_describe=True)
    for collector in (ROLE_INFO, HEARTBEAT, POLICY_VERSION, *EXPOSED):
        registry.register(collector)
    return registry
