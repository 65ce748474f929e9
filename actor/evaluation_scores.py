"""Scores of an evaluation (rlef-method.md, "Evaluation" and "Analyses"): pure, no I/O, unit-tested.

From the finished episodes' summaries (:class:`EpisodeSummary`) of ``rlef evaluate`` (:mod:`rlef.actor.evaluate`):

- per problem (:class:`ProblemCounts`): rollouts, final programs passing the public tests, correct final
  programs; the same for the first turn alone (the single-turn numbers);
- n@k estimates (:func:`rlef.common.evaluation.n_at_k`, public-tests-first selection) with 95% bootstrap
  confidence intervals over problems (200 resamples): 1@3 and, with enough rollouts, 10@100, multi-turn and
  first-turn-only (a first turn is one single-turn sample, so single-turn k=100 needs 100 rollouts);
- per-turn error categories (the turn's status on the public tests: wrong_answer, runtime_error, timeout,
  oom, syntax_error, no_code, ...) and how many of them a later turn of the same episode fixed;
- the :class:`EvaluationReport` that ``rlef evaluate`` writes as JSON and markdown.

Scope: a problem whose every episode was skipped by the runner (no public tests, first prompt longer than
``model.max_seq_len``) counts as unsolved (0) in every estimate; a problem with fewer finished rollouts than
an estimate draws (episode errors) is left out of that estimate, and the estimate says over how many
problems it was taken.

Infrastructure failures are not answers: an episode whose execution kept failing on our side (executor
timeout, dead jail, refused job; the runner's ``dropped``) is not scored. Its problem is reported as errored
(``ProblemCounts.errored``, the report's "errored" line), separately from unsolved: a problem left with no
finished rollout is absent from every estimate, as one with too few rollouts for a draw is.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from collections.abc import Iterable, Sequence
from typing import Any

from rlef.common.evaluation import ProblemRollouts, bootstrap_ci, n_at_k, pass_at_k

# Estimates reported whenever the rollouts suffice, whatever the sampling protocol.
ESTIMATES: tuple[tuple[int, int], ...] = ((1, 3), (10, 100))
BOOTSTRAP_RESAMPLES = 200
CONFIDENCE = 0.95


@dataclass(frozen=True)
class EpisodeSummary:
    """What the aggregation needs of one finished episode."""

    problem_id: str
    turn_statuses: tuple[str, ...]
    """Each turn's status on the public tests ("pass", "wrong_answer", ..., "no_code")."""
    final_passed: bool
    """The last program passed every test of the evaluation set (public + private + generated)."""

    @property
    def public_pass(self) -> bool:
        return self.turn_statuses[-1] == "pass"

    @property
    def first_public_pass(self) -> bool:
        return self.turn_statuses[0] == "pass"

    @property
    def first_correct(self) -> bool:
        # The episode stops once the public tests pass: a one-turn episode's final program is the first turn's.
        return len(self.turn_statuses) == 1 and self.final_passed

    @classmethod
    def from_record(cls, record: Any) -> EpisodeSummary:
        """From an :class:`~rlef.actor.episode_records.EpisodeRecord`."""
        return cls(record.problem.problem_id, tuple(t.outcome.status for t in record.turns), record.rollout.final.passed)


@dataclass
class ProblemCounts:
    problem_id: str
    rollouts: int = 0
    public_pass: int = 0
    correct: int = 0
    first_turn_public_pass: int = 0
    first_turn_correct: int = 0
    skipped: str | None = None
    """Why the runner could not run this problem (its episodes then count as unsolved)."""
    errored: int = 0
    """Episodes dropped because an execution kept failing on the infrastructure's side (never scored)."""

    def multi(self) -> ProblemRollouts:
        return ProblemRollouts(self.rollouts, self.public_pass, self.correct)

    def single(self) -> ProblemRollouts:
        return ProblemRollouts(self.rollouts, self.first_turn_public_pass, self.first_turn_correct)


