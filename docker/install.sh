#!/bin/sh
# Build-stage installer for docker/Dockerfile (runs during `docker build` only):
# a virtual environment at /opt/wsiseg with wsiseg and the exact versions of
# constraints.txt, the same ones CI tests.
#
#   install.sh deps      # the dependencies in pyproject.toml (its own layer, so that a
#                        # change to the code does not download torch again)
#   install.sh package   # wsiseg itself from /tmp/src, without dependencies
#
# Build arguments arrive as environment variables (all optional):
#   TORCH_INDEX_URL      index for torch/torchvision, e.g. https://download.pytorch.org/whl/cpu
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST   read by pip itself
# Wheels in docker/wheels/ (bind-mounted at /tmp/wheels) are offered as --find-links.
# The BuildKit secret `cacert` (a CA bundle, /run/secrets/cacert) becomes PIP_CERT.
set -eu

step=${1:?usage: install.sh deps|package}
src=/tmp/src
venv=/opt/wsiseg

if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi
# A build argument that was declared but not given is empty: pip must not see it.
[ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL
[ -n "${PIP_EXTRA_INDEX_URL:-}" ] || unset PIP_EXTRA_INDEX_URL
[ -n "${PIP_TRUSTED_HOST:-}" ] || unset PIP_TRUSTED_HOST
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    PIP_PROGRESS_BAR=off

set -- -c "$src/constraints.txt"
if ls /tmp/wheels/*.whl >/dev/null 2>&1; then set -- "$@" --find-links /tmp/wheels; fi

case $step in
deps)
    python3 -m venv "$venv"
    "$venv/bin/python" -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
' "$src/pyproject.toml" > /tmp/requirements.txt
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        # torch==X in constraints.txt also matches local versions such as X+cpu.
        "$venv/bin/pip" install "$@" --index-url "$TORCH_INDEX_URL" torch torchvision
    fi
    "$venv/bin/pip" install "$@" -r /tmp/requirements.txt
    ;;
package)
    "$venv/bin/pip" install "$@" --no-deps "$src"
    "$venv/bin/pip" check
    "$venv/bin/wsiseg" --help >/dev/null
    "$venv/bin/pip" list --format=freeze | grep -iE '^(torch|torchvision|numpy|wsiseg)=='
    ;;
*)
    echo "install.sh: unknown step $step" >&2
    exit 2
    ;;
esac
