#!/usr/bin/env bash
# Start a one-machine Slurm cluster WITH accounting (munged, MariaDB, slurmdbd,
# slurmctld, slurmd), every file under STATE_DIR, every daemon's PID in
# STATE_DIR/pids so that stop.sh can end exactly these processes.
#
#   cluster/slurm-local/start.sh [STATE_DIR]        (default /tmp/scaling-slurm)
#   eval "$(cluster/slurm-local/start.sh)"          (picks up SLURM_CONF when needed)
#
# Progress goes to stderr. stdout carries only `export SLURM_CONF=...`, printed
# when the configuration could not be linked from /etc/slurm/slurm.conf (the
# path every Slurm command reads by default). Calling it again while the cluster
# runs is a no-op. Environment knobs (see README.md):
#   SLURM_MAX_ARRAY_SIZE   MaxArraySize (default 1001: array indices 0..1000)
#   SLURM_LOCAL_CLUSTER    ClusterName (default scaling)
#   SLURM_LOCAL_DB_PORT    MariaDB TCP port on 127.0.0.1 (default 16033)
#   SLURM_LOCAL_ETC        1 (default): link /etc/slurm/slurm.conf; 0: never touch /etc
#   SLURM_LOCAL_TIMEOUT    seconds to wait for each daemon (default 60)
#   SLURM_LOCAL_GPUS       GPUs offered as gres gpu (default auto: the /dev/nvidiaN count)
#   SLURM_LOCAL_CRED_EXPIRE  AuthInfo cred_expire, also the delay before a requeued
#                          job may start again (default 10; Slurm's default is 120)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="$(realpath -m "${1:-/tmp/scaling-slurm}")"
MAX_ARRAY_SIZE="${SLURM_MAX_ARRAY_SIZE:-1001}"
CLUSTER="${SLURM_LOCAL_CLUSTER:-scaling}"
DB_PORT="${SLURM_LOCAL_DB_PORT:-16033}"
WRITE_ETC="${SLURM_LOCAL_ETC:-1}"
TIMEOUT="${SLURM_LOCAL_TIMEOUT:-60}"
CRED_EXPIRE="${SLURM_LOCAL_CRED_EXPIRE:-10}"
GPUS="${SLURM_LOCAL_GPUS:-auto}"
ETC_CONF=/etc/slurm/slurm.conf

ETC="$STATE_DIR/etc"
LOG="$STATE_DIR/log"
RUN="$STATE_DIR/run"
DB="$STATE_DIR/mysql"
PIDS="$STATE_DIR/pids"
CONF="$ETC/slurm.conf"
DB_SOCKET="$RUN/mysqld.sock"
HOST="$(hostname -s)"
export SLURM_CONF="$CONF"   # for this script's own sinfo/sacctmgr/slurmdbd calls

