"""Estimators: how a model meets the data. Each registered model (``recsys_core.models``) is an
``Estimator`` subclass in its own module; this module holds what they share.

An estimator is made unfitted from its options (``Registration.create``) and then

- ``fit(data, run_dir=None, resume=False)`` binds it to one split (``SplitMatrices``) and fits it; returns a
  summary ({"history": per-epoch lists or None, ...});
- answers the ``Predictor`` questions (``recsys_core.predictor``): ``predict_pairs`` and ``score_rows``;
- ``state_dict()`` gives its fitted state (tensors and plain containers, ``torch.load(weights_only=True)``
  reads it back) and ``load(state, data)`` restores it on the same split.

Two ways to fit. ``TorchEstimator`` subclasses are trained by THE loop (``recsys_core.training_loop.fit``):
they build an ``nn.Module`` and answer ``n_batches``/``batches``/``losses``/``validate``. Models solved in
closed form or by their own sweeps (EASE, ALS) subclass ``Estimator`` and implement ``fit`` directly: no
optimizer, no epochs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ClassVar, Iterator, Protocol, runtime_checkable

import numpy as np
import torch

from recsys_core.distributed import local_part
from recsys_core.evaluation import rmse
from recsys_core.interactions import csr_triplets, rating_range
from recsys_core.losses import observed_mse
from recsys_core.matrices import SplitMatrices
from recsys_core.options import ModelOptions, option, options
from recsys_core.ranking import ScoreBounds
from recsys_core.settings import DEFAULTS as RUN_DEFAULTS
from recsys_core.settings import RunSettings
from recsys_core.training_loop import LoopOptions, uses_sparse_rows
from recsys_core.training_loop import fit as fit_loop


def data_dims(data: SplitMatrices) -> dict:
    """What a network's shape and start depend on: users, items, mean training rating, rating range."""
    return {"n_users": int(data.train.shape[0]), "n_items": int(data.train.shape[1]),
            "global_mean": float(data.train.data.mean()), "rating_range": rating_range(data.meta)}


class Estimator:
    """Base of every model. Subclasses set the class attributes and implement fit/predict/state.

    What a model can do beyond the ``Predictor`` questions is declared, never found out by calling: the
    capability protocols of ``recsys_core.predictor`` (``FoldIn`` with ``folds_in()``, ``ItemVectors``...)
    and ``recsys_core.ranking.TensorScores`` (every estimator scores rows as a tensor on its device)."""

    family: ClassVar[str] = ""              # how it meets the data, recorded in the run's config.json
    rating_model: ClassVar[bool] = True     # predicts ratings (RMSE applies) rather than interaction scores
    valid_metric: ClassVar[str] = "rmse"    # what validate() returns
    higher_is_better: ClassVar[bool] = False
    data: SplitMatrices  # the split it is bound to, by fit or load

    def __init__(self, options: ModelOptions, *, name: str, device: str | torch.device | None = None,
                 settings: RunSettings | None = None):
        self.options = options
        self.name = name
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        # what the run settings say of how this estimator computes (not what it learns): rows per
        # evaluation batch and bf16 autocast on CUDA
        run = (settings or RunSettings()).resolved()
        self.eval_batch_size = int(run.eval_batch_size or RUN_DEFAULTS["eval_batch_size"])
        self.amp = bool(run.amp)

    def describe(self) -> dict[str, Any]:
        """The run's config.json: every option, the model's name and family."""
        return {**self.options.to_dict(), "model": self.name, "family": self.family}

    # --- fitting ------------------------------------------------------------------------------------
    def fit(self, data: SplitMatrices, run_dir: Path | None = None, resume: bool = False) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load(self, state: dict, data: SplitMatrices) -> "Estimator":
        raise NotImplementedError

    def validate(self) -> float | None:
        """RMSE on the valid part (None without one)."""
        valid = self.data.valid
        if valid.nnz == 0:
            return None
        rows, cols, values = csr_triplets(valid)
        return rmse(np.clip(self.predict_pairs(rows, cols), *rating_range(self.data.meta)), values)

    # --- Predictor ----------------------------------------------------------------------------------
    def predict_pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.score_rows_tensor(rows).cpu().numpy()

    def score_rows_tensor(self, rows: np.ndarray) -> torch.Tensor:
        """``score_rows`` as a float32 tensor on this estimator's device that the caller may overwrite: top-K
        over the whole catalogue (``recsys_core.ranking``) masks and selects in it without a copy."""
        raise NotImplementedError


