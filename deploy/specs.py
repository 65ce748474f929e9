"""The local launcher's process specs: which commands make one RLEF run on one machine, and their ports.

Scope: turn a resolved :class:`RlefConfig` into :class:`ProcessSpec` s (learner via torchrun, executor broker,
executors, actors, optionally Prometheus) and into Prometheus file_sd targets. Every role reads the same
resolved config file; only its index comes from the command line, so ports follow the config's rule
(``<role>.metrics_port + index``; the broker at ``executor.metrics_port - 1``).
"""

from __future__ import annotations

import functools
import socket
import sys
from pathlib import Path

from rlef.common.config import RlefConfig
from rlef.common.errors import ConfigError
from rlef.deploy.process import ProcessSpec

#: Environment every role gets: never reach a model hub, keep tokenizers from forking thread pools.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def rlef_command(*args: str) -> tuple[str, ...]:
    """``rlef ARGS`` through this interpreter (works without the console script on PATH)."""
    return (sys.executable, "-m", "rlef.common.cli", *args)


@functools.cache
def index_option(role: str) -> str:
    """The flag a role command takes its index with: ``--<role>-index`` (the deploy contract) or ``--index``.

    Read from the installed ``rlef`` parser, so the launcher follows the role's CLI instead of guessing;
    a role without either flag is an error naming it.
    """
    from rlef.common.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices  # type: ignore[attr-defined]
    if role not in commands:
        raise ConfigError(f"`rlef {role}` is not installed (commands: {', '.join(sorted(commands))})")
    flags = {opt for action in commands[role]._actions for opt in action.option_strings}
    for flag in (f"--{role}-index", "--index"):
        if flag in flags:
            return flag
    raise ConfigError(f"`rlef {role}` takes no index option (--{role}-index or --index)")


def learner_command(config: RlefConfig, config_path: Path, resume: bool) -> tuple[str, ...]:
    """torchrun on this node only (``--standalone`` picks a free rendezvous port), N ranks of ``rlef learner``."""
    args = ["learner", "--config", str(config_path)]
    if resume:
        args += ["--resume", "auto"]
    return (
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
        "--nproc-per-node", str(config.deploy.learner_ranks), "-m", "rlef.common.cli", *args,
    )  # fmt: skip


def role_specs(config: RlefConfig, config_path: Path, *, resume: bool = False, cwd: str | None = None) -> list[ProcessSpec]:
    """Broker, executors, learner, actors: start order only matters for how soon the first rollout comes."""
    cfg = str(config_path)
    # Every role appends its metrics to the run's metrics log (rlef.monitoring.metrics.serve_metrics reads these).
    env = {**OFFLINE_ENV, "RLEF_RUN_DIR": str(config.run.run_dir),
           "RLEF_METRICS_LOG_INTERVAL_S": str(config.monitoring.metrics_log_interval_s)}
    specs = [ProcessSpec("executor-broker-0", "executor-broker", rlef_command("executor-broker", "--config", cfg), env, cwd)]
    specs += [
        ProcessSpec(f"executor-{i}", "executor", rlef_command("executor", "--config", cfg, _index("executor"), str(i)), env, cwd, index=i)
        for i in range(config.deploy.executors)
    ]
    # A learner that dies is restarted from its newest checkpoint (bounded); its exit 0 (training done) ends the run.
    specs.append(ProcessSpec("learner-0", "learner", learner_command(config, config_path, resume), env, cwd,
                             restart_argv=learner_command(config, config_path, True),
                             max_restarts=config.deploy.learner_restarts, ends_run=True, kill_leftovers=True))
    specs += [
        ProcessSpec(f"actor-{i}", "actor", rlef_command("actor", "--config", cfg, _index("actor"), str(i)), env, cwd, index=i)
        for i in range(config.deploy.actors)
    ]
    if config.evaluator.enabled:  # optional: off by default (config key evaluator.enabled)
        specs.append(evaluator_spec(config, config_path, env, cwd))
    return specs


