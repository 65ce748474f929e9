"""A problem family where execution feedback is necessary: the learning proof's task (``rlef data make-feedback-tasks``).

Every problem reads two integers ``a b`` and prints one operation of them (sum, difference, product,
larger, smaller, remainder) wrapped in an output convention (``Answer: 12``, ``[12]``, ``<12>``, ``12!``,
...). The statement always names the operation. Whether it names the convention decides the kind:

- **shown**: the statement shows the convention by an example (an input and its expected output, written
  as the feedback writes a failing test): solvable at the first turn by a model that reads the statement;
- **hidden**: the statement gives no example. Nothing in it tells which of the :data:`FORMATS` is meant;
  the failing public test's expected output in the feedback does.
  A model that ignores the feedback can only guess (1 in 8 per turn).

What makes it a test of reading feedback rather than of memorising:

- public inputs are drawn per problem, so the expected output shown in the feedback differs every time and
  the program must compute the operation, not print the public answer (private tests use other inputs, so
  printing the public expected output fails);
- train, valid and test are disjoint problems in the same statement family (the proof is about feedback,
  not about new wordings), held out one of three ways:
  - by default, disjoint (operation, convention) combinations, each operation and each convention
    appearing in training with other partners (:func:`split_combinations`), or the balanced version
    (:func:`split_combinations_per_operation`);
  - with ``held_out_inputs``, disjoint input pairs ``(a, b)``: every split draws from all combinations
    alike and no public or private input of a held-out problem occurs in any train problem
    (:func:`split_inputs`). Why: a held-out *combination* is a convention its operation never has in
    training, so a policy can raise its train reward by learning never to write it, which is always wrong
    on held-out problems (docs/results-history.md, "the exclusion shortcut"). Drawn alike, a hidden problem's
    convention is independent of its split, and only the feedback says which it is;
- a new ``seed`` re-draws the combinations or inputs of every split, so it yields fresh held-out sets.

Files follow the CodeContests Hugging Face layout (``train.jsonl`` / ``valid.jsonl`` / ``test.jsonl``, one
record per line), read by ``data.dataset: codecontests`` with ``data.path: DIR``; ``manifest.json`` records
the seed, the generator version and which combinations went to which split. Problem names encode
``<split>-<index>-<op>-<format>-<kind>`` so analyses can split results by kind without extra files.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlef.common.data.codecontests import PYTHON3
from rlef.common.errors import RlefError

GENERATOR_VERSION = 2  # 2: shown conventions by an example test, as the feedback writes one
KINDS = ("shown", "hidden")
TIME_LIMIT = {"seconds": 2, "nanos": 0}
MEMORY_LIMIT_BYTES = 256 << 20
VALUE_RANGE = (1, 99)
PRIVATE_TESTS = 4


class TaskGenerationError(RlefError):
    """Bad arguments to the generator (the message names the argument)."""


@dataclass(frozen=True)
class Operation:
    name: str
    phrase: str
    expr: str

    def apply(self, a: int, b: int) -> int:
        return int(eval(self.expr, {"max": max, "min": min}, {"a": a, "b": b}))  # noqa: S307 - our own constants


@dataclass(frozen=True)
class Format:
    name: str
    prefix: str
    suffix: str

    def render(self, value: int | str) -> str:
        return f"{self.prefix}{value}{self.suffix}"

    def print_statement(self, expr: str) -> str:
        """The program line that prints ``expr`` in this format (an f-string: prefix and suffix appear literally)."""
        return f'print(f"{self.prefix}{{{expr}}}{self.suffix}")'


OPERATIONS: tuple[Operation, ...] = (
    Operation("sum", "the sum of a and b", "a + b"),
    Operation("difference", "a minus b", "a - b"),
    Operation("product", "the product of a and b", "a * b"),
    Operation("larger", "the larger of a and b", "max(a, b)"),
    Operation("smaller", "the smaller of a and b", "min(a, b)"),
    Operation("remainder", "the remainder of a divided by b", "a % b"),
)
# Every convention changes the whitespace-separated tokens CodeContests' checker compares, so no two of
# them (and none of them and the bare number) are accepted for one another.
FORMATS: tuple[Format, ...] = (
    Format("answer", "Answer: ", ""),
    Format("result", "Result: ", ""),
    Format("square", "[", "]"),
    Format("angle", "<", ">"),
    Format("paren", "(", ")"),
    Format("hash", "#", ""),
    Format("bang", "", "!"),
    Format("equals", "= ", ""),
)
OPS_BY_NAME = {op.name: op for op in OPERATIONS}
FORMATS_BY_NAME = {f.name: f for f in FORMATS}

INPUT_SPEC = "One line with two integers a and b (1 <= a, b <= 99)."
OUTPUT_SPEC = "Print the answer in the judge's output format."
# The example is written the way the feedback shows a failing test (input, then "Expected output"), as
# CodeContests statements show their examples: reading it is what a model that reads statements can do.
SHOWN_EXAMPLE = "Example\n\ninput `{input}`\nExpected output `{output}`"
HIDDEN_EXAMPLE = "No example is given."


def statement(op: Operation, fmt: Format, kind: str, example: tuple[int, int]) -> str:
    a, b = example
    tail = SHOWN_EXAMPLE.format(input=f"{a} {b}\n", output=fmt.render(op.apply(a, b)) + "\n") if kind == "shown" else HIDDEN_EXAMPLE
    return (f"Read two integers a and b and print {op.phrase}.\n\nInput\n\n{INPUT_SPEC}\n\nOutput\n\n{OUTPUT_SPEC}"
            f"\n\n{tail}")


def program(op: Operation, fmt: Format) -> str:
    """The reference solution of (op, fmt); the warm start's traces use exactly this shape."""
    return f"a, b = map(int, input().split())\n{fmt.print_statement(op.expr)}\n"


