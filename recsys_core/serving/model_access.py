"""The ONE place the serving and promotion code touches model internals.

Everything else (``recsys_core.serving.app``, ``recsys_core.promotion``) talks to a ``ServableModel``:
raw-id lookups, ``score_rows``/``predict_pairs`` in the run's own index, ``fold_in`` for a user the model
never saw, and ``item_vectors`` for item-to-item similarity. Ported onto a new model seam, only this
module changes: today it goes through ``recsys_core.train.load_run`` and reaches into the estimator
families and modules for the two capabilities the shared predictor interface lacks (fold-in, item
representations):

- fold-in: the user-oriented autoencoders (deep autoencoder, U-AutoRec) encode the ratings as a new input
  row (``RowsEstimator.score_new_user``); biased MF solves the user's factors and bias by ridge
  regression against the frozen item factors, with the per-rating L2 it was trained with. Other models
  (I-AutoRec, the embedding MLP, NCF) cannot score a user absent from training;
- item vectors: MF item factors, the autoencoder's output-layer weights (one row per item: the decoder
  column that produces that item's output), I-AutoRec's code of each item's rating vector, the MLP's item
  embeddings, NCF's item embeddings (GMF and MLP parts side by side).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recsys_core.errors import RecsysError
from recsys_core.interactions import rating_range


class FoldInUnsupported(RecsysError):
    """The model cannot score a user absent from its training data."""


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class ServableModel:
    """A trained run loaded once: its index (raw ids <-> rows/columns, titles), what each user rated, and
    the model answering scores for known users, folded-in users and items."""

    def __init__(self, run_dir: str | Path, device: str = "cpu"):
        from recsys_core.train import load_run

        self.run_dir = Path(run_dir).resolve()
        self.config, self.data, self.estimator = load_run(self.run_dir, device)
        self.estimator.model.eval()  # stays in eval mode: concurrent readers never toggle it
        data = self.data
        self.model_name: str = self.config["model"]
        self.rating_model: bool = bool(self.estimator.rating_model)
        self.clip = rating_range(data.meta)
        self.user_ids = np.asarray(data.user_ids, np.int64)   # sorted by raw id (the split's index order)
        self.item_ids = np.asarray(data.item_ids, np.int64)
        self.n_users, self.n_items = len(self.user_ids), len(self.item_ids)
        items = data.items.sort("col") if "col" in data.items.columns else data.items
        self.titles = (items["title"].to_list() if "title" in items.columns else [None] * self.n_items)
        # everything the user rated in the split (train, valid, test): never recommended again
        known = (data.train + data.valid + data.test).tocsr()
        known.sort_indices()
        self.known = known
        self.global_mean = float(data.train.data.mean())
        self.popularity = np.bincount(data.train.indices, minlength=self.n_items).astype(np.float32)
        self._item_vectors: np.ndarray | None = None
        self._linear: tuple | None = None   # see prepare_fast_scoring
        self._mf_items: tuple | None = None
        self._fold_in = self._fold_in_kind()   # a name, not a bound method: no reference cycle (see service)

    # --- ids ----------------------------------------------------------------------------------------------
    @staticmethod
    def _lookup(sorted_ids: np.ndarray, raw) -> np.ndarray:
        raw = np.asarray(raw, np.int64)
        pos = np.searchsorted(sorted_ids, raw)
        pos = np.minimum(pos, len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == raw, pos, -1)

    def rows_of(self, user_ids) -> np.ndarray:
        """Row of each raw user id, -1 where the model does not know the user."""
        return self._lookup(self.user_ids, user_ids)

    def cols_of(self, item_ids) -> np.ndarray:
        """Column of each raw item id, -1 where the item is not in the model's catalogue."""
        return self._lookup(self.item_ids, item_ids)

    def seen_cols(self, row: int) -> np.ndarray:
        return self.known.indices[self.known.indptr[row]:self.known.indptr[row + 1]]

    # --- scores -------------------------------------------------------------------------------------------
    def score_rows(self, rows) -> np.ndarray:
        """Scores of every item for known user rows: ``[len(rows), n_items]`` float32."""
        rows = np.asarray(rows, np.int64)
        if self._linear is not None:
            users, weight, bias, offset = self._linear
            return users[rows] @ weight + bias + offset[rows, None]
        return np.asarray(self.estimator.score_rows(rows), np.float32)

    def score_row(self, row: int) -> np.ndarray:
        """Scores of every item for one known user row (``[n_items]``; a vector product on the fast path,
        which OpenBLAS runs ~3x faster than the same product as a 1-row matrix)."""
        if self._linear is not None:
            users, weight, bias, offset = self._linear
            scores = users[row] @ weight
            scores += bias
            scores += offset[row]
            return scores
        return self.score_rows([row])[0]

    def prepare_fast_scoring(self) -> bool:
        """Precompute, for models whose output layer is linear in a per-user vector, every user's vector,
        so that scoring a user is one vector-matrix product in numpy (no encoder pass, no torch call):
        score(u) = h_u @ W + b + offset_u. The autoencoders' h_u is the decoder's last hidden layer of the
        user's training vector (W: the output layer, offset_u: the user's mean with center="row"); MF's
        is p_u (W: item factors, b: item biases, offset_u: mu + b_u). Returns whether it applies."""
        from recsys_core.estimators import PairsEstimator, RowsEstimator
        from recsys_core.models.factorization import BiasedMF

        est, model = self.estimator, self.estimator.model
        with torch.no_grad():
            if isinstance(est, RowsEstimator) and est.orientation == "user" and not model.last_layer_activation:
                rows = np.arange(self.n_users)
                users = torch.cat([est._hidden_for(rows[lo:lo + 4096]) for lo in range(0, self.n_users, 4096)])
                weight, bias, offset = model._dec_weight(0).T, model.dec_b[0], est.row_offset
            elif type(est) is PairsEstimator and isinstance(model, BiasedMF) and not model.squash:
                users, weight, bias = model.user_factors.weight, model.item_factors.weight.T, model.item_bias.weight[:, 0]
                offset = (model.user_bias.weight[:, 0] + model.global_mean).numpy()
            else:
                return False
            as_numpy = [np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in (users, weight, bias)]
        self._linear = (*as_numpy, np.asarray(offset, np.float32))
        return True

    def predict_pairs(self, rows, cols) -> np.ndarray:
        return np.asarray(self.estimator.predict_pairs(np.asarray(rows, np.int64), np.asarray(cols, np.int64)),
                          np.float32)

    @property
    def can_fold_in(self) -> bool:
        return self._fold_in is not None

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Scores of every item for a user absent from training, from their ratings of columns ``cols``."""
        if self._fold_in is None:
            raise FoldInUnsupported(f"a {self.model_name} model cannot score a user absent from its training "
                                    "data; serve an autoencoder, autorec-user or mf model for that")
        cols = np.asarray(cols, np.int64)
        values = np.asarray(values, np.float32)
        if len(cols) == 0:
            raise RecsysError("at least one rating of an item the model knows is needed to fold a user in")
        order = np.argsort(cols, kind="stable")
        cols, values = cols[order], values[order]
        if self._fold_in == "encode":
            return np.asarray(self.estimator.score_new_user(cols, values), np.float32)
        return self._mf_fold_in(cols, values)

    def _fold_in_kind(self) -> str | None:
        from recsys_core.estimators import PairsEstimator, RowsEstimator
        from recsys_core.models.factorization import BiasedMF

        est = self.estimator
        if isinstance(est, RowsEstimator) and est.orientation == "user":
            return "encode"
        if type(est) is PairsEstimator and isinstance(est.model, BiasedMF) and not est.model.squash:
            return "ridge"
        return None

    def _mf_fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Ridge solve of [p_u, b_u] against frozen item factors and biases: training's per-example L2
        summed over the user's n ratings is l2 * n * (|p_u|^2 + b_u^2), so the ridge is l2 * n."""
        if self._mf_items is None:  # float64 copies, made once
            model = self.estimator.model
            with torch.no_grad():
                self._mf_items = (model.item_factors.weight.detach().cpu().numpy().astype(np.float64),
                                  model.item_bias.weight.detach().cpu().numpy()[:, 0].astype(np.float64),
                                  float(model.global_mean.detach()))
        q, b, mu = self._mf_items
        x = np.hstack([q[cols], np.ones((len(cols), 1))])
        y = values.astype(np.float64) - mu - b[cols]
        ridge = max(float(self.config.get("l2", 0.0)) * len(cols), 1e-6)
        w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
        return (mu + w[-1] + b + q @ w[:-1]).astype(np.float32)

    # --- item representations -----------------------------------------------------------------------------
    def item_vectors(self) -> np.ndarray:
        """Unit-length vector of every item (``[n_items, d]``), computed once."""
        if self._item_vectors is None:
            self._item_vectors = _unit_rows(self._raw_item_vectors())
        return self._item_vectors

    def _raw_item_vectors(self) -> np.ndarray:
        from recsys_core.estimators import RowsEstimator

        est, model = self.estimator, self.estimator.model
        with torch.no_grad():
            if isinstance(est, RowsEstimator) and est.orientation == "user":
                weight = model._dec_weight(0)                       # [n_items, h1]: row i makes item i's output
            elif isinstance(est, RowsEstimator):
                items = np.arange(self.n_items)                     # I-AutoRec: each item's code
                weight = torch.cat([est._hidden_for(items[lo:lo + 4096]) for lo in range(0, self.n_items, 4096)])
            elif hasattr(model, "item_factors"):
                weight = model.item_factors.weight                  # biased MF
            elif hasattr(model, "item_emb"):
                weight = model.item_emb.weight                      # embedding MLP
            else:                                                   # NCF: GMF and MLP item embeddings
                weight = torch.cat([getattr(model, name).weight for name in ("gmf_item", "mlp_item")
                                    if hasattr(model, name)], dim=1)
            return weight.detach().float().cpu().numpy()
