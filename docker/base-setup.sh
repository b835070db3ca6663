#!/bin/sh
# Base-stage setup for docker/Dockerfile (runs during `docker build` only).
#
# 1. Make sure the base image has Python >= 3.11 with venv and pip (python:3.11-slim
#    images have it, as does docker/make_base_image.sh's image; other Debian/Ubuntu
#    bases such as nvidia/cuda get python3 + python3-venv from apt).
# 2. Add the unprivileged user the image runs as (uid/gid 1000, unless the base
#    already has a user with uid 1000, e.g. `ubuntu` on Ubuntu 24.04: then that one),
#    and /data/slides (read-only mount point) and /data/out (writable by that user).
#
# An extra CA bundle for the build (BuildKit secret `cacert`, see docs/docker.md) is
# used for apt over https; it is never copied into the image.
set -eu

has_python() {
    probe=$(mktemp -d)
    ok=1
    if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null &&
        python3 -m venv "$probe/venv" >/dev/null 2>&1; then
        ok=0
    fi
    rm -rf "$probe"
    return $ok
}

if ! has_python; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "base image lacks Python >= 3.11 with venv, and has no apt-get to install it" >&2
        exit 1
    fi
    ca=""
    if [ -s /run/secrets/cacert ]; then ca="-o Acquire::https::CAInfo=/run/secrets/cacert"; fi
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get $ca update
    # shellcheck disable=SC2086
    apt-get $ca install -y --no-install-recommends python3 python3-venv ca-certificates
    apt-get clean
    rm -rf /var/lib/apt/lists/*
    if ! has_python; then
        echo "python3 from apt is older than 3.11 or has no venv: use another base image" >&2
        python3 --version >&2 || true
        exit 1
    fi
fi
python3 --version

if ! getent passwd 1000 >/dev/null; then
    getent group 1000 >/dev/null || groupadd --gid 1000 wsiseg
    useradd --uid 1000 --gid 1000 --create-home --home-dir /home/wsiseg \
        --shell /usr/sbin/nologin wsiseg
fi
mkdir -p /data/slides /data/out
chown 1000:"$(id -g 1000)" /data/out
