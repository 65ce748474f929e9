"""The paper's evaluation protocol (rlef-method.md, "Evaluation" and "Analyses") as ``rlef evaluate``.

Runs R episodes per problem of a split with the actor's own :class:`~rlef.actor.episodes.EpisodeRunner`
(no learner, no weight updates: the model is ``model.path``) against the executor broker, scores each
episode's last program on the problem's test set ``all`` (public + private + CodeContests' generated tests
when the problem has them, as the paper's evaluation scores do) and aggregates them with
:func:`rlef.actor.evaluation_scores.aggregate` (n@k estimates with bootstrap CIs, per-turn error categories).

Resumable: ``episodes.jsonl`` is append-only and a restart with the same settings runs only the episodes
each problem lacks (:mod:`rlef.actor.evaluation_episodes`). :func:`run_episodes` is the core the
in-training evaluator (:mod:`rlef.actor.evaluator`) reuses.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import Any

from rlef.actor.evaluation_episodes import EpisodesSink, Progress, _check_resumable, read_episode_lines, remaining, summary_from_line
from rlef.actor.evaluation_scores import BOOTSTRAP_RESAMPLES, CONFIDENCE, EvaluationReport, aggregate

log = logging.getLogger(__name__)

# The paper's protocols: (n, k, temperature, top_p).
PROTOCOLS: dict[str, tuple[int, int, float, float]] = {
    "1@3": (1, 3, 0.2, 0.95),
    "10@100": (10, 100, 1.0, 0.95),
}


def default_rollouts(protocol: str, max_turns: int) -> int:
    """Rollouts per problem the protocol's estimate needs: ``k // max_turns`` multi-turn rollouts; for 1@3
    at least k = 3, so the single-turn 1@3 (three first turns) exists too. Single-turn 10@100 needs 100
    rollouts: ask for them (the paper samples 200)."""
    _, k, _, _ = PROTOCOLS[protocol]
    multi = max(1, k // max_turns)
    return max(multi, k) if protocol == "1@3" else multi


def repeated(problems: Sequence[Any], rollouts: int) -> Iterator[Any]:
    """Each problem ``rollouts`` times in a row (the runner's K in-flight slots batch the same prompt)."""
    for problem in problems:
        for _ in range(rollouts):
            yield problem


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
