"""What ``rlef report`` plots: the figures, their axes and series, and where each series' points come from.

Each :class:`Series` names a PromQL query (Prometheus first, when reachable and it has data) and a
metrics-log derivation (:class:`~rlef.monitoring.report_log.LogData`); :class:`Source` fetches the points
and records which source served every series (the summary's "Sources" table).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rlef.monitoring.prometheus_api import PrometheusAPI, PrometheusError
from rlef.monitoring.report_log import LogData, Points

log = logging.getLogger(__name__)


@dataclass
class Series:
    """One line (or a family split by a label): Prometheus query first, then the metrics-log fallback."""

    label: str
    promql: str | None
    from_log: Callable[[LogData], dict[str, Points]]
    legend_label: str | None = None  # PromQL label whose value names each series ({label} in ``label``)


@dataclass
class Axes:
    title: str
    ylabel: str
    series: list[Series]
    ylim: tuple[float, float] | None = None


@dataclass
class Figure:
    name: str
    title: str
    axes: list[Axes]


def _one(p: Points | None) -> dict[str, Points]:
    return {"": p} if p is not None else {}


def _keys(*keys: str, role: str | None = None) -> Callable[[LogData], dict[str, Points]]:
    def get(data: LogData) -> dict[str, Points]:
        for key in keys:
            found = data.scalar(key, role)
            if found:
                return found
        return {}
    return get


def _turn_solve_rates(data: LogData) -> dict[str, Points]:
    name = "rlef_actor_turn_outcomes_total"
    out = {}
    for turn in data.label_values(name, "turn"):
        pts = data.ratio(name, lambda l, t=turn: l.get("turn") == t and l.get("status") == "pass", lambda l, t=turn: l.get("turn") == t)
        if pts is not None:
            out[turn] = pts
    if not out:
        for key in sorted({k for recs in data.by_process.values() for r in recs for k in r.values if k.startswith("solve_rate/turn_")}):
            for _, pts in data.scalar(key).items():
                out[key.removeprefix("solve_rate/turn_")] = pts
    return out


def _first(*getters: Callable[[LogData], dict[str, Points]]) -> Callable[[LogData], dict[str, Points]]:
    def get(data: LogData) -> dict[str, Points]:
        for g in getters:
            found = g(data)
            if found:
                return found
        return {}
    return get


FIGURES = [
    Figure("reward", "Reward", [Axes("Mean reward", "reward", [
        Series("actor episodes (5 min)", "rlef:episode_reward:mean5m", _keys("reward/episode_mean")),
        Series("learner batch", "max(rlef_learner_batch_reward)", _keys("reward/mean", "rlef_learner_batch_reward")),
    ])]),
    Figure("solve_rate", "Solve rate", [Axes("Solve rate by turn (public tests) and final", "fraction solved", ylim=(0.0, 1.0), series=[
        Series("turn {}", "rlef:turn_solve_rate:ratio_rate5m", _turn_solve_rates, legend_label="turn"),
        Series("final (public + private)", "rlef:final_solve_rate:ratio_rate5m",
               _first(lambda d: _one(d.ratio("rlef_actor_final_outcomes_total", lambda l: l.get("status") == "pass", lambda l: True)),
                      _keys("solve_rate/final"))),
        Series("learner batch", "max(rlef_learner_batch_solve_rate)", _keys("solve_rate/final", "rlef_learner_batch_solve_rate", role="learner")),
    ])]),
    Figure("throughput", "Throughput", [
        Axes("Rollouts per second", "rollouts/s", [
            Series("sent by actors", "rlef:actor_rollouts:rate1m",
                   _first(lambda d: _one(d.rate("rlef_actor_rollouts_sent_total")), _keys("throughput/rollouts_per_s", role="actor"))),
            Series("trained by learner", "rlef:learner_rollouts:rate1m",
                   _first(lambda d: _one(d.rate("rlef_learner_rollouts_consumed_total")), _keys("throughput/rollouts_per_s", role="learner"))),
        ]),
        Axes("Tokens per second", "tokens/s", [
            Series("generated", "rlef:actor_generated_tokens:rate1m",
                   _first(lambda d: _one(d.rate("rlef_actor_generated_tokens_total")), _keys("throughput/tokens_per_s", role="actor"))),
            Series("trained", "rlef:learner_tokens:rate1m", _keys("throughput/tokens_per_s", "rlef_learner_tokens_per_second", role="learner")),
        ]),
        Axes("Executor tests per second", "tests/s", [
            Series("all statuses", "sum(rlef:executor_tests:rate1m)", lambda d: _one(d.rate("rlef_executor_tests_total"))),
        ]),
    ]),
    Figure("staleness", "Staleness", [Axes("Policy lag", "versions", [
        Series("mean lag of trained rollouts", "rlef:learner_rollout_lag:mean5m", _keys("staleness/mean")),
        Series("max actor lag", "rlef:actor_policy_version_lag:max", _keys("rlef_actor_policy_version_lag")),
        Series("share dropped as stale", "rlef:learner_stale_drops:ratio_rate5m",
               lambda d: _one(d.ratio("rlef_learner_rollouts_rejected_total", lambda l: l.get("reason") == "stale", lambda l: True,
                                      den_name="rlef_learner_rollouts_received_total", absent_is_zero=True))),
    ])]),
    Figure("losses", "Learner", [
        Axes("Policy loss", "loss", [Series("policy", "max(rlef_learner_policy_loss)", _keys("loss/policy", "rlef_learner_policy_loss"))]),
        Axes("Value loss", "loss", [Series("value", "max(rlef_learner_value_loss)", _keys("loss/value", "rlef_learner_value_loss"))]),
        Axes("KL to reference", "KL", [Series("KL", "max(rlef_learner_kl)", _keys("kl", "rlef_learner_kl"))]),
        Axes("Clip fraction", "fraction", [Series("clip", "max(rlef_learner_clip_fraction)", _keys("clip_fraction", "rlef_learner_clip_fraction"))]),
        Axes("Explained variance", "EV", [Series("EV", "max(rlef_learner_explained_variance)", _keys("explained_variance", "rlef_learner_explained_variance"))]),
        Axes("Gradient norm", "norm", [Series("policy", 'max(rlef_learner_grad_norm{model="policy"})', _keys("grad_norm", 'rlef_learner_grad_norm{model="policy"}'))]),
    ]),
]


@dataclass
class Source:
    api: PrometheusAPI | None
    data: LogData
    start: float
    end: float
    used: dict[str, str] = field(default_factory=dict)  # series label -> "prometheus" | "log" | "missing"

    def fetch(self, s: Series, where: str) -> dict[str, Points]:
        """Points of ``s`` (keyed by legend label value); records the source used under ``where: label``."""
        name = f"{where}: {s.label.replace('{}', '*')}"
        if self.api is not None and s.promql:
            step = max((self.end - self.start) / 300, 1.0)
            try:
                result = self.api.query_range(s.promql, self.start, self.end, step)
            except PrometheusError as exc:
                log.warning("report: %s", exc)
                result = []
            out = {}
            for series in result:
                if series["values"]:
                    t, v = zip(*((float(a), float(b)) for a, b in series["values"]))
                    out[series["metric"].get(s.legend_label, "") if s.legend_label else ""] = (np.array(t), np.array(v))
            if out:
                self.used[name] = "prometheus"
                return out
        found = s.from_log(self.data) if self.data.by_process else {}
        self.used[name] = "metrics log" if found else "missing"
        return found
