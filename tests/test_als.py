"""Implicit ALS: the predictor contract, conjugate gradient against exact solves, ranking against most-popular."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from predictor_contract import ModelContract
from train_fixtures import make_leave_one_out_split

from recsys_core.interactions import torch_csr
from recsys_core.models.als import solve_rows
from recsys_core.settings import RunSettings
from recsys_core.train import train


class TestALS(ModelContract):
    model, options = "als", {"factors": 8, "iterations": 4}


def test_conjugate_gradient_reaches_the_exact_least_squares_solution():
    """With as many steps as factors, CG solves (Y^T Y + reg I + alpha Y_u^T Y_u) x_u = (1 + alpha) Y_u^T 1."""
    rng = np.random.default_rng(0)
    interactions = sp.random(30, 20, density=0.3, format="csr", random_state=1, dtype=np.float32)
    interactions.data[:] = 1
    fixed = rng.normal(size=(20, 5))
    reg, alpha = 0.5, 3.0
    solved = solve_rows(torch_csr(interactions).to(torch.float64), torch.tensor(fixed, dtype=torch.float64),
                        torch.zeros(30, 5, dtype=torch.float64), reg, alpha, steps=5)
    for u in range(30):
        rated = fixed[interactions[u].indices]
        system = fixed.T @ fixed + reg * np.eye(5) + alpha * rated.T @ rated
        exact = np.linalg.solve(system, (1 + alpha) * rated.sum(0))
        np.testing.assert_allclose(solved[u].numpy(), exact, rtol=1e-6, atol=1e-8)


def test_ranks_above_most_popular_on_leave_one_out(tmp_path):
    split = make_leave_one_out_split(tmp_path / "loo")
    metrics = train(split.path, tmp_path / "run", "als", None, RunSettings(recall_users=400))
    popular = metrics["baselines"]["most_popular"]["test"]
    assert metrics["test"]["hr@10"] > popular["hr@10"] + 0.1, (metrics["test"], popular)
    assert metrics["test"]["recall@10"] > popular["recall@10"]
    assert metrics["beaten_by"] == []
