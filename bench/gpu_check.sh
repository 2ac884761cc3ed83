#!/usr/bin/env bash
# The GPU check of issue 13 in one command (bench/gpu_check.py says what it measures), made to run on the
# lent GPU machine as it is: Python 3.12 with torch 2.11 (CUDA 13), numpy, scipy, pyarrow, rich, matplotlib,
# and nothing reachable. The stages also need polars, which is not there: run bench/gpu_wheels.sh here first
# (it downloads the pinned polars wheels into .whl/, ~55 MB) and carry .whl; this script installs them into
# a temporary folder there. The project itself is used from the working tree (no install).
#
#   on the GPU machine (device tool: carry [".whl"], timeout_s 590):
#       bash bench/gpu_check.sh                     # full scale, 2 epochs per run, phases start within 480 s
#   its dry run on a CPU (how it is tested; about a minute):
#       bash bench/gpu_check.sh --device cpu --scale 0.001 --epochs 2 --out /tmp/gpu-check-dry
#
# Results: $OUT/gpu_check.json (every phase as it ends) and $OUT/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python   # here: the project's venv
OUT=${OUT:-bench/out/gpu-check}
mkdir -p "$OUT"
if ! "$PY" -c "import polars" 2>/dev/null; then
    if ! ls .whl/polars-*.whl >/dev/null 2>&1; then
        echo "error: polars is not installed and .whl/ holds no polars wheel: run bench/gpu_wheels.sh and carry .whl" >&2
        exit 2
    fi
    SITE=$(mktemp -d /tmp/recsys-site.XXXXXX)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RECSYS_PROGRESS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/gpu_check.log" || true
OUT="$OUT" "$PY" bench/gpu_check.py "$@" 2>&1 | tee -a "$OUT/gpu_check.log"
