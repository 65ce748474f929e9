"""`rlef report RUN_DIR`: PNG plots and a markdown summary of a run.

Scope: five figures (reward, solve rate per turn, throughput, staleness, learner losses) and
``summary.md`` (with a few sampled episodes: one fixed by feedback, one that ignored it, one without code), written to ``RUN_DIR/report/``. Each plotted series is read from Prometheus when one is
reachable (``--prometheus URL``; the recording rules of monitoring/prometheus/rules/recording.yml) and has data,
else from the run's own metrics log (``RUN_DIR/metrics/*.jsonl``, see :mod:`rlef.monitoring.metrics_log`):
canonical scalar keys (:data:`~rlef.monitoring.metrics_log.REPORT_KEYS`) and, from registry snapshots, rates
and ratios derived from the ``rlef_*`` counters with the same definitions as the recording rules. The summary
says where every series came from. A series with no data anywhere is listed as missing, never invented.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlef.monitoring.episode_samples import EpisodeSample, read_samples, samples_dir
from rlef.monitoring.metrics_log import LogReadStats, Record, read_run_metrics
from rlef.monitoring.prometheus_api import PrometheusAPI, PrometheusError

log = logging.getLogger(__name__)

Points = tuple[np.ndarray, np.ndarray]  # (unix times, values)
_KEY = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_sample_key(key: str) -> tuple[str, dict[str, str]] | None:
    """``name{a="x"}`` -> ("name", {"a": "x"}); None for keys that are not Prometheus sample names."""
    m = _KEY.match(key)
    if not m:
        return None
    return m.group(1), dict(_LABEL.findall(m.group(2) or ""))


# ---------------------------------------------------------------- metrics-log derivations


class LogData:
    """Records of one run, indexed for the derivations below (per process, in time order)."""

    def __init__(self, records: Sequence[Record]):
        self.by_process: dict[tuple[str, str], list[Record]] = defaultdict(list)
        for r in records:
            self.by_process[(r.role, r.id)].append(r)
        times = [r.time for r in records]
        self.start = min(times) if times else math.nan
        self.end = max(times) if times else math.nan

    def scalar(self, key: str, role: str | None = None) -> dict[str, Points]:
        """Values of a scalar key, one series per process (of ``role``) that logged it (label: role-id when several)."""
        out: dict[str, Points] = {}
        for (proc_role, pid), recs in self.by_process.items():
            if role is not None and proc_role != role:
                continue
            pts = [(r.time, r.values[key]) for r in recs if r.values.get(key) is not None]
            if pts:
                t, v = zip(*pts)
                out[f"{proc_role}-{pid}"] = (np.array(t), np.array(v, dtype=float))
        if len(out) == 1:
            return {"": next(iter(out.values()))}
        return out

    def _cumulative(self, edges: np.ndarray, name: str, match: Callable[[dict[str, str]], bool]) -> np.ndarray | None:
        """Sum over processes of the ``name`` samples matching ``match``, as last seen at each edge (0 before)."""
        total = np.zeros(len(edges))
        seen = False
        for recs in self.by_process.values():
            t, v = [], []
            for r in recs:
                s = 0.0
                hit = False
                for key, value in r.values.items():
                    parsed = parse_sample_key(key)
                    if parsed and parsed[0] == name and value is not None and match(parsed[1]):
                        s += value
                        hit = True
                if hit:
                    t.append(r.time)
                    v.append(s)
            if not t:
                continue
            seen = True
            idx = np.searchsorted(np.array(t), edges, side="right") - 1
            vals = np.array(v)
            total += np.where(idx >= 0, vals[np.clip(idx, 0, None)], 0.0)
        return total if seen else None

    def edges(self, bins: int = 120, min_width_s: float = 2.0) -> np.ndarray:
        span = max(self.end - self.start, min_width_s)
        n = max(2, min(bins, int(span / min_width_s) + 1))
        return np.linspace(self.start, self.end, n)

    def rate(self, name: str, match: Callable[[dict[str, str]], bool] = lambda _: True, window: int = 3) -> Points | None:
        """Per-second rate of a counter summed over processes, over a sliding ``window`` of bins."""
        edges = self.edges()
        cum = self._cumulative(edges, name, match)
        if cum is None or len(edges) <= window:
            return None
        dt = edges[window:] - edges[:-window]
        return edges[window:], (cum[window:] - cum[:-window]) / dt

    def ratio(self, name: str, num: Callable[[dict[str, str]], bool], den: Callable[[dict[str, str]], bool], window: int = 6) -> Points | None:
        """increase(num) / increase(den) over a sliding window (NaN where den did not grow)."""
        edges = self.edges()
        a, b = self._cumulative(edges, name, num), self._cumulative(edges, name, den)
        if a is None or b is None or len(edges) <= window:
            return None
        da, db = a[window:] - a[:-window], b[window:] - b[:-window]
        with np.errstate(invalid="ignore", divide="ignore"):
            return edges[window:], np.where(db > 0, da / np.where(db > 0, db, 1), np.nan)

    def label_values(self, name: str, label: str) -> list[str]:
        values = set()
        for recs in self.by_process.values():
            for r in recs:
                for key in r.values:
                    parsed = parse_sample_key(key)
                    if parsed and parsed[0] == name and label in parsed[1]:
                        values.add(parsed[1][label])
        return sorted(values, key=lambda s: (len(s), s))


# ---------------------------------------------------------------- figure specs


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
               lambda d: _one(d.ratio("rlef_learner_rollouts_rejected_total", lambda l: l.get("reason") == "stale", lambda l: True))),
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


# ---------------------------------------------------------------- sources


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


# ---------------------------------------------------------------- rendering


def _render(fig_spec: Figure, source: Source, out_dir: Path) -> tuple[Path, dict[str, float]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(fig_spec.axes)
    cols = 1 if n == 1 else (2 if n <= 4 else 3)
    rows = math.ceil(n / cols)
    fig, axs = plt.subplots(rows, cols, figsize=(6.4 * cols, 3.8 * rows), squeeze=False)
    last: dict[str, float] = {}
    t0 = source.start
    for ax, spec in zip(axs.flat, fig_spec.axes):
        drew = False
        for s in spec.series:
            for key, (t, v) in sorted(source.fetch(s, spec.title).items()):
                label = s.label.format(key) if "{}" in s.label else (f"{s.label} ({key})" if key else s.label)
                ax.plot((t - t0) / 60.0, v, label=label, linewidth=1.6, marker="." if len(t) < 30 else None)
                finite = v[np.isfinite(v)]
                if len(finite):
                    last[f"{spec.title}: {label}"] = float(finite[-1])
                drew = True
        if spec.ylim:
            ax.set_ylim(*spec.ylim)
        ax.set_title(spec.title)
        ax.set_xlabel("minutes since start")
        ax.set_ylabel(spec.ylabel)
        ax.grid(True, alpha=0.3)
        if drew:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="gray", fontsize=14)
    for ax in list(axs.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(fig_spec.title)
    fig.tight_layout()
    path = out_dir / f"{fig_spec.name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, last


# ---------------------------------------------------------------- sampled episodes

#: The kinds of episode the report shows one of each (title, predicate).
EPISODE_KINDS: list[tuple[str, Callable[[EpisodeSample], bool]]] = [
    ("Fixed by feedback (failed at turn 1, solved later)", lambda s: s.fixed_by_feedback),
    ("Ignored the feedback (wrote the same program again)", lambda s: s.ignored_feedback),
    ("Never produced code", lambda s: s.never_code),
]


def _fenced(text: str, lang: str = "", max_lines: int = 30) -> list[str]:
    lines = text.rstrip("\n").splitlines() or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"[... {len(lines) - max_lines} more lines]"]
    fence = "````" if any(line.startswith("```") for line in lines) else "```"
    return [fence + lang, *lines, fence]


def episode_markdown(s: EpisodeSample) -> list[str]:
    """One episode, turn by turn: status, the program, the feedback it got (as the model saw it)."""
    lo, hi = s.versions
    final = s.get("final") or {}
    out = [f"`{s.get('rollout_id')}`: problem `{s.get('problem_id')}`, policy version {lo if lo == hi else f'{lo}-{hi}'}, "
           f"final **{s.final_status}** ({final.get('tests_passed', 0)}/{final.get('tests_total', 0)} tests), "
           f"rewards {s.get('rewards')}", ""]
    for turn in s.turns:
        out.append(f"Turn {turn.get('turn')}: public tests **{turn.get('status')}** "
                   f"({turn.get('public_passed', 0)}/{turn.get('public_total', 0)}), {turn.get('response_tokens', '?')} tokens")
        out.append("")
        out += _fenced(turn["code"], "python") if turn.get("code") is not None else _fenced(str(turn.get("response_text") or ""), "text", 12)
        if turn.get("feedback"):
            out += ["", "Feedback shown:", ""] + _fenced(str(turn["feedback"]), "text", 20)
        out.append("")
    return out


def sampled_episodes_section(run_dir: Path) -> list[str]:
    """Markdown lines: how many episodes were sampled, and one of each :data:`EPISODE_KINDS` (the newest)."""
    samples = read_samples(run_dir) if samples_dir(run_dir).is_dir() else []
    lines = ["## Sampled episodes", ""]
    if not samples:
        return lines + ["No sampled episodes in this run directory (`RUN_DIR/samples/`).", ""]
    counts = ", ".join(f"{title.split(' (')[0].lower()}: {sum(pred(x) for x in samples)}" for title, pred in EPISODE_KINDS)
    lines += [f"{len(samples)} episode(s) sampled by {len({s.get('actor_id') for s in samples})} actor(s); "
              f"solved: {sum(s.solved for s in samples)}; {counts}. Read them all with `rlef rollouts {run_dir}`.", ""]
    for title, pred in EPISODE_KINDS:
        found = next((x for x in reversed(samples) if pred(x)), None)
        lines += [f"### {title}", ""]
        lines += episode_markdown(found) if found is not None else ["None in the sample.", ""]
    return lines


def _summary(run_dir: Path, source: Source, stats: LogReadStats, images: list[Path], last: dict[str, float], prometheus: str | None) -> str:
    span_min = (source.end - source.start) / 60.0
    lines = [
        f"# Run report: {run_dir.name}",
        "",
        f"- run directory: `{run_dir}`",
        f"- time range: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(source.start))} UTC, {span_min:.1f} min",
        f"- Prometheus: {prometheus + (' (used)' if source.api else ' (unreachable)') if prometheus else 'not given'}",
        f"- metrics log: {stats.files} file(s), {stats.records} record(s), {stats.bad_lines} malformed line(s) skipped",
        "",
        "## Latest values",
        "",
        "| series | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v:.4g} |" for k, v in last.items()] or ["| (none) | |"]
    lines += ["", "## Sources", "", "| series | source |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in source.used.items()]
    lines += ["", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in images]
    lines += ["", *sampled_episodes_section(run_dir)]
    return "\n".join(lines).rstrip("\n") + "\n"


def _with_evaluation(text: str, run_dir: Path, out: Path) -> str:
    """The learning section (rlef.monitoring.report_eval) goes first: it is what a reader of a run wants."""
    from rlef.monitoring.report_eval import evaluation_section

    from rlef.monitoring.report_evaluator import evaluator_section

    curve = evaluator_section(run_dir, out)
    section = evaluation_section(run_dir, out) + ([curve.rstrip("\n"), ""] if curve else [])
    if not section:
        return text
    head, sep, rest = text.partition("\n## ")
    return head.rstrip("\n") + "\n\n" + "\n".join(section).rstrip("\n") + "\n" + (sep + rest if sep else "")


def make_report(run_dir: Path, prometheus: str | None = None, out_dir: Path | None = None, window_s: float | None = None) -> Path:
    """Render the figures and ``summary.md`` into ``out_dir`` (default ``RUN_DIR/report``); returns the summary path."""
    from rich.progress import Progress

    out = out_dir or run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    stats = LogReadStats()
    data = LogData(read_run_metrics(run_dir, stats) if (run_dir / "metrics").is_dir() else [])
    api = PrometheusAPI(prometheus) if prometheus else None
    if api is not None and not api.reachable():
        log.warning("report: Prometheus at %s is not reachable; using the metrics log only", prometheus)
        api = None
    now = time.time()
    if window_s is not None:
        start, end = now - window_s, now
    elif not math.isnan(data.start):
        start, end = data.start, max(data.end, data.start + 1.0)
    else:
        start, end = now - 3600.0, now
    source = Source(api, data, start, end)
    images: list[Path] = []
    last: dict[str, float] = {}
    with Progress(transient=True) as progress:
        task = progress.add_task("rendering plots", total=len(FIGURES))
        for spec in FIGURES:
            path, values = _render(spec, source, out)
            images.append(path)
            last.update(values)
            progress.advance(task)
    summary = out / "summary.md"
    summary.write_text(_with_evaluation(_summary(run_dir, source, stats, images, last, prometheus), run_dir, out))
    return summary
