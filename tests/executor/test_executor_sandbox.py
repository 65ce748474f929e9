"""Containment and classification of the nsjail sandbox, one test per threat (real nsjail, real runner).

Each threat runs as the first test of a job whose second test is a plain echo: the threat must get its
class AND the jail must still serve the next test (nothing a test does leaks into the next one).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from rlef.common.config import ExecutorConfig
from rlef.common.errors import SandboxError
from rlef.common.protocol.messages import Limits
from rlef.common.protocol.messages import TestCase as Case
from rlef.common.protocol.messages import TestResult as Result
from rlef.executor.jail import _children
from rlef.executor.sandbox import Sandbox
from rlef.executor.verdicts import classify, clean_paths

ROOT = Path(__file__).resolve().parents[2]
LIMITS = Limits(time_s=1.0, memory_bytes=128 << 20)
ECHO = Case(input="__echo__", output="__echo__")


def run_threat(sandbox: Sandbox, code: str, stdin: str = "", expected: str = "", limits: Limits = LIMITS) -> Result:
    """Run ``code`` (which echoes its input when it is ``__echo__``) on the threat test then on an echo test."""
    program = "import sys\n_data = sys.stdin.read()\nif _data == '__echo__':\n    print(_data)\n    raise SystemExit\n" + code
    outcome = sandbox.run(program, [Case(input=stdin, output=expected), ECHO], limits)
    assert outcome.compile_ok, outcome.compile_message
    assert [t.status for t in outcome.tests][1:] == ["pass"], outcome.tests
    return outcome.tests[0]


def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    assert run_threat(sandbox, "while True:\n    pass\n").status == "timeout"


def test_sleep_times_out(sandbox: Sandbox) -> None:
    result = run_threat(sandbox, "import time\ntime.sleep(30)\n")
    assert result.status == "timeout"
    assert result.time_s < 30


def test_memory_bomb_is_oom(sandbox: Sandbox) -> None:
    result = run_threat(sandbox, "x = bytearray(1 << 31)\n")
    assert result.status == "oom"
    assert "MemoryError" in result.stderr


def test_gradual_memory_bomb_is_oom(sandbox: Sandbox) -> None:
    assert run_threat(sandbox, "chunks = []\nwhile True:\n    chunks.append(' ' * (1 << 20))\n").status == "oom"


def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    result = run_threat(sandbox, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    assert result.status in ("timeout", "runtime_error")


@pytest.mark.parametrize("address", [("127.0.0.1", 22), ("8.8.8.8", 53), ("1.1.1.1", 443)])
def test_no_network(sandbox: Sandbox, address: tuple[str, int]) -> None:
    code = f"import socket\ns = socket.create_connection({address!r}, timeout=0.5)\nprint('connected')\n"
    result = run_threat(sandbox, code, expected="connected")
    assert result.status == "runtime_error"
    assert "connected" not in result.stdout


def test_cannot_write_under_usr(sandbox: Sandbox) -> None:
    result = run_threat(sandbox, "open('/usr/lib/evil', 'w').write('x')\nprint('wrote')\n", expected="wrote")
    assert result.status == "runtime_error"
    assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr


def test_cannot_read_etc_shadow(sandbox: Sandbox) -> None:
    assert Path("/etc/shadow").exists()
    result = run_threat(sandbox, "print(open('/etc/shadow').read())\n", expected="root")
    assert result.status == "runtime_error"
    assert "root:" not in result.stdout


@pytest.mark.parametrize("target", [str(ROOT / "pyproject.toml"), str(Path(__file__)), "/root/.bashrc"])
def test_cannot_read_project_files(sandbox: Sandbox, target: str) -> None:
    result = run_threat(sandbox, f"print(open({target!r}).read()[:20])\n", expected="x")
    assert result.status == "runtime_error"
    assert "Error" in result.stderr


def test_huge_output_is_output_limit(sandbox: Sandbox) -> None:
    cap = ExecutorConfig().max_output_bytes
    result = run_threat(sandbox, "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\n")
    assert result.status == "output_limit"
    assert len(result.stdout) <= cap


def test_jobs_do_not_share_tmp() -> None:
    """Job A writes /tmp and holds it, alive, until job B, in its own jail, has looked for the file."""
    config = ExecutorConfig()
    writer, reader = Sandbox(config), Sandbox(config)
    limits = Limits(time_s=30.0, memory_bytes=128 << 20)
    results: dict[str, object] = {}

    def job_a() -> None:
        # A writes its file, then sleeps (nearly no CPU) until the test writes into A's /tmp/gate once B is done.
        # The test cannot create a file there (its uid is not mapped in the jail: EOVERFLOW), so A makes it, empty.
        code = ("import os, time\nopen('/tmp/gate', 'w').close()\nopen('/tmp/secret', 'w').write('hunter2')\n"
                "while not os.path.getsize('/tmp/gate'):\n    time.sleep(0.01)\nprint(open('/tmp/secret').read())\n")
        results["a"] = writer.run(code, [Case(input="", output="hunter2")], limits)

    thread = threading.Thread(target=job_a)
    thread.start()
    # Wait for the real precondition: job A's file exists in A's jail (seen through its test process's root).
    deadline = time.monotonic() + 60
    jail_tmp: Path | None = None
    while jail_tmp is None and time.monotonic() < deadline and thread.is_alive():
        proc = writer._proc
        runner = _children(proc.pid) if proc is not None else []
        for pid in (_children(runner[0]) if runner else []):
            if os.path.exists(f"/proc/{pid}/root/tmp/secret"):
                jail_tmp = Path(f"/proc/{pid}/root/tmp")
        time.sleep(0.01)
    assert jail_tmp is not None, "job A never wrote its file"
    try:
        code = "import os\nprint(os.listdir('/tmp'))\nprint(open('/tmp/secret').read())\n"
        results["b"] = reader.run(code, [Case(input="", output="hunter2")], limits)
        assert thread.is_alive()  # A held its file the whole time B looked
    finally:
        if thread.is_alive():
            (jail_tmp / "gate").write_text("go")
        thread.join(120)
    assert results["a"].tests[0].status == "pass"  # type: ignore[union-attr]
    b = results["b"].tests[0]  # type: ignore[union-attr]
    assert b.status == "runtime_error"
    assert b.stdout.strip() == "[]"
    assert "hunter2" not in b.stdout and "FileNotFoundError" in b.stderr


def test_signalling_the_parent_does_nothing(sandbox: Sandbox) -> None:
    code = (
        "import os, signal\n"
        "for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):\n"
        "    for pid in (os.getppid(), 1):\n"
        "        try:\n"
        "            os.kill(pid, sig)\n"
        "        except OSError:\n"
        "            pass\n"
        "print('still here')\n"
    )
    assert run_threat(sandbox, code, expected="still here").status == "pass"


def test_no_child_survives_its_test(sandbox: Sandbox) -> None:
    """Test 1 leaves a daemon behind (detached, own session); test 2 finds it gone."""
    code = (
        "import os, sys, time\n"
        "data = sys.stdin.read()\n"
        "if data == 'spawn':\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os.setsid()\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    open('/tmp/pid', 'w').write(str(pid))\n"
        "    print('spawned')\n"
        "else:\n"
        "    pid = int(open('/tmp/pid').read())\n"
        "    try:\n"
        "        os.kill(pid, 0)\n"
        "        print('alive')\n"
        "    except ProcessLookupError:\n"
        "        print('gone')\n"
    )
    outcome = sandbox.run(code, [Case(input="spawn", output="spawned"), Case(input="check", output="gone")], LIMITS)
    assert [t.status for t in outcome.tests] == ["pass", "pass"], outcome.tests


def test_process_runs_unprivileged_in_its_own_namespaces(sandbox: Sandbox) -> None:
    code = "import os, socket\nprint(os.getuid(), os.getgid(), socket.gethostname())\n"
    outcome = sandbox.run(code, [Case(input="", output="65534 65534 sandbox")], LIMITS)
    assert outcome.tests[0].status == "pass", outcome.tests


# ---------------------------------------------------------------- classification


def test_syntax_error_runs_no_test(sandbox: Sandbox) -> None:
    outcome = sandbox.run("def f(:\n    pass\n", [ECHO, ECHO], LIMITS)
    assert not outcome.compile_ok
    assert outcome.tests == []
    assert 'File "main.py", line 1' in outcome.compile_message
    assert "SyntaxError" in outcome.compile_message


def test_runtime_error_traceback_is_clean(sandbox: Sandbox) -> None:
    outcome = sandbox.run("def f(x):\n    return 1 // x\n\nprint(f(0))\n", [Case(input="", output="")], LIMITS)
    test = outcome.tests[0]
    assert test.status == "runtime_error"
    assert test.exit_code == 1
    assert 'File "main.py", line 4, in <module>' in test.stderr
    assert 'File "main.py", line 2, in f' in test.stderr
    assert test.stderr.rstrip().endswith("ZeroDivisionError: integer division or modulo by zero")
    assert "runner" not in test.stderr and "/rlef" not in test.stderr


def test_wrong_answer_and_pass_use_the_checker(sandbox: Sandbox) -> None:
    tests = [Case(input="2 3", output="5"), Case(input="2 3", output="6"), Case(input="0.1 0.2", output="0.3")]
    outcome = sandbox.run("a, b = map(float, input().split())\nprint(a + b)\n", tests, LIMITS)
    assert [t.status for t in outcome.tests] == ["pass", "wrong_answer", "pass"]


def test_exit_codes_like_python(sandbox: Sandbox) -> None:
    cases = {"raise SystemExit(3)": (3, "runtime_error"), "import sys\nsys.exit('bye')": (1, "runtime_error"),
             "import sys\nsys.exit(0)": (0, "pass"), "import os\nos._exit(0)": (0, "pass")}
    for code, (exit_code, status) in cases.items():
        test = sandbox.run(code, [Case(input="", output="")], LIMITS).tests[0]
        assert (test.exit_code, test.status) == (exit_code, status), code


def test_stop_on_first_failure(sandbox: Sandbox) -> None:
    tests = [Case(input="1", output="1"), Case(input="2", output="3"), Case(input="3", output="3")]
    outcome = sandbox.run("print(input())", tests, LIMITS, stop_on_first_failure=True)
    assert [t.status for t in outcome.tests] == ["pass", "wrong_answer"]


def test_gate_runs_the_rest_only_when_the_gating_tests_pass(sandbox: Sandbox) -> None:
    tests = [Case(input="1", output="1"), Case(input="2", output="2"), Case(input="3", output="4"), Case(input="4", output="4")]
    passing_gate = sandbox.run("print(input())", tests, LIMITS, gate_tests=2)
    assert [t.status for t in passing_gate.tests] == ["pass", "pass", "wrong_answer", "pass"]  # no stop after the gate
    failing_gate = sandbox.run("print(input())", [Case(input="1", output="2"), *tests[1:]], LIMITS, gate_tests=2)
    assert [t.status for t in failing_gate.tests] == ["wrong_answer", "pass"]  # the whole gate runs, the rest not
    assert [t.status for t in sandbox.run("print(input())", tests, LIMITS, gate_tests=0).tests] == [
        "pass", "pass", "wrong_answer", "pass"]


def test_stdin_is_fresh_per_test(sandbox: Sandbox) -> None:
    tests = [Case(input=f"{i}\n" * 3, output=str(3 * i)) for i in range(5)]
    outcome = sandbox.run("import sys\nprint(sum(int(x) for x in sys.stdin))\n", tests, LIMITS)
    assert [t.status for t in outcome.tests] == ["pass"] * 5


def test_large_input_and_output_round_trip(sandbox: Sandbox) -> None:
    data = "\n".join(str(i) for i in range(100_000))
    outcome = sandbox.run("import sys\nsys.stdout.write(sys.stdin.read())\n", [Case(input=data, output=data)], LIMITS)
    assert outcome.tests[0].status == "pass"


def test_non_utf8_and_nul_output(sandbox: Sandbox) -> None:
    code = "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe a\\x00b')\n"
    test = sandbox.run(code, [Case(input="", output="a\x00b")], LIMITS).tests[0]
    assert test.status == "wrong_answer"  # the invalid bytes are a token of their own
    assert "a\x00b" in test.stdout and "\ufffd" in test.stdout
    test = sandbox.run("print('a\\x00b')", [Case(input="", output="a\x00b")], LIMITS).tests[0]
    assert test.status == "pass"


def test_sigxcpu_classified_as_timeout() -> None:
    header = {"status": "exit", "signal": 24, "exit_code": None, "time_s": 1.0, "cpu_s": 1.0}
    assert classify(header, b"", b"", "", LIMITS).status == "timeout"
    header = {"status": "exit", "signal": 9, "exit_code": None, "time_s": 0.1, "cpu_s": 0.05}
    assert classify(header, b"", b"", "", LIMITS).status == "oom"
    header = {"status": "exit", "signal": 11, "exit_code": None, "time_s": 0.1, "cpu_s": 0.05}
    assert classify(header, b"", b"", "", LIMITS).status == "runtime_error"
    header = {"status": "runner_error", "error": "fork failed"}
    assert classify(header, b"", b"", "", LIMITS).status == "sandbox_error"


def test_clean_paths() -> None:
    assert clean_paths('File "/rlef/runner.py", line 9') == 'File "runner", line 9'


# ---------------------------------------------------------------- start-up failures


def test_missing_nsjail_is_a_clear_error() -> None:
    with pytest.raises(SandboxError, match="nsjail not found"):
        Sandbox(ExecutorConfig(nsjail="/nonexistent/nsjail"))


def test_nsjail_setup_failure_fails_self_check() -> None:
    # An interpreter the jailed uid cannot reach (the venv lives outside the jail's mounts).
    sandbox = Sandbox(ExecutorConfig(python=str(ROOT / ".venv/bin/python")))
    with pytest.raises(SandboxError, match="self-check failed"):
        sandbox.self_check()


def test_broken_nsjail_binary_fails_self_check(tmp_path: Path) -> None:
    fake = tmp_path / "nsjail"
    fake.write_text("#!/bin/sh\necho 'setup failed' >&2\nexit 255\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxError, match="setup failed"):
        Sandbox(ExecutorConfig(nsjail=str(fake))).self_check()


def test_job_results_stay_within_the_output_budget() -> None:
    from rlef.executor.jobs import fit_outputs

    tests = [Result(status="wrong_answer", stdout="x" * 2000, stderr="e" * 10) for _ in range(10)]
    fitted = fit_outputs(tests, budget=5000)
    assert all(len(t.stdout) == 1024 for t in fitted)
    assert all(t.stderr == "e" * 10 and t.status == "wrong_answer" for t in fitted)
    assert fit_outputs(tests, budget=30_000) is tests


def test_binary_stdio_like_python3(sandbox: Sandbox) -> None:
    """Fast-I/O idioms of competitive programs: sys.stdin.buffer, sys.stdout.buffer, open(0)."""
    code = (
        "import sys\n"
        "first = sys.stdin.buffer.readline()\n"
        "rest = sys.stdin.buffer.read().split()\n"
        "sys.stdout.buffer.write(b'%d %d\\n' % (int(first), sum(map(int, rest))))\n"
        "print('done', flush=True)\n"
    )
    data = "3\n" + " ".join(str(i) for i in range(50_000)) + "\n"
    outcome = sandbox.run(code, [Case(input=data, output=f"3 {sum(range(50_000))} done")], LIMITS)
    assert outcome.tests[0].status == "pass", outcome.tests
    outcome = sandbox.run("print(sum(map(int, open(0).read().split())))", [Case(input="1 2 3", output="6")], LIMITS)
    assert outcome.tests[0].status == "pass", outcome.tests


def test_jail_dying_mid_job_is_retried_in_a_fresh_jail() -> None:
    import uuid

    from rlef.common.protocol.messages import ExecutionJob
    from rlef.executor.jobs import execute

    config = ExecutorConfig()
    sandbox = Sandbox(config)
    job = ExecutionJob(job_id=uuid.uuid4().hex, code="import time\ntime.sleep(0.1)\nprint(input())\n",
                       tests=[Case(input=str(i), output=str(i)) for i in range(8)], limits=LIMITS)
    killed: list[int] = []

    def kill_first_jail() -> None:
        while sandbox._proc is None:
            time.sleep(0.01)
        time.sleep(0.3)
        proc = sandbox._proc
        assert proc is not None
        killed.append(proc.pid)
        proc.kill()  # the whole jail dies under the runner: our fault, not the program's

    killer = threading.Thread(target=kill_first_jail)
    killer.start()
    result = execute(job, sandbox, config, "w")
    killer.join()
    assert killed
    assert result.passed, result
    assert [t.status for t in result.tests] == ["pass"] * 8
    sandbox.close()


def test_jail_dying_twice_is_a_sandbox_error_not_the_programs_fault() -> None:
    import uuid

    from rlef.common.protocol.messages import ExecutionJob
    from rlef.executor.jobs import execute

    config = ExecutorConfig()
    sandbox = Sandbox(config)
    job = ExecutionJob(job_id=uuid.uuid4().hex, code="import time\ntime.sleep(0.1)\nprint(input())\n",
                       tests=[Case(input=str(i), output=str(i)) for i in range(20)], limits=LIMITS)
    done = threading.Event()

    def keep_killing() -> None:
        seen: set[int] = set()
        while not done.is_set():
            proc = sandbox._proc
            if proc is not None and proc.pid not in seen:
                time.sleep(0.2)
                seen.add(proc.pid)
                proc.kill()
            time.sleep(0.01)

    killer = threading.Thread(target=keep_killing)
    killer.start()
    try:
        result = execute(job, sandbox, config, "w")
    finally:
        done.set()
        killer.join()
        sandbox.close()
    assert result.status == "sandbox_error"
    assert "exited mid-job" in result.error
    assert result.tests_total == 20


def test_time_limit_bounds_cpu_time_and_wall_clock_is_a_multiple(sandbox: Sandbox) -> None:
    """As in the reference harness: the limit is CPU time; waiting (sleep) is bounded by limit x wall factor."""
    assert ExecutorConfig().wall_time_factor >= 1.5
    outcome = sandbox.run("import time\ntime.sleep(1.3)\nprint(input())\n", [Case(input="ok", output="ok")], LIMITS)
    assert outcome.tests[0].status == "pass", outcome.tests
    assert outcome.tests[0].time_s >= 1.3
