"""``recsys matrices``: stage 3 (``recsys_core.matrices``)."""

from __future__ import annotations

import time
from pathlib import Path


def add(subparsers, name: str, summary: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=summary,
        description=(
            "For every split folder under SPLIT_DIR (output of the split stage; or SPLIT_DIR itself when it "
            "holds train.parquet) write OUT_DIR/<name>/ with train/valid/test.npz (users x items CSR, "
            "float32, int32 sorted indices, uncompressed), train_by_item.npz (items x users), users.parquet "
            "(row -> user_id), items.parquet (col -> item_id, title, year), negatives.npz for "
            "leave-one-out, and meta.json. Rows and columns are all users/items of the split sorted by raw "
            "id, shared by the three parts. Each output folder is replaced atomically."
        ),
    )
    parser.add_argument("split_dir", metavar="SPLIT_DIR", type=Path, help="output folder of the split stage")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder that receives one sub-folder per split")
    parser.set_defaults(func=run)


def run(args) -> int:
    from recsys_core.matrices import build_matrices  # polars, pyarrow, scipy (~0.4 s): not for `--help`

    started = time.perf_counter()
    result = build_matrices(args.split_dir, args.out_dir)
    for name, meta in result.items():
        nnz = meta["nnz"]
        print(f"{name}: {meta['n_users']:,} users x {meta['n_items']:,} items, nnz train {nnz['train']:,} "
              f"valid {nnz['valid']:,} test {nnz['test']:,}; phases (s) {meta['seconds']}")
    print(f"wrote {len(result)} matrices folder(s) under {args.out_dir} in {time.perf_counter() - started:.1f} s")
    return 0
