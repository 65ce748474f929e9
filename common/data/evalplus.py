"""HumanEval+ and MBPP+ from the user's EvalPlus release files (``data.dataset: humanevalplus`` / ``mbppplus``).

Nothing is downloaded: ``data.path`` is the release file (``HumanEvalPlus-v0.1.10.jsonl(.gz)``,
``MbppPlus-v0.2.0.jsonl(.gz)``, or any jsonl in that layout) or a directory holding one whose name starts
with ``HumanEvalPlus`` / ``MbppPlus``. A missing file is a DataError naming the path.

The published layout, one task per line: ``task_id``, ``prompt``, ``entry_point``, ``canonical_solution``,
``base_input`` and ``plus_input`` (lists of argument lists), ``atol``; optional ``test`` (HumanEval+: the
original ``check(candidate)``), ``assertion`` (MBPP+: the original asserts), ``contract``. EvalPlus
computes expected outputs by running the canonical solution; so do we, inside each test (below).

Problems are ``function`` problems (:mod:`rlef.common.data.problems`: each test is a statement run after the
program), with the paper's templates (``prompt.template: humaneval`` / ``mbpp``, :mod:`rlef.common.text.prompts`):

- **public tests** (run every turn, shown as ``- Failure:`` / ``- Success:`` bullets): HumanEval+: the first
  assert of the original ``check`` (as :func:`rlef.common.data.humaneval.split_check` makes them, like ``humaneval``);
  MBPP+: the asserts in the prompt's docstring (else the first ``assertion``), which the MBPP template also
  lists in the first prompt;
- **private tests** (the final score): the other original asserts, then one differential test per
  ``base_input`` and ``plus_input`` entry: the canonical solution runs in its own namespace on a deep copy of
  the arguments and the candidate's result must equal its result (floats, and lists/tuples of floats:
  ``math.isclose`` with ``rel_tol=1e-7, abs_tol=atol``). Inputs are used as JSON decodes them; EvalPlus
  turns some MBPP+ inputs into tuples or sets with a per-task table that we do not replicate, so a test
  whose reference solution raises on the decoded input checks nothing (it passes), rather than failing
  every program.

``description`` is the HumanEval+ prompt (the response is pre-filled with it, as in the paper) or the
MBPP+ task text without its asserts; ``solutions`` holds the canonical solution (reference programs).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from rlef.common.data.humaneval import split_check
from rlef.common.data.problems import Problem
from rlef.common.data.records import jsonl_records
from rlef.common.errors import DataError
from rlef.common.protocol.messages import TestCase

EVALPLUS_DATASETS = {"humanevalplus": "HumanEvalPlus", "mbppplus": "MbppPlus"}
REQUIRED = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input")

# Prepended to every differential test: names a decoded JSON float may print as, and the comparison.
_PRELUDE = '''import copy as _rlef_copy, math as _rlef_math
inf, nan = float("inf"), float("nan")
def _rlef_same(got, expected, atol):
    if isinstance(got, float) or isinstance(expected, float):
        try:
            return got == expected or _rlef_math.isclose(got, expected, rel_tol=1e-7, abs_tol=atol) or (got != got and expected != expected)
        except TypeError:
            return False
    if isinstance(got, (list, tuple)) and isinstance(expected, (list, tuple)) and type(got) is type(expected):
        return len(got) == len(expected) and all(_rlef_same(a, b, atol) for a, b in zip(got, expected))
    return got == expected
'''


def evalplus_file(dataset: str, path: str | None) -> Path:
    """The release file of ``dataset`` at ``path`` (a file, or a directory holding one). Raises DataError."""
    stem = EVALPLUS_DATASETS[dataset]
    if not path:
        raise DataError(f"dataset {dataset} needs data.path: the EvalPlus release file ({stem}-*.jsonl.gz); nothing is downloaded")
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        found = sorted(f for f in p.iterdir() if f.name.startswith(stem) and f.name.endswith((".jsonl", ".jsonl.gz")))
        if found:
            return found[-1]
        raise DataError(f"no {stem}*.jsonl(.gz) in {str(p)!r} (data.path of dataset {dataset}): put the EvalPlus release file there")
    raise DataError(f"EvalPlus file {str(p)!r} (data.path of dataset {dataset}) does not exist: download {stem}-*.jsonl.gz "
                    "from the EvalPlus releases and point data.path at it")


def differential_test(entry_point: str, reference: str, args: list[Any], atol: float) -> str:
    """One private test: the candidate's result on ``args`` must equal the reference solution's."""
    if not isinstance(args, list):
        raise ValueError(f"an input must be a list of arguments, got {type(args).__name__}")
    literal = repr(args)
    ast.parse(literal)  # a literal Python can read back (JSON values are)
    return (
        f"candidate = {entry_point}\n{_PRELUDE}"
        f"_rlef_ns = {{}}\nexec({reference!r}, _rlef_ns)\n_rlef_args = {literal}\n"
        "try:\n"
        f"    _rlef_expected = _rlef_ns[{entry_point!r}](*_rlef_copy.deepcopy(_rlef_args))\n"
        "    _rlef_checked = True\n"
        "except Exception:\n"
        "    _rlef_checked = False  # the reference fails on the JSON-decoded input: nothing to check\n"
        "_rlef_got = candidate(*_rlef_args) if _rlef_checked else None\n"
        f"assert not _rlef_checked or _rlef_same(_rlef_got, _rlef_expected, {float(atol)!r}), "
        f"f'{entry_point}(...) returned {{_rlef_got!r}}, expected {{_rlef_expected!r}}'\n"
    )


def _docstring_parts(prompt: str) -> tuple[str, list[str]]:
    """MBPP+ prompt -> (task text without asserts, the assert lines)."""
    text = prompt.strip()
    for quote in ('"""', "'''"):
        if text.startswith(quote) and text.endswith(quote) and len(text) >= 6:
            text = text[3:-3]
    lines = text.strip("\n").split("\n")
    asserts = [ln.strip() for ln in lines if ln.strip().startswith("assert ")]
    task = "\n".join(ln for ln in lines if not ln.strip().startswith("assert ")).strip()
    return task, asserts


