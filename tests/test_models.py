"""Models: the masked loss, the sparse/gathered autoencoder paths, and every model against the baselines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from quality_bars import metrics_violations
from train_fixtures import make_leave_one_out_split, make_rating_split

from recsys_core.errors import RecsysError
from recsys_core.interactions import row_batch
from recsys_core.losses import masked_mse, observed_mse
from recsys_core.models import catalogue, resolve_options
from recsys_core.models.autoencoder import ACTIVATIONS, DeepAutoencoder
from recsys_core.settings import RunSettings
from recsys_core.train import train

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def rating_split(tmp_path_factory):
    return make_rating_split(tmp_path_factory.mktemp("rating") / "N3M")


@pytest.fixture(scope="module")
def loo_split(tmp_path_factory):
    return make_leave_one_out_split(tmp_path_factory.mktemp("loo") / "leave-one-out")


def test_masked_mse_sums_over_observed_and_divides_by_their_number():
    target = torch.tensor([[5.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
    prediction = torch.tensor([[4.0, 9.0, 3.5], [7.0, 7.0, 2.0]])
    # observed: (0,0) err 1, (0,2) err 0.25, (1,2) err 1 -> (1 + 0.25 + 1) / 3; unobserved entries ignored
    assert masked_mse(prediction, target).item() == pytest.approx(2.25 / 3)
    observed = target != 0
    assert observed_mse(prediction[observed], target[observed]).item() == pytest.approx(2.25 / 3)
    assert masked_mse(prediction, torch.zeros(2, 3)).item() == 0.0  # no observed entry: no NaN


def _random_csr(n_rows, n_cols, density, seed):
    m = sp.random(n_rows, n_cols, density, format="csr", dtype=np.float32, random_state=seed)
    m.data = np.ceil(m.data * 5).astype(np.float32)
    m.sort_indices()
    return m


@pytest.mark.parametrize("constrained", [False, True])
def test_autoencoder_sparse_and_gathered_paths_equal_the_dense_forward(constrained):
    torch.manual_seed(0)
    m = _random_csr(7, 40, 0.2, seed=1)
    model = DeepAutoencoder(40, [16, 8], "selu", dropout=0.0, constrained=constrained).eval()
    batch = row_batch(m, np.array([5, 0, 3]))
    dense_in = torch.from_numpy(m[[5, 0, 3]].toarray())
    assert torch.equal(batch.dense(40), dense_in)
    full = model(dense_in)
    hidden = model.decode_hidden(model.encode_sparse(batch.cols, batch.values, batch.offsets))
    torch.testing.assert_close(model.output_full(hidden), full, rtol=1e-5, atol=1e-5)
    gathered = model.output_at(hidden, batch.owner, batch.cols)
    torch.testing.assert_close(gathered, full[batch.owner, batch.cols], rtol=1e-5, atol=1e-5)
    cols = torch.tensor([3, 39, 0])
    torch.testing.assert_close(model.output_columns(hidden, cols), full[:, cols], rtol=1e-5, atol=1e-5)
    # the gathered loss is the paper's masked loss on the dense output
    torch.testing.assert_close(observed_mse(gathered, batch.values), masked_mse(full, dense_in))


def test_constrained_decoder_shares_the_encoder_weights():
    tied = DeepAutoencoder(30, [8, 4], constrained=True)
    free = DeepAutoencoder(30, [8, 4], constrained=False)
    weights = lambda m: sum(p.numel() for p in m.parameters() if p.dim() == 2)  # noqa: E731
    assert weights(free) == 2 * weights(tied)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_gives_finite_outputs(activation):
    model = DeepAutoencoder(12, [6], activation, last_layer_activation=True)
    assert torch.isfinite(model(torch.rand(3, 12) * 5)).all()


def test_unknown_options_are_refused_with_the_list_of_valid_ones():
    with pytest.raises(RecsysError, match="has no option"):
        resolve_options("mf", {"layers": [3]})
    with pytest.raises(RecsysError, match="option activation must be one of selu"):
        resolve_options("autoencoder", {"activation": "softplus"})
    assert resolve_options("autoencoder", {"preset": "NF"}).layers == (512, 512, 1024)


# models that combine other runs (the blend: tests/test_blend.py) are not fitted on a split alone
STANDALONE = {name: r for name, r in catalogue().items() if not getattr(r.estimator, "needs_members", False)}
RATING_MODELS = [name for name, r in STANDALONE.items() if r.estimator.rating_model]
RANKING_MODELS = [name for name, r in STANDALONE.items() if not r.estimator.rating_model]
# Epochs of the ranking models trained by the loop on the leave-one-out fixture (no valid part there, so no early
# stopping: the last epoch is kept). Their defaults (20, 60, 20) cost 17-50 s of CPU each here; these epochs reach
# the bar with room to spare (tests/quality_bars.py has the measurements).
RANKING_EPOCHS = {"gmf": 8, "ncf-mlp": 20, "neumf": 8}
QUICK = RunSettings(recall_users=0)  # no full-catalogue Recall@K: the bars read RMSE, HR and NDCG


@pytest.mark.parametrize("model", RATING_MODELS)
def test_rating_model_with_defaults_nears_the_oracle_and_beats_user_item_bias(rating_split, tmp_path, model):
    """At its defaults, on data drawn from a known model: within the model's stated factor of the oracle's RMSE
    and clearly below the strongest baseline (tests/quality_bars.py states and explains each bar)."""
    metrics = train(rating_split.path, tmp_path / model, model, None, QUICK)
    assert metrics_violations(model, metrics, rating_split.oracle_test_rmse) == []
    assert metrics["beaten_by"] == []
    assert math.isfinite(metrics["test"]["mae"])


def test_the_rating_bar_fails_a_model_that_did_not_learn(rating_split, tmp_path):
    """The bar can fail: an MF barely moved from its initialisation (one epoch at lr 1e-6) is refused."""
    metrics = train(rating_split.path, tmp_path / "mf", "mf", {"epochs": 1, "lr": 1e-6}, QUICK)
    assert metrics_violations("mf", metrics, rating_split.oracle_test_rmse) != []


@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.slow) if m == "ncf-mlp" else m
                                   for m in RANKING_MODELS])  # ncf-mlp: 20 epochs, ~20 s of CPU; CI runs it
def test_ranking_model_beats_most_popular_by_the_stated_margin(loo_split, tmp_path, model):
    options = {"epochs": RANKING_EPOCHS[model]} if model in RANKING_EPOCHS else {}
    metrics = train(loo_split.path, tmp_path / model, model, options, QUICK)
    assert metrics_violations(model, metrics) == []
    assert metrics["beaten_by"] == []
    assert "rmse" not in metrics["test"]  # interaction scores are not ratings


def test_denoising_loss_on_dropped_ratings_only_trains(rating_split, tmp_path):
    metrics = train(rating_split.path, tmp_path / "dae", "autoencoder",
                    {"epochs": 3, "noise": 0.5, "noise_loss": "dropped"}, QUICK)
    history = json.loads((tmp_path / "dae" / "history.json").read_text())
    # it learns: the loss on the dropped ratings and the valid RMSE fall epoch after epoch (a loss on no rating,
    # or on the kept ones only, would leave the network unable to predict what it cannot see)
    assert history["train_loss"] == sorted(history["train_loss"], reverse=True), history["train_loss"]
    assert history["valid"] == sorted(history["valid"], reverse=True), history["valid"]
    assert metrics["test"]["rmse"] < metrics["baselines"]["global_mean"]["test"]["rmse"]
    with pytest.raises(RecsysError, match="noise_loss"):
        resolve_options("autoencoder", {"noise_loss": "some"})


def test_row_centering_predicts_residuals_and_adds_the_user_mean_back(rating_split, tmp_path):
    from recsys_core.models.autoencoder import shrunk_means
    from recsys_core.train import load_run

    run = tmp_path / "centered"
    metrics = train(rating_split.path, run, "autoencoder", {"epochs": 2, "layers": [16], "center": "row"}, QUICK)
    assert metrics["test"]["rmse"] < metrics["baselines"]["global_mean"]["test"]["rmse"]
    _, data, estimator = load_run(run)
    train_matrix = data.train
    owners = np.repeat(np.arange(train_matrix.shape[0]), np.diff(train_matrix.indptr))
    offset = shrunk_means(owners, train_matrix.data, train_matrix.shape[0], float(train_matrix.data.mean()))
    # the network's input holds residuals from the shrunk user mean
    np.testing.assert_allclose(estimator.matrix.data, train_matrix.data - offset[owners], atol=1e-6)
    # every prediction path adds the same offset back: pairs, full rows, and a new user with a known user's ratings
    rows = np.array([0, 3, 7])
    scores = estimator.score_rows(rows)
    cols = np.array([1, 5, 9])
    pairs = estimator.predict_pairs(np.repeat(rows, 3), np.tile(cols, 3))
    np.testing.assert_allclose(pairs, scores[:, cols].reshape(-1), rtol=1e-5, atol=1e-5)
    start, end = train_matrix.indptr[3], train_matrix.indptr[4]
    new_user = estimator.fold_in(train_matrix.indices[start:end], train_matrix.data[start:end])
    np.testing.assert_allclose(new_user, scores[1], rtol=1e-5, atol=1e-5)
    # a user with no ratings at all is scored around the global mean, a heavy rater around their own mean
    assert abs(shrunk_means(np.zeros(0, np.int64), np.zeros(0), 1, 3.5)[0] - 3.5) < 1e-6
    with pytest.raises(RecsysError, match="center"):
        resolve_options("autoencoder", {"center": "user-mean"})
    assert resolve_options("autoencoder", {"preset": "N3M"}).layers == (128, 256, 256)


def test_presets_are_the_papers_whole_configuration():
    paper = resolve_options("autoencoder", {"preset": "N3M"}).to_dict()
    assert (paper["layers"], paper["dropout"], paper["activation"]) == ([128, 256, 256], 0.65, "selu")
    assert (paper["refeed"], paper["center"], paper["output_bias"], paper["weight_decay"]) == (1, "none", "zero", 0.0)
    assert (paper["optimizer"], paper["lr"], paper["momentum"]) == ("sgd", 0.005, 0.9)
    assert paper["lr_milestones"] == [24, 36, 48, 66, 72]
    assert resolve_options("autoencoder", {"preset": "NF"}).layers == (512, 512, 1024)
    assert resolve_options("autoencoder", {"preset": "NF", "epochs": 12}).epochs == 12  # options win


def test_output_bias_starts_at_the_shrunk_item_mean():
    """An item with a single 5-star rating must not start above a well-rated popular item: unshrunk, it
    did, and stayed at the top of every user's list."""
    from types import SimpleNamespace

    from recsys_core.models.autoencoder import COLUMN_MEAN_SHRINK, RowsEstimator

    # item 0: 400 ratings of 4 and 5 (mean 4.5); item 1: one rating of 5; item 2: 400 ratings of 3; item 3: none.
    users = np.arange(400)
    rows = np.r_[users, 0, users]
    cols = np.r_[np.zeros(400, np.int64), 1, np.full(400, 2)]
    values = np.r_[np.tile([4.0, 5.0], 200), 5.0, np.full(400, 3.0)].astype(np.float32)
    train_matrix = sp.csr_matrix((values, (rows, cols)), shape=(400, 4))
    data = SimpleNamespace(train=train_matrix, train_by_item=train_matrix.T.tocsr(), meta={})
    config = resolve_options("autoencoder", {"center": "none", "output_bias": "mean", "layers": [4]})
    estimator = RowsEstimator(config, name="autoencoder")
    estimator.bind(data)
    bias = estimator.model.dec_b[0].detach().numpy()
    overall = float(values.mean())
    expected = [(1800 + COLUMN_MEAN_SHRINK * overall) / (400 + COLUMN_MEAN_SHRINK),
                (5 + COLUMN_MEAN_SHRINK * overall) / (1 + COLUMN_MEAN_SHRINK),
                (1200 + COLUMN_MEAN_SHRINK * overall) / (400 + COLUMN_MEAN_SHRINK), overall]
    np.testing.assert_allclose(bias, expected, rtol=1e-5)
    assert bias[0] > bias[1] and abs(bias[1] - overall) < 0.1