say() { echo "slurm-local: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# --- preconditions -----------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (munged runs as user munge, the Slurm daemons as root)"
for cmd in munged munge unmunge mariadbd mariadb mariadb-install-db slurmdbd slurmctld slurmd sinfo sacct sacctmgr setpriv; do
    command -v "$cmd" >/dev/null || die "$cmd not found: run $HERE/install.sh first"
done
[[ "$MAX_ARRAY_SIZE" =~ ^[0-9]+$ ]] || die "SLURM_MAX_ARRAY_SIZE must be an integer, got '$MAX_ARRAY_SIZE'"
[[ "$STATE_DIR" =~ [[:space:]\"\'#] ]] && die "STATE_DIR must not contain spaces, quotes or '#' (slurm.conf cannot quote paths): '$STATE_DIR'"
[[ "$CLUSTER" =~ ^[a-z0-9_]+$ ]] || die "SLURM_LOCAL_CLUSTER must be lowercase letters, digits, _"
if [ "$GPUS" = auto ]; then
    GPUS="$(find /dev -maxdepth 1 -regex '/dev/nvidia[0-9]+' 2>/dev/null | wc -l)"
fi
[[ "$GPUS" =~ ^[0-9]+$ ]] || die "SLURM_LOCAL_GPUS must be an integer or auto, got '$GPUS'"

# A zombie counts as gone: it is dead, waiting for a parent (or init) to reap it.
alive() {
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 1
    [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

if [ -s "$PIDS" ]; then
    all_alive=1
    while read -r _ pid; do alive "$pid" || all_alive=0; done <"$PIDS"
    if [ "$all_alive" = 1 ] && sinfo -h >/dev/null 2>&1; then
        say "already running from $STATE_DIR"
        [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$CONF" ] || echo "export SLURM_CONF=$CONF"
        exit 0
    fi
    say "stale or partial cluster in $STATE_DIR: stopping it first"
    "$HERE/stop.sh" "$STATE_DIR" >&2
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 6817 6818 6819 "$DB_PORT"; do
    port_busy "$port" && die "port $port on 127.0.0.1 is in use (another slurm-local STATE_DIR? stop it with stop.sh; or set SLURM_LOCAL_DB_PORT)"
done

# Everything here is read by root daemons: refuse a folder someone else prepared.
if [ -e "$STATE_DIR" ] && [ "$(stat -c %u "$STATE_DIR")" != 0 ]; then
    die "$STATE_DIR exists and is not owned by root: choose another STATE_DIR"
fi
mkdir -p "$ETC" "$LOG" "$RUN" "$STATE_DIR/state" "$STATE_DIR/spool"
touch "$STATE_DIR/.slurm-local"   # marks the folder as ours (stop.sh, /etc link)
: >"$PIDS"

CURRENT=setup   # the daemon being started, for the error report
on_error() {
    say "start failed while starting $CURRENT; all logs are in $LOG. Last lines of $CURRENT's:"
    tail -n 25 "$LOG/$CURRENT.out" >&2 2>/dev/null || true
    "$HERE/stop.sh" "$STATE_DIR" >&2 || true
}
trap on_error ERR

# Run a daemon in the foreground of its own session, in the background of this
# script. setsid execs (this shell's background children are never group
# leaders), so $! is the daemon's own PID.
launch() {
    local name="$1"; shift
    CURRENT="$name"
    setsid "$@" </dev/null >"$LOG/$name.out" 2>&1 &
    echo "$name $!" >>"$PIDS"
}

# wait_for WHAT PID COMMAND...: poll COMMAND until it succeeds; fail if PID dies.
wait_for() {
    local what="$1" pid="$2"; shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        [ -z "$pid" ] || alive "$pid" || { say "$what exited"; return 1; }
        [ "$SECONDS" -lt "$deadline" ] || { say "timed out waiting for $what"; return 1; }
        sleep 0.2
    done
}
last_pid() { tail -n 1 "$PIDS" | cut -d' ' -f2; }

t0=$(date +%s%N)
since_start() { echo "$((($(date +%s%N) - t0) / 1000000)) ms"; }

# --- munge -------------------------------------------------------------------
munge_ok() { munge -n </dev/null | unmunge >/dev/null; }
if munge_ok 2>/dev/null; then
    say "munged already running: using it"
else
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 755 /run/munge
    launch munged setpriv --reuid=munge --regid=munge --init-groups munged -F
    wait_for munged "$(last_pid)" munge_ok
    say "munged ready after $(since_start)"
fi

# --- MariaDB on a private data dir, TCP on 127.0.0.1 only ---------------------
if [ ! -d "$DB/mysql" ]; then
    say "initialising MariaDB in $DB"
    CURRENT=mariadb-install
    mariadb-install-db --no-defaults --datadir="$DB" --user=root \
        --auth-root-authentication-method=socket --skip-test-db --innodb-log-file-size=16M \
        >"$LOG/mariadb-install.out" 2>&1
fi
launch mariadbd mariadbd --no-defaults --datadir="$DB" --user=root --socket="$DB_SOCKET" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --pid-file="$RUN/mariadbd.pid" \
    --log-error="$LOG/mariadbd.log" --skip-name-resolve --innodb-lock-wait-timeout=900 \
    --innodb-log-file-size=16M
# shellcheck disable=SC2120  # called with arguments through wait_for
sql() { mariadb --no-defaults --socket="$DB_SOCKET" -u root "$@"; }
wait_for mariadbd "$(last_pid)" sql -e 'SELECT 1'
say "mariadbd ready after $(since_start)"

PASS_FILE="$ETC/db-password"
if [ ! -s "$PASS_FILE" ]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$PASS_FILE")
fi
DB_PASS="$(cat "$PASS_FILE")"
# shellcheck disable=SC2119
sql <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

# --- configuration -----------------------------------------------------------
CPUS="$(nproc)"
avail_mb=$(($(awk '/MemAvailable/ {print $2}' /proc/meminfo) / 1024))
REAL_MEMORY=$((avail_mb * 9 / 10))   # below what is free, or slurmd drains the node

# GPUs as a generic resource, so that --gpus-per-node works and jobs get
# CUDA_VISIBLE_DEVICES; gres.conf is read from slurm.conf's folder.
GRES_TYPES="" NODE_GRES=""
rm -f "$ETC/gres.conf"
if [ "$GPUS" -gt 0 ]; then
    GRES_TYPES="GresTypes=gpu" NODE_GRES="Gres=gpu:$GPUS"
    printf 'AutoDetect=off\nName=gpu File=/dev/nvidia[0-%d]\n' "$((GPUS - 1))" >"$ETC/gres.conf"
fi

(umask 077; cat >"$ETC/slurmdbd.conf" <<EOF
# Written by cluster/slurm-local/start.sh: accounting for the one-machine cluster.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
DebugLevel=info
EOF
)
chmod 600 "$ETC/slurmdbd.conf"

cat >"$CONF" <<EOF
# Written by cluster/slurm-local/start.sh: a one-machine Slurm for tests and trials.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default
# 120 s); short here so that requeue tests finish quickly.
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
# Schedule at submission, right after each job ends (the defaults wait up to 3 s)
# and every 2 s (a requeued job becomes eligible without an event to wake the
# scheduler: the default 60 s loop would leave it pending that long).
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# The node line below is authoritative (containers report odd topologies).
SlurmdParameters=config_overrides
# Lets submitit's preemption handling work: the job's processes get the signal.
SlurmctldParameters=preempt_send_user_signal
MaxArraySize=$MAX_ARRAY_SIZE
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
KillWait=5
InactiveLimit=0
MinJobAge=300
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
$GRES_TYPES
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$REAL_MEMORY $NODE_GRES State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

# --- slurmdbd and the cluster's registration ----------------------------------
launch slurmdbd slurmdbd -D
wait_for slurmdbd "$(last_pid)" sacctmgr -n list cluster
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >>"$LOG/sacctmgr.out"
fi
say "slurmdbd ready after $(since_start)"

# --- slurmctld, then slurmd ---------------------------------------------------
ctld_args=(-D -f "$CONF")
[ -e "$STATE_DIR/state/node_state" ] || ctld_args+=(-i)   # first start: no state yet
launch slurmctld slurmctld "${ctld_args[@]}"
wait_for slurmctld "$(last_pid)" scontrol ping
say "slurmctld ready after $(since_start)"
launch slurmd slurmd -D -f "$CONF"
slurmd_pid="$(last_pid)"

node_state() { sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n 1; }
node_ready() {
    case "$(node_state)" in
        idle|mixed|allocated) return 0 ;;
        down*|drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1; return 1 ;;
        *) return 1 ;;
    esac
}
wait_for "node $HOST to be idle" "$slurmd_pid" node_ready
wait_for "sacct" "" sacct -n -X -S now-1minutes

elapsed="$(since_start)"
trap - ERR

# --- make plain `sbatch` work: link /etc/slurm/slurm.conf when it is ours -----
linked=0
if [ "$WRITE_ETC" = 1 ]; then
    if [ ! -e "$ETC_CONF" ] && [ ! -L "$ETC_CONF" ] \
        || { [ -L "$ETC_CONF" ] && [ -e "$(dirname "$(dirname "$(readlink "$ETC_CONF")")")/.slurm-local" ]; } \
        || { [ -L "$ETC_CONF" ] && [ ! -e "$ETC_CONF" ]; }; then
        mkdir -p "$(dirname "$ETC_CONF")"
        ln -sfn "$CONF" "$ETC_CONF"
        linked=1
    else
        say "$ETC_CONF exists and is not ours: leaving it alone"
    fi
fi
say "cluster '$CLUSTER' up in $elapsed: node $HOST ($CPUS CPUs, $GPUS GPUs, ${REAL_MEMORY} MB), partition debug, MaxArraySize=$MAX_ARRAY_SIZE"
say "state, logs, PIDs: $STATE_DIR; stop with: $HERE/stop.sh $STATE_DIR"
if [ "$linked" = 1 ]; then
    say "$ETC_CONF -> $CONF (plain sinfo/sbatch work)"
else
    echo "export SLURM_CONF=$CONF"
fi
