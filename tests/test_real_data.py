"""Real data decides (issue 17): every model's DEFAULTS trained on real MovieLens (ml-latest-small, 100,004
ratings) and held to the targets on its test parts, against the project's own baselines on the same split:

* chrono (per user by time, 80/10/10): every rating model beats user_item_bias by >= 1% RMSE, and the best
  reaches Surprise SVD++'s 0.8941 there (fitted on the same kind of split, train only);
* random (10% test, 5% valid): every rating model beats user_item_bias, and the best reaches SVD++'s 0.8916;
* leave-one-out (99 sampled negatives): every ranking model beats most_popular by >= 20% HR@10 and NDCG@10.

Valid parts are used for early stopping and the row models' blend only; nothing here was tuned on test (the
defaults were chosen on the valid parts, docs/train.md). The data is not in the repository: it is read from
``../shared/data/ml-latest-small`` beside the checkout (or ``RECSYS_REAL_DATA``), and the tests skip with that
reason when it is absent."""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from recsys_core import models
from recsys_core.convert import convert
from recsys_core.matrices import build_matrices
from recsys_core.settings import RunSettings
from recsys_core.split import split
from recsys_core.train import train

REAL = Path(os.environ.get("RECSYS_REAL_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
            / "ml-latest-small").resolve()
pytestmark = [
    pytest.mark.real_data, pytest.mark.slow,
    pytest.mark.skipif(not (REAL / "ratings.csv").is_file(),
                       reason=f"real MovieLens data not found at {REAL} (set RECSYS_REAL_DATA to ml-latest-small)"),
]

SVDPP_CHRONO, SVDPP_RANDOM = 0.8941, 0.8916  # Surprise SVD++ on these splits (issue 17, fitted on train only)
CHRONO_MARGIN = 0.01
RANKING_MARGIN = 0.20
# models that combine other runs instead of fitting the data alone are trained by the flow after their members
STANDALONE = [name for name in models.names() if not getattr(models.get(name).estimator, "needs_members", False)]
RATING = [n for n in STANDALONE if models.get(n).estimator.rating_model]
RANKING = [n for n in STANDALONE if not models.get(n).estimator.rating_model]


@pytest.fixture(scope="module")
def real_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml-latest-small")
    convert(REAL, root / "converted")
    folders = {}
    for protocol in ("chrono", "random", "leave-one-out"):
        split(root / "converted", root / "splits" / protocol, protocol)
        build_matrices(root / "splits" / protocol, root / "matrices" / protocol)
        folders[protocol] = root / "matrices" / protocol / protocol
    return folders


# Two trainings at a time, one torch thread each: these models' steps are too small for two threads to pay on
# one (a quiet 2-core machine: the whole module in 289 s one training at a time with two threads each), and the
# slowest go first so that the two workers finish together.
SLOWEST_FIRST = ["neumf", "ncf-mlp", "autorec-item", "knn-item", "gmf", "autorec-user"]


def _results(real_splits, tmp_path_factory, protocol: str, names: list[str]) -> dict[str, dict]:
    runs = tmp_path_factory.mktemp(f"runs-{protocol}")
    order = sorted(names, key=lambda n: SLOWEST_FIRST.index(n) if n in SLOWEST_FIRST else len(SLOWEST_FIRST))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {name: pool.submit(train, real_splits[protocol], runs / name, name, None,
                                     RunSettings(threads=1)) for name in order}
        return {name: futures[name].result() for name in names}


@pytest.fixture(scope="module")
def chrono_runs(real_splits, tmp_path_factory):
    return _results(real_splits, tmp_path_factory, "chrono", RATING)


@pytest.fixture(scope="module")
def random_runs(real_splits, tmp_path_factory):
    return _results(real_splits, tmp_path_factory, "random", RATING)


@pytest.fixture(scope="module")
def loo_runs(real_splits, tmp_path_factory):
    return _results(real_splits, tmp_path_factory, "leave-one-out", RANKING)


def _table(runs: dict, metric: str, baseline: str) -> str:
    return json.dumps({n: (round(m["test"][metric], 4), round(m["baselines"][baseline]["test"][metric], 4))
                       for n, m in runs.items()})


def test_chrono_every_rating_model_beats_the_biases_by_one_percent(chrono_runs):
    for name, metrics in chrono_runs.items():
        bias = metrics["baselines"]["user_item_bias"]["test"]["rmse"]
        assert metrics["test"]["rmse"] < (1 - CHRONO_MARGIN) * bias, (name, _table(chrono_runs, "rmse",
                                                                                    "user_item_bias"))
    assert min(m["test"]["rmse"] for m in chrono_runs.values()) <= SVDPP_CHRONO, _table(chrono_runs, "rmse",
                                                                                         "user_item_bias")


def test_random_every_rating_model_beats_the_biases(random_runs):
    for name, metrics in random_runs.items():
        bias = metrics["baselines"]["user_item_bias"]["test"]["rmse"]
        assert metrics["test"]["rmse"] < bias, (name, _table(random_runs, "rmse", "user_item_bias"))
    assert min(m["test"]["rmse"] for m in random_runs.values()) <= SVDPP_RANDOM, _table(random_runs, "rmse",
                                                                                         "user_item_bias")


def test_leave_one_out_every_ranking_model_beats_most_popular_by_a_fifth(loo_runs):
    for name, metrics in loo_runs.items():
        for metric in ("hr@10", "ndcg@10"):
            popular = metrics["baselines"]["most_popular"]["test"][metric]
            assert metrics["test"][metric] >= (1 + RANKING_MARGIN) * popular, (name, metric, _table(
                loo_runs, metric, "most_popular"))


def test_the_row_models_never_lose_to_the_biases_on_short_rows(chrono_runs):
    """The autoencoder and AutoRec fall back on the biases as a user's row gets short (blend chosen on
    valid): whatever the user's training count, their test RMSE stays within 0.5% of the biases' or below."""
    for name in ("autoencoder", "autorec-item", "autorec-user"):
        metrics = chrono_runs[name]
        mine = {row["bucket"]: row for row in metrics["buckets"]["test"]}
        bias = {row["bucket"]: row for row in metrics["baselines"]["user_item_bias"]["buckets"]["test"]}
        assert set(mine) == set(bias) and len(mine) >= 5, (name, mine)
        for bucket, row in mine.items():
            if not row.get("ratings") or row["ratings"] < 200:  # a few hundred ratings: differences below noise
                continue
            assert row["rmse"] <= 1.005 * bias[bucket]["rmse"], (name, row, bias[bucket])