def evaluator_spec(config: RlefConfig, config_path: Path, env: dict[str, str], cwd: str | None = None) -> ProcessSpec:
    """The in-training evaluator (`rlef evaluator`): an actor in evaluation mode that selects the checkpoint
    on the valid split (RUN_DIR/eval/best.json). Needs weights it can join late: zmq or filesystem."""
    if config.weights.type == "collective":
        raise ConfigError("evaluator.enabled needs weights.type zmq or filesystem (a collective group has a fixed set of actors)")
    return ProcessSpec("evaluator-0", "evaluator", rlef_command("evaluator", "--config", str(config_path)), env, cwd)


def _index(role: str) -> str:
    """:func:`index_option`, falling back to the contract's flag while the role is not installed (its log then
    shows the CLI error and the supervisor keeps restarting it with backoff)."""
    try:
        return index_option(role)
    except ConfigError:
        return f"--{role}-index"


def metrics_targets(config: RlefConfig, host: str = "127.0.0.1") -> list[tuple[str, str, dict[str, str]]]:
    """(job, host:port, labels) for every process that serves /metrics (port 0 disables a role's server)."""
    out: list[tuple[str, str, dict[str, str]]] = []
    ranks = config.deploy.learner_ranks * config.deploy.learner_nodes
    if config.learner.metrics_port > 0:
        out += [("learner", f"{host}:{config.learner.metrics_port + r}", {"rank": str(r)}) for r in range(ranks)]
    if config.executor.metrics_port > 1:
        out.append(("executor-broker", f"{host}:{config.executor.metrics_port - 1}", {"id": "0"}))
        out += [("executor", f"{host}:{config.executor.metrics_port + i}", {"id": str(i)}) for i in range(config.deploy.executors)]
    if config.actor.metrics_port > 0:
        out += [("actor", f"{host}:{config.actor.metrics_port + i}", {"id": str(i)}) for i in range(config.deploy.actors)]
    if config.evaluator.enabled and config.evaluator.metrics_port > 0:
        out.append(("evaluator", f"{host}:{config.evaluator.metrics_port}", {"id": "0"}))
    return out


def _port_block_free(base: int, count: int) -> bool:
    sockets = []
    try:
        for port in range(base, base + count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for sock in sockets:
            sock.close()


def free_port_block(count: int, taken: set[int], start: int = 20000, stop: int = 60000) -> int:
    """First port of ``count`` consecutive free TCP ports on loopback, avoiding ``taken`` (then marked taken)."""
    import random

    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(start, stop - count)
        block = set(range(base, base + count))
        if not block & taken and _port_block_free(base, count):
            taken |= block
            return base
    raise OSError(f"no block of {count} free ports found in [{start}, {stop})")


def with_free_ports(config: RlefConfig) -> RlefConfig:
    """A copy of ``config`` whose endpoints and metrics ports are free on this machine (tests, parallel runs).

    Ports are probed, not held, so another program could take one before a role binds it: acceptable for
    a local run, and the role then fails loudly with the port in its log.
    """
    cfg = config.model_copy(deep=True)
    taken: set[int] = set()
    ep = cfg.endpoints
    for name in ("rollout_port", "weights_port", "control_port", "broker_frontend_port", "broker_backend_port"):
        setattr(ep, name, free_port_block(1, taken))
    if cfg.learner.metrics_port > 0:
        cfg.learner.metrics_port = free_port_block(cfg.deploy.learner_ranks * cfg.deploy.learner_nodes, taken)
    if cfg.executor.metrics_port > 0:
        cfg.executor.metrics_port = free_port_block(cfg.deploy.executors + 1, taken) + 1
    if cfg.actor.metrics_port > 0:
        cfg.actor.metrics_port = free_port_block(cfg.deploy.actors, taken)
    if cfg.evaluator.enabled and cfg.evaluator.metrics_port > 0:
        cfg.evaluator.metrics_port = free_port_block(1, taken)
    if cfg.monitoring.start_prometheus:
        cfg.monitoring.prometheus_port = free_port_block(1, taken)
    if cfg.weights.type == "collective":
        cfg.weights.init_port = free_port_block(1, taken)
    return cfg
