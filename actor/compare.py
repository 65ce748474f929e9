"""``rlef evaluate --compare``: models side by side on the same problems, with the random-feedback ablation.

For every model (``name=path``, in order) and every feedback mode (``real``, and ``random`` with
``--random-feedback``) it runs :func:`rlef.actor.evaluate.run_evaluation` with the same split, rollouts and
sampling, writing ``OUTPUT/<name>/<mode>/evaluation.{json,md}`` and ``episodes.jsonl``. Then it aggregates
(pure, unit-tested: :func:`compare_reports`):

- per model and mode: 1@3 multi-turn, 1@3 first turn only (single-turn), pass@1 of the final program, and
  the fix rate: the share of episodes whose first program failed the public tests that ended correct;
  1@3 per problem kind when the problems are generated feedback tasks (shown / hidden conventions);
- paired differences with bootstrap CIs over the same problems (:func:`rlef.common.evaluation.paired_difference_ci`):
  every later model minus the first one (real feedback), and for every model real minus random feedback
  (the paper's signature that a model reads the feedback: the drop).

``OUTPUT/comparison.json`` and ``comparison.md`` hold the result; ``rlef report`` shows the table of a run's
``eval/`` directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from rlef.actor.evaluation_scores import CONFIDENCE, BOOTSTRAP_RESAMPLES, EvaluationReport, ProblemCounts, per_problem_estimates
from rlef.common.evaluation import bootstrap_ci, paired_difference_ci

log = logging.getLogger(__name__)

MODES = ("real", "random")


def _kind(problem_id: str) -> str | None:
    from rlef.common.data.feedback_tasks import parse_problem_name

    meta = parse_problem_name(problem_id)
    return None if meta is None else meta["kind"]


def fix_rate(turns: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """Of the episodes whose first program failed the public tests, how many a later turn made correct."""
    first = next((t for t in turns if t["turn"] == 1), None)
    if first is None:
        return None
    failed = first["episodes"] - first["status"].get("pass", 0)
    fixed = sum(first["fixed_later_correct"].values())
    return {"failed_first": failed, "fixed": fixed, "rate": fixed / failed if failed else float("nan")}


def _ci(values: Sequence[float], seed: int) -> dict[str, float] | None:
    if not values:
        return None
    mean, low, high = bootstrap_ci(values, resamples=BOOTSTRAP_RESAMPLES, confidence=CONFIDENCE, seed=seed)
    return {"mean": mean, "ci_low": low, "ci_high": high, "problems": len(values)}


def _row(counts: Sequence[ProblemCounts], turns: Sequence[dict[str, Any]], max_turns: int, seed: int) -> dict[str, Any]:
    multi = per_problem_estimates(counts, 1, 3, max_turns)
    single = per_problem_estimates(counts, 1, 3, max_turns, single=True)
    final = {c.problem_id: c.correct / c.rollouts for c in counts if c.rollouts}
    by_kind: dict[str, dict[str, float] | None] = {}
    for kind in ("shown", "hidden"):
        vals = [v for pid, v in multi.items() if _kind(pid) == kind]
        if vals:
            by_kind[kind] = _ci(vals, seed)
    return {"1@3": _ci(list(multi.values()), seed), "1@3 first turn": _ci(list(single.values()), seed),
            "pass@1": _ci(list(final.values()), seed), "fix_rate": fix_rate(turns), "by_kind": by_kind,
            "_multi": multi}


def _paired(a: dict[str, float], b: dict[str, float], seed: int) -> dict[str, float] | None:
    common = [pid for pid in a if pid in b]
    if not common:
        return None
    mean, low, high = paired_difference_ci([a[p] for p in common], [b[p] for p in common],
                                           resamples=BOOTSTRAP_RESAMPLES, confidence=CONFIDENCE, seed=seed)
    return {"mean": mean, "ci_low": low, "ci_high": high, "problems": len(common)}


def compare_reports(reports: dict[str, dict[str, EvaluationReport]], *, seed: int = 0) -> dict[str, Any]:
    """``reports[model][mode]`` -> rows per (model, mode) and the paired differences (module docstring)."""
    rows: dict[str, dict[str, Any]] = {}
    for model, modes in reports.items():
        for mode, rep in modes.items():
            rows[f"{model}/{mode}"] = _row(rep.problems, rep.turns, rep.settings["max_turns"], seed)
    diffs: dict[str, Any] = {}
    names = list(reports)
    base = names[0]
    for other in names[1:]:
        if "real" in reports[base] and "real" in reports[other]:
            diffs[f"{other} - {base} (real feedback)"] = _paired(rows[f"{other}/real"]["_multi"], rows[f"{base}/real"]["_multi"], seed)
    for model in names:
        if "real" in reports[model] and "random" in reports[model]:
            diffs[f"{model}: real - random feedback"] = _paired(rows[f"{model}/real"]["_multi"], rows[f"{model}/random"]["_multi"], seed)
    for row in rows.values():
        row.pop("_multi")
    return {"rows": rows, "differences": diffs}


def _fmt(e: dict[str, float] | None, pct: bool = True) -> str:
    if e is None:
        return "n/a"
    f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.3f}")
    return f"{f(e['mean'])} [{f(e['ci_low'])}, {f(e['ci_high'])}]"


def comparison_markdown(result: dict[str, Any], settings: dict[str, Any]) -> str:
    """The comparison as markdown tables (percentages, 95% bootstrap CIs over problems)."""
    lines = [
        f"# Comparison on {settings.get('dataset')}/{settings.get('split')}",
        "",
        (f"{settings.get('problems')} problems, {settings.get('rollouts')} rollouts each, up to "
         f"{settings.get('max_turns')} turns, temperature {settings.get('temperature')}, top-p {settings.get('top_p')}; "
         "percent, 95% bootstrap CI over problems (200 resamples)."),
        "",
        "| model | feedback | 1@3 multi-turn | 1@3 first turn only | fix rate of turn-1 failures | 1@3 hidden | 1@3 shown |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in result["rows"].items():
        model, mode = key.rsplit("/", 1)
        fr = row["fix_rate"]
        fix = "n/a" if not fr or not fr["failed_first"] else f"{100 * fr['rate']:.1f} ({fr['fixed']}/{fr['failed_first']})"
        kinds = row.get("by_kind", {})
        lines.append(f"| {model} | {mode} | {_fmt(row['1@3'])} | {_fmt(row['1@3 first turn'])} | {fix} | "
                     f"{_fmt(kinds.get('hidden'))} | {_fmt(kinds.get('shown'))} |")
    lines += ["", "| paired difference of 1@3 multi-turn | points | 95% CI | problems |", "|---|---|---|---|"]
    for name, d in result["differences"].items():
        if d is None:
            lines.append(f"| {name} | n/a | | |")
        else:
            lines.append(f"| {name} | {100 * d['mean']:+.1f} | [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] | {d['problems']} |")
    return "\n".join(lines) + "\n"


async def run_comparison(
    config: Any, *, models: list[tuple[str, str]], split: str, rollouts: int, protocol: str, output: Path,
    random_feedback: bool, limit: int | None = None, fresh: bool = False,
) -> dict[str, Any]:
    """Evaluate every model in every mode (module docstring); writes and returns the comparison."""
    from rlef.actor.evaluate import run_evaluation

    reports: dict[str, dict[str, EvaluationReport]] = {}
    modes = MODES if random_feedback else MODES[:1]
    for name, path in models:
        if not (Path(path) / "config.json").is_file():
            from rlef.common.errors import ConfigError

            raise ConfigError(f"--compare {name}={path}: no Hugging Face checkpoint there (config.json missing)")
        reports[name] = {}
        for mode in modes:
            cfg = config.model_copy(deep=True)
            cfg.model.path = str(path)
            cfg.actor.random_feedback = mode == "random"
            log.info("evaluating %s (%s feedback) on %s", name, mode, split)
            reports[name][mode] = await run_evaluation(cfg, rollouts=rollouts, protocol=protocol,
                                                       output=output / name / mode, split=split, limit=limit,
                                                       fresh=fresh)
    result = compare_reports(reports, seed=config.run.seed)
    first = next(iter(next(iter(reports.values())).values()))
    s = first.settings
    settings = {"dataset": s["dataset"], "split": split, "problems": len(first.problems), "rollouts": rollouts,
                "max_turns": s["max_turns"], "temperature": s["temperature"], "top_p": s["top_p"],
                "models": dict(models), "modes": list(modes), "seed": config.run.seed}
    result["settings"] = settings
    output.mkdir(parents=True, exist_ok=True)
    (output / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    (output / "comparison.md").write_text(comparison_markdown(result, settings))
    return result
