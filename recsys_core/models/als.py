"""Implicit-feedback ALS (Hu, Koren, Volinsky 2008, "Collaborative Filtering for Implicit Feedback Datasets"),
solved with warm-started conjugate gradient as in implicit's ``AlternatingLeastSquares``.

Every training rating is an interaction: preference p_ui = 1 with confidence c_ui = 1 + alpha, every other
pair p_ui = 0 with confidence 1. Each sweep solves, for every user u with item factors Y fixed,

    (Y^T Y + alpha * Y_u^T Y_u + reg I) x_u = (1 + alpha) * sum of y_i over the items i of u,

then the same for every item with the user factors fixed. The Y^T Y term covers all unobserved pairs at once;
the rest touches only the stored interactions: per conjugate-gradient step one sampled product (p_u . y_i at
every interaction, ``torch.sparse.sampled_addmm``) and one sparse-dense product, both multi-threaded.
``cg_steps`` steps from the previous sweep's factors per sweep (implicit's default: 3); with ``cg_steps``
equal to ``factors`` each row is solved exactly.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from recsys_core.estimators import Estimator
from recsys_core.interactions import binary, torch_csr
from recsys_core.matrices import SplitMatrices
from recsys_core.models import register
from recsys_core.options import ModelOptions, option, options
from recsys_core.progress import progress_bar

log = logging.getLogger("recsys_core")

PAIR_CHUNK = 1 << 22  # (user, item) pairs per step of predict_pairs


# Defaults chosen on a generated leave-one-out split with user-item affinity (tests/train_fixtures.py, seed 1:
# 2,000 users x 800 items, 99 negatives): HR@10 0.645 (most-popular 0.32, EASE 0.635); 64 factors overfit
# there (0.54 at reg 0.1, 0.60 at reg 10), alpha 10 and 40 lose 0.01-0.04. implicit's own defaults are
# factors 100, reg 0.01, alpha 1 on bm25-weighted counts.
@options
class ALSOptions(ModelOptions):
    seed: int = option(0, "seed of the initial item factors", low=0)
    factors: int = option(32, "latent factors per user and item", low=1)
    reg: float = option(10.0, "L2 weight lambda on every factor vector", low=0, log=True)
    alpha: float = option(1.0, "confidence of an observed interaction: c = 1 + alpha", low=0, log=True)
    iterations: int = option(15, "alternating sweeps (all users, then all items)", low=1)
    cg_steps: int = option(3, "conjugate-gradient steps per row and sweep, warm-started from the last sweep",
                           low=1)
    # A sweep's default space (docs/sweeps.md).
    sweep_space: ClassVar[dict] = {"factors": {"choices": [16, 32, 64, 128]},
                                   "reg": {"low": 0.1, "high": 100.0, "log": True},
                                   "alpha": {"low": 0.1, "high": 40.0, "log": True}}


def solve_rows(interactions: torch.Tensor, fixed: torch.Tensor, start: torch.Tensor, reg: float, alpha: float,
               steps: int) -> torch.Tensor:
    """Conjugate gradient for every row u of ``interactions`` at once, from ``start``:
    (F^T F + reg I + alpha F_u^T F_u) x_u = (1 + alpha) F_u^T 1, F = ``fixed`` (the other side's factors)."""
    gram = fixed.T @ fixed
    gram.diagonal().add_(reg)

    def product(p: torch.Tensor) -> torch.Tensor:
        at_interactions = torch.sparse.sampled_addmm(interactions, p, fixed.T, beta=0.0)  # p_u . f_i where stored
        return p @ gram + alpha * (at_interactions @ fixed)

    x = start.clone()
    residual = (1.0 + alpha) * (interactions @ fixed) - product(x)
    direction = residual.clone()
    norm = (residual * residual).sum(1)
    for _ in range(steps):
        a_dir = product(direction)
        step = norm / (direction * a_dir).sum(1).clamp_min(1e-20)
        x.addcmul_(step[:, None], direction)
        residual.addcmul_(step[:, None], a_dir, value=-1.0)
        new_norm = (residual * residual).sum(1)
        direction = residual + (new_norm / norm.clamp_min(1e-20))[:, None] * direction
        norm = new_norm
    return x


@register("als", options=ALSOptions,
          help="implicit ALS (Hu, Koren, Volinsky 2008): confidence-weighted factorization of interactions, "
               "conjugate-gradient sweeps (ranking)")
class ALS(Estimator):
    options: ALSOptions
    family = "factorization"
    rating_model = False

    def fit(self, data: SplitMatrices, run_dir: Path | None = None, resume: bool = False) -> dict:
        c = self.options
        self.data = data
        by_user = torch_csr(binary(data.train), self.device)
        by_item = torch_csr(binary(data.train_by_item), self.device)
        generator = torch.Generator().manual_seed(int(c.seed))
        self.item_factors = (torch.randn(data.train.shape[1], c.factors, generator=generator) * 0.01).to(self.device)
        self.user_factors = torch.zeros(data.train.shape[0], c.factors, device=self.device)
        seconds = []
        with progress_bar("als sweeps", c.iterations, "sweeps") as bar:
            for sweep in range(1, c.iterations + 1):
                started = time.perf_counter()
                self.user_factors = solve_rows(by_user, self.item_factors, self.user_factors, c.reg, c.alpha,
                                               c.cg_steps)
                self.item_factors = solve_rows(by_item, self.user_factors, self.item_factors, c.reg, c.alpha,
                                               c.cg_steps)
                seconds.append(time.perf_counter() - started)
                bar.advance()
                log.info("als sweep %d/%d: %.1f s", sweep, c.iterations, seconds[-1])
        return {"history": None, "seconds_per_sweep": round(float(np.mean(seconds)), 3)}

    def state_dict(self) -> dict:
        return {"user_factors": self.user_factors.cpu(), "item_factors": self.item_factors.cpu()}

    def load(self, state: dict, data: SplitMatrices) -> "ALS":
        self.data = data
        self.user_factors = state["user_factors"].to(self.device)
        self.item_factors = state["item_factors"].to(self.device)
        return self

    # --- Predictor --------------------------------------------------------------------------------------
    def score_rows_tensor(self, rows) -> torch.Tensor:
        users = self.user_factors[torch.as_tensor(np.asarray(rows, np.int64), device=self.device)]
        return users @ self.item_factors.T

    def predict_pairs(self, rows, cols) -> np.ndarray:
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        out = np.empty(len(rows), np.float32)
        for lo in range(0, len(rows), PAIR_CHUNK):
            u = torch.from_numpy(rows[lo:lo + PAIR_CHUNK]).to(self.device)
            i = torch.from_numpy(cols[lo:lo + PAIR_CHUNK]).to(self.device)
            out[lo:lo + PAIR_CHUNK] = (self.user_factors[u] * self.item_factors[i]).sum(1).cpu().numpy()
        return out

    def folds_in(self) -> bool:
        """Whether this model folds a new user in."""
        return True

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """A new user's factors solved exactly against the item factors (values are ignored: ALS reads
        interactions), then their scores."""
        c = self.options
        fixed = self.item_factors.double()
        rated = fixed[torch.as_tensor(np.asarray(cols, np.int64), device=self.device)]
        system = fixed.T @ fixed + c.alpha * rated.T @ rated
        system.diagonal().add_(c.reg)
        user = torch.linalg.solve(system, (1.0 + c.alpha) * rated.sum(0))
        return (self.item_factors @ user.float()).cpu().numpy()

    def item_vectors(self) -> np.ndarray:
        return self.item_factors.cpu().numpy()

    def linear_scores(self):
        """score = x_u . y_i: no bias, no offset."""
        users, items = self.user_factors.float().cpu().numpy(), self.item_factors.float().cpu().numpy()
        return (np.ascontiguousarray(users), np.ascontiguousarray(items.T), np.zeros(len(items), np.float32),
                np.zeros(len(users), np.float32))
