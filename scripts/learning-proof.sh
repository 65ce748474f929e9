#!/usr/bin/env bash
# The learning proof across seeds (docs/results.md): for each seed, fresh feedback tasks (new held-out
# combinations and inputs), a warm start trained on that seed's train split, the main job (configs/tiny-cpu.yaml)
# on it, and its final evaluation (warm start vs final checkpoint, real and random feedback, held-out test split).
# Then one table over the seeds. Usage: bash scripts/learning-proof.sh [SEEDS...] (default: 0 1 2); extra config
# overrides in RLEF_OVERRIDES, task-generator arguments in RLEF_TASK_ARGS (default --held-out-inputs, the split
# scripts/setup.sh uses; e.g. RLEF_TASK_ARGS="--held-out-per-operation 1" for the balanced combination split). Results: runs/learning-proof/seed-S/{eval,report}, runs/learning-proof/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${RLEF_PROOF_DIR:-runs/learning-proof}
SEEDS=("${@:-0 1 2}")
# shellcheck disable=SC2206
SEEDS=(${SEEDS[*]})
mkdir -p "$OUT"
for seed in "${SEEDS[@]}"; do
  dir="$OUT/seed-$seed"
  mkdir -p "$dir"
  start=$(date +%s)
  # shellcheck disable=SC2086
  .venv/bin/rlef data make-feedback-tasks "$dir/tasks" --seed "$seed" --if-stale ${RLEF_TASK_ARGS:---held-out-inputs}
  .venv/bin/rlef make-warm-start "$dir/warm-start" --tasks "$dir/tasks" --seed "$seed" --threads 1 --if-stale
  warm=$(date +%s)
  # shellcheck disable=SC2086
  .venv/bin/rlef launch --config configs/tiny-cpu.yaml --free-ports --progress log \
    run.output_dir="$OUT" run.name="seed-$seed" run.seed="$seed" \
    model.path="$dir/warm-start" data.path="$dir/tasks" ${RLEF_OVERRIDES:-} > "$dir/launch.log" 2>&1
  end=$(date +%s)
  printf '{"seed": %d, "warm_start_s": %d, "train_and_eval_s": %d}\n' "$seed" $((warm - start)) $((end - warm)) > "$dir/timing.json"
  echo "seed $seed: warm start $((warm - start)) s, training + evaluation $((end - warm)) s"
done
.venv/bin/python -m rlef.monitoring.seeds_summary "$OUT" "${SEEDS[@]}"
