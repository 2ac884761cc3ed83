"""The summary table's notes: what marks a model as beaten, and what only says its lists rank worse."""

from __future__ import annotations

import json

from tasks.report import metric_rows


def _run(tmp_path, name, **metrics):
    run_dir = tmp_path / name
    run_dir.mkdir()
    baselines = {"user_item_bias": {"test": {"rmse": 0.95, "recall@10": 0.02}},
                 "most_popular": {"test": {"recall@10": 0.05}}}
    (run_dir / "metrics.json").write_text(json.dumps({"test": {"rmse": 0.9, "recall@10": 0.01},
                                                      "baselines": baselines, **metrics}))
    return {"split": "N3M", "model": name, "run_dir": str(run_dir)}


def test_notes_separate_beaten_from_ranked_worse(tmp_path):
    runs = [_run(tmp_path, "mf", beaten_by=["user_item_bias"], top_k_beaten_by=["user_item_bias", "most_popular"]),
            _run(tmp_path, "autoencoder", beaten_by=[], top_k_beaten_by=["most_popular"]),
            _run(tmp_path, "mlp", beaten_by=[], top_k_beaten_by=[])]
    rows = metric_rows(runs)
    notes = {r["model"]: r["note"] for r in rows if r["kind"] == "model"}
    assert notes == {"mf": "BEATEN by user_item_bias", "autoencoder": "top-K ranked better by most_popular",
                     "mlp": ""}
    # Each baseline appears once per split, beside the first model that carried it.
    assert [r["model"] for r in rows if r["kind"] == "baseline"] == ["user_item_bias", "most_popular"]
    assert rows[1]["rmse"] == 0.95


def test_a_baseline_without_a_ranking_shows_n_a(tmp_path):
    run = _run(tmp_path, "mf", beaten_by=[], top_k_beaten_by=[])
    metrics_file = tmp_path / "mf" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["baselines"]["global_mean"] = {"test": {"rmse": 1.1, "recall@10": None}}
    metrics_file.write_text(json.dumps(metrics))
    tied = next(r for r in metric_rows([run]) if r["model"] == "global_mean")
    assert tied["recall@10"] == "n/a" and tied["rmse"] == 1.1