@pytest.mark.parametrize("model, center", [("autoencoder", "row"), ("autorec-item", "bias")])
def test_predictions_blend_toward_the_biases_by_the_users_train_count(rating_split, tmp_path, model, center):
    """bias_shrink S: prediction = n/(n+S) * network + S/(n+S) * (mu + b_u + b_i), n the user's training
    ratings, in every prediction path; center=bias feeds residuals from those biases (issue 14.3)."""
    from recsys_core.baselines import UserItemBias
    from recsys_core.train import load_run

    run = tmp_path / model
    train(rating_split.path, run, model,
          {"epochs": 2, "layers": [16], "center": center, "bias_shrink": 5.0, "blend_on_valid": False}, QUICK)
    _, data, estimator = load_run(run)
    baseline = UserItemBias(data.train)
    counts = np.diff(data.train.indptr)
    rows = np.array([0, 3, 7, int(np.argmin(counts))])
    cols = np.array([1, 5, 9])
    users, items = np.repeat(rows, len(cols)), np.tile(cols, len(rows))
    blended = estimator.predict_pairs(users, items)
    scores = estimator.score_rows(rows)
    np.testing.assert_allclose(blended, scores[:, cols].reshape(-1), rtol=1e-5, atol=1e-5)
    estimator._prepare_blend(data, 0.0)
    network = estimator.predict_pairs(users, items)
    biases = baseline.predict_pairs(users, items)
    weight = counts[users] / (counts[users] + 5.0)
    np.testing.assert_allclose(blended, weight * network + (1 - weight) * biases, rtol=1e-5, atol=1e-5)
    assert np.abs(network - biases).max() > 1e-3  # the network is not the biases
    if center == "bias":  # the network's input: residuals from mu + b_u + b_i (items x users here)
        by_item = data.train_by_item
        owners = np.repeat(np.arange(by_item.shape[0]), np.diff(by_item.indptr))
        np.testing.assert_allclose(estimator.matrix.data,
                                   by_item.data - baseline.predict_pairs(by_item.indices, owners), atol=1e-5)
    else:  # a new user with a known user's ratings gets that user's blended scores
        estimator._prepare_blend(data, 5.0)
        start, end = data.train.indptr[3], data.train.indptr[4]
        new_user = estimator.fold_in(data.train.indices[start:end], data.train.data[start:end])
        np.testing.assert_allclose(new_user, scores[1], rtol=1e-4, atol=1e-4)
    with pytest.raises(RecsysError, match="bias_shrink"):
        resolve_options(model, {"bias_shrink": -1})


