"""Metrics of the learner (every rank serves its own; the hub-only series stay at 0 on other ranks).

Gauges hold the value of the latest update or batch; counters accumulate over the process' life (a resumed
learner starts them at 0 again, Prometheus' rate() handles the reset). The weight publisher's own series
(bytes, publish time inside the transport) are in metrics_weights.py; ``rlef_learner_weights_sync_seconds``
here covers the whole sync the training loop waits for: gathering the full state dict plus publishing.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UPDATES = Counter("rlef_learner_updates_total", "Optimizer updates (policy and value together) done by this process.")
STEP = Gauge("rlef_learner_step", "Optimizer updates since the start of the run (resumes included).")
BATCHES = Counter("rlef_learner_batches_total", "Batches (B rollouts, U updates) trained by this process.")
POLICY_LOSS = Gauge("rlef_learner_policy_loss", "Clipped PPO policy loss of the latest update (token mean).")
VALUE_LOSS = Gauge("rlef_learner_value_loss", "Clipped value loss of the latest update (turn mean).")
KL = Gauge("rlef_learner_kl", "Mean per-turn KL_t (geometric-mean log ratio) to the reference, latest batch.")
APPROX_KL = Gauge("rlef_learner_approx_kl", "k3 estimate of KL(pi_old || pi) over the latest update's tokens.")
CLIP_FRACTION = Gauge("rlef_learner_clip_fraction", "Fraction of tokens whose ratio left [1-eps, 1+eps], latest update.")
MISMATCH_KL = Gauge(
    "rlef_learner_mismatch_kl",
    "k3 estimate of KL(pi_b || pi_old) between the actors' behaviour log-probs and the learner's re-scoring, latest batch.",
)
TRUNCATION_FRACTION = Gauge(
    "rlef_learner_truncation_fraction", "Fraction of tokens whose off-policy weight min(pi/pi_b, 1) was truncated, latest update."
)
EXPLAINED_VARIANCE = Gauge("rlef_learner_explained_variance", "1 - Var(G - V_old)/Var(G) over the latest batch's turns.")
GRAD_NORM = Gauge("rlef_learner_grad_norm", "Policy gradient norm before clipping, latest update.", ["model"])
ENTROPY = Gauge("rlef_learner_entropy", "Mean policy entropy (nats) over the latest update's response tokens.")
BATCH_REWARD = Gauge("rlef_learner_batch_reward", "Mean summed task reward of the latest batch's rollouts.")
SOLVE_RATE = Gauge("rlef_learner_batch_solve_rate", "Fraction of the latest batch's rollouts solved at the end.")
STALENESS = Histogram(
    "rlef_learner_rollout_staleness_versions", "Learner version minus the oldest turn's version, per trained rollout.",
    buckets=(0, 1, 2, 3, 4, 6, 8, 16, 32),
)
TOKENS = Counter("rlef_learner_tokens_total", "Tokens (prompt + response) trained on, counted once per update pass.")
TOKENS_PER_SECOND = Gauge("rlef_learner_tokens_per_second", "Tokens trained per second in the latest batch's updates.")
SYNC_SECONDS = Histogram(
    "rlef_learner_weights_sync_seconds", "Gathering the full state dict and publishing one version.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
BATCH_SECONDS = Histogram(
    "rlef_learner_batch_seconds", "Re-scoring plus the U updates of one batch.",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
WAIT_SECONDS = Counter("rlef_learner_wait_rollouts_seconds_total", "Time the hub waited for enough rollouts.")
BUFFER_FILL = Gauge("rlef_learner_buffer_rollouts", "Valid rollouts waiting in the hub's buffer.")
ROLLOUTS_RECEIVED = Counter("rlef_learner_rollouts_received_total", "Rollout frames received by the hub.")
ROLLOUTS_CONSUMED = Counter("rlef_learner_rollouts_consumed_total", "Rollouts trained on.")
ROLLOUTS_REJECTED = Counter(
    "rlef_learner_rollouts_rejected_total", "Rollouts rejected, by reason (see rlef.learner.buffer).", ["reason"]
)
CHECKPOINT_SECONDS = Histogram(
    "rlef_learner_checkpoint_seconds", "Writing one sharded checkpoint.", buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
)
