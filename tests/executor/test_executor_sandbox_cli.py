"""``rlef sandbox run``: one program through the real sandbox as a training job runs it (real process, real
nsjail and cgroups), text and --json, with the feedback text the model would see."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rlef.common.text.prompts import TIMEOUT_TEXT

ROOT = Path(__file__).resolve().parents[2]
RLEF = str(Path(sys.executable).with_name("rlef"))
REDTEAM = Path(__file__).with_name("redteam")


def sandbox_run(tmp_path: Path, program: str | Path, stdin: str, expected: str, *extra: str) -> subprocess.CompletedProcess:
    if isinstance(program, str):
        path = tmp_path / "main.py"
        path.write_text(program)
        program = path
    (tmp_path / "in.txt").write_text(stdin)
    (tmp_path / "out.txt").write_text(expected)
    return subprocess.run(
        [RLEF, "sandbox", "run", str(program), "--input", str(tmp_path / "in.txt"), "--expected", str(tmp_path / "out.txt"),
         "--config", str(ROOT / "configs/tiny-cpu.yaml"), *extra],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )


def test_passing_program_text(tmp_path: Path) -> None:
    proc = sandbox_run(tmp_path, "print(int(input()) * 2)\n", "21\n", "42\n")
    assert proc.returncode == 0, proc.stderr
    assert "status:       pass" in proc.stdout
    assert "cpu time:" in proc.stdout and "peak memory:" in proc.stdout
    assert "the episode would end" in proc.stdout


def test_runtime_error_json_has_the_feedback_the_model_sees(tmp_path: Path) -> None:
    proc = sandbox_run(tmp_path, "def f(x):\n    return 1 // x\n\nprint(f(int(input())))\n", "0\n", "1\n", "--json")
    assert proc.returncode == 1, proc.stderr
    info = json.loads(proc.stdout)
    assert info["status"] == "runtime_error" and info["exit_code"] == 1
    assert "ZeroDivisionError" in info["feedback"] and "input `0" in info["feedback"]
    assert info["cpu_s"] is not None and info["memory_bytes"] is not None
    assert info["limits_mode"] in ("v1", "v2")


def test_limits_from_the_command_line_and_forks_counted(tmp_path: Path) -> None:
    """A red-team program as a user would run it: forked spinners against --time-limit 0.5."""
    # A generous wall clock, so that on a loaded machine it is the CPU time of the children that ends it.
    proc = sandbox_run(tmp_path, REDTEAM / "fork_cpu_spread.py", "", "done\n", "--time-limit", "0.5",
                       "--memory-limit", str(128 << 20), "--json", "executor.wall_time_factor=20")
    info = json.loads(proc.stdout)
    assert info["status"] == "timeout", info
    assert info["limits"] == {"time_s": 0.5, "memory_bytes": 128 << 20}
    assert info["cpu_s"] >= 0.5
    assert TIMEOUT_TEXT in info["feedback"]


def test_invalid_limits_are_refused_with_the_field(tmp_path: Path) -> None:
    proc = sandbox_run(tmp_path, "print(1)\n", "", "1\n", "--time-limit", "0", "--json")
    info = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert info["status"] == "sandbox_error" and "limits.time_s" in info["error"]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    proc = sandbox_run(tmp_path, tmp_path / "nope.py", "", "")
    assert proc.returncode == 2
    assert "cannot read program" in proc.stderr
