# Shared helpers of the RLEF SLURM scripts (sourced; bash). Needs RLEF_PYTHON (the venv's python).

# Address other nodes reach NAME at: its NodeAddr (equals the hostname on most clusters; 127.0.0.1 for the
# local virtual cluster, whose node names do not resolve).
rlef_node_addr() {
  local addr
  addr=$(scontrol show node "$1" 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p' | head -1)
  echo "${addr:-$1}"
}

# Node names of a hostlist expression, one per line, and their addresses comma-joined (task order).
rlef_hosts() { scontrol show hostnames "$1"; }
rlef_addrs_csv() {
  local out="" n
  for n in $(rlef_hosts "$1"); do out="$out${out:+,}$(rlef_node_addr "$n")"; done
  echo "$out"
}

rlef() { "$RLEF_PYTHON" -m rlef.common.cli "$@"; }

# Allocate COUNT consecutive actor indices for this run (atomically, under flock): prints the first one.
rlef_alloc_actor_indices() {
  local run_dir=$1 count=$2 file="$1/slurm/next-actor-index"
  (
    flock -x 9
    local base
    base=$(cat "$file" 2>/dev/null || echo 0)
    echo $((base + count)) >"$file"
    echo "$base"
  ) 9>"$run_dir/slurm/actor-index.lock"
}

# Stop background srun steps (srun forwards the signal to its tasks), then wait for them.
rlef_stop_steps() {
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# Run a command; when it fails, run it again after an exponential backoff (1 s doubling to 60 s; back to 1 s
# after a run of 60 s or more). Returns when it exits 0; SIGTERM/SIGINT (srun stopping the step) stop it.
rlef_restarting() {
  local delay=1 started code child
  trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM INT
  while true; do
    started=$SECONDS
    "$@" &
    child=$!
    code=0
    wait "$child" || code=$?
    [ "$code" -eq 0 ] && return 0
    [ $((SECONDS - started)) -ge 60 ] && delay=1
    echo "rlef: '$1 ... $3' exited with $code; restarting in ${delay}s" >&2
    sleep "$delay" &
    child=$!
    wait "$child" || true
    delay=$((delay * 2 > 60 ? 60 : delay * 2))
  done
}

# One srun task of a role: ROLE (actor|executor) CONFIG LOG_DIR [INDEX_BASE [key=value ...]];
# index = INDEX_BASE + SLURM_PROCID, log = LOG_DIR/ROLE-INDEX.log (the local launcher's names), restarted with
# backoff when it dies; the overrides go to the role command.
rlef_task() {
  local role=$1 cfg=$2 logs=$3 base=${4:-0}
  shift 4 2>/dev/null || shift $#
  local i=$((base + SLURM_PROCID)) flag
  exec >>"$logs/$role-$i.log" 2>&1
  echo "==== rlef: $role $i on $(hostname) (job ${SLURM_JOB_ID:-?}, step ${SLURM_STEP_ID:-?})"
  flag=$("$RLEF_PYTHON" -m rlef.deploy.slurm_plan index-flag "$role") || flag="--$role-index"
  rlef_restarting "$RLEF_PYTHON" -m rlef.common.cli "$role" --config "$cfg" "$flag" "$i" "$@"
}
