"""The SLURM heterogeneous-job layout derived from the shipped configs (pure arithmetic, checked by hand)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlef.common.config import load_config
from rlef.deploy.slurm_plan import Component, plan, sbatch_args, targets

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_8b_layout_is_the_papers_gpu_split() -> None:
    p = plan(load_config(CONFIGS / "llama3.1-8b-h100.yaml"))
    assert p.learner == Component(nodes=16, tasks_per_node=1, gpus_per_task=8)  # 128 training GPUs
    assert p.actors == Component(nodes=20, tasks_per_node=8, gpus_per_task=1)  # 160 engines on 160 GPUs
    assert p.learner.nodes * p.learner.gpus_per_task == 128
    assert p.actors.nodes * p.actors.tasks_per_node * p.actors.gpus_per_task == 160
    assert p.executors == Component(nodes=20, tasks_per_node=1, cpus_per_task=96)


def test_70b_layout_uses_tensor_parallel_engines() -> None:
    p = plan(load_config(CONFIGS / "llama3.1-70b-h100.yaml"))
    assert p.learner.nodes * p.learner.gpus_per_task == 1024
    assert p.actors == Component(nodes=160, tasks_per_node=1, gpus_per_task=8)  # TP=8: one engine per node
    assert p.actors.nodes * p.actors.gpus_per_task == 1280


def test_tiny_cpu_layout_has_no_gpus_and_sbatch_components() -> None:
    p = plan(load_config(CONFIGS / "tiny-cpu.yaml", ["deploy.actors=2"]))
    args = sbatch_args(p, "gpu", "cpu", ["--time=10"])
    assert args == ["--nodes=1", "--ntasks-per-node=1", "--partition=cpu", "--time=10", ":",
                    "--nodes=1", "--ntasks-per-node=2", "--partition=cpu", "--time=10", ":",
                    "--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=2", "--partition=cpu", "--time=10"]  # fmt: skip
    assert not any("gpu" in a for a in args)


def test_partial_actor_node_and_tp_larger_than_node() -> None:
    cfg = load_config(CONFIGS / "llama3.1-8b-h100.yaml", ["deploy.actors=10", "actor.vllm.tensor_parallel_size=2"])
    assert plan(cfg).actors == Component(nodes=3, tasks_per_node=4, gpus_per_task=2)
    with pytest.raises(ValueError, match="tensor_parallel_size 16"):
        plan(load_config(CONFIGS / "llama3.1-8b-h100.yaml", ["actor.vllm.tensor_parallel_size=16"]))


def test_targets_of_an_allocation() -> None:
    cfg = load_config(CONFIGS / "llama3.1-8b-h100.yaml", ["deploy.learner_nodes=2", "deploy.actors=3", "deploy.executors=2",
                                                          "actor.metrics_port=9300", "learner.metrics_port=9100"])  # fmt: skip
    got = targets(cfg, ["l1", "l2"], ["a1", "a2"], ["e1", "e2"])
    learner = [a for j, a, _ in got if j == "learner"]
    assert learner == [f"l1:{9100 + r}" for r in range(8)] + [f"l2:{9108 + r}" for r in range(8)]
    assert [a for j, a, _ in got if j == "actor"] == ["a1:9300", "a1:9301", "a2:9302"]
    assert [a for j, a, _ in got if j == "executor-broker"] == ["e1:9199"]
    added = targets(cfg, [], ["x1"], [], actor_index_base=3, actors=2)
    assert added == [("actor", "x1:9303", {"id": "3"}), ("actor", "x1:9304", {"id": "4"})]
