#!/usr/bin/env bash
# Download, here, the wheels bench/gpu_check.sh needs on the GPU machine (Python 3.12, x86-64, nothing
# reachable there): polars and its runtime at the versions pinned in requirements.lock, into .whl/
# (git-ignored; ~55 MB; the device tool's carry takes 64 MiB with the working tree).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pins=$(grep -E '^polars(-runtime-32)?==' requirements.lock)
mkdir -p .whl
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pins
ls -l .whl
