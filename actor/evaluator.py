"""The in-training evaluator (``rlef evaluator``): an actor in evaluation mode that selects the checkpoint.

It registers with the hub like an actor (control channel, id ``evaluator-0``, capability ``evaluation``) and
receives every weight version through the same receiver (:func:`rlef.common.weights.make_receiver`), but it
sends no rollouts: the learner never waits for it, and it never holds back training. Whenever the newest
version it holds is ``evaluator.every_versions`` past the last one it evaluated (and version 0 first, with
``evaluator.evaluate_initial``), it loads that version into its own engine and runs the paper's protocol on
the selection split (``evaluator.split``, default ``data.eval_split``) with the same runner as
``rlef evaluate`` (:func:`rlef.actor.evaluate.run_episodes`: final programs scored on public + private +
generated tests). Versions that arrive while it evaluates are replaced by newer ones (counted).

Outputs, under ``RUN_DIR/eval/``:

- ``valid/v<version>/``: each evaluation's ``evaluation.{json,md}`` and ``episodes.jsonl``;
- ``curve.jsonl``: one line per evaluation (version, estimates with CIs, seconds) -- the valid curve;
- ``best.json``: the version selected on ``evaluator.select_on`` (ties keep the earlier one), the learner
  checkpoint holding that version when one is still on disk, the exported model (``best-model/``, a
  Hugging Face directory written from the received weights, so checkpoint rotation cannot delete it), and
  next to it the latest evaluated version and the newest learner checkpoint (the final one at the end);
- metrics (:mod:`rlef.monitoring.metrics_evaluator`) on ``evaluator.metrics_port`` and in the run's metrics
  log (``RUN_DIR/metrics/evaluator-0.jsonl``, one snapshot right after every evaluation).

On this shared CPU machine the evaluator lowers its own priority (``evaluator.nice``). Stopping: the hub's
``stop`` or SIGTERM ends it after the episodes in flight; an evaluation cut short is not recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlef.common.config import CollectiveWeights, RlefConfig
from rlef.common.errors import ConfigError

log = logging.getLogger(__name__)

#: evaluator.select_on -> the key of the evaluation report's estimate.
SELECT_KEYS = {"1@3": "1@3", "pass@1": "pass@1 (final program)", "10@100": "10@100"}
#: Files of model.path that make a received state dict a loadable Hugging Face directory.
_MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model")


def is_due(version: int, last_evaluated: int | None, every: int, evaluate_initial: bool) -> bool:
    """Whether ``version`` gets evaluated: the first version if ``evaluate_initial`` (or once it reaches
    ``every``), later ones once they are ``every`` past the last evaluated."""
    if last_evaluated is None:
        return evaluate_initial or version >= every
    return version >= last_evaluated + every


def checkpoint_of_version(root: Path, version: int) -> Path | None:
    """The complete learner checkpoint (``step-*`` with ``COMPLETE``) whose trainer_state holds ``version``.
    Read from the files (the layout of learner/checkpoint.py), since a role never imports another role."""
    for path in reversed(complete_checkpoints(root)):
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if int(state.get("version", -1)) == version:
            return path
    return None


def complete_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and not p.name.endswith(".tmp")
                  and (p / "COMPLETE").exists())


@dataclass
class Selection:
    """The best version so far on the selection estimate (strictly better replaces: ties keep the earlier)."""

    key: str
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def offer(self, point: dict[str, Any]) -> bool:
        """Add an evaluation point; True when it is the new best."""
        self.history.append(point)
        e = point["estimates"].get(self.key)
        if e is None:
            return False
        if self.best is None or e["mean"] > self.best["estimates"][self.key]["mean"]:
            self.best = point
            return True
        return False


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)  # readers (rlef report, a person) never see half a file


def export_model(received: Any, model_path: Path, out: Path) -> Path:
    """A Hugging Face directory of ``received`` weights: model.path's config and tokenizer files plus the
    tensors as model.safetensors; written beside ``out`` and renamed over it."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in _MODEL_FILES:
        if (model_path / name).exists():
            shutil.copy2(model_path / name, tmp / name)
    received.save_safetensors(tmp / "model.safetensors")
    (tmp / "rlef_version.json").write_text(json.dumps({"version": received.version}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def evaluation_config(config: RlefConfig) -> RlefConfig:
    """The evaluator's copy of the run config: the protocol's sampling, its own K."""
    from rlef.actor.evaluate import PROTOCOLS

    ev = config.evaluator
    cfg = config.model_copy(deep=True)
    _, _, temperature, top_p = PROTOCOLS[ev.protocol]
    cfg.actor.sampling.temperature = temperature
    cfg.actor.sampling.top_p = top_p
    cfg.actor.random_feedback = False
    if ev.episodes_in_flight is not None:
        cfg.actor.episodes_in_flight = ev.episodes_in_flight
    return cfg


class Evaluator:
    """The evaluation loop around one engine, one executor client and one weight receiver."""

    def __init__(self, config: RlefConfig, *, backend: Any, executor: Any, tokenizer: Any, problems: list[Any],
                 receiver: Any, out_dir: Path, index: int = 0, on_applied: Any = None):
        self.config = evaluation_config(config)
        self.ev = config.evaluator
        self.backend, self.executor, self.tokenizer, self.problems = backend, executor, tokenizer, problems
        self.receiver = receiver
        self.out = out_dir
        self.index = index
        self.split = self.ev.split or config.data.eval_split
        self.selection = Selection(SELECT_KEYS[self.ev.select_on])
        self.last_evaluated: int | None = None
        self.checkpoint_root = config.learner.checkpoint.dir or config.run.run_dir / "checkpoints"
        self._pending: Any = None
        self.on_applied = on_applied

    async def run(self, stop: asyncio.Event, poll_s: float = 0.5) -> None:
        """Poll weights; evaluate each due version; until ``stop``."""
        from rlef.monitoring import metrics as base_metrics
        from rlef.monitoring import metrics_evaluator as M

        M.EVALUATED_VERSION.set(-1)
        M.BEST_VERSION.set(-1)
        while not stop.is_set():
            got = await asyncio.to_thread(self.receiver.poll, poll_s)
            if got is not None:
                if self._pending is not None:
                    M.VERSIONS_SKIPPED.inc()
                self._pending = got
            base_metrics.beat(self.backend.version)
            pending = self._pending
            if pending is None or not is_due(pending.version, self.last_evaluated, self.ev.every_versions, self.ev.evaluate_initial):
                continue
            self._pending = None
            await self.backend.load_weights(pending)
            if self.on_applied is not None:
                self.on_applied(pending.version)
            version = pending.version
            if self.ev.export_best:  # now, so the received buffer can be dropped before the evaluation
                export_model(pending, Path(self.config.model.path), self.out / "candidate-model")
            del pending, got
            await self.evaluate(version, stop)

    async def evaluate(self, version: int, stop: asyncio.Event) -> dict[str, Any] | None:
        """One evaluation of the split with ``version`` loaded in the engine (exported to candidate-model/
        when export_best); the curve point (None: cut short by stop)."""
        from rlef.actor.evaluate import evaluation_settings, run_episodes
        from rlef.actor.evaluation_episodes import EpisodesSink
        from rlef.actor.evaluation_scores import aggregate
        from rlef.actor.main import new_instance_nonce
        from rlef.monitoring import metrics as base_metrics
        from rlef.monitoring import metrics_evaluator as M

        folder = self.out / self.split / f"v{version:06d}"
        shutil.rmtree(folder, ignore_errors=True)  # an evaluation of this version cut short before: redo it
        folder.mkdir(parents=True)
        todo = [p for p in self.problems for _ in range(self.ev.rollouts_per_problem)]
        started = time.perf_counter()
        sink = EpisodesSink(folder / "episodes.jsonl")
        log.info("evaluating version %d on %s: %d episodes", version, self.split, len(todo))
        episodes = asyncio.create_task(run_episodes(
            self.config, backend=self.backend, executor=self.executor, tokenizer=self.tokenizer, problems=self.problems,
            todo=todo, sink=sink, instance=new_instance_nonce(), actor_id=f"evaluator-{self.index}",
            seed=self.config.run.seed + version))
        stopped = asyncio.create_task(stop.wait())
        try:
            # A stop abandons the evaluation at once: at the end of a run the executors go away too, and
            # episodes waiting on them would outlive the launcher's grace period.
            await asyncio.wait({episodes, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not episodes.done():
                episodes.cancel()
                await asyncio.gather(episodes, return_exceptions=True)
                shutil.rmtree(self.out / "candidate-model", ignore_errors=True)
                log.info("evaluation of version %d cut short by stop: not recorded", version)
                return None
            runner = episodes.result()
        finally:
            stopped.cancel()
            sink.close()
        seconds = time.perf_counter() - started
        settings = evaluation_settings(self.config, split=self.split, limit=self.ev.limit, protocol=self.ev.protocol,
                                       rollouts=self.ev.rollouts_per_problem)
        settings.update(seconds=round(seconds, 3), policy_version=version)
        report = aggregate(settings, [p.problem_id for p in self.problems], sink.episodes, dict(runner.skipped).items(),
                           runner.errors, seed=self.config.run.seed)
        (folder / "evaluation.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
        (folder / "evaluation.md").write_text(report.markdown())
        point = {"version": version, "time": time.time(), "seconds": round(seconds, 3), "split": self.split,
                 "episodes": len(sink.episodes), "errors": len(runner.errors),
                 "estimates": {k: v for k, v in report.estimates.items() if v is not None}}
        with open(self.out / "curve.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(point) + "\n")
        self.last_evaluated = version
        new_best = self.selection.offer(point)
        if new_best and self.ev.export_best:
            shutil.rmtree(self.out / "best-model", ignore_errors=True)
            os.replace(self.out / "candidate-model", self.out / "best-model")
        else:  # not selected: its export is not needed (the learner's checkpoints hold the weights of the run)
            shutil.rmtree(self.out / "candidate-model", ignore_errors=True)
        self._write_best()
        for name, e in point["estimates"].items():
            label = name.replace(" (final program)", "")
            M.SOLVE_RATE.labels(label).set(e["mean"])
            M.SOLVE_RATE_CI_LOW.labels(label).set(e["ci_low"])
            M.SOLVE_RATE_CI_HIGH.labels(label).set(e["ci_high"])
        M.EVALUATED_VERSION.set(version)
        M.EVALUATIONS.inc()
        M.EVALUATION_SECONDS.observe(seconds)
        best = self.selection.best
        if best is not None:
            M.BEST_VERSION.set(best["version"])
            M.BEST_SOLVE_RATE.set(best["estimates"][self.selection.key]["mean"])
        base_metrics.snapshot_now()
        key = self.selection.key
        log.info("version %d: %s %s (best: version %s)", version, key,
                 f"{point['estimates'][key]['mean']:.4f}" if key in point["estimates"] else "n/a",
                 None if best is None else best["version"])
        return point

    def refresh_best(self) -> None:
        """Rewrite best.json (the final checkpoint may have appeared since the last evaluation)."""
        if self.selection.history:
            self._write_best()

    def _write_best(self) -> None:
        best = self.selection.best
        latest = self.selection.history[-1]
        checkpoints = complete_checkpoints(self.checkpoint_root)
        key = self.selection.key
        data = {
            "select_on": key, "split": self.split, "every_versions": self.ev.every_versions,
            "best": None if best is None else {
                "version": best["version"], "estimate": best["estimates"][key],
                "checkpoint": _str(checkpoint_of_version(self.checkpoint_root, best["version"])),
                "model_dir": str(self.out / "best-model") if self.ev.export_best else None,
                "evaluation": str(self.out / self.split / f"v{best['version']:06d}"),
            },
            "latest": {"version": latest["version"], "estimate": latest["estimates"].get(key),
                       "checkpoint": _str(checkpoint_of_version(self.checkpoint_root, latest["version"]))},
            "final_checkpoint": _str(checkpoints[-1] if checkpoints else None),
            "initial_model": self.config.model.path,  # version 0: the initial weights (no learner checkpoint)
            "evaluations": len(self.selection.history),
        }
        _write_json(self.out / "best.json", data)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


async def run_evaluator(config: RlefConfig, *, index: int = 0) -> Selection:
    """``rlef evaluator``: run until the hub says stop or SIGTERM/SIGINT; returns the selection."""
    from transformers import AutoTokenizer

    from rlef.actor.backends import make_backend
    from rlef.actor.main import new_instance_nonce, register_with_hub, watch_stop
    from rlef.common.protocol.control_client import make_control_client
    from rlef.common.data.loaders import load_problems
    from rlef.common.protocol.execution_client import ExecutionClient
    from rlef.common.protocol.transport import Transport
    from rlef.common.weights import make_receiver
    from rlef.monitoring.metrics import serve_metrics, stop_metrics_log
    from rlef.monitoring.metrics_evaluator import evaluator_registry

    if isinstance(config.weights, CollectiveWeights):
        raise ConfigError("evaluator: weights.type collective has a fixed group of actors; the evaluator needs zmq or filesystem")
    ev = config.evaluator
    if ev.nice > 0:
        os.nice(ev.nice)
    evaluator_id = f"evaluator-{index}"
    run_dir = Path(config.run.run_dir)
    serve_metrics("evaluator", evaluator_id, ev.metrics_port if config.monitoring.enabled else 0, evaluator_registry(),
                  run_dir=run_dir, log_interval_s=config.monitoring.metrics_log_interval_s)
    split = ev.split or config.data.eval_split
    problems = load_problems(config.data.dataset, config.data.path, split, ev.limit, generated=True)
    cfg = evaluation_config(config)
    tokenizer = AutoTokenizer.from_pretrained(config.model.path)
    backend = make_backend(cfg, seed=config.run.seed * 100_003 + 99_991)
    instance = new_instance_nonce()
    atransport, transport = Transport(config.transport, asyncio=True), Transport(config.transport)
    endpoints = config.endpoints
    executor = ExecutionClient(atransport, endpoints.broker(endpoints.broker_frontend_port),
                               client_id=f"{evaluator_id}-{instance}", timeout_s=config.actor.execution_timeout_s)
    control = make_control_client(config, transport, evaluator_id)
    receiver = make_receiver(config, transport, evaluator_id)
    control.add_version_listener(receiver.notify)
    control.set_local_version(backend.version)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    evaluator = Evaluator(config, backend=backend, executor=executor, tokenizer=tokenizer, problems=problems,
                          receiver=receiver, out_dir=out, index=index, on_applied=control.heartbeat)
    background = [asyncio.create_task(register_with_hub(control, ["evaluation", config.actor.backend], {
                      "instance": instance, "backend": config.actor.backend, "mode": "evaluation"}, stop)),
                  asyncio.create_task(watch_stop(control, stop, "ending the evaluation"))]
    log.info("%s: %d problems of %s, every %d versions, selecting on %s", evaluator_id, len(problems), split,
             ev.every_versions, evaluator.selection.key)
    try:
        await evaluator.run(stop)
    finally:
        stop.set()
        evaluator.refresh_best()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        executor.close()
        control.close()
        receiver.close()
        await backend.close()
        atransport.close()
        transport.close()
        stop_metrics_log()
    from rlef.actor.main import raise_if_refused

    raise_if_refused(control)
    return evaluator.selection
