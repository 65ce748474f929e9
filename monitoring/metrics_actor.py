"""Prometheus metrics of the actor role (one actor per process, so no actor label).

Derived figures (PromQL): episodes/s = ``rate(rlef_actor_episodes_total[1m])``; tokens/s =
``rate(rlef_actor_generated_tokens_total[1m])``; engine busy fraction =
``rate(rlef_actor_engine_busy_seconds_total[1m])`` (also exported directly as a gauge over the actor's own
window); per-turn solve rate = ``rate(rlef_actor_turn_outcomes_total{status="pass"}[5m])`` divided by the
same sum over every status, by turn; error classes per turn = the same counter by ``status``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EPISODES = Counter("rlef_actor_episodes_total", "Episodes finished (rollouts produced).")
EPISODES_IN_FLIGHT = Gauge("rlef_actor_episodes_in_flight", "Episodes currently running.")
GENERATED_TOKENS = Counter("rlef_actor_generated_tokens_total", "Response tokens sampled.")
PROMPT_TOKENS = Counter("rlef_actor_prompt_tokens_total", "Prompt-segment tokens sent to the engine.")
TURNS_PER_EPISODE = Histogram(
    "rlef_actor_turns_per_episode", "Turns an episode took.", buckets=(1, 2, 3, 4, 5, 6, 8, 10, 16)
)
TURN_OUTCOMES = Counter(
    "rlef_actor_turn_outcomes_total",
    "Turn outcomes on the public tests by turn number (1-based) and status (pass, wrong_answer, runtime_error, "
    "timeout, oom, output_limit, syntax_error, sandbox_error, no_code).",
    ["turn", "status"],
)
FINAL_OUTCOMES = Counter(
    "rlef_actor_final_outcomes_total", "Final (public + private) outcome of each episode's last program.", ["status"]
)
EPISODE_REWARD = Histogram(
    "rlef_actor_episode_reward", "Sum of an episode's task rewards.", buckets=(-1.8, -1.5, -1.25, -1.0, -0.5, 0.0, 0.5, 0.9, 1.0)
)
# prometheus_client drops a histogram's _sum when a bucket bound is negative, so the mean reward needs its
# own running sums (gauges: rewards are negative too; dashboards use delta(), never rate()).
EPISODE_REWARD_SUM = Gauge(
    "rlef_actor_episode_reward_running_sum", "Running sum of episode rewards (goes down too: use delta())."
)
TURN_REWARD_SUM = Gauge(
    "rlef_actor_turn_reward_running_sum", "Running sum of task rewards by turn (goes down too: use delta()).", ["turn"]
)
POLICY_VERSION_LAG = Gauge("rlef_actor_policy_version_lag", "Hub's current policy version minus the version this actor holds.")
ENGINE_BUSY_SECONDS = Counter("rlef_actor_engine_busy_seconds_total", "Seconds the inference engine spent generating.")
ENGINE_BUSY_FRACTION = Gauge("rlef_actor_engine_busy_fraction", "Fraction of wall time the engine was generating, since the last report.")
EXECUTION_WAIT = Histogram(
    "rlef_actor_execution_wait_seconds", "Time one episode waited on one execution request.",
    buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300),
)
GENERATION_SECONDS = Histogram(
    "rlef_actor_generation_seconds", "Time one episode waited for one response (queueing included).",
    buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100),
)
ROLLOUT_SEND_WAIT = Histogram(
    "rlef_actor_rollout_send_wait_seconds", "Time a finished rollout waited to be accepted by the rollout socket (backpressure).",
    buckets=(0.001, 0.01, 0.1, 1, 10, 100),
)
ROLLOUTS_SENT = Counter("rlef_actor_rollouts_sent_total", "Rollouts handed to the learner hub (or written in dry-run).")
PROBLEMS_SKIPPED = Counter("rlef_actor_problems_skipped_total", "Problems not run, by reason.", ["reason"])
EPISODES_DROPPED = Counter(
    "rlef_actor_episodes_dropped_total",
    "Episodes dropped (never scored, never sent) because an execution kept failing on the infrastructure's side "
    "after its retries, by reason (sandbox_error, refused), or because it began before a re-base onto a restarted "
    "hub's weights (rebased).",
    ["reason"],
)
WEIGHTS_REBASES = Counter(
    "rlef_actor_weights_rebases_total", "Re-bases onto a restarted hub's weights (applied even when their version number was lower)."
)
SANDBOX_RETRIES = Counter("rlef_actor_sandbox_retries_total", "Execution jobs resent after a sandbox_error answer (executor timeout, dead jail).")
EPISODE_ERRORS = Counter("rlef_actor_episode_errors_total", "Episodes abandoned by an unexpected error, by error class.", ["error"])
WEIGHTS_APPLIED = Counter("rlef_actor_weights_applied_total", "Weight versions applied to the engine.")
WEIGHTS_REJECTED = Counter("rlef_actor_weights_rejected_total", "Weight versions that did not fit the model (not applied).")
WEIGHTS_APPLY_SECONDS = Histogram("rlef_actor_weights_apply_seconds", "Time to apply one weights version.", buckets=(0.01, 0.1, 1, 10, 100))
LAG_BLOCKED_SECONDS = Counter(
    "rlef_actor_lag_blocked_seconds_total", "Seconds new episodes were held back because the version lag exceeded the actor's gate (staleness.max_async_level - 1)."
)
EPISODE_SAMPLES = Counter("rlef_actor_episode_samples_total", "Episodes written to the run's readable sample (run_dir/samples/).")
EPISODE_SAMPLE_ERRORS = Counter(
    "rlef_actor_episode_sample_errors_total", "Episode samples that could not be built or written (the actor goes on)."
)
