"""Sampled episodes: the readable side of a run, written by every actor and read by `rlef rollouts`, `rlef report`
and the trackers.

Layout: ``RUN_DIR/samples/<actor id>/episodes-<unix ns>.jsonl``, one JSON object per line::

    {"schema": "rlef.episode_sample/1", "time": 1767000000.2, "rollout_id": "actor-0-66a1b2-17", "actor_id": "actor-0",
     "problem_id": "p3", "random_feedback": false, "rewards": [-0.2, 1.0], "timings": {"total_s": 4.1, ...},
     "final": {"passed": true, "status": "pass", "tests_passed": 5, "tests_total": 5},
     "turns": [{"turn": 1, "policy_version": 3, "finish_reason": "stop", "prompt_text": "...", "response_text": "...",
                "code": "..." | null, "status": "wrong_answer", "public_passed": 0, "public_total": 2,
                "feedback": "..." | null, "prompt_tokens": 212, "response_tokens": 80}, ...]}

``feedback`` of turn t is the user message made from its result, i.e. exactly the next turn's prompt (null on
the last turn). Bounded on disk: :class:`SampleWriter` rotates to a new file after ``file_bytes`` and deletes
the oldest files of its directory once the total would pass ``max_bytes`` (files left by an earlier start of the
same actor count too), so a long run keeps the newest episodes and never more than the cap. Readers skip torn or
malformed lines, so a crash mid-write costs one episode.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, IO

log = logging.getLogger(__name__)

SCHEMA = "rlef.episode_sample/1"
TRUNCATED = "\n[... cut: {n} more characters]"


def samples_dir(run_dir: str | os.PathLike, actor_id: str | None = None) -> Path:
    """``RUN_DIR/samples`` or one actor's directory in it."""
    root = Path(run_dir) / "samples"
    return root / actor_id if actor_id else root


