"""One table over the seeds of the learning proof (scripts/learning-proof.sh): ``python -m rlef.monitoring.seeds_summary OUT SEEDS...``.

Reads ``OUT/seed-S/eval/comparison.json`` (rlef evaluate --compare, run by rlef launch's final evaluation)
and ``OUT/seed-S/timing.json``, prints a markdown table and writes it to ``OUT/summary.md``. Every number is
of the FINAL checkpoint of each seed's run on that seed's held-out test split, in percentage points with the
95% paired bootstrap CI over problems. ``OUT/seeds-training.png`` puts the seeds' training batches side by
side (solve rate, fix rate of turn-1 failures), from each run's learner metrics log: where each took off.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rlef.monitoring.metrics_log import read_metrics_log


def _pts(d: dict | None) -> str:
    if not d:
        return "n/a"
    return f"{100 * d['mean']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"


def _pct(d: dict | None) -> str:
    return "n/a" if not d else f"{100 * d['mean']:.1f} [{100 * d['ci_low']:.1f}, {100 * d['ci_high']:.1f}]"


def _fix(row: dict) -> str:
    fr = row.get("fix_rate")
    return "n/a" if not fr or not fr["failed_first"] else f"{100 * fr['rate']:.1f}"


def seed_row(run_dir: Path) -> list[str] | None:
    try:
        result = json.loads((run_dir / "eval" / "comparison.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    rows, diffs = result["rows"], result["differences"]
    timing = {}
    if (run_dir / "timing.json").exists():
        timing = json.loads((run_dir / "timing.json").read_text())
    minutes = (timing.get("warm_start_s", 0) + timing.get("train_and_eval_s", 0)) / 60
    return [
        _pct(rows["warm-start/real"]["1@3"]), _pct(rows["rlef/real"]["1@3"]),
        _pts(diffs.get("rlef - warm-start (real feedback)")),
        _pts(diffs.get("rlef: real - random feedback")), _pts(diffs.get("warm-start: real - random feedback")),
        f"{_fix(rows['warm-start/real'])} -> {_fix(rows['rlef/real'])}",
        _pct(rows["warm-start/real"]["1@3 first turn"]) + " / " + _pct(rows["rlef/real"]["1@3 first turn"]),
        f"{minutes:.1f}" if timing else "n/a",
    ]


def summary(out: Path, seeds: list[str]) -> str:
    lines = [
        "| seed | warm start 1@3 | RLEF 1@3 | RLEF - warm start | RLEF: real - random feedback | warm start: real - random feedback "
        "| fix rate of turn-1 failures (warm -> RLEF) | first turn only (warm / RLEF) | minutes (warm start + RL + eval) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seed in seeds:
        row = seed_row(out / f"seed-{seed}")
        lines.append(f"| {seed} | " + (" | ".join(row) if row else "no evaluation (see the seed's launch.log)") + " |")
    return "\n".join(lines) + "\n"


def batch_series(run_dir: Path, *keys: str) -> list[list[float]]:
    """Per key, one value per learner batch in order, from rank 0's metrics log read once (empty lists if
    there is none)."""
    path = run_dir / "metrics" / "learner-0.jsonl"
    records = list(read_metrics_log(path)) if path.exists() else []
    return [[r.values[key] for r in records if r.values.get(key) is not None] for key in keys]


def training_figure(out: Path, seeds: list[str]) -> Path | None:
    """``OUT/seeds-training.png``: per seed, the batch solve rate and the fix rate of turn-1 failures against
    the batch; None when no seed has a metrics log."""
    series = {seed: batch_series(out / f"seed-{seed}", "solve_rate/final", "fix_rate/turn_1_failures") for seed in seeds}
    if not any(solve for solve, _ in series.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for seed, (solve, fix) in series.items():
        axes[0].plot(range(1, len(solve) + 1), solve, label=f"seed {seed}")
        axes[1].plot(range(1, len(fix) + 1), fix, label=f"seed {seed}")
    for ax, title in zip(axes, ("solve rate of the batch (final program)", "turn-1 failures fixed by turns 2-3")):
        ax.set_title(title)
        ax.set_xlabel("learner batch (64 rollouts, temperature 1)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "seeds-training.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    out, seeds = Path(argv[0]), argv[1:]
    text = summary(out, seeds)
    (out / "summary.md").write_text(text)
    print(text)
    figure = training_figure(out, seeds)
    if figure is not None:
        print(f"training batches of every seed: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
