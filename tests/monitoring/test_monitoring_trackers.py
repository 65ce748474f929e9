"""TensorBoard and W&B trackers, tested for real: TensorBoard's own event reader, and W&B's offline run directory
parsed record by record (its .wandb log format and protobuf records); a failing tracker never stops the logging."""

from __future__ import annotations

import glob
import json
import struct
import time
from pathlib import Path

import pytest
from helpers.episode_records import fixed_by_feedback, ignored_feedback

from rlef.actor.samples import episode_sample
from rlef.common.config import load_config
from rlef.monitoring import metrics_tracker as M
from rlef.monitoring.episode_samples import SampleWriter, samples_dir
from rlef.monitoring.metrics_log import MetricsLog, metrics_log_path
from rlef.monitoring.trackers import RunTracker, TensorBoardTracker, start_run_tracker

ROOT = Path(__file__).resolve().parents[2]


def _config(run_dir: Path, *overrides: str):
    return load_config(ROOT / "configs/tiny-cpu.yaml", [f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}",
                                                        "monitoring.tracker_interval_s=0.2", *overrides])


def _fake_run(run_dir: Path, tracker: RunTracker | None) -> None:
    """What a run leaves: an actor's metrics log and samples, and the learner's own records through the sink."""
    with MetricsLog(metrics_log_path(run_dir, "actor", 0), "actor", 0) as actor:
        actor.write(5, {"throughput/rollouts_per_s": 4.5, 'rlef_actor_turn_outcomes_total{status="pass",turn="1"}': 3.0,
                        'rlef_actor_generation_seconds_bucket{le="0.1"}': 2.0})
    writer = SampleWriter(samples_dir(run_dir, "actor-0"), max_bytes=1 << 20, file_bytes=1 << 20)
    writer.write(episode_sample(fixed_by_feedback(rollout_id="r-fixed")))
    writer.write(episode_sample(ignored_feedback(rollout_id="r-ignored")))
    writer.close()
    learner = MetricsLog(metrics_log_path(run_dir, "learner", 0), "learner", 0)
    if tracker is not None:
        learner.add_sink(tracker.log_scalars)
    for step in (1, 2, 3):
        learner.write(step, {"loss/policy": 0.5 / step, "reward/mean": -1.0 + 0.25 * step, "kl": float("nan")})
    time.sleep(0.5)  # one poll picks the actor's files up
    learner.close()


def test_tensorboard_event_files_hold_the_scalars_config_and_episodes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    config = _config(run_dir, "monitoring.tensorboard.enabled=true")
    tracker = start_run_tracker(config, run_dir, own_log=metrics_log_path(run_dir, "learner", 0))
    assert tracker is not None
    _fake_run(run_dir, tracker)
    tracker.close()
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("loss/policy")] == [(1, 0.5), (2, 0.25), (3, 0.166667)]
    assert [e.value for e in acc.Scalars("reward/mean")] == [-0.75, -0.5, -0.25]
    assert "kl" not in tags["scalars"]  # NaN is null in the metrics log: nothing to plot
    assert acc.Scalars("actor-0/throughput/rollouts_per_s")[0].value == 4.5
    assert 'actor-0/rlef_actor_turn_outcomes_total{status="pass",turn="1"}' in tags["scalars"]
    assert not [t for t in tags["scalars"] if "_bucket" in t]
    assert not [t for t in tags["scalars"] if t.startswith("learner-0/")]  # its own log is not read twice
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f"name: {run_dir.name}" in config_text and "kl_beta" in config_text
    table = acc.Tensors("episodes/sampled/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "r-fixed" in table and "r-ignored" in table and "| True |" in table


def test_no_tracker_unless_switched_on(tmp_path):
    assert start_run_tracker(_config(tmp_path / "run"), tmp_path / "run") is None


def test_a_failing_tracker_is_logged_once_and_the_others_go_on(tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("x")

    class RaisesMidRun:  # fault injection: a tracker whose backend starts failing (no disk, revoked key)
        name = "flaky"
        calls = 0

        def log_config(self, config):
            pass

        def log_scalars(self, step, values, wall_time):
            RaisesMidRun.calls += 1
            raise OSError(28, "No space left on device")

        def log_episodes(self, *args):
            pass

        def flush(self):
            pass

        def close(self):
            pass

    errors = {n: M.TRACKER_ERRORS.labels(n)._value.get() for n in ("tensorboard", "flaky")}
    tracker = RunTracker([("tensorboard", lambda: TensorBoardTracker(blocked / "tb")), ("flaky", RaisesMidRun),
                          ("tensorboard", lambda: TensorBoardTracker(run_dir / "tb"))], run_dir, {"run": {"name": "x"}},
                         interval_s=0.2)
    _fake_run(run_dir, tracker)
    tracker.close()
    assert M.TRACKER_ERRORS.labels("tensorboard")._value.get() == errors["tensorboard"] + 1
    assert M.TRACKER_ERRORS.labels("flaky")._value.get() == errors["flaky"] + 1 and RaisesMidRun.calls == 1
    assert sum("tracker flaky failed" in r.message for r in caplog.records) == 1
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert len(acc.Scalars("loss/policy")) == 3  # the healthy tracker got everything


def _wandb_records(path: str):
    """Records of a .wandb file: W&B's LevelDB-style log (7-byte header, 32 KiB blocks of crc/len/type chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            full = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        else:
            full, pending = pending + chunk, b""
        record = pb.Record()
        record.ParseFromString(full)
        yield record


@pytest.mark.slow
def test_wandb_offline_run_holds_the_scalars_config_and_episodes(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    config = _config(run_dir, "monitoring.wandb.enabled=true", "monitoring.wandb.tags=[tiny]")
    tracker = start_run_tracker(config, run_dir, own_log=metrics_log_path(run_dir, "learner", 0))
    _fake_run(run_dir, tracker)
    tracker.close(timeout_s=120)
    [wandb_file] = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    history: dict[int, dict[str, float]] = {}
    run_config = {}
    for record in _wandb_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(int(row["_step"]), {}).update(row)
        elif kind == "run":
            run_config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
            assert list(record.run.tags) == ["tiny"] and record.run.display_name == run_dir.name
    assert {s: round(history[s]["loss/policy"], 6) for s in (1, 2, 3)} == {1: 0.5, 2: 0.25, 3: 0.166667}
    assert "kl" not in history[1]
    assert any(row.get("actor-0/throughput/rollouts_per_s") == 4.5 for row in history.values())
    assert run_config["learner"]["lr"] == config.learner.lr and run_config["run"]["name"] == run_dir.name
    tables = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "files" / "media" / "table" / "**" / "*.table.json"), recursive=True)
    assert tables
    table = json.loads(Path(tables[-1]).read_text())
    assert "problem" in table["columns"] and {row[2] for row in table["data"]} == {"r-fixed", "r-ignored"}
