#!/usr/bin/env bash
# Stop the single-node SLURM started by tests/cluster/start_slurm.sh.
#
# Usage: tests/cluster/stop_slurm.sh [--keep-munge]
#
# Cancels every job (the linuxproc proctrack would let job processes outlive slurmd), then
# stops slurmd, slurmctld and munged -- only the daemons whose pid start_slurm.sh recorded in
# RUN_DIR/<daemon>.ours, by that pid, never by name. Packages, config, key, logs and spool stay.
# Idempotent: with nothing running it does nothing.
set -uo pipefail

RUN="${WSISEG_SLURM_RUN:-/run/wsiseg-slurm}"
keep_munge=0
[ "${1:-}" = "--keep-munge" ] && keep_munge=1

say() { echo "stop_slurm: $*" >&2; }

alive() {
  local pid="$1" comm="$2" state
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [ "$state" != "Z" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}
pid_of_file() { [ -r "$1" ] && tr -dc '0-9' < "$1" || true; }

# 1. Cancel every job while our slurmctld still answers.
if [ -e "$RUN/slurmctld.ours" ] && alive "$(pid_of_file "$RUN/slurmctld.ours")" slurmctld \
   && scontrol ping 2>/dev/null | grep -q "is UP"; then
  jobs="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 300); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi

# 2. Stop our daemons by pid: SIGTERM, wait up to 20 s, then SIGKILL that one pid.
stop_one() {
  local name="$1" file="$RUN/$1.ours" pid
  [ -e "$file" ] || return 0
  pid="$(pid_of_file "$file")"
  if alive "$pid" "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do alive "$pid" "$name" || break; sleep 0.1; done
    if alive "$pid" "$name"; then say "$name ($pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$file"
}
stop_one slurmd
stop_one slurmctld
[ "$keep_munge" -eq 1 ] || stop_one munged

left="$(ps -eo pid=,stat=,comm= | awk '$2 !~ /^Z/ && $3 ~ /^(slurmctld|slurmd|slurmstepd|munged)$/ {print $3 "(" $1 ")"}' | tr '\n' ' ')"
[ -z "${left// /}" ] || say "still running (not started by start_slurm.sh, or kept): $left"
exit 0
