#!/usr/bin/env bash
# A 3-virtual-node SLURM cluster on localhost for the deploy tests (Debian's slurmctld/slurmd + munge).
#
#   scripts/slurm-local.sh start   # generate $DIR/slurm.conf, start munged, slurmctld, slurmd n1..n3
#   scripts/slurm-local.sh env     # print `export SLURM_CONF=...` (eval it before sbatch/squeue/srun)
#   scripts/slurm-local.sh status  # sinfo
#   scripts/slurm-local.sh stop    # stop slurmctld/slurmd (by their pid files); munged, a shared system daemon, stays
#
# DIR defaults to /tmp/rlef-slurm (RLEF_SLURM_DIR); ports: slurmctld RLEF_SLURM_CTLD_PORT (default 16817),
# slurmd RLEF_SLURM_NODE_PORT..+2 (default 17001). Why these settings (../shared/reference/platform-notes):
# heterogeneous jobs never start on a one-node cluster, so three virtual nodes share 127.0.0.1 with their own
# slurmd ports; proctrack/linuxproc and task/none need no cgroups; OverSubscribe=FORCE:4 lets the tiny CPU
# run's roles share 2 CPUs per node; accounting is off. Needs root (slurmd runs jobs as the submitting user).
set -euo pipefail
DIR=${RLEF_SLURM_DIR:-/tmp/rlef-slurm}
CTLD_PORT=${RLEF_SLURM_CTLD_PORT:-16817}
NODE_PORT=${RLEF_SLURM_NODE_PORT:-17001}
NODES=(n1 n2 n3)
CPUS=${RLEF_SLURM_CPUS:-2}
log() { printf '[slurm-local] %s\n' "$*" >&2; }

write_conf() {
  mkdir -p "$DIR/state" "$DIR/spool"
  for n in "${NODES[@]}"; do mkdir -p "$DIR/spool/$n"; done
  cat >"$DIR/slurm.conf" <<EOF
ClusterName=rlef-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
NodeName=n[1-3] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$NODE_PORT-$((NODE_PORT + 2))] CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=n[1-3] Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
  # slurmctld/slurmd refuse to start without cgroup.conf on some builds; an empty one is harmless.
  : >"$DIR/cgroup.conf"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
  if pgrep -x munged >/dev/null 2>&1 && [ -S /run/munge/munge.socket.2 ]; then return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  su -s /bin/sh munge -c /usr/sbin/munged
}

wait_nodes_idle() {
  for _ in $(seq 1 60); do
    if [ "$(sinfo -h -N -o '%t' 2>/dev/null | grep -c -E '^(idle|mix|alloc)')" -ge "${#NODES[@]}" ]; then return 0; fi
    sleep 0.5
  done
  log "nodes did not become idle:"; sinfo -N >&2 || true; tail -20 "$DIR/slurmctld.log" >&2 || true
  return 1
}

start() {
  write_conf
  export SLURM_CONF="$DIR/slurm.conf"
  start_munge
  if ! pid_alive "$DIR/slurmctld.pid"; then
    /usr/sbin/slurmctld -i -f "$SLURM_CONF"
  fi
  for n in "${NODES[@]}"; do
    if ! pid_alive "$DIR/slurmd-$n.pid"; then
      /usr/sbin/slurmd -N "$n" -f "$SLURM_CONF"
    fi
  done
  wait_nodes_idle
  log "cluster up: SLURM_CONF=$SLURM_CONF"
}

stop() {
  export SLURM_CONF="$DIR/slurm.conf"
  if [ -f "$SLURM_CONF" ] && pid_alive "$DIR/slurmctld.pid"; then
    timeout 10 scancel --user="$(id -un)" >/dev/null 2>&1 || true
  fi
  for pidfile in "$DIR"/slurmd-*.pid "$DIR/slurmctld.pid"; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
  done
  log "cluster stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$DIR/slurm.conf" ;;
  status) SLURM_CONF="$DIR/slurm.conf" sinfo -N ;;
  *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
