"""The dataset registry every role calls: :func:`load_problems`, :func:`find_problem` (executors resolve a
TestsRef with it), :func:`load_dataset` (one split with its drop statistics, cached) and
:func:`inspect_dataset` (``rlef data inspect``). What each dataset is: :mod:`rlef.common.data`."""

from __future__ import annotations

import os
import statistics
import threading
from collections import Counter
from pathlib import Path

from rlef.common.data.codecontests import load_codecontests
from rlef.common.data.evalplus import load_evalplus
from rlef.common.data.humaneval import load_humaneval
from rlef.common.data.problems import Problem
from rlef.common.data.records import LoadedDataset
from rlef.common.errors import DataError

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
DATASETS = ("codecontests", "humaneval", "sample", "humanevalplus", "mbppplus")

_CACHE: dict[tuple[str, str, str, bool], LoadedDataset] = {}
_CACHE_LOCK = threading.Lock()


def load_problems(
    dataset: str, path: str | None = None, split: str = "train", limit: int | None = None, *, generated: bool | None = None
) -> list[Problem]:
    """The problems of ``split`` (after dropping those without public or private tests), the first ``limit``.

    ``generated``: read CodeContests' generated tests (large: most of the dataset's bytes). None = for every
    split but ``train`` (training scores public + private; evaluation uses generated tests too).
    """
    loaded = load_dataset(dataset, path, split, generated=generated)
    return loaded.problems if limit is None else loaded.problems[:limit]


def find_problem(
    dataset: str, split: str, problem_id: str, path: str | None = None, *, generated: bool | None = None
) -> Problem:
    """The problem ``problem_id`` of ``split`` (executors resolve a TestsRef with it). Raises DataError."""
    loaded = load_dataset(dataset, path, split, generated=generated)
    try:
        return loaded.by_id[problem_id]
    except KeyError:
        raise DataError(f"problem {problem_id!r} not found in {dataset} split {split!r} ({loaded.source})") from None


def load_dataset(
    dataset: str, path: str | None = None, split: str = "train", *, generated: bool | None = None
) -> LoadedDataset:
    """Load (or fetch from the cache) one split, with drop statistics (``generated``: see load_problems)."""
    if generated is None:
        generated = split != "train"
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    if dataset == "codecontests" and not path:
        raise DataError("dataset codecontests needs a local path (data.path): nothing is downloaded")
    key_path = str(Path(path).resolve()) if (path and dataset in ("codecontests", "humanevalplus", "mbppplus")) else ""
    key = (dataset, key_path, split, generated)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    if dataset == "codecontests":
        loaded = load_codecontests(Path(path), split, dataset="codecontests", generated=generated)  # type: ignore[arg-type]
    elif dataset == "sample":
        loaded = load_codecontests(SAMPLE_DIR, split, dataset="sample", generated=generated)
    elif dataset in ("humanevalplus", "mbppplus"):
        file, problems = load_evalplus(dataset, path, split)
        loaded = LoadedDataset(dataset, split, str(file), [str(file)], problems, Counter(), {p.problem_id: p for p in problems})
    else:
        loaded = load_humaneval(split)
    with _CACHE_LOCK:
        _CACHE.setdefault(key, loaded)
        return _CACHE[key]


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def inspect_dataset(path: str, dataset: str | None = None, split: str = "train") -> str:
    """A human summary of one split: files, problems kept / dropped and why, tests per problem, limits.

    ``path`` is a dataset location, or the word ``sample`` / ``humaneval`` for the bundled sets. With
    ``dataset`` None it is guessed: those two words name themselves, anything else is CodeContests.
    """
    if dataset is None:
        dataset = path if path in ("sample", "humaneval") else "codecontests"
    loaded = load_dataset(dataset, None if dataset != "codecontests" else path, split)
    probs = loaded.problems
    lines = [
        f"dataset: {dataset}",
        f"split:   {split}",
        f"source:  {loaded.source}",
    ]
    if loaded.files:
        lines.append(f"files:   {len(loaded.files)} ({', '.join(os.path.basename(f) for f in loaded.files[:4])}{', ...' if len(loaded.files) > 4 else ''})")
    total = len(probs) + sum(loaded.dropped.values())
    lines.append(f"problems: {total} read, {len(probs)} kept, {sum(loaded.dropped.values())} dropped")
    for reason, n in sorted(loaded.dropped.items()):
        lines.append(f"  dropped ({reason}): {n}")
    if probs:
        kinds = Counter(p.kind for p in probs)
        lines.append("kinds:   " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
        for name, get in (
            ("public tests", lambda p: len(p.public_tests)),
            ("private tests", lambda p: len(p.private_tests)),
            *([("generated tests", lambda p: len(p.generated_tests))] if loaded.generated_read else []),
            ("python3 solutions", lambda p: len(p.solutions)),
            ("incorrect python3 solutions", lambda p: len(p.incorrect_solutions)),
        ):
            lines.append(f"{name + ' per problem:':<44}{_spread([get(p) for p in probs])}")
        if not loaded.generated_read:
            lines.append(f"{'generated tests per problem:':<44}not read for split {split!r} (training uses public + private)")
        times = [p.time_limit_s for p in probs if p.time_limit_s is not None]
        mems = [p.memory_limit_bytes / (1 << 20) for p in probs if p.memory_limit_bytes is not None]
        lines.append(f"{'time limit (s):':<44}{_spread(times) if times else 'none given'}"
                     f"{f'; {len(probs) - len(times)} without' if times and len(times) < len(probs) else ''}")
        lines.append(f"{'memory limit (MiB):':<44}{_spread(mems) if mems else 'none given'}"
                     f"{f'; {len(probs) - len(mems)} without' if mems and len(mems) < len(probs) else ''}")
        lines.append(f"{'description chars:':<44}{_spread([len(p.description) for p in probs])}")
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    fmt = (lambda v: f"{v:g}")
    return f"min {fmt(min(values))}, median {fmt(statistics.median(values))}, max {fmt(max(values))}, total {fmt(sum(values))}"
