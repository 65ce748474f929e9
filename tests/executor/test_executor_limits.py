"""Per-test limits that forking cannot escape (real nsjail, real cgroups of this machine), the refusal to run
without them, and the bounded traceback of a deep recursion.

Each finding of issue 11 is a test here that failed before the cgroups: forked children sharing a 1 s CPU
limit were judged ``pass``, forked children holding 4 x 60 MB under 128 MB passed, a program killing itself
with SIGKILL was a guessed ``oom``, and a 10**6-deep recursion reported only ``RecursionError``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from rlef.common.config import ExecutorConfig
from rlef.common.errors import SandboxError
from rlef.common.protocol.messages import Limits
from rlef.common.protocol.messages import TestCase as Case
from rlef.executor.cgroups import CgroupUnavailable
from rlef.executor.cgroups_setup import open_cgroups, own_cgroups
from rlef.executor.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]
RLEF = str(Path(sys.executable).with_name("rlef"))
LIMITS = Limits(time_s=1.0, memory_bytes=128 << 20)
EMPTY = Case(input="", output="done")

FORKED_SPINNERS = """
import os, time
pids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        start = time.process_time()
        while time.process_time() - start < {each}:
            pass
        os._exit(0)
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
print("done")
"""


def test_cgroups_are_detected_on_this_machine(sandbox: Sandbox) -> None:
    assert sandbox.limits_mode in ("v1", "v2")
    assert sandbox.cgroups is not None
    if Path("/sys/fs/cgroup/memory/cgroup.procs").exists() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        assert sandbox.limits_mode == "v1"  # this CI machine: v1 mounted, the unified hierarchy has no controllers


def test_forked_children_share_the_cpu_time_limit() -> None:
    """Each child stays under the limit alone (0.6 s of 1 s); together they exceed it (2.4 s)."""
    # A generous wall clock, so that on a loaded machine it is the CPU time that ends the test.
    sandbox = Sandbox(ExecutorConfig(wall_time_factor=20))
    try:
        outcome = sandbox.run(FORKED_SPINNERS.format(each=0.6), [EMPTY], LIMITS)
    finally:
        sandbox.close()
    test = outcome.tests[0]
    assert test.status == "timeout", test
    assert test.cpu_s is not None and test.cpu_s >= LIMITS.time_s


def test_cpu_time_of_children_is_reported(sandbox: Sandbox) -> None:
    outcome = sandbox.run(FORKED_SPINNERS.format(each=0.05), [EMPTY], Limits(time_s=5.0, memory_bytes=128 << 20))
    test = outcome.tests[0]
    assert test.status == "pass", test
    assert test.cpu_s is not None and test.cpu_s >= 4 * 0.05  # the direct child alone used almost none


def test_forked_children_share_the_memory_limit(sandbox: Sandbox) -> None:
    """4 children touching 60 MB each under 128 MB: the cgroup's OOM killer acts, the test is oom."""
    code = (
        "import os, time\npids = []\nfor _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
        "        b = bytearray(60 << 20)\n        for i in range(0, len(b), 4096):\n            b[i] = 1\n"
        "        time.sleep(0.3)\n        os._exit(0)\n    pids.append(pid)\n"
        "for pid in pids:\n    os.waitpid(pid, 0)\nprint('done')\n"
    )
    test = sandbox.run(code, [EMPTY], LIMITS).tests[0]
    assert test.status == "oom", test
    assert test.memory_bytes is not None and test.memory_bytes <= LIMITS.memory_bytes


def test_peak_memory_is_reported(sandbox: Sandbox) -> None:
    code = "b = bytearray(40 << 20)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\nprint('done')\n"
    test = sandbox.run(code, [EMPTY], LIMITS).tests[0]
    assert test.status == "pass", test
    assert test.memory_bytes is not None and 40 << 20 <= test.memory_bytes <= LIMITS.memory_bytes


def test_process_count_is_bounded_per_test() -> None:
    config = ExecutorConfig(max_processes=16)
    sandbox = Sandbox(config)
    code = (
        "import os, time\ncount = 0\nfor _ in range(100):\n    try:\n        pid = os.fork()\n    except OSError:\n"
        "        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    count += 1\nprint(count)\n"
    )
    try:
        outcome = sandbox.run(code, [Case(input="", output="15"), Case(input="", output="15")], LIMITS)
    finally:
        sandbox.close()
    # 16 processes per test: the program and 15 children, in every test (the first test's are gone).
    assert [t.status for t in outcome.tests] == ["pass", "pass"], outcome.tests


def test_a_program_killing_itself_is_not_a_guessed_oom(sandbox: Sandbox) -> None:
    test = sandbox.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", [EMPTY], LIMITS).tests[0]
    assert (test.status, test.exit_code) == ("runtime_error", -9), test


def test_memory_error_is_still_oom_with_its_traceback(sandbox: Sandbox) -> None:
    test = sandbox.run("x = bytearray(1 << 31)\n", [EMPTY], LIMITS).tests[0]
    assert test.status == "oom"
    assert test.stderr.rstrip().endswith("MemoryError")
    assert "x = bytearray(1 << 31)" in test.stderr  # the source line, as python3 prints it


def test_test_cgroups_are_removed_after_the_job(sandbox: Sandbox) -> None:
    sandbox.run("print('done')", [EMPTY, EMPTY, EMPTY], LIMITS)
    assert sandbox.cgroups is not None
    for base in sandbox.cgroups.bases.values():
        assert base.is_dir()
        assert [p.name for p in base.iterdir() if p.is_dir()] == []


