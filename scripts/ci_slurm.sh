#!/usr/bin/env bash
# A throwaway single-node Slurm on this machine, for CI and tests/test_slurm.py:
#   sudo bash scripts/ci_slurm.sh start    # install if missing, configure, start, wait until idle
#   sudo bash scripts/ci_slurm.sh stop     # stop the daemons `start` started, remove its config
# Debian's slurmctld + slurmd + munge with no cgroups and no accounting database, so it also runs
# in containers without systemd. The node has fake GPUs (gres.conf points them at /dev/null,
# /dev/zero, ...) so that `--gpus=N` jobs schedule. State directories are wiped on every start: a
# controller that finds the state of a cluster with another name refuses to start.
#
# SLURM_CI_DIR   where daemon logs and pid files go (default: $TMPDIR/toolrl-slurm-ci)
# SLURM_CI_MEM   the node's memory in MB (default: what `slurmd -C` reports)
# SLURM_CI_GPUS  fake GPUs on the node, 1 to 4 (default 1)
set -euo pipefail

DIR=${SLURM_CI_DIR:-${TMPDIR:-/tmp}/toolrl-slurm-ci}
CONF_DIR=/etc/slurm
DAEMONS=(slurmd slurmctld munged)
MARK="# Written by scripts/ci_slurm.sh"

die() { echo "ci_slurm.sh: $*" >&2; exit 1; }

install_slurm() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "Slurm is not installed and installing it needs root"
  export DEBIAN_FRONTEND=noninteractive
  local pkgs=(slurmctld slurmd slurm-client munge)
  apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"$DIR/apt.log" 2>&1 \
    || { apt-get update -q >>"$DIR/apt.log" 2>&1 && apt-get install -y -q --no-install-recommends "${pkgs[@]}" >>"$DIR/apt.log" 2>&1; } \
    || { tail -n 20 "$DIR/apt.log" >&2; die "apt-get install ${pkgs[*]} failed"; }
}

alive() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

start() {
  [ "$(id -u)" = 0 ] || die "start needs root (it writes /etc/slurm and runs the daemons)"
  mkdir -p "$DIR"
  for d in "${DAEMONS[@]}"; do alive "$d" && die "$d from an earlier start is still running (run: $0 stop)"; done
  for d in slurmctld slurmd; do
    pgrep -x "$d" >/dev/null && die "a $d not started by this script is running; stop it first"
  done
  install_slurm
  # A config this script did not write (a real cluster's) is left alone.
  for f in slurm.conf gres.conf; do
    [ ! -e "$CONF_DIR/$f" ] || head -n 1 "$CONF_DIR/$f" | grep -qF "$MARK" \
      || die "$CONF_DIR/$f exists and was not written by this script; not overwriting it"
  done

  # munge: the key, then the daemon in the foreground under its own user.
  mkdir -p /run/munge /etc/munge
  chown munge:munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  if ! munge -n >/dev/null 2>&1; then   # else a munged is already running: use it, leave it be
    runuser -u munge -- /usr/sbin/munged --foreground >"$DIR/munged.log" 2>&1 &
    local runuser_pid=$!
    for _ in $(seq 100); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n >/dev/null 2>&1 || { tail -n 5 "$DIR/munged.log" >&2; die "munged did not start"; }
    # Keep the daemon's own pid (runuser exits with it).
    pgrep -P "$runuser_pid" -x munged >"$DIR/munged.pid" || echo "$runuser_pid" >"$DIR/munged.pid"
  fi

  # Fresh state, the config, the fake GPUs.
  rm -rf /var/spool/slurmctld /var/spool/slurmd
  mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm "$CONF_DIR"
  local host cpus mem gpus files
  host=$(hostname -s)
  cpus=$(nproc)
  mem=${SLURM_CI_MEM:-$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')}
  gpus=${SLURM_CI_GPUS:-1}
  [[ $gpus =~ ^[1-4]$ ]] || { stop; die "SLURM_CI_GPUS must be 1 to 4, got '$gpus'"; }
  # A GPU needs a device file; character devices that exist everywhere satisfy slurmd (Count=
  # alone leaves the node INVAL: "gres/gpu count reported lower than configured").
  files=$(printf '%s\n' /dev/null /dev/zero /dev/full /dev/random | head -n "$gpus" | paste -sd,)
  cat >"$CONF_DIR/slurm.conf" <<CONF
$MARK: a throwaway single-node cluster, removed by \`stop\`.
ClusterName=toolrl-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
# No cgroups here: track processes by their parent, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: sacct cannot see jobs, so Snakemake's plugin must ask squeue, which forgets a
# job MinJobAge seconds after it ends.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
GresTypes=gpu
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:$gpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  printf '%s\nName=gpu File=%s\n' "$MARK" "$files" >"$CONF_DIR/gres.conf"

  slurmctld -D -i >"$DIR/slurmctld.log" 2>&1 &
  echo $! >"$DIR/slurmctld.pid"
  slurmd -D >"$DIR/slurmd.log" 2>&1 &
  echo $! >"$DIR/slurmd.pid"

  # Wait for the node to be idle. sinfo against a dead controller blocks for seconds, hence the
  # timeout on each call and the liveness checks.
  for _ in $(seq 120); do
    for d in slurmctld slurmd; do
      alive "$d" || { tail -n 20 "$DIR/$d.log" >&2; stop; die "$d exited"; }
    done
    if timeout 5 sinfo -h -o %t 2>/dev/null | grep -qx idle; then
      echo "slurm is up: node $host, $cpus CPUs, ${mem} MB, $gpus fake GPU(s), partition debug (logs: $DIR)"
      return 0
    fi
    sleep 0.5
  done
  timeout 5 sinfo -N -l >&2 || true
  stop
  die "the node did not become idle"
}

stop() {
  local pid
  for d in "${DAEMONS[@]}"; do
    [ -f "$DIR/$d.pid" ] || continue
    pid=$(cat "$DIR/$d.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$DIR/$d.pid"
  done
  # Take our config away too: with a slurm.conf naming a dead controller, every Slurm client
  # call blocks for seconds, and so does `import snakemake_executor_plugin_slurm` (it runs
  # `scontrol show config`), i.e. the start of every snakemake command on this machine.
  for f in slurm.conf gres.conf; do
    [ -e "$CONF_DIR/$f" ] && head -n 1 "$CONF_DIR/$f" | grep -qF "$MARK" && rm -f "$CONF_DIR/$f"
  done
  return 0
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
