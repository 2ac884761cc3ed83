"""Several processes, one model (``recsys_core.distributed``): two CPU processes (gloo) train, checkpoint and
resume one model, reach the single-process RMSE, stop together on a diverging loss, and bad process counts
are refused in one sentence. Each two-process run starts two fresh interpreters: the tests are few and small."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_fixtures import make_rating_split

from recsys_core import distributed
from recsys_core.cli import main
from recsys_core.errors import RecsysError
from recsys_core.train import train

torch.set_num_threads(2)

SMALL = dict(n_users=300, n_items=80, n_ratings=12_000)
AE = dict(layers=[32, 16], dropout=0.3, noise=0.1, refeed=1, batch_size=32, recall_users=50, patience=0)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return make_rating_split(tmp_path_factory.mktemp("ddp") / "N3M", **SMALL)


def _history(run):
    return json.loads((run / "history.json").read_text())


def test_two_processes_train_checkpoint_resume_and_reach_the_single_process_rmse(split, tmp_path):
    single = train(split.path, tmp_path / "single", "autoencoder", epochs=4, **AE)
    run = tmp_path / "two"
    first = train(split.path, run, "autoencoder", epochs=2, nproc=2, **AE)
    assert first["training"]["processes"] == 2 and first["training"]["epochs_done"] == 2
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    assert json.loads((run / "config.json").read_text())["nproc"] == 2
    before = _history(run)
    resumed = train(split.path, run, "autoencoder", resume=True, epochs=4)
    after = _history(run)
    assert after["epoch"] == [1, 2, 3, 4] and after["valid"][:2] == before["valid"]
    assert after["valid"][2] != before["valid"][1]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 4
    # Same global batches, other dropout/noise draws per process: the same model up to that noise.
    assert resumed["test"]["rmse"] == pytest.approx(single["test"]["rmse"], abs=0.02)
    assert abs(resumed["test"]["rmse"] - single["test"]["rmse"]) < 0.5 * abs(
        single["test"]["rmse"] - resumed["baselines"]["global_mean"]["test"]["rmse"])
    for name in ("metrics.json", "model.pt", "predictions.parquet", "recommendations.parquet", "learning_curve.png"):
        assert (run / name).is_file(), name


def test_mf_in_two_processes_from_the_command_line_matches_one_process(split, tmp_path, capsys):
    one = train(split.path, tmp_path / "one", "mf", epochs=3, patience=0, recall_users=50)
    assert main(["train", str(split.path), str(tmp_path / "two"), "--model", "mf", "--nproc", "2", "--epochs", "3",
                 "--patience", "0", "--recall-users", "50"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # MF's loss is a mean over equal halves of each batch: two processes take (nearly) the same steps.
    assert printed["test"]["rmse"] == pytest.approx(one["test"]["rmse"], abs=1e-4)
    assert np.allclose(_history(tmp_path / "two")["train_loss"], _history(tmp_path / "one")["train_loss"], atol=1e-4)


def test_a_diverging_loss_stops_every_process_with_one_sentence(split, tmp_path):
    with pytest.raises(RecsysError, match=r"diverged in epoch 1, batch \d+: the loss became .*lower --lr"):
        train(split.path, tmp_path / "run", "autoencoder", epochs=3, optimizer="sgd", lr=50.0, nproc=2,
              **{**AE, "noise": 0.0})


def test_bad_process_counts_are_refused_in_one_sentence(split, tmp_path, capsys):
    with pytest.raises(RecsysError, match="option nproc must be at least 1, got 0"):
        train(split.path, tmp_path / "run", "mf", nproc=0)
    with pytest.raises(RecsysError, match="model ease has no option nproc"):
        train(split.path, tmp_path / "run", "ease", nproc=2)
    count = torch.cuda.device_count()
    with pytest.raises(RecsysError, match=f"nproc {count + 1} needs {count + 1} GPUs .* this machine has {count}$"):
        distributed.check_processes(count + 1, torch.device("cuda"))
    with pytest.raises(RecsysError, match="give --device cuda, not cuda:1"):
        distributed.check_processes(2, torch.device("cuda", 1))
    assert main(["train", str(split.path), str(tmp_path / "cli"), "--model", "mf", "--nproc", "0"]) == 2
    assert "nproc must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_local_parts_cover_each_global_batch_once(monkeypatch):
    batch = np.arange(10)
    parts = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "_current", distributed.DistContext(rank=rank, world=3))
        parts.append(distributed.local_part(batch))
    assert sorted(np.concatenate(parts).tolist()) == batch.tolist()
    assert [len(p) for p in parts] == [4, 3, 3]
    tail = []  # a last batch smaller than the group: one example each, repeated as DistributedSampler pads
    for rank in range(3):
        monkeypatch.setattr(distributed, "_current", distributed.DistContext(rank=rank, world=3))
        tail.append(distributed.local_part(torch.tensor([7, 8])).tolist())
    assert tail == [[7], [8], [7]]


def test_a_launcher_environment_without_rank_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RecsysError, match="WORLD_SIZE is set but RANK is not"):
        distributed.from_environment(torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.from_environment(torch.device("cpu")) is distributed.SINGLE
