"""The in-training evaluator's section of a run report: the valid curve and the selected checkpoint.

Reads what ``rlef evaluator`` wrote (``RUN_DIR/eval/curve.jsonl``, one line per evaluated version, and
``RUN_DIR/eval/best.json``) and renders a plot (``eval-curve.png``: the selection estimate per version with
its 95% CI, the selected version marked) and markdown (a table per version, the selection next to the
latest evaluated version and the final checkpoint). ``rlef report`` can call :func:`evaluator_section`;
it returns None for a run without an evaluator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The evaluator's curve points in version order (torn lines of a killed evaluator are skipped)."""
    path = run_dir / "eval" / "curve.jsonl"
    if not path.exists():
        return []
    points = []
    for line in path.read_text().splitlines():
        try:
            points.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return sorted(points, key=lambda p: p["version"])


def curve_plot(points: list[dict[str, Any]], key: str, best_version: int | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(p["version"], p["estimates"][key]) for p in points if key in p["estimates"]]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [v for v, _ in pts]
    ax.plot(xs, [100 * e["mean"] for _, e in pts], "o-", label=key)
    ax.fill_between(xs, [100 * e["ci_low"] for _, e in pts], [100 * e["ci_high"] for _, e in pts], alpha=0.2)
    if best_version is not None:
        ax.axvline(best_version, color="C2", linestyle="--", label=f"selected: version {best_version}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("policy version")
    ax.set_ylabel(f"{key} on valid (%)")
    ax.set_title("In-training evaluation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pct(e: dict[str, float] | None) -> str:
    return "n/a" if e is None else f"{100 * e['mean']:.1f} [{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}]"


def evaluator_section(run_dir: Path, out_dir: Path) -> str | None:
    """Markdown of the evaluator's curve and selection, with ``out_dir/eval-curve.png``; None without one."""
    points = read_curve(run_dir)
    if not points:
        return None
    best_path = run_dir / "eval" / "best.json"
    best = json.loads(best_path.read_text()) if best_path.exists() else {}
    key = best.get("select_on", "1@3")
    chosen = (best.get("best") or {}).get("version")
    curve_plot(points, key, chosen, out_dir / "eval-curve.png")
    lines = ["## In-training evaluation", "", "![valid curve](eval-curve.png)", "",
             f"| version | {key} (95% CI) | 1@3 single-turn | episodes | seconds |", "|---|---|---|---|---|"]
    for p in points:
        mark = " (selected)" if p["version"] == chosen else ""
        lines.append(f"| {p['version']}{mark} | {_pct(p['estimates'].get(key))} | {_pct(p['estimates'].get('1@3 single-turn'))} | "
                     f"{p['episodes']} | {p['seconds']:.0f} |")
    if best:
        b, latest = best.get("best") or {}, best.get("latest") or {}
        where = b.get("checkpoint") or (f"the initial weights {best.get('initial_model')}" if b.get("version") == 0
                                        else "not on disk (exported model only)")
        lines += ["", f"Selected on {key} ({best.get('split')}): version {b.get('version')}, checkpoint "
                      f"`{where}`, model `{b.get('model_dir')}`; "
                      f"latest evaluated: version {latest.get('version')}; final checkpoint `{best.get('final_checkpoint')}`."]
    return "\n".join(lines) + "\n"
