"""The paper's evaluation protocol (rlef-method.md, "Evaluation" and "Analyses") as ``rlef evaluate``.

Runs R episodes per problem of a split with the actor's own :class:`~rlef.actor.episodes.EpisodeRunner`
(no learner, no weight updates: the model is ``model.path``) against the executor broker, scores each
episode's last program on the problem's test set ``all`` (public + private + CodeContests' generated tests
when the problem has them, as the paper's evaluation scores do) and aggregates:

- per problem: rollouts, final programs passing the public tests, correct final programs; the same for the
  first turn alone (the single-turn numbers);
- n@k estimates (:func:`rlef.common.evaluation.n_at_k`, public-tests-first selection) with 95% bootstrap
  confidence intervals over problems (200 resamples): 1@3 and, with enough rollouts, 10@100, multi-turn and
  first-turn-only (a first turn is one single-turn sample, so single-turn k=100 needs 100 rollouts);
- per-turn error categories (the turn's status on the public tests: wrong_answer, runtime_error, timeout,
  oom, syntax_error, no_code, ...) and how many of them a later turn of the same episode fixed.

Resumable: ``episodes.jsonl`` is append-only (each episode flushed as it finishes, with every turn's
program for the chrF analysis); a restart with the same settings (:data:`RESUME_KEYS`, kept in
``evaluation-settings.json``) runs only the episodes each problem lacks, and refuses a file of another
evaluation. :func:`run_episodes` is the core the in-training evaluator (:mod:`rlef.actor.evaluator`) reuses.

Scope of the aggregation (pure, unit-tested): a problem whose every episode was skipped by the runner (no
public tests, first prompt longer than ``model.max_seq_len``) counts as unsolved (0) in every estimate; a
problem with fewer finished rollouts than an estimate draws (episode errors) is left out of that estimate,
and the estimate says over how many problems it was taken.

Infrastructure failures are not answers: an episode whose execution kept failing on our side (executor
timeout, dead jail, refused job; the runner's ``dropped``) is not scored. Its problem is reported as errored
(``ProblemCounts.errored``, the report's "errored" line), separately from unsolved: a problem left with no
finished rollout is absent from every estimate, as one with too few rollouts for a draw is.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from rlef.common.errors import RlefError
from rlef.common.evaluation import ProblemRollouts, bootstrap_ci, n_at_k, pass_at_k

log = logging.getLogger(__name__)

# The paper's protocols: (n, k, temperature, top_p).
PROTOCOLS: dict[str, tuple[int, int, float, float]] = {
    "1@3": (1, 3, 0.2, 0.95),
    "10@100": (10, 100, 1.0, 0.95),
}
# Estimates reported whenever the rollouts suffice, whatever the sampling protocol.
ESTIMATES: tuple[tuple[int, int], ...] = ((1, 3), (10, 100))
BOOTSTRAP_RESAMPLES = 200
CONFIDENCE = 0.95


def default_rollouts(protocol: str, max_turns: int) -> int:
    """Rollouts per problem the protocol's estimate needs: ``k // max_turns`` multi-turn rollouts; for 1@3
    at least k = 3, so the single-turn 1@3 (three first turns) exists too. Single-turn 10@100 needs 100
    rollouts: ask for them (the paper samples 200)."""
    _, k, _, _ = PROTOCOLS[protocol]
    multi = max(1, k // max_turns)
    return max(multi, k) if protocol == "1@3" else multi


# ---------------------------------------------------------------------------------------------- episodes


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
        """From an :class:`~rlef.actor.episodes.EpisodeRecord`."""
        return cls(record.problem.problem_id, tuple(t.outcome.status for t in record.turns), record.rollout.final.passed)


# ---------------------------------------------------------------------------------------------- aggregation


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


# ---------------------------------------------------------------------------------------------- running


def repeated(problems: Sequence[Any], rollouts: int) -> Iterator[Any]:
    """Each problem ``rollouts`` times in a row (the runner's K in-flight slots batch the same prompt)."""
    for problem in problems:
        for _ in range(rollouts):
            yield problem


class ResumeMismatchError(RlefError):
    """An output directory holds episodes of another evaluation (other model, split or sampling)."""


#: Settings that decide what an episode means: a restart may only add episodes to a file made with these.
RESUME_KEYS = ("model", "model_fingerprint", "dataset", "split", "max_turns", "temperature", "top_p", "top_k",
               "max_new_tokens", "max_seq_len", "random_feedback", "test_set", "prompt_template")


def episode_line(record: Any) -> dict[str, Any]:
    """The compact JSON line of one finished episode in ``episodes.jsonl`` (what aggregation and the
    analyses read back: turn statuses, every turn's program, the final outcome)."""
    return {"rollout_id": record.rollout.rollout_id, "problem_id": record.problem.problem_id,
            "turns": [t.outcome.status for t in record.turns], "codes": [t.code for t in record.turns],
            "policy_version": record.turns[0].generation.policy_version,
            "final": record.rollout.final.to_builtins(), "final_code": record.turns[-1].code}


def summary_from_line(line: dict[str, Any]) -> EpisodeSummary:
    return EpisodeSummary(line["problem_id"], tuple(line["turns"]), bool(line["final"]["passed"]))


def read_episode_lines(path: Path) -> list[dict[str, Any]]:
    """Every whole line of an append-only episodes file (a line torn by a kill mid-write is dropped: that
    episode is simply run again)."""
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            log.warning("%s: dropping a torn line (%d chars)", path, len(raw))
            continue
        if isinstance(line, dict) and "problem_id" in line and "turns" in line:
            lines.append(line)
    return lines


def remaining(problems: Sequence[Any], done: Sequence[dict[str, Any]], rollouts: int) -> list[Any]:
    """The episodes still to run, in problem order: ``rollouts`` minus what ``done`` holds, per problem."""
    have = Counter(line["problem_id"] for line in done)
    return [p for p in problems for _ in range(max(0, rollouts - have[p.problem_id]))]


class Progress:
    """Logs progress with a rate and an ETA every ``every_s`` seconds (the rich bar only shows on a
    terminal; launchers and SLURM logs get these lines)."""

    def __init__(self, total: int, done: int = 0, every_s: float = 30.0, label: str = "evaluate"):
        self.total, self.done, self.every_s, self.label = total, done, every_s, label
        self._start_done = done
        self._t0 = self._last = time.monotonic()

    def eta_s(self) -> float | None:
        rate = (self.done - self._start_done) / max(1e-9, time.monotonic() - self._t0)
        return (self.total - self.done) / rate if rate > 0 else None

    def line(self) -> str:
        eta = self.eta_s()
        rate = (self.done - self._start_done) / max(1e-9, time.monotonic() - self._t0)
        return (f"{self.label}: {self.done}/{self.total} episodes, {rate:.2f}/s, ETA "
                f"{'unknown' if eta is None else f'{eta:.0f} s'}")

    def advance(self) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done == self.total:
            self._last = now
            log.info("%s", self.line())


class EpisodesSink:
    """Appends each finished episode to the episodes file at once (flushed: a kill loses at most the
    episodes in flight) and keeps its summary; advances the progress bar and the ETA log."""

    def __init__(self, path: Path | None, progress: Any = None, task: Any = None, eta: Progress | None = None):
        self.episodes: list[EpisodeSummary] = []
        self.lines: list[dict[str, Any]] = []
        self._file = open(path, "a", encoding="utf-8") if path is not None else None
        self.progress = progress
        self.task = task
        self.eta = eta

    async def send(self, record: Any) -> None:
        line = episode_line(record)
        self.episodes.append(summary_from_line(line))
        self.lines.append(line)
        if self._file is not None:
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()
        if self.progress is not None:
            self.progress.advance(self.task)
        if self.eta is not None:
            self.eta.advance()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def model_fingerprint(path: str | Path) -> str | None:
    """Names, sizes and modification times of a checkpoint directory's files (None when it is not a directory).

    The path alone does not name the weights: a resumed run exports its new final checkpoint to the same
    ``final-model`` directory, and a resumed evaluation kept the old checkpoint's episodes (seen: the 80-batch
    evaluation of a run reported its 40-batch numbers). Re-writing identical weights changes the fingerprint
    too; that costs a re-run, never a wrong number. Hashing the contents would cost a minute per 16 GB."""
    import hashlib

    root = Path(path)
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for f in sorted(p for p in root.iterdir() if p.is_file()):
        st = f.stat()
        digest.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def evaluation_settings(config: Any, *, split: str, limit: int | None, protocol: str, rollouts: int) -> dict[str, Any]:
    """What an evaluation's report records about how it sampled and scored."""
    s = config.actor.sampling
    return {
        "model": config.model.path, "model_fingerprint": model_fingerprint(config.model.path),
        "dataset": config.data.dataset, "split": split, "limit": limit,
        "protocol": protocol, "rollouts_per_problem": rollouts, "max_turns": config.actor.max_turns,
        "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "max_new_tokens": s.max_new_tokens,
        "max_seq_len": config.model.max_seq_len, "random_feedback": config.actor.random_feedback,
        "prompt_template": config.prompt.template,
        "test_set": "all", "selection": "public-tests-first", "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "confidence": CONFIDENCE, "seed": config.run.seed,
    }


async def run_episodes(
    config: Any, *, backend: Any, executor: Any, tokenizer: Any, problems: Sequence[Any], todo: Sequence[Any],
    sink: Any, instance: str, actor_id: str = "evaluate", seed: int | None = None, stop: Any = None,
) -> Any:
    """Run one episode per entry of ``todo`` (problems, repeated) with the actor's runner; returns the runner
    (its ``skipped`` and ``errors``). Closes nothing: the in-training evaluator reuses backend and executor."""
    from rlef.actor.episodes import EpisodeRunner

    runner = EpisodeRunner(
        config, backend=backend, executor=executor, tokenizer=tokenizer, problems=iter(todo), sink=sink,
        actor_id=actor_id, instance=instance, feedback_problems=problems,
        seed=config.run.seed if seed is None else seed, final_test_set="all",
    )
    await runner.run(len(todo), stop)
    return runner


def _check_resumable(output: Path, settings: dict[str, Any], fresh: bool) -> None:
    """Refuse to add episodes to a file made by another evaluation; remember this one's settings."""
    path = output / "evaluation-settings.json"
    episodes = output / "episodes.jsonl"
    wanted = {k: settings.get(k) for k in RESUME_KEYS}
    if fresh:
        episodes.unlink(missing_ok=True)
    elif episodes.exists() and path.exists():
        stored = json.loads(path.read_text())
        diff = {k: (stored.get(k), wanted[k]) for k in RESUME_KEYS if stored.get(k) != wanted[k]}
        if diff:
            named = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ResumeMismatchError(
                f"{episodes} holds episodes of another evaluation ({named}): pass another --output or --fresh")
    output.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=2) + "\n")


