"""The shared training loop: exact repeatability, exact resume, divergence detection, checkpoints,
early stopping, the run folder and the command line."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from train_fixtures import make_rating_split

from recsys_core.cli import build_parser, main
from recsys_core.errors import RecsysError
from recsys_core.settings import RunSettings
from recsys_core.train import train

torch.set_num_threads(2)

# these tests compare runs bit for bit (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("two_torch_threads")

SMALL = dict(n_users=300, n_items=80, n_ratings=12_000)
# A configuration that exercises every random path: code dropout, input noise, re-feeding.
AE = dict(layers=[32, 16], dropout=0.3, noise=0.1, refeed=1, batch_size=32, patience=0)
RUN = RunSettings(recall_users=50)
QUICK = RunSettings(recall_users=0)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return make_rating_split(tmp_path_factory.mktemp("small") / "N3M", **SMALL)


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow  # three trainings, 27 s of CPU at load ~25 (tests/test_repeatability.py, slow too, holds all models)
def test_same_seed_gives_identical_weights_and_metrics(split, tmp_path):
    first = train(split.path, tmp_path / "a", "autoencoder", {"epochs": 3, **AE}, RUN)
    second = train(split.path, tmp_path / "b", "autoencoder", {"epochs": 3, **AE}, RUN)
    _assert_same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert first["test"] == second["test"]
    other = train(split.path, tmp_path / "c", "autoencoder", {"epochs": 3, "seed": 1, **AE}, RUN)
    assert other["test"]["rmse"] != first["test"]["rmse"]


@pytest.mark.slow  # three trainings each, 17 s of CPU for the autoencoder at load ~25
@pytest.mark.parametrize("model,options", [("autoencoder", AE), ("neumf", dict(patience=0)),
                                           ("mf", dict(solver="sgd", patience=0))])
def test_resume_continues_exactly(split, tmp_path, model, options):
    straight = train(split.path, tmp_path / "straight", model, {"epochs": 4, **options}, RUN)
    train(split.path, tmp_path / "resumed", model, {"epochs": 2, **options}, RUN)
    resumed = train(split.path, tmp_path / "resumed", model, {"epochs": 4}, RunSettings(resume=True))
    _assert_same_weights(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))
    assert straight["test"] == resumed["test"]
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3, 4]
    assert history["valid"] == json.loads((tmp_path / "straight" / "history.json").read_text())["valid"]


def test_resume_refuses_to_change_the_model_options(split, tmp_path):
    train(split.path, tmp_path / "run", "mf", {"epochs": 1})
    with pytest.raises(RecsysError, match="cannot change when resuming"):
        train(split.path, tmp_path / "run", "mf", {"epochs": 2, "lr": 0.1}, RunSettings(resume=True))
    with pytest.raises(RecsysError, match="no config.json and checkpoint.pt"):
        train(split.path, tmp_path / "nothing", "mf", None, RunSettings(resume=True))


def test_diverging_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(split, tmp_path):
    run = tmp_path / "run"
    train(split.path, run, "autoencoder", {"epochs": 1, **AE}, RUN)
    before = _weights(run)
    with pytest.raises(RecsysError, match=r"diverged in epoch 1, batch \d+: the loss became .*lower --lr"):
        train(split.path, run, "autoencoder", {"epochs": 3, "optimizer": "sgd", "lr": 50.0, **AE}, RUN)
    _assert_same_weights(before, _weights(run))


def test_checkpoint_holds_only_tensors_and_plain_containers(split, tmp_path):
    train(split.path, tmp_path / "run", "autoencoder", {"epochs": 2, **AE}, RUN)
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "history"} <= set(checkpoint)
    assert checkpoint["epoch"] == 2
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert saved["config"]["model"] == "autoencoder"


def test_early_stopping_restores_the_best_epoch(split, tmp_path):
    # A large learning rate overfits/oscillates quickly on the small split.
    metrics = train(split.path, tmp_path / "run", "mf",
                    {"epochs": 30, "patience": 2, "lr": 0.05, "dim": 64, "l2": 0.0})
    info = metrics["training"]
    assert info["stopped_early"] and info["epochs_done"] == info["best_epoch"] + 2
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert min(history["valid"]) == history["valid"][info["best_epoch"] - 1]


def test_lr_step_schedule_is_applied(split, tmp_path):
    train(split.path, tmp_path / "run", "mf",
          {"epochs": 4, "lr": 0.01, "lr_milestones": [1, 3], "lr_gamma": 0.5, "patience": 0})
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["lr"] == pytest.approx([0.01, 0.005, 0.005, 0.0025])


def test_run_folder_holds_every_artifact(split, tmp_path):
    run = tmp_path / "run"
    metrics = train(split.path, run, "autoencoder", {"epochs": 2, **AE}, RUN)
    for name in ("config.json", "metrics.json", "history.json", "learning_curve.png", "checkpoint.pt", "model.pt",
                 "predictions.parquet", "recommendations.parquet"):
        assert (run / name).is_file(), name
    assert (run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    predictions = pl.read_parquet(run / "predictions.parquet")
    assert predictions.columns == ["user_id", "item_id", "rating", "prediction"]
    assert len(predictions) == json.loads((split.path / "meta.json").read_text())["nnz"]["test"]
    assert predictions["prediction"].min() >= 1.0 and predictions["prediction"].max() <= 5.0
    rmse = float(np.sqrt(((predictions["prediction"] - predictions["rating"]) ** 2).mean()))
    assert rmse == pytest.approx(metrics["test"]["rmse"], rel=1e-5)
    on_disk = json.loads((run / "metrics.json").read_text())
    assert set(on_disk["baselines"]) == {"global_mean", "item_mean", "user_item_bias", "most_popular"}
    assert "beaten_by" in on_disk


def test_cli_has_three_subcommands_with_help(capsys):
    parser = build_parser()
    for command in ("train", "evaluate", "recommend"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        assert "usage" in text
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--resume", "--device", "--layers", "--refeed", "--preset", "--negatives"):
        assert option in text


def test_cli_train_evaluate_recommend(split, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(split.path), str(run), "--model", "mf", "--epochs", "2", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "mf"
    assert main(["evaluate", str(run)]) == 0
    assert "rmse" in capsys.readouterr().out
    own = (run / "recommendations.parquet").read_bytes()
    assert main(["recommend", str(run), "-k", "3", "--users", "7,10"]) == 0
    table = pl.read_parquet(capsys.readouterr().out.strip())
    assert sorted(set(table["user_id"])) == [7, 10] and len(table) == 6
    assert main(["recommend", str(run), "-k", "2", "--out", str(tmp_path / "top2.parquet")]) == 0
    assert pl.read_parquet(tmp_path / "top2.parquet")["rank"].max() == 2
    # Ad-hoc recommendations never replace the run's own (an output of train that caches verify).
    assert main(["recommend", str(run), "--out", str(run / "recommendations.parquet")]) == 2
    assert "the run's own output" in capsys.readouterr().err
    assert (run / "recommendations.parquet").read_bytes() == own


def test_cli_reports_bad_input_in_one_sentence(tmp_path, capsys):
    assert main(["train", str(tmp_path), str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a stage-3 split folder" in err and "Traceback" not in err
    assert main(["train", str(tmp_path), str(tmp_path / "run"), "--device", "cuda:7"]) == 2


def test_trains_on_folders_made_by_the_real_split_and_matrices_stages(tmp_path):
    """stage-1 table -> split (leave-one-out with negatives) -> matrices -> train + recommend."""
    import datetime as dt

    from split_fixtures import write_stage1

    from recsys_core.matrices import build_matrices
    from recsys_core.split import split

    rng = np.random.default_rng(0)
    start = dt.datetime(2005, 1, 1, tzinfo=dt.timezone.utc)
    rows = [(int(u) * 10 + 3, int(i) + 100, float(rng.integers(1, 6)), start + dt.timedelta(days=int(d)))
            for u in range(120) for i, d in zip(rng.choice(150, 25, replace=False), rng.permutation(300)[:25])]
    write_stage1(tmp_path / "converted", rows)
    split(tmp_path / "converted", tmp_path / "splits", "leave-one-out", negatives=50)
    build_matrices(tmp_path / "splits", tmp_path / "matrices")
    metrics = train(tmp_path / "matrices" / "leave-one-out", tmp_path / "run", "gmf", {"epochs": 2}, RUN)
    assert metrics["test"]["n_ranked"] == 120 and 0.0 <= metrics["test"]["hr@10"] <= 1.0
    assert set(metrics["baselines"]["most_popular"]["test"]) >= {"hr@10", "ndcg@10", "recall@10"}
    # the global mean scores every item the same: no ranking, never said to rank better than a model
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    tied = on_disk["baselines"]["global_mean"]["test"]
    assert tied["hr@10"] is None and tied["ndcg@10"] is None and tied["recall@10"] is None
    assert "global_mean" not in on_disk["beaten_by"] + on_disk["top_k_beaten_by"]
    table = pl.read_parquet(tmp_path / "run" / "recommendations.parquet")
    assert set(table["user_id"].to_list()) == {u * 10 + 3 for u in range(120)}
    assert table["title"][0].startswith("Movie ")


def test_resume_auto_continues_an_unfinished_run_and_restarts_anything_else(split, tmp_path, caplog):
    options = dict(patience=0)
    straight = train(split.path, tmp_path / "straight", "mf", {"epochs": 3, **options}, QUICK)
    run = tmp_path / "run"
    # as a run stopped after epoch 1 leaves its checkpoint
    train(split.path, run, "mf", {"epochs": 1, **options}, QUICK)
    caplog.set_level("INFO", logger="recsys_core")
    resumed = train(split.path, run, "mf", {"epochs": 3, **options}, QUICK.replace(resume="auto"))
    assert "resuming" in caplog.text
    assert resumed["test"] == straight["test"]
    assert json.loads((run / "history.json").read_text())["epoch"] == [1, 2, 3]
    caplog.clear()  # other model options than the run's: start afresh, with a warning
    fresh = train(split.path, run, "mf", {"epochs": 2, "lr": 0.01, **options}, QUICK.replace(resume="auto"))
    assert "training from scratch" in caplog.text
    assert json.loads((run / "history.json").read_text())["epoch"] == [1, 2]
    caplog.clear()  # a checkpoint that does not load: start afresh too
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    again = train(split.path, run, "mf", {"epochs": 2, "lr": 0.01, **options}, QUICK.replace(resume="auto"))
    assert "cannot resume" in caplog.text and again["test"] == fresh["test"]


def test_a_split_without_valid_part_trains_blind_and_says_so(tmp_path, caplog):
    from train_fixtures import make_leave_one_out_split

    loo = make_leave_one_out_split(tmp_path / "loo", n_users=80, n_items=150, mean_per_user=20)
    caplog.set_level("WARNING", logger="recsys_core")
    metrics = train(loo.path, tmp_path / "run", "gmf", {"epochs": 1}, QUICK)
    assert "trains blind" in caplog.text and "no early stopping" in caplog.text
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["valid"] is None and on_disk["trained_blind"] is True
    assert metrics["trained_blind"] is True


def test_a_split_with_valid_part_is_not_blind(split, tmp_path):
    metrics = train(split.path, tmp_path / "run", "mf", {"epochs": 1}, QUICK)
    assert "trained_blind" not in metrics and metrics["valid"]["rmse"] > 0
