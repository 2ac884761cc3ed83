# One image for the Prefect server, the deploy step and the worker that runs the pipeline.
# Installs exactly requirements.lock (the pipeline's run-time pins) and this project, as a non-root user.
#
#   docker build .                          # torch 2.13.0 CPU build (~200 MB)
#   docker build --build-arg TORCH=cuda .   # torch 2.13.0 CUDA build (GBs), for docker-compose.gpu.yml
#   docker build --build-arg EXTRAS=1 .     # + requirements-extras.lock: MLflow tracking (and the test tools)
FROM python:3.11-slim

# cpu: the CPU build of the pinned torch, from PyTorch's CPU wheel index (TORCH_CPU_INDEX);
# cuda: the pinned torch as published on the default index, which for Linux x86_64 is the CUDA build.
ARG TORCH=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    RECSYS_PROGRESS=0 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    PATH=/app/.venv/bin:$PATH

WORKDIR /app

# Dependencies first (the slow layer), so code changes do not reinstall them.
COPY requirements.lock requirements-extras.lock ./
RUN set -eu; \
    case "$TORCH" in \
        cpu) index="--extra-index-url $TORCH_CPU_INDEX" ;; \
        cuda) index="" ;; \
        *) echo "TORCH must be cpu or cuda, not $TORCH" >&2; exit 2 ;; \
    esac; \
    lock=requirements.lock; [ "$EXTRAS" = 1 ] && lock=requirements-extras.lock; \
    python -m venv .venv; \
    .venv/bin/python -m pip install -q --disable-pip-version-check $index -r "$lock"

COPY . .
RUN .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e . \
    && useradd --create-home --uid 10001 recsys \
    && mkdir -p /app/data/raw/netflix /app/prefect-results \
    && chown -R recsys:recsys /app/data /app/prefect-results

# Named volumes start as copies of these folders (owner included), so the non-root user can write the data
# and results; data/raw/netflix is the mount point of the read-only raw data (docker-compose.yml).
USER recsys
VOLUME ["/app/data", "/app/prefect-results"]
CMD ["python", "flows/full.py", "--help"]
