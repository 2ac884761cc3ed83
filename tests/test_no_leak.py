"""No training path reads the held-out parts (issue 14, part 1): a model's weights depend on the TRAIN part
only; validation may read valid (early stopping, model selection), and nothing reads test (or the test's
sampled negatives) before training ends. Checked for every registered model, so a new model is covered
without an edit here (the baselines are fitted from the train matrix alone: ``fit_baselines(data.train)``).

Two ways, because a leak can hide from either one:
- an instrumented split whose ``test`` and ``negatives`` raise when read: fitting must not touch them;
- the same train part with other held-out valid/test items: the weights after the last epoch (the
  checkpoint, not the valid-selected best) must come out identical.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from train_fixtures import make_rating_split

from recsys_core import models
from recsys_core.estimators import TorchEstimator
from recsys_core.interactions import load_split_data
from recsys_core.training_loop import CHECKPOINT

# every model small and short: two epochs (so a leak through the first validation would show in the second),
# no early stopping, small networks
SMALL = {"autoencoder": dict(layers=[16]), "autorec-item": dict(layers=[16]), "autorec-user": dict(layers=[16]),
         "als": dict(factors=8, iterations=2), "neumf": dict(dim=8, hidden=[16, 8]), "gmf": dict(dim=8),
         "ncf-mlp": dict(dim=8, hidden=[16, 8])}
LOOP = dict(epochs=2, patience=0, seed=4)


class HeldOutRead(AssertionError):
    pass


class TrainOnly:
    """A split whose held-out test part and its sampled negatives raise when read (valid stays readable:
    validation may use it)."""

    def __init__(self, data):
        self._data = data

    def __getattr__(self, name):
        if name in ("test", "negatives"):
            raise HeldOutRead(f"training read data.{name}")
        return getattr(self._data, name)


def _options(name: str) -> dict:
    registration = models.get(name)
    given = dict(SMALL.get(name, {}))
    if issubclass(registration.estimator, TorchEstimator):
        given.update(LOOP)
    return given


def _other_held_out(data, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """New valid and test parts: other (user, item) pairs outside train, other ratings, same sizes."""
    rng = np.random.default_rng(seed)
    n_users, n_items = data.train.shape
    taken = set((data.train.indices.astype(np.int64)
                 + np.repeat(np.arange(n_users), np.diff(data.train.indptr)) * n_items).tolist())
    parts = []
    for old in (data.valid, data.test):
        keys: list[int] = []
        while len(keys) < old.nnz:
            key = int(rng.integers(0, n_users * n_items))
            if key not in taken:
                taken.add(key)
                keys.append(key)
        keys_array = np.array(keys, np.int64)
        ratings = rng.integers(1, 6, len(keys)).astype(np.float32)
        part = sp.csr_matrix((ratings, (keys_array // n_items, keys_array % n_items)), shape=(n_users, n_items))
        part.sort_indices()
        parts.append(part)
    return parts[0], parts[1]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """(data, the same train with other valid/test items)."""
    split = make_rating_split(tmp_path_factory.mktemp("leak") / "N3M", n_users=150, n_items=60, n_ratings=4000,
                              seed=2)
    data = load_split_data(split.path)
    valid, test = _other_held_out(data, seed=9)
    assert (valid != data.valid).nnz and (test != data.test).nnz
    other = dataclasses.replace(data, valid=valid, test=test)
    return data, other


def _fitted_state(name: str, data, run_dir) -> dict:
    """The weights after the last epoch (loop models: the checkpoint; closed-form models: their state)."""
    estimator = models.create(name, **_options(name))
    estimator.fit(TrainOnly(data), run_dir=run_dir)
    if isinstance(estimator, TorchEstimator):
        return torch.load(run_dir / CHECKPOINT, weights_only=True)["model"]
    return estimator.state_dict()


def test_the_guard_catches_a_read_of_the_held_out_parts(splits):
    guarded = TrainOnly(splits[0])
    assert guarded.valid.nnz > 0 and guarded.train.nnz > 0
    with pytest.raises(HeldOutRead):
        _ = guarded.test
    with pytest.raises(HeldOutRead):
        _ = guarded.negatives


# the blend is fitted on valid by design, over other runs (tests/test_blend.py)
@pytest.mark.parametrize("name", [n for n in models.names()
                                  if not getattr(models.get(n).estimator, "needs_members", False)])
def test_training_reads_neither_test_nor_valid_to_fit(splits, tmp_path, name):
    torch.set_num_threads(1)  # bitwise-reproducible CPU kernels
    data, other = splits
    first = _fitted_state(name, data, tmp_path / "a")
    second = _fitted_state(name, other, tmp_path / "b")
    assert set(first) == set(second)
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=1e-7, msg=f"{name}: {key} differs")

