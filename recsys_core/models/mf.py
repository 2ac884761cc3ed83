"""Biased matrix factorization for explicit ratings: rating = mu + b_u + b_i + p_u . q_i, trained on
(user, item, rating) examples with per-example L2 on what each batch touches.

Two solvers. ``autograd``: the loop's optimizer (Adam by default) on autograd gradients of mini-batches.
``sgd``: a hand-written SGD epoch outside autograd (``SequentialSGD``), Surprise's update rule one rating at a
time in a compiled loop; an epoch costs what its ratings cost (docs/train.md, BENCHMARKS.md)."""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from recsys_core import distributed
from recsys_core.errors import RecsysError
from recsys_core.estimators import PairsEstimator, PairsOptions
from recsys_core.models import register
from recsys_core.options import option, options
from recsys_core.training_loop import OwnStep


class BiasedMF(nn.Module):
    """rating = mu + b_u + b_i + p_u . q_i, optionally squashed into the rating range by a scaled sigmoid."""

    low: torch.Tensor  # buffers: the rating range
    span: torch.Tensor

    def __init__(self, n_users: int, n_items: int, dim: int = 32, global_mean: float = 0.0,
                 squash: bool = False, rating_range: tuple[float, float] = (1.0, 5.0), sparse: bool = False,
                 init_std: float = 0.01):
        super().__init__()
        self.user_factors = nn.Embedding(n_users, dim, sparse=sparse)
        self.item_factors = nn.Embedding(n_items, dim, sparse=sparse)
        self.user_bias = nn.Embedding(n_users, 1, sparse=sparse)
        self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
        for emb in (self.user_factors, self.item_factors):
            nn.init.normal_(emb.weight, std=init_std)
        for emb in (self.user_bias, self.item_bias):
            nn.init.zeros_(emb.weight)
        self.squash = squash
        low, high = rating_range
        self.register_buffer("low", torch.tensor(float(low)))
        self.register_buffer("span", torch.tensor(float(high - low)))
        # Squashed models start from the logit of the global mean so the first steps are not wasted.
        if squash:
            frac = min(max((global_mean - low) / (high - low), 1e-3), 1 - 1e-3)
            global_mean = float(torch.logit(torch.tensor(frac)))
        self.global_mean = nn.Parameter(torch.tensor(float(global_mean)))

    def _finish(self, raw: torch.Tensor) -> torch.Tensor:
        return self.low + self.span * torch.sigmoid(raw) if self.squash else raw

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raw = (self.global_mean + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
               + (self.user_factors(users) * self.item_factors(items)).sum(-1))
        return self._finish(raw)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Predictions for every item: ``[len(users), n_items]``."""
        raw = (self.global_mean + self.user_bias(users) + self.item_bias.weight.T
               + self.user_factors(users) @ self.item_factors.weight.T)
        return self._finish(raw)

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Per-example L2 of the parameters the batch touches (mean over the batch)."""
        return ((self.user_factors(users) ** 2).sum(-1) + (self.item_factors(items) ** 2).sum(-1)
                + self.user_bias(users).squeeze(-1) ** 2 + self.item_bias(items).squeeze(-1) ** 2).mean()


# Ratings per chunk of the sgd solver: an epoch visits chunks of the user-grouped ratings in a fresh order, not
# the ratings one by one in a fresh order (that permutation and its gathers cost ~0.14 s at 1.4M ratings, as
# much as the epoch's updates), and a chunk holds a few users' ratings one after another, so that their factor
# rows stay in cache: with the ratings shuffled one by one, every rating read its user's row from memory and
# the epoch at full-scale N3M (319K users, 13.7M ratings) cost 0.93-0.99x Surprise's, which visits each user's
# ratings together.
CHUNK = 256
# Chunks per call of the compiled loop (one "batch" of the training loop: its progress bar and divergence check
# see one per call). Results do not depend on it; 65,536 ratings a call keep the loop's own work per batch
# (tens of microseconds) out of the epoch's time, where calls of 1,024 would pay it 1,340 times at 1.4M ratings.
CHUNKS_PER_CALL = 256


