"""Stage 3: sparse matrices of each split, with one dense id index shared by train, valid and test.

For every split folder ``SPLIT_ROOT/<name>/`` (stage-2 output) this writes ``OUT_DIR/<name>/``:
``train.npz``, ``valid.npz``, ``test.npz`` (users x items CSR, float32 values, int32 sorted indices,
uncompressed), ``train_by_item.npz`` (items x users CSR of train), ``users.parquet`` (row -> user_id),
``items.parquet`` (col -> item_id, title, year), ``negatives.npz`` for leave-one-out, and ``meta.json``.
Rows are all users of the split sorted by raw id, columns all items of the split sorted by raw id.

CSR arrays are built with scipy's C++ counting sort (``coo_tocsr``, O(nnz)) followed by a per-row sort
of the column indices, which is much faster than a global sort on (row, col) keys.
``load_split(path)`` loads a folder back in one call.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy._core import multiarray as np_multiarray
from numpy.lib import format as npy_format
from scipy.sparse import _sparsetools

from recsys_core.errors import InputError, RecsysError
from recsys_core.idset import IdSet
from recsys_core.io import atomic_dir, read_json, write_json
from recsys_core.progress import track

log = logging.getLogger("recsys_core")

PARTS = ("train", "valid", "test")

# --------------------------------------------------------------------------------------------- CSR


def csr_from_coo(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR with float32 data, int32 sorted indices, from unordered (row, col, value) triples.

    Raises ValueError on a repeated (row, col) pair (scipy would silently add them up).
    """
    n_rows, n_cols = shape
    nnz = len(rows)
    if max(n_rows, n_cols, nnz) >= np.iinfo(np.int32).max:
        raise RecsysError(f"a matrix of shape {shape} with {nnz} entries exceeds int32 indices")
    indptr = np.empty(n_rows + 1, dtype=np.int32)
    indices = np.empty(nnz, dtype=np.int32)
    data = np.empty(nnz, dtype=np.float32)
    # stable O(nnz) counting sort by row, done in C++ by scipy
    _sparsetools.coo_tocsr(n_rows, n_cols, nnz, rows.astype(np.int32, copy=False), cols.astype(np.int32, copy=False),
                           values.astype(np.float32, copy=False), indptr, indices, data)
    matrix = sp.csr_matrix((data, indices, indptr), shape=shape, copy=False)
    if not matrix.has_sorted_indices:
        matrix.sort_indices()
    if not matrix.has_canonical_format:
        raise ValueError("repeated (user, item) pairs")
    return matrix


def transpose_csr(matrix: sp.csr_matrix, indices_out: np.ndarray | None = None,
                  data_out: np.ndarray | None = None) -> sp.csr_matrix:
    """The transposed matrix as CSR with sorted indices (csr -> csc is a stable counting sort).

    ``indices_out`` / ``data_out`` (int32 / float32, length nnz) may be handed in to be filled
    instead of fresh arrays: memory that is already mapped is much cheaper than new pages.
    """
    n_rows, n_cols = matrix.shape
    nnz = matrix.nnz
    indptr = np.empty(n_cols + 1, dtype=np.int32)
    indices = indices_out[:nnz] if indices_out is not None and len(indices_out) >= nnz else np.empty(nnz, np.int32)
    data = data_out[:nnz] if data_out is not None and len(data_out) >= nnz else np.empty(nnz, np.float32)
    _sparsetools.csr_tocsc(n_rows, n_cols, matrix.indptr, matrix.indices, matrix.data, indptr, indices, data)
    out = sp.csr_matrix((data, indices, indptr), shape=(n_cols, n_rows), copy=False)
    out.has_sorted_indices = True
    return out


