#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, to try a sweep before taking it to a real cluster
# (and what CI runs the cluster tests on). Needs root and Debian/Ubuntu's packages.
#
#   launch/slurm/local_cluster.sh up      # install if needed, start, wait until the node is idle
#   launch/slurm/local_cluster.sh down    # stop the daemons (state and logs are kept)
#   launch/slurm/local_cluster.sh status  # the node's state, or "down"
#
# Both commands are idempotent. The node has this machine's CPUs and memory and two fake GPUs
# (character devices copying /dev/null) so GPU requests can be scheduled on a GPU-less machine;
# nothing runs on them. No systemd, no cgroups, no accounting database: daemons run directly,
# processes are tracked by /proc, and jobs are requeued 10 s after a requeue (cred_expire=10).
set -euo pipefail

CONF_DIR=/etc/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
FAKE_GPUS=2
PACKAGES=(slurmctld slurmd slurm-client munge)
NODE=$(hostname -s)

die() { echo "local_cluster: $*" >&2; exit 1; }

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    command -v apt-get >/dev/null || die "needs apt-get to install ${missing[*]}"
    echo "local_cluster: installing ${missing[*]}"
    local log
    log=$(mktemp)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
        cat "$log" >&2
        die "could not install ${missing[*]}"
    fi
    rm -f "$log"
}

# The node's name must resolve: srun and jax.distributed contact it by name.
resolve_node() {
    getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >>/etc/hosts
}

write_conf() {
    local cpus mem
    cpus=$(nproc)
    mem=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))
    mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" "$RUN_DIR"
    for i in $(seq 0 $((FAKE_GPUS - 1))); do
        # slurmd accepts only character devices as GPU files; these are copies of /dev/null.
        [ -c "/dev/fakegpu$i" ] || mknod -m 666 "/dev/fakegpu$i" c 1 3
    done
    echo "Name=gpu File=/dev/fakegpu[0-$((FAKE_GPUS - 1))]" >"$CONF_DIR/gres.conf"
    cat >"$CONF_DIR/slurm.conf" <<CONF
# Written by launch/slurm/local_cluster.sh: one node on loopback.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MailProg=/bin/true
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=30
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 Gres=gpu:$FAKE_GPUS CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
}

start_munge() {
    pgrep -x munged >/dev/null && return
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    su -s /bin/sh munge -c /usr/sbin/munged
}

start_daemon() {
    local name=$1
    pgrep -x "$name" >/dev/null && return
    "/usr/sbin/$name" -D >>"$LOG_DIR/$name.out" 2>&1 &
    disown
}

node_state() {
    sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1
}

wait_idle() {
    local state=""
    for _ in $(seq 1 60); do
        state=$(node_state || true)
        case "$state" in
        idle | mixed | allocated) echo "local_cluster: node $NODE is $state"; return ;;
        drain* | down*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
        esac
        sleep 1
    done
    die "node $NODE did not become idle (state '${state:-none}'); see $LOG_DIR/*.log"
}

up() {
    [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts daemons)"
    install_packages
    resolve_node
    write_conf
    start_munge
    start_daemon slurmctld
    start_daemon slurmd
    wait_idle
}

DAEMONS=(slurmd slurmctld munged)

running() {
    local name
    for name in "${DAEMONS[@]}"; do
        pgrep -x "$name" >/dev/null && echo "$name"
    done
    return 0
}

down() {
    for name in "${DAEMONS[@]}"; do
        pkill -x "$name" 2>/dev/null || true
    done
    for _ in $(seq 1 20); do
        [ -z "$(running)" ] && { echo "local_cluster: stopped"; return; }
        sleep 0.5
    done
    die "still running after 10 s: $(running | tr '\n' ' ')"
}

case "${1:-}" in
up) up ;;
down) down ;;
status) pgrep -x slurmctld >/dev/null && node_state || echo down ;;
*) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
