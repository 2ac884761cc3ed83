"""The parts of one recommendation answer, in process, side by side (no server): the choices that
``recsys_core/serving`` made by measuring.

    .venv/bin/python bench/bench_serve_parts.py [--items 17733] [--k 10]

1. top-k of one row of scores (``--items`` generated scores): ``recsys_core.ranking.top_k`` (torch, the
   evaluation's path) against the service's ``top_k_row`` (numpy ``argpartition`` + a sort of k), same answer;
2. the JSON of a k-item answer: the standard library's encoder (what Starlette's ``JSONResponse`` uses),
   orjson over the per-item dicts (the service), and orjson-free pre-encoded per-item fragments joined as
   bytes (the alternative without per-item dicts).

Prints microseconds per call (best of 5 repeats). Generated data; run it beside nothing else or label the
load average it ran at.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_us(fn, number: int) -> float:
    return round(min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=17_733, help="catalogue size (default: full-scale N3M's)")
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args()

    import orjson

    from recsys_core.cli.serve import single_threaded_blas
    from recsys_core.ranking import top_k
    from recsys_core.serving.service import top_k_row

    single_threaded_blas()
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    scores = rng.random(args.items).astype(np.float32)
    scores[rng.random(args.items) < 0.01] = -np.inf   # the user's rated items
    assert np.array_equal(top_k(scores[None, :], args.k)[0], top_k_row(scores, args.k))
    results = {"top_k_torch_us": best_us(lambda: top_k(scores[None, :], args.k), 300),
               "top_k_numpy_us": best_us(lambda: top_k_row(scores, args.k), 300)}

    ids = np.arange(1, args.items + 1)
    titles = [f"Movie {i}: \"The Sequel\" (2004)" for i in range(args.items)]
    cols = top_k_row(scores, args.k)
    picked = scores[cols]
    fragments = [b'"item_id":%d,"title":%s,"score":' % (i, orjson.dumps(t)) for i, t in zip(ids.tolist(), titles)]
    head = {"model": "netflix-N3M", "version": 3, "user_id": 6}

    def items() -> list[dict]:
        return [{"rank": rank, "item_id": int(ids[c]), "title": titles[c], "score": float(s)}
                for rank, (c, s) in enumerate(zip(cols.tolist(), picked.tolist()), 1)]

    def stdlib() -> bytes:
        return json.dumps({**head, "items": items()}).encode()

    def orjson_dicts() -> bytes:
        return orjson.dumps({**head, "items": items()})

    prefix = b'{"model":"netflix-N3M","version":3,"user_id":%d,"items":['

    def fragments_joined() -> bytes:
        parts = [b'{"rank":%d,%s%s}' % (rank, fragments[c], repr(s).encode() if math.isfinite(s) else b"null")
                 for rank, (c, s) in enumerate(zip(cols.tolist(), picked.tolist()), 1)]
        return prefix % 6 + b",".join(parts) + b"]}"

    assert orjson.loads(fragments_joined()) == orjson.loads(orjson_dicts()) == json.loads(stdlib())
    results.update(json_stdlib_us=best_us(stdlib, 2000), json_orjson_dicts_us=best_us(orjson_dicts, 2000),
                   json_fragments_us=best_us(fragments_joined, 2000))
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
