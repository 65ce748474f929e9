"""The paper's analyses (section 5) over finished evaluations: pure aggregation, markdown tables and plots.

Each analysis reads what ``rlef evaluate`` wrote (``episodes.jsonl`` lines, :class:`ProblemCounts`) and never
runs a model; :mod:`rlef.actor.sweeps` runs the evaluations the sweeps need.

- **1 - chrF between successive programs** (:func:`chrf_per_turn`): for every episode and every turn
  t >= 2 whose program and the previous turn's program both exist, ``1 - chrF(previous, this) / 100`` with
  sacrebleu's CHRF (its defaults: character 6-grams, beta 2, no word n-grams). 0 = the model resubmitted the
  same program, 1 = nothing in common. The paper reads it as "how much a model changes its code in
  response to feedback": with random feedback, an RLEF model edits less purposefully. Pairs where either
  turn had no code are counted apart (they have no distance).
- **Per-turn error categories** (:func:`errors_plot`): the turn table of the report as stacked bars.
- **Turn-limit sweep at a fixed sample budget** (:func:`turn_limit_rows`): with a budget of B samples and
  turn limit T, every rollout may use T samples, so B buys ``B // T`` rollouts (T = 1: B independent
  samples); 1@B (public-tests-first selection) and pass@B (any of the ``B // T`` final programs correct).
- **Solve rate against sample budget** (:func:`budget_curves`): pass@k, 1@k and 10@k for k up to 100,
  multi-turn (``k // T`` rollouts of up to T turns) against independent single-turn sampling (k rollouts of
  one turn, a separate evaluation with ``max_turns = 1``).

Everything is a mean over problems with a 95% bootstrap CI (200 resamples), as in the paper; skipped
problems count 0; a problem with fewer rollouts than a point draws is left out of that point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlef.actor.evaluation_scores import BOOTSTRAP_RESAMPLES, CONFIDENCE, ProblemCounts, per_problem_estimates
from rlef.common.evaluation import bootstrap_ci, pass_at_k

# ---------------------------------------------------------------------------------------------- chrF


def code_distance(previous: str, current: str) -> float:
    """``1 - chrF / 100`` of ``current`` against ``previous`` (sacrebleu's sentence-level CHRF, defaults)."""
    from sacrebleu.metrics import CHRF

    return 1.0 - CHRF().sentence_score(current, [previous]).score / 100.0


def _ci(values: Sequence[float], seed: int = 0) -> dict[str, float] | None:
    if not values:
        return None
    mean, low, high = bootstrap_ci(values, resamples=BOOTSTRAP_RESAMPLES, confidence=CONFIDENCE, seed=seed)
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": len(values)}


def chrf_per_turn(lines: Sequence[Mapping[str, Any]], *, seed: int = 0) -> list[dict[str, Any]]:
    """Per turn t >= 2: mean ``1 - chrF`` between the programs of turns t-1 and t (CI over pairs), how many
    pairs had both programs, and how many lacked one. ``lines``: episodes.jsonl records (``codes``)."""
    distances: dict[int, list[float]] = {}
    missing: dict[int, int] = {}
    for line in lines:
        codes = line.get("codes")
        if codes is None:
            raise ValueError(f"episode {line.get('rollout_id')!r} has no per-turn codes (written by an older rlef evaluate)")
        for t in range(1, len(codes)):
            turn = t + 1
            distances.setdefault(turn, [])
            if codes[t - 1] is None or codes[t] is None:
                missing[turn] = missing.get(turn, 0) + 1
                continue
            distances[turn].append(code_distance(codes[t - 1], codes[t]))
    return [{"turn": t, "pairs": len(distances[t]), "without_code": missing.get(t, 0),
             "one_minus_chrf": _ci(distances[t], seed)} for t in sorted(distances)]


def chrf_markdown(named: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """One row per (evaluation, turn): the paper's "1 - chrF between successive programs" table."""
    lines = ["| evaluation | turn | pairs | 1 - chrF (mean) | 95% CI | pairs without code |", "|---|---|---|---|---|---|"]
    for name, rows in named.items():
        for r in rows:
            e = r["one_minus_chrf"]
            value = "n/a | " if e is None else f"{e['mean']:.3f} | [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"
            lines.append(f"| {name} | {r['turn'] - 1} -> {r['turn']} | {r['pairs']} | {value} | {r['without_code']} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- budgets


def pass_per_problem(counts: Sequence[ProblemCounts], k: int, max_turns: int, *, single: bool = False) -> dict[str, float]:
    """problem id -> pass@k with every turn a sample: any of ``k // turns`` rollouts' final program correct
    (single: any of k first turns). Skipped problems 0; too few rollouts: absent."""
    turns = 1 if single else max_turns
    m = k // turns
    out: dict[str, float] = {}
    if m < 1:
        return out
    for c in counts:
        if c.rollouts == 0 and c.skipped is not None:
            out[c.problem_id] = 0.0
        elif c.rollouts >= m:
            out[c.problem_id] = pass_at_k(c.rollouts, c.first_turn_correct if single else c.correct, m)
    return out


def _point(values: Mapping[str, float], seed: int) -> dict[str, float] | None:
    e = _ci(list(values.values()), seed)
    if e is not None:
        e["problems"] = e.pop("n")
    return e


def turn_limit_rows(by_limit: Mapping[int, Sequence[ProblemCounts]], budget: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """One row per turn limit T: rollouts ``budget // T``, 1@budget and pass@budget over problems."""
    rows = []
    for turns, counts in sorted(by_limit.items()):
        m = budget // turns
        one = per_problem_estimates(counts, 1, budget, turns) if m >= 1 else {}
        rows.append({"turn_limit": turns, "budget": budget, "rollouts_drawn": m,
                     "1@k": _point(one, seed), "pass@k": _point(pass_per_problem(counts, budget, turns), seed)})
    return rows


def turn_limit_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [f"| turn limit | rollouts per budget of {rows[0]['budget'] if rows else '?'} samples | 1@k | pass@k | problems |",
             "|---|---|---|---|---|"]
    for r in rows:
        problems = (r["1@k"] or r["pass@k"] or {}).get("problems", 0)
        lines.append(f"| {r['turn_limit']} | {r['rollouts_drawn']} | {_pct(r['1@k'])} | {_pct(r['pass@k'])} | {problems} |")
    return "\n".join(lines) + "\n"


def budget_ks(max_k: int) -> list[int]:
    """Budgets on a log-like grid up to ``max_k`` (the paper's x axis: 1 .. 100 samples)."""
    grid = [1, 2, 3, 5, 6, 10, 15, 20, 30, 33, 50, 66, 99, 100]
    return [k for k in grid if k <= max_k] + ([max_k] if max_k not in grid else [])


def budget_curves(
    multi: Sequence[ProblemCounts], single: Sequence[ProblemCounts], max_turns: int, ks: Sequence[int], *, seed: int = 0,
) -> list[dict[str, Any]]:
    """Per budget k: pass@k, 1@k, 10@k of multi-turn rollouts (up to ``max_turns`` turns, every turn a
    sample) and of independent single-turn rollouts (``single``: an evaluation with max_turns 1)."""
    rows = []
    for k in ks:
        row: dict[str, Any] = {"k": k}
        for name, counts, turns in (("multi-turn", multi, max_turns), ("single-turn", single, 1)):
            m = k // turns
            row[name] = {
                "rollouts": m,
                "pass@k": _point(pass_per_problem(counts, k, turns), seed),
                "1@k": _point(per_problem_estimates(counts, 1, k, turns), seed) if m >= 1 else None,
                "10@k": _point(per_problem_estimates(counts, 10, k, turns), seed) if m >= 1 else None,
            }
        rows.append(row)
    return rows


def _pct(e: Mapping[str, float] | None) -> str:
    if e is None:
        return "n/a"
    return f"{100 * e['mean']:.1f} [{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}]"


def budget_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| k (samples) | multi-turn pass@k | multi-turn 1@k | multi-turn 10@k | single-turn pass@k | single-turn 1@k | single-turn 10@k |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        m, s = r["multi-turn"], r["single-turn"]
        lines.append(f"| {r['k']} | {_pct(m['pass@k'])} | {_pct(m['1@k'])} | {_pct(m['10@k'])} | "
                     f"{_pct(s['pass@k'])} | {_pct(s['1@k'])} | {_pct(s['10@k'])} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def budget_plot(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Solve rate against sample budget (log x), one line per (sampling, estimate), CI bands."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"multi-turn": "-", "single-turn": "--"}
    colors = {"pass@k": "C0", "1@k": "C1", "10@k": "C2"}
    for sampling, style in styles.items():
        for est, color in colors.items():
            pts = [(r["k"], r[sampling][est]) for r in rows if r[sampling][est] is not None]
            if not pts:
                continue
            ks = [k for k, _ in pts]
            ax.plot(ks, [100 * e["mean"] for _, e in pts], style, color=color, marker="o", ms=3, label=f"{sampling} {est}")
            ax.fill_between(ks, [100 * e["ci_low"] for _, e in pts], [100 * e["ci_high"] for _, e in pts], color=color, alpha=0.08)
    ax.set_xscale("log")
    ax.set_xlabel("sample budget k (turns)")
    ax.set_ylabel("solve rate (%)")
    ax.set_title("Solve rate against sample budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def turn_limit_plot(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, est in enumerate(("1@k", "pass@k")):
        pts = [(r["turn_limit"], r[est]) for r in rows if r[est] is not None]
        xs = [x + (i - 0.5) * 0.15 for x, _ in pts]
        ax.errorbar(xs, [100 * e["mean"] for _, e in pts],
                    yerr=[[100 * (e["mean"] - e["ci_low"]) for _, e in pts], [100 * (e["ci_high"] - e["mean"]) for _, e in pts]],
                    fmt="o-", capsize=3, label=est)
    ax.set_xticks([r["turn_limit"] for r in rows])
    ax.set_xlabel("turn limit")
    ax.set_ylabel("solve rate (%)")
    ax.set_title(f"Turn limit at a budget of {rows[0]['budget'] if rows else '?'} samples")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def chrf_plot(named: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, rows in named.items():
        pts = [(r["turn"], r["one_minus_chrf"]) for r in rows if r["one_minus_chrf"] is not None]
        if not pts:
            continue
        ax.errorbar([t for t, _ in pts], [e["mean"] for _, e in pts],
                    yerr=[[e["mean"] - e["ci_low"] for _, e in pts], [e["ci_high"] - e["mean"] for _, e in pts]],
                    fmt="o-", capsize=3, label=name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("turn (distance to the previous turn's program)")
    ax.set_ylabel("1 - chrF")
    ax.set_ylim(0, 1)
    ax.set_title("Change between successive programs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def errors_plot(turns: Sequence[Mapping[str, Any]], path: Path, title: str = "Public-test outcome per turn") -> Path:
    """Stacked bars: each turn's status counts (the report's turn table)."""
    plt = _pyplot()
    statuses = sorted({s for t in turns for s in t["status"]}, key=lambda s: (s != "pass", s))
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    bottom = [0] * len(turns)
    xs = [t["turn"] for t in turns]
    for s in statuses:
        heights = [t["status"].get(s, 0) for t in turns]
        ax.bar(xs, heights, bottom=bottom, label=s)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(xs)
    ax.set_xlabel("turn")
    ax.set_ylabel("episodes")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def comparison_plot(result: Mapping[str, Any], path: Path) -> Path:
    """The comparison's 1@3 multi-turn and first-turn rows as bars with CIs (random-feedback ablation)."""
    plt = _pyplot()
    rows = list(result["rows"].items())
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(rows)), 3.8))
    width = 0.38
    for i, (est, label) in enumerate((("1@3", "1@3 multi-turn"), ("1@3 first turn", "1@3 first turn only"))):
        xs, ys, lo, hi = [], [], [], []
        for j, (_, row) in enumerate(rows):
            e = row.get(est)
            if e is None:
                continue
            xs.append(j + (i - 0.5) * width)
            ys.append(100 * e["mean"])
            lo.append(100 * (e["mean"] - e["ci_low"]))
            hi.append(100 * (e["ci_high"] - e["mean"]))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=label)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([key.replace("/", "\n") for key, _ in rows], fontsize=8)
    ax.set_ylabel("solve rate (%)")
    ax.set_title("Real against random feedback")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
