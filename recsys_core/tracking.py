"""Log a finished run folder (stage 4) to MLflow: optional, ``pip install '.[mlflow]'``.

It reads only the files ``train`` wrote (``config.json``, ``history.json``, ``metrics.json``,
``learning_curve.png`` and the rest of the folder), so the training loop knows nothing of MLflow. One MLflow
run per run folder:

- parameters: every option of ``config.json`` (lists as JSON);
- metrics, per epoch (step = epoch): ``train_loss``, ``valid_<metric>``, ``lr``, ``epoch_seconds``;
- metrics, once: the model's ``test_*`` (and ``valid_*`` of the best weights as ``best_valid_*``), each
  baseline's as ``baseline.<name>.test_*`` / ``.valid_*``, and ``epochs_done``, ``best_epoch``,
  ``train_seconds``, ``evaluation_seconds``. ``@`` is not allowed in MLflow names: ``hr@10`` -> ``hr_at_10``;
- tags: ``recsys.key`` (the run's content key), ``recsys.model``, ``recsys.split``, ``recsys.run_dir``,
  ``recsys.beaten_by``;
- artifacts: ``learning_curve.png`` at the top, the whole folder under ``run/`` (but ``checkpoint.pt``,
  the resume state: ``model.pt`` holds the weights).

Idempotent: a run whose key is already logged (a finished MLflow run tagged with it) is not logged again,
so a cached pipeline run or a second call logs nothing. The key tag is set last: a log interrupted midway
leaves a run marked FAILED without it, and the next call logs the folder afresh.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Mapping

from recsys_core.errors import RecsysError
from recsys_core.runs import CONFIG, HISTORY, METRICS, RunFolder, RunMetrics

KEY_TAG = "recsys.key"
SKIPPED_FILES = {"checkpoint.pt"}
_BATCH = 100  # params per log_batch call (MLflow's limit)


def available() -> bool:
    try:
        import mlflow  # noqa: F401 (the optional extra [mlflow]: may not be installed)
    except ImportError:
        return False
    return True


def require() -> None:
    if not available():
        raise RecsysError("MLflow tracking is on (MLFLOW_TRACKING_URI or a tracking URI was given) but mlflow is "
                          "not installed: pip install '.[mlflow]' (or unset MLFLOW_TRACKING_URI)")


def metric_name(name: str) -> str:
    """An MLflow-valid metric name: ``hr@10`` -> ``hr_at_10``; anything else outside [/\\w.\\- :] -> ``_``."""
    return re.sub(r"[^/\w.\- :]", "_", name.replace("@", "_at_"))


def content_key(run_dir: Path) -> str:
    """sha256 of the files that define a finished run (its options, history and metrics)."""
    digest = hashlib.sha256()
    for name in ("config.json", "history.json", "metrics.json"):
        path = run_dir / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"") + b"\0")
    return digest.hexdigest()


def _numbers(part: Mapping | None, prefix: str) -> dict[str, float]:
    """Numeric metrics of one part (valid/test) of metrics.json; counts (n, n_*) left out."""
    out = {}
    for name, value in (part or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or name == "n" or name.startswith("n_"):
            continue
        if math.isfinite(value):
            out[metric_name(prefix + name)] = float(value)
    return out


def run_metrics(metrics: RunMetrics) -> dict[str, float]:
    """The once-logged metrics of a metrics.json (model, baselines, training summary)."""
    out = {**_numbers(metrics.test, "test_"), **_numbers(metrics.valid, "best_valid_")}
    for name, baseline in metrics.baselines.items():
        out.update(_numbers(baseline.test, f"baseline.{name}.test_"))
        out.update(_numbers(baseline.valid, f"baseline.{name}.valid_"))
    training = metrics.training
    out.update(_numbers({k: training.get(k) for k in ("epochs_done", "best_epoch", "train_seconds")}, ""))
    out.update(_numbers({"evaluation_seconds": metrics.other.get("evaluation_seconds")}, ""))
    return out


def epoch_metrics(history: dict) -> list[tuple[str, float, int]]:
    """(name, value, epoch) of every per-epoch series of a history.json."""
    valid_name = metric_name("valid_" + str(history.get("valid_metric") or "metric"))
    series = {"train_loss": "train_loss", "valid": valid_name, "lr": "lr", "seconds": "epoch_seconds"}
    rows = []
    for i, epoch in enumerate(history.get("epoch", [])):
        for column, name in series.items():
            values = history.get(column) or []
            value = values[i] if i < len(values) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                rows.append((name, float(value), int(epoch)))
    return rows


def params(config: dict) -> dict[str, str]:
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in sorted(config.items())}


def log_run(run_dir, experiment: str, *, key: str | None = None, tracking_uri: str | None = None,
            run_name: str | None = None, tags: dict[str, str] | None = None) -> tuple[str, bool]:
    """Log the finished run folder ``run_dir`` as one MLflow run of ``experiment`` (created if missing).

    ``key`` identifies the run's content (default: a hash of its config, history and metrics); a finished
    MLflow run with that key makes this a no-op. Returns (MLflow run id, whether it was logged now).
    """
    require()
    from mlflow.entities import Metric, Param, RunTag  # the optional extra [mlflow], checked just above
    from mlflow.tracking import MlflowClient

    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if not folder.file(METRICS).is_file():
        raise RecsysError(f"{run_dir} holds no metrics.json: only a finished run folder can be logged")
    key = key or content_key(run_dir)
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    logged = client.search_runs([experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}' and status = 'FINISHED'",
                                max_results=1)
    if logged:
        return logged[0].info.run_id, False

    config = folder.config().to_json() if folder.file(CONFIG).exists() else {}
    metrics = folder.metrics()
    history = json.loads(folder.file(HISTORY).read_text()) if folder.file(HISTORY).exists() else {}
    model = str(metrics.model or config.get("model") or "model")
    run_tags = {"recsys.model": model, "recsys.split": str(metrics.split),
                "recsys.run_dir": str(run_dir.resolve()),
                "recsys.beaten_by": ", ".join(metrics.beaten_by) or "none", **(tags or {})}
    run = client.create_run(experiment_id, run_name=run_name or model, tags=run_tags)
    run_id = run.info.run_id
    try:
        stamp = run.info.start_time
        values = [Param(k, v) for k, v in params(config).items()]
        for i in range(0, len(values), _BATCH):
            client.log_batch(run_id, params=values[i:i + _BATCH])
        series = [Metric(name, value, stamp, step) for name, value, step in epoch_metrics(history)]
        series += [Metric(name, value, stamp, 0) for name, value in run_metrics(metrics).items()]
        for i in range(0, len(series), 1000):
            client.log_batch(run_id, metrics=series[i:i + 1000])
        if (run_dir / "learning_curve.png").is_file():
            client.log_artifact(run_id, str(run_dir / "learning_curve.png"))
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(run_dir)
            if rel.name in SKIPPED_FILES or rel.name.startswith("."):
                continue
            client.log_artifact(run_id, str(path), "/".join(("run", *rel.parent.parts)))
        client.log_batch(run_id, tags=[RunTag(KEY_TAG, key)])
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id, True
