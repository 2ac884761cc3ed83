"""What a pipeline run tells its user: tables for the terminal (rich) and for Prefect artifacts.

Everything here is read back from the stage folders, so a fully cached run reports exactly what the
run that built them reported.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

# Metrics where lower is better; all others (hit rate, NDCG, recall, ...) are higher-is-better.
LOWER_IS_BETTER = ("rmse", "mae", "mse", "loss")
MAX_EMBEDDED_IMAGE = 1 << 20


def is_lower_better(metric: str) -> bool:
    return metric.lower().split("@")[0].split("_")[0] in LOWER_IS_BETTER


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


# --------------------------------------------------------------------------- metrics


def headline_metric(metrics: dict) -> str | None:
    """The metric a model is judged by: RMSE for rating prediction, else the first ranking metric."""
    for name in metrics:
        if name.lower() == "rmse":
            return name
    for prefix in ("ndcg", "hr", "hit", "recall", "map", "precision"):
        for name in metrics:
            if name.lower().startswith(prefix):
                return name
    numeric = [n for n, v in metrics.items() if isinstance(v, (int, float))]
    return numeric[0] if numeric else None


def metric_rows(runs: list[dict], baselines: set[str]) -> list[dict]:
    """One row per (split, model): test metrics, kind, and a flag when a baseline beats the model.

    ``runs`` items: {"split", "model", "metrics": {name: value}, "run_dir"}.
    """
    rows = []
    for run in runs:
        test = run["metrics"].get("test", run["metrics"]) if isinstance(run["metrics"], dict) else {}
        test = {k: v for k, v in test.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        rows.append({"split": run["split"], "model": run["model"],
                     "kind": "baseline" if run["model"] in baselines else "model",
                     **{k: _fmt(v) for k, v in test.items()}, "note": "", "run_dir": run["run_dir"]})
    for row in rows:
        if row["kind"] != "model":
            continue
        metric = headline_metric({k: v for k, v in row.items() if isinstance(v, (int, float))})
        if metric is None:
            continue
        for other in rows:
            if other["kind"] != "baseline" or other["split"] != row["split"] or metric not in other:
                continue
            better = other[metric] < row[metric] if is_lower_better(metric) else other[metric] > row[metric]
            if better:
                row["note"] = f"BEATEN by {other['model']} on {metric}"
                break
    return rows


# --------------------------------------------------------------------------- rendering


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(none)_\n"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rich_table(title: str, rows: list[dict], columns: list[str] | None = None):
    from rich.table import Table

    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if rows and isinstance(rows[0].get(column), (int, float)) else "left")
    for row in rows:
        style = "bold red" if str(row.get("note", "")).startswith("BEATEN") else None
        table.add_row(*(str(row.get(c, "")) for c in columns), style=style)
    return table


def summary_markdown(report: dict) -> str:
    parts = [f"# Recommender pipeline: {report['source']}\n", f"Data dir: `{report['data_dir']}`\n",
             "## Stages\n", markdown_table(report["stages"])]
    if report.get("split_stats"):
        parts += ["\n## Split statistics\n", markdown_table(report["split_stats"])]
    if report.get("metrics"):
        parts += ["\n## Test metrics\n", markdown_table(report["metrics"])]
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
                             description="stages, split statistics, test metrics and artifact paths")
