"""CodeContests in its Hugging Face layout (``data.dataset: codecontests``, and the bundled ``sample`` set):
the files of a split, and one Problem per record (problems lacking public or private tests are dropped and
counted; only Python 3 solutions are kept; a zero time or memory limit means "not given")."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlef.common.data.problems import Problem
from rlef.common.data.records import LoadedDataset, read_records
from rlef.common.errors import DataError
from rlef.common.protocol.messages import TestCase

PYTHON3 = 3  # CodeContests language code (1 = PYTHON, i.e. Python 2; 2 = CPP; 4 = JAVA)


def codecontests_files(path: Path, split: str) -> list[Path]:
    """The files of ``split`` under ``path`` (a directory or one file). Raises DataError naming the path."""
    if not path.exists():
        raise DataError(f"dataset path {str(path)!r} does not exist")
    if path.is_file():
        return [path]
    for base in (path, path / "data"):
        for pattern in (f"{split}-*.parquet", f"{split}.parquet", f"{split}.jsonl", f"{split}.jsonl.gz",
                        f"{split}-*.jsonl", f"{split}-*.jsonl.gz"):
            found = sorted(base.glob(pattern)) if base.is_dir() else []
            if found:
                return found
    raise DataError(
        f"no files for split {split!r} under {str(path)!r} (looked for {split}-*.parquet, {split}.jsonl(.gz), "
        f"{split}-*.jsonl(.gz) in it and in its data/ folder)"
    )


def _tests(row: dict[str, Any], key: str) -> list[TestCase]:
    value = row.get(key)
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ValueError(f"{key} is {type(value).__name__}, expected {{input: [...], output: [...]}}")
    inputs, outputs = value.get("input") or [], value.get("output") or []
    if len(inputs) != len(outputs):
        raise ValueError(f"{key} has {len(inputs)} inputs and {len(outputs)} outputs")
    for i, (a, b) in enumerate(zip(inputs, outputs)):
        if not isinstance(a, str) or not isinstance(b, str):
            raise ValueError(f"{key}[{i}] input/output must be strings")
    return [TestCase(input=a, output=b) for a, b in zip(inputs, outputs)]


def _solutions(row: dict[str, Any], key: str) -> list[str]:
    value = row.get(key)
    if not value:
        return []
    if not isinstance(value, dict):
        raise ValueError(f"{key} is {type(value).__name__}, expected {{language: [...], solution: [...]}}")
    langs, sols = value.get("language") or [], value.get("solution") or []
    if len(langs) != len(sols):
        raise ValueError(f"{key} has {len(langs)} languages and {len(sols)} solutions")
    return [s for lang, s in zip(langs, sols) if lang == PYTHON3 and isinstance(s, str)]


def _time_limit(row: dict[str, Any]) -> float | None:
    tl = row.get("time_limit")
    if tl is None:
        return None
    if not isinstance(tl, dict):
        raise ValueError(f"time_limit is {type(tl).__name__}, expected {{seconds, nanos}}")
    seconds = (tl.get("seconds") or 0) + (tl.get("nanos") or 0) / 1e9
    if seconds < 0:
        raise ValueError(f"negative time_limit {seconds}")
    return float(seconds) if seconds > 0 else None


def _problem_from_row(row: dict[str, Any], dataset: str, split: str) -> Problem | str:
    """The Problem of one CodeContests record, or the reason it is dropped. Raises ValueError if malformed."""
    if not isinstance(row, dict):
        raise ValueError(f"record is {type(row).__name__}, expected an object")
    name = row.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("missing or empty 'name'")
    description = row.get("description")
    if not isinstance(description, str):
        raise ValueError("missing 'description'")
    public, private = _tests(row, "public_tests"), _tests(row, "private_tests")
    generated = _tests(row, "generated_tests")
    if not public:
        return "no public tests"
    if not private:
        return "no private tests"
    memory = row.get("memory_limit_bytes")
    if memory is not None and (not isinstance(memory, int) or memory < 0):
        raise ValueError(f"memory_limit_bytes must be a non-negative integer, got {memory!r}")
    return Problem(
        problem_id=name[:256],
        dataset=dataset,  # type: ignore[arg-type]
        split=split,
        description=description,
        public_tests=public,
        private_tests=private,
        generated_tests=generated,
        kind="stdio",
        time_limit_s=_time_limit(row),
        memory_limit_bytes=memory or None,
        solutions=_solutions(row, "solutions"),
        incorrect_solutions=_solutions(row, "incorrect_solutions"),
    )


def load_codecontests(path: Path, split: str, *, dataset: str, generated: bool) -> LoadedDataset:
    files = codecontests_files(path, split)
    problems: list[Problem] = []
    by_id: dict[str, Problem] = {}
    dropped: Counter = Counter()
    for file in files:
        for index, row in read_records(file, frozenset() if generated else frozenset({"generated_tests"})):
            try:
                got = _problem_from_row(row, dataset, split)
            except (ValueError, TypeError) as exc:
                name = row.get("name") if isinstance(row, dict) else None
                raise DataError(f"{file}: record {index}{f' ({name!r})' if name else ''}: {exc}") from exc
            if isinstance(got, str):
                dropped[got] += 1
                continue
            if got.problem_id in by_id:  # CodeContests names are unique; keep ids unique regardless
                k = 2
                while f"{got.problem_id}#{k}" in by_id:
                    k += 1
                got = replace(got, problem_id=f"{got.problem_id}#{k}")
            by_id[got.problem_id] = got
            problems.append(got)
    return LoadedDataset(dataset, split, str(path), [str(f) for f in files], problems, dropped, by_id, generated)
