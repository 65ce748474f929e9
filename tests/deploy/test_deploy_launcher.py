"""`rlef launch` pieces: specs and ports from a config, progress from the metrics log, and the real CLI stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.processes import is_alive
from rlef.common.config import load_config
from rlef.deploy.process import descendants
from rlef.deploy.progress import learner_progress
from rlef.deploy.specs import metrics_targets, role_specs, with_free_ports
from rlef.monitoring.targets import read_targets

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny-cpu.yaml"


def test_role_specs_follow_the_config(tmp_path: Path) -> None:
    cfg = load_config(TINY, ["deploy.actors=3", "deploy.executors=2", "deploy.learner_ranks=2"])
    specs = role_specs(cfg, tmp_path / "config.yaml")
    names = [s.name for s in specs]
    assert names == ["executor-broker-0", "executor-0", "executor-1", "learner-0", "actor-0", "actor-1", "actor-2"]
    learner = specs[3]
    assert all(s.restart for s in specs) and [s.name for s in specs if s.ends_run] == ["learner-0"]
    # Issue 11 item 5: a dead learner is restarted from its newest checkpoint, a bounded number of times,
    # after what survived of its process tree (torchrun's ranks) was killed.
    assert learner.max_restarts == cfg.deploy.learner_restarts == 3 and learner.kill_leftovers
    assert learner.restart_argv[-2:] == ("--resume", "auto") and "--resume" not in learner.argv
    argv = list(learner.argv)
    assert argv[1:3] == ["-m", "torch.distributed.run"] and argv[argv.index("--nproc-per-node") + 1] == "2"
    assert argv[-4:] == ["rlef.common.cli", "learner", "--config", str(tmp_path / "config.yaml")]
    assert list(specs[-1].argv[-5:-2]) == ["actor", "--config", str(tmp_path / "config.yaml")]
    assert specs[-1].argv[-2] in ("--actor-index", "--index") and specs[-1].argv[-1] == "2"
    assert specs[2].argv[-2] in ("--executor-index", "--index") and specs[2].argv[-1] == "1"
    assert "--resume" in role_specs(cfg, tmp_path / "c.yaml", resume=True)[3].argv


def test_launch_refuses_several_learner_nodes(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "rlef.common.cli", "launch", "--config", str(TINY), f"run.output_dir={tmp_path}",
                          "deploy.learner_nodes=2"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "deploy.learner_nodes is 2" in out.stderr, out.stderr
    assert not (tmp_path / "tiny-cpu" / "logs").exists()


def test_metrics_targets_follow_the_port_rule() -> None:
    cfg = load_config(TINY, ["deploy.actors=2", "deploy.executors=2", "learner.metrics_port=7100",
                             "executor.metrics_port=7200", "actor.metrics_port=7300"])  # fmt: skip
    got = {(job, addr, tuple(sorted(labels.items()))) for job, addr, labels in metrics_targets(cfg)}
    assert got == {
        ("learner", "127.0.0.1:7100", (("rank", "0"),)), ("learner", "127.0.0.1:7101", (("rank", "1"),)),
        ("executor-broker", "127.0.0.1:7199", (("id", "0"),)),
        ("executor", "127.0.0.1:7200", (("id", "0"),)), ("executor", "127.0.0.1:7201", (("id", "1"),)),
        ("actor", "127.0.0.1:7300", (("id", "0"),)), ("actor", "127.0.0.1:7301", (("id", "1"),)),
    }  # fmt: skip
    assert not [t for t in metrics_targets(load_config(TINY, ["actor.metrics_port=0"])) if t[0] == "actor"]


def test_free_ports_are_distinct_and_bindable() -> None:
    cfg = with_free_ports(load_config(TINY, ["deploy.actors=2", "deploy.executors=2"]))
    ep = cfg.endpoints
    ports = [ep.rollout_port, ep.weights_port, ep.control_port, ep.broker_frontend_port, ep.broker_backend_port]
    ports += [int(a.rsplit(":", 1)[1]) for _, a, _ in metrics_targets(cfg)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_status_table_shows_every_process_and_the_learner_progress(tmp_path: Path) -> None:
    from rich.console import Console
    from rlef.deploy.process import ProcessSpec
    from rlef.deploy.progress import status_line, status_table
    from rlef.deploy.supervisor import Supervisor

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "learner-0.jsonl").write_text(json.dumps(
        {"schema": "rlef.metrics_log/1", "time": 1.0, "step": 12, "values": {"version": 3, "reward/mean": 0.25}}) + "\n")
    sup = Supervisor([ProcessSpec("learner-0", "learner", ("true",), restart=False), ProcessSpec("actor-0", "actor", ("true",))],
                     tmp_path / "logs")  # fmt: skip
    console = Console(width=120, record=True)
    console.print(status_table(sup, tmp_path))
    text = console.export_text()
    assert "learner-0" in text and "actor-0" in text and "pending" in text
    assert "learner step 12  version 3  reward 0.250" in text
    assert status_line(sup, tmp_path).endswith("learner-0=pending actor-0=pending")


def test_learner_progress_reads_the_last_complete_line(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    assert learner_progress(tmp_path).step is None
    lines = [
        {"schema": "rlef.metrics_log/1", "time": 1.0, "step": 4, "role": "learner", "id": "0", "values": {"reward/mean": -1.0}},
        {"schema": "rlef.metrics_log/1", "time": 2.0, "step": 8, "role": "learner", "id": "0",
         "values": {"reward/mean": -0.5, "rlef_policy_version": 2.0}},
    ]  # fmt: skip
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"schema": "rlef.metrics_log/1", "ti'  # torn last line
    (metrics / "learner-0.jsonl").write_text(text)
    prog = learner_progress(tmp_path)
    assert (prog.step, prog.version, prog.reward, prog.updated) == (8, 2.0, -0.5, 2.0)


def status_of(run_dir: Path, name: str) -> str:
    return json.loads((run_dir / "launch.json").read_text())["processes"][name]["state"]



@pytest.mark.slow
def test_rlef_launch_writes_the_run_dir_and_sigterm_leaves_no_orphans(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The real CLI with the real role commands (whatever state they are in): run dir, logs, clean stop."""
    cmd = [sys.executable, "-m", "rlef.common.cli", "launch", "--config", str(TINY), "--free-ports", "--progress", "log",
           "--no-report", "--grace", "5", f"run.output_dir={tmp_path}", "run.name=sigterm", "deploy.actors=2",
           f"model.path={tiny_model_dir}", "monitoring.start_prometheus=true"]  # fmt: skip
    launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "sigterm"
    seen: set[int] = set()
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and len(list((run_dir / "logs").glob("*.log"))) < 6:
            time.sleep(0.2)
        for _ in range(10):  # collect the tree for a few seconds: torchrun starts its workers a bit later
            seen |= descendants(launcher.pid)
            time.sleep(0.3)
        assert launcher.poll() is None, launcher.communicate()[1]
        launcher.send_signal(signal.SIGTERM)
        _, err = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 128 + signal.SIGTERM, err
    assert sorted(p.name for p in (run_dir / "logs").glob("*.log")) == [
        "actor-0.log", "actor-1.log", "executor-0.log", "executor-broker-0.log", "learner-0.log", "prometheus-0.log"]
    assert (run_dir / "prometheus" / "prometheus.yml").exists() and status_of(run_dir, "prometheus-0") == "stopped"
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.deploy.actors == 2 and cfg.run.run_dir == run_dir
    assert {job for job, _, _ in read_targets(run_dir / "prometheus" / "targets" / "local.json")} == {
        "learner", "executor-broker", "executor", "actor"}
    status = json.loads((run_dir / "launch.json").read_text())
    assert status["signal"] == signal.SIGTERM and set(status["processes"]) >= {"learner-0", "actor-1"}
    assert seen, "no child process was ever seen"
    assert not [pid for pid in seen if is_alive(pid)], err
    assert os.path.exists(run_dir / "logs" / "learner-0.log")


