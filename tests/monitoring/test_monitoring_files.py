"""File formats monitoring owns: file_sd target files and the JSONL metrics log."""

from __future__ import annotations

import json
import math
import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from rlef.common.errors import ConfigError, DataError
from rlef.monitoring.metrics_log import LogReadStats, MetricsLog, metrics_log_path, read_metrics_log, read_run_metrics, registry_samples
from rlef.monitoring.targets import read_targets, write_targets


def test_write_targets_is_file_sd_json(tmp_path):
    path = write_targets(tmp_path / "sd" / "targets.json", [("executor", "127.0.0.1:9200", {"id": "0"}), ("learner", "node1:9100", {"rank": 0})])
    groups = json.loads(path.read_text())
    assert groups == [
        {"targets": ["127.0.0.1:9200"], "labels": {"job": "executor", "id": "0"}},
        {"targets": ["node1:9100"], "labels": {"job": "learner", "rank": "0"}},
    ]
    assert read_targets(path) == [("executor", "127.0.0.1:9200", {"id": "0"}), ("learner", "node1:9100", {"rank": "0"})]
    assert [p.name for p in path.parent.iterdir()] == ["targets.json"]  # no temp file left behind


@pytest.mark.parametrize("address,labels", [("127.0.0.1", {}), ("http://a:1", {}), ("a:1", {"bad-name": "x"}), ("a:1", {"__meta": "x"})])
def test_write_targets_rejects_bad_targets(tmp_path, address, labels):
    with pytest.raises(ConfigError):
        write_targets(tmp_path / "t.json", [("actor", address, labels)])


def test_metrics_log_round_trip_and_torn_lines(tmp_path):
    path = metrics_log_path(tmp_path, "learner", 0)
    assert path == tmp_path / "metrics" / "learner-0.jsonl"
    with MetricsLog(path, "learner", 0) as mlog:
        mlog.write(1, {"kl": 0.5, "loss/policy": float("nan")}, time=100.0)
        mlog.write(2, {"kl": 0.25}, time=101.0)
    with open(path, "a") as fh:
        fh.write('{"schema": "rlef.metrics_log/1", "time": 10')  # a torn last line, as after a crash
    other = MetricsLog(metrics_log_path(tmp_path, "actor", 3), "actor", 3)
    other.write(None, {"throughput/rollouts_per_s": 2}, time=100.5)
    other.close()
    with pytest.raises(DataError):
        other.write(None, {"x": 1})
    stats = LogReadStats()
    records = read_run_metrics(tmp_path, stats)
    assert [(r.time, r.step, r.role, r.id) for r in records] == [(100.0, 1, "learner", "0"), (100.5, None, "actor", "3"), (101.0, 2, "learner", "0")]
    assert records[0].values == {"kl": 0.5, "loss/policy": None}
    assert (stats.files, stats.records, stats.bad_lines) == (2, 3, 1)
    for line in path.read_text().splitlines()[:2]:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_metrics_log_rejects_non_numbers(tmp_path):
    with MetricsLog(tmp_path / "m.jsonl") as mlog, pytest.raises(DataError, match="'kl'"):
        mlog.write(0, {"kl": "high"})


def test_snapshot_captures_registry_samples(tmp_path):
    registry = CollectorRegistry()
    c = Counter("rlef_test_things_total", "things", ["kind"], registry=registry)
    g = Gauge("other_gauge", "not ours", registry=registry)
    c.labels(kind="a").inc(3)
    g.set(1)
    assert registry_samples(registry) == {'rlef_test_things_total{kind="a"}': 3.0}
    with MetricsLog(tmp_path / "m.jsonl") as mlog:
        mlog.snapshot(step=7, registry=registry)
    (record,) = list(read_metrics_log(tmp_path / "m.jsonl"))
    assert record.step == 7 and math.isclose(record.values['rlef_test_things_total{kind="a"}'], 3.0)


def test_periodic_snapshots(tmp_path):
    registry = CollectorRegistry()
    c = Counter("rlef_test_ticks_total", "ticks", registry=registry)
    snap = MetricsLog(tmp_path / "m.jsonl", "actor", 0).start_snapshots(0.05, registry)
    c.inc(5)
    deadline = time.monotonic() + 30
    while not (tmp_path / "m.jsonl").read_text() and time.monotonic() < deadline:  # a periodic snapshot landed
        time.sleep(0.02)
    snap.stop()
    records = list(read_metrics_log(tmp_path / "m.jsonl"))
    assert len(records) >= 2
    values = [r.values["rlef_test_ticks_total"] for r in records]
    assert values == sorted(values) and values[-1] == 5.0  # the last snapshot is taken at stop()
