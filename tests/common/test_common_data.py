"""Dataset loaders: CodeContests HF layout (parquet shards / jsonl.gz written here), HumanEval, the sample set.

Reference solutions run for real under the system Python (plain subprocess; the executor tests re-verify
through nsjail), judged by an independent implementation of the CodeContests output comparison.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlef.common.cli import main as rlef_main
from rlef.common.data.humaneval import split_check
from rlef.common.data.loaders import clear_cache, find_problem, inspect_dataset, load_dataset, load_problems
from rlef.common.errors import DataError
from rlef.common.data.problems import Problem

SYSTEM_PYTHON = "/usr/bin/python3"


def _tokens_equal(expected: str, got: str) -> bool:
    """CodeContests' comparison (rlef-method.md): lower-cased whitespace tokens, numbers within 1e-5."""
    a, b = expected.lower().split(), got.lower().split()
    if a == b:
        return True
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        try:
            if abs(float(x) - float(y)) >= 1e-5:
                return False
        except ValueError:
            return False
    return True


def test_reference_comparison_matches_the_papers_examples():
    assert _tokens_equal("abc DEF", "abc def")
    assert _tokens_equal("abc 123", "abc 123.000001")
    assert not _tokens_equal("abc 123", "abc 123.1")
    assert not _tokens_equal("abc def", "abc def 123")


def _run(problem: Problem, code: str, stdin: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", problem.program(code)], input=stdin, capture_output=True, text=True, timeout=20
    )
    return done.returncode, done.stdout, done.stderr


def _passes(problem: Problem, code: str, test) -> bool:
    rc, out, _ = _run(problem, code, test.input)
    return rc == 0 and _tokens_equal(test.output, out) if problem.kind == "stdio" else rc == 0 and out == test.output


# ---------------------------------------------------------------- the bundled sample set


def test_sample_set_shape():
    splits = {s: load_problems("sample", split=s) for s in ("train", "valid", "test")}
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [24, 6, 6]
    ids = [p.problem_id for ps in splits.values() for p in ps]
    assert len(set(ids)) == len(ids) >= 30
    for split, problems in splits.items():
        for p in problems:
            assert p.dataset == "sample" and p.split == split and p.kind == "stdio"
            assert 1 <= len(p.public_tests) <= 2 and len(p.private_tests) >= 3
            assert len(p.solutions) == 1 and len(p.incorrect_solutions) == 1
            assert p.time_limit_s == 2.0 and p.memory_limit_bytes == 256 << 20
            assert "Input" in p.description and "Output" in p.description
    assert load_problems("sample", split="train", limit=5) == splits["train"][:5]


@pytest.mark.slow
def test_sample_reference_solutions_pass_and_incorrect_ones_fail():
    problems = [p for s in ("train", "valid", "test") for p in load_problems("sample", split=s)]
    jobs = [(p, p.solutions[0], t) for p in problems for t in p.public_tests + p.private_tests]
    wrong_jobs = [(p, p.incorrect_solutions[0], t) for p in problems for t in p.public_tests + p.private_tests]
    with ThreadPoolExecutor(4) as pool:
        ok = list(pool.map(lambda j: _passes(*j), jobs))
        wrong_ok = list(pool.map(lambda j: _passes(*j), wrong_jobs))
    failed = [(p.problem_id, t.input) for (p, _, t), good in zip(jobs, ok) if not good]
    assert failed == []
    still_passing = {p.problem_id for p in problems} - {p.problem_id for (p, _, _), good in zip(wrong_jobs, wrong_ok) if not good}
    assert still_passing == set(), f"incorrect solutions passing every test: {sorted(still_passing)}"


# ---------------------------------------------------------------- CodeContests Hugging Face layout

