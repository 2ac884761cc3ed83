"""What a pipeline run tells its user: tables for the terminal (rich) and for Prefect artifacts.

Everything here is read back from the stage folders, so a fully cached run reports exactly what the
run that built them reported.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any, Mapping

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from rich.table import Table

from recsys_core.errors import RecsysError
from recsys_core.records import StageResult
from recsys_core.runs import PredictorMetrics, RunFolder, RunMetrics
from tasks.stages import reported_status

MAX_EMBEDDED_IMAGE = 1 << 20
BUCKETS_TITLE = ("Where models lose: per bucket of the user's training ratings and for new items, "
                 "model / best baseline (n: held-out ratings, or ranked users for HR)")


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return value


# --------------------------------------------------------------------------- split stats


def split_stat_rows(split_root: Path) -> list[dict]:
    """One row per split and part, from each split's stats.json (whatever keys it carries)."""
    rows = []
    for stats_file in sorted(Path(split_root).glob("*/stats.json")):
        stats = json.loads(stats_file.read_text())
        split = stats_file.parent.name
        parts = stats.get("parts") if isinstance(stats.get("parts"), dict) else None
        if parts is None:
            parts = {k: v for k, v in stats.items() if k in ("train", "valid", "test", "valid+test") and isinstance(v, dict)}
        if parts:
            for part, values in parts.items():
                rows.append({"split": split, "part": part, **{k: _fmt(v) for k, v in values.items()}})
        else:
            rows.append({"split": split, **{k: _fmt(v) for k, v in stats.items()}})
    return rows


def split_warnings(split_root: Path) -> list[str]:
    """The warnings of every split's stats.json (thin held-out parts, no valid part)."""
    return [w for f in sorted(Path(split_root).glob("*/stats.json")) for w in json.loads(f.read_text()).get("warnings", [])]


# --------------------------------------------------------------------------- metrics


def _test_metrics(part) -> dict:
    """Numeric metrics of one part (test, or valid); a metric the predictor has no value for (None: the global
    mean's ranking) is n/a."""
    return {k: "n/a" if v is None else _fmt(v) for k, v in (part or {}).items()
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}


def _note(metrics: RunMetrics) -> str:
    """BEATEN when a baseline wins on the model's primary metric; else says which baselines rank better."""
    beaten = metrics.beaten_by
    if beaten:
        return f"BEATEN by {', '.join(beaten)}"
    ranked_better = metrics.top_k_beaten_by
    return f"top-K ranked better by {', '.join(ranked_better)}" if ranked_better else ""


def metric_rows(runs: list[dict]) -> list[dict]:
    """Test metrics, one row per trained model and per baseline of its split (baselines shown once).

    ``runs`` items: {"split", "model", "run_dir"}; each run_dir holds the library's metrics.json with the
    model's metrics, its baselines' and ``beaten_by`` (the baselines that beat it on its primary metric).
    """
    rows: list[dict] = []
    baselines_shown: set[tuple[str, str]] = set()
    for run in runs:
        metrics = RunFolder(run["run_dir"]).metrics()
        rows.append({"split": run["split"], "model": run["model"], "kind": "model", **_test_metrics(metrics.test),
                     "note": _note(metrics), "run_dir": run["run_dir"]})
        for name, baseline in metrics.baselines.items():
            if (run["split"], name) not in baselines_shown:
                baselines_shown.add((run["split"], name))
                rows.append({"split": run["split"], "model": name, "kind": "baseline", **_test_metrics(baseline.test),
                             "note": "", "run_dir": run["run_dir"]})
    return rows


# --------------------------------------------------------------------------- where models lose


def _bucket_metric(rows: list[dict]) -> str | None:
    """The metric the buckets compare: RMSE where measured (rating models), else the sampled HR@K."""
    keys = {key for row in rows for key in row}
    if "rmse" in keys:
        return "rmse"
    return next((key for key in sorted(keys) if key.startswith("hr@")), None)


def _bucket_count(row: dict, metric: str) -> int | None:
    return row.get("ratings") if metric == "rmse" else row.get("ranked_users")


def _best_baseline(baselines: Mapping[str, PredictorMetrics], part: str, bucket: str,
                   metric: str) -> tuple[str, float] | None:
    """(name, value) of the baseline doing best on ``metric`` in one bucket of one part; None if none has it."""
    best = None
    for name, metrics in baselines.items():
        rows = metrics.buckets.get(part) or []
        value = next((row.get(metric) for row in rows if row.get("bucket") == bucket), None)
        if value is not None and (best is None or (value < best[1] if metric == "rmse" else value > best[1])):
            best = (name, value)
    return best