@functools.cache
def _sgd_kernel():
    """The compiled per-rating loop (numba, compiled on first use and cached on disk; imported lazily so that
    importing the models does not import numba)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def sgd_chunks(users, items, ratings, chunks, chunk, p, q, bu, bi, mu, lr, reg, squash, low, span):
        n = len(ratings)
        dim = p.shape[1]
        total = 0.0
        count = 0
        for c in chunks:
            for j in range(c * chunk, min(c * chunk + chunk, n)):
                u = users[j]
                i = items[j]
                raw = mu + bu[u] + bi[i]
                for f in range(dim):
                    raw += p[u, f] * q[i, f]
                if squash:
                    s = 1.0 / (1.0 + np.exp(-raw))
                    err = ratings[j] - (low + span * s)
                    grad = err * span * s * (1.0 - s)
                else:
                    err = ratings[j] - raw
                    grad = err
                total += err * err
                count += 1
                bu[u] += lr * (grad - reg * bu[u])
                bi[i] += lr * (grad - reg * bi[i])
                for f in range(dim):
                    pf = p[u, f]
                    qf = q[i, f]
                    p[u, f] = pf + lr * (grad * qf - reg * pf)
                    q[i, f] = qf + lr * (grad * pf - reg * qf)
        return total / max(count, 1)

    return sgd_chunks


class SequentialSGD:
    """Biased-MF SGD outside autograd, one rating at a time: Surprise's SVD update rule. For a rating r of
    user u and item i, e = r - pred(u, i) and (lr, reg: the solver's learning rate and per-rating L2)

        b_u += lr (e - reg b_u)        b_i += lr (e - reg b_i)
        p_u += lr (e q_i - reg p_u)    q_i += lr (e p_u - reg q_i)

    mu stays the training mean, as in Surprise; with ``squash``, e in the updates is the error times the
    derivative of the squashed output. A compiled loop (numba) updates the module's CPU weights in place: an
    epoch reads each rating once and the two rows it touches, as Surprise's Cython loop does, without its
    per-rating Python iteration (BENCHMARKS.md). It is sequential, so a run repeats bit for bit at any
    thread count.

    Order: the ratings grouped by user, each user's in an order shuffled once (from the seed); each epoch
    visits their chunks of ``CHUNK`` in a permutation drawn from the epoch's generator, ``CHUNKS_PER_CALL``
    chunks per call."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, values: torch.Tensor, seed: int):
        user_ids = users.numpy()
        order = np.argsort(user_ids + np.random.default_rng([seed, 0]).random(len(values)), kind="stable")
        # int32 ids: the loop reads them every epoch, int64 ids made it ~20% slower (1.4M ratings)
        self.users = users.numpy()[order].astype(np.int32)
        self.items = items.numpy()[order].astype(np.int32)
        self.ratings = values.numpy()[order].astype(np.float32)
        self.n_chunks = -(-len(order) // CHUNK)
        self.per_call = CHUNKS_PER_CALL
        # compile (or load from numba's cache) now, with the argument types of step(), not in the first epoch
        ids, none, one, row = (np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(1, np.float32),
                               np.zeros((1, 1), np.float32))
        zero, unit = np.float32(0), np.float32(1)
        _sgd_kernel()(ids, ids, one, none, CHUNK, row, row, one, one, zero, zero, zero, False, unit, unit)

    def n_blocks(self) -> int:
        return -(-self.n_chunks // self.per_call)

    def blocks(self, rng: np.random.Generator):
        perm = rng.permutation(self.n_chunks).astype(np.int64)
        for start in range(0, self.n_chunks, self.per_call):
            yield perm[start:start + self.per_call]

    def step(self, model: "BiasedMF", chunks: np.ndarray, lr: float, reg: float) -> torch.Tensor:
        """Update the module's weights in place by the ratings of ``chunks``; returns their mean squared error
        before each one's update."""
        tables = (model.user_factors.weight, model.item_factors.weight, model.user_bias.weight, model.item_bias.weight)
        p, q, bu, bi = (t.detach().numpy() for t in tables)
        mse = _sgd_kernel()(self.users, self.items, self.ratings, chunks, CHUNK, p, q, bu.reshape(-1), bi.reshape(-1),
                            np.float32(model.global_mean.detach()), np.float32(lr), np.float32(reg),
                            bool(model.squash), np.float32(model.low), np.float32(model.span))
        return torch.tensor(mse)


SOLVERS = ("autograd", "sgd")


@options
class MFOptions(PairsOptions):
    dim: int = option(16, "embedding size", low=1)
    l2: float = option(0.02, "per-example L2 on the embeddings and biases a batch touches", low=0)
    squash: bool = option(False, "squash the output into the rating range with a scaled sigmoid")
    solver: str = option("autograd", "autograd: the loop's optimizer (adam) on mini-batch gradients; sgd: "
                                     "Surprise's SGD rule one rating at a time in a compiled loop (lr and l2 per "
                                     "rating; factors start at std 0.1; CPU, one process; batch_size, optimizer, "
                                     "momentum, weight_decay and sparse are the autograd solver's)", choices=SOLVERS)
    lr: float = 0.002
    batch_size: int = 1024
    patience: int = 4
    # A sweep's default space (docs/sweeps.md).
    sweep_space: ClassVar[dict] = {"dim": {"choices": [8, 16, 32, 64]}, "lr": {"low": 5e-4, "high": 1e-2, "log": True},
                                   "l2": {"low": 1e-3, "high": 0.1, "log": True},
                                   "batch_size": {"choices": [256, 1024, 4096]}}

    @property
    def step_name(self) -> str | None:
        """What takes the steps, for the loop's messages (None: the optimizer)."""
        return "the sgd solver" if self.solver == "sgd" else None

    def check(self, model: str) -> None:
        if self.solver == "sgd" and self.weight_decay:
            raise RecsysError(f"model {model}: weight_decay is the autograd solver's; the sgd solver "
                              "regularizes with l2 (per rating)")


@register("mf", options=MFOptions, help="biased matrix factorization: mu + b_u + b_i + p_u.q_i, L2")
class MF(PairsEstimator):
    options: MFOptions
    model: BiasedMF

    def build(self, dims: dict) -> BiasedMF:
        c = self.options
        sgd = c.solver == "sgd"
        # SGD learns factors from a start of std 0.1 (Surprise's); at 0.01 the products p.q, and so their
        # gradients, stay near zero for the first epochs
        return BiasedMF(dims["n_users"], dims["n_items"], c.dim, dims["global_mean"], c.squash, dims["rating_range"],
                        self.sparse_rows and not sgd, init_std=0.1 if sgd else 0.01)

    # --- the sgd solver: the loop takes no step, the estimator updates the weights in losses() -------------
    def own_step(self) -> OwnStep | None:
        if self.options.solver != "sgd":
            return None
        if distributed.current().enabled:
            raise RecsysError(f"model {self.name}: the sgd solver trains in one process; use solver autograd "
                              "with several processes")
        if self.device.type != "cpu":
            raise RecsysError(f"model {self.name}: the sgd solver runs on the CPU (device {self.device} asked); "
                              "use solver autograd on a GPU")
        self._own = OwnStep(float(self.options.lr))
        # made here, when training starts, not in prepare(): loading a trained model to predict needs neither
        # the shuffled ratings nor numba
        self._sgd = SequentialSGD(self.users, self.items, self.values, int(self.options.seed))
        return self._own

    def prepare(self, data) -> None:
        super().prepare(data)
        self._sgd: SequentialSGD | None = None

    def n_batches(self) -> int:
        return self._sgd.n_blocks() if self._sgd is not None else super().n_batches()

    def batches(self, rng):
        if self._sgd is None:
            return super().batches(rng)
        return self._sgd.blocks(rng)

    def losses(self, batch):
        if self._sgd is None:
            yield from super().losses(batch)
            return
        yield (mse := self._sgd.step(self.model, batch, lr=self._own.lr, reg=float(self.options.l2))), mse

    def penalty_weight(self) -> float:
        return float(self.options.l2)

    def item_vectors(self) -> np.ndarray:
        return self.model.item_factors.weight.detach().float().cpu().numpy()

    def folds_in(self) -> bool:
        """Whether this model folds a new user in (a squashed MF is not linear in the user's vector)."""
        return not bool(self.options.squash)

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A new user's factors and bias by a ridge solve against the frozen item factors and biases, then
        their predictions. Training's per-example L2, summed over the user's n ratings, is
        l2 * n * (|p_u|^2 + b_u^2): the ridge is l2 * n. Folding a known user's own training ratings back
        in gives scores that correlate > 0.9 with the trained ones (tests/test_promotion.py)."""
        model = self.model
        if model.squash:
            raise RecsysError(f"a squashed {self.name} model (squash on) cannot fold in a new user: its "
                              "predictions are not linear in the user's factors")
        with torch.no_grad():
            q = model.item_factors.weight.detach().cpu().double().numpy()
            b = model.item_bias.weight.detach().cpu().double().numpy()[:, 0]
            mu = float(model.global_mean.detach())
        cols = np.asarray(cols, np.int64)
        x = np.hstack([q[cols], np.ones((len(cols), 1))])
        y = np.asarray(values, np.float64) - mu - b[cols]
        ridge = max(float(self.options.l2) * len(cols), 1e-6)
        w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
        return (mu + w[-1] + b + q @ w[:-1]).astype(np.float32)

    def linear_scores(self):
        """score = p_u . q_i + b_i + (mu + b_u): None when squashed."""
        model = self.model
        if model.squash:
            return None
        with torch.no_grad():
            offset = model.user_bias.weight[:, 0] + model.global_mean
            parts = (model.user_factors.weight, model.item_factors.weight.T, model.item_bias.weight[:, 0], offset)
            return tuple(np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in parts)