_TESTS = pa.struct([("input", pa.list_(pa.string())), ("output", pa.list_(pa.string()))])
_SOLS = pa.struct([("language", pa.list_(pa.int64())), ("solution", pa.list_(pa.string()))])
SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("description", pa.string()),
        ("public_tests", _TESTS),
        ("private_tests", _TESTS),
        ("generated_tests", _TESTS),
        ("source", pa.int64()),
        ("difficulty", pa.int64()),
        ("solutions", _SOLS),
        ("incorrect_solutions", _SOLS),
        ("cf_contest_id", pa.int64()),
        ("cf_index", pa.string()),
        ("cf_points", pa.float32()),
        ("cf_rating", pa.int64()),
        ("cf_tags", pa.list_(pa.string())),
        ("is_description_translated", pa.bool_()),
        ("untranslated_description", pa.string()),
        ("time_limit", pa.struct([("seconds", pa.int64()), ("nanos", pa.int64())])),
        ("memory_limit_bytes", pa.int64()),
        ("input_file", pa.string()),
        ("output_file", pa.string()),
    ]
)


def _row(name, public, private, generated=(), solutions=(), time_limit=(2, 0), memory=256 << 20):
    def tests(pairs):
        return {"input": [a for a, _ in pairs], "output": [b for _, b in pairs]}

    return {
        "name": name,
        "description": f"Problem {name}.",
        "public_tests": tests(public),
        "private_tests": tests(private),
        "generated_tests": tests(generated),
        "source": 2,
        "difficulty": 7,
        "solutions": {"language": [lang for lang, _ in solutions], "solution": [s for _, s in solutions]},
        "incorrect_solutions": {"language": [3], "solution": ["print(0)\n"]},
        "cf_contest_id": 1,
        "cf_index": "A",
        "cf_points": 0.0,
        "cf_rating": 800,
        "cf_tags": ["math"],
        "is_description_translated": False,
        "untranslated_description": "",
        "time_limit": None if time_limit is None else {"seconds": time_limit[0], "nanos": time_limit[1]},
        "memory_limit_bytes": memory,
        "input_file": "",
        "output_file": "",
    }


ROWS_TRAIN_0 = [
    _row("1_A. Good", [("1 2\n", "3\n")], [("2 3\n", "5\n"), ("0 0\n", "0\n")], [("9 9\n", "18\n")],
         solutions=[(1, "print sum(map(int, raw_input().split()))"), (2, "int main(){}"), (3, "print(sum(map(int, input().split())))")],
         time_limit=(1, 500_000_000)),
    _row("1_B. No public", [], [("1\n", "1\n")]),
]
ROWS_TRAIN_1 = [
    _row("2_A. No private", [("1\n", "1\n")], []),
    _row("2_B. Also good", [("x\n", "x\n")], [("y\n", "y\n")], time_limit=(0, 0), memory=0),
]


@pytest.fixture()
def hf_dir(tmp_path: Path) -> Path:
    """A CodeContests copy in exactly the Hugging Face layout: data/{split}-0000i-of-0000n.parquet."""
    data = tmp_path / "code_contests" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS_TRAIN_0, schema=SCHEMA), data / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS_TRAIN_1, schema=SCHEMA), data / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist([ROWS_TRAIN_0[0]], schema=SCHEMA), data / "valid-00000-of-00001.parquet")
    clear_cache()
    yield tmp_path / "code_contests"
    clear_cache()


