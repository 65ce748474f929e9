#!/usr/bin/env bash
# Submit one RLEF run as a heterogeneous SLURM job sized from its config (see deploy/slurm/rlef.sbatch).
#
#   deploy/slurm/submit.sh [--gpu-partition P] [--cpu-partition P] [--time T] [--account A] [--test-only]
#                          CONFIG [key.path=value ...]
#
# Prints the job id. The layout (nodes, tasks, GPUs per component) comes from `python -m rlef.deploy.slurm_plan
# sbatch-args`; the job's own stdout goes to RUN_DIR/slurm/rlef-JOBID.out, each process logs to RUN_DIR/logs/.
set -euo pipefail
RLEF_HOME=${RLEF_HOME:-$(cd "$(dirname "$0")/../.." && pwd)}
RLEF_PYTHON=${RLEF_PYTHON:-$RLEF_HOME/.venv/bin/python}
PLAN=() EACH=() EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --gpu-partition|--cpu-partition) PLAN+=("$1" "$2"); shift 2 ;;
    --time|--account|--qos) EACH+=("--each=$1=$2"); shift 2 ;;
    --test-only) EXTRA+=(--test-only); shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
CONFIG=${1:?usage: submit.sh [options] CONFIG [key.path=value ...]}
shift
eval "$("$RLEF_PYTHON" -m rlef.deploy.slurm_plan env --config "$CONFIG" "$@")"
RUN_DIR=$(realpath -m "$RLEF_RUN_DIR")
mkdir -p "$RUN_DIR/slurm"
read -r -a LAYOUT <<<"$("$RLEF_PYTHON" -m rlef.deploy.slurm_plan sbatch-args --config "$CONFIG" "${PLAN[@]}" "${EACH[@]}" "$@")"
exec timeout "${RLEF_SBATCH_TIMEOUT:-60}" sbatch --parsable "${EXTRA[@]}" --output="$RUN_DIR/slurm/%x-%j.out" \
  --export=ALL,RLEF_HOME="$RLEF_HOME",RLEF_PYTHON="$RLEF_PYTHON" \
  "${LAYOUT[@]}" "$RLEF_HOME/deploy/slurm/rlef.sbatch" "$CONFIG" "$@"
