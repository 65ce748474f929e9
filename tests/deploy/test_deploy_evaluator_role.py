"""The optional evaluator role of `rlef launch`: off by default, one `rlef evaluator` process when
evaluator.enabled, its metrics target and free port, refused with collective weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlef.common.config import load_config
from rlef.common.errors import ConfigError
from rlef.deploy.specs import metrics_targets, role_specs, with_free_ports

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"


def test_evaluator_is_off_by_default(tmp_path: Path) -> None:
    cfg = load_config(TINY)
    assert not cfg.evaluator.enabled
    assert all(s.role != "evaluator" for s in role_specs(cfg, tmp_path / "config.yaml"))
    assert all(job != "evaluator" for job, _, _ in metrics_targets(cfg))


def test_evaluator_role_when_enabled(tmp_path: Path) -> None:
    cfg = load_config(TINY, ["evaluator.enabled=true", "evaluator.metrics_port=9450"])
    specs = role_specs(cfg, tmp_path / "config.yaml")
    ev = [s for s in specs if s.role == "evaluator"]
    assert len(ev) == 1 and ev[0].name == "evaluator-0"
    assert list(ev[0].argv[-3:]) == ["evaluator", "--config", str(tmp_path / "config.yaml")]
    assert ev[0].env["RLEF_RUN_DIR"] == str(cfg.run.run_dir)  # it writes the run's metrics log like every role
    assert ("evaluator", "127.0.0.1:9450", {"id": "0"}) in metrics_targets(cfg)
    free = with_free_ports(cfg)
    assert free.evaluator.metrics_port not in (9450, free.actor.metrics_port, free.learner.metrics_port)


def test_evaluator_refuses_collective_weights(tmp_path: Path) -> None:
    cfg = load_config(None, ["evaluator.enabled=true", "weights.type=collective"])
    with pytest.raises(ConfigError, match="evaluator.enabled needs weights.type zmq or filesystem"):
        role_specs(cfg, tmp_path / "config.yaml")