def count_problems(
    problem_ids: Sequence[str], episodes: Iterable[EpisodeSummary], skipped: Iterable[tuple[str, str]] = (),
    errored: Iterable[tuple[str, str]] = (),
) -> list[ProblemCounts]:
    """Per-problem counts in ``problem_ids`` order; episodes of unknown problems are an error. ``errored``:
    (problem id, reason) per episode dropped for an infrastructure failure."""
    counts = {pid: ProblemCounts(pid) for pid in problem_ids}
    for pid, reason in skipped:
        counts[pid].skipped = reason
    for pid, _reason in errored:
        if pid not in counts:
            raise ValueError(f"errored episode of problem {pid!r}, which is not in the evaluated set")
        counts[pid].errored += 1
    for ep in episodes:
        if ep.problem_id not in counts:
            raise ValueError(f"episode of problem {ep.problem_id!r}, which is not in the evaluated set")
        c = counts[ep.problem_id]
        c.rollouts += 1
        c.public_pass += ep.public_pass
        c.correct += ep.final_passed
        c.first_turn_public_pass += ep.first_public_pass
        c.first_turn_correct += ep.first_correct
    return list(counts.values())


def _per_problem(counts: Sequence[ProblemCounts], n: int, k: int, max_turns: int, single: bool) -> list[float]:
    """Each problem's n@k (skipped problems: 0; problems with too few rollouts for the draw: left out)."""
    return list(per_problem_estimates(counts, n, k, max_turns, single=single).values())


def per_problem_estimates(
    counts: Sequence[ProblemCounts], n: int, k: int, max_turns: int, *, single: bool = False
) -> dict[str, float]:
    """problem id -> n@k, in ``counts`` order (skipped problems: 0; too few rollouts for the draw: absent)."""
    turns = 1 if single else max_turns
    need = k // turns
    values: dict[str, float] = {}
    for c in counts:
        if c.rollouts == 0 and c.skipped is not None:
            values[c.problem_id] = 0.0
        elif c.rollouts >= need:
            values[c.problem_id] = n_at_k(c.single() if single else c.multi(), n, k, turns)
    return values


def estimate(
    counts: Sequence[ProblemCounts], n: int, k: int, max_turns: int, *, single: bool = False, seed: int = 0
) -> dict[str, Any] | None:
    """n@k over problems with its bootstrap CI; None when k buys no rollout or no problem that ran had the
    rollouts the draw needs."""
    if k // (1 if single else max_turns) < 1:
        return None
    values = _per_problem(counts, n, k, max_turns, single)
    if len(values) == sum(1 for c in counts if c.rollouts == 0 and c.skipped is not None):
        return None  # no problem that ran had the rollouts: skipped problems' zeros alone estimate nothing
    mean, low, high = bootstrap_ci(values, resamples=BOOTSTRAP_RESAMPLES, confidence=CONFIDENCE, seed=seed)
    return {"n": n, "k": k, "mean": mean, "ci_low": low, "ci_high": high, "problems": len(values)}


def pass_at_1(counts: Sequence[ProblemCounts], *, seed: int = 0) -> dict[str, Any] | None:
    """Solve rate of one episode's final program (pass@1 over rollouts, mean over problems)."""
    values = [0.0 if c.rollouts == 0 else pass_at_k(c.rollouts, c.correct, 1)
              for c in counts if c.rollouts > 0 or c.skipped is not None]
    if not values:
        return None
    mean, low, high = bootstrap_ci(values, resamples=BOOTSTRAP_RESAMPLES, confidence=CONFIDENCE, seed=seed)
    return {"mean": mean, "ci_low": low, "ci_high": high, "problems": len(values)}


def turn_errors(episodes: Iterable[EpisodeSummary]) -> list[dict[str, Any]]:
    """Per turn (1-based): how many episodes reached it, its status counts, and per failing status how many
    episodes a later turn fixed (public tests passed later) and how many ended correct."""
    reached: Counter[int] = Counter()
    statuses: dict[int, Counter[str]] = {}
    fixed: dict[int, Counter[str]] = {}
    fixed_correct: dict[int, Counter[str]] = {}
    for ep in episodes:
        for t, status in enumerate(ep.turn_statuses, start=1):
            reached[t] += 1
            statuses.setdefault(t, Counter())[status] += 1
            fixed.setdefault(t, Counter())
            fixed_correct.setdefault(t, Counter())
            if status != "pass" and t < len(ep.turn_statuses):
                fixed[t][status] += ep.public_pass
                fixed_correct[t][status] += ep.final_passed
    return [
        {"turn": t, "episodes": reached[t], "status": dict(sorted(statuses[t].items())),
         "fixed_later": {s: fixed[t][s] for s in sorted(statuses[t]) if s != "pass"},
         "fixed_later_correct": {s: fixed_correct[t][s] for s in sorted(statuses[t]) if s != "pass"}}
        for t in sorted(reached)
    ]