# Acts as the launcher in a process of its own, so that Supervisor.stop (which stops every descendant of the
# launcher) only reaches this test's children: a step that ignores SIGTERM when STUBBORN is set.
_FINAL_STEP_DRIVER = """
import signal, sys, threading
from pathlib import Path
from rlef.deploy.launcher import _run_until_stopped
from rlef.deploy.supervisor import Supervisor

log_dir, stubborn, ready = Path(sys.argv[1]), sys.argv[2] == "1", Path(sys.argv[3])
sup = Supervisor([], log_dir, grace_s=0.5)
sup.install_signal_handlers()
step = ("import signal, time, pathlib; "
        + ("signal.signal(signal.SIGTERM, signal.SIG_IGN); " if stubborn else "")
        + f"import os; pathlib.Path({str(ready)!r}).write_text(str(os.getpid())); time.sleep(600)")
with open(log_dir / "step.log", "ab") as out:
    _run_until_stopped([sys.executable, "-c", step], out, sup)
print("returned", flush=True)
"""


@pytest.mark.parametrize("stubborn", [False, True])
def test_a_signal_during_the_final_evaluation_stops_the_step_under_way(tmp_path: Path, stubborn: bool) -> None:
    """A SIGTERM to the launcher alone (scancel, kill) sets the supervisor's stop flag; the final evaluation's
    step (real processes) must end then, not run its minutes to the end: by SIGTERM, or by SIGKILL after the
    grace when it ignores SIGTERM."""
    ready = tmp_path / "ready"
    driver = subprocess.Popen([sys.executable, "-c", _FINAL_STEP_DRIVER, str(tmp_path), str(int(stubborn)), str(ready)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (ready.exists() and ready.read_text()):  # the step runs (ignoring SIGTERM, if stubborn) first
        assert driver.poll() is None, driver.communicate()
        time.sleep(0.05)
    step_pid = int(ready.read_text())
    driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=120)  # the step sleeps 600 s: only stopping it returns in time
    assert out.strip() == "returned", err
    assert not is_alive(step_pid)


def test_without_a_signal_the_final_evaluation_step_returns_its_own_exit_code(tmp_path: Path) -> None:
    from rlef.deploy.launcher import _run_until_stopped
    from rlef.deploy.supervisor import Supervisor

    with open(tmp_path / "out.log", "ab") as out:
        assert _run_until_stopped([sys.executable, "-c", "raise SystemExit(3)"], out, Supervisor([], tmp_path)) == 3
