"""The learning-proof part of ``rlef report``: the final evaluation's before/after table and its plots.

Reads ``RUN_DIR/eval/comparison.json`` (written by ``rlef evaluate --compare``, which ``rlef launch`` runs
after training when ``deploy.final_evaluation.enabled``) and the learner's batch records in the metrics log,
and renders:

- ``eval_comparison.png``: 1@3 multi-turn, 1@3 first turn only, with real and with random feedback, per model,
  with the 95% bootstrap CIs as error bars;
- ``training_fix_rate.png``: per learner batch, the solve rate by turn and the fix rate of turn-1 failures
  (the share of rollouts whose first program failed that ended solved): the training-time view of
  "the model learns to use the feedback".

A run without an ``eval/`` directory gets no section (and no error): evaluation is optional.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlef.monitoring.metrics_log import read_metrics_log


def _load(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "eval" / "comparison.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _bar_plot(result: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    groups = [("1@3", "1@3 multi-turn"), ("1@3 first turn", "1@3 first turn only")]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(rows), 1)
    for i, (key, row) in enumerate(rows.items()):
        xs, ys, lo, hi = [], [], [], []
        for g, (field, _) in enumerate(groups):
            e = row.get(field)
            if e is None:
                continue
            xs.append(g + i * width)
            ys.append(100 * e["mean"])
            lo.append(100 * (e["mean"] - e["ci_low"]))
            hi.append(100 * (e["ci_high"] - e["mean"]))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=key.replace("/", ", ") + " feedback")
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], [label for _, label in groups])
    ax.set_ylabel("solve rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Held-out {result['settings'].get('split')} split: before and after RLEF (95% CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "eval_comparison.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def learner_batches(run_dir: Path) -> list[dict[str, float]]:
    """The learner's per-batch values (records with ``solve_rate/final``) in step order."""
    rows = []
    for f in sorted((run_dir / "metrics").glob("learner-0.jsonl")):
        for rec in read_metrics_log(f):
            if rec.values.get("solve_rate/final") is not None:
                rows.append({"step": rec.step, **{k: v for k, v in rec.values.items() if v is not None}})
    return sorted(rows, key=lambda r: r["step"] or 0)


def _training_plot(batches: list[dict[str, float]], out: Path) -> Path | None:
    if not batches:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in batches]
    for key in sorted({k for r in batches for k in r if k.startswith("solve_rate/turn_")}):
        a.plot(steps, [r.get(key) for r in batches], label=key.split("/")[-1].replace("_", " "))
    a.plot(steps, [r.get("solve_rate/final") for r in batches], "k--", label="final (public + private)")
    a.set(title="Training batches: solve rate by turn", xlabel="optimizer step", ylabel="fraction", ylim=(0, 1))
    a.legend(fontsize=8)
    b.plot(steps, [r.get("fix_rate/turn_1_failures") for r in batches], color="tab:red", label="turn-1 failures fixed later")
    b.plot(steps, [r.get("reward/mean") for r in batches], color="tab:gray", alpha=0.6, label="mean reward")
    b.set(title="Training batches: fix rate and reward", xlabel="optimizer step")
    b.legend(fontsize=8)
    fig.tight_layout()
    path = out / "training_fix_rate.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluation_section(run_dir: Path, out: Path) -> list[str]:
    """Markdown lines of the section (empty when the run has no final evaluation); writes its plots to ``out``."""
    lines: list[str] = []
    batches = learner_batches(run_dir)
    training = _training_plot(batches, out)
    result = _load(run_dir)
    if result is None and training is None:
        return lines
    lines += ["## Learning: before and after RLEF", ""]
    if result is not None:
        table = (run_dir / "eval" / "comparison.md").read_text() if (run_dir / "eval" / "comparison.md").exists() else ""
        body = [ln for ln in table.splitlines() if not ln.startswith("# ")]
        lines += body + ["", f"![eval_comparison]({_bar_plot(result, out).name})", ""]
    else:
        lines += ["No final evaluation in this run (deploy.final_evaluation.enabled is false, or it did not finish).", ""]
    if training is not None and batches:
        third = max(1, len(batches) // 3)
        first = sum(r["solve_rate/final"] for r in batches[:third]) / third
        last = sum(r["solve_rate/final"] for r in batches[-third:]) / third
        lines += [f"Training solve rate, first third of batches {100 * first:.1f}% -> last third {100 * last:.1f}% "
                  f"({len(batches)} batches).", "", f"![training_fix_rate]({training.name})", ""]
    return lines
