"""A trained run as the service and the promotion see it: a ``ServableModel``.

It is loaded through the stage API (``recsys_core.train.load_run``) and asks the model only what the
``Predictor`` protocol and its capabilities (``recsys_core.predictor``) answer, never a model's name or
family: ``score_rows``/``predict_pairs`` in the run's own index, ``FoldIn.fold_in`` for a user the model
never saw, ``ItemVectors.item_vectors`` for similar items, and ``LinearScores.linear_scores`` for the
serving fast path. A new model module gains these answers by implementing the capability; nothing here
changes. What it adds: raw-id lookups, titles, what each user rated, the training popularity and mean
(the champion's answers on a newer split, ``recsys_core.promotion``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys_core.errors import RecsysError
from recsys_core.estimators import TorchEstimator
from recsys_core.interactions import rating_range
from recsys_core.predictor import ItemSimilarities, ItemVectors, LinearScores, folds_in
from recsys_core.runs import RECOMMENDATIONS, RunConfig
from recsys_core.serving.remote import load_in_child
from recsys_core.train import load_run


class FoldInUnsupported(RecsysError):
    """The model cannot score a user absent from its training data."""


class ItemVectorsUnsupported(RecsysError):
    """The model has no vector per item (no similar items)."""


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class ServableModel:
    """A trained run loaded once: its index (raw ids <-> rows/columns, titles), what each user rated, and
    the model answering scores for known users, folded-in users and items."""

    # the run's own top lists (load_top_lists); none until read, so every answer is computed
    _top_cols: np.ndarray | None = None
    _top_scores: np.ndarray | None = None
    _top_depth: int = 0

    def __init__(self, run_dir: str | Path, device: str = "cpu"):
        self.run_dir = Path(run_dir).resolve()
        config, self.data, self.estimator = load_run(self.run_dir, device)
        self.config = RunConfig.from_json(config)   # as the run's config.json (model.pt holds a copy)
        if isinstance(self.estimator, TorchEstimator):
            self.estimator.model.eval()  # stays in eval mode: concurrent readers never toggle it
        data = self.data
        self.model_name: str = self.config.model
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
        self.can_fold_in: bool = self.n_items > 0 and folds_in(self.estimator)
        self.has_item_vectors: bool = isinstance(self.estimator, ItemVectors)
        self._item_vectors: np.ndarray | None = None
        self.has_item_similarities: bool = isinstance(self.estimator, ItemSimilarities)  # knn-item
        self._linear: tuple | None = None   # see prepare_fast_scoring
        self._remote = None                 # the child process that folds users in (for_serving)

    @classmethod
    def for_serving(cls, run_dir: str | Path, device: str = "cpu", in_child: bool = True) -> "ServableModel":
        """The run as the service holds it. A model with ``LinearScores`` is loaded in a child process
        (``recsys_core.serving.remote``), so this process reads only what answering needs (user vectors,
        output layer, ids, titles, seen items, item vectors) and never builds the training estimator;
        fold-ins go to that child. Any other model, or any with ``in_child`` False, is loaded here, as
        ``ServableModel(run_dir)``."""
        if not in_child:
            return cls(run_dir, device)
        model = cls.__new__(cls)
        model.run_dir = Path(run_dir).resolve()
        model._remote = None
        if load_in_child(model, model.run_dir, device):
            return model
        return cls(run_dir, device)

    # --- ids ----------------------------------------------------------------------------------------------
    @staticmethod
    def _lookup(sorted_ids: np.ndarray, raw) -> np.ndarray:
        raw = np.asarray(raw, np.int64)
        if len(sorted_ids) == 0:
            return np.full(raw.shape, -1, np.int64)
        pos = np.searchsorted(sorted_ids, raw)
        pos = np.minimum(pos, len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == raw, pos, -1)

    @staticmethod
    def _one(sorted_ids: np.ndarray, raw: int) -> int:
        """``_lookup`` of one id (one scalar ``searchsorted``: ~1/10 of the array path's cost per request)."""
        pos = int(sorted_ids.searchsorted(raw))
        return pos if pos < len(sorted_ids) and int(sorted_ids[pos]) == raw else -1

    def row_of(self, user_id: int) -> int:
        """Row of one raw user id, -1 where the model does not know the user."""
        return self._one(self.user_ids, user_id)

    def col_of(self, item_id: int) -> int:
        """Column of one raw item id, -1 where the item is not in the model's catalogue."""
        return self._one(self.item_ids, item_id)

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
        """Take every user's vector from models whose scores are linear in one (``LinearScores``:
        the autoencoder's last hidden layer, MF's and ALS's user factors), so that scoring a user is one
        numpy vector-matrix product (no encoder pass, no torch call): on the small test fixture
        1.1 -> 0.1 ms per answer. Returns whether it applies."""
        if self.estimator is None:   # loaded for serving from a child: the arrays are already here
            return self._linear is not None
        linear = self.estimator.linear_scores() if isinstance(self.estimator, LinearScores) else None
        if linear is None:
            return False
        users, weight, bias, offset = (np.ascontiguousarray(part, np.float32) for part in linear)
        self._linear = (users, weight, bias, offset)
        return True

    def load_top_lists(self) -> int:
        """Every known user's top list as the run wrote it (``recommendations.parquet``: the run's ``k`` best
        items among those the user never rated, by the ranking module's tie rule), so that a known user's
        answer for up to that many items is a lookup: no model math on the request path, and the same items
        as the run's own recommendations. Returns the depth (0: no lists; every answer is computed)."""
        self._top_cols, self._top_scores, self._top_depth = None, None, 0
        path = self.run_dir / RECOMMENDATIONS
        if not path.is_file() or self.n_users == 0:
            return 0
        table = pl.read_parquet(path, columns=["user_id", "rank", "item_id", "score"])
        ranks = table["rank"].to_numpy().astype(np.int64) - 1
        depth = int(ranks.max()) + 1 if len(ranks) else 0
        rows = self.rows_of(table["user_id"].to_numpy())
        cols = self.cols_of(table["item_id"].to_numpy())
        if depth == 0 or (rows < 0).any() or (cols < 0).any() or (ranks < 0).any():
            return 0  # not this run's index: answer by computing
        top_cols = np.full((self.n_users, depth), -1, np.int32)
        top_scores = np.full((self.n_users, depth), -np.inf, np.float32)
        top_cols[rows, ranks] = cols
        top_scores[rows, ranks] = table["score"].to_numpy()
        self._top_cols, self._top_scores, self._top_depth = top_cols, top_scores, depth
        return depth

    def top_list(self, row: int, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(columns, scores) of a known user's ``k`` best unrated items from the run's lists, best first;
        None where the lists do not hold them (k deeper than the run's, or a user without a list)."""
        if k > self._top_depth or self._top_cols is None or self._top_scores is None:
            return None
        cols = self._top_cols[row, :k]
        if cols[0] < 0:  # no list: the run listed no item for this user (no training ratings)
            return None
        keep = cols >= 0  # fewer than k unrated items: the run listed fewer
        return cols[keep].astype(np.int64), self._top_scores[row, :k][keep]

    def predict_pairs(self, rows, cols) -> np.ndarray:
        return np.asarray(self.estimator.predict_pairs(np.asarray(rows, np.int64), np.asarray(cols, np.int64)),
                          np.float32)

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Scores of every item for a user absent from training, from their ratings of columns ``cols``."""
        if not self.can_fold_in:
            raise FoldInUnsupported(f"a {self.model_name} model cannot score a user absent from its training "
                                    "data; serve a model that folds new users in for that (docs/serving.md)")
        cols = np.asarray(cols, np.int64)
        values = np.asarray(values, np.float32)
        if len(cols) == 0:
            raise RecsysError("at least one rating of an item the model knows is needed to fold a user in")
        if self._remote is not None:
            return self._remote.fold_in(cols, values)
        order = np.argsort(cols, kind="stable")
        return np.asarray(self.estimator.fold_in(cols[order], values[order]), np.float32)

    # --- item representations -----------------------------------------------------------------------------
    def item_similarities(self, col: int) -> np.ndarray:
        """The model's own similarity of item column ``col`` to every item (``[n_items]`` float32, a copy)."""
        return np.array(self.estimator.item_similarities(np.array([col], np.int64))[0], np.float32)

    def item_vectors(self) -> np.ndarray:
        """Unit-length vector of every item (``[n_items, d]``), computed once."""
        if self._item_vectors is None:
            if not self.has_item_vectors:
                raise ItemVectorsUnsupported(f"a {self.model_name} model has no vector per item to find "
                                             "similar items with")
            self._item_vectors = _unit_rows(np.asarray(self.estimator.item_vectors(), np.float32))
        return self._item_vectors