def bucket_rows(runs: list[dict]) -> list[dict]:
    """Where each model loses: per bucket of the user's training-rating count and for new items (metrics.json's
    ``buckets``, recsys_core.buckets), the model's RMSE (rating models; else its sampled HR@K) beside the best
    baseline's in that bucket ("0.9745 / 0.9722"), on test and on valid, with the held-out count (ratings, or
    ranked users for HR) and the baseline's name; ``note`` flags a bucket where that baseline does strictly
    better, with the model's gap ("LOSES: test +0.2%"; "loses: valid ..." when only there). Runs without
    per-bucket metrics (a ranking model without sampled negatives, a run from before them) give no rows."""
    out: list[dict] = []
    for run in runs:
        metrics = RunFolder(run["run_dir"]).metrics()
        mine = metrics.buckets
        metric = _bucket_metric([row for rows in mine.values() for row in rows])
        if metric is None:
            continue
        baselines = metrics.baselines
        labels = list(dict.fromkeys(row["bucket"] for part in ("test", "valid") for row in mine.get(part, [])))
        for label in labels:
            row: dict = {"split": run["split"], "model": run["model"], "bucket": label, "metric": metric}
            losses, names = [], []
            for part in ("test", "valid"):
                here = next((r for r in mine.get(part) or [] if r["bucket"] == label), None)
                row[f"{part} n"], row[part] = "", ""
                if here is None:  # the part was not measured (no valid part, or no negatives there)
                    continue
                value, best = here.get(metric), _best_baseline(baselines, part, label, metric)
                row[f"{part} n"] = _bucket_count(here, metric)
                if here.get("absent"):
                    row[part] = "absent"
                    continue
                row[part] = ("n/a" if value is None else str(_fmt(value))) + (f" / {_fmt(best[1])}" if best else "")
                if best is not None:
                    names.append(best[0])
                if value is not None and best is not None and (
                        best[1] < value if metric == "rmse" else best[1] > value):
                    losses.append(f"{part} {(value - best[1]) / best[1]:+.1%}" if best[1] else part)
            row["best baseline"] = " / ".join(dict.fromkeys(names))
            row["note"] = ("LOSES: " if losses[0].startswith("test") else "loses: ") + ", ".join(losses) \
                if losses else ""
            out.append(row)
    return out


# --------------------------------------------------------------------------- every run of a data dir

# Options shown for every run when present; any other option that differs between runs of one model is
# shown as well (config.json holds every resolved option, most of them the model's defaults).
MAIN_OPTIONS = ("epochs", "lr", "batch_size", "optimizer", "layers", "hidden", "dim", "dropout", "weight_decay", "seed")
_BOOKKEEPING = {"model", "family", "orientation", "split_dir", "threads"}


def run_rows(data_dir: Path) -> list[dict]:
    """One row per finished training run under ``data_dir/runs`` (a manifest and a metrics.json), any data,
    split or model: key options, valid/test metrics of the model, epochs, seconds, the content of the run."""
    runs = []
    for manifest_file in sorted(Path(data_dir).glob("runs/*/*/*/*/manifest.json")):
        folder = RunFolder(manifest_file.parent)
        try:
            manifest, metrics, config = folder.manifest(), folder.metrics(), folder.config().to_json()
        except (OSError, ValueError, RecsysError):
            continue  # an incomplete or foreign folder: not a run to compare
        runs.append((folder.path, manifest, metrics, config))
    varying: dict[str, set[str]] = {}
    by_model: dict[str, list[dict]] = {}
    for _, _, metrics, config in runs:
        by_model.setdefault(str(metrics.model), []).append(config)
    for model, configs in by_model.items():
        keys = set().union(*configs) - _BOOKKEEPING
        varying[model] = {k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1}
    rows = []
    for folder, manifest, metrics, config in runs:
        model = str(metrics.model)
        shown = [k for k in MAIN_OPTIONS if k in config] + sorted(varying[model] - set(MAIN_OPTIONS))
        training = metrics.training
        rows.append({
            "data": folder.parents[2].name, "split": metrics.split or folder.parent.name, "model": model,
            "options": ", ".join(f"{k}={_fmt(config.get(k))}" for k in shown),
            **{f"valid {k}": v for k, v in _test_metrics(metrics.valid).items() if k != "n"},
            **{f"test {k}": v for k, v in _test_metrics(metrics.test).items() if not k.startswith("n")},
            "epochs": training.get("epochs_done"), "seconds": manifest.elapsed_s if manifest else None,
            "note": _note(metrics), "built": manifest.created if manifest else None, "run": folder.relative_to(data_dir).as_posix()})
    columns = list(dict.fromkeys(k for row in rows for k in row))  # one column set: rating and ranking models mix
    return [{c: row.get(c) for c in columns} for row in rows]