async def run_evaluation(
    config: Any, *, rollouts: int, protocol: str, output: Path, split: str, limit: int | None = None,
    backend: Any = None, fresh: bool = False,
) -> EvaluationReport:
    """Run ``rollouts`` episodes of every problem of ``split`` (first ``limit``) and write
    ``output/evaluation.{json,md}``; ``output/episodes.jsonl`` is append-only and a restart with the same
    settings runs only the episodes it lacks (``fresh``: start over). ``config.actor.sampling`` is what
    samples; ``backend`` (a GenerationBackend, closed here) replaces the one ``make_backend(config)`` would load."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar
    from transformers import AutoTokenizer

    from rlef.actor.backends import make_backend
    from rlef.actor.main import new_instance_nonce
    from rlef.common.data.loaders import load_problems
    from rlef.common.protocol.execution_client import ExecutionClient
    from rlef.common.protocol.transport import Transport

    data = config.data
    problems = load_problems(data.dataset, data.path, split, limit, generated=True)
    settings = evaluation_settings(config, split=split, limit=limit, protocol=protocol, rollouts=rollouts)
    _check_resumable(output, settings, fresh)
    episodes_path = output / "episodes.jsonl"
    ids = {p.problem_id for p in problems}
    done = [line for line in read_episode_lines(episodes_path) if line["problem_id"] in ids]
    todo = remaining(problems, done, rollouts)
    # Kept per problem, at most `rollouts` each (a file may hold more when -R was larger before).
    kept: list[dict[str, Any]] = []
    per: Counter[str] = Counter()
    for line in done:
        if per[line["problem_id"]] < rollouts:
            per[line["problem_id"]] += 1
            kept.append(line)
    if kept:
        log.info("resuming %s: %d episodes done, %d to run", episodes_path, len(kept), len(todo))
    total = len(problems) * rollouts
    started = time.perf_counter()
    skipped: dict[str, str] = {}
    errors: list[str] = []
    episode_seconds = 0.0
    errored: list[tuple[str, str]] = []  # episodes dropped for infrastructure failures: not in episodes.jsonl, rerun on resume
    sink = EpisodesSink(episodes_path)
    if todo:
        tokenizer = AutoTokenizer.from_pretrained(config.model.path)
        # A resumed run samples with another seed: the same seed would replay the first episodes' draws.
        seed = config.run.seed + 1_000_003 * len(kept)
        backend = backend if backend is not None else make_backend(config, seed=seed)
        instance = new_instance_nonce()
        atransport = Transport(config.transport, asyncio=True)
        endpoints = config.endpoints
        executor = ExecutionClient(atransport, endpoints.broker(endpoints.broker_frontend_port),
                                   client_id=f"evaluate-{instance}", timeout_s=config.actor.execution_timeout_s,
                                   executor=config.executor)
        columns = (TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        try:
            with Bar(*columns, transient=False) as bar:
                sink.progress, sink.task = bar, bar.add_task("episodes", total=total, completed=len(kept))
                sink.eta = Progress(total, len(kept))
                episodes_started = time.perf_counter()
                runner = await run_episodes(config, backend=backend, executor=executor, tokenizer=tokenizer,
                                            problems=problems, todo=todo, sink=sink, instance=instance, seed=seed)
            episode_seconds = time.perf_counter() - episodes_started
            skipped = {pid: reason for pid, reason in runner.skipped}  # one reason per problem (it repeats R times)
            errors = list(runner.errors)
            errored = list(runner.dropped)
        finally:
            sink.close()
            executor.close()
            await backend.close()
            atransport.close()
    elif backend is not None:
        await backend.close()
    settings["seconds"] = round(time.perf_counter() - started, 3)
    settings["episode_seconds"] = round(episode_seconds, 3)  # running episodes only (no model load): throughput
    settings["resumed_episodes"] = len(kept)
    episodes = [summary_from_line(line) for line in kept] + sink.episodes
    report = aggregate(settings, [p.problem_id for p in problems], episodes, skipped.items(), errors,
                       seed=config.run.seed, errored=errored)
    (output / "evaluation.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (output / "evaluation.md").write_text(report.markdown())
    return report
