"""The launcher's supervisor with real processes: restarts with backoff, run end, clean stop with no orphans."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.processes import is_alive
from rlef.deploy.process import Backoff, descendants

DRIVER = Path(__file__).with_name("supervise_driver.py")


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def write_plan(tmp_path: Path, specs: list[dict], backoff=(0.25, 1.0, 60.0), grace_s: float = 3.0) -> Path:
    plan = {"log_dir": str(tmp_path / "logs"), "backoff": list(backoff), "grace_s": grace_s, "specs": specs}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def run_driver(plan: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DRIVER), str(plan)], capture_output=True, text=True, timeout=timeout)



def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_backoff_doubles_and_caps() -> None:
    b = Backoff(base_s=0.5, max_s=3.0)
    assert [b.delay(k) for k in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_descendants_finds_grandchildren_in_other_sessions() -> None:
    child = subprocess.Popen(
        py("""
        import subprocess, sys, time
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
        print(g.pid, flush=True)
        time.sleep(60)
        """),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        grandchild = int(child.stdout.readline())
        assert descendants(os.getpid()) >= {child.pid, grandchild}
        assert grandchild in descendants(child.pid)
    finally:
        os.kill(grandchild, signal.SIGKILL)
        child.kill()
        child.wait()


@pytest.mark.slow
def test_dead_actor_is_restarted_with_backoff_and_learner_exit_ends_run(tmp_path: Path) -> None:
    starts = tmp_path / "actor-starts"
    specs = [
        # An "actor" that crashes right away: restarted with delays 0.25, 0.5, 1.0, 1.0 (cap), ...
        {"name": "actor-0", "role": "actor", "restart": True,
         "argv": py(f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(3)")},
        # A healthy "executor": must keep its one process for the whole run.
        {"name": "executor-0", "role": "executor", "restart": True, "argv": py("import time; time.sleep(600)")},
        # An "actor" that finishes cleanly (exit 0: the hub said stop): done, never restarted.
        {"name": "actor-1", "role": "actor", "restart": True, "argv": py("raise SystemExit(0)")},
        # The "learner" ends the run with its exit code once the actor has been restarted 4 times.
        {"name": "learner-0", "role": "learner", "restart": False,
         "argv": py(f"""
            import os, time
            while not os.path.exists({str(starts)!r}) or len(open({str(starts)!r}).read()) < 5:
                time.sleep(0.05)
            raise SystemExit(7)
            """)},
    ]  # fmt: skip
    result = run_driver(write_plan(tmp_path, specs))
    assert result.returncode == 7, result.stderr
    delays = [float(d) for d in re.findall(r"actor-0 exited with 3 after [\d.]+ s; restarting in ([\d.]+) s", result.stderr)]
    assert delays[:4] == [0.25, 0.5, 1.0, 1.0], result.stderr
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    assert summary["actor-0"]["restarts"] >= 4
    assert summary["executor-0"]["restarts"] == 0
    assert summary["actor-1"] == {"role": "actor", "state": "exited", "restarts": 0, "returncode": 0, "leftovers_killed": 0}
    assert summary["learner-0"] == {"role": "learner", "state": "exited", "restarts": 0, "returncode": 7, "leftovers_killed": 0}
    log = (tmp_path / "logs" / "actor-0.log").read_text()
    assert log.count("==== rlef launch: starting actor-0") == summary["actor-0"]["restarts"] + 1


def _fake_learner(tmp_path: Path, port: int) -> tuple[list[str], list[str]]:
    """A "torchrun" that starts a "rank" in its own session (as torchrun does) holding ``port``, then dies of
    SIGKILL; and its restart, which binds the same port (as a resumed hub does) and exits 0."""
    rank = py(f"""
        import os, socket, time
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port})); s.listen()
        open({str(tmp_path / "rank.pid")!r}, "w").write(str(os.getpid()))
        time.sleep(600)
        """)
    first = py(f"""
        import os, signal, subprocess, time
        subprocess.Popen({rank!r}, start_new_session=True)
        while not os.path.exists({str(tmp_path / "rank.pid")!r}):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
        """)
    again = py(f"""
        import socket, sys
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {port}))  # fails (EADDRINUSE) while the old rank lives
        print("resumed with", sys.argv[1:], flush=True)
        """) + ["--resume", "auto"]
    return first, again


def test_dead_learner_is_restarted_with_resume_after_its_ranks_are_killed(tmp_path: Path) -> None:
    """Issue 11 item 5: the learner's death no longer ends the run; its surviving rank is killed first, so the
    restart (with --resume auto) can bind the hub's port; its exit 0 then ends the run."""
    from helpers.executor_service import free_port

    first, again = _fake_learner(tmp_path, free_port())
    specs = [
        {"name": "executor-0", "role": "executor", "restart": True, "argv": py("import time; time.sleep(600)")},
        {"name": "learner-0", "role": "learner", "restart": True, "argv": first, "restart_argv": again,
         "max_restarts": 3, "ends_run": True, "kill_leftovers": True},
    ]
    result = run_driver(write_plan(tmp_path, specs))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    assert summary["learner-0"] == {"role": "learner", "state": "exited", "restarts": 1, "returncode": 0, "leftovers_killed": 1}
    assert summary["executor-0"]["restarts"] == 0
    log = (tmp_path / "logs" / "learner-0.log").read_text()
    assert "resumed with ['--resume', 'auto']" in log and "Errno 98" not in log
    assert not is_alive(int((tmp_path / "rank.pid").read_text()))


