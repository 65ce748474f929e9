"""One actor process: wire the engine, the executor client, the weights and the learner hub around the runner.

``run_actor`` is what ``rlef actor`` calls. Identity: ``actor_id = "actor-<index>"`` (stable, for metrics and
the hub's peer table); ``instance`` is a fresh nonce per start (hex time + random), part of every rollout id
(``actor-<index>-<instance>-<n>``), so ids stay unique across restarts.

Normal mode registers with the hub (control channel), receives weights in the background and PUSHes rollouts
to ``endpoints.learner(rollout_port)``; the hub's ``stop`` ends the actor after its in-flight episodes.
``dry_run`` needs only an executor: no hub, no weights, rollouts go to a JSONL file.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from rlef.common.config import RlefConfig
from rlef.common.errors import PeerRefused, TransportError

log = logging.getLogger(__name__)


@dataclass
class ActorSummary:
    actor_id: str
    instance: str
    episodes: int
    skipped: int
    errors: int
    seconds: float
    busy_fraction: float
    version: int

    def line(self) -> str:
        rate = self.episodes / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.actor_id} ({self.instance}): {self.episodes} episodes in {self.seconds:.1f} s ({rate:.2f}/s), "
                f"{self.skipped} problems skipped, {self.errors} errors, engine busy {self.busy_fraction:.0%}, "
                f"weights version {self.version}")


def new_instance_nonce() -> str:
    return f"{int(time.time()):x}{secrets.token_hex(3)}"


async def register_with_hub(control, services: list[str], info: dict[str, str], stop: asyncio.Event) -> None:
    """Register until the hub answers; a refusal (config mismatch) sets ``stop`` and is raised to the caller
    (the actor and the evaluator both start with this)."""
    while not stop.is_set():
        try:
            version = await asyncio.to_thread(control.register, services, timeout_s=30.0, info=info)
            log.info("registered with the hub for %s (hub version %d)", services[0], version)
            return
        except TransportError as exc:
            log.warning("%s; still trying", exc)
        except PeerRefused:
            stop.set()
            raise


async def watch_stop(control, stop: asyncio.Event, then: str) -> None:
    """Set ``stop`` once the hub requests it (``then``: what the process does next, for the log line)."""
    while not stop.is_set():
        if control.stop_requested:
            log.info("the hub requested stop: %s", then)
            stop.set()
            return
        await asyncio.sleep(0.2)


def raise_if_refused(control) -> None:
    """After the run: a hub that refused this peer (at registration or after its restart) makes it an error."""
    if control is not None and control.refused is not None:
        raise PeerRefused(f"the hub at {control.endpoint} refused {control.client_id}: {control.refused}")


async def run_actor(
    config: RlefConfig,
    *,
    index: int = 0,
    dry_run: bool = False,
    output: Path | None = None,
    episodes: int | None = None,
) -> ActorSummary:
    """Run actor ``index`` until ``episodes`` were produced, the hub says stop, or SIGTERM/SIGINT."""
    from transformers import AutoTokenizer

    from rlef.actor.backends import make_backend
    from rlef.actor.episodes import EpisodeRunner
    from rlef.actor.problem_stream import problem_stream
    from rlef.actor.samples import SamplingSink
    from rlef.actor.sinks import JsonlSink, PushSink
    from rlef.actor.weights_sync import LineageSink, WeightSync
    from rlef.common.data.loaders import load_problems
    from rlef.common.protocol.execution_client import ExecutionClient
    from rlef.common.protocol.transport import Transport
    from rlef.monitoring.metrics import serve_metrics, stop_metrics_log

    actor_id = f"actor-{index}"
    instance = new_instance_nonce()
    port = config.actor.metrics_port
    run_dir = Path(config.run.run_dir)
    # Also starts this actor's metrics log (RUN_DIR/metrics/actor-<index>.jsonl: registry snapshots + throughput).
    serve_metrics("actor", actor_id, port + index if port > 0 and config.monitoring.enabled else 0,
                  run_dir=None if dry_run else run_dir, log_interval_s=config.monitoring.metrics_log_interval_s)
    data = config.data
    problems = load_problems(data.dataset, data.path, data.split, data.limit)
    tokenizer = AutoTokenizer.from_pretrained(config.model.path)
    seed = config.run.seed * 100_003 + index
    backend = make_backend(config, seed=seed)
    atransport = Transport(config.transport, asyncio=True)
    transport = Transport(config.transport)
    endpoints = config.endpoints
    executor = ExecutionClient(atransport, endpoints.broker(endpoints.broker_frontend_port),
                               client_id=f"{actor_id}-{instance}", timeout_s=config.actor.execution_timeout_s,
                               executor=config.executor)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    background: list[asyncio.Task] = []
    control = receiver = None
    if dry_run:
        if output is None:
            raise ValueError("--dry-run needs --output FILE.jsonl")
        sink = JsonlSink(output)
        gate = None
    else:
        from rlef.common.protocol.control_client import make_control_client
        from rlef.common.weights import make_receiver

        sink = PushSink(atransport, endpoints.learner(endpoints.rollout_port))
        control = make_control_client(config, transport, actor_id)
        receiver = make_receiver(config, transport, actor_id)
        control.set_local_version(backend.version)
        gate = WeightSync(backend, receiver, max_policy_lag=config.staleness.actor_max_lag,
                          hub_version=lambda: control.hub_version, hub_known=lambda: control.registered,
                          on_applied=control.heartbeat,
                          receiver_factory=lambda: make_receiver(config, transport, actor_id))
        control.add_version_listener(gate.notify)
        control.add_restart_listener(gate.hub_restarted)  # re-base onto a restarted hub's weights
        sink = LineageSink(sink, gate)
        background += [
            asyncio.create_task(register_with_hub(control, ["rollouts", config.actor.backend], {
                "instance": instance, "backend": config.actor.backend}, stop)),
            asyncio.create_task(gate.run(stop)),
            asyncio.create_task(watch_stop(control, stop, "finishing in-flight episodes")),
        ]
    if not dry_run:  # a dry run writes whole episodes to --output already
        sink = SamplingSink(sink, run_dir, actor_id, config.monitoring.episode_samples, seed=seed)
    runner = EpisodeRunner(
        config, backend=backend, executor=executor, tokenizer=tokenizer,
        problems=problem_stream(problems, index, config.deploy.actors, seed), sink=sink,
        actor_id=actor_id, instance=instance, gate=gate, feedback_problems=problems, seed=seed,
    )
    started = time.perf_counter()
    log.info("%s (%s) starting: %d problems, backend %s, K=%d", actor_id, instance, len(problems),
             config.actor.backend, config.actor.episodes_in_flight)
    try:
        await runner.run(episodes, stop)
    finally:
        stop.set()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        summary = ActorSummary(actor_id, instance, runner.finished, len(runner.skipped), len(runner.errors),
                               time.perf_counter() - started, runner.busy_fraction(), backend.version)
        sink.close()
        executor.close()
        for closable in (control, gate.receiver if gate is not None else receiver):
            if closable is not None:
                closable.close()
        await backend.close()
        atransport.close()
        transport.close()
        stop_metrics_log()
    raise_if_refused(control)
    return summary
