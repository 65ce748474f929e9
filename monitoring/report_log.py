"""The run's metrics log as the report's series: per-process records, rates and ratios of ``rlef_*`` counters.

The fallback source of ``rlef report`` (:mod:`rlef.monitoring.report`) when Prometheus is not reachable or has
no data: scalar keys as logged, and, from registry snapshots, rates and ratios derived from the counters with
the same definitions as the recording rules (monitoring/prometheus/rules/recording.yml).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from rlef.monitoring.metrics_log import Record

Points = tuple[np.ndarray, np.ndarray]  # (unix times, values)
_KEY = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_sample_key(key: str) -> tuple[str, dict[str, str]] | None:
    """``name{a="x"}`` -> ("name", {"a": "x"}); None for keys that are not Prometheus sample names."""
    m = _KEY.match(key)
    if not m:
        return None
    return m.group(1), dict(_LABEL.findall(m.group(2) or ""))


class LogData:
    """Records of one run, indexed for the derivations below (per process, in time order)."""

    def __init__(self, records: Sequence[Record]):
        self.by_process: dict[tuple[str, str], list[Record]] = defaultdict(list)
        for r in records:
            self.by_process[(r.role, r.id)].append(r)
        times = [r.time for r in records]
        self.start = min(times) if times else math.nan
        self.end = max(times) if times else math.nan

    def scalar(self, key: str, role: str | None = None) -> dict[str, Points]:
        """Values of a scalar key, one series per process (of ``role``) that logged it (label: role-id when several)."""
        out: dict[str, Points] = {}
        for (proc_role, pid), recs in self.by_process.items():
            if role is not None and proc_role != role:
                continue
            pts = [(r.time, r.values[key]) for r in recs if r.values.get(key) is not None]
            if pts:
                t, v = zip(*pts)
                out[f"{proc_role}-{pid}"] = (np.array(t), np.array(v, dtype=float))
        if len(out) == 1:
            return {"": next(iter(out.values()))}
        return out

    def _cumulative(self, edges: np.ndarray, name: str, match: Callable[[dict[str, str]], bool]) -> np.ndarray | None:
        """Sum over processes of the ``name`` samples matching ``match``, as last seen at each edge (0 before)."""
        total = np.zeros(len(edges))
        seen = False
        for recs in self.by_process.values():
            t, v = [], []
            for r in recs:
                s = 0.0
                hit = False
                for key, value in r.values.items():
                    parsed = parse_sample_key(key)
                    if parsed and parsed[0] == name and value is not None and match(parsed[1]):
                        s += value
                        hit = True
                if hit:
                    t.append(r.time)
                    v.append(s)
            if not t:
                continue
            seen = True
            idx = np.searchsorted(np.array(t), edges, side="right") - 1
            vals = np.array(v)
            total += np.where(idx >= 0, vals[np.clip(idx, 0, None)], 0.0)
        return total if seen else None

    def edges(self, bins: int = 120, min_width_s: float = 2.0) -> np.ndarray:
        span = max(self.end - self.start, min_width_s)
        n = max(2, min(bins, int(span / min_width_s) + 1))
        return np.linspace(self.start, self.end, n)

    def rate(self, name: str, match: Callable[[dict[str, str]], bool] = lambda _: True, window: int = 3) -> Points | None:
        """Per-second rate of a counter summed over processes, over a sliding ``window`` of bins."""
        edges = self.edges()
        cum = self._cumulative(edges, name, match)
        if cum is None or len(edges) <= window:
            return None
        dt = edges[window:] - edges[:-window]
        return edges[window:], (cum[window:] - cum[:-window]) / dt

    def ratio(self, name: str, num: Callable[[dict[str, str]], bool], den: Callable[[dict[str, str]], bool], window: int = 6,
              *, den_name: str | None = None, absent_is_zero: bool = False) -> Points | None:
        """increase(num) / increase(den) over a sliding window (NaN where den did not grow); the denominator may
        be another counter (``den_name``). ``absent_is_zero``: a numerator never written counts as 0 (a labelled
        counter appears only once an event happened: no stale rollout yet means a share of 0, not no data)."""
        edges = self.edges()
        a, b = self._cumulative(edges, name, num), self._cumulative(edges, den_name or name, den)
        if a is None and absent_is_zero and b is not None:
            a = np.zeros(len(edges))
        if a is None or b is None or len(edges) <= window:
            return None
        da, db = a[window:] - a[:-window], b[window:] - b[:-window]
        with np.errstate(invalid="ignore", divide="ignore"):
            return edges[window:], np.where(db > 0, da / np.where(db > 0, db, 1), np.nan)

    def label_values(self, name: str, label: str) -> list[str]:
        values = set()
        for recs in self.by_process.values():
            for r in recs:
                for key in r.values:
                    parsed = parse_sample_key(key)
                    if parsed and parsed[0] == name and label in parsed[1]:
                        values.add(parsed[1][label])
        return sorted(values, key=lambda s: (len(s), s))