def parse_problem_name(name: str) -> dict[str, str] | None:
    """``{split, index, op, format, kind}`` of a generated problem's name, or None for any other name."""
    parts = name.split("-")
    if len(parts) != 5 or parts[2] not in OPS_BY_NAME or parts[3] not in FORMATS_BY_NAME or parts[4] not in KINDS:
        return None
    return dict(zip(("split", "index", "op", "format", "kind"), parts))


# ---------------------------------------------------------------- splits of combinations


def split_combinations(seed: int, held_out: int) -> dict[str, list[tuple[str, str]]]:
    """(op, format) pairs per split: ``held_out`` each for valid and test, the rest for train, drawn so that
    every operation and every format still occurs in train (re-drawn until they do)."""
    combos = all_combinations()
    if held_out < 1 or 2 * held_out > len(combos) - max(len(OPERATIONS), len(FORMATS)):
        raise TaskGenerationError(
            f"--held-out-combinations must be between 1 and {(len(combos) - max(len(OPERATIONS), len(FORMATS))) // 2}, got {held_out}"
        )
    rng = random.Random(f"combos-{seed}")
    for _ in range(1000):
        rng.shuffle(combos)
        valid, test, train = combos[:held_out], combos[held_out : 2 * held_out], combos[2 * held_out :]
        if {o for o, _ in train} == set(OPS_BY_NAME) and {f for _, f in train} == set(FORMATS_BY_NAME):
            return {"train": sorted(train), "valid": sorted(valid), "test": sorted(test)}
    raise TaskGenerationError(f"could not draw held-out combinations for seed {seed}")  # pragma: no cover


def split_combinations_per_operation(seed: int, per_operation: int) -> dict[str, list[tuple[str, str]]]:
    """(op, format) pairs per split, balanced: every operation holds out exactly ``per_operation`` formats for
    valid and as many for test, and keeps the same number (``len(FORMATS) - 2 * per_operation``) for train.

    Why: with ``split_combinations`` an operation keeps 3 to 8 formats in train, so "write the format this
    operation usually has" solves up to a third of an operation's hidden train problems without reading the
    feedback, and it is always wrong on the held-out pairs. RL can lock onto that shortcut instead of learning
    to read the feedback (docs/results-history.md, seed 2). Here the shortcut is the same small one for every
    operation (1 / 6 instead of 1 / 8 at one per operation). The held-out formats are spread over the formats
    as evenly as the counts allow (each is held out by at most ceil(2 * per_operation * ops / formats) ops)."""
    limit = (len(FORMATS) - 1) // 2
    if not 1 <= per_operation <= limit:
        raise TaskGenerationError(f"--held-out-per-operation must be between 1 and {limit}, got {per_operation}")
    rng = random.Random(f"combos-per-operation-{seed}")
    ops, formats = [op.name for op in OPERATIONS], [f.name for f in FORMATS]
    rng.shuffle(ops)
    rng.shuffle(formats)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    for i, op in enumerate(ops):
        start = 2 * per_operation * i
        held = [formats[(start + j) % len(formats)] for j in range(2 * per_operation)]
        splits["valid"] += [(op, f) for f in held[:per_operation]]
        splits["test"] += [(op, f) for f in held[per_operation:]]
        splits["train"] += [(op, f) for f in formats if f not in held]
    return {name: sorted(pairs) for name, pairs in splits.items()}


HELD_OUT_INPUT_SHARE = 0.1  # of the (a, b) grid, for each of valid and test (980 pairs each)


def all_combinations(formats: tuple[Format, ...] = FORMATS) -> list[tuple[str, str]]:
    return [(op.name, f.name) for op in OPERATIONS for f in formats]