def save_npz_uncompressed(dest: Path, matrix: sp.csr_matrix) -> None:
    """What ``scipy.sparse.save_npz(dest, matrix, compressed=False)`` writes, without its copies.

    ``np.savez`` copies every array through 16 MB ``tobytes`` chunks; here each array's buffer goes to
    the zip member as it is (same members, same .npy headers, so ``scipy.sparse.load_npz`` reads it).
    """
    arrays = {
        "indices": matrix.indices,
        "indptr": matrix.indptr,
        "format": np.asarray(matrix.format.encode("ascii")),
        "shape": np.asarray(matrix.shape),
        "data": matrix.data,
    }
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                npy_format.write_array_header_1_0(member, npy_format.header_data_from_array_1_0(array))
                member.write(array.reshape(-1).view(np.uint8).data)


# --------------------------------------------------------------------------------------------- build


def _split_folders(split_root: Path) -> list[Path]:
    split_root = Path(split_root)
    if not split_root.is_dir():
        raise InputError(split_root, "not found; give the output folder of the split stage")
    if (split_root / "train.parquet").is_file():  # a single split folder
        return [split_root]
    folders = sorted(p for p in split_root.iterdir() if p.is_dir() and (p / "train.parquet").is_file()
                     and not p.name.startswith("."))
    if not folders:
        raise InputError(split_root, "holds no split folder with a train.parquet (python -m recsys_core split)")
    return folders


def _open_part(path: Path) -> pq.ParquetFile:
    if not path.is_file():
        raise InputError(path, "not found; each split folder holds train, valid and test Parquet files")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise InputError(path, f"not a readable Parquet file ({err})") from None
    missing = [c for c in ("user_id", "item_id", "rating") if c not in parquet.schema_arrow.names]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    return parquet


def _read_chunks(parquet: pq.ParquetFile, path: Path, name: str, dtype) -> list[np.ndarray]:
    """One column as zero-copy numpy chunks (one per row group), so no concatenated copy is made."""
    column = parquet.read(columns=[name], use_threads=True).column(0)
    if column.null_count:
        raise InputError(path, f"column {name} holds null values")
    return [np.asarray(c.to_numpy(zero_copy_only=False)).astype(dtype, copy=False) for c in column.chunks]


def _fill(chunks: list[np.ndarray], index: IdSet | None = None, dtype: npt.DTypeLike = np.int32) -> np.ndarray:
    """Concatenate chunks into one fresh array; with ``index``, their positions in it instead of the ids."""
    out = np.empty(sum(len(c) for c in chunks), dtype=dtype)
    start = 0
    for chunk in chunks:
        if index is not None:
            index.positions_into(chunk, out[start:start + len(chunk)])
        else:
            out[start:start + len(chunk)] = chunk
        start += len(chunk)
    return out


def _rating_scale(chunks: list[np.ndarray]) -> tuple[float | None, float | None, float | None]:
    distinct = [pa.array(c).unique().to_numpy() for c in chunks]
    values = np.unique(np.concatenate(distinct)) if distinct else np.zeros(0)
    if len(values) == 0:
        return None, None, None
    steps = np.diff(values)
    return float(values[0]), float(values[-1]), (float(steps.min()) if len(steps) else None)


def _items_table(split_dir: Path, index: IdSet) -> pa.Table:
    frame = pl.DataFrame({"col": np.arange(len(index), dtype=np.int32), "item_id": index.ids})
    catalogue_path = split_dir / "items.parquet"
    if catalogue_path.is_file():
        catalogue = pl.read_parquet(catalogue_path, columns=["item_id", "title", "year"])
        catalogue = catalogue.with_columns(pl.col("item_id").cast(pl.Int32)).unique("item_id", keep="first")
        frame = frame.join(catalogue, on="item_id", how="left").sort("col")
    else:
        frame = frame.with_columns(pl.lit(None, pl.String).alias("title"), pl.lit(None, pl.Int16).alias("year"))
    return frame.select(pl.col("col").cast(pl.Int32), pl.col("item_id").cast(pl.Int32), pl.col("title").cast(pl.String),
                        pl.col("year").cast(pl.Int16)).to_arrow()


