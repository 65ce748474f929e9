"""The SLURM layout of one RLEF run: a heterogeneous job's three components, derived from the config.

Scope: pure arithmetic from :class:`RlefConfig` to sbatch options (used by deploy/slurm/submit.sh) and to
the shell variables the batch scripts read (``plan env``), plus the Prometheus targets of an allocation
(``plan targets``). The batch scripts stay thin: everything that can be computed and unit-tested is here.

Components (``--het-group``):
  0 learner:   ``deploy.learner_nodes`` nodes, one torchrun per node with ``deploy.learner_ranks`` ranks (GPUs);
  1 actors:    GPU: one task per vLLM engine, i.e. ``gpus_per_node // tensor_parallel_size`` tasks per node,
               ``--gpus-per-task = tensor_parallel_size``; CPU: all actors on one node;
  2 executors: one executor per node (a pool of ``executor.workers`` sandboxes) plus the broker on the first node.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import dataclass

from rlef.common.config import RlefConfig, load_config


@dataclass(frozen=True)
class Component:
    nodes: int
    tasks_per_node: int
    gpus_per_task: int = 0  # 0: a CPU component (no --gpus-per-task)
    cpus_per_task: int | None = None

    def sbatch_args(self, partition: str | None) -> list[str]:
        args = [f"--nodes={self.nodes}", f"--ntasks-per-node={self.tasks_per_node}"]
        if self.gpus_per_task:
            args.append(f"--gpus-per-task={self.gpus_per_task}")
        if self.cpus_per_task:
            args.append(f"--cpus-per-task={self.cpus_per_task}")
        if partition:
            args.append(f"--partition={partition}")
        return args


@dataclass(frozen=True)
class HetPlan:
    learner: Component
    actors: Component
    executors: Component
    actor_count: int
    executor_count: int
    tensor_parallel: int


def actor_tp(config: RlefConfig) -> int:
    return config.actor.vllm.tensor_parallel_size if config.actor.backend == "vllm" else 1


def plan(config: RlefConfig) -> HetPlan:
    d = config.deploy
    gpu_learner = config.learner.device == "cuda"
    gpu_actors = config.actor.device.startswith("cuda")
    tp = actor_tp(config)
    if gpu_actors and tp > d.gpus_per_node:
        raise ValueError(f"actor.vllm.tensor_parallel_size {tp} exceeds deploy.gpus_per_node {d.gpus_per_node}")
    learner = Component(d.learner_nodes, 1, gpus_per_task=d.learner_ranks if gpu_learner else 0)
    if gpu_actors:
        per_node = d.gpus_per_node // tp
        actors = Component(math.ceil(d.actors / per_node), min(per_node, d.actors), gpus_per_task=tp)
    else:
        actors = Component(1, d.actors)
    executors = Component(d.executors, 1, cpus_per_task=config.executor.workers)
    return HetPlan(learner, actors, executors, d.actors, d.executors, tp)


def sbatch_args(p: HetPlan, gpu_partition: str | None = None, cpu_partition: str | None = None,
                each: list[str] | tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    """Per-component options joined by ':' (sbatch's heterogeneous-job syntax on the command line);
    ``each`` (e.g. ``--time=2-00:00:00``, ``--account=X``) is repeated in every component."""
    gpu = lambda c: gpu_partition if c.gpus_per_task else cpu_partition  # noqa: E731
    return [*p.learner.sbatch_args(gpu(p.learner)), *each, ":", *p.actors.sbatch_args(gpu(p.actors)), *each, ":",
            *p.executors.sbatch_args(cpu_partition), *each]  # fmt: skip


def shell_env(config: RlefConfig, p: HetPlan) -> dict[str, str]:
    """Variables the batch scripts use (``eval "$(python -m rlef.deploy.slurm_plan env ...)"``)."""
    return {
        "RLEF_RUN_DIR": str(config.run.run_dir),
        "RLEF_LEARNER_NODES": str(p.learner.nodes),
        "RLEF_LEARNER_RANKS": str(config.deploy.learner_ranks),
        "RLEF_ACTORS": str(p.actor_count),
        "RLEF_ACTOR_GPUS_PER_TASK": str(p.actors.gpus_per_task),
        "RLEF_EXECUTORS": str(p.executor_count),
        "RLEF_CONTROL_PORT": str(config.endpoints.control_port),
        "RLEF_START_PROMETHEUS": "1" if config.monitoring.enabled and config.monitoring.start_prometheus else "0",
        "RLEF_PROMETHEUS_PORT": str(config.monitoring.prometheus_port),
        "RLEF_SCRAPE_INTERVAL": f"{config.monitoring.scrape_interval_s:g}",
    }


def targets(config: RlefConfig, learner_hosts: list[str], actor_hosts: list[str], executor_hosts: list[str],
            actor_index_base: int = 0, actors: int | None = None) -> list[tuple[str, str, dict[str, str]]]:  # fmt: skip
    """file_sd targets of the processes of an allocation (hosts in SLURM's task order: block distribution)."""
    p = plan(config)
    out: list[tuple[str, str, dict[str, str]]] = []
    ranks = config.deploy.learner_ranks
    if config.learner.metrics_port > 0:
        for n, host in enumerate(learner_hosts):
            out += [("learner", f"{host}:{config.learner.metrics_port + n * ranks + r}", {"rank": str(n * ranks + r)}) for r in range(ranks)]
    if config.executor.metrics_port > 1 and executor_hosts:
        out.append(("executor-broker", f"{executor_hosts[0]}:{config.executor.metrics_port - 1}", {"id": "0"}))
        out += [("executor", f"{host}:{config.executor.metrics_port + i}", {"id": str(i)}) for i, host in enumerate(executor_hosts)]
    if config.actor.metrics_port > 0 and actor_hosts:
        count = p.actor_count if actors is None else actors
        per_node = math.ceil(count / len(actor_hosts))
        for k in range(count):
            i = actor_index_base + k
            out.append(("actor", f"{actor_hosts[k // per_node]}:{config.actor.metrics_port + i}", {"id": str(i)}))
    return out


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlef.deploy.slurm_plan", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("sbatch-args", "env", "targets"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--config", required=True)
        cmd.add_argument("overrides", nargs="*")
        if name == "sbatch-args":
            cmd.add_argument("--gpu-partition")
            cmd.add_argument("--cpu-partition")
            cmd.add_argument("--each", action="append", default=[], help="sbatch option repeated in every component")
        if name == "targets":
            cmd.add_argument("--out", required=True)
            for group in ("learner", "actor", "executor"):
                cmd.add_argument(f"--{group}-hosts", default="", help="comma-separated, in task order")
            cmd.add_argument("--actor-index-base", type=int, default=0)
            cmd.add_argument("--actors", type=int)
    flag = sub.add_parser("index-flag", help="the option a role command takes its index with")
    flag.add_argument("role")
    args = parser.parse_args(argv)
    if args.what == "index-flag":
        from rlef.common.errors import ConfigError
        from rlef.deploy.specs import index_option

        try:
            print(index_option(args.role))
        except ConfigError as exc:
            print(f"slurm_plan: {exc}", file=sys.stderr)
            return 2
        return 0
    config = load_config(args.config, args.overrides)
    p = plan(config)
    if args.what == "sbatch-args":
        print(" ".join(shlex.quote(a) for a in sbatch_args(p, args.gpu_partition, args.cpu_partition, args.each)))
    elif args.what == "env":
        print("\n".join(f"{k}={shlex.quote(v)}" for k, v in shell_env(config, p).items()))
    else:
        from rlef.monitoring.targets import write_targets

        split = lambda s: [h for h in s.split(",") if h]  # noqa: E731
        write_targets(args.out, targets(config, split(args.learner_hosts), split(args.actor_hosts), split(args.executor_hosts),
                                        args.actor_index_base, args.actors))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(_main())
