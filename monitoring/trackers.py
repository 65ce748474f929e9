"""Experiment trackers (TensorBoard, Weights & Biases) as optional sinks of the run's metrics log.

Scope: what users of other RL frameworks expect to open: the same scalars ``RUN_DIR/metrics/*.jsonl`` holds,
the resolved config, and a table of the newest sampled episodes (``RUN_DIR/samples``). One :class:`RunTracker`
runs in learner rank 0 (one tracker run per training run): the learner's own records reach it through
:meth:`MetricsLog.add_sink <rlef.monitoring.metrics_log.MetricsLog.add_sink>`; every ``tracker_interval_s`` it
also reads what the other processes appended to their metrics logs (actors, executors, the broker, other
ranks; keys prefixed ``<role>-<id>/``, histogram buckets left out) and the new sampled episodes.

x axis: the learner's optimizer step. Records of other processes are logged at the newest learner step seen
(TensorBoard also keeps their wall time), so every chart of a run shares one axis and W&B's step stays monotonic.

Isolation: the learner thread only enqueues (bounded queue; a full queue drops and counts the record). Tracker
start-up (``wandb.init`` spawns a service process), I/O and file tailing all happen in one daemon thread. A
tracker that raises is logged once, closed, and dropped (``rlef_learner_tracker_errors_total{tracker}``); the
others and training go on. Each tracker is off unless switched on in ``monitoring.tensorboard`` /
``monitoring.wandb``; W&B runs offline (``RUN_DIR/wandb/offline-run-*``, upload later with ``wandb sync``)
unless ``mode: online`` or, with ``mode: auto``, ``WANDB_API_KEY`` is set.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from rlef.monitoring import metrics_tracker as M
from rlef.monitoring.episode_samples import EpisodeSample, parse_sample_line, samples_dir
from rlef.monitoring.metrics_log import SCHEMA as METRICS_SCHEMA

log = logging.getLogger(__name__)

#: Columns of the sampled-episodes table (one row per episode, newest last).
EPISODE_COLUMNS = ["time", "actor", "rollout", "problem", "versions", "turns", "turn statuses", "final", "reward",
                   "fixed by feedback", "ignored feedback", "first code", "first feedback", "last code"]
TABLE_ROWS = 50
TABLE_CELL_CHARS = 2000


class Tracker(Protocol):
    name: str

    def log_config(self, config: Mapping[str, Any]) -> None: ...
    def log_scalars(self, step: int, values: Mapping[str, float], wall_time: float) -> None: ...
    def log_episodes(self, step: int, columns: list[str], rows: list[list[Any]]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class TensorBoardTracker:
    """Event files in ``log_dir`` (torch's SummaryWriter, tensorboard's protos); read back by TensorBoard."""

    name = "tensorboard"

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=30)

    def log_config(self, config: Mapping[str, Any]) -> None:
        import yaml

        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(dict(config), sort_keys=False) + "```", 0)

    def log_scalars(self, step: int, values: Mapping[str, float], wall_time: float) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step, walltime=wall_time)

    def log_episodes(self, step: int, columns: list[str], rows: list[list[Any]]) -> None:
        self.writer.add_text("episodes/sampled", markdown_table(columns, rows), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run per training run (offline unless configured online, see the module docstring)."""

    name = "wandb"

    def __init__(self, run_name: str, directory: Path, config: Mapping[str, Any], *, mode: str, project: str,
                 entity: str | None, tags: list[str]) -> None:
        import wandb

        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        directory.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        settings = wandb.Settings(console="off", x_disable_stats=True, silent=True)
        self.run = wandb.init(project=project, entity=entity, name=run_name, dir=str(directory), mode=mode,
                              config=dict(config), tags=tags or None, settings=settings, reinit="create_new")
        self.mode = mode
        self._step = 0

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass  # given to wandb.init, so it is the run's config from its first record on

    def log_scalars(self, step: int, values: Mapping[str, float], wall_time: float) -> None:
        self._step = max(self._step, step)  # W&B drops rows whose step goes backwards
        self.run.log(dict(values), step=self._step)

    def log_episodes(self, step: int, columns: list[str], rows: list[list[Any]]) -> None:
        self._step = max(self._step, step)
        self.run.log({"episodes/sampled": self._wandb.Table(columns=columns, data=rows)}, step=self._step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def episode_row(s: EpisodeSample) -> list[Any]:
    """One table row of a sampled episode (cells cut to TABLE_CELL_CHARS)."""
    def cut(text: str | None) -> str:
        text = text or ""
        return text if len(text) <= TABLE_CELL_CHARS else text[:TABLE_CELL_CHARS] + " [...]"

    lo, hi = s.versions
    turns = s.turns
    return [
        time.strftime("%H:%M:%S", time.gmtime(float(s.get("time", 0.0)))), s.get("actor_id", ""), s.get("rollout_id", ""),
        s.get("problem_id", ""), f"{lo}" if lo == hi else f"{lo}-{hi}", len(turns),
        " ".join(str(t.get("status")) for t in turns), s.final_status, round(sum(s.get("rewards") or []), 3),
        s.fixed_by_feedback, s.ignored_feedback, cut(turns[0].get("code") if turns else None),
        cut(turns[0].get("feedback") if turns else None), cut(turns[-1].get("code") if turns else None),
    ]


class _Tail:
    """New complete lines of a growing file since the last call (a torn last line waits for its newline)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def lines(self) -> list[str]:
        try:
            size = self.path.stat().st_size
            if size < self.offset:  # truncated or replaced: start over
                self.offset, self.partial = 0, b""
            if size == self.offset:
                return []
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(size - self.offset)
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]


class RunTracker:
    """Feed enabled trackers from a background thread (see the module docstring)."""

    def __init__(self, factories: list[tuple[str, Any]], run_dir: Path, config: Mapping[str, Any], *,
                 own_log: Path | None = None, interval_s: float = 10.0, queue_size: int = 10_000) -> None:
        self.run_dir = Path(run_dir)
        self.config = dict(config)
        self.own_log = Path(own_log).resolve() if own_log is not None else None
        self.interval_s = interval_s
        self._factories = factories
        self.trackers: list[Tracker] = []
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._tails: dict[Path, _Tail] = {}
        self._episodes: deque[EpisodeSample] = deque(maxlen=TABLE_ROWS)
        self._new_episodes = False
        self.step = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="rlef-trackers", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ called by the learner (cheap, never raises)

    def log_scalars(self, step: int | None, values: Mapping[str, float | None], wall_time: float) -> None:
        """A :class:`MetricsLog` sink: enqueue one record of the learner's own log."""
        if not self._thread.is_alive():  # every tracker failed (or closed): nothing would read the queue
            return
        try:
            self._queue.put_nowait((step, values, wall_time))
        except queue.Full:
            self.dropped += 1
            M.TRACKER_DROPPED.inc()

    def close(self, timeout_s: float = 60.0) -> None:
        """Drain what is queued, write the last episode table, close every tracker."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("trackers did not finish within %.0f s; leaving them to the exit", timeout_s)

    # ------------------------------------------------------------ the tracker thread

    def _call(self, tracker: Tracker, method: str, *args: Any) -> None:
        try:
            getattr(tracker, method)(*args)
        except Exception as exc:  # noqa: BLE001 - isolation: see the module docstring
            self._fail(tracker.name, exc)
            self.trackers.remove(tracker)
            try:
                tracker.close()
            except Exception:  # noqa: BLE001
                pass

    def _fail(self, name: str, exc: BaseException) -> None:
        M.TRACKER_ERRORS.labels(name).inc()
        log.warning("tracker %s failed and is switched off for this run (training goes on): %s: %s", name, type(exc).__name__, exc)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            self._call(tracker, method, *args)

    def _run(self) -> None:
        for name, factory in self._factories:
            try:
                self.trackers.append(factory())
            except Exception as exc:  # noqa: BLE001 - a missing package or a bad key must not stop training
                self._fail(name, exc)
        self._each("log_config", self.config)
        next_poll = time.monotonic()
        while self.trackers:
            stopping = self._stop.is_set()
            self._drain(timeout=0.0 if stopping else min(1.0, max(0.0, next_poll - time.monotonic())))
            if stopping or time.monotonic() >= next_poll:
                self.poll()
                next_poll = time.monotonic() + self.interval_s
            if stopping:
                break
        self._each("close")

    def _drain(self, timeout: float) -> None:
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            step, values, wall_time = item
            if step is not None:
                self.step = max(self.step, int(step))
            clean = {k: v for k, v in values.items() if v is not None}
            if clean:
                self._each("log_scalars", self.step if step is None else int(step), clean, wall_time)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return

    def poll(self) -> None:
        """Forward what other processes logged since the last poll, and the episode table when new ones came."""
        self._forward_other_logs()
        self._collect_samples()
        if self._new_episodes and self._episodes:
            self._new_episodes = False
            self._each("log_episodes", self.step, EPISODE_COLUMNS, [episode_row(s) for s in self._episodes])
        self._each("flush")

    def _tail(self, path: Path) -> list[str]:
        tail = self._tails.get(path)
        if tail is None:
            tail = self._tails[path] = _Tail(path)
        return tail.lines()

    def _forward_other_logs(self) -> None:
        import json

        for path in sorted((self.run_dir / "metrics").glob("*.jsonl")):
            if self.own_log is not None and path.resolve() == self.own_log:
                continue
            for line in self._tail(path):
                try:
                    raw = json.loads(line)
                    if raw.get("schema") != METRICS_SCHEMA:
                        continue
                    prefix = f"{raw.get('role', '')}-{raw.get('id', '')}/"
                    values = {prefix + k: float(v) for k, v in raw["values"].items()
                              if v is not None and "_bucket{" not in k and not k.endswith("_bucket")}
                    wall_time = float(raw["time"])
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # torn or foreign line: the metrics-log reader counts those
                if values:
                    self._each("log_scalars", self.step, values, wall_time)

    def _collect_samples(self) -> None:
        for path in sorted(samples_dir(self.run_dir).glob("*/episodes-*.jsonl")):
            for line in self._tail(path):
                sample = parse_sample_line(line, path)
                if sample is not None:
                    self._episodes.append(sample)
                    self._new_episodes = True
        # Rotated-away files: forget their offsets.
        for gone in [p for p in self._tails if not p.exists()]:
            del self._tails[gone]


def tracker_factories(config: Any, run_dir: Path) -> list[tuple[str, Any]]:
    """(name, zero-argument constructor) of every tracker switched on in ``config.monitoring``."""
    mon = config.monitoring
    out: list[tuple[str, Any]] = []
    if mon.tensorboard.enabled:
        tb_dir = Path(mon.tensorboard.dir) if mon.tensorboard.dir is not None else run_dir / "tensorboard"
        out.append(("tensorboard", lambda: TensorBoardTracker(tb_dir)))
    if mon.wandb.enabled:
        wb = mon.wandb
        wb_dir = Path(wb.dir) if wb.dir is not None else run_dir
        resolved = config.model_dump(mode="json")
        out.append(("wandb", lambda: WandbTracker(config.run.name, wb_dir, resolved, mode=wb.mode, project=wb.project,
                                                  entity=wb.entity, tags=list(wb.tags))))
    return out


def start_run_tracker(config: Any, run_dir: Path, own_log: Path | None = None) -> RunTracker | None:
    """A :class:`RunTracker` for the trackers ``config`` switches on, or None when none is."""
    factories = tracker_factories(config, Path(run_dir))
    if not factories:
        return None
    return RunTracker(factories, Path(run_dir), config.model_dump(mode="json"), own_log=own_log,
                      interval_s=config.monitoring.tracker_interval_s)