@pytest.mark.parametrize("model", ["autoencoder", "autorec-user"])
def test_the_blend_is_chosen_on_valid_and_travels_with_the_weights(rating_split, tmp_path, model):
    """blend_on_valid: after training, S is the grid point with the lowest valid RMSE (checked against the
    blend recomputed here at every point), recorded in metrics.json and restored by load_run (issue 17)."""
    from recsys_core.evaluation import rmse
    from recsys_core.interactions import csr_triplets, rating_range
    from recsys_core.models.autoencoder import RowsEstimator
    from recsys_core.train import load_run

    run = tmp_path / model
    metrics = train(rating_split.path, run, model, {"epochs": 3, "layers": [16]}, QUICK)
    chosen = metrics["training"]["bias_blend"]["bias_shrink"]
    _, data, estimator = load_run(run)
    assert estimator.bias_shrink == chosen
    users, items, values = csr_triplets(data.valid)
    low, high = rating_range(data.meta)
    at = {}
    for shrink in RowsEstimator.BLEND_GRID:
        estimator._prepare_blend(data, shrink)
        at[shrink] = rmse(np.clip(estimator.predict_pairs(users, items), low, high), values)
    best = min(at, key=lambda k: (at[k], k))
    assert chosen == best and at[best] == pytest.approx(metrics["training"]["bias_blend"]["valid_rmse"], abs=1e-6)
    assert metrics["valid"]["rmse"] == pytest.approx(at[best], abs=1e-6)


