#!/usr/bin/env bash
# Creates .venv with the exact pinned versions and installs this project into it (editable).
# requirements-extras.lock = requirements.lock (what the pipeline needs) + the tests and the optional MLflow
# tracking, all resolved together. Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-extras.lock
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
