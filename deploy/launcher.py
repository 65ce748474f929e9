"""`rlef launch`: one RLEF run on one machine, every role a separate supervised process.

Scope: prepare the run directory (``config.yaml`` = the resolved config every role reads, ``logs/``,
``prometheus/targets/local.json``), optionally start a local Prometheus, supervise the roles
(:mod:`rlef.deploy.supervisor`) while showing progress, and at the end write ``launch.json`` and run
``rlef report RUN_DIR`` when the monitoring role provides it. The run ends when the learner exits: it stops
by itself after ``deploy.max_batches`` batches (or ``learner.total_updates``), and its exit code is the
launcher's. Non-goals: multi-machine runs (SLURM and Kubernetes recipes in deploy/slurm, deploy/k8s).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from rlef.common.config import RlefConfig, dump_config
from rlef.common.errors import ConfigError
from rlef.deploy.process import Backoff, ProcessSpec
from rlef.deploy.specs import metrics_targets, rlef_command, role_specs
from rlef.deploy.supervisor import Supervisor, summary

log = logging.getLogger(__name__)

def prepare_run_dir(config: RlefConfig) -> Path:
    """Create the run directory and write the resolved config; returns the config file's path.

    ``run.output_dir`` is made absolute (in place) so a process started later from another directory (an
    extra actor, ``rlef report``) finds the same run directory.
    """
    config.run.output_dir = config.run.output_dir.resolve()
    run_dir = config.run.run_dir
    for sub in ("logs", "metrics", "prometheus"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(dump_config(config))
    return path


def write_prometheus_targets(config: RlefConfig) -> Path:
    """RUN_DIR/prometheus/targets/local.json: every process' /metrics (monitoring's file_sd layout)."""
    from rlef.monitoring.targets import write_targets

    return write_targets(config.run.run_dir / "prometheus" / "targets" / "local.json", metrics_targets(config))


def prometheus_spec(config: RlefConfig, targets: Path) -> ProcessSpec:
    """A local Prometheus (Debian's binary) with the monitoring role's local scrape config and rules; TSDB in the run dir."""
    from rlef.monitoring.promconfig import prometheus_command, write_prometheus_config

    prom_dir = (config.run.run_dir / "prometheus").resolve()
    prom_config = write_prometheus_config(prom_dir, [targets.parent.resolve() / "*.json"], "local", config.monitoring.scrape_interval_s)
    argv = prometheus_command(prom_config, prom_dir / "data", config.monitoring.prometheus_port)
    return ProcessSpec("prometheus-0", "prometheus", tuple(argv))


def _report_available() -> bool:
    from rlef.common.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return "report" in sub.choices  # type: ignore[attr-defined]


def run_report(run_dir: Path, timeout_s: float = 600) -> int | None:
    """``rlef report RUN_DIR`` (monitoring role) if installed; its output goes to logs/report.log."""
    if not _report_available():
        log.info("no `rlef report` command installed: skipping the report")
        return None
    with open(run_dir / "logs" / "report.log", "ab") as out:
        try:
            return subprocess.run(rlef_command("report", str(run_dir)), stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            log.error("rlef report %s did not finish within %.0f s (see logs/report.log)", run_dir, timeout_s)
            return None


def launch(
    config: RlefConfig,
    *,
    resume: bool = False,
    progress: bool | None = None,
    report: bool = True,
    backoff: Backoff | None = None,
    grace_s: float = 15.0,
) -> int:
    """Run everything until the learner exits or a signal comes; returns the learner's exit code (or 128+sig)."""
    if config.deploy.learner_nodes != 1:
        raise ConfigError(
            f"deploy.learner_nodes is {config.deploy.learner_nodes}: rlef launch runs on one machine "
            "(use deploy/slurm/submit.sh or the Helm chart in deploy/k8s for several nodes)"
        )
    config_path = prepare_run_dir(config)
    run_dir = config.run.run_dir
    specs = role_specs(config, config_path.resolve(), resume=resume)
    if config.monitoring.enabled:
        targets = write_prometheus_targets(config)
        if config.monitoring.start_prometheus:
            specs.insert(0, prometheus_spec(config, targets))
    sup = Supervisor(specs, run_dir / "logs", backoff=backoff, grace_s=grace_s)
    sup.install_signal_handlers()
    log.info("run directory %s; logs in %s", run_dir, run_dir / "logs")
    started = time.time()
    code = _supervise(sup, run_dir, sys.stdout.isatty() if progress is None else progress)
    status = {"exit_code": code, "ended_by": sup.ended_by, "signal": sup.stop_signal, "started": started,
              "finished": time.time(), "processes": summary(sup)}  # fmt: skip
    (run_dir / "launch.json").write_text(json.dumps(status, indent=2) + "\n")
    log.info("run ended with exit code %d (%s)", code, sup.ended_by or "signal")
    if code == 0 and sup.stop_signal is None and config.deploy.final_evaluation.enabled:
        code = final_evaluation(config, config_path.resolve(), sup)
        if sup.stop_signal is not None:
            code = 128 + sup.stop_signal
    if report and sup.stop_signal is None:
        run_report(run_dir)
    return code


def final_evaluation(config: RlefConfig, config_path: Path, sup: Supervisor | None = None) -> int:
    """Export the final checkpoint (never a hand-picked one) and compare it with the warm start (model.path)
    on the held-out split with `rlef evaluate --compare`, on local sandboxes; the results go to RUN_DIR/eval.
    Returns the evaluation's exit code (0 when it finished). A signal to the launcher (``sup``'s stop flag) ends
    the step under way: a SIGTERM to the launcher alone (SLURM's scancel, kill) must not wait for a long evaluation."""
    fe = config.deploy.final_evaluation
    run_dir = config.run.run_dir
    final_model = run_dir / "final-model"
    steps = [
        ("export", rlef_command("export", "latest", str(final_model), "--config", str(config_path))),
        ("evaluate", rlef_command(
            "evaluate", "--config", str(config_path), "--compare", f"warm-start={config.model.path}", f"rlef={final_model}",
            "--split", fe.split, "--protocol", fe.protocol, "-R", str(fe.rollouts_per_problem),
            "--executors", str(fe.executors), "--output", str(run_dir / "eval"),
            "--fresh",  # a resumed run's final checkpoint is new: never add its episodes to the old one's
            *(["--random-feedback"] if fe.random_feedback else []), *(["--limit", str(fe.limit)] if fe.limit else []),
        )),
    ]
    for name, argv in steps:
        log.info("final evaluation: %s (log: %s)", name, run_dir / "logs" / f"final-{name}.log")
        started = time.monotonic()
        with open(run_dir / "logs" / f"final-{name}.log", "ab") as out:
            returncode = _run_until_stopped(argv, out, sup)
        if sup is not None and sup.stop_signal is not None:
            log.warning("final evaluation: %s stopped by a signal", name)
            return returncode
        if returncode != 0:
            log.error("final evaluation: %s failed with exit code %d (see logs/final-%s.log)", name, returncode, name)
            return returncode
        log.info("final evaluation: %s done in %.0f s", name, time.monotonic() - started)
    summary = run_dir / "eval" / "comparison.md"
    if summary.exists():
        print(summary.read_text(), flush=True)
    return 0


def _run_until_stopped(argv: list[str], out: IO[bytes], sup: Supervisor | None) -> int:
    """Run ``argv`` to its end, or until ``sup`` is told to stop: then :meth:`Supervisor.stop` ends it with the
    rest of the launcher's process tree (the step's own executors included), SIGTERM first, SIGKILL after the
    grace."""
    child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    while True:
        try:
            return child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if sup is not None and sup.stop_event.is_set():
                sup.stop()
                return child.wait()


def _supervise(sup: Supervisor, run_dir: Path, live: bool) -> int:
    from rlef.deploy.progress import status_line, status_table

    if live:
        from rich.live import Live

        with Live(status_table(sup, run_dir), refresh_per_second=1) as view:
            return sup.run(on_tick=lambda s: view.update(status_table(s, run_dir)))
    last = [0.0]

    def tick(s: Supervisor) -> None:
        now = time.monotonic()
        if now - last[0] >= 30:
            last[0] = now
            log.info("%s", status_line(s, run_dir))

    return sup.run(on_tick=tick)
