"""Grafana dashboards (overview, executor, learner), built with grafana-foundation-sdk from panel specs.

Scope: :data:`DASHBOARDS` is the single source of every panel and PromQL query; :func:`build` turns a spec into
dashboard JSON with the SDK; ``rlef monitoring dashboards --write`` (or ``python -m rlef.monitoring.dashboards``)
writes monitoring/grafana/dashboards/*.json, which Grafana loads through monitoring/grafana/provisioning/.
Invariants (tests/monitoring/test_monitoring_dashboards.py): the committed JSON equals what :func:`build`
makes; every query parses in a real Prometheus, and every panel returns data from a real run for the roles
it declares (``Panel.roles``). Queries use the recording rules of monitoring/prometheus/rules/recording.yml
where one exists, so dashboards, alerts and ``rlef report`` agree on definitions.

The SDK is a dev dependency: only :func:`build` imports it; the specs themselves are plain data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

GRAFANA_DIR = Path(__file__).parent / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
DATASOURCE_UID = "rlef-prometheus"  # provisioning/datasources/rlef.yml declares it


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    #: False for a breakdown that is legitimately empty in a healthy run (e.g. errors by cause); the panel's
    #: other queries must still return data.
    always: bool = True


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"  # or "stat"
    #: Jobs that must run for this panel to have data (the live test skips the data check otherwise).
    roles: frozenset[str] = field(default_factory=frozenset)
    width: int = 12
    min: float | None = None
    max: float | None = None


def _q(expr: str, legend: str = "", always: bool = True) -> Query:
    return Query(" ".join(expr.split()), legend, always)


ACTOR = frozenset({"actor"})
EXECUTOR = frozenset({"executor", "executor-broker"})
LEARNER = frozenset({"learner"})
ACTOR_LEARNER = frozenset({"actor", "learner"})
EVALUATOR = frozenset({"evaluator"})

OVERVIEW = (
    Panel("Rollouts per second", (
        _q("rlef:actor_rollouts:rate1m", "sent by actors"),
        _q("rlef:learner_rollouts:rate1m", "accepted by the learner"),
    ), unit="short", roles=ACTOR_LEARNER, description="Rollouts the actors hand to the hub, and those the learner accepts."),
    Panel("Tokens per second", (
        _q("rlef:actor_generated_tokens:rate1m", "generated"),
        _q("rlef:actor_prompt_tokens:rate1m", "prompt"),
        _q("rlef:learner_tokens:rate1m", "trained"),
    ), unit="short", roles=ACTOR_LEARNER),
    Panel("Mean reward", (
        _q("rlef:episode_reward:mean5m", "actor episodes"),
        _q("rlef:learner_batch_reward:avg5m", "learner batches"),
        _q("rlef:turn_reward:mean5m", "turn {{turn}}"),
    ), unit="none", roles=ACTOR_LEARNER,
          description="Mean summed task reward per episode (solved 1, unsolved -1, no-code -0.2 per turn)."),
    Panel("Solve rate by turn (public tests)", (
        _q("rlef:turn_solve_rate:ratio_rate5m", "turn {{turn}}"),
        _q("rlef:final_solve_rate:ratio_rate5m", "final (public + private)"),
    ), unit="percentunit", roles=ACTOR, min=0, max=1),
    Panel("Turn outcomes", (_q("rlef:turn_outcome:ratio_rate5m", "turn {{turn}} {{status}}"),), unit="percentunit", roles=ACTOR, min=0, max=1),
    Panel("Policy staleness", (
        _q("rlef:actor_policy_version_lag:max", "max actor lag (versions)"),
        _q("rlef:learner_rollout_lag:mean5m", "mean lag of accepted rollouts"),
        _q("rlef:learner_stale_drops:ratio_rate5m", "share dropped as stale"),
    ), unit="short", roles=ACTOR_LEARNER),
    Panel("Policy version", (_q("max by (job) (rlef_policy_version)", "{{job}}"),), unit="short", roles=ACTOR_LEARNER),
    Panel("Weight sync time", (
        _q("rlef:learner_weights_sync_seconds:mean5m", "learner gather + publish"),
        _q("rlef:learner_weights_publish_seconds:mean5m", "learner publish"),
        _q("rlef:actor_weights_receive_seconds:mean5m", "actor receive"),
        _q("rlef:actor_weights_apply_seconds:mean5m", "actor apply"),
    ), unit="s", roles=ACTOR_LEARNER),
    Panel("Processes up", (_q("sum by (job) (up)", "{{job}}"),), unit="short", roles=EXECUTOR),
    Panel("Heartbeat age", (_q("max by (job) (time() - rlef_heartbeat_timestamp_seconds)", "{{job}}"),), unit="s", roles=EXECUTOR),
)

EXECUTOR_PANELS = (
    Panel("Tests per second by status", (_q("rlef:executor_tests:rate1m", "{{status}}"),), unit="short", roles=EXECUTOR),
    Panel("Jobs per second by status", (_q("rlef:executor_jobs:rate1m", "{{status}}"),), unit="short", roles=EXECUTOR),
    Panel("Job latency", (
        _q("rlef:executor_job_duration_seconds:p50_5m", "job p50 (sandbox)"),
        _q("rlef:executor_job_duration_seconds:p95_5m", "job p95 (sandbox)"),
        _q("rlef:executor_broker_job_latency_seconds:p95_5m", "job p95 (broker: queue + run)"),
        _q("histogram_quantile(0.95, sum by (le) (rate(rlef_executor_test_duration_seconds_bucket[5m])))", "test p95"),
    ), unit="s", roles=EXECUTOR),
    Panel("Test status mix", (
        _q("sum by (status) (rate(rlef_executor_tests_total[5m])) / scalar(sum(rate(rlef_executor_tests_total[5m])))", "{{status}}"),
    ), unit="percentunit", roles=EXECUTOR, min=0, max=1),
    Panel("Broker queue", (
        _q("sum(rlef_executor_broker_queue_depth)", "queued"),
        _q("sum(rlef_executor_broker_in_flight)", "in flight"),
        _q("sum(rlef_executor_broker_workers_alive)", "workers alive"),
        _q("sum(rlef_executor_broker_workers_idle)", "workers idle"),
    ), unit="short", roles=EXECUTOR),
    Panel("Sandbox utilisation", (_q("rlef:executor_sandboxes_busy:ratio", "busy sandboxes"),), unit="percentunit", roles=EXECUTOR, min=0, max=1),
    Panel("Queue wait", (
        _q("histogram_quantile(0.95, sum by (le) (rate(rlef_executor_broker_queue_wait_seconds_bucket[5m])))", "p95"),
        _q("histogram_quantile(0.5, sum by (le) (rate(rlef_executor_broker_queue_wait_seconds_bucket[5m])))", "p50"),
    ), unit="s", roles=EXECUTOR),
    Panel("Sandbox errors and retries", (
        _q("rlef:executor_sandbox_errors:ratio_rate5m", "sandbox errors / jobs"),
        _q("sum by (cause) (rate(rlef_executor_sandbox_errors_total[5m]))", "errors/s {{cause}}", always=False),
        _q("sum(rate(rlef_executor_broker_retries_total[5m]))", "retries/s"),
        _q("sum(rate(rlef_executor_broker_workers_lost_total[5m]))", "workers lost/s"),
    ), unit="short", roles=EXECUTOR),
    Panel("Client view (actors)", (
        _q("histogram_quantile(0.95, sum by (le) (rate(rlef_execution_client_latency_seconds_bucket[5m])))", "submit-to-result p95"),
        _q("sum(rlef_execution_client_pending_jobs)", "pending jobs"),
    ), unit="s", roles=ACTOR),
)

LEARNER_PANELS = (
    # Ranks all-reduce these statistics, so every rank exports the same value: max() picks one.
    Panel("Losses", (
        _q("max(rlef_learner_policy_loss)", "policy (clipped PPO, token mean)"),
        _q("max(rlef_learner_value_loss)", "value (clipped, turn mean)"),
    ), unit="none", roles=LEARNER),
    Panel("KL", (
        _q("max(rlef_learner_kl)", "KL to reference (per turn)"),
        _q("max(rlef_learner_approx_kl)", "approx KL(old || new), per update"),
    ), unit="none", roles=LEARNER),
    Panel("Clip fraction", (_q("max(rlef_learner_clip_fraction)", "tokens with clipped ratio"),), unit="percentunit", roles=LEARNER, min=0),
    Panel("Explained variance", (_q("max(rlef_learner_explained_variance)", "value model"),), unit="none", roles=LEARNER),
    Panel("Gradient norm (before clipping)", (_q("max by (model) (rlef_learner_grad_norm)", "{{model}}"),), unit="none", roles=LEARNER),
    Panel("Entropy", (_q("max(rlef_learner_entropy)", "policy entropy (nats/token)"),), unit="none", roles=LEARNER),
    Panel("Batch reward and solve rate", (
        _q("max(rlef_learner_batch_reward)", "mean reward"),
        _q("max(rlef_learner_batch_solve_rate)", "solve rate"),
    ), unit="none", roles=LEARNER),
    Panel("Optimizer updates per minute", (_q("60 * rlef:learner_updates:rate5m", "updates/min"),), unit="short", roles=LEARNER),
    Panel("Training tokens per second", (_q("rlef:learner_tokens:rate1m", "tokens/s"),), unit="short", roles=LEARNER),
    Panel("Rollouts received, trained and rejected", (
        _q("rlef:learner_rollouts_received:rate1m", "received/s"),
        _q("rlef:learner_rollouts:rate1m", "trained/s"),
        _q("sum by (reason) (rate(rlef_learner_rollouts_rejected_total[5m]))", "rejected/s {{reason}}", always=False),
    ), unit="short", roles=LEARNER),
    Panel("Staleness of trained rollouts", (
        _q("rlef:learner_rollout_lag:mean5m", "mean lag (versions)"),
        _q("histogram_quantile(0.95, sum by (le) (rate(rlef_learner_rollout_staleness_versions_bucket[5m])))", "p95 lag"),
    ), unit="short", roles=LEARNER),
    Panel("Time per batch", (
        _q("sum(rate(rlef_learner_batch_seconds_sum[5m])) / sum(rate(rlef_learner_batch_seconds_count[5m]))", "train (re-score + U updates)"),
        _q("rlef:learner_weights_sync_seconds:mean5m", "weights sync"),
        _q("max(rate(rlef_learner_wait_rollouts_seconds_total[5m]))", "waiting for rollouts (s/s)"),
    ), unit="s", roles=LEARNER),
    Panel("Hub buffer", (_q("max(rlef_learner_buffer_rollouts)", "rollouts waiting"),), unit="short", roles=LEARNER),
    Panel("Valid solve rate (in-training evaluator)", (
        _q('max(rlef_evaluator_solve_rate{estimate="1@3"})', "1@3 of the last evaluated version"),
        _q('max(rlef_evaluator_solve_rate_ci_low{estimate="1@3"})', "95% CI low"),
        _q('max(rlef_evaluator_solve_rate_ci_high{estimate="1@3"})', "95% CI high"),
        _q("max(rlef_evaluator_best_solve_rate)", "best so far"),
    ), unit="percentunit", min=0, max=1, roles=EVALUATOR,
        description="The evaluator (evaluator.enabled) scores the valid split every evaluator.every_versions versions; "
                    "RUN_DIR/eval/curve.jsonl holds every point, best.json the selected version."),
    Panel("Evaluated and selected version", (
        _q("max(rlef_evaluator_evaluated_version)", "last evaluated"),
        _q("max(rlef_evaluator_best_version)", "selected (best on valid)"),
        _q("max(rlef_policy_version{job=\"learner\"})", "learner", always=False),
    ), unit="short", roles=EVALUATOR),
)

DASHBOARDS: dict[str, tuple[str, tuple[Panel, ...]]] = {
    "rlef-overview": ("RLEF overview", OVERVIEW),
    "rlef-executor": ("RLEF executors", EXECUTOR_PANELS),
    "rlef-learner": ("RLEF learner", LEARNER_PANELS),
}


def _panel_builder(panel: Panel):
    from grafana_foundation_sdk.builders import common, prometheus, stat, timeseries
    from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    builder = (stat.Panel() if panel.kind == "stat" else timeseries.Panel()).title(panel.title).unit(panel.unit).span(panel.width).height(8)
    builder = builder.datasource(DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID))
    if panel.kind == "timeseries":
        legend = common.VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM)
        builder = builder.legend(legend)
    if panel.description:
        builder = builder.description(panel.description)
    if panel.min is not None:
        builder = builder.min(panel.min)
    if panel.max is not None:
        builder = builder.max(panel.max)
    for i, query in enumerate(panel.queries):
        target = prometheus.Dataquery().expr(query.expr).ref_id(chr(ord("A") + i)).range()
        if query.legend:
            target = target.legend_format(query.legend)
        builder = builder.with_target(target)
    return builder


def build(uid: str) -> dict:
    """Dashboard JSON (as a dict) for ``uid`` in :data:`DASHBOARDS`."""
    from grafana_foundation_sdk.builders.dashboard import Dashboard
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    title, panels = DASHBOARDS[uid]
    builder = Dashboard(title).uid(uid).tags(["rlef"]).refresh("10s").time("now-1h", "now").editable()
    for panel in panels:
        builder = builder.with_panel(_panel_builder(panel))
    return json.loads(json.dumps(builder.build(), cls=JSONEncoder))


def dashboard_text(uid: str) -> str:
    return json.dumps(build(uid), indent=2, sort_keys=True) + "\n"


def write_dashboards(out_dir: Path = DASHBOARD_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for uid in DASHBOARDS:
        path = out_dir / f"{uid}.json"
        path.write_text(dashboard_text(uid))
        paths.append(path)
    return paths


def dashboard_queries(doc: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query in a dashboard JSON document."""
    return [(p["title"], t["expr"]) for p in doc.get("panels", []) for t in p.get("targets", [])]


if __name__ == "__main__":
    for written in write_dashboards():
        print(written)