def draw_conventions(seed: int, count: int | None) -> tuple[Format, ...]:
    """The output conventions a task set uses: all of :data:`FORMATS`, or ``count`` of them drawn for ``seed``
    (in :data:`FORMATS` order). Fewer conventions make a blind guess likelier (1 in ``count`` a turn). One
    convention is a task the policy learns without the feedback (it only has to prefer that convention):
    the quick, sure rise of the reward CI's reward test needs, not the learning proof."""
    if count is None or count == len(FORMATS):
        return FORMATS
    if not isinstance(count, int) or not 1 <= count <= len(FORMATS):
        raise TaskGenerationError(f"--conventions must be between 1 and {len(FORMATS)}, got {count!r}")
    chosen = set(random.Random(f"conventions-{seed}").sample(range(len(FORMATS)), count))
    return tuple(f for i, f in enumerate(FORMATS) if i in chosen)


def task_conventions(manifest: dict[str, Any] | None) -> tuple[Format, ...]:
    """The conventions of a generated task set, from its manifest (older manifests: all of them)."""
    names = (manifest or {}).get("conventions")
    if names is None:
        return FORMATS
    unknown = [n for n in names if n not in FORMATS_BY_NAME]
    if unknown:
        raise TaskGenerationError(f"manifest.json names unknown conventions {unknown}; known: {sorted(FORMATS_BY_NAME)}")
    return tuple(FORMATS_BY_NAME[n] for n in names)


def split_inputs(seed: int) -> dict[str, list[tuple[int, int]]]:
    """The (a, b) grid cut into three disjoint pools: ``HELD_OUT_INPUT_SHARE`` each for valid and test."""
    lo, hi = VALUE_RANGE
    grid = [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]
    random.Random(f"inputs-{seed}").shuffle(grid)
    held = round(len(grid) * HELD_OUT_INPUT_SHARE)
    return {"valid": sorted(grid[:held]), "test": sorted(grid[held : 2 * held]), "train": sorted(grid[2 * held :])}


# ---------------------------------------------------------------- problems

InputPool = list[tuple[int, int]] | None  # None: the whole grid


def _draw(rng: random.Random, pool: InputPool) -> tuple[int, int]:
    return rng.choice(pool) if pool else (rng.randint(*VALUE_RANGE), rng.randint(*VALUE_RANGE))


def _inputs(rng: random.Random, op: Operation, count: int, pool: InputPool = None) -> list[tuple[int, int]]:
    """``count`` distinct input pairs whose answers are not all equal (so no constant program passes)."""
    while True:
        pairs: list[tuple[int, int]] = []
        while len(pairs) < count:
            pair = _draw(rng, pool)
            if pair not in pairs:
                pairs.append(pair)
        if len({op.apply(a, b) for a, b in pairs[1:]}) > 1 and op.apply(*pairs[0]) not in {op.apply(a, b) for a, b in pairs[1:]}:
            return pairs


def make_record(split: str, index: int, op: Operation, fmt: Format, kind: str, rng: random.Random,
                pool: InputPool = None, formats: tuple[Format, ...] = FORMATS) -> dict[str, Any]:
    """One CodeContests-layout record (the public test is the first input; the rest are private); every
    input, the statement's example included, comes from ``pool``."""
    pairs = _inputs(rng, op, 1 + PRIVATE_TESTS, pool)
    example = _draw(rng, pool)
    inputs = [f"{a} {b}\n" for a, b in pairs]
    outputs = [fmt.render(op.apply(a, b)) + "\n" for a, b in pairs]
    # Wrong programs (the random-feedback ablation's pool) use the set's other conventions, or any other one
    # when the set has fewer than three.
    wrong_formats = [f for f in (formats if len(formats) > 2 else FORMATS) if f.name != fmt.name]
    wrong = [program(op, f) for f in rng.sample(wrong_formats, 2)]
    return {
        "name": f"{split}-{index:05d}-{op.name}-{fmt.name}-{kind}",
        "description": statement(op, fmt, kind, example),
        "public_tests": {"input": inputs[:1], "output": outputs[:1]},
        "private_tests": {"input": inputs[1:], "output": outputs[1:]},
        "generated_tests": {"input": [], "output": []},
        "solutions": {"language": [PYTHON3], "solution": [program(op, fmt)]},
        "incorrect_solutions": {"language": [PYTHON3] * len(wrong), "solution": wrong},
        "source": 0, "difficulty": 1, "cf_contest_id": 0, "cf_index": "", "cf_points": 0.0, "cf_rating": 800,
        "cf_tags": [], "is_description_translated": False, "untranslated_description": "",
        "time_limit": TIME_LIMIT, "memory_limit_bytes": MEMORY_LIMIT_BYTES, "input_file": "", "output_file": "",
    }