def test_a_learner_that_keeps_dying_ends_the_run_after_its_restarts(tmp_path: Path) -> None:
    specs = [
        {"name": "executor-0", "role": "executor", "restart": True, "argv": py("import time; time.sleep(600)")},
        {"name": "learner-0", "role": "learner", "restart": True, "argv": py("raise SystemExit(5)"),
         "restart_argv": py("raise SystemExit(6)"), "max_restarts": 2, "ends_run": True},
    ]
    result = run_driver(write_plan(tmp_path, specs))
    assert result.returncode == 6, result.stderr
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    assert summary["learner-0"]["restarts"] == 2 and summary["learner-0"]["state"] == "exited"
    assert "learner-0 exited with 6 after 2 restart(s): not restarted again" in result.stderr


@pytest.mark.slow
def test_sigterm_stops_everything_with_no_orphans(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    record = f"open(os.path.join({str(pids)!r}, str(os.getpid())), 'w').close()"
    specs = [
        # Ignores SIGTERM: only the SIGKILL after the grace period stops it.
        {"name": "learner-0", "role": "learner", "restart": False,
         "argv": py(f"import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); {record}; time.sleep(600)")},
        # Starts a worker in its own session (like torchrun), which stays out of the actor's process group.
        {"name": "actor-0", "role": "actor", "restart": True,
         "argv": py(f"""
            import os, subprocess, sys, time
            {record}
            code = "import os, time; " + {record!r} + "; time.sleep(600)"
            subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
            time.sleep(600)
            """)},
        # Double-forks a daemon that ignores SIGTERM and re-parents away from its starter.
        {"name": "executor-0", "role": "executor", "restart": True,
         "argv": py(f"""
            import os, signal, time
            {record}
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    {record}
                    time.sleep(600)
                os._exit(0)
            time.sleep(600)
            """)},
    ]  # fmt: skip
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), str(write_plan(tmp_path, specs, grace_s=2.0))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(list(pids.iterdir())) >= 5, what="all 5 processes to start")
        started = {int(p.name) for p in pids.iterdir()}
        assert all(is_alive(pid) for pid in started)
        assert started <= descendants(driver.pid)
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 128 + signal.SIGTERM, err
    left = [pid for pid in started if is_alive(pid)]
    assert not left, f"orphans left running: {left}\n{err}"
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    assert {v["state"] for v in summary.values()} == {"stopped"}


@pytest.mark.slow
def test_launcher_sigint_while_actor_in_backoff(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) during a restart delay: the pending restart never happens, the run ends 130."""
    specs = [
        {"name": "actor-0", "role": "actor", "restart": True, "argv": py("raise SystemExit(1)")},
        {"name": "learner-0", "role": "learner", "restart": False, "argv": py("import time; time.sleep(600)")},
    ]
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), str(write_plan(tmp_path, specs, backoff=(30.0, 60.0, 60.0)))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = tmp_path / "logs" / "actor-0.log"
    wait_for(lambda: log.exists() and is_alive(driver.pid) and not (descendants(driver.pid) - _learner_tree(driver.pid)),
             what="the actor to die and wait for its restart")  # fmt: skip
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, err
    summary = json.loads((tmp_path / "logs" / "summary.json").read_text())
    assert summary["actor-0"]["state"] == "stopped" and summary["actor-0"]["restarts"] == 0
    assert log.read_text().count("==== rlef launch: starting actor-0") == 1


def _learner_tree(driver_pid: int) -> set[int]:
    """The driver's children whose command line is the sleeping learner (the only one left when the actor died)."""
    out = set()
    for pid in descendants(driver_pid):
        try:
            if b"time.sleep(600)" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.add(pid)
        except OSError:
            continue
    return out