def _negatives(split_dir: Path, users: IdSet, items: IdSet) -> dict[str, np.ndarray] | None:
    path = split_dir / "negatives.parquet"
    if not path.is_file():
        return None
    table = pq.read_table(path)
    if table.num_rows == 0:
        return {"rows": np.zeros(0, np.int32), "items": np.zeros((0, 0), np.int32)}
    lists = table.column("negatives").combine_chunks()
    lengths = lists.value_lengths().to_numpy()
    if (lengths != lengths[0]).any():
        raise InputError(path, "negatives lists differ in length")
    rows = users.positions(table.column("user_id").to_numpy().astype(np.int32))
    flat = np.asarray(lists.flatten().to_numpy()).astype(np.int32)
    cols = items.positions(flat).reshape(len(rows), lengths[0])
    if (rows < 0).any() or (cols < 0).any():
        raise InputError(path, "names users or items that are in none of the split's parts")
    return {"rows": rows.astype(np.int32), "items": cols.astype(np.int32)}


@contextlib.contextmanager
def _small_pages() -> Iterator[None]:
    """Ask numpy not to madvise huge pages for new arrays while the block runs.

    With transparent huge pages in ``madvise`` mode the kernel compacts memory on the first touch
    of every advised array; on a machine whose memory is full of page cache that made first touches
    several times slower than the work done on the arrays (measured: 0.87 s vs 0.14 s for 400 MB).
    """
    set_madvise_hugepage = getattr(np_multiarray, "_set_madvise_hugepage", None)  # private: absent, keep the default
    if set_madvise_hugepage is None:
        yield
        return
    previous = set_madvise_hugepage(False)
    try:
        yield
    finally:
        set_madvise_hugepage(previous)


def build_split_matrices(split_dir: Path, out_dir: Path) -> dict:
    """Matrices of one split folder into ``out_dir`` (replaced atomically); returns its meta."""
    with _small_pages():
        return _build_split_matrices(split_dir, out_dir)


def _build_split_matrices(split_dir: Path, out_dir: Path) -> dict:
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    clock = [started]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - clock[0], 3)
        clock[0] = now

    files = {part: _open_part(split_dir / f"{part}.parquet") for part in PARTS}

    def read(name: str, dtype) -> dict[str, list[np.ndarray]]:
        chunks = {part: _read_chunks(files[part], split_dir / f"{part}.parquet", name, dtype) for part in PARTS}
        lap("read")
        return chunks

    def indexed(name: str) -> tuple[IdSet, dict[str, np.ndarray]]:
        # read one id column of the three parts, build the index, map into row/column numbers, drop the ids
        chunks = read(name, np.int32)
        index = IdSet(c for part in PARTS for c in chunks[part])
        lap("index")
        numbers = {part: _fill(chunks.pop(part), index) for part in PARTS}
        lap("map")
        return index, numbers

    users, rows = indexed("user_id")
    items, cols = indexed("item_id")
    rating_chunks = read("rating", np.float32)
    rating_min, rating_max, rating_step = _rating_scale([c for part in PARTS for c in rating_chunks[part]])
    values = {part: _fill(rating_chunks.pop(part), dtype=np.float32) for part in PARTS}
    lap("map")
    shape = (len(users), len(items))
    meta_path = split_dir / "split.json"
    split_info = read_json(meta_path) if meta_path.is_file() else {}
    negatives = _negatives(split_dir, users, items)
    matrices: dict[str, sp.csr_matrix] = {}

    def build(part: str) -> sp.csr_matrix:
        try:
            matrices[part] = csr_from_coo(rows.pop(part), cols[part], values[part], shape)
        except ValueError as err:
            raise InputError(split_dir / f"{part}.parquet",
                             f"holds {err}; each user rates an item at most once") from None
        return matrices[part]

    # Writing ~1.6 GB of npz is kernel time; a writer thread overlaps it with the CSR work on the main
    # thread. The pool is closed (all writes done) before atomic_dir renames or discards the folder.
    with atomic_dir(out_dir) as tmp, ThreadPoolExecutor(max_workers=1, thread_name_prefix="npz-writer") as pool:
        writes = [pool.submit(save_npz_uncompressed, tmp / "train.npz", build("train"))]
        lap("csr")
        # the coordinate arrays of train are free now: the transpose fills them instead of new memory
        train_by_item = transpose_csr(matrices["train"], cols.pop("train"), values.pop("train"))
        writes.append(pool.submit(save_npz_uncompressed, tmp / "train_by_item.npz", train_by_item))
        lap("transpose")
        for part in PARTS[1:]:
            save_npz_uncompressed(tmp / f"{part}.npz", build(part))
        cols.clear()
        values.clear()
        lap("csr")
        meta = {
            "split": split_info.get("split", split_dir.name),
            "protocol": split_info.get("protocol"),
            "n_users": shape[0],
            "n_items": shape[1],
            "nnz": {part: int(matrices[part].nnz) for part in PARTS},
            "rating_min": rating_min,
            "rating_max": rating_max,
            "rating_step": rating_step,
        }
        user_rows = pa.array(np.arange(len(users), dtype=np.int32))
        pq.write_table(pa.table({"row": user_rows, "user_id": pa.array(users.ids)}), tmp / "users.parquet")
        pq.write_table(_items_table(split_dir, items), tmp / "items.parquet")
        if negatives is not None:
            np.savez(tmp / "negatives.npz", rows=negatives["rows"], items=negatives["items"])
        write_json(tmp / "meta.json", meta)
        for write in writes:
            write.result()
        lap("write")
    log.info("matrices %s: %s (%.1f s)", meta["split"], timings, time.perf_counter() - started)
    return {**meta, "seconds": timings}