# --------------------------------------------------------------------------- rendering


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(none)_\n"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rich_table(title: str, rows: list[dict], columns: list[str] | None = None):
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if rows and isinstance(rows[0].get(column), (int, float)) else "left")
    for row in rows:
        style = "bold red" if str(row.get("note", "")).startswith(("BEATEN", "LOSES")) else None
        table.add_row(*(str(row.get(c, "")) for c in columns), style=style)
    return table


def summary_markdown(report: dict) -> str:
    parts = [f"# Recommender pipeline: {report['source']}\n", f"Data dir: `{report['data_dir']}`\n",
             "## Stages\n", markdown_table(report["stages"])]
    if report.get("split_stats"):
        parts += ["\n## Split statistics\n", markdown_table(report["split_stats"])]
    if report.get("split_warnings"):
        parts += ["\n**Warnings**\n\n", "".join(f"- {w}\n" for w in report["split_warnings"])]
    if report.get("metrics"):
        parts += ["\n## Test metrics\n", markdown_table(report["metrics"])]
    if report.get("buckets"):
        parts += [f"\n## {BUCKETS_TITLE}\n", markdown_table(report["buckets"])]
    if report.get("promotion"):
        parts += ["\n## Registry\n", "".join(f"- {line}\n" for line in report["promotion"])]
    if report.get("artifacts"):
        parts += ["\n## Artifacts\n", "\n".join(f"- {k}: `{v}`" for k, v in report["artifacts"].items()) + "\n"]
    return "".join(parts)


# --------------------------------------------------------------------------- Prefect artifacts


def publish_table(key: str, rows: list[dict], description: str) -> None:
    if rows:
        create_table_artifact(table=rows, key=key, description=description)


def publish_learning_curve(key: str, png: Path, model: str) -> None:
    """A Markdown artifact showing the PNG (embedded when small) and where it lies."""
    text = f"# Learning curve: {model}\n\nFile: `{png}`\n"
    if png.exists() and png.stat().st_size <= MAX_EMBEDDED_IMAGE:
        encoded = base64.b64encode(png.read_bytes()).decode()
        text += f"\n![learning curve of {model}](data:image/png;base64,{encoded})\n"
    create_markdown_artifact(markdown=text, key=key, description=f"learning curve of {model}")


def publish_summary(report: dict) -> None:
    create_markdown_artifact(markdown=summary_markdown(report), key="recsys-summary",
                             description="stages, split statistics, test metrics, where models lose (per bucket) and artifact paths")


# --------------------------------------------------------------------------- the run's report


class RunReport:
    """What a flow run did, collected stage by stage (cached / reused / built, tables, artifact paths) for the
    summary it returns and publishes."""

    def __init__(self, data: Path, source: str):
        self.report: dict[str, Any] = {"source": source, "data_dir": str(data), "stages": [], "split_stats": [],
                                       "metrics": []}
        self.artifacts: dict[str, str] = {}

    def stage(self, task_fn, spec, label: str, **kwargs) -> StageResult:
        """Run a stage task in the flow's process; its status in the report; re-raises its error."""
        started = time.perf_counter()
        state = task_fn(spec=spec, data_dir=self.report["data_dir"], return_state=True, **kwargs)
        status = reported_status(state)  # re-raises the stage's error
        seconds = round(time.perf_counter() - started, 2)
        self.report["stages"].append({"stage": label, "status": status, "seconds": seconds,
                                      "output": spec.out_dir})
        return state.result()

    def record(self, done, spec) -> StageResult:
        """A training task's end (``tasks.fanout.Done``) in the report; re-raises its error."""
        status = reported_status(done.state)
        self.report["stages"].append({"stage": done.call.label, "status": status, "seconds": round(done.seconds, 2),
                                      "output": spec.out_dir})
        return done.result()

    def table(self, name: str, rows: list, key: str, description: str) -> None:
        """``rows`` as the report's ``name`` and as the Prefect table artifact ``key``."""
        self.report[name] = rows
        publish_table(key, rows, description)

    def finish(self) -> dict:
        self.report["artifacts"] = self.artifacts
        publish_table("recsys-stages", self.report["stages"], "what each stage did: cached, reused or built")
        publish_summary(self.report)
        return self.report


def dataset_row(converted: Path) -> dict:
    """Stage 1's table: the converted data set's meta.json."""
    return json.loads((converted / "meta.json").read_text())


def matrices_rows(root: Path) -> list[dict]:
    """Stage 3's table: per split, users, items and non-zeros per part."""
    rows = []
    for meta_file in sorted(root.glob("*/meta.json")):
        meta = json.loads(meta_file.read_text())
        nnz = meta.get("nnz", {})
        rows.append({"split": meta_file.parent.name, "users": meta.get("n_users"), "items": meta.get("n_items"),
                     **{f"nnz {part}": n for part, n in nnz.items()}})
    return rows
