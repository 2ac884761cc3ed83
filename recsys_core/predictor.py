"""What evaluation, recommendation and serving ask of a model or a baseline: the ``Predictor`` protocol.

Every trained model and every baseline answers two questions about the users and items of the split it
was fitted on (rows and columns of its CSR matrices):

- ``predict_pairs(rows, cols)``: one prediction per (user row, item column) pair, ``[n]``;
- ``score_rows(rows)``: a score for every item, ``[len(rows), n_items]`` (ranking, recommendations).

``rating_model`` says whether the predictions are ratings (RMSE applies) or interaction scores (only
their order means something). Capabilities some predictors add, each its own protocol so that a caller
asks ``isinstance(p, FoldIn)`` instead of a model name:

- ``FoldIn.fold_in(cols, values)``: scores for a user absent from training, from their ratings, where
  ``FoldIn.folds_in()`` says this configuration of the model can (I-AutoRec has the method of its family
  but no user to fold in; a squashed MF is not linear in the user's vector);
- ``ItemVectors.item_vectors()``: one vector per item column (similar items, ``[n_items, d]``);
- ``LinearScores.linear_scores()``: the model's scores as one product per user (a service precomputes it);
- ``ItemSimilarities.item_similarities(cols)``: the model's own item-item similarities (similar items of a
  neighbourhood model, which has no vector per item);
- ``TensorScores.score_rows_tensor(rows)`` (``recsys_core.ranking``, re-exported here): ``score_rows`` as a
  torch tensor on the model's device that ranking may overwrite (every trained model has it; baselines
  answer ``score_rows`` alone).

A capability is declared, never discovered by a trial call: where it depends on the configuration of a
model, the protocol says so (``FoldIn.folds_in()``; ``linear_scores`` returns None) and a caller asks that.
``fold_in`` still raises ``RecsysError`` when called on a configuration that does not fold in.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from recsys_core.ranking import TensorScores, mask_items, score_block, top_k_tensor

__all__ = ["FoldIn", "ItemSimilarities", "ItemVectors", "LinearScores", "Predictor", "TensorScores", "folds_in",
           "top_items"]


@runtime_checkable
class Predictor(Protocol):
    rating_model: bool

    def predict_pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray: ...

    def score_rows(self, rows: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class FoldIn(Protocol):
    def folds_in(self) -> bool:
        """Whether this configuration of the model folds a new user in (its class has the method of its
        family; I-AutoRec and a squashed MF do not)."""
        ...

    def fold_in(self, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Scores of every item for a new user who rated item columns ``cols`` (ascending) with ``values``."""
        ...


def folds_in(predictor) -> bool:
    """Whether ``predictor`` scores a user absent from training: it declares ``FoldIn`` and this configuration
    of it says yes."""
    return isinstance(predictor, FoldIn) and bool(predictor.folds_in())


@runtime_checkable
class ItemVectors(Protocol):
    def item_vectors(self) -> np.ndarray:
        """One row per item column: the model's representation of the item."""
        ...


@runtime_checkable
class LinearScores(Protocol):
    def linear_scores(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """(users ``[n_users, d]``, weight ``[d, n_items]``, bias ``[n_items]``, offset ``[n_users]``), float32,
        such that ``score_rows(rows) == users[rows] @ weight + bias + offset[rows, None]``; None when this
        model's scores are not linear in a per-user vector."""
        ...


@runtime_checkable
class ItemSimilarities(Protocol):
    def item_similarities(self, cols: np.ndarray) -> np.ndarray:
        """The similarity of each item column of ``cols`` to every item column: ``[len(cols), n_items]``."""
        ...


def top_items(predictor: Predictor, rows: np.ndarray, k: int, exclude: sp.csr_matrix | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best item columns of each row, best first (ties: lower column first), never one stored for
    that row in ``exclude`` (those score -inf). Returns (columns ``[len(rows), k]``, scores ``[len(rows),
    n_items]``). For many rows, ``recsys_core.ranking.best_items`` keeps only the k best of each block."""
    scores = score_block(predictor, np.asarray(rows, np.int64))
    if exclude is not None:
        mask_items(scores, rows, exclude)
    return top_k_tensor(scores, k)[1].cpu().numpy(), scores.cpu().numpy()