@dataclass
class EvaluationReport:
    """Everything ``rlef evaluate`` writes (``to_json``) and prints (``markdown``)."""

    settings: dict[str, Any]
    problems: list[ProblemCounts]
    estimates: dict[str, dict[str, Any] | None]
    turns: list[dict[str, Any]]
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "estimates": self.estimates, "turns": self.turns,
                "problems": [asdict(p) for p in self.problems], "errors": self.errors}

    def markdown(self) -> str:
        s = self.settings
        lines = [
            f"# Evaluation of `{s['model']}` on {s['dataset']}/{s['split']}",
            "",
            (f"{len(self.problems)} problems, {s['rollouts_per_problem']} rollouts each requested, "
            f"{sum(p.rollouts for p in self.problems)} finished; up to {s['max_turns']} turns; temperature "
            f"{s['temperature']}, top-p {s['top_p']}; final programs scored on test set `{s['test_set']}`."),
            "",
            "| estimate | mean | 95% CI | problems |",
            "|---|---|---|---|",
        ]
        for name, e in self.estimates.items():
            if e is None:
                lines.append(f"| {name} | n/a (too few rollouts) | | |")
            else:
                lines.append(f"| {name} | {e['mean']:.4f} | [{e['ci_low']:.4f}, {e['ci_high']:.4f}] | {e['problems']} |")
        lines += ["", "| turn | episodes | status counts | fixed in a later turn (public pass / correct) |", "|---|---|---|---|"]
        for t in self.turns:
            status = ", ".join(f"{k} {v}" for k, v in t["status"].items())
            fixed = ", ".join(f"{k} {v}/{t['fixed_later_correct'][k]}" for k, v in t["fixed_later"].items())
            lines.append(f"| {t['turn']} | {t['episodes']} | {status} | {fixed} |")
        lines += ["", "| problem | rollouts | final public pass | correct | first-turn public pass | first-turn correct |",
                  "|---|---|---|---|---|---|"]
        for p in self.problems:
            note = f" (skipped: {p.skipped})" if p.skipped and p.rollouts == 0 else ""
            lines.append(f"| {p.problem_id}{note} | {p.rollouts} | {p.public_pass} | {p.correct} | "
                         f"{p.first_turn_public_pass} | {p.first_turn_correct} |")
        errored = [p for p in self.problems if p.errored]
        if errored:
            unscored = [p.problem_id for p in errored if p.rollouts == 0]
            lines += ["", (f"errored (infrastructure, not scored): {sum(p.errored for p in errored)} episodes of "
                           f"{len(errored)} problems: " + ", ".join(f"{p.problem_id} {p.errored}" for p in errored)
                           + (f"; left out of every estimate (no scored rollout): {', '.join(unscored)}" if unscored else ""))]
        if self.errors:
            lines += ["", f"{len(self.errors)} episodes failed with an error (see the JSON)."]
        return "\n".join(lines) + "\n"


def aggregate(
    settings: dict[str, Any], problem_ids: Sequence[str], episodes: Sequence[EpisodeSummary],
    skipped: Iterable[tuple[str, str]] = (), errors: Sequence[str] = (), *, seed: int = 0,
    errored: Iterable[tuple[str, str]] = (),
) -> EvaluationReport:
    """The report of a finished evaluation (pure: no I/O)."""
    max_turns = settings["max_turns"]
    counts = count_problems(problem_ids, episodes, skipped, errored)
    estimates: dict[str, dict[str, Any] | None] = {"pass@1 (final program)": pass_at_1(counts, seed=seed)}
    for n, k in ESTIMATES:
        estimates[f"{n}@{k}"] = estimate(counts, n, k, max_turns, seed=seed)
        estimates[f"{n}@{k} single-turn"] = estimate(counts, n, k, max_turns, single=True, seed=seed)
    return EvaluationReport(settings, counts, estimates, turn_errors(episodes), list(errors))