def test_i_autorec_scores_every_item_from_codes_that_follow_the_weights(rating_split):
    """I-AutoRec's rows of scores come from every item's code made once (not once per block of users) and
    made again after the weights change: each row equals predict_pairs before and after a step-like edit."""
    from recsys_core import models
    from recsys_core.interactions import load_split_data

    data = load_split_data(rating_split.path)
    estimator = models.create("autorec-item", epochs=1, layers=[16])
    estimator.fit(data)
    rows = np.array([0, 7, 31])
    n_items = data.train.shape[1]

    def check():
        pairs = estimator.predict_pairs(np.repeat(rows, n_items), np.tile(np.arange(n_items), len(rows)))
        np.testing.assert_allclose(estimator.score_rows(rows), pairs.reshape(len(rows), n_items),
                                   rtol=1e-5, atol=1e-5)

    check()
    first = estimator.score_rows(rows)
    assert np.array_equal(estimator.score_rows(rows), first)   # the second call reads the same codes
    with torch.no_grad():
        for p in estimator.model.parameters():   # an optimizer step writes the weights in place
            p.mul_(1.5)
    check()
    assert not np.allclose(estimator.score_rows(rows), first)


@pytest.mark.parametrize("center", ["bias", "row"])
def test_the_compiled_blend_of_whole_rows_equals_the_torch_one_to_the_bit(center):
    """Rows of scores are blended toward mu + b_u + b_i in one compiled pass (contiguous float32 on CPU);
    the torch passes (taken here through a non-contiguous buffer) give the same float32 numbers."""
    from types import SimpleNamespace

    from recsys_core.models.autoencoder import RowsEstimator

    rng = np.random.default_rng(3)
    n_users, n_items = 50, 70
    fake = SimpleNamespace(center=center, bias_shrink=20.0, bias_mean=np.float32(3.6123),
                           bias_user=rng.normal(0, 0.4, n_users).astype(np.float32),
                           bias_item=rng.normal(0, 0.4, n_items).astype(np.float32),
                           network_weight=rng.random(n_users).astype(np.float32))
    fake._biases = lambda users, items: RowsEstimator._biases(fake, users, items)
    users = np.array([4, 0, 49, 17, 4])
    scores = torch.from_numpy(rng.normal(0, 1, (len(users), n_items)).astype(np.float32))
    compiled = RowsEstimator._blend(fake, users, None, scores.clone())
    strided = torch.empty(n_items, len(users)).t()
    strided.copy_(scores)
    assert not strided.is_contiguous()
    torch_passes = RowsEstimator._blend(fake, users, None, strided)
    assert torch.equal(compiled, torch_passes)
    assert not torch.equal(compiled, scores)