def _assertion_lines(value: Any) -> list[str]:
    if not value:
        return []
    text = "\n".join(value) if isinstance(value, list) else str(value)
    return [ln.strip() for ln in text.split("\n") if ln.strip().startswith("assert ")]


def _problem(dataset: str, split: str, row: dict[str, Any]) -> Problem:
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)} (the EvalPlus layout has {', '.join(REQUIRED)})")
    task_id, prompt, entry = row["task_id"], row["prompt"], row["entry_point"]
    atol = float(row.get("atol") or 0.0)
    inputs = list(row["base_input"] or []) + list(row["plus_input"] or [])
    if dataset == "humanevalplus":
        reference = prompt + row["canonical_solution"]
        original = split_check(row["test"], entry) if row.get("test") else []
        description, prefill = prompt, "```python\n" + prompt
        public_count = 1
    else:
        reference = row["canonical_solution"]
        description, shown = _docstring_parts(prompt)
        asserts = _assertion_lines(row.get("assertion"))
        public = shown or asserts[:1]
        original = [a + "\n" for a in public + [a for a in asserts if a not in public]]
        prefill = ""
        public_count = max(1, len(public))
    differential = [differential_test(entry, reference, args, atol) for args in inputs]
    tests = [TestCase(input=s, output="") for s in original + differential]
    if not tests:
        raise ValueError("no tests: neither original asserts nor inputs")
    return Problem(
        problem_id=task_id, dataset=dataset, split=split, description=description,  # type: ignore[arg-type]
        public_tests=tests[:public_count], private_tests=tests[public_count:], kind="function",
        solutions=[reference], prefill=prefill, entry_point=entry,
    )


def load_evalplus(dataset: str, path: str | None, split: str) -> tuple[Path, list[Problem]]:
    """Every task of the release file as a Problem (one split: any split name returns them all)."""
    file = evalplus_file(dataset, path)
    problems = []
    for index, row in list(jsonl_records(file)):  # every line parses before any becomes a Problem
        try:
            if not isinstance(row, dict):
                raise ValueError(f"record is {type(row).__name__}, expected an object")
            problems.append(_problem(dataset, split, row))
        except (ValueError, TypeError, KeyError, SyntaxError) as exc:
            name = row.get("task_id") if isinstance(row, dict) else None
            raise DataError(f"{file}: line {index + 1}{f' ({name!r})' if name else ''}: {exc}") from exc
    return file, problems
