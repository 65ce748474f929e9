"""Monitoring overhead: what instrumentation costs a role's hot loop, against plain-Python baselines.

Figures (each a ratio against a baseline measured in the same run):
1. Counter(labels).inc() vs a dict increment (per-event cost of a labelled counter).
2. Histogram.observe() vs a list append.
3. One /metrics exposition (generate_latest over every rlef_* metric) vs json.dumps of the same samples.
4. One MetricsLog registry snapshot (samples -> JSONL line) vs json.dumps of the same samples.
Run: .venv/bin/python bench/bench_monitoring.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest

from rlef.monitoring.catalogue import collect_metrics
from rlef.monitoring import metrics_actor, metrics_executor
from rlef.monitoring.metrics_log import MetricsLog, registry_samples


def per_call(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    collect_metrics()  # import every metric module, as a real process would have most of them
    counts: dict[tuple[str, str], int] = {}
    child = metrics_actor.TURN_OUTCOMES.labels("1", "pass")

    def dict_inc() -> None:
        counts[("1", "pass")] = counts.get(("1", "pass"), 0) + 1

    n = 200_000
    base = per_call(dict_inc, n)
    labelled = per_call(lambda: metrics_actor.TURN_OUTCOMES.labels("1", "pass").inc(), n)
    cached = per_call(child.inc, n)
    print(f"counter.labels().inc(): {labelled * 1e9:7.0f} ns = {labelled / base:5.1f}x a dict increment ({base * 1e9:.0f} ns)")
    print(f"cached child .inc():    {cached * 1e9:7.0f} ns = {cached / base:5.1f}x a dict increment")

    values: list[float] = []
    base = per_call(lambda: values.append(0.3), n)
    observe = per_call(lambda: metrics_executor.JOB_SECONDS.observe(0.3), n)
    print(f"histogram.observe():    {observe * 1e9:7.0f} ns = {observe / base:5.1f}x a list append ({base * 1e9:.0f} ns)")

    samples = registry_samples(REGISTRY)
    m = 300
    base = per_call(lambda: json.dumps(samples), m)
    expo = per_call(lambda: generate_latest(REGISTRY), m)
    print(f"/metrics exposition:    {expo * 1e6:7.0f} us = {expo / base:5.1f}x json.dumps of its {len(samples)} samples ({base * 1e6:.0f} us)")

    with tempfile.TemporaryDirectory() as tmp, MetricsLog(Path(tmp) / "m.jsonl", "bench", 0) as mlog:
        snap = per_call(mlog.snapshot, m)
    print(f"metrics-log snapshot:   {snap * 1e6:7.0f} us = {snap / base:5.1f}x json.dumps of the same samples")


if __name__ == "__main__":
    main()
