"""Stage 3 (matrices): exact small cases, round trips from the split stage, the npz format, bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from split_fixtures import random_rows, read_rows, ts, write_stage1

from recsys_core.cli import main as cli_main
from recsys_core.errors import InputError
from recsys_core.matrices import (
    build_matrices,
    csr_from_coo,
    load_split,
    save_npz_uncompressed,
    transpose_csr,
)
from recsys_core.schema import RATINGS_SCHEMA
from recsys_core.split import split

PARTS = ("train", "valid", "test")


def write_part(path, rows):
    users, items, ratings = zip(*rows) if rows else ((), (), ())
    table = pa.table([pa.array(users, pa.int32()), pa.array(items, pa.int32()), pa.array(ratings, pa.float32()),
                      pa.array([ts("2005-01-01")] * len(rows), pa.timestamp("s", tz="UTC"))], schema=RATINGS_SCHEMA)
    pq.write_table(table, path)


def hand_split(folder, train, valid, test, with_items=True):
    folder.mkdir(parents=True)
    for name, rows in zip(PARTS, (train, valid, test)):
        write_part(folder / f"{name}.parquet", rows)
    if with_items:
        pq.write_table(pa.table({"item_id": pa.array([30, 10, 20, 99], pa.int32()),
                                 "title": ["Thirty", "Ten", "Twenty", "Unrated"],
                                 "year": pa.array([2003, 2001, None, 1999], pa.int16())}), folder / "items.parquet")
    (folder / "split.json").write_text(json.dumps({"split": folder.name, "protocol": "time"}))
    return folder


def test_known_small_split(tmp_path):
    # user 7 and item 30 appear only in test: they still get a row/column shared by all parts
    train = [(5, 20, 4.0), (3, 10, 1.0), (5, 10, 2.5), (3, 20, 5.0)]
    valid = [(3, 30, 3.0)]
    test = [(7, 30, 2.0), (5, 20, 4.5)]
    hand_split(tmp_path / "splits" / "S", train, valid, test)
    result = build_matrices(tmp_path / "splits", tmp_path / "mats")
    assert result["S"]["nnz"] == {"train": 4, "valid": 1, "test": 2}
    m = load_split(tmp_path / "mats" / "S")
    assert m.user_ids.tolist() == [3, 5, 7] and m.item_ids.tolist() == [10, 20, 30]
    assert m.user_ids.dtype == np.int32 and m.item_ids.dtype == np.int32
    np.testing.assert_array_equal(m.train.toarray(), [[1.0, 5.0, 0], [2.5, 4.0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(m.valid.toarray(), [[0, 0, 3.0], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(m.test.toarray(), [[0, 0, 0], [0, 4.5, 0], [0, 0, 2.0]])
    for matrix in (m.train, m.valid, m.test, m.train_by_item):
        assert isinstance(matrix, sp.csr_matrix)
        assert matrix.dtype == np.float32 and matrix.indices.dtype == np.int32 and matrix.indptr.dtype == np.int32
        assert matrix.has_sorted_indices
    assert m.train_by_item.shape == (3, 3)
    np.testing.assert_array_equal(m.train_by_item.toarray(), m.train.toarray().T)
    assert m.items.to_dicts() == [{"col": 0, "item_id": 10, "title": "Ten", "year": 2001},
                                  {"col": 1, "item_id": 20, "title": "Twenty", "year": None},
                                  {"col": 2, "item_id": 30, "title": "Thirty", "year": 2003}]
    users = pq.read_table(tmp_path / "mats" / "S" / "users.parquet")
    assert users.to_pydict() == {"row": [0, 1, 2], "user_id": [3, 5, 7]}
    assert users.schema.field("row").type == pa.int32() and users.schema.field("user_id").type == pa.int32()
    assert m.meta == {"split": "S", "protocol": "time", "n_users": 3, "n_items": 3,
                      "nnz": {"train": 4, "valid": 1, "test": 2}, "rating_min": 1.0, "rating_max": 5.0,
                      "rating_step": 0.5}
    assert m.negatives is None and not (tmp_path / "mats" / "S" / "negatives.npz").exists()


def test_files_are_plain_uncompressed_save_npz(tmp_path):
    hand_split(tmp_path / "S", [(1, 10, 3.0), (2, 20, 4.0)], [], [(1, 20, 5.0)])
    build_matrices(tmp_path / "S", tmp_path / "mats")  # a single split folder works too
    folder = tmp_path / "mats" / "S"
    import zipfile

    for name in ("train", "valid", "test", "train_by_item"):
        with zipfile.ZipFile(folder / f"{name}.npz") as archive:
            assert sorted(archive.namelist()) == ["data.npy", "format.npy", "indices.npy", "indptr.npy", "shape.npy"]
            assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        loaded = sp.load_npz(folder / f"{name}.npz")
        assert loaded.format == "csr"
    assert sp.load_npz(folder / "valid.npz").shape == (2, 2) and sp.load_npz(folder / "valid.npz").nnz == 0


def test_fast_npz_writer_matches_scipy(tmp_path):
    rng = np.random.default_rng(0)
    matrix = sp.random(300, 200, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    matrix.indices = matrix.indices.astype(np.int32)
    matrix.indptr = matrix.indptr.astype(np.int32)
    save_npz_uncompressed(tmp_path / "fast.npz", matrix)
    sp.save_npz(tmp_path / "scipy.npz", matrix, compressed=False)
    fast, ref = np.load(tmp_path / "fast.npz"), np.load(tmp_path / "scipy.npz")
    assert sorted(fast.files) == sorted(ref.files)
    for key in ref.files:
        np.testing.assert_array_equal(fast[key], ref[key])
        assert fast[key].dtype == ref[key].dtype


def test_csr_builder_equals_scipy_and_rejects_repeats():
    rng = np.random.default_rng(3)
    keys = rng.choice(500 * 80, 3000, replace=False)
    rows, cols = (keys // 80).astype(np.int32), (keys % 80).astype(np.int32)
    values = rng.random(3000).astype(np.float32)
    ours = csr_from_coo(rows, cols, values, (500, 80))
    reference = sp.coo_matrix((values, (rows, cols)), shape=(500, 80)).tocsr()
    reference.sort_indices()
    np.testing.assert_array_equal(ours.indptr, reference.indptr)
    np.testing.assert_array_equal(ours.indices, reference.indices)
    np.testing.assert_array_equal(ours.data, reference.data)
    transposed = transpose_csr(ours, np.zeros(5000, np.int32), np.zeros(5000, np.float32))
    np.testing.assert_array_equal(transposed.toarray(), reference.toarray().T)
    assert transposed.has_sorted_indices and transposed.indices.dtype == np.int32
    with pytest.raises(ValueError, match="repeated"):
        csr_from_coo(np.array([1, 1], np.int32), np.array([2, 2], np.int32), np.ones(2, np.float32), (3, 3))


def test_round_trip_from_split_stage(tmp_path):
    rows = random_rows(2000, seed=2, n_items=90)
    src = write_stage1(tmp_path / "in", rows)
    split(src, tmp_path / "splits", "netflix-time", seed=1, splits=["NF", "N3M"])
    split(src, tmp_path / "splits", "random", fraction=0.2, valid_fraction=0.1)
    result = build_matrices(tmp_path / "splits", tmp_path / "mats")
    assert sorted(result) == ["N3M", "NF", "random"]
    for name in result:
        m = load_split(tmp_path / "mats" / name)
        assert m.meta["protocol"] in ("netflix-time", "random")
        assert m.train.shape == m.valid.shape == m.test.shape == (len(m.user_ids), len(m.item_ids))
        assert np.all(np.diff(m.user_ids) > 0) and np.all(np.diff(m.item_ids) > 0)
        seen_users, seen_items = set(), set()
        for part in PARTS:
            expected = {(r[0], r[1]): r[2] for r in read_rows(tmp_path / "splits" / name / f"{part}.parquet")}
            coo = getattr(m, part).tocoo()
            got = {(int(m.user_ids[r]), int(m.item_ids[c])): float(v) for r, c, v in zip(coo.row, coo.col, coo.data)}
            assert got == expected, (name, part)
            seen_users |= {k[0] for k in expected}
            seen_items |= {k[1] for k in expected}
        assert set(m.user_ids.tolist()) == seen_users and set(m.item_ids.tolist()) == seen_items


def test_leave_one_out_negatives_map_to_columns(tmp_path):
    rows = random_rows(1200, seed=5, n_users=40, n_items=70)
    src = write_stage1(tmp_path / "in", rows)
    split(src, tmp_path / "splits", "leave-one-out", negatives=10, seed=3)
    build_matrices(tmp_path / "splits", tmp_path / "mats")
    m = load_split(tmp_path / "mats" / "leave-one-out")
    neg_rows, neg_items = m.negatives
    assert neg_rows.dtype == np.int32 and neg_items.dtype == np.int32 and neg_items.shape == (len(neg_rows), 10)
    negatives_path = tmp_path / "splits" / "leave-one-out" / "negatives.parquet"
    raw = {r["user_id"]: r["negatives"] for r in pq.read_table(negatives_path).to_pylist()}
    assert [int(m.user_ids[r]) for r in neg_rows] == sorted(raw)
    for r, cols in zip(neg_rows, neg_items):
        assert [int(m.item_ids[c]) for c in cols] == raw[int(m.user_ids[r])]
        rated = set(m.train[r].indices) | set(m.valid[r].indices) | set(m.test[r].indices)
        assert not rated & set(cols.tolist())
    assert all(m.test[r].nnz == 1 for r in neg_rows)


def test_train_by_item_is_loaded_lazily(tmp_path):
    hand_split(tmp_path / "S", [(1, 10, 3.0), (2, 20, 4.0)], [], [(1, 20, 5.0)])
    build_matrices(tmp_path / "S", tmp_path / "mats")
    m = load_split(tmp_path / "mats" / "S")
    assert m._train_by_item is None
    (tmp_path / "mats" / "S" / "train_by_item.npz").unlink()
    with pytest.raises(InputError, match="train_by_item.npz: not found"):
        _ = m.train_by_item


# ------------------------------------------------------------------------------------------- bad input


def test_repeated_pair_is_an_error_and_old_output_stays(tmp_path):
    hand_split(tmp_path / "splits" / "S", [(1, 10, 3.0), (1, 10, 4.0)], [], [(1, 20, 5.0)])
    old = tmp_path / "mats" / "S"
    old.mkdir(parents=True)
    (old / "meta.json").write_text("{}")
    with pytest.raises(InputError, match=r"S/train\.parquet: holds repeated \(user, item\) pairs"):
        build_matrices(tmp_path / "splits", tmp_path / "mats")
    assert [p.name for p in old.iterdir()] == ["meta.json"] and len(list((tmp_path / "mats").iterdir())) == 1


def test_missing_column_and_missing_splits(tmp_path):
    folder = hand_split(tmp_path / "splits" / "S", [(1, 10, 3.0)], [], [(1, 20, 5.0)])
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int32())}), folder / "valid.parquet")
    with pytest.raises(InputError, match=r"valid\.parquet: missing column\(s\) item_id, rating"):
        build_matrices(tmp_path / "splits", tmp_path / "mats")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no split folder"):
        build_matrices(tmp_path / "empty", tmp_path / "mats")
    with pytest.raises(InputError, match="holds no meta.json"):
        load_split(tmp_path / "empty")
    assert not (tmp_path / "mats").exists()


def test_cli(tmp_path, capsys):
    hand_split(tmp_path / "splits" / "S", [(1, 10, 3.0), (2, 20, 4.0)], [], [(1, 20, 5.0)])
    assert cli_main(["matrices", str(tmp_path / "splits"), str(tmp_path / "mats")]) == 0
    assert "S: 2 users x 2 items, nnz train 2 valid 0 test 1" in capsys.readouterr().out
    assert cli_main(["matrices", str(tmp_path / "nowhere"), str(tmp_path / "mats")]) == 2
    assert "nowhere: not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["matrices", "--help"])
    assert "SPLIT_DIR" in capsys.readouterr().out
