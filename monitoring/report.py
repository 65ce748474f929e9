"""`rlef report RUN_DIR`: PNG plots and a markdown summary of a run.

Scope: five figures (reward, solve rate per turn, throughput, staleness, learner losses) and
``summary.md`` (with a few sampled episodes: one fixed by feedback, one that ignored it, one without code), written to ``RUN_DIR/report/``. Each plotted series is read from Prometheus when one is
reachable (``--prometheus URL``; the recording rules of monitoring/prometheus/rules/recording.yml) and has data,
else from the run's own metrics log (``RUN_DIR/metrics/*.jsonl``, see :mod:`rlef.monitoring.metrics_log`):
canonical scalar keys (:data:`~rlef.monitoring.metrics_log.REPORT_KEYS`) and, from registry snapshots, rates
and ratios derived from the ``rlef_*`` counters with the same definitions as the recording rules. The summary
says where every series came from. A series with no data anywhere is listed as missing, never invented.

This module renders and writes; what is plotted and where its points come from is
:mod:`rlef.monitoring.report_figures` (metrics-log derivations: :mod:`rlef.monitoring.report_log`), the
sampled-episodes section :mod:`rlef.monitoring.report_episodes`, the evaluation sections
:mod:`rlef.monitoring.report_eval` and :mod:`rlef.monitoring.report_evaluator`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from rlef.monitoring.metrics_log import LogReadStats, read_run_metrics
from rlef.monitoring.prometheus_api import PrometheusAPI
from rlef.monitoring.report_episodes import sampled_episodes_section
from rlef.monitoring.report_figures import FIGURES, Figure, Source
from rlef.monitoring.report_log import LogData

log = logging.getLogger(__name__)


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
