"""What a model reaches on data from the project's own generator, through the real stages
(synth -> convert -> split -> matrices -> train), measured against the generator's oracle."""

from __future__ import annotations

import pytest
import torch

from recsys_core.convert import convert
from recsys_core.matrices import build_matrices, load_split
from recsys_core.settings import RunSettings
from recsys_core.split import split
from recsys_core.synth import generate_netflix, load_oracle
from recsys_core.train import train

torch.set_num_threads(2)


# Heavy (a 1M-rating sample through every stage, MF to convergence): out of the fast lane (README), run by CI.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def random_split(tmp_path_factory):
    """Scale 0.01 (4,802 customers, 1,777 movies, ~1M ratings), 10% of ratings held out as test."""
    root = tmp_path_factory.mktemp("quality")
    # the plain profile: one low-rank model plus noise, which biased MF can learn to near the oracle (the "real"
    # profile's taste clusters and newcomers are not low-rank: MF 0.919 vs its oracle 0.842 there)
    generate_netflix(root / "raw", scale=0.01, seed=0, profile="plain")
    convert(root / "raw", root / "converted")
    split(root / "converted", root / "splits", "random", fraction=0.1, valid_fraction=0.1, seed=0)
    build_matrices(root / "splits", root / "matrices")
    data = load_split(root / "matrices" / "random")
    test = data.test.tocoo()
    oracle = load_oracle(root / "raw")
    oracle_rmse = oracle.rmse(data.user_ids[test.row], data.item_ids[test.col], test.data)
    return root / "matrices" / "random", oracle_rmse


def test_biased_mf_with_defaults_gets_within_5_percent_of_the_oracle(random_split, tmp_path):
    split_dir, oracle_rmse = random_split
    metrics = train(split_dir, tmp_path / "mf", "mf", None, RunSettings(recall_users=0))
    rmse = metrics["test"]["rmse"]
    assert 0.80 < oracle_rmse < 0.90  # the generator's documented noise level
    assert rmse <= 1.05 * oracle_rmse, (rmse, oracle_rmse)
    assert metrics["beaten_by"] == []
    assert rmse < metrics["baselines"]["user_item_bias"]["test"]["rmse"]
