#!/usr/bin/env bash
# A SLURM cluster on localhost (munged + slurmctld + one slurmd per node), for tests and CI, run as root.
#
# usage: scripts/slurm_cluster.sh {up|down|status|env} [--state-dir DIR] [--nodes N] [--cpus N] [--no-install]
#   up      install slurm/munge with apt-get if missing, write DIR/slurm.conf, start the daemons, wait until every
#           node is idle.  Idempotent: a cluster already running from DIR is left as it is.
#   down    cancel the cluster's jobs, then stop its daemons by the PIDs in DIR/*.pid (TERM, then KILL after 10 s).
#   status  print sinfo and the daemon PIDs; exit 0 when all daemons are alive, 1 otherwise.
#   env     print `export SLURM_CONF=DIR/slurm.conf` (clients need it: eval "$(scripts/slurm_cluster.sh env)").
# options:
#   --state-dir DIR  everything lives here: config, munge key/socket, state, spool, logs, pid files
#                    (default: $DIVE_SLURM_DIR or /tmp/open_clip_dive-slurm)
#   --nodes N        nodes node1..nodeN, each its own slurmd on this machine (default: $DIVE_SLURM_NODES or 2), so
#                    that `sbatch --nodes=2` gives a real multi-node srun
#   --cpus N         CPUs each node advertises (default: max(nproc, 2); more than the machine has is allowed)
#   --no-install     fail instead of running apt-get when a binary is missing
# environment: PYTHON (default python3) finds the free ports.
#
# Nothing outside DIR is written except by apt-get: the cluster uses its own munged (own key and socket, via
# AuthInfo=socket=...), free TCP ports chosen at `up`, and SLURM_CONF instead of /etc/slurm/slurm.conf, so it
# does not touch a system SLURM or munge.  Nodes: node1..nodeN (slurmd -N nodeK), NodeAddr=127.0.0.1, one port
# each; partition `debug`.
set -euo pipefail

CMD="${1:-}"
[ $# -gt 0 ] && shift
STATE="${DIVE_SLURM_DIR:-/tmp/open_clip_dive-slurm}"
NODES="${DIVE_SLURM_NODES:-2}"
CPUS=""
INSTALL=1
while [ $# -gt 0 ]; do
    case "$1" in
        --state-dir) STATE="$2"; shift 2 ;;
        --nodes) NODES="$2"; shift 2 ;;
        --cpus) CPUS="$2"; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        *) echo "slurm_cluster.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || { echo "slurm_cluster.sh: --nodes must be a positive integer" >&2; exit 2; }
case "$STATE" in /*) ;; *) STATE="$(pwd)/$STATE" ;; esac
CONF="$STATE/slurm.conf"
MUNGE_DIR="$STATE/munge"
SOCKET="$MUNGE_DIR/munge.socket"

log() { echo "[slurm_cluster] $*" >&2; }
die() { echo "[slurm_cluster] error: $*" >&2; exit "${2:-1}"; }

pid_alive() {  # pid_alive FILE -> 0 when the PID in FILE is a live process
    local f="$1" pid
    [ -s "$f" ] || return 1
    pid="$(tr -dc 0-9 < "$f")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

stop_pid() {  # stop_pid FILE NAME
    local f="$1" name="$2" pid i
    if ! pid_alive "$f"; then rm -f "$f"; return 0; fi
    pid="$(tr -dc 0-9 < "$f")"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name ($pid) did not stop on TERM; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
    log "stopped $name ($pid)"
}

free_port() {
    "${PYTHON:-python3}" - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

node_names() {  # the nodes in DIR/slurm.conf (those of the cluster as it was written, not --nodes)
    [ -f "$CONF" ] || return 0
    sed -n 's/^NodeName=\([^ ]*\) .*/\1/p' "$CONF"
}

ensure_installed() {
    local missing=0 b
    for b in munged slurmctld slurmd sbatch srun scontrol sinfo; do
        command -v "$b" >/dev/null || missing=1
    done
    [ "$missing" = 0 ] && return 0
    [ "$INSTALL" = 1 ] || die "slurm/munge binaries missing and --no-install given (apt-get install slurmctld slurmd slurm-client munge)" 2
    [ "$(id -u)" = 0 ] || die "slurm/munge are not installed and installing them needs root" 2
    log "installing slurmctld slurmd slurm-client munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || true
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >&2 \
        || die "apt-get install slurmctld slurmd slurm-client munge failed" 2
}

write_conf() {
    local cpus="$1" mem ctld_port port used k
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 / NODES ))
    ctld_port="$(free_port)"
    used=" $ctld_port "
    cat > "$CONF" <<EOF
# Written by scripts/slurm_cluster.sh: a test cluster of $NODES node(s), all on this machine.
ClusterName=dive
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
ReturnToService=2
SlurmdParameters=config_overrides
JobRequeue=1
KillWait=10
MinJobAge=600
MessageTimeout=30
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool-%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=$ctld_port
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.txt
EOF
    for k in $(seq 1 "$NODES"); do
        port="$(free_port)"
        while [[ "$used" == *" $port "* ]]; do port="$(free_port)"; done
        used="$used$port "
        echo "NodeName=node$k NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$port CPUs=$cpus RealMemory=$mem State=UNKNOWN" >> "$CONF"
        mkdir -p "$STATE/spool-node$k"
    done
    echo "PartitionName=debug Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP" >> "$CONF"
}