def build_matrices(split_root: str | Path, out_dir: str | Path) -> dict:
    """Matrices of every split folder under ``split_root`` into ``out_dir/<name>/``; returns {name: meta}.

    The returned metas carry a ``seconds`` phase breakdown (read, index, csr, transpose, write) that
    is not part of the meta.json written.
    """
    result = {}
    for folder in track(_split_folders(Path(split_root)), "matrices", unit="splits"):
        result[folder.name] = build_split_matrices(folder, Path(out_dir) / folder.name)
    return result


# --------------------------------------------------------------------------------------------- load


@dataclass
class SplitMatrices:
    """One ``matrices/<name>/`` folder in memory. ``train_by_item`` is read on first use."""

    path: Path
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    user_ids: np.ndarray
    item_ids: np.ndarray
    items: pl.DataFrame
    meta: dict
    negatives: tuple[np.ndarray, np.ndarray] | None
    _train_by_item: sp.csr_matrix | None = field(default=None, repr=False)

    @property
    def train_by_item(self) -> sp.csr_matrix:
        if self._train_by_item is None:
            self._train_by_item = _load_csr(self.path / "train_by_item.npz")
        return self._train_by_item

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]


def _load_csr(path: Path) -> sp.csr_matrix:
    if not path.is_file():
        raise InputError(path, "not found; build it with python -m recsys_core matrices")
    try:
        matrix = sp.load_npz(path)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(path, f"not a readable sparse matrix ({err})") from None
    return sp.csr_matrix(matrix)


def load_split(path: str | Path) -> SplitMatrices:
    """Load one matrices folder (output of ``build_matrices``) in one call."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise InputError(path, "holds no meta.json; give one matrices/<name>/ folder (python -m recsys_core matrices)")
    users = pq.read_table(path / "users.parquet")
    items = pl.read_parquet(path / "items.parquet")
    negatives = None
    if (path / "negatives.npz").is_file():
        with np.load(path / "negatives.npz") as archive:
            negatives = (archive["rows"], archive["items"])
    return SplitMatrices(
        path=path,
        train=_load_csr(path / "train.npz"),
        valid=_load_csr(path / "valid.npz"),
        test=_load_csr(path / "test.npz"),
        user_ids=users.column("user_id").to_numpy().astype(np.int32),
        item_ids=items["item_id"].to_numpy().astype(np.int32),
        items=items,
        meta=read_json(path / "meta.json"),
        negatives=negatives,
    )
