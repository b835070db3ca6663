#!/usr/bin/env bash
# Start / stop a Docker daemon by hand for the `docker` tests (tests/test_docker.py) on a
# machine without systemd, as .ci/run does. Needs root and Debian's docker.io.
#
#   docker/dockerd.sh start   # does nothing if a daemon already answers (that one is
#                             # left alone by `stop` too)
#   docker/dockerd.sh stop    # stops the dockerd that `start` started, by its recorded pid,
#                             # and removes what it leaves behind: its netns mount, the
#                             # docker0 link and nft tables it created, ip_forward, and
#                             # /var/lib/docker if there was none before. Idempotent.
#
# State and the daemon's log: $WSISEG_DOCKERD_RUN (default /run/wsiseg-dockerd).
set -uo pipefail

RUN=${WSISEG_DOCKERD_RUN:-/run/wsiseg-dockerd}
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || DOCKER=docker

say() { echo "dockerd.sh: $*" >&2; }
answers() { "$DOCKER" info >/dev/null 2>&1; }
ours_alive() {
    local pid
    pid=$(tr -dc '0-9' < "$RUN/dockerd.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]
}

start() {
    if answers; then
        say "a Docker daemon already answers; using it"
        return 0
    fi
    command -v dockerd >/dev/null || { say "dockerd not found (apt-get install docker.io)"; return 1; }
    mkdir -p "$RUN"
    # What exists before, so that `stop` removes only what this daemon created.
    [ -d /var/lib/docker ] || touch "$RUN/fresh-data-root"
    ip link show docker0 >/dev/null 2>&1 && touch "$RUN/had-docker0"
    if command -v nft >/dev/null; then nft list tables > "$RUN/nft-tables.before" 2>/dev/null; fi
    sysctl -n net.ipv4.ip_forward > "$RUN/ip_forward.before" 2>/dev/null
    dockerd > "$RUN/dockerd.log" 2>&1 &
    echo $! > "$RUN/dockerd.pid"
    for _ in $(seq 60); do
        if answers; then
            say "dockerd started (pid $(cat "$RUN/dockerd.pid"), log $RUN/dockerd.log)"
            return 0
        fi
        ours_alive || break
        sleep 1
    done
    say "dockerd did not come up; its log:"
    tail -n 30 "$RUN/dockerd.log" >&2
    stop
    return 1
}

stop() {
    [ -e "$RUN/dockerd.pid" ] || return 0
    if ours_alive; then
        local pid
        pid=$(tr -dc '0-9' < "$RUN/dockerd.pid")
        kill -TERM "$pid"
        for _ in $(seq 60); do ours_alive || break; sleep 0.5; done
        if ours_alive; then
            say "dockerd $pid ignored SIGTERM for 30 s; killing it"
            kill -KILL "$pid"
            sleep 1
        fi
    fi
    umount /var/run/docker/netns/default 2>/dev/null
    [ -e "$RUN/had-docker0" ] || ip link delete docker0 2>/dev/null
    if [ -e "$RUN/nft-tables.before" ]; then
        for table in "ip nat" "ip filter"; do
            grep -qx "table $table" "$RUN/nft-tables.before" || nft delete table $table 2>/dev/null
        done
    fi
    if [ -s "$RUN/ip_forward.before" ]; then
        sysctl -q -w net.ipv4.ip_forward="$(cat "$RUN/ip_forward.before")" 2>/dev/null
    fi
    if [ -e "$RUN/fresh-data-root" ]; then
        # Mounts a killed daemon may have left first, deepest first; never cross into one.
        awk '$2 ~ "^/var/(lib|run)/docker/" {print $2}' /proc/mounts | sort -r |
            while read -r m; do umount "$m" 2>/dev/null; done
        rm -rf --one-file-system /var/lib/docker /var/run/docker
    fi
    rm -f "$RUN/dockerd.pid" "$RUN/fresh-data-root" "$RUN/had-docker0" \
        "$RUN/nft-tables.before" "$RUN/ip_forward.before"
    say "dockerd stopped (log kept in $RUN/dockerd.log)"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
