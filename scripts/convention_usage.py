"""Usage: python scripts/convention_usage.py EVAL_DIR TASKS_DIR

Which output convention a model writes on the hidden problems of an `rlef evaluate --compare ... --random-feedback`
run, turn by turn, split into: the problem's own (held-out) convention, one of the conventions its operation
has in the train split, the operation's other held-out convention (the valid split's), or unrecognised.

Why: held-out problems pair an operation with a convention it never has in training, so a policy can raise its
training reward without reading anything by never writing an operation's held-out conventions. This shows
whether a checkpoint did that (turn 1 stops writing "own") and whether it reads the feedback anyway (turn 2 writes
"own" far more often with real feedback than with random feedback)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from rlef.common.data import feedback_tasks as tasks_module


def convention_of(code: str) -> str:
    """The convention a program's print call writes (the generator's programs format with one f-string)."""
    hits = [
        f.name for f in tasks_module.FORMATS
        if f'"{f.prefix}{{' in code and f'}}{f.suffix}"' in code and (f.prefix or f.suffix)
    ]
    return hits[0] if len(hits) == 1 else "unrecognised"


def usage(episodes: Path, train: set[tuple[str, str]], valid: set[tuple[str, str]]) -> dict[int, Counter[str]]:
    per_turn: dict[int, Counter[str]] = {}
    for line in episodes.read_text().splitlines():
        episode = json.loads(line)
        name = tasks_module.parse_problem_name(episode["problem_id"])
        if name["kind"] != "hidden":
            continue
        for turn, code in enumerate(episode["codes"], start=1):
            written = convention_of(code)
            if written == name["format"]:
                kind = "own"
            elif (name["op"], written) in train:
                kind = "train-of-operation"
            elif (name["op"], written) in valid:
                kind = "valid-of-operation"
            else:
                kind = written
            per_turn.setdefault(turn, Counter())[kind] += 1
    return per_turn


def main(eval_dir: str, tasks_dir: str) -> None:
    manifest = json.loads((Path(tasks_dir) / "manifest.json").read_text())
    pairs = {split: {tuple(c.split("/")) for c in manifest["combinations"][split]} for split in ("train", "valid")}
    print("| model | feedback | turn | own (held-out) | train conventions of the operation | other held-out | unrecognised |")
    print("|---|---|---|---|---|---|---|")
    for model_dir in sorted(p for p in Path(eval_dir).iterdir() if p.is_dir() and (p / "real").is_dir()):
        for feedback in ("real", "random"):
            episodes = model_dir / feedback / "episodes.jsonl"
            if not episodes.exists():
                continue
            for turn, counts in sorted(usage(episodes, pairs["train"], pairs["valid"]).items()):
                total = sum(counts.values())
                share = {k: f"{100 * counts[k] / total:.1f}% ({counts[k]})" for k in
                         ("own", "train-of-operation", "valid-of-operation", "unrecognised")}
                print(f"| {model_dir.name} | {feedback} | {turn} | {share['own']} | {share['train-of-operation']} | "
                      f"{share['valid-of-operation']} | {share['unrecognised']} |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
