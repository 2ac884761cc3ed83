"""The blend: the predictor contract over two member runs, its record in metrics.json, and one sentence for
missing members."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from predictor_contract import ModelContract
from train_fixtures import make_rating_split

from recsys_core import models
from recsys_core.errors import RecsysError
from recsys_core.interactions import load_split_data
from recsys_core.settings import RunSettings
from recsys_core.train import train

MEMBERS = {"mf": {"epochs": 3, "dim": 4}, "knn-item": {"neighbours": 10}}
RUN = RunSettings(recall_users=20, threads=2)


def _members(split_path: Path, runs: Path) -> None:
    for name, options in MEMBERS.items():
        if not (runs / name / "model.pt").exists():
            train(split_path, runs / name, name, options, RUN)


class TestBlend(ModelContract):
    model, options = "blend", {}

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls, tmp_path_factory):
        torch.set_num_threads(2)
        root = Path(tmp_path_factory.mktemp("blend"))
        split = make_rating_split(root / "split", n_users=120, n_items=90, n_ratings=4000)
        _members(split.path, root / "runs")
        return load_split_data(split.path)

    def fit(self, data):
        estimator = models.create("blend", device="cpu")
        estimator.fit(data, run_dir=Path(data.path).parent / "runs" / "blend")
        return estimator


def test_blend_run_records_weights_and_gain_and_beats_its_members_on_valid(tmp_path):
    split = make_rating_split(tmp_path / "split", n_users=300, n_items=80, n_ratings=12000)
    _members(split.path, tmp_path / "runs")
    metrics = train(split.path, tmp_path / "runs" / "blend", "blend", None, RUN)
    blend = metrics["training"]["blend"]
    assert sorted(m["member"].split(" ")[0] for m in blend["members"]) == ["knn-item", "mf"]
    best_valid = min(m["valid_rmse"] for m in blend["members"])
    assert blend["cv_rmse"] <= best_valid and blend["valid_gain_cross_validated"] >= 0
    assert blend["test_rmse"] == pytest.approx(metrics["test"]["rmse"], abs=1e-5)
    assert blend["test_gain_over_best_member"] == pytest.approx(
        min(m["test_rmse"] for m in blend["members"]) - blend["test_rmse"], abs=1e-5)
    assert blend["cv_rmse"] == min(blend["cv_rmse_without_count_features"], blend["cv_rmse_with_count_features"])
    assert len(blend["weights"]) == (2 + 2 + 2 * 2 if blend["count_features"] else 2)
    plain = train(split.path, tmp_path / "runs" / "blend-plain", "blend",
                  {"count_features": False, "members": "mf,knn-item"}, RUN)
    assert not plain["training"]["blend"]["count_features"] and len(plain["training"]["blend"]["weights"]) == 2


def test_missing_members_are_one_sentence(tmp_path):
    split = make_rating_split(tmp_path / "split", n_users=60, n_items=30, n_ratings=1500)
    (tmp_path / "runs").mkdir()
    with pytest.raises(RecsysError, match=r"^the blend's member\(s\) svdpp have no finished run on .* train them"):
        train(split.path, tmp_path / "runs" / "blend", "blend", {"members": "svdpp"})
    with pytest.raises(RecsysError, match="a blend needs finished runs of rating models"):
        train(split.path, tmp_path / "runs" / "blend", "blend")
    assert not (tmp_path / "runs" / "blend" / "model.pt").exists()