# ---------------------------------------------------------------- no cgroup: refuse, or weak limits on request


def test_refuses_to_start_without_a_usable_cgroup(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="refusing to start.*executor.allow_weak_limits"):
        Sandbox(ExecutorConfig(cgroup_root=str(tmp_path)))
    with pytest.raises(SandboxError, match="executor.cgroup=none"):
        Sandbox(ExecutorConfig(cgroup="none"))


def test_v2_without_controllers_says_why() -> None:
    unified = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    if not unified.exists() or {"memory", "pids"} <= set(unified.read_text().split()):
        pytest.skip("this host's cgroup v2 is usable or absent")
    with pytest.raises(CgroupUnavailable, match="offers no memory"):
        open_cgroups("v2")


def test_weak_limits_when_the_user_opts_in(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import rlef.executor.sandbox as sandbox_module

    sandbox_module._weak_warned = False
    with caplog.at_level(logging.WARNING, logger="rlef.executor.sandbox"):
        # A generous wall clock, so that on a loaded machine only the CPU-time limit could end the test.
        sandbox = Sandbox(ExecutorConfig(cgroup_root=str(tmp_path), allow_weak_limits=True, wall_time_factor=20))
    try:
        assert sandbox.limits_mode == "weak" and sandbox.cgroups is None
        assert "WEAK LIMITS" in caplog.text
        outcome = sandbox.run(FORKED_SPINNERS.format(each=0.3), [EMPTY], LIMITS)
    finally:
        sandbox.close()
    # What the weak mode cannot see: 1.2 s of CPU in children under a 1 s limit passes.
    assert outcome.tests[0].status == "pass"


def test_executor_process_refuses_to_start_without_cgroups(tmp_path: Path) -> None:
    proc = subprocess.run(
        [RLEF, "executor", "--config", str(ROOT / "configs/tiny-cpu.yaml"), f"executor.cgroup_root={tmp_path}",
         "executor.metrics_port=0", "executor.workers=1", "endpoints.broker_backend_port=9"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    assert "refusing to start" in proc.stderr and "allow_weak_limits" in proc.stderr


def test_own_cgroups_parses_this_process() -> None:
    own = own_cgroups()
    assert "" in own or "memory" in own


# ---------------------------------------------------------------- bounded traceback


@pytest.mark.slow
def test_deep_recursion_keeps_its_traceback(sandbox: Sandbox) -> None:
    code = "import sys\nsys.setrecursionlimit(10 ** 6)\n\ndef f(n):\n    return f(n + 1)\n\nf(0)\n"
    test = sandbox.run(code, [EMPTY], Limits(time_s=10.0, memory_bytes=1 << 30)).tests[0]
    assert test.status == "runtime_error", test
    err = test.stderr
    assert err.rstrip().endswith("RecursionError: maximum recursion depth exceeded"), err[-500:]
    assert 'File "main.py", line 5, in f' in err and "return f(n + 1)" in err
    assert "frames omitted" in err
    assert len(err) < 8192


def test_chained_exceptions_render_like_python(sandbox: Sandbox) -> None:
    code = (
        "def parse(s):\n    return int(s)\n\ntry:\n    parse('x')\nexcept ValueError as exc:\n"
        "    raise KeyError('while parsing') from exc\n"
    )
    err = sandbox.run(code, [EMPTY], LIMITS).tests[0].stderr
    assert "ValueError: invalid literal for int() with base 10: 'x'" in err
    assert "The above exception was the direct cause of the following exception:" in err
    assert err.rstrip().endswith("KeyError: 'while parsing'")
    assert err.index("ValueError") < err.index("KeyError")
    assert 'File "main.py", line 2, in parse' in err


@pytest.mark.slow
def test_weak_executors_are_named_by_the_broker(tmp_path: Path) -> None:
    from helpers.executor_service import start_executor_service

    overrides = ["executor.cgroup=none", "executor.allow_weak_limits=true"]
    with start_executor_service(tmp_path, workers=1, overrides=overrides) as service:
        broker_log = (tmp_path / "broker.log").read_text()
        executor_log = (tmp_path / "executor-0.log").read_text()
    assert "executor test-executor-0 runs with WEAK LIMITS" in broker_log, service.logs()
    assert "per-test limits: WEAK" in executor_log and "WEAK LIMITS: no cgroup" in executor_log


@pytest.mark.slow
def test_executors_with_cgroups_say_which(tmp_path: Path) -> None:
    from helpers.executor_service import start_executor_service

    with start_executor_service(tmp_path, workers=1):
        executor_log = (tmp_path / "executor-0.log").read_text()
        broker_log = (tmp_path / "broker.log").read_text()
    assert "per-test limits: cgroup v" in executor_log
    assert "WEAK" not in broker_log


def test_cgroup_file_formats(tmp_path: Path) -> None:
    """The parsers behind v2 detection and accounting, on the kernel's formats (v2 cannot run on this host)."""
    from rlef.executor.cgroups import _keyed

    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/rlef-executor.service\n")
    assert own_cgroups(str(proc)) == {"": "/system.slice/rlef-executor.service"}
    proc.write_text("12:pids:/\n4:memory:/a/b\n2:cpu,cpuacct:/c\n0::/\n")
    assert own_cgroups(str(proc)) == {"pids": "/", "memory": "/a/b", "cpu": "/c", "cpuacct": "/c", "": "/"}
    events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n"
    assert _keyed(events)["oom_kill"] == 2 and _keyed(events)["max"] == 12
    assert _keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")["oom_kill"] == 3
    assert _keyed("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")["usage_usec"] == 1_500_000