def clip_text(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters, with a marker saying how much was cut (None stays None)."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + TRUNCATED.format(n=len(text) - limit)


class SampleWriter:
    """Append sample lines to rotating files in ``directory``, never holding more than ``max_bytes`` there."""

    def __init__(self, directory: str | os.PathLike, *, max_bytes: int, file_bytes: int) -> None:
        if file_bytes > max_bytes:
            file_bytes = max_bytes
        self.directory = Path(directory)
        self.max_bytes, self.file_bytes = max_bytes, file_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        # Oldest first: names carry a nanosecond timestamp, so name order is creation order.
        self._files: list[list[Any]] = [[p, p.stat().st_size] for p in sorted(self.directory.glob("episodes-*.jsonl"))]
        self._fh: IO[bytes] | None = None
        self.written = 0
        self.deleted = 0

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self._files)

    def write(self, sample: dict[str, Any]) -> int:
        """Append one sample; returns the bytes written. Raises OSError (disk full, permissions) to the caller."""
        line = (json.dumps(sample, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        if self._fh is None or self._files[-1][1] + len(line) > self.file_bytes:
            self._rotate()
        self._make_room(len(line))
        assert self._fh is not None
        self._fh.write(line)
        self._fh.flush()
        self._files[-1][1] += len(line)
        self.written += 1
        return len(line)

    def _rotate(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        path = self.directory / f"episodes-{time.time_ns():020d}.jsonl"
        self._fh = open(path, "ab")
        self._files.append([path, 0])

    def _make_room(self, incoming: int) -> None:
        # Never delete the file being written: a single file is bounded by file_bytes <= max_bytes anyway.
        while len(self._files) > 1 and self.total_bytes + incoming > self.max_bytes:
            path, _ = self._files.pop(0)
            path.unlink(missing_ok=True)
            self.deleted += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# ---------------------------------------------------------------- reading


def _norm_code(code: str | None) -> str | None:
    return None if code is None else "\n".join(line.rstrip() for line in code.strip().splitlines())


@dataclass
class EpisodeSample:
    """One parsed sample line, with the classifications the viewer and the report filter on."""

    data: dict[str, Any]
    path: Path | None = None
    turns: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.turns = list(self.data.get("turns") or [])

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    @property
    def final_status(self) -> str:
        return str((self.data.get("final") or {}).get("status", "unknown"))

    @property
    def solved(self) -> bool:
        return bool((self.data.get("final") or {}).get("passed"))

    @property
    def versions(self) -> tuple[int, int]:
        vs = [int(t.get("policy_version", -1)) for t in self.turns] or [-1]
        return min(vs), max(vs)

    @property
    def fixed_by_feedback(self) -> bool:
        """Failed at turn 1, solved at a later turn (after seeing feedback)."""
        return len(self.turns) >= 2 and self.turns[0].get("status") != "pass" and self.solved

    @property
    def ignored_feedback(self) -> bool:
        """Wrote the same program again right after being shown that it failed."""
        codes = [_norm_code(t.get("code")) for t in self.turns]
        return any(a is not None and a == b for a, b in zip(codes, codes[1:]))

    @property
    def never_code(self) -> bool:
        return bool(self.turns) and all(t.get("code") is None for t in self.turns)


def read_samples(run_dir: str | os.PathLike) -> list[EpisodeSample]:
    """Every sample of a run, oldest first (by the time it was written); malformed lines skipped and logged once."""
    out: list[EpisodeSample] = []
    bad = 0
    for path in sorted(samples_dir(run_dir).glob("*/episodes-*.jsonl")):
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    sample = parse_sample_line(line, path)
                    if sample is None:
                        bad += line.strip() != ""
                    else:
                        out.append(sample)
        except OSError as exc:  # rotated away while reading: the rest is still worth showing
            log.warning("%s: %s", path, exc)
    if bad:
        log.warning("%s: skipped %d malformed sample line(s)", samples_dir(run_dir), bad)
    out.sort(key=lambda s: float(s.get("time", 0.0)))
    return out


def parse_sample_line(line: str, path: Path | None = None) -> EpisodeSample | None:
    """One line -> sample, or None when it is blank, torn or of another schema."""
    if not line.strip():
        return None
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA or not isinstance(raw.get("turns"), list):
        return None
    return EpisodeSample(raw, path)


@dataclass
class SampleFilter:
    """What `rlef rollouts` selects; every criterion given must hold."""

    problems: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    actors: tuple[str, ...] = ()
    min_version: int | None = None
    max_version: int | None = None
    fixed_by_feedback: bool = False
    ignored_feedback: bool = False
    never_code: bool = False

    def __call__(self, s: EpisodeSample) -> bool:
        lo, hi = s.versions
        return (
            (not self.problems or str(s.get("problem_id")) in self.problems)
            and (not self.statuses or s.final_status in self.statuses or ("solved" if s.solved else "unsolved") in self.statuses)
            and (not self.actors or str(s.get("actor_id")) in self.actors)
            and (self.min_version is None or lo >= self.min_version)
            and (self.max_version is None or hi <= self.max_version)
            and (not self.fixed_by_feedback or s.fixed_by_feedback)
            and (not self.ignored_feedback or s.ignored_feedback)
            and (not self.never_code or s.never_code)
        )


def parse_version_range(text: str) -> tuple[int | None, int | None]:
    """``"3:7"`` -> (3, 7); ``"3:"`` / ``":7"`` open-ended; ``"5"`` -> (5, 5)."""
    from rlef.common.errors import ConfigError

    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            return int(lo), int(lo)
        return (int(lo) if lo.strip() else None), (int(hi) if hi.strip() else None)
    except ValueError as exc:
        raise ConfigError(f"--versions {text!r}: expected A:B, A:, :B or N with integer policy versions") from exc


def select(samples: Iterable[EpisodeSample], keep: SampleFilter) -> Iterator[EpisodeSample]:
    return (s for s in samples if keep(s))
