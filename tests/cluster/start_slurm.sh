#!/usr/bin/env bash
# Start a single-node SLURM (munged + slurmctld + slurmd) on 127.0.0.1 for the `slurm` tests.
#
# Usage: sudo tests/cluster/start_slurm.sh      (as root; Debian/Ubuntu)
#
# Idempotent: when everything is already up it does nothing. It installs the Debian packages
# slurm-wlm and munge when missing (apt-get update first), writes /etc/slurm/slurm.conf from
# tests/cluster/slurm.conf.in (refusing to replace a slurm.conf it did not write unless
# WSISEG_SLURM_FORCE=1), starts the daemons without systemd and waits until the node is idle.
# Every daemon it starts gets RUN_DIR/<daemon>.ours holding its pid; tests/cluster/stop_slurm.sh
# stops exactly those pids. Daemons that were already running are left alone.
#
# Environment: WSISEG_SLURM_RUN (default /run/wsiseg-slurm), WSISEG_SLURM_SPOOL
# (/var/spool/wsiseg-slurm), WSISEG_SLURM_LOG (/var/log/wsiseg-slurm).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
RUN="${WSISEG_SLURM_RUN:-/run/wsiseg-slurm}"
SPOOL="${WSISEG_SLURM_SPOOL:-/var/spool/wsiseg-slurm}"
LOG="${WSISEG_SLURM_LOG:-/var/log/wsiseg-slurm}"
CONF=/etc/slurm/slurm.conf
MARKER="# wsiseg-ci: single-node SLURM on localhost"

say() { echo "start_slurm: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

# A pid is alive when /proc/<pid> exists, is not a zombie (PID 1 here reaps lazily) and runs $2.
alive() {
  local pid="$1" comm="$2" state
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [ "$state" != "Z" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}
pid_of_file() { [ -r "$1" ] && tr -dc '0-9' < "$1" || true; }

# 1. Packages -------------------------------------------------------------------------------
missing=0
for p in munge slurmctld slurmd slurm-client; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing=1
done
if [ "$missing" -eq 1 ]; then
  command -v apt-get >/dev/null || die "slurm-wlm/munge missing and apt-get not found"
  say "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends slurm-wlm munge >&2
fi

mkdir -p "$RUN" "$SPOOL/ctld" "$SPOOL/d" "$LOG"

# 2. munge ----------------------------------------------------------------------------------
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
if [ ! -s /etc/munge/munge.key ]; then
  say "creating the munge key"
  runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
fi
if ! alive "$(pid_of_file /run/munge/munged.pid)" munged; then
  runuser -u munge -- /usr/sbin/munged 2>/dev/null || runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do alive "$(pid_of_file /run/munge/munged.pid)" munged && break; sleep 0.1; done
  alive "$(pid_of_file /run/munge/munged.pid)" munged || die "munged did not start"
  echo "$(pid_of_file /run/munge/munged.pid)" > "$RUN/munged.ours"
elif [ ! -e "$RUN/munged.ours" ]; then
  say "munged was already running (not started here; stop_slurm.sh leaves it alone)"
fi
munge -n | unmunge >/dev/null || die "munge round trip failed (munge -n | unmunge)"

# 3. slurm.conf -----------------------------------------------------------------------------
NODE="$(hostname -s)"
HW="$(slurmd -C | head -1)"
HARDWARE="$(tr ' ' '\n' <<<"$HW" | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')"
HW_MEM="$(tr ' ' '\n' <<<"$HW" | sed -n 's/^RealMemory=//p')"
SYS_MEM=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
MEMORY=$(( (HW_MEM < SYS_MEM ? HW_MEM : SYS_MEM) - 1024 ))
[ "$MEMORY" -gt 1024 ] || die "too little memory for a SLURM node ($MEMORY MiB)"
NEW="$(sed -e "s|@NODE@|$NODE|g" -e "s|@HARDWARE@|${HARDWARE% }|" -e "s|@MEMORY@|$MEMORY|" \
           -e "s|@SPOOL@|$SPOOL|g" -e "s|@RUN@|$RUN|g" -e "s|@LOG@|$LOG|g" "$HERE/slurm.conf.in")"
changed=0
if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF" && [ "${WSISEG_SLURM_FORCE:-0}" != 1 ]; then
  die "$CONF exists and was not written by this script; set WSISEG_SLURM_FORCE=1 to replace it"
fi
if [ ! -e "$CONF" ] || [ "$(cat "$CONF")" != "$NEW" ]; then
  mkdir -p /etc/slurm
  printf '%s\n' "$NEW" > "$CONF.tmp" && mv "$CONF.tmp" "$CONF"
  changed=1
fi

ctld_pid() { pid_of_file "$RUN/slurmctld.pid"; }
slurmd_pid() { pid_of_file "$RUN/slurmd.pid"; }
if [ "$changed" -eq 1 ] && { alive "$(ctld_pid)" slurmctld || alive "$(slurmd_pid)" slurmd; }; then
  say "slurm.conf changed: restarting the daemons"
  "$HERE/stop_slurm.sh" --keep-munge
fi

# 4. slurmctld (cold start: purge old job records, reset DRAIN/INVALID) ----------------------
if ! alive "$(ctld_pid)" slurmctld; then
  slurmctld -c
  for _ in $(seq 100); do alive "$(ctld_pid)" slurmctld && break; sleep 0.1; done
  alive "$(ctld_pid)" slurmctld || die "slurmctld did not start (see $LOG/slurmctld.log)"
  echo "$(ctld_pid)" > "$RUN/slurmctld.ours"
fi
for _ in $(seq 150); do scontrol ping 2>/dev/null | grep -q "is UP" && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q "is UP" || die "slurmctld does not answer (see $LOG/slurmctld.log)"

# 5. slurmd ---------------------------------------------------------------------------------
if ! alive "$(slurmd_pid)" slurmd; then
  slurmd
  for _ in $(seq 100); do alive "$(slurmd_pid)" slurmd && break; sleep 0.1; done
  alive "$(slurmd_pid)" slurmd || die "slurmd did not start (see $LOG/slurmd.log)"
  echo "$(slurmd_pid)" > "$RUN/slurmd.ours"
fi

# 6. Wait until the node is idle ------------------------------------------------------------
resumed=0
for _ in $(seq 300); do
  state="$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1)"
  case "$state" in
    idle|mixed|allocated) break ;;
    drain*|down*|inval*|fail*)
      reason="$(sinfo -h -N -n "$NODE" -o %E 2>/dev/null | head -1)"
      case "$reason" in Low\ RealMemory*|Low\ CPUs*|Low\ socket*) die "node $NODE is $state: $reason" ;; esac
      if [ "$resumed" -eq 0 ]; then scontrol update nodename="$NODE" state=resume 2>/dev/null || true; resumed=1; fi ;;
  esac
  sleep 0.1
done
case "$state" in
  idle|mixed|allocated) say "SLURM up: node $NODE $state, partition debug (logs in $LOG)" ;;
  *) die "node $NODE did not become idle (state: ${state:-none}; see $LOG)" ;;
esac
