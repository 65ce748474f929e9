"""The episodes file of an evaluation, ``episodes.jsonl``, and resuming from it.

Append-only: each episode is flushed as it finishes (:class:`EpisodesSink`), with every turn's program for
the chrF analysis (:func:`episode_line`); a line torn by a kill is dropped on reading. A restart with the
same settings (:data:`RESUME_KEYS`, kept in ``evaluation-settings.json``) runs only the episodes each problem
lacks (:func:`remaining`), and refuses a file of another evaluation (:class:`ResumeMismatchError`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from rlef.actor.evaluation_scores import EpisodeSummary
from rlef.common.errors import RlefError

log = logging.getLogger(__name__)


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
