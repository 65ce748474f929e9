"""The run's own metrics log: JSONL scalars each role appends under ``RUN_DIR/metrics/``.

Scope: a durable, Prometheus-independent record of a run, read by ``rlef report`` when no Prometheus is
reachable. One file per process (``RUN_DIR/metrics/<role>-<id>.jsonl``, see :func:`metrics_log_path`), one
JSON object per line::

    {"schema": "rlef.metrics_log/1", "time": 1767000000.25, "step": 12, "role": "learner", "id": "0",
     "values": {"loss/policy": 0.013, "kl": 0.002, "rlef_learner_updates_total": 48.0}}

Invariants: ``time`` is Unix seconds; ``step`` is an int or null (the writer's own counter: learner optimizer
update, actor rollouts sent, ...); ``values`` maps a key to a finite float or null (NaN/inf are written as
null so every line is strict JSON). Lines are written whole and flushed, so a crash loses at most the last
line; readers skip (and count) a torn or malformed line instead of failing.

Keys: any ``[A-Za-z0-9_/.{}=",:-]`` string. ``rlef report`` plots these canonical keys when present (see
:data:`REPORT_KEYS`), and also ``rlef_*`` counters/gauges captured with :meth:`MetricsLog.snapshot`, whose keys
are Prometheus sample names with labels (``rlef_actor_rollouts_total{actor="0"}``), so a role can simply
snapshot its registry every few seconds and the report derives rates from the counters.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time as _time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from prometheus_client import REGISTRY, CollectorRegistry

from rlef.common.errors import DataError
from rlef.common.log_limit import LogOnce

log = logging.getLogger(__name__)

SCHEMA = "rlef.metrics_log/1"

#: Canonical scalar keys ``rlef report`` knows how to plot (a role logs those it has; more keys are fine).
REPORT_KEYS: dict[str, str] = {
    "reward/mean": "mean final reward of the rollouts in a learner batch",
    "solve_rate/turn_1": "fraction of rollouts whose turn-1 program passes (also turn_2, turn_3, ...)",
    "fix_rate/turn_1_failures": "of the rollouts whose turn-1 program failed the public tests, the share that ended solved",
    "solve_rate/final": "fraction of rollouts solved (public + private tests) at their last turn",
    "throughput/rollouts_per_s": "rollouts per second (read by role: an actor's = sent, the learner's = trained)",
    "throughput/tokens_per_s": "tokens per second (read by role: an actor's = generated, the learner's = trained)",
    "throughput/tests_per_s": "tests per second run by an executor",
    "reward/episode_mean": "mean task reward of an actor's episodes since its previous snapshot",
    "staleness/mean": "mean policy lag (learner version minus the oldest turn's version) of a batch",
    "staleness/dropped": "rollouts dropped as too stale in this batch",
    "loss/policy": "PPO clipped policy loss",
    "loss/value": "value loss",
    "loss/total": "total loss",
    "kl": "KL to the reference policy (per token)",
    "clip_fraction": "fraction of tokens whose ratio was clipped",
    "explained_variance": "explained variance of the value predictions",
    "grad_norm": "gradient norm before clipping",
    "weights/sync_seconds": "time to publish / apply one weights version",
}


def metrics_log_path(run_dir: str | os.PathLike, role: str, process_id: str | int) -> Path:
    """Where process ``role``/``process_id`` writes its log: ``RUN_DIR/metrics/<role>-<id>.jsonl``."""
    return Path(run_dir) / "metrics" / f"{role}-{process_id}.jsonl"


def _clean(value: object, key: str, path: Path) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: metrics log value for key {key!r} is not a number: {value!r}") from exc
    return number if math.isfinite(number) else None


class MetricsLog:
    """Append-only JSONL writer for one process (thread-safe enough: one ``write`` = one ``os.write``-sized line)."""

    def __init__(self, path: str | os.PathLike, role: str = "", process_id: str | int = "") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.role = role
        self.process_id = str(process_id)
        self._fh: IO[str] | None = open(self.path, "a", buffering=1)
        self._sinks: list[Callable[[int | None, dict[str, float | None], float], None]] = []

    def add_sink(self, sink: Callable[[int | None, dict[str, float | None], float], None]) -> None:
        """Also hand every record to ``sink(step, values, time)`` (trackers); a failing sink is dropped, logged once."""
        self._sinks.append(sink)

    def write(self, step: int | None, values: Mapping[str, float], *, time: float | None = None) -> None:
        """Append one record: ``values`` at ``step`` (or None) and ``time`` (default: now)."""
        if self._fh is None:
            raise DataError(f"{self.path}: metrics log is closed")
        record = {
            "schema": SCHEMA,
            "time": _time.time() if time is None else float(time),
            "step": None if step is None else int(step),
            "role": self.role,
            "id": self.process_id,
            "values": {str(k): _clean(v, str(k), self.path) for k, v in values.items()},
        }
        self._fh.write(json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n")
        for sink in list(self._sinks):
            try:
                sink(record["step"], record["values"], record["time"])
            except Exception as exc:  # noqa: BLE001 - a tracker must never stop the role that logs
                self._sinks.remove(sink)
                log.warning("%s: metrics sink %r failed and was removed: %s", self.path, sink, exc)

    def snapshot(self, step: int | None = None, registry: CollectorRegistry = REGISTRY, prefix: str = "rlef_", *, time: float | None = None) -> None:
        """Append every sample of metrics named ``prefix*`` in ``registry`` (counters, gauges, histogram parts)."""
        self.write(step, registry_samples(registry, prefix), time=time)

    def start_snapshots(
        self, interval_s: float = 10.0, registry: CollectorRegistry = REGISTRY, *,
        rates: Mapping[str, str] | None = None, ratios: Mapping[str, tuple[str, str]] | None = None,
        step_from: str | None = None,
    ) -> "Snapshotter":
        """Snapshot ``registry`` every ``interval_s`` from a daemon thread until the returned handle's ``stop()``.

        For roles that want ``rlef report`` to work without Prometheus and log no scalars of their own:
        ``snap = MetricsLog(metrics_log_path(run_dir, "actor", i), "actor", i).start_snapshots(10)``.
        ``rates`` adds canonical per-second keys derived from counters between two snapshots
        (``{"throughput/rollouts_per_s": "rlef_actor_rollouts_sent_total"}``, summed over label sets);
        ``ratios`` adds increase(a) / increase(b) between two snapshots (``{"reward/episode_mean":
        ("rlef_actor_episode_reward_running_sum", "rlef_actor_episodes_total")}``; left out when b did not grow);
        ``step_from`` names a counter whose value is each record's ``step``.
        """
        snap = Snapshotter(self, interval_s, registry, rates=rates, ratios=ratios, step_from=step_from)
        snap.start()
        return snap

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Snapshotter(threading.Thread):
    """Background registry snapshots into a MetricsLog; ``stop()`` writes a last snapshot and closes the log."""

    def __init__(
        self, mlog: MetricsLog, interval_s: float, registry: CollectorRegistry, *,
        rates: Mapping[str, str] | None = None, ratios: Mapping[str, tuple[str, str]] | None = None,
        step_from: str | None = None,
    ) -> None:
        super().__init__(name=f"metrics-log-{mlog.path.name}", daemon=True)
        self.mlog, self.interval_s, self.registry = mlog, interval_s, registry
        self.rates = dict(rates or {})
        self.ratios = dict(ratios or {})
        self.step_from = step_from
        self._previous: tuple[float, dict[str, float]] | None = None
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._log = LogOnce(log, "metrics log")

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.snapshot()

    def _values(self) -> tuple[int | None, dict[str, float]]:
        now = _time.time()
        samples = registry_samples(self.registry)
        names = {*self.rates.values(), *(n for pair in self.ratios.values() for n in pair), *([self.step_from] if self.step_from else [])}
        totals = {name: family_total(samples, name) for name in names}
        values: dict[str, float] = dict(samples)
        if self._previous is not None:
            then, before = self._previous
            dt = now - then
            for key, name in self.rates.items():
                if dt > 0:
                    values[key] = max(0.0, totals[name] - before.get(name, 0.0)) / dt
            for key, (num, den) in self.ratios.items():
                grew = totals[den] - before.get(den, 0.0)
                if grew > 0:
                    values[key] = (totals[num] - before.get(num, 0.0)) / grew
        self._previous = (now, totals)
        step = int(totals[self.step_from]) if self.step_from else None
        return step, values

    def snapshot(self) -> None:
        """Write one snapshot now (the thread calls this every ``interval_s``; safe from any thread)."""
        with self._lock:
            if self.mlog._fh is None:
                return
            try:
                step, values = self._values()
                self.mlog.write(step, values)
            except (OSError, DataError) as exc:  # a full disk must not kill the role: log once and keep trying
                self._log.warning("snapshot", "%s: metrics snapshot failed: %s (further failures not logged)", self.mlog.path, exc)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=max(self.interval_s, 1.0) + 5)
        self.snapshot()
        with self._lock:
            self.mlog.close()


def family_total(samples: Mapping[str, float], name: str) -> float:
    """Sum of every sample of metric ``name`` (all label sets) in a :func:`registry_samples` dict."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def sample_key(name: str, labels: Mapping[str, str]) -> str:
    """Prometheus text-format sample name: ``name{a="x",b="y"}`` (labels sorted), or ``name``."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def registry_samples(registry: CollectorRegistry = REGISTRY, prefix: str = "rlef_") -> dict[str, float]:
    """Current ``prefix*`` samples of ``registry`` as {sample key: value} (``_created`` samples left out)."""
    out: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.startswith(prefix) and not sample.name.endswith("_created"):
                out[sample_key(sample.name, sample.labels)] = sample.value
    return out


@dataclass
class Record:
    """One parsed line of a metrics log."""

    time: float
    step: int | None
    role: str
    id: str
    values: dict[str, float | None] = field(default_factory=dict)


@dataclass
class LogReadStats:
    files: int = 0
    records: int = 0
    bad_lines: int = 0


def read_metrics_log(path: str | os.PathLike, stats: LogReadStats | None = None) -> Iterator[Record]:
    """Records of one file, in file order; torn/malformed lines are skipped, counted in ``stats`` and logged once."""
    p = Path(path)
    stats = stats if stats is not None else LogReadStats()
    stats.files += 1
    warned = False
    with open(p) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                if raw.get("schema") != SCHEMA:
                    raise ValueError(f"schema {raw.get('schema')!r}, expected {SCHEMA!r}")
                values = {str(k): (None if v is None else float(v)) for k, v in raw["values"].items()}
                step = raw.get("step")
                record = Record(float(raw["time"]), None if step is None else int(step), str(raw.get("role", "")), str(raw.get("id", "")), values)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                stats.bad_lines += 1
                if not warned:
                    log.warning("%s:%d: skipping malformed metrics log line (%s); further ones counted only", p, lineno, exc)
                    warned = True
                continue
            stats.records += 1
            yield record


def read_run_metrics(run_dir: str | os.PathLike, stats: LogReadStats | None = None) -> list[Record]:
    """Every record under ``RUN_DIR/metrics/*.jsonl``, sorted by time."""
    files = sorted((Path(run_dir) / "metrics").glob("*.jsonl"))
    records = [r for f in files for r in read_metrics_log(f, stats)]
    records.sort(key=lambda r: r.time)
    return records