def make_split(split: str, combos: list[tuple[str, str]], count: int, hidden_fraction: float, seed: int,
               pool: InputPool = None, formats: tuple[Format, ...] = FORMATS) -> list[dict[str, Any]]:
    """``count`` problems cycling through ``combos`` (balanced), each hidden with probability ``hidden_fraction``."""
    rng = random.Random(f"{split}-{seed}")
    order = list(combos)
    records = []
    for i in range(count):
        if i % len(order) == 0:
            rng.shuffle(order)
        op_name, fmt_name = order[i % len(order)]
        kind = "hidden" if rng.random() < hidden_fraction else "shown"
        records.append(make_record(split, i, OPS_BY_NAME[op_name], FORMATS_BY_NAME[fmt_name], kind, rng, pool, formats))
    return records


def _check_args(seed: int, counts: dict[str, int], hidden_fraction: float) -> None:
    if not isinstance(seed, int) or seed < 0:
        raise TaskGenerationError(f"--seed must be a non-negative integer, got {seed!r}")
    for split, n in counts.items():
        if not isinstance(n, int) or n < 1:
            raise TaskGenerationError(f"--{split} (problems in the {split} split) must be a positive integer, got {n!r}")
    if not 0.0 <= hidden_fraction <= 1.0:
        raise TaskGenerationError(f"--hidden-fraction must lie in [0, 1], got {hidden_fraction!r}")


def make_feedback_tasks(
    out_dir: Path, *, seed: int = 0, train: int = 2000, valid: int = 96, test: int = 192,
    hidden_fraction: float = 0.75, held_out_combinations: int | None = None, held_out_per_operation: int = 0,
    held_out_inputs: bool = False, conventions: int | None = None,
) -> dict[str, Any]:
    """Write the three splits and ``manifest.json`` into ``out_dir``; returns the manifest.
    ``held_out_per_operation`` > 0 draws the balanced split (:func:`split_combinations_per_operation`) instead
    of ``held_out_combinations`` random pairs; ``held_out_inputs`` holds out inputs instead of combinations
    (:func:`split_inputs`); ``conventions`` uses that many of the output conventions (:func:`draw_conventions`;
    only with ``held_out_inputs``, whose splits draw every combination alike)."""
    counts = {"train": train, "valid": valid, "test": test}
    _check_args(seed, counts, hidden_fraction)
    if conventions is not None and not held_out_inputs:
        raise TaskGenerationError("--conventions needs --held-out-inputs (the combination splits assume all 8 conventions)")
    formats = draw_conventions(seed, conventions)
    held_out_combinations = check_hold_out(held_out_combinations, held_out_per_operation, held_out_inputs)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise TaskGenerationError(f"output {str(out_dir)!r} exists and is not a directory")
    pools: dict[str, InputPool] = dict.fromkeys(counts)
    if held_out_inputs:
        combos = {split: all_combinations(formats) for split in counts}
        pools.update(split_inputs(seed))
    elif held_out_per_operation:
        combos = split_combinations_per_operation(seed, held_out_per_operation)
    else:
        combos = split_combinations(seed, held_out_combinations)
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, dict[str, int]] = {}
    for split, n in counts.items():
        records = make_split(split, combos[split], n, hidden_fraction, seed, pools[split], formats)
        kinds[split] = {k: sum(1 for r in records if r["name"].endswith(k)) for k in KINDS}
        tmp = out_dir / f".{split}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records), encoding="utf-8")
        tmp.replace(out_dir / f"{split}.jsonl")
    manifest = {
        "generator": "rlef.common.data.feedback_tasks", "generator_version": GENERATOR_VERSION, "seed": seed,
        "counts": counts, "kinds": kinds, "hidden_fraction": hidden_fraction,
        "held_out": held_out_spec(held_out_combinations, held_out_per_operation, held_out_inputs),
        "combinations": {s: [f"{o}/{f}" for o, f in c] for s, c in combos.items()},
        "conventions": [f.name for f in formats],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_hold_out(combinations: int | None, per_operation: int, inputs: bool) -> int:
    """The number of held-out combinations (default 8), once the ways to hold out asked for do not conflict:
    inputs, or combinations (random pairs, or per operation)."""
    if inputs and (per_operation or combinations is not None):
        other = "--held-out-per-operation" if per_operation else "--held-out-combinations"
        raise TaskGenerationError(f"--held-out-inputs and {other} are two ways to hold out: pick one")
    return 8 if combinations is None else combinations


def held_out_spec(combinations: int, per_operation: int, inputs: bool = False) -> dict[str, Any]:
    """How the held-out sets were drawn, as the manifest records it (manifests without it: 8 random pairs)."""
    if inputs:
        return {"inputs": HELD_OUT_INPUT_SHARE}
    return {"per_operation": per_operation} if per_operation else {"combinations": combinations}


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of a generated task directory, or None when ``path`` holds none (or an unreadable one)."""
    try:
        return json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
