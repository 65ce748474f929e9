"""What the launcher shows while a run goes on: per-process status and the learner's step, version, reward.

Scope: read-only views. The learner figures come from the run's own metrics log
(``RUN_DIR/metrics/learner-0.jsonl``, format in rlef.monitoring.metrics_log), read from its tail each tick,
so the launcher never needs Prometheus. Rendering is a rich table; without a terminal the launcher logs a
one-line status instead (see :func:`status_line`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from rlef.deploy.process import ManagedProcess
from rlef.deploy.supervisor import Supervisor

_TAIL_BYTES = 64 << 10
_VERSION_KEYS = ("rlef_policy_version", "policy_version", "version", "rlef_learner_policy_version")
_REWARD_KEYS = ("reward/mean", "reward")


@dataclass
class LearnerProgress:
    step: int | None = None
    version: float | None = None
    reward: float | None = None
    batches: float | None = None
    updated: float | None = None  # unix time of the line read


def _last_record(path: Path) -> dict | None:
    """The last complete JSON line of ``path`` (a torn last line is skipped: the writer may be mid-write)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - _TAIL_BYTES))
            lines = fh.read().splitlines()
    except OSError:
        return None
    for raw in reversed(lines):
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return None


def _first_value(values: dict, keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = values.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


def learner_progress(run_dir: Path) -> LearnerProgress:
    """The newest learner step/version/reward found in the run's metrics log (empty before the first line)."""
    metrics = Path(run_dir) / "metrics"
    candidates = sorted(metrics.glob("learner-*.jsonl")) if metrics.is_dir() else []
    for path in candidates:
        record = _last_record(path)
        if record is None:
            continue
        values = record.get("values") if isinstance(record.get("values"), dict) else {}
        batches = next(
            (float(v) for k, v in values.items() if k.startswith("rlef_learner_batches_total") and isinstance(v, (int, float))),
            None,
        )
        step = record.get("step")
        return LearnerProgress(
            step=step if isinstance(step, int) else None,
            version=_first_value(values, _VERSION_KEYS),
            reward=_first_value(values, _REWARD_KEYS),
            batches=batches,
            updated=record.get("time") if isinstance(record.get("time"), (int, float)) else None,
        )
    return LearnerProgress()


def _fmt(value: float | int | None, spec: str = "g") -> str:
    return "-" if value is None else format(value, spec)


def _uptime(proc: ManagedProcess, now: float) -> str:
    if proc.popen is None or proc.popen.poll() is not None:
        return "-"
    return f"{now - proc.started_at:.0f}s"


def status_table(sup: Supervisor, run_dir: Path) -> Table:
    now = time.monotonic()
    prog = learner_progress(run_dir)
    table = Table(title=f"rlef launch: {run_dir}", caption=status_caption(prog))
    for column in ("process", "state", "pid", "restarts", "uptime", "last exit"):
        table.add_column(column)
    styles = {"running": "green", "backoff": "yellow", "exited": "cyan", "stopped": "dim", "pending": "dim"}
    for proc in sup.processes:
        state = proc.state.value
        table.add_row(
            proc.spec.name,
            f"[{styles.get(state, '')}]{state}",
            _fmt(proc.pid, "d"),
            str(proc.restarts),
            _uptime(proc, now),
            _fmt(proc.returncode, "d"),
        )
    return table


def status_caption(prog: LearnerProgress) -> str:
    return f"learner step {_fmt(prog.step)}  version {_fmt(prog.version)}  reward {_fmt(prog.reward, '.3f')}"


def status_line(sup: Supervisor, run_dir: Path) -> str:
    parts = [f"{p.spec.name}={p.state.value}" + (f"(r{p.restarts})" if p.restarts else "") for p in sup.processes]
    return status_caption(learner_progress(run_dir)) + " | " + " ".join(parts)