def test_codecontests_parquet_layout(hf_dir: Path):
    loaded = load_dataset("codecontests", str(hf_dir), "train")
    assert [p.problem_id for p in loaded.problems] == ["1_A. Good", "2_B. Also good"]
    assert dict(loaded.dropped) == {"no public tests": 1, "no private tests": 1}
    good, other = loaded.problems
    assert good.public_tests[0].input == "1 2\n" and good.public_tests[0].output == "3\n"
    assert [t.output for t in good.private_tests] == ["5\n", "0\n"]
    assert good.generated_tests == []  # not read for train by default ...
    full = load_problems("codecontests", str(hf_dir), "train", generated=True)[0]
    assert [t.input for t in full.generated_tests] == ["9 9\n"]  # ... unless asked for
    assert [t.output for t in load_problems("codecontests", str(hf_dir), "valid")[0].generated_tests] == ["18\n"]
    assert good.solutions == ["print(sum(map(int, input().split())))"]  # Python 3 only (language 3)
    assert good.incorrect_solutions == ["print(0)\n"]
    assert good.time_limit_s == 1.5 and good.memory_limit_bytes == 256 << 20
    assert good.kind == "stdio" and good.dataset == "codecontests" and good.split == "train"
    assert other.time_limit_s is None and other.memory_limit_bytes is None  # zero means "not given"
    assert [p.problem_id for p in load_problems("codecontests", str(hf_dir), "valid")] == ["1_A. Good"]
    assert load_problems("codecontests", str(hf_dir), "train", limit=1) == [good]
    assert find_problem("codecontests", "train", "2_B. Also good", path=str(hf_dir)) is other
    with pytest.raises(DataError, match="not found"):
        find_problem("codecontests", "train", "nope", path=str(hf_dir))


def test_codecontests_jsonl_gz_layout(tmp_path: Path):
    with gzip.open(tmp_path / "test.jsonl.gz", "wt") as f:
        for row in ROWS_TRAIN_0 + ROWS_TRAIN_1:
            f.write(json.dumps(row) + "\n")
    clear_cache()
    problems = load_problems("codecontests", str(tmp_path), "test")
    assert [p.problem_id for p in problems] == ["1_A. Good", "2_B. Also good"]
    assert problems[0].time_limit_s == 1.5


def test_inspect_reports_kept_and_dropped(hf_dir: Path, capsys):
    text = inspect_dataset(str(hf_dir), None, "train")
    assert "problems: 4 read, 2 kept, 2 dropped" in text
    assert "dropped (no public tests): 1" in text and "dropped (no private tests): 1" in text
    assert "private tests per problem:" in text and "time limit (s):" in text
    assert rlef_main(["data", "inspect", str(hf_dir), "--split", "train"]) == 0
    assert "2 kept" in capsys.readouterr().out
    assert rlef_main(["data", "inspect", "sample", "--split", "valid"]) == 0
    assert "6 kept" in capsys.readouterr().out


