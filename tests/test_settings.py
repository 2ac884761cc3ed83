"""Run settings apart from a model's options (recsys_core.settings): what they accept, which of them enter a
training's cache key, the spellings of the release before (run settings among the options, train()'s
keywords) still accepted with a deprecation line, and run folders written by that release resuming.
Capabilities declared in the protocols, never probed by a call."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from train_fixtures import make_rating_split

from recsys_core import models
from recsys_core.baselines import fit_baselines
from recsys_core.errors import RecsysError
from recsys_core.predictor import FoldIn, folds_in
from recsys_core.ranking import TensorScores, score_block
from recsys_core.settings import LEGACY_OPTIONS, RunSettings, split_legacy
from recsys_core.train import evaluate, train

OLD_RUN = Path(__file__).parent / "fixtures" / "run_settings_v0"
MF = {"epochs": 2, "patience": 0, "dim": 4}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    # the split of tests/fixtures/run_settings_v0 (its README.md)
    return make_rating_split(tmp_path_factory.mktemp("small") / "N3M", n_users=120, n_items=40, n_ratings=3000)


@pytest.mark.parametrize("given,message", [
    ({"k": 0}, "k must be at least 1 (items per user; an integer), got 0"),
    ({"recall_users": -1}, "recall_users must be at least 0"),
    ({"eval_batch_size": 2.5}, "eval_batch_size must be at least 1 (rows per evaluation batch; an integer), got 2.5"),
    ({"processes": 0}, "nproc must be at least 1 (processes training one model; an integer), got 0"),
    ({"threads": -2}, "threads must be a positive integer or 0"),
    ({"resume": "yes"}, "resume must be true, false or 'auto', got 'yes'"),
    ({"amp": "on"}, "amp must be true or false, got 'on'"),
    ({"device": 0}, "device must be cpu, cuda, cuda:N or auto, got 0"),
])
def test_bad_settings_are_one_sentence(given, message):
    with pytest.raises(RecsysError) as err:
        RunSettings(**given)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_no_model_option_is_a_run_setting():
    for name, registration in models.catalogue().items():
        assert not set(registration.options.names()) & set(LEGACY_OPTIONS), name


def test_a_setting_enters_the_cache_key_only_where_it_changes_what_the_run_writes():
    base = RunSettings(device="cpu", k=10)
    assert base.cache_params() == {"k": 10, "device": "cpu"}  # what the flow's keys have always held
    # threads, concurrency, resuming and the evaluation batch change the time a run takes, not its files
    assert base.replace(threads=1, concurrent=3, resume="auto", eval_batch_size=64).cache_params() == \
        base.cache_params()
    assert base.replace(k=20).cache_params()["k"] == 20  # the written top-K and the @K metrics
    assert base.replace(recall_users=0).cache_params()["recall_users"] == 0
    assert base.replace(recall_users=5000).cache_params() == base.cache_params()  # the default: no new key
    assert "amp" not in base.replace(amp=False).cache_params()  # ignored on the CPU
    assert base.replace(device="cuda", amp=False).cache_params()["amp"] is False
    assert base.replace(processes=2).cache_params()["nproc"] == 2


def test_the_flows_run_settings_give_the_keys_of_the_release_before():
    from flows.parameters import train_arguments

    options, settings = train_arguments(["mf"], {"mf": {"dim": 8}}, seed=0, k=10)["mf"]
    settings = settings.replace(device="cpu", threads=2)
    # before: params = {"model", **{"k": top_k, "seed": seed, **model_options}, "device": device}
    assert {**options, **settings.cache_params()} == {"k": 10, "seed": 0, "dim": 8, "device": "cpu"}


def test_run_settings_among_model_options_are_moved_with_a_deprecation_line():
    with pytest.warns(FutureWarning, match="k, nproc in model options is deprecated"):
        options, moved = split_legacy({"dim": 4, "k": 3, "nproc": 2})
    assert (options, moved) == ({"dim": 4}, {"k": 3, "processes": 2})
    from flows.parameters import train_arguments

    with pytest.warns(FutureWarning, match="recall_users in model_options of mf is deprecated"):
        options, settings = train_arguments(["mf"], {"mf": {"dim": 4, "recall_users": 0}}, seed=0, k=5)["mf"]
    assert options == {"seed": 0, "dim": 4} and (settings.k, settings.recall_users) == (5, 0)


def test_train_takes_options_and_settings_and_the_old_spellings_still_work(split, tmp_path):
    new = train(split.path, tmp_path / "new", "mf", MF, RunSettings(device="cpu", threads=1, k=3,
                                                                     recall_users=20))
    assert "recall@3" in new["test"]
    top = pl.read_parquet(tmp_path / "new" / "recommendations.parquet")
    assert top.group_by("user_id").len()["len"].max() == 3
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert (config["k"], config["recall_users"], config["nproc"], config["dim"]) == (3, 20, 1, 4)
    with pytest.warns(FutureWarning, match="k, recall_users in model options is deprecated"):
        in_options = train(split.path, tmp_path / "in-options", "mf", {**MF, "k": 3, "recall_users": 20},
                           RunSettings(device="cpu", threads=1))
    with pytest.warns(FutureWarning, match=r"train\(\.\.\., device=, dim=, epochs=, k=, patience=, recall_users=, "
                                           r"threads=\) is deprecated"):
        keywords = train(split.path, tmp_path / "keywords", "mf", device="cpu", threads=1, k=3, recall_users=20,
                         **MF)
    assert new["test"] == in_options["test"] == keywords["test"]
    with pytest.raises(RecsysError, match="model ease is not trained by the loop and runs in one process: "
                                          "leave nproc out"):
        train(split.path, tmp_path / "ease", "ease", None, RunSettings(processes=2))
    assert not (tmp_path / "ease").exists()


def test_a_run_folder_of_the_release_before_resumes_and_evaluates(split, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    config = json.loads((run / "config.json").read_text())
    assert config["k"] == 5 and config["nproc"] == 1  # run settings among its options, as that release wrote
    (run / "config.json").write_text(json.dumps({**config, "split_dir": str(split.path)}))
    assert evaluate(run, "cpu", split.path)["test"]["recall@5"] == pytest.approx(0.3483333333333333)
    resumed = train(split.path, run, "mf", {"epochs": 3}, RunSettings(device="cpu", resume=True))
    straight = train(split.path, tmp_path / "straight", "mf", {**MF, "epochs": 3},
                     RunSettings(device="cpu", threads=1, k=5, recall_users=20))
    # the saved k and recall_users and the saved threads were kept: exactly the uninterrupted run's result
    assert resumed["training"]["threads"] == 1 and resumed["training"]["epochs_done"] == 3
    assert resumed["test"] == straight["test"] and "recall@5" in resumed["test"]


def test_capabilities_are_declared_not_probed(split, tmp_path, monkeypatch):
    from recsys_core.serving.model_access import ServableModel

    assert not models.create("autorec-item").folds_in() and models.create("autorec-user").folds_in()
    assert not models.create("mf", squash=True).folds_in() and isinstance(models.create("mf"), FoldIn)
    assert not isinstance(models.create("mlp"), FoldIn)

    def no_trial(*_):
        raise AssertionError("fold_in was called to find out whether the model folds in")

    run = tmp_path / "mf"
    train(split.path, run, "mf", MF, RunSettings(device="cpu", threads=1, recall_users=20))
    monkeypatch.setattr(models.get("mf").estimator, "fold_in", no_trial)
    served = ServableModel(run)
    assert served.can_fold_in and folds_in(served.estimator)
    assert isinstance(served.estimator, TensorScores)
    baseline = fit_baselines(served.data.train)["user_item_bias"]
    assert not isinstance(baseline, TensorScores)
    rows = np.arange(3)
    assert np.allclose(score_block(baseline, rows).numpy(), baseline.score_rows(rows))
