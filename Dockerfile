# One image for the Prefect server, the deploy step and the worker that runs the pipeline.
# Installs exactly what ./setup.sh installs (requirements.lock, then this project in editable mode).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    RECSYS_PROGRESS=0 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PATH=/app/.venv/bin:$PATH

WORKDIR /app

# Dependencies first (the slow layer), so code changes do not reinstall them.
COPY requirements.lock ./
RUN python -m venv .venv && .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock

COPY . .
RUN ./setup.sh && mkdir -p /app/data

VOLUME ["/app/data"]
CMD ["python", "flows/full.py", "--help"]