def test_missing_path_and_split_name_the_path(tmp_path: Path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        load_problems("codecontests", str(missing), "train")
    with pytest.raises(DataError, match="no files for split 'train'"):
        load_problems("codecontests", str(tmp_path), "train")
    with pytest.raises(DataError, match="needs a local path"):
        load_problems("codecontests", None, "train")
    assert rlef_main(["data", "inspect", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_malformed_records_name_file_and_record(tmp_path: Path):
    bad = dict(ROWS_TRAIN_0[0])
    bad["public_tests"] = {"input": ["1\n", "2\n"], "output": ["1\n"]}
    with open(tmp_path / "train.jsonl", "w") as f:
        f.write(json.dumps(ROWS_TRAIN_1[1]) + "\n")
        f.write(json.dumps(bad) + "\n")
    clear_cache()
    with pytest.raises(DataError, match=r"train\.jsonl: record 1 \('1_A. Good'\): public_tests has 2 inputs and 1 outputs"):
        load_problems("codecontests", str(tmp_path), "train")
    (tmp_path / "valid.jsonl").write_text(json.dumps(ROWS_TRAIN_1[1]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"valid\.jsonl: record 1 \(line 2\): invalid JSON"):
        load_problems("codecontests", str(tmp_path), "valid")
    (tmp_path / "test.jsonl").write_text(json.dumps({"description": "no name"}) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl: record 0: missing or empty 'name'"):
        load_problems("codecontests", str(tmp_path), "test")
    (tmp_path / "x-00000-of-00001.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"x-00000-of-00001\.parquet: unreadable parquet"):
        load_problems("codecontests", str(tmp_path), "x")


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        load_problems("apps")


# ---------------------------------------------------------------- HumanEval


def test_split_check_statements():
    test = (
        "METADATA = {'author': 'x'}\n\n"
        "def check(candidate):\n"
        "    import math\n"
        "    assert candidate(1) == 2\n"
        "    assert True, 'not a test'\n"
        "    for x in range(3):\n"
        "        assert candidate(x) == 2 * x\n"
        "    assert (\n        candidate(5) == 10\n    )\n"
    )
    assert split_check(test, "double") == [
        "candidate = double\nMETADATA = {'author': 'x'}\nimport math\nassert candidate(1) == 2\n",
        "candidate = double\nMETADATA = {'author': 'x'}\nimport math\nfor x in range(3):\n    assert candidate(x) == 2 * x\n",
        "candidate = double\nMETADATA = {'author': 'x'}\nimport math\nassert candidate(5) == 10\n",
    ]


def test_humaneval_problems_shape():
    problems = load_problems("humaneval", split="test")
    assert len(problems) == 164
    by_id = {p.problem_id: p for p in problems}
    p0 = by_id["HumanEval/0"]
    assert p0.kind == "function" and p0.entry_point == "has_close_elements"
    assert p0.prefill == "```python\n" + p0.description
    assert len(p0.public_tests) == 1 and len(p0.private_tests) == 6
    assert p0.public_tests[0].input.startswith("candidate = has_close_elements\n")
    assert all(t.output == "" for t in p0.public_tests + p0.private_tests)
    assert sum(len(p.public_tests) + len(p.private_tests) for p in problems) > 1000
    assert find_problem("humaneval", "test", "HumanEval/163").entry_point == "generate_integers"


# Runs every test of one problem in one process, each in fresh globals exactly as FUNCTION_HARNESS does
# (solution module code, then exec of the test statement); prints the indices of failing tests.
_BATCH_RUNNER = """
import contextlib, io, json, sys
spec = json.loads(sys.stdin.read())
bad = []
for i, test in enumerate(spec["tests"]):
    g = {"__name__": "__main__"}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(spec["code"], "<solution>", "exec"), g)
            exec(compile(test, "<test>", "exec"), g)
    except BaseException as exc:
        bad.append([i, repr(exc)[:200]])
        continue
    if out.getvalue():
        bad.append([i, "printed " + out.getvalue()[:100]])
print(json.dumps(bad))
"""


def _run_batch(code: str, tests: list[str]) -> list:
    done = subprocess.run([SYSTEM_PYTHON, "-c", _BATCH_RUNNER], input=json.dumps({"code": code, "tests": tests}),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_every_test():
    problems = load_problems("humaneval", split="test")
    # Every test of every problem (one process per problem, fresh globals per test) ...
    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda p: _run_batch(p.solutions[0], [t.input for t in p.public_tests + p.private_tests]), problems))
    assert [(p.problem_id, bad) for p, bad in zip(problems, batches) if bad] == []
    # ... and the public test of every problem through the real stdin harness (Problem.program).
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: _run(p, p.solutions[0], p.public_tests[0].input), problems))
    assert [(p.problem_id, err[-200:]) for p, (rc, out, err) in zip(problems, results) if rc != 0 or out != ""] == []
    # The tests bite: a body that returns None fails a test of nearly every problem (and through the harness too).
    with ThreadPoolExecutor(4) as pool:
        stub = list(pool.map(lambda p: _run_batch(p.description + "    return None\n", [t.input for t in p.public_tests + p.private_tests]), problems))
    fully_passed = [p.problem_id for p, bad in zip(problems, stub) if not bad]
    assert len(fully_passed) <= 3, fully_passed
    p0 = problems[0]
    rc, _, err = _run(p0, p0.description + "    return None\n", p0.public_tests[0].input)
    assert rc != 0 and "AssertionError" in err
