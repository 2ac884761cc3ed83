"""Interaction data for training: reading one stage-3 split folder and slicing batches out of CSR.

``load_split_data`` is the ONE place the training code reads a split folder. Batches are cut from the
CSR arrays directly (index arithmetic on ``indptr``), so a batch of rows becomes either a sparse bag
(column ids, values, offsets) fed to ``embedding_bag`` or, when a model needs it, a dense block of just
those rows; the whole matrix is never densified.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recsys_core.errors import InputError, RecsysError
from recsys_core.matrices import SplitMatrices, load_split

SPLIT_FILES = ("train.npz", "valid.npz", "test.npz", "users.parquet", "items.parquet", "meta.json")


def load_split_data(path: str | Path) -> SplitMatrices:
    """Load one stage-3 split folder (``matrices/<name>/``) and check its parts agree in shape."""
    path = Path(path)
    missing = [f for f in SPLIT_FILES if not (path / f).exists()]
    if missing:
        raise RecsysError(f"{path} is not a stage-3 split folder (missing {', '.join(missing)}); "
                          "build it with `python -m recsys_core matrices`")
    data = load_split(path)
    shape = (len(data.user_ids), len(data.item_ids))
    for part in ("train", "valid", "test"):
        matrix = getattr(data, part)
        if matrix.shape != shape:
            raise InputError(path / f"{part}.npz", f"shape {matrix.shape} does not match the "
                             f"{shape[0]} users x {shape[1]} items of users.parquet/items.parquet")
        if not matrix.has_sorted_indices:
            matrix.sort_indices()
    if data.train.nnz == 0:
        raise InputError(path / "train.npz", "the training matrix holds no ratings")
    return data


def rating_range(meta: dict) -> tuple[float, float]:
    return float(meta.get("rating_min", 1.0)), float(meta.get("rating_max", 5.0))


def csr_triplets(m: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) of every stored entry, rows ascending."""
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    return rows, m.indices.astype(np.int64), m.data.astype(np.float32)


def binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """The same sparsity pattern with every stored value 1 (rated = interacted), indices sorted."""
    out = sp.csr_matrix((np.ones(matrix.nnz, np.float32), matrix.indices, matrix.indptr), shape=matrix.shape)
    out.sort_indices()
    return out


def torch_csr(matrix: sp.csr_matrix, device=None) -> torch.Tensor:
    """A scipy CSR matrix as a torch CSR tensor (float32 values, int64 indices) on ``device``."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(matrix.indptr.astype(np.int64)),
                                       torch.from_numpy(matrix.indices.astype(np.int64)),
                                       torch.from_numpy(matrix.data.astype(np.float32, copy=False)),
                                       size=matrix.shape, device=device)


@dataclass
class RowBatch:
    """A batch of CSR rows as a sparse bag: entry k is (row position ``owner[k]``, column ``cols[k]``)."""

    rows: np.ndarray          # the matrix rows in this batch
    cols: torch.Tensor        # int64 [nnz]
    values: torch.Tensor      # float32 [nnz]
    offsets: torch.Tensor     # int64 [len(rows)]: start of each row's entries
    owner: torch.Tensor       # int64 [nnz]: position of the entry's row in ``rows``

    def to(self, device) -> "RowBatch":
        return RowBatch(self.rows, self.cols.to(device, non_blocking=True),
                        self.values.to(device, non_blocking=True), self.offsets.to(device, non_blocking=True),
                        self.owner.to(device, non_blocking=True))

    def dense(self, n_cols: int, values: torch.Tensor | None = None) -> torch.Tensor:
        """The batch rows as a dense block (``values`` replaces the stored values, e.g. after noise)."""
        out = torch.zeros(len(self.rows), n_cols, device=self.values.device)
        out[self.owner, self.cols] = self.values if values is None else values
        return out


def row_batch(m: sp.csr_matrix, rows: np.ndarray) -> RowBatch:
    """Slice rows of a CSR matrix without scipy fancy indexing (pure index arithmetic)."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = m.indptr[rows].astype(np.int64)
    lengths = m.indptr[rows + 1].astype(np.int64) - starts
    offsets = np.zeros(len(rows), np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    total = int(lengths.sum())
    # position j of the batch maps to starts[row] + (j - offsets[row])
    gather = np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    return RowBatch(rows, torch.from_numpy(m.indices[gather].astype(np.int64)),
                    torch.from_numpy(m.data[gather].astype(np.float32, copy=False)),
                    torch.from_numpy(offsets), torch.from_numpy(owner))


def group_pairs_by_row(rows: np.ndarray, cols: np.ndarray):
    """Sort (row, col) pairs by row; returns the order, the distinct rows and each pair's row position."""
    order = np.argsort(rows, kind="stable")
    unique_rows, inverse = np.unique(rows[order], return_inverse=True)
    return order, unique_rows, inverse
