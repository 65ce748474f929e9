"""The learning proof's problem family (rlef data make-feedback-tasks) and its warm-start traces."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rlef.common.data import feedback_tasks as T
from rlef.common.data.loaders import clear_cache, load_problems
from rlef.common.models.warm_start import WarmStartError, make_warm_start, shown_twin, trace

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tasks")
    T.make_feedback_tasks(out, seed=3, train=96, valid=24, test=24)
    clear_cache()
    return out


def _checker_equal(a: str, b: str) -> bool:
    return a.split() == b.split()


def test_splits_hold_disjoint_combinations_and_train_covers_every_op_and_format(tasks):
    manifest = json.loads((tasks / "manifest.json").read_text())
    combos = {s: set(c) for s, c in manifest["combinations"].items()}
    assert not combos["train"] & combos["valid"] and not combos["train"] & combos["test"] and not combos["valid"] & combos["test"]
    assert len(combos["valid"]) == len(combos["test"]) == 8
    assert {c.split("/")[0] for c in combos["train"]} == set(T.OPS_BY_NAME)
    assert {c.split("/")[1] for c in combos["train"]} == set(T.FORMATS_BY_NAME)
    for split in ("train", "valid", "test"):
        for p in load_problems("codecontests", str(tasks), split):
            meta = T.parse_problem_name(p.problem_id)
            assert f"{meta['op']}/{meta['format']}" in combos[split]


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
@pytest.mark.parametrize("per_operation", [1, 2, 3])
def test_the_per_operation_split_is_balanced(seed, per_operation):
    """Every operation: exactly ``per_operation`` formats in valid, as many in test, the rest in train, all
    disjoint; every format still in train, and held out by at most ceil(2 * k * ops / formats) operations."""
    combos = T.split_combinations_per_operation(seed, per_operation)
    sets = {s: set(c) for s, c in combos.items()}
    assert not sets["train"] & sets["valid"] and not sets["train"] & sets["test"] and not sets["valid"] & sets["test"]
    assert sets["train"] | sets["valid"] | sets["test"] == {(o, f) for o in T.OPS_BY_NAME for f in T.FORMATS_BY_NAME}
    for op in T.OPS_BY_NAME:
        assert sum(1 for o, _ in combos["valid"] if o == op) == per_operation
        assert sum(1 for o, _ in combos["test"] if o == op) == per_operation
        assert sum(1 for o, _ in combos["train"] if o == op) == len(T.FORMATS) - 2 * per_operation
    held_out_by = {f: sum(1 for _, g in combos["valid"] + combos["test"] if g == f) for f in T.FORMATS_BY_NAME}
    bound = -(-2 * per_operation * len(T.OPERATIONS) // len(T.FORMATS))
    assert max(held_out_by.values()) <= bound and min(held_out_by.values()) >= bound - 1
    assert {f for _, f in combos["train"]} == set(T.FORMATS_BY_NAME)


def test_the_per_operation_split_through_the_generator_and_cli(tmp_path):
    manifest = T.make_feedback_tasks(tmp_path / "a", seed=5, train=48, valid=12, test=12, held_out_per_operation=1)
    assert manifest["held_out"] == {"per_operation": 1}
    assert len(manifest["combinations"]["test"]) == len(T.OPERATIONS)
    with pytest.raises(T.TaskGenerationError, match="--held-out-per-operation"):
        T.make_feedback_tasks(tmp_path / "b", held_out_per_operation=4)
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "rlef.common.cli", "data", "make-feedback-tasks", str(out), "--train", "10", "--valid", "5",
            "--test", "5", "--if-stale"]
    runs = [subprocess.run(args + extra, capture_output=True, text=True, timeout=120)
            for extra in (["--held-out-per-operation", "1"], ["--held-out-per-operation", "1"], [], ["--held-out-inputs"],
                          ["--held-out-inputs"])]
    assert [r.returncode for r in runs] == [0] * 5, [r.stderr for r in runs]
    assert "written" in runs[0].stdout and "current" in runs[1].stdout and "written" in runs[2].stdout  # the split changed
    assert "disjoint input pairs" in runs[3].stdout and "current" in runs[4].stdout
    both = subprocess.run(args + ["--held-out-inputs", "--held-out-combinations", "4"], capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "--held-out-combinations" in both.stderr and "--held-out-inputs" in both.stderr


def _problem_inputs(p) -> set[tuple[int, int]]:
    pairs = {tuple(map(int, t.input.split())) for t in p.public_tests + p.private_tests}
    if "Expected output `" in p.description:
        pairs.add(tuple(map(int, p.description.split("input `")[1].split("`")[0].split())))
    return pairs


def test_held_out_inputs_split_disjoint_inputs_and_draws_every_combination_alike(tmp_path):
    """With --held-out-inputs no input of a valid or test problem (public, private, the statement's example)
    occurs in train; every split cycles through all 48 combinations, so each convention is equally frequent
    for every operation (no convention that training never rewards)."""
    out = tmp_path / "inputs"
    manifest = T.make_feedback_tasks(out, seed=4, train=192, valid=96, test=96, held_out_inputs=True)
    clear_cache()
    assert manifest["held_out"] == {"inputs": T.HELD_OUT_INPUT_SHARE}
    pools = T.split_inputs(4)
    assert not set(pools["train"]) & set(pools["test"]) and not set(pools["train"]) & set(pools["valid"])
    assert not set(pools["valid"]) & set(pools["test"])
    assert len(pools["train"]) + len(pools["valid"]) + len(pools["test"]) == 99 * 99
    seen = {}
    for split in ("train", "valid", "test"):
        problems = load_problems("codecontests", str(out), split)
        seen[split] = set().union(*(_problem_inputs(p) for p in problems))
        assert seen[split] <= set(pools[split])
        combos = [tuple(T.parse_problem_name(p.problem_id)[k] for k in ("op", "format")) for p in problems]
        counts = {c: combos.count(c) for c in set(combos)}
        assert set(counts) == set(T.all_combinations()) and len(set(counts.values())) == 1, counts
    assert not seen["train"] & (seen["valid"] | seen["test"])
    assert T.split_inputs(5)["test"] != pools["test"]
    with pytest.raises(T.TaskGenerationError, match="--held-out-inputs"):
        T.make_feedback_tasks(tmp_path / "both", held_out_inputs=True, held_out_per_operation=1)


def test_a_new_seed_draws_new_held_out_sets(tmp_path):
    a = T.split_combinations(0, 8)["test"]
    b = T.split_combinations(1, 8)["test"]
    assert a != b


def test_statements_show_or_hide_the_convention(tasks):
    for p in load_problems("codecontests", str(tasks), "train"):
        meta = T.parse_problem_name(p.problem_id)
        fmt = T.FORMATS_BY_NAME[meta["format"]]
        if meta["kind"] == "hidden":
            assert "`" not in p.description and "No example" in p.description
        else:
            shown = p.description.split("Expected output `")[1].split("`")[0]
            assert shown.startswith(fmt.prefix) and shown.endswith(fmt.suffix + "\n")


def _run(code: str, stdin: str) -> str:
    return subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, text=True, timeout=10).stdout


def test_reference_solution_passes_and_shortcuts_fail(tasks):
    problems = load_problems("codecontests", str(tasks), "valid")[:8]
    for p in problems:
        tests = p.public_tests + p.private_tests
        assert len(p.public_tests) == 1 and len(p.private_tests) == T.PRIVATE_TESTS
        assert all(_checker_equal(_run(p.solutions[0], t.input), t.output) for t in tests)
        # Every other convention fails the public test (so only the feedback can tell them apart) ...
        assert all(not _checker_equal(_run(w, p.public_tests[0].input), p.public_tests[0].output) for w in p.incorrect_solutions)
        # ... and printing the public expected output fails every private test.
        literal = f"print({p.public_tests[0].output.strip()!r})"
        assert all(not _checker_equal(_run(literal, t.input), t.output) for t in p.private_tests)


def test_no_two_formats_are_accepted_for_one_another():
    for f in T.FORMATS:
        assert not _checker_equal(f.render(12), "12")
        for g in T.FORMATS:
            if g is not f:
                assert not _checker_equal(f.render(12), g.render(12))


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"seed": -1}, "--seed"), ({"train": 0}, "--train"), ({"test": 0}, "--test"),
    ({"hidden_fraction": 1.5}, "--hidden-fraction"), ({"held_out_combinations": 40}, "--held-out-combinations"),
    ({"conventions": 0, "held_out_inputs": True}, "--conventions"), ({"conventions": 9, "held_out_inputs": True}, "--conventions"),
    ({"conventions": 4}, "--held-out-inputs"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, named):
    with pytest.raises(T.TaskGenerationError, match=named):
        T.make_feedback_tasks(tmp_path / "x", **kwargs)


def test_cli_generates_and_reports(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "rlef.common.cli", "data", "make-feedback-tasks", str(out), "--seed", "2",
                           "--train", "10", "--valid", "5", "--test", "5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "held-out test combinations" in proc.stdout
    assert sum(1 for _ in open(out / "test.jsonl")) == 5
    bad = subprocess.run([sys.executable, "-m", "rlef.common.cli", "data", "make-feedback-tasks", str(out), "--train", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--train" in bad.stderr


# ---------------------------------------------------------------- warm-start traces


def test_hidden_traces_ignore_the_feedback_and_stop_when_right(tasks):
    problems = [p for p in load_problems("codecontests", str(tasks), "train") if p.problem_id.endswith("hidden")]
    rng = random.Random(0)
    later_right = later_total = 0
    for p in problems * 20:
        meta = T.parse_problem_name(p.problem_id)
        messages = trace(p, rng, max_turns=3, max_chars=256)
        assistant = [m["content"] for m in messages if m["role"] == "assistant"]
        right = T.program(T.OPS_BY_NAME[meta["op"]], T.FORMATS_BY_NAME[meta["format"]])
        assert all(a.startswith("```python\n") and a.endswith("```") for a in assistant)
        # The episode stops at the first right program, as a real episode stops when the public tests pass.
        assert all(right not in a for a in assistant[:-1])
        assert len(assistant) == 3 or right in assistant[-1]
        for m in messages[2::2]:
            assert m["content"].startswith("Your code failed the following tests:")
            assert p.public_tests[0].output in m["content"]  # the real expected output is shown ...
        later_total += len(assistant) - 1
        later_right += sum(right in a for a in assistant[1:])
    # ... and ignored: a later turn is right 1 time in 8, as a blind guess is.
    assert later_right / later_total == pytest.approx(1 / len(T.FORMATS), abs=0.03)


def test_shown_twin_and_traces_of_shown_problems(tasks):
    p = next(p for p in load_problems("codecontests", str(tasks), "train") if p.problem_id.endswith("hidden"))
    twin = shown_twin(p, random.Random(1))
    assert twin.problem_id.endswith("-shown") and "Expected output `" in twin.description
    messages = trace(twin, random.Random(0), max_turns=3, max_chars=256)
    meta = T.parse_problem_name(p.problem_id)
    assert len(messages) == 2 and T.program(T.OPS_BY_NAME[meta["op"]], T.FORMATS_BY_NAME[meta["format"]]) in messages[1]["content"]


def test_warm_start_rejects_bad_arguments(tmp_path, tasks):
    with pytest.raises(WarmStartError, match="make-feedback-tasks"):
        make_warm_start(tmp_path / "ws", tmp_path / "nowhere")
    with pytest.raises(WarmStartError, match="--steps"):
        make_warm_start(tmp_path / "ws", tasks, steps=0)
    (tmp_path / "notours").mkdir()
    (tmp_path / "notours" / "f").write_text("x")
    with pytest.raises(WarmStartError, match="refusing to overwrite"):
        make_warm_start(tmp_path / "notours", tasks, steps=1)


def test_fewer_conventions_are_drawn_per_seed_recorded_and_guessed_among(tmp_path):
    """--conventions K: every problem and wrong solution uses the K conventions drawn for the seed, the manifest
    names them, and the warm start's blind guesses are drawn among them (1 in K right)."""
    out = tmp_path / "k4"
    manifest = T.make_feedback_tasks(out, seed=5, train=200, valid=12, test=12, held_out_inputs=True, conventions=4)
    clear_cache()
    names = manifest["conventions"]
    assert len(names) == 4 and names == [f.name for f in T.FORMATS if f.name in names]
    assert T.task_conventions(T.read_manifest(out)) == tuple(T.FORMATS_BY_NAME[n] for n in names)
    assert T.draw_conventions(6, 4) != T.draw_conventions(5, 4)  # a new seed, other conventions
    problems = load_problems("codecontests", str(out), "train")
    assert {T.parse_problem_name(p.problem_id)["format"] for p in problems} == set(names)
    formats = T.task_conventions(manifest)
    for p in problems:
        op = T.OPS_BY_NAME[T.parse_problem_name(p.problem_id)["op"]]
        assert set(p.incorrect_solutions) <= {T.program(op, f) for f in formats}
    rng = random.Random(0)
    later_right = later_total = 0
    for p in [p for p in problems if p.problem_id.endswith("hidden")] * 5:
        meta = T.parse_problem_name(p.problem_id)
        right = T.program(T.OPS_BY_NAME[meta["op"]], T.FORMATS_BY_NAME[meta["format"]])
        assistant = [m["content"] for m in trace(p, rng, max_turns=3, max_chars=256, formats=formats) if m["role"] == "assistant"]
        assert all(any(T.program(T.OPS_BY_NAME[meta["op"]], f) in a for f in formats) for a in assistant)
        later_total += len(assistant) - 1
        later_right += sum(right in a for a in assistant[1:])
    assert later_right / later_total == pytest.approx(1 / 4, abs=0.04)
    assert T.task_conventions(None) == T.FORMATS  # manifests from before --conventions: all of them


def test_untried_retries_never_repeat_and_still_ignore_the_expected_output(tasks):
    """--retry untried: a later turn guesses among the conventions this trace has not written (depends on the
    trace's own programs only), so turn 2 is right 1 time in 7 and turn 3 1 in 6, whatever the feedback says."""
    problems = [p for p in load_problems("codecontests", str(tasks), "train") if p.problem_id.endswith("hidden")]
    rng = random.Random(0)
    right_at = {2: [0, 0], 3: [0, 0]}
    for p in problems * 40:
        meta = T.parse_problem_name(p.problem_id)
        op = T.OPS_BY_NAME[meta["op"]]
        written = [next(f.name for f in T.FORMATS if T.program(op, f) in m["content"])
                   for m in trace(p, rng, max_turns=3, max_chars=256, retry="untried") if m["role"] == "assistant"]
        assert len(set(written)) == len(written)  # never the same convention twice
        for turn, name in enumerate(written[1:], start=2):
            right_at[turn][0] += name == meta["format"]
            right_at[turn][1] += 1
    assert right_at[2][0] / right_at[2][1] == pytest.approx(1 / 7, abs=0.025)
    assert right_at[3][0] / right_at[3][1] == pytest.approx(1 / 6, abs=0.025)
    with pytest.raises(WarmStartError, match="--retry"):
        make_warm_start(Path("/nonexistent-ws"), tasks, retry="sometimes")


def test_one_convention_for_every_problem_keeps_wrong_programs_for_the_ablation(tmp_path):
    """--conventions 1 (CI's reward test): every problem wants the same convention; the wrong programs that the
    random-feedback ablation draws from still use other conventions."""
    manifest = T.make_feedback_tasks(tmp_path / "k1", seed=2, train=60, valid=6, test=6, held_out_inputs=True, conventions=1)
    clear_cache()
    (only,) = manifest["conventions"]
    for p in load_problems("codecontests", str(tmp_path / "k1"), "train"):
        meta = T.parse_problem_name(p.problem_id)
        assert meta["format"] == only and len(p.incorrect_solutions) == 2
        op = T.OPS_BY_NAME[meta["op"]]
        assert not set(p.incorrect_solutions) & {T.program(op, T.FORMATS_BY_NAME[only])}
