"""Fixtures shared by the registry, promotion and service tests (tests/loop_fixtures.py), and the thread pin of
the tests that compare trainings bit for bit."""

from __future__ import annotations

import pytest


@pytest.fixture
def two_torch_threads(monkeypatch):
    """Two torch threads for every training of a test, as a quiet 2-core machine chooses: pinned because the
    default count lowers itself when other work holds a core (recsys_core.threads), and some models' sums
    depend on the count. torch's own setting is restored afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("two_torch_threads")``."""
    import torch

    from recsys_core.threads import ENV

    monkeypatch.setenv(ENV, "2")
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def loop_runs(tmp_path_factory):
    """Small trained runs on two growing splits: {"old", "new" (split folders), "ae_old", "ae_new",
    "mf_new", "mf_bad" (barely trained: beaten by the baselines), "mlp_old" (cannot fold users in),
    "ease_new" (no item vectors), "als_new" (ranking, linear scores), "autorec_item_old" (folds nobody in)}."""
    import os

    os.environ.setdefault("RECSYS_PROGRESS", "0")
    from recsys_core.settings import RunSettings
    from recsys_core.train import train
    from tests.loop_fixtures import make_growing_splits

    root = tmp_path_factory.mktemp("loop")
    old, new = make_growing_splits(root / "splits")
    plan = {"ae_old": (old, "autoencoder", {"epochs": 20}), "ae_new": (new, "autoencoder", {"epochs": 20}),
            "mf_new": (new, "mf", {"epochs": 8}), "mf_bad": (new, "mf", {"epochs": 1, "lr": 1e-6}),
            "mlp_old": (old, "mlp", {"epochs": 2}), "ease_new": (new, "ease", {}),
            "als_new": (new, "als", {"iterations": 3}), "autorec_item_old": (old, "autorec-item", {"epochs": 2})}
    runs = {"old": old, "new": new}
    for label, (split, model, options) in plan.items():
        runs[label] = root / "runs" / label
        train(split, runs[label], model, options, RunSettings(device="cpu", recall_users=500))
    return runs


def pytest_collection_modifyitems(config, items):
    """A test that needs ``loop_runs`` (eight trainings, the session's heaviest fixture: ~10 s of CPU before its
    first test, then real uvicorn servers in the serving tests) is ``slow``: out of the fast lane (README)."""
    for item in items:
        if "loop_runs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
