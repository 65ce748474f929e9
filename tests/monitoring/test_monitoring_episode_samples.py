"""Sampled episodes on disk (rotation, cap, torn lines), the filters, `rlef rollouts` and the report's section."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers.episode_records import fixed_by_feedback, ignored_feedback, never_code, solved_first
from rich.console import Console

from rlef.actor.samples import episode_sample
from rlef.common.errors import ConfigError
from rlef.monitoring.episode_samples import SampleFilter, SampleWriter, parse_version_range, read_samples, samples_dir, select
from rlef.monitoring.report_episodes import sampled_episodes_section
from rlef.monitoring.rollouts_view import print_rollouts


def _write_run(run_dir, records_by_actor):
    for actor, records in records_by_actor.items():
        writer = SampleWriter(samples_dir(run_dir, actor), max_bytes=1 << 20, file_bytes=1 << 20)
        for r in records:
            sample = episode_sample(r)
            sample["actor_id"] = actor
            writer.write(sample)
        writer.close()


@pytest.fixture
def run_dir(tmp_path):
    _write_run(tmp_path, {
        "actor-0": [fixed_by_feedback(rollout_id="r-fixed", version=2), solved_first(rollout_id="r-first", version=0)],
        "actor-1": [ignored_feedback(rollout_id="r-ignored", version=5), never_code(rollout_id="r-nocode", version=7)],
    })
    return tmp_path


def test_writer_rotates_and_counts_files_of_an_earlier_start(tmp_path):
    line = {"schema": "x", "pad": "y" * 1000}
    writer = SampleWriter(tmp_path, max_bytes=10_000, file_bytes=3000)
    for _ in range(20):
        writer.write(line)
    writer.close()
    assert writer.total_bytes <= 10_000 and writer.deleted > 0
    again = SampleWriter(tmp_path, max_bytes=10_000, file_bytes=3000)  # a restarted actor inherits the budget
    assert again.total_bytes == writer.total_bytes
    for _ in range(20):
        again.write(line)
    again.close()
    assert sum(p.stat().st_size for p in tmp_path.glob("episodes-*.jsonl")) <= 10_000


def test_reader_skips_torn_and_foreign_lines(run_dir):
    path = next(samples_dir(run_dir, "actor-0").glob("*.jsonl"))
    with open(path, "a") as fh:
        fh.write(json.dumps({"schema": "other/1", "turns": []}) + "\n")
        fh.write('{"schema": "rlef.episode_sample/1", "turns": [{"tu')  # a crash mid-line
    assert sorted(s["rollout_id"] for s in read_samples(run_dir)) == ["r-first", "r-fixed", "r-ignored", "r-nocode"]


@pytest.mark.parametrize("keep,expected", [
    (SampleFilter(fixed_by_feedback=True), ["r-fixed"]),
    (SampleFilter(ignored_feedback=True), ["r-ignored"]),
    (SampleFilter(never_code=True), ["r-nocode"]),
    (SampleFilter(statuses=("no_code",)), ["r-nocode"]),
    (SampleFilter(statuses=("solved",)), ["r-first", "r-fixed"]),
    (SampleFilter(statuses=("unsolved",)), ["r-ignored", "r-nocode"]),
    (SampleFilter(min_version=2, max_version=5), ["r-fixed", "r-ignored"]),
    (SampleFilter(max_version=0), ["r-first"]),
    (SampleFilter(actors=("actor-1",)), ["r-ignored", "r-nocode"]),
    (SampleFilter(problems=("sum_of_two",), fixed_by_feedback=True), ["r-fixed"]),
    (SampleFilter(problems=("nope",)), []),
])
def test_filters(run_dir, keep, expected):
    assert sorted(s["rollout_id"] for s in select(read_samples(run_dir), keep)) == expected


def test_version_ranges():
    assert parse_version_range("3:7") == (3, 7) and parse_version_range("3:") == (3, None)
    assert parse_version_range(":7") == (None, 7) and parse_version_range("4") == (4, 4)
    with pytest.raises(ConfigError, match="--versions"):
        parse_version_range("a:b")


def test_rendering_shows_turns_code_and_feedback(run_dir):
    console = Console(record=True, width=120, color_system=None)
    fixed = [s for s in read_samples(run_dir) if s["rollout_id"] == "r-fixed"]
    print_rollouts(fixed, total=4, console=console)
    text = console.export_text()
    for fragment in ("r-fixed", "turn 1 - policy version 2", "turn 2", "problem statement", "feedback shown",
                     "Your code failed the following tests", "print(a - b)", "print(a + b)", "wrong_answer", "fixed by feedback",
                     "1 episode(s) shown of 4 sampled"):
        assert fragment in text, fragment
    answers = [part.split("╰")[0] for part in text.split("assistant (")[1:]]
    assert len(answers) == 2 and all("```" not in a and "print(a" in a for a in answers)  # fences become highlighted blocks
    console = Console(record=True, width=120, color_system="truecolor")
    print_rollouts(fixed, total=4, console=console)
    assert "\x1b[" in console.export_text(styles=True)  # highlighted on a terminal


def _rollouts(*args):
    return subprocess.run([sys.executable, "-m", "rlef.common.cli", "rollouts", *map(str, args)], capture_output=True, text=True, timeout=60)


def test_cli_filters_and_errors(run_dir, tmp_path_factory):
    out = _rollouts(run_dir, "--fixed-by-feedback")
    assert out.returncode == 0, out.stderr
    assert "r-fixed" in out.stdout and "r-ignored" not in out.stdout and "1 episode(s) shown of 4" in out.stdout
    out = _rollouts(run_dir, "--ignored-feedback", "--list")
    assert "actor-1 #ignored" in out.stdout and "#fixed" not in out.stdout and "1 sampled episode(s)" in out.stdout
    out = _rollouts(run_dir, "--versions", "6:", "--status", "no_code")
    assert "r-nocode" in out.stdout and "r-ignored" not in out.stdout
    assert "no sampled episode matches (4 sampled" in _rollouts(run_dir, "--problem", "nope").stdout
    empty = tmp_path_factory.mktemp("empty")
    out = _rollouts(empty)
    assert out.returncode == 2 and "no sampled episodes" in out.stderr
    out = _rollouts(run_dir, "--versions", "x")
    assert out.returncode == 2 and "--versions" in out.stderr


def test_report_section_shows_one_of_each_kind(run_dir, tmp_path_factory):
    text = "\n".join(sampled_episodes_section(run_dir))
    assert "4 episode(s) sampled by 2 actor(s); solved: 2; fixed by feedback: 1, ignored the feedback: 1, never produced code: 1" in text
    fixed = text.split("### Fixed by feedback")[1].split("###")[0]
    assert "`r-fixed`" in fixed and "print(a + b)" in fixed and "Feedback shown:" in fixed
    assert "`r-ignored`" in text.split("### Ignored the feedback")[1].split("###")[0]
    assert "`r-nocode`" in text.split("### Never produced code")[1]
    only_first = tmp_path_factory.mktemp("first")
    _write_run(only_first, {"actor-0": [solved_first()]})
    assert "None in the sample." in "\n".join(sampled_episodes_section(only_first))
    assert "No sampled episodes" in "\n".join(sampled_episodes_section(tmp_path_factory.mktemp("none")))
