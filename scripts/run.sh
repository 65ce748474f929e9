#!/usr/bin/env bash
# The README's main command: set everything up (idempotent), then run a real RLEF training run on this
# machine's CPUs with the embedded defaults (configs/tiny-cpu.yaml). Extra arguments are config overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/rlef launch --config configs/tiny-cpu.yaml "$@"