class TorchEstimator(Estimator):
    """A network trained by the loop. ``build(dims)`` makes the ``nn.Module`` (right after the torch seed
    is set, so the initial weights follow ``seed``); ``prepare(data)`` derives what batches need."""

    options: LoopOptions
    model: torch.nn.Module

    def build(self, dims: dict) -> torch.nn.Module:
        raise NotImplementedError

    def prepare(self, data: SplitMatrices) -> None:
        """Everything derived from the data once the network exists (nothing by default)."""

    def bind(self, data: SplitMatrices) -> None:
        options = self.options
        self.data = data
        self.batch_size = int(options.batch_size)
        self.clip = rating_range(data.meta)
        self.use_amp = self.amp and self.device.type == "cuda"
        torch.manual_seed(int(options.seed))  # deterministic initial weights
        self.model = self.build(data_dims(data)).to(self.device)
        self.prepare(data)

    def fit(self, data: SplitMatrices, run_dir: Path | None = None, resume: bool = False, on_epoch=None) -> dict:
        self.bind(data)
        return fit_loop(self, self.options, run_dir, resume, on_epoch=on_epoch)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load(self, state: dict, data: SplitMatrices) -> "TorchEstimator":
        self.bind(data)
        self.model.load_state_dict(state)
        return self

    def autocast(self):
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- what the loop asks -----------------------------------------------------------------------------
    def n_batches(self) -> int:
        raise NotImplementedError

    def batches(self, rng: np.random.Generator) -> Iterator:
        raise NotImplementedError

    def losses(self, batch) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (loss to minimize, data-fit value to report); the loop takes one step per yield."""
        raise NotImplementedError

    def _eval_mode(self):
        """no_grad + eval mode, restoring the previous mode afterwards."""
        model = self.model

        @contextlib.contextmanager
        def scope():
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    yield
            finally:
                model.train(was_training)

        return scope()


def weights_version(module: torch.nn.Module) -> tuple:
    """What changes whenever ``module``'s weights do: each parameter's version counter (moved by the in-place
    writes of optimizer steps and loads) and storage. The key of what is derived from the weights and kept
    (the tower models' bounds, I-AutoRec's item codes)."""
    return tuple((p._version, p.data_ptr()) for p in module.parameters())


@options
class PairsOptions(LoopOptions):
    """Options of the embedding models trained on (user, item) pairs (MF, MLP, NCF)."""

    sparse: bool = option(True, "update only the embedding rows a batch touches: sparse gradients and a "
                                "row-wise (lazy) step with adam or adagrad; sgd and rmsprop update every row")


class PairsNetwork(Protocol):
    """The network of a ``PairsEstimator``: ratings of ``(users, items)`` and the L2 penalty of what they touch."""

    def __call__(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ScoresAll(Protocol):
    """A network that scores whole rows at once: ``[len(users), n_items]``."""

    def score_all(self, users: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class BoundsAll(Protocol):
    """A network that bounds whole rows cheaply (``recsys_core.models.mlp.TowerBounds``): (lower, upper) of
    ``score_all(users)`` and ``exact(rows, cols)``, the scores of chosen pairs; None where it cannot."""

    def score_bounds(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Any] | None: ...


class PairsEstimator(TorchEstimator):
    """One (user, item, rating) per example (biased MF, the embedding MLP): the network maps
    ``(users, items)`` to ratings and has ``penalty(users, items)``; loss = MSE + penalty_weight() * penalty.
    A network with ``score_all(users)`` scores whole rows at once."""

    family = "pairs"
    options: PairsOptions
    model: PairsNetwork

    def penalty_weight(self) -> float:
        """The weight of the network's penalty in the loss (the model's ``l2`` option)."""
        raise NotImplementedError

    @property
    def sparse_rows(self) -> bool:
        """Whether the embedding tables take sparse gradients (``recsys_core.row_optim``)."""
        return uses_sparse_rows(self.options)

    def prepare(self, data: SplitMatrices) -> None:
        rows, cols, values = csr_triplets(data.train)
        self.users = torch.from_numpy(rows)
        self.items = torch.from_numpy(cols)
        self.values = torch.from_numpy(values)

    def n_batches(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def batches(self, rng):
        order = torch.from_numpy(rng.permutation(len(self.users)))
        for start in range(0, len(order), self.batch_size):
            idx = local_part(order[start:start + self.batch_size])  # this process's part (all, alone)
            yield (self.users[idx].to(self.device), self.items[idx].to(self.device),
                   self.values[idx].to(self.device))

    def losses(self, batch):
        users, items, values = batch
        with self.autocast():
            pred = self.model(users, items)
        fit = observed_mse(pred, values)
        l2 = self.penalty_weight()
        loss = fit + l2 * self.model.penalty(users, items) if l2 else fit
        yield loss, fit.detach()

    def _pairs_in_chunks(self, rows, cols, transform=None) -> np.ndarray:
        out = np.empty(len(rows), np.float32)
        step = self.eval_batch_size * 64
        with self._eval_mode():
            for lo in range(0, len(rows), step):
                u = torch.as_tensor(rows[lo:lo + step], dtype=torch.int64, device=self.device)
                i = torch.as_tensor(cols[lo:lo + step], dtype=torch.int64, device=self.device)
                pred = self.model(u, i)
                out[lo:lo + step] = (transform(pred) if transform else pred).float().cpu().numpy()
        return out

    def predict_pairs(self, rows, cols):
        return self._pairs_in_chunks(rows, cols)

    def score_bounds(self, rows: np.ndarray) -> ScoreBounds | None:
        """``recsys_core.ranking.BoundedScores``: bounds of the rows' scores for exact pruned top-K where the
        network gives them (the tower models), else None."""
        if not isinstance(self.model, BoundsAll):
            return None
        with self._eval_mode():
            found = self.model.score_bounds(torch.from_numpy(np.asarray(rows, np.int64)).to(self.device))
        if found is None:
            return None
        lower, upper, exact = found

        def exact_scores(positions: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            with self._eval_mode():
                return exact(positions, cols).float()

        return ScoreBounds(lower.float(), upper.float(), exact_scores)

    def score_rows_tensor(self, rows):
        rows = np.asarray(rows, np.int64)
        if isinstance(self.model, ScoresAll):
            with self._eval_mode():
                return self.model.score_all(torch.from_numpy(rows).to(self.device)).float()
        n_items = self.data.train.shape[1]
        grid_rows = np.repeat(rows, n_items)
        grid_cols = np.tile(np.arange(n_items, dtype=np.int64), len(rows))
        return torch.from_numpy(self.predict_pairs(grid_rows, grid_cols).reshape(len(rows), n_items))
