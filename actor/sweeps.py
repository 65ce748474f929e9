"""The evaluations behind the paper's analyses (``rlef evaluate --turn-limits``, ``--budget-curve``, ``--chrf``).

Each sweep runs ordinary, resumable :func:`rlef.actor.evaluate.run_evaluation` calls into subfolders of
the output (so a killed sweep continues where it stopped, and every point keeps its own evaluation.md and
episodes.jsonl) and then aggregates them with :mod:`rlef.actor.analyses` into ``<name>.json``, ``<name>.md``
and ``<name>.png`` beside them. The sampling is the evaluation's (``--protocol``, ``--temperature``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlef.actor import analyses as A
from rlef.actor.evaluation_episodes import read_episode_lines
from rlef.actor.evaluation_scores import EvaluationReport

log = logging.getLogger(__name__)


def _evaluate(config: Any, output: Path, *, max_turns: int, rollouts: int, protocol: str, split: str,
              limit: int | None) -> EvaluationReport:
    from rlef.actor.evaluate import run_evaluation

    cfg = config.model_copy(deep=True)
    cfg.actor.max_turns = max_turns
    log.info("evaluating with turn limit %d, %d rollouts per problem -> %s", max_turns, rollouts, output)
    return _run_sync(run_evaluation(cfg, rollouts=rollouts, protocol=protocol, output=output, split=split, limit=limit))


def _run_sync(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def _write(output: Path, name: str, data: Any, markdown: str) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (output / f"{name}.md").write_text(markdown)


def turn_limit_sweep(
    config: Any, *, limits: Sequence[int], budget: int, output: Path, split: str, protocol: str,
    limit: int | None = None, rollouts: int | None = None,
) -> list[dict[str, Any]]:
    """Turn limits T at a budget of ``budget`` samples: ``max(budget // T, rollouts)`` rollouts each."""
    bad = [t for t in limits if t < 1 or budget // t < 1]
    if bad:
        raise ValueError(f"--turn-limits {bad}: a budget of {budget} samples buys no rollout of that many turns")
    by_limit = {}
    for turns in limits:
        r = max(budget // turns, rollouts or 0)
        by_limit[turns] = _evaluate(config, output / "turn-limits" / f"T{turns}", max_turns=turns, rollouts=r,
                                    protocol=protocol, split=split, limit=limit).problems
    rows = A.turn_limit_rows(by_limit, budget, seed=config.run.seed)
    md = (f"# Turn-limit sweep at a budget of {budget} samples\n\n"
          f"Every turn is a sample: a turn limit T buys {budget} // T rollouts. 1@k: one submission chosen "
          "public-tests-first; pass@k: any final program correct. Percent, 95% bootstrap CI over problems.\n\n"
          + A.turn_limit_markdown(rows))
    _write(output, "turn-limits", rows, md)
    A.turn_limit_plot(rows, output / "turn-limits.png")
    return rows


def budget_curve(
    config: Any, *, max_k: int, output: Path, split: str, protocol: str, limit: int | None = None,
    rollouts: int | None = None,
) -> list[dict[str, Any]]:
    """Multi-turn (``config.actor.max_turns``) against single-turn sampling for budgets up to ``max_k``."""
    turns = config.actor.max_turns
    multi = _evaluate(config, output / "budget" / "multi-turn", max_turns=turns,
                      rollouts=max(max_k // turns, rollouts or 0), protocol=protocol, split=split, limit=limit)
    single = _evaluate(config, output / "budget" / "single-turn", max_turns=1,
                       rollouts=max(max_k, rollouts or 0), protocol=protocol, split=split, limit=limit)
    rows = A.budget_curves(multi.problems, single.problems, turns, A.budget_ks(max_k), seed=config.run.seed)
    md = (f"# Solve rate against sample budget (up to {max_k} samples)\n\n"
          f"Multi-turn: k // {turns} rollouts of up to {turns} turns (every turn a sample); single-turn: k "
          "independent one-turn rollouts. pass@k: any final program correct; n@k: n submissions chosen "
          "public-tests-first. Percent, 95% bootstrap CI over problems.\n\n" + A.budget_markdown(rows))
    _write(output, "budget-curve", rows, md)
    A.budget_plot(rows, output / "budget-curve.png")
    return rows


def evaluation_dirs(output: Path) -> dict[str, Path]:
    """name -> folder of every evaluation under ``output`` (itself, comparison subfolders, sweep points)."""
    found = sorted(p.parent for p in output.rglob("episodes.jsonl"))
    return {("." if d == output else str(d.relative_to(output))): d for d in found}


def chrf_analysis(output: Path, *, seed: int = 0) -> dict[str, Any]:
    """1 - chrF per turn and the per-turn error plot of every evaluation under ``output``."""
    named, errors = {}, {}
    for name, folder in evaluation_dirs(output).items():
        lines = read_episode_lines(folder / "episodes.jsonl")
        named[name] = A.chrf_per_turn(lines, seed=seed)
        report = folder / "evaluation.json"
        if report.exists():
            turns = json.loads(report.read_text())["turns"]
            errors[name] = turns
            A.errors_plot(turns, folder / "turn-errors.png", title=f"Public-test outcome per turn ({name})")
    md = ("# 1 - chrF between successive programs of an episode\n\n"
          "sacrebleu CHRF (character 6-grams, beta 2) of each turn's program against the previous turn's; "
          "0 = resubmitted unchanged, 1 = nothing in common. Mean over program pairs, 95% bootstrap CI.\n\n"
          + A.chrf_markdown(named))
    _write(output, "analysis-chrf", {"chrf": named, "turn_errors": errors}, md)
    A.chrf_plot(named, output / "analysis-chrf.png")
    return {"chrf": named, "turn_errors": errors}
