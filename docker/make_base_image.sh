#!/usr/bin/env bash
# Make a Debian 12 base image with Python 3.11 from Debian packages alone, for machines
# that cannot pull from a container registry (debootstrap + docker import; needs root).
#
#   docker/make_base_image.sh [TAG] [MIRROR]
#
# TAG defaults to local/debian-python:bookworm; MIRROR to the Debian mirror apt uses
# here (else http://deb.debian.org/debian). The image has python3, python3-venv and
# ca-certificates, which is all docker/Dockerfile needs from its BASE_IMAGE:
#
#   DOCKER_BUILDKIT=1 docker build -f docker/Dockerfile --target cpu \
#       --build-arg BASE_IMAGE=local/debian-python:bookworm -t wsiseg:cpu .
#
# Environment: DOCKER (the docker CLI, default: docker), SUITE (default: bookworm).
set -euo pipefail

tag=${1:-local/debian-python:bookworm}
suite=${SUITE:-bookworm}
docker=${DOCKER:-docker}

mirror=${2:-}
if [ -z "$mirror" ]; then
    # The first http(s) URI of a Debian (not -security) source apt uses on this machine.
    mirror=$(grep -hoE '(https?://[^ ]+/debian)/?( |$)' \
        /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
        head -n 1 | tr -d ' ' || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi
mirror=${mirror%/}
security=${mirror%/debian}/debian-security

if [ "$(id -u)" != 0 ]; then
    echo "make_base_image.sh: debootstrap needs root" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "make_base_image.sh: debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/wsiseg-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT

echo "debootstrap $suite from $mirror into $rootfs" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$mirror" >&2

# Trim what an image does not need and what debootstrap copied from this host.
rm -f "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/*
: > "$rootfs/etc/resolv.conf"
echo localhost > "$rootfs/etc/hostname"
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
SOURCES

tar -C "$rootfs" --numeric-owner -c . |
    "$docker" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$tag" >&2
echo "$tag"
