"""Surprise's reference models on a project split folder, beside the project's own runs (docs/train.md,
"The Prize's models"): BaselineOnly, KNNBaseline (item-based, pearson_baseline), SVD and SVD++ with
Surprise's defaults, fitted on the split's train part only, RMSE on its valid and test parts.

Surprise is never a project dependency: run this in its own environment,

    python3 -m venv /tmp/surprise && /tmp/surprise/bin/pip install scikit-surprise scipy
    /tmp/surprise/bin/python bench/bench_surprise.py data/matrices/random/random [more split folders]

(the split folders are what `recsys matrices` writes). Prints one markdown row per split and model.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from surprise import SVD, BaselineOnly, Dataset, KNNBaseline, Reader, SVDpp, accuracy


def triplets(path: Path) -> list[tuple[str, str, float]]:
    """(user row, item column, rating) of every stored rating, ids as Surprise's raw string ids."""
    m = sp.load_npz(path).tocsr()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    return [(str(u), str(i), float(r)) for u, i, r in zip(rows, m.indices, m.data)]


def main(folders: list[str]) -> None:
    print("| split | model | valid RMSE | test RMSE | fit s |")
    print("|---|---|---|---|---|")
    for folder in map(Path, folders):
        meta = json.loads((folder / "meta.json").read_text())
        reader = Reader(rating_scale=(meta.get("rating_min", 1.0), meta.get("rating_max", 5.0)))
        reader = Reader(line_format="user item rating", sep=",", rating_scale=reader.rating_scale)
        with tempfile.NamedTemporaryFile("w", suffix=".csv") as csv:
            csv.writelines(f"{u},{i},{r}\n" for u, i, r in triplets(folder / "train.npz"))
            csv.flush()
            train = Dataset.load_from_file(csv.name, reader).build_full_trainset()
        parts = {name: triplets(folder / f"{name}.npz") for name in ("valid", "test")}
        algorithms = {"BaselineOnly": BaselineOnly(verbose=False),
                      "KNNBaseline (item, pearson_baseline)": KNNBaseline(
                          sim_options={"name": "pearson_baseline", "user_based": False}, verbose=False),
                      "SVD": SVD(random_state=0), "SVD++": SVDpp(random_state=0)}
        for name, algorithm in algorithms.items():
            started = time.perf_counter()
            algorithm.fit(train)
            seconds = time.perf_counter() - started
            scores = [accuracy.rmse(algorithm.test(parts[p]), verbose=False) if parts[p] else float("nan")
                      for p in ("valid", "test")]
            print(f"| {folder.name} | {name} | {scores[0]:.4f} | {scores[1]:.4f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
