#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for FERBench's tests and for trying the cluster
# path on one machine (Debian/Ubuntu, run as root):
#
#   bash slurm/cluster.sh up       # apt-get the packages if missing; start munged, MariaDB + slurmdbd
#                                  # (so sacct and submitit see job states), slurmctld, slurmd
#   bash slurm/cluster.sh status
#   bash slurm/cluster.sh down     # stop every daemon it started, cancel jobs, wipe job state
#
# No systemd is assumed: each daemon is started directly and stopped through its PID file. No cgroups:
# proctrack/linuxproc + task/none. Knobs: FERBENCH_SLURM_PARTITION (debug), FERBENCH_SLURM_TIMEOUT (60 s).
set -euo pipefail

PARTITION="${FERBENCH_SLURM_PARTITION:-debug}"
TIMEOUT="${FERBENCH_SLURM_TIMEOUT:-60}"
ETC=/etc/slurm
LOGS=/var/log/slurm
RUN=/run/ferbench-slurm
SOCK=/run/mysqld/mysqld.sock
PACKAGES="slurmctld slurmd slurm-client slurmdbd munge mariadb-server"

say() { echo "[cluster] $*" >&2; }

[ "$(id -u)" = 0 ] || { say "must run as root"; exit 1; }

retry() {  # retry WHAT CMD...: run CMD every 0.2 s until it succeeds or TIMEOUT passes
  local what="$1" deadline=$(( $(date +%s) + TIMEOUT )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { say "$what not ready after ${TIMEOUT}s"; return 1; }
    sleep 0.2
  done
}

stop_all() {  # SIGTERM every daemon with a PID file here, together; SIGKILL what is left after 10 s
  local f pid pids=()
  for f in "$RUN"/*.pid; do
    [ -s "$f" ] || continue
    pid="$(cat "$f")"; rm -f "$f"
    if kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null || true; pids+=("$pid"); fi
  done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.2
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}

down() {
  if [ -s "$RUN/slurmctld.pid" ]; then scancel --quiet --user=root 2>/dev/null || true; fi
  [ -S "$SOCK" ] && mariadb --socket="$SOCK" -e 'DROP DATABASE IF EXISTS slurm_acct_db' 2>/dev/null || true
  stop_all
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/* 2>/dev/null || true
}

install_packages() {
  local missing=0 c
  for c in slurmctld slurmd sbatch slurmdbd munged mariadbd; do command -v "$c" >/dev/null || missing=1; done
  [ "$missing" = 1 ] || return 0
  say "apt-get install $PACKAGES"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # the packages' own service start is refused without an init system ("policy-rc.d denied"): expected
  apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
}

start_munge() {
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid  # munged will not run as root
  ln -sf /run/munge/munged.pid "$RUN/munged.pid"
  retry munge bash -c 'munge -n | unmunge'
}

start_accounting() {  # MariaDB on its socket only, then slurmdbd: submitit reads job states with sacct
  install -d -o mysql -g mysql -m 0755 /run/mysqld /var/log/mysql  # mariadbd runs as mysql: its files too
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket="$SOCK" --skip-networking \
    --pid-file=/run/mysqld/mariadbd.pid --log-error=/var/log/mysql/ferbench.err --innodb-buffer-pool-size=128M \
    </dev/null >/dev/null 2>&1 &
  retry mariadb mariadb --socket="$SOCK" -e 'select 1' || { tail -n 20 /var/log/mysql/ferbench.err >&2; return 1; }
  ln -sf /run/mysqld/mariadbd.pid "$RUN/mariadbd.pid"
  # slurmctld -i starts job ids at 1 again: old accounting rows would collide with new jobs
  mariadb --socket="$SOCK" -e 'DROP DATABASE IF EXISTS slurm_acct_db'
  cat > "$ETC/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
CONF
  chmod 600 "$ETC/slurmdbd.conf"  # slurmdbd refuses a config others can read
  slurmdbd
  retry slurmdbd bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
}

write_slurm_conf() {
  local node hw mem
  node="$(hostname -s)"
  getent hosts "$node" >/dev/null || echo "127.0.0.1 $node" >> /etc/hosts
  hw="$(slurmd -C | head -1)"  # this node's CPUs, sockets, cores, threads and memory
  hw="${hw#NodeName=* }"; hw="${hw%% UpTime=*}"
  mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
  hw="$(sed "s/RealMemory=[0-9]*/RealMemory=$(( mem - 512 ))/" <<<"$hw")"  # never drained for low memory
  cat > "$ETC/slurm.conf" <<CONF
# written by FERBench slurm/cluster.sh: a one-node cluster for tests
ClusterName=ferbench
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
MailProg=/bin/true
MinJobAge=600
KillWait=5
InactiveLimit=0
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

up() {
  local t0=$SECONDS
  install_packages
  mkdir -p "$RUN" "$ETC" "$LOGS" /var/spool/slurmctld /var/spool/slurmd
  down >/dev/null 2>&1 || true
  start_munge
  write_slurm_conf
  start_accounting
  slurmctld -i
  slurmd
  retry "an idle node" bash -c "sinfo -h -o %T | grep -qE '^(idle|mixed|allocated)'" || {
    tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2; exit 1; }
  retry sacct sacct -n -X
  say "up in $(( SECONDS - t0 )) s: partition $PARTITION"
}

status() {
  local f
  for f in "$RUN"/*.pid; do
    [ -e "$f" ] || continue
    if kill -0 "$(cat "$f" 2>/dev/null)" 2>/dev/null; then echo "running $(basename "$f" .pid)"; else echo "stopped $(basename "$f" .pid)"; fi
  done
  sinfo 2>/dev/null || { echo "no cluster answering"; return 1; }
}

case "${1:-}" in
  up) up ;;
  down) down; say "down" ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
