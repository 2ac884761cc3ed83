"""MLflow tracking of a finished run folder, against a real local tracking store (sqlite), not a mock."""

from __future__ import annotations

import json

import pytest
from train_fixtures import make_rating_split

from recsys_core.settings import RunSettings
from recsys_core.tracking import KEY_TAG, log_run, metric_name
from recsys_core.train import train
from tasks.tracking import experiment_name

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (requirements-extras.lock installs it for the tests)")
# Heavy for its size (importing mlflow and a sqlite store: ~8 s of CPU): out of the fast lane (README), run by CI.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    split = make_rating_split(root / "N3M", n_users=200, n_items=60, n_ratings=6_000)
    run = root / "runs" / "netflix-0123456789" / "netflix-time-abcdefabcd" / "N3M" / "autoencoder-fedcba9876"
    train(split.path, run, "autoencoder", {"epochs": 3, "layers": [16], "patience": 0},
          RunSettings(device="cpu", recall_users=50))
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating its tables takes seconds); artifacts under ./mlruns of it."""
    folder = tmp_path_factory.mktemp("mlflow")
    return folder, f"sqlite:///{folder / 'mlflow.db'}"


def test_a_run_folder_becomes_one_mlflow_run_once(run_dir, store, monkeypatch):
    monkeypatch.chdir(store[0])  # a sqlite store keeps artifacts under ./mlruns
    uri = store[1]
    experiment = experiment_name(run_dir)
    assert experiment == "netflix/N3M"

    run_id, new = log_run(run_dir, experiment, key="key-1", tracking_uri=uri, run_name="N3M/autoencoder")
    assert new
    again, new_again = log_run(run_dir, experiment, key="key-1", tracking_uri=uri)
    assert (again, new_again) == (run_id, False)  # a cached pipeline run logs nothing twice

    client = mlflow.tracking.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags[KEY_TAG] == "key-1"
    config = json.loads((run_dir / "config.json").read_text())
    assert run.data.params["epochs"] == "3" and run.data.params["layers"] == "[16]"
    assert set(run.data.params) == set(config)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["test_rmse"] == pytest.approx(metrics["test"]["rmse"])
    assert run.data.metrics[metric_name("test_recall@10")] == pytest.approx(metrics["test"]["recall@10"])
    for baseline in ("global_mean", "item_mean", "user_item_bias"):
        expected = metrics["baselines"][baseline]["test"]["rmse"]
        assert run.data.metrics[f"baseline.{baseline}.test_rmse"] == pytest.approx(expected)
    history = json.loads((run_dir / "history.json").read_text())
    for name, column in (("train_loss", "train_loss"), ("valid_rmse", "valid")):
        steps = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        assert [m.step for m in steps] == history["epoch"]  # step = epoch
        assert [m.value for m in steps] == pytest.approx(history[column])

    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"learning_curve.png", "run"} <= top
    folder = {a.path for a in client.list_artifacts(run_id, "run")}
    assert {"run/config.json", "run/history.json", "run/metrics.json", "run/model.pt",
            "run/recommendations.parquet"} <= folder
    assert "run/checkpoint.pt" not in folder


def test_other_content_is_another_run_and_names_fit_mlflow(run_dir, store, monkeypatch):
    monkeypatch.chdir(store[0])
    uri = store[1]
    first, _ = log_run(run_dir, "other/N3M", tracking_uri=uri)  # key: the folder's content
    second, new = log_run(run_dir, "other/N3M", key="another-content", tracking_uri=uri)
    assert new and second != first
    assert metric_name("hr@10") == "hr_at_10" and metric_name("ndcg@10 x") == "ndcg_at_10 x"
