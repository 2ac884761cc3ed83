"""A linear blend of other runs of the same split (the Netflix Prize's last step; Töscher, Jahrer, Bell 2009,
Sill et al. 2009): a ridge regression of the valid ratings on the members' clipped valid predictions,

    r^_ui = w_0 + sum_m w_m p_m(u, i),

fitted on the VALID part only and applied to test (and to every score the service asks for). Its ridge
weight is chosen by ``folds``-fold cross-validation on valid (the blend's only choice, never on test).
``count_features`` (on by default) offers what the Prize teams' feature-weighted blends used (Sill et al.
2009): z_u and z_i, the standardized log(1 + training ratings) of the user and of the item, and each member's prediction
times z_u and times z_i, so that a member's weight can grow or shrink with how much is known; they are
kept where the cross-validation on valid says they help (as one more choice beside the ridge weight).

The members are finished runs of rating models on the same split, found beside the blend's own run folder
(the folder ``recsys train`` and the flow put every run of a split in): ``members`` names them by model
(the latest finished run of that model there) or by folder; empty = every finished rating run there. The
run's metrics.json records, under ``training.blend``, the weights, each member's valid and test RMSE and
the blend's gain over its best member.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from recsys_core.errors import RecsysError
from recsys_core.estimators import Estimator
from recsys_core.evaluation import rmse
from recsys_core.interactions import csr_triplets, rating_range
from recsys_core.io import read_json
from recsys_core.matrices import SplitMatrices
from recsys_core.models import register
from recsys_core.options import ModelOptions, option, options

log = logging.getLogger("recsys_core")

REG_GRID = tuple(10.0 ** e for e in range(-3, 5))  # ridge weights tried by cross-validation on valid
SCORE_ROWS = 256  # users per step of score_rows over the members


@options
class BlendOptions(ModelOptions):
    members: str = option("", "comma-separated members: model names (the latest finished run of that model beside "
                              "the blend's run folder) or run folder names; empty = every finished rating run there")
    # On: the cross-validated valid RMSE of ml-latest-small's blends of four runs, 0.8376 -> 0.8367 (random) and
    # 0.8704 -> 0.8666 (chrono) with them (docs/train.md)
    count_features: bool = option(True, "offer the standardized log counts of the user and the item and each "
                                        "member's prediction times them (feature-weighted blending), kept where "
                                        "cross-validation on valid says they help")
    folds: int = option(5, "cross-validation folds on valid that choose the ridge weight", low=2)
    seed: int = option(0, "seed of the cross-validation folds", low=0)
    # A sweep's default space (docs/sweeps.md): the blend's own choices are made by cross-validation on valid
    sweep_space: ClassVar[dict] = {"folds": {"choices": [3, 5, 10]}, "count_features": {"choices": [True, False]}}


def _finished_runs(folder: Path, exclude: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and p.resolve() != exclude.resolve()
                   and (p / "model.pt").is_file() and (p / "metrics.json").is_file() and (p / "config.json").is_file()),
                  key=lambda p: ((p / "metrics.json").stat().st_mtime, p.name))


def find_members(run_dir: Path, split_dir: Path, members: str) -> list[Path]:
    """The member run folders of a blend in ``run_dir`` on ``split_dir`` (see ``BlendOptions.members``);
    one sentence naming what is missing."""
    parent = run_dir.resolve().parent
    candidates = [p for p in (_finished_runs(parent, run_dir) if parent.is_dir() else [])
                  if Path(read_json(p / "config.json").get("split_dir", "")).resolve() == split_dir.resolve()]
    wanted = [m.strip() for m in members.split(",") if m.strip()]
    if not wanted:
        from recsys_core import models

        found = []
        for p in candidates:
            name = read_json(p / "config.json").get("model")
            if name in models.names() and name != "blend" and models.get(name).estimator.rating_model:
                found = [q for q in found if read_json(q / "config.json")["model"] != name] + [p]
        if not found:
            raise RecsysError(f"a blend needs finished runs of rating models on {split_dir} beside its run folder "
                              f"in {parent}; there are none: train its members there first")
        return found
    chosen, missing = [], []
    for member in wanted:
        by_folder = [p for p in candidates if p.name == member]
        by_model = [p for p in candidates if read_json(p / "config.json").get("model") == member]
        if by_folder or by_model:
            chosen.append((by_folder or by_model)[-1])
        else:
            missing.append(member)
    if missing:
        raise RecsysError(f"the blend's member(s) {', '.join(missing)} have no finished run on {split_dir} in "
                          f"{parent}: train them there first (or leave them out of members)")
    return chosen


def ridge(features: np.ndarray, target: np.ndarray, reg: float) -> tuple[np.ndarray, float]:
    """(weights, intercept) minimizing |target - features w - b|^2 + reg |w|^2 (the intercept unpenalized)."""
    mean_x, mean_y = features.mean(0), target.mean()
    x = features - mean_x
    w = np.linalg.solve(x.T @ x + reg * np.eye(x.shape[1]), x.T @ (target - mean_y))
    return w, float(mean_y - mean_x @ w)


@register("blend", options=BlendOptions,
          help="ridge blend of the other rating runs of the same split, fitted on valid (weight by cross-"
               "validation on valid), applied to test; train it after its members")
class Blend(Estimator):
    options: BlendOptions
    family = "blend"
    trains_after_others = True  # the flow trains it once every other model of its split is done
    needs_members = True        # it combines other runs (tests/test_real_data.py trains the standalone models)

    def fit(self, data: SplitMatrices, run_dir: Path | None = None, resume: bool = False) -> dict:
        c = self.options
        if run_dir is None:
            raise RecsysError("a blend finds its members beside its run folder: give it a run folder")
        if data.valid.nnz == 0:
            raise RecsysError(f"{data.path} has no valid part: a blend is fitted on valid; split with one")
        self._bind(data, find_members(Path(run_dir), Path(data.path), c.members))
        rows, cols, truth = csr_triplets(data.valid)
        member_valid = self._member_predictions(rows, cols)
        folds = np.random.default_rng(int(c.seed)).permutation(len(truth)) % int(c.folds)
        cv = {}  # (count features used, ridge weight) -> cross-validated valid RMSE
        for counts in (False, True) if c.count_features else (False,):
            self.use_counts = counts
            features = self._features(member_valid, rows, cols)
            for reg in REG_GRID:
                predicted = np.empty(len(truth))
                for fold in range(int(c.folds)):
                    inside = folds != fold
                    w, b = ridge(features[inside], truth[inside], reg)
                    predicted[~inside] = features[~inside] @ w + b
                cv[counts, reg] = rmse(np.clip(predicted, *self.clip), truth)
        # the count features stay only where they help on valid (a small valid part can overfit them)
        self.use_counts, self.reg = min(cv, key=lambda choice: cv[choice])
        self.weights, self.intercept = ridge(self._features(member_valid, rows, cols), truth, self.reg)
        report = self._report(member_valid, truth, cv)
        log.info("blend of %s: valid (cross-validated) RMSE %.4f, best member %.4f", ", ".join(self.names),
                 report["cv_rmse"], min(m["valid_rmse"] for m in report["members"]))
        return {"history": None, "report": {"blend": report}}

    def _bind(self, data: SplitMatrices, member_dirs: list[Path]) -> None:
        from recsys_core.train import load_run

        self.data = data
        self.clip = rating_range(data.meta)
        self.member_dirs = [str(Path(p).resolve()) for p in member_dirs]
        self.members, self.names = [], []
        for path in member_dirs:
            config, _, estimator = load_run(path, device=str(self.device), split_dir=data.path)
            if not estimator.rating_model:
                raise RecsysError(f"{path} holds a {config['model']} run: its scores are not ratings to blend")
            self.members.append(estimator)
            self.names.append(config["model"])
        counts = [np.log1p(np.diff(data.train.indptr)), np.log1p(np.bincount(data.train.indices,
                                                                             minlength=data.train.shape[1]))]
        self.z_user, self.z_item = ((c - c.mean()) / max(c.std(), 1e-12) for c in counts)

    def _member_predictions(self, rows, cols) -> np.ndarray:
        return np.stack([np.clip(m.predict_pairs(rows, cols), *self.clip) for m in self.members], 1).astype(np.float64)

    def _features(self, predictions: np.ndarray, rows, cols) -> np.ndarray:
        """[n, members] or, with count features, [n, members + 2 + 2 members]."""
        if not self.use_counts:
            return predictions
        zu, zi = self.z_user[rows][:, None], self.z_item[cols][:, None]
        return np.hstack([predictions, zu, zi, predictions * zu, predictions * zi])

    def _report(self, member_valid: np.ndarray, truth: np.ndarray, cv: dict) -> dict:
        names = [n if self.names.count(n) == 1 else f"{n} ({Path(d).name})"  # two runs of one model: the folders
                 for n, d in zip(self.names, self.member_dirs)]
        members = []
        test_rows, test_cols, test_truth = csr_triplets(self.data.test)
        member_test = self._member_predictions(test_rows, test_cols) if len(test_truth) else None
        for m, name in enumerate(names):
            members.append({"member": name, "run_dir": self.member_dirs[m], "weight": round(float(self.weights[m]), 6),
                            "valid_rmse": round(rmse(member_valid[:, m], truth), 6),
                            "test_rmse": round(rmse(member_test[:, m], test_truth), 6) if member_test is not None
                            else None})
        report = {"members": members, "intercept": round(self.intercept, 6), "reg": self.reg,
                  "cv_rmse": round(cv[self.use_counts, self.reg], 6), "count_features": self.use_counts,
                  "cv_rmse_without_count_features": round(min(v for (k, _), v in cv.items() if not k), 6),
                  "weights": [round(float(w), 6) for w in self.weights]}
        if self.options.count_features:
            report["cv_rmse_with_count_features"] = round(min(v for (k, _), v in cv.items() if k), 6)
        best = min(members, key=lambda m: m["valid_rmse"])
        report["best_member"] = best["member"]
        report["valid_gain_cross_validated"] = round(best["valid_rmse"] - report["cv_rmse"], 6)
        if member_test is not None:  # reported, never chosen on
            test_rmse = rmse(np.clip(self._features(member_test, test_rows, test_cols) @ self.weights
                                     + self.intercept, *self.clip), test_truth)
            report["test_rmse"] = round(test_rmse, 6)
            report["test_gain_over_best_member"] = round(best["test_rmse"] - test_rmse, 6)
        return report

    def state_dict(self) -> dict:
        return {"member_dirs": list(self.member_dirs), "weights": torch.from_numpy(np.asarray(self.weights)),
                "intercept": torch.tensor(self.intercept, dtype=torch.float64), "reg": float(self.reg),
                "count_features": bool(self.use_counts)}

    def load(self, state: dict, data: SplitMatrices) -> "Blend":
        missing = [d for d in state["member_dirs"] if not (Path(d) / "model.pt").is_file()]
        if missing:
            raise RecsysError(f"the blend's member run(s) {', '.join(missing)} are gone: the blend cannot predict "
                              "without them")
        self._bind(data, [Path(d) for d in state["member_dirs"]])
        self.weights = state["weights"].numpy()
        self.intercept = float(state["intercept"])
        self.reg = float(state["reg"])
        self.use_counts = bool(state["count_features"])
        return self

    # --- Predictor --------------------------------------------------------------------------------------
    def predict_pairs(self, rows, cols) -> np.ndarray:
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        if len(rows) == 0:
            return np.empty(0, np.float32)
        features = self._features(self._member_predictions(rows, cols), rows, cols)
        return (features @ self.weights + self.intercept).astype(np.float32)

    def score_rows_tensor(self, rows) -> torch.Tensor:
        rows = np.asarray(rows, np.int64)
        n_items = self.data.train.shape[1]
        out = torch.empty(len(rows), n_items, dtype=torch.float32)
        for lo in range(0, len(rows), SCORE_ROWS):
            part = rows[lo:lo + SCORE_ROWS]
            scores = np.stack([np.clip(np.asarray(m.score_rows(part), np.float64), *self.clip)
                               for m in self.members], -1)                       # [rows, items, members]
            flat_rows = np.repeat(part, n_items)
            flat_cols = np.tile(np.arange(n_items), len(part))
            features = self._features(scores.reshape(-1, len(self.members)), flat_rows, flat_cols)
            out[lo:lo + len(part)] = torch.from_numpy(
                (features @ self.weights + self.intercept).reshape(len(part), n_items).astype(np.float32))
        return out
