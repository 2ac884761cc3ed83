"""Several processes, one model (``recsys_core.distributed``): two CPU processes (gloo) train, checkpoint and
resume one model, reach the single-process RMSE, stop together on a diverging loss, and bad process counts
are refused in one sentence. Each two-process run starts two fresh interpreters: the tests are few and small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from train_fixtures import make_rating_split, pause_after_first_checkpoint, sigkill_at_first_checkpoint

from recsys_core import distributed
from recsys_core.cli import main
from recsys_core.errors import RecsysError
from recsys_core.settings import RunSettings
from recsys_core.train import train

torch.set_num_threads(2)

# these tests compare runs bit for bit (tests/conftest.py)
# Heavy (trainings in two processes, one killed and resumed, ~100 s of CPU): out of the fast lane (README), run by CI.
pytestmark = [pytest.mark.usefixtures("two_torch_threads"), pytest.mark.slow]

SMALL = dict(n_users=300, n_items=80, n_ratings=12_000)
EPOCHS = 4
ENV = {"RECSYS_PROGRESS": "0", "OMP_NUM_THREADS": "2", "GLOO_SOCKET_IFNAME": "lo"}  # 1 thread per process of 2
AE = dict(layers=[32, 16], dropout=0.3, noise=0.1, refeed=1, batch_size=32, patience=0)
RUN = RunSettings(recall_users=50)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return make_rating_split(tmp_path_factory.mktemp("ddp") / "N3M", **SMALL)


def _history(run):
    return json.loads((run / "history.json").read_text())


def _cli(split, run_dir, *args) -> list[str]:
    return [sys.executable, "-m", "recsys_core", "train", str(split.path), str(run_dir), *args]


AE_FLAGS = [f"--{k.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in AE.items()
            ] + ["--recall-users=50"]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_after_first_checkpoint(command, run_dir, timeout=600.0) -> tuple[int, list[int]]:
    """Start ``command`` (a two-process training), SIGKILL its main process as soon as the first checkpoint is
    on disk; return that epoch and the pids of the training processes it had started."""
    marker = run_dir.parent / f"{run_dir.name}.paused"
    process = subprocess.Popen(command, env=pause_after_first_checkpoint({**os.environ, **ENV}, marker),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint, workers = run_dir / "checkpoint.pt", []

    def note_workers():
        if len(workers) < 2:
            workers[:] = _children(process.pid)

    sigkill_at_first_checkpoint(process, marker, timeout, note_workers)
    return int(torch.load(checkpoint, weights_only=True)["epoch"]), workers


def _launched_like_torchrun(split, run_dir, store, *args) -> None:
    """Two ``recsys train`` processes started as torchrun starts them (RANK, WORLD_SIZE, LOCAL_RANK, ...
    in the environment), meeting through a file store instead of torchrun's TCP store (which listens on
    every interface; tests bind loopback only)."""
    launcher = {**os.environ, **ENV, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                distributed.INIT_METHOD_VARIABLE: f"file://{store}"}
    procs = [subprocess.Popen(_cli(split, run_dir, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**launcher, "RANK": str(rank), "LOCAL_RANK": str(rank)})
             for rank in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert json.loads(outputs[0][0])["model"] == "autoencoder"
    assert json.loads((run_dir / "metrics.json").read_text())["training"]["processes"] == 2
    assert outputs[1][0] == ""  # process 1 trains and writes nothing: the summary is process 0's


def _weights(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]


def _predictions(run_dir) -> np.ndarray:
    return pl.read_parquet(run_dir / "predictions.parquet")["prediction"].to_numpy()


def test_two_processes_complete_resume_a_killed_run_and_reach_the_single_process_rmse(split, tmp_path):
    single = train(split.path, tmp_path / "single", "autoencoder", {"epochs": EPOCHS, **AE}, RUN)
    straight = tmp_path / "torchrun"
    _launched_like_torchrun(split, straight, tmp_path / "store", f"--epochs={EPOCHS}", *AE_FLAGS)
    assert json.loads((straight / "config.json").read_text())["nproc"] == 2

    killed = tmp_path / "killed"
    epoch, workers = _kill_after_first_checkpoint(_cli(split, killed, "--nproc=2", f"--epochs={EPOCHS}", *AE_FLAGS),
                                                  killed)
    assert 1 <= epoch < EPOCHS, "the run was not interrupted before its end"
    assert len(workers) == 2
    deadline = time.monotonic() + 60
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, workers)), "a training process outlived the killed command"
    resumed = train(split.path, killed, "autoencoder", None, RunSettings(resume=True))  # nproc 2 again: config.json
    assert resumed["training"]["processes"] == 2 and resumed["training"]["epochs_done"] == EPOCHS
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"] == EPOCHS
    # Launched by the stage and killed + resumed, or launched like torchrun: the same thread count per
    # process (RECSYS_THREADS=2 for the training, shared by its 2 processes), so the same computation.
    for run in (straight, killed):
        assert json.loads((run / "config.json").read_text())["threads"] == 1, run
        assert json.loads((run / "metrics.json").read_text())["training"]["threads"] == 1, run
    assert json.loads((killed / "history.json").read_text())["valid"] == json.loads(
        (straight / "history.json").read_text())["valid"]
    for key, value in _weights(straight).items():
        assert torch.equal(value, _weights(killed)[key]), key
    assert np.array_equal(_predictions(killed), _predictions(straight))
    # Same global batches, other dropout/noise draws per process: the single-process model up to that noise.
    assert resumed["test"]["rmse"] == pytest.approx(single["test"]["rmse"], abs=0.02)
    assert abs(resumed["test"]["rmse"] - single["test"]["rmse"]) < 0.5 * abs(
        single["test"]["rmse"] - resumed["baselines"]["global_mean"]["test"]["rmse"])
    for name in ("metrics.json", "model.pt", "predictions.parquet", "recommendations.parquet", "learning_curve.png"):
        assert (killed / name).is_file(), name
    assert [p.name for p in killed.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_mf_in_two_processes_from_the_command_line_matches_one_process(split, tmp_path, capsys):
    one = train(split.path, tmp_path / "one", "mf", {"epochs": 3, "patience": 0}, RUN)
    assert main(["train", str(split.path), str(tmp_path / "two"), "--model", "mf", "--nproc", "2", "--epochs", "3",
                 "--patience", "0", "--recall-users", "50"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # MF's loss is a mean over equal halves of each batch: two processes take (nearly) the same steps.
    assert printed["test"]["rmse"] == pytest.approx(one["test"]["rmse"], abs=1e-4)
    assert np.allclose(_history(tmp_path / "two")["train_loss"], _history(tmp_path / "one")["train_loss"], atol=1e-4)


def test_a_diverging_loss_stops_every_process_with_one_sentence(split, tmp_path):
    with pytest.raises(RecsysError, match=r"diverged in epoch 1, batch \d+: the loss became .*lower --lr"):
        train(split.path, tmp_path / "run", "autoencoder", {"epochs": 3, "optimizer": "sgd", "lr": 50.0,
                                                             **{**AE, "noise": 0.0}}, RUN.replace(processes=2))


def test_bad_process_counts_are_refused_in_one_sentence(split, tmp_path, capsys):
    with pytest.raises(RecsysError, match="nproc must be at least 1 .*, got 0"):
        train(split.path, tmp_path / "run", "mf", None, RunSettings(processes=0))
    with pytest.raises(RecsysError, match="model ease is not trained by the loop and runs in one process"):
        train(split.path, tmp_path / "run", "ease", None, RunSettings(processes=2))
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