start_munge() {
    if pid_alive "$MUNGE_DIR/munged.pid" && [ -S "$SOCKET" ]; then return 0; fi
    mkdir -p "$MUNGE_DIR"
    chmod 755 "$STATE" "$MUNGE_DIR"   # munged insists that the socket's directory is world-executable
    if [ ! -s "$MUNGE_DIR/munge.key" ]; then
        head -c 1024 /dev/urandom > "$MUNGE_DIR/munge.key"
        chmod 400 "$MUNGE_DIR/munge.key"
    fi
    rm -f "$SOCKET" "$SOCKET.lock"
    munged --force --socket="$SOCKET" --key-file="$MUNGE_DIR/munge.key" --pid-file="$MUNGE_DIR/munged.pid" \
        --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
        || die "munged failed to start; see $MUNGE_DIR/munged.log"
    local i
    for i in $(seq 1 50); do
        munge -S "$SOCKET" -n 2>/dev/null | unmunge -S "$SOCKET" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munged started but does not answer on $SOCKET; see $MUNGE_DIR/munged.log"
}

daemons_alive() {
    local n any=0
    pid_alive "$STATE/slurmctld.pid" && pid_alive "$MUNGE_DIR/munged.pid" || return 1
    for n in $(node_names); do
        pid_alive "$STATE/slurmd-$n.pid" || return 1
        any=1
    done
    [ "$any" = 1 ]
}

stop_slurmds() {
    local f
    for f in "$STATE"/slurmd-*.pid; do
        [ -e "$f" ] || continue
        stop_pid "$f" "slurmd $(basename "$f" .pid | cut -d- -f2-)"
    done
}

wait_idle() {  # every node idle (or running jobs)
    local i n state ready
    for i in $(seq 1 150); do
        ready=1
        for n in $(node_names); do
            state="$(sinfo -h -n "$n" -o %T 2>/dev/null || true)"
            case "$state" in
                idle*|mixed*|allocated*) ;;
                drain*|down*) ready=0; scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true ;;
                *) ready=0 ;;
            esac
        done
        [ "$ready" = 1 ] && return 0
        sleep 0.2
    done
    die "the nodes did not become idle within 30 s ($n: '${state:-?}'); see $STATE/slurmctld.log and $STATE/slurmd-*.log"
}

cmd_up() {
    [ "$(id -u)" = 0 ] || die "this test cluster runs its daemons as root; run as root" 2
    ensure_installed
    mkdir -p "$STATE/state"
    export SLURM_CONF="$CONF"
    if daemons_alive; then
        log "already running from $STATE"
        wait_idle
        return 0
    fi
    # A partial cluster (e.g. one daemon died) is restarted from scratch.
    stop_slurmds
    stop_pid "$STATE/slurmctld.pid" slurmctld
    if [ -z "$CPUS" ]; then CPUS="$(nproc)"; [ "$CPUS" -lt 2 ] && CPUS=2; fi
    write_conf "$CPUS"
    start_munge
    # -c: start with a clean state (no jobs left from an earlier run of this state dir).
    slurmctld -c -f "$CONF" || die "slurmctld failed to start; see $STATE/slurmctld.log"
    local n
    for n in $(node_names); do
        slurmd -N "$n" -f "$CONF" || die "slurmd -N $n failed to start; see $STATE/slurmd-$n.log"
    done
    wait_idle
    log "up: SLURM_CONF=$CONF; nodes: $(node_names | tr '\n' ' ')(slurmctld $(cat "$STATE/slurmctld.pid"), munged $(cat "$MUNGE_DIR/munged.pid"))"
}

cmd_down() {
    if [ -f "$CONF" ]; then
        export SLURM_CONF="$CONF"
        # Cancel what is still queued or running, so that no job processes are left behind.
        if pid_alive "$STATE/slurmctld.pid"; then
            timeout 10 scancel --full --quiet --user=root >/dev/null 2>&1 || true
            local i
            for i in $(seq 1 60); do  # slurmstepd outlives slurmd: let the jobs end before the daemons go
                [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
                sleep 0.5
            done
        fi
    fi
    stop_slurmds
    stop_pid "$STATE/slurmctld.pid" slurmctld
    stop_pid "$MUNGE_DIR/munged.pid" munged
}

cmd_status() {
    local ok=0 f n files=("$STATE/slurmctld.pid" "$MUNGE_DIR/munged.pid")
    for n in $(node_names); do files+=("$STATE/slurmd-$n.pid"); done
    [ -f "$CONF" ] || { echo "no cluster in $STATE"; return 1; }
    for f in "${files[@]}"; do
        if pid_alive "$f"; then echo "$(basename "$f" .pid): $(tr -dc 0-9 < "$f")"; else echo "$(basename "$f" .pid): not running"; ok=1; fi
    done
    if [ "$ok" = 0 ]; then SLURM_CONF="$CONF" sinfo || ok=1; fi
    return "$ok"
}

case "$CMD" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
