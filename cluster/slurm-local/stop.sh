#!/usr/bin/env bash
# Stop the one-machine Slurm started by start.sh: cancel its jobs, then end each
# daemon by the PID recorded in STATE_DIR/pids (never by name), newest first,
# SIGTERM then SIGKILL after a grace period. State and logs stay in STATE_DIR so
# that the next start.sh resumes from them; delete the folder to start afresh.
#
#   cluster/slurm-local/stop.sh [STATE_DIR]         (default /tmp/scaling-slurm)
set -euo pipefail

STATE_DIR="$(realpath -m "${1:-/tmp/scaling-slurm}")"
PIDS="$STATE_DIR/pids"
CONF="$STATE_DIR/etc/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
GRACE="${SLURM_LOCAL_STOP_GRACE:-20}"
export SLURM_CONF="$CONF"

say() { echo "slurm-local: $*" >&2; }
# A zombie counts as gone: it is dead, waiting for a parent (or init) to reap it.
alive() {
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 1
    [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

if [ ! -s "$PIDS" ]; then
    say "nothing to stop in $STATE_DIR (no pids file)"
    exit 0
fi

pid_of() { awk -v n="$1" '$1 == n {print $2}' "$PIDS" | tail -n 1; }

# The recorded PID is only ours if it still runs the program we started there
# (a PID can be reused after a reboot or a crash).
ours() {
    local name="$1" pid="$2" comm
    alive "$pid" || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [ "$comm" = "$name" ]
}

# Jobs first: slurmstepd and job processes outlive slurmd by design (so that a
# slurmd restart keeps jobs running), so they are cancelled while the
# controller still runs, and we wait for their steps to end.
ctld="$(pid_of slurmctld)"
if ours slurmctld "$ctld"; then
    jobs="$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)"
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        deadline=$((SECONDS + GRACE))
        while [ -n "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.5
        done
    fi
fi
# Each running step holds a socket in SlurmdSpoolDir; wait for them to go.
steps_left() { find "$STATE_DIR/spool" -maxdepth 1 -type s 2>/dev/null | grep -q .; }
deadline=$((SECONDS + GRACE))
while steps_left && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
if steps_left; then
    say "WARNING: job steps still running after ${GRACE}s:" \
        "$(find "$STATE_DIR/spool" -maxdepth 1 -type s -printf '%f ')"
fi

stop_one() {
    local name="$1" pid="$2"
    ours "$name" "$pid" || return 0
    local t0
    t0="$(date +%s%N)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + GRACE))
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if alive "$pid"; then
        say "$name ($pid) ignored SIGTERM for ${GRACE}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while alive "$pid"; do sleep 0.1; done
    fi
    say "stopped $name ($pid) in $((($(date +%s%N) - t0) / 1000000)) ms"
}

# Reverse start order: slurmd, slurmctld, slurmdbd, mariadbd, munged.
tac "$PIDS" | while read -r name pid; do stop_one "$name" "$pid"; done

# The daemons' parent (start.sh) is gone, so init reaps them: wait briefly for
# that, so that `ps` right after stop.sh shows none of them (not even as zombies).
deadline=$((SECONDS + 5))
while read -r _ pid; do
    while [ -e "/proc/$pid" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
done <"$PIDS"

if [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$CONF" ]; then
    rm -f "$ETC_CONF"
    say "removed $ETC_CONF link"
fi
rm -f "$PIDS"
say "stopped (state kept in $STATE_DIR)"
