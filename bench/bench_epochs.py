"""The project's MF epoch against Surprise's SVD epoch, and the project's ALS sweep against implicit's ALS
sweep, side by side in one run on the same stage-3 split (issue 21). Results and commands in BENCHMARKS.md.

Surprise and implicit are what users would pick instead; they are never project dependencies. Install them
in the benchmark's own environment and name its interpreter with ``--baseline-python``: their part runs
there, in a child process, on the same training ratings written to a temporary folder::

    python3 -m venv /tmp/benchenv --system-site-packages
    /tmp/benchenv/bin/pip install scikit-surprise implicit
    RECSYS_PROGRESS=0 nice -n 5 .venv/bin/python bench/bench_epochs.py data/matrices-10/N3M \\
        --baseline-python /tmp/benchenv/bin/python --epochs 10 --dim 16 --threads 2

Same factors, epochs and update rule on both sides: MF ``dim`` = SVD ``n_factors``, MF ``epochs`` (patience 0)
= SVD ``n_epochs``; the project's MF with its hand-written SGD solver (``solver sgd``: Surprise's rule one
rating at a time, compiled) at Surprise's lr 0.005 and reg 0.02 (``--sgd-lr``, ``--sgd-reg``); Surprise at its
defaults. ``--autograd-mf`` adds the project's MF at its autograd defaults (Adam lr
0.002, batch 1,024, per-example L2 0.02, the row-wise sparse step). Test RMSE of both on the
split's test part, clipped to the rating range (Surprise clips in ``predict``). ALS: same factors, reg,
alpha, sweeps and conjugate-gradient steps (``implicit``'s CG solver, the one the project's ALS follows),
same threads. ``--dense-mf`` adds the project's MF with dense embeddings and Adam (``--no-sparse``: every
row of every table and moment each step), the update before issue 21.

Prints one JSON object: the machine load, then per contender seconds per epoch/sweep and test RMSE; for MF
and Surprise also CPU seconds per epoch (MF's: a fit of N epochs less a fit of one, over N - 1, both after a
warm-up fit of one epoch that pays the once-a-process imports and the load of numba's compiled loop) and three
ratios: whole fit / epochs, median epoch (the loop's timing: updates and a valid pass), CPU per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from measure import peak_rss_mb  # noqa: E402

from recsys_core import models  # noqa: E402
from recsys_core.interactions import csr_triplets, load_split_data, rating_range  # noqa: E402

# What runs in the baseline interpreter: Surprise's SVD and implicit's ALS on the ratings in ``folder``.
BASELINES = r'''
import json, sys, time
import numpy as np
folder, args = sys.argv[1], json.loads(sys.argv[2])
train = np.load(folder + "/train.npz")
test = np.load(folder + "/test.npz")
out = {}
if args["surprise"]:
    import surprise
    from surprise import SVD, Trainset
    users, items, values = train["users"], train["items"], train["values"]
    ur, ir = {}, {}
    for u, i, r in zip(users.tolist(), items.tolist(), values.tolist()):
        ur.setdefault(u, []).append((i, r))
        ir.setdefault(i, []).append((u, r))
    # inner ids = the split's row/column indices (the raw ids are those indices too)
    trainset = Trainset(ur, ir, int(users.max()) + 1, int(items.max()) + 1, len(values), tuple(args["range"]),
                        {u: u for u in ur}, {i: i for i in ir})
    algo = SVD(n_factors=args["dim"], n_epochs=args["epochs"], random_state=args["seed"])
    started, cpu = time.perf_counter(), time.process_time()
    algo.fit(trainset)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    tu, ti, tv = test["users"], test["items"], test["values"]
    known_u = np.isin(tu, list(ur))
    known_i = np.isin(ti, list(ir))
    pred = np.full(len(tv), trainset.global_mean)
    pred += np.where(known_u, algo.bu[np.where(known_u, tu, 0)], 0.0)
    pred += np.where(known_i, algo.bi[np.where(known_i, ti, 0)], 0.0)
    both = known_u & known_i
    pred[both] += (algo.pu[tu[both]] * algo.qi[ti[both]]).sum(1)
    pred = np.clip(pred, *args["range"])
    out["surprise_svd"] = {"version": surprise.__version__, "seconds": seconds,
                           "seconds_per_epoch": seconds / args["epochs"], "cpu_seconds_per_epoch": cpu / args["epochs"],
                           "test_rmse": float(np.sqrt(np.mean((pred - tv) ** 2)))}
if args["implicit"]:
    import implicit
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    a = args["als"]
    user_items = sp.csr_matrix((np.ones(len(train["users"]), np.float32), (train["users"], train["items"])),
                               shape=(args["n_users"], args["n_items"]))
    model = AlternatingLeastSquares(factors=a["factors"], regularization=a["reg"], alpha=a["alpha"],
                                    iterations=a["iterations"], use_cg=True,  # 3 CG steps, fixed in 0.7
                                    num_threads=args["threads"], random_state=args["seed"],
                                    calculate_training_loss=False)
    started = time.perf_counter()
    model.fit(user_items, show_progress=False)
    seconds = time.perf_counter() - started
    out["implicit_als"] = {"version": implicit.__version__, "seconds": seconds,
                           "seconds_per_sweep": seconds / a["iterations"]}
print(json.dumps(out))
'''


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("split_dir", help="a stage-3 split folder (e.g. N3M of generated data)")
    p.add_argument("--baseline-python", help="interpreter that has scikit-surprise and implicit installed")
    p.add_argument("--epochs", type=int, default=10, help="MF epochs = SVD epochs")
    p.add_argument("--dim", type=int, default=16, help="MF dim = SVD n_factors")
    p.add_argument("--threads", type=int, default=2, help="torch threads = implicit's num_threads")
    p.add_argument("--als-factors", type=int, default=32)
    p.add_argument("--als-iterations", type=int, default=5, help="ALS sweeps on both sides")
    p.add_argument("--sgd-lr", type=float, default=0.005, help="the sgd solver's lr (Surprise's default)")
    p.add_argument("--sgd-reg", type=float, default=0.02, help="the sgd solver's l2 (Surprise's reg default)")
    p.add_argument("--autograd-mf", action="store_true", help="also the project's MF at its autograd defaults")
    p.add_argument("--dense-mf", action="store_true", help="also the project's MF with dense updates")
    p.add_argument("--skip", nargs="*", default=[], choices=["mf", "als", "surprise", "implicit"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_split_data(args.split_dir)
    low, high = rating_range(data.meta)
    rows, cols, values = csr_triplets(data.train)
    t_rows, t_cols, t_values = csr_triplets(data.test)
    result = {"split": str(args.split_dir), "users": int(data.train.shape[0]), "items": int(data.train.shape[1]),
              "train_ratings": int(data.train.nnz), "test_ratings": int(data.test.nnz), "threads": args.threads,
              "epochs": args.epochs, "dim": args.dim, "load_at_start": _load()}
    als_options = {"factors": args.als_factors, "reg": 10.0, "alpha": 1.0, "iterations": args.als_iterations,
                   "cg_steps": 3}

    def fit_mf(epochs: int, options: dict):
        estimator = models.create("mf", dim=args.dim, epochs=epochs, patience=0, seed=args.seed, **options)
        started, cpu = time.perf_counter(), time.process_time()
        summary = estimator.fit(data)
        return estimator, summary, time.perf_counter() - started, time.process_time() - cpu

    def mf(cpu_per_epoch: bool = False, **options) -> dict:
        extra = {}
        if cpu_per_epoch:  # CPU seconds of epochs 2..N: a fit of N epochs less a fit of 1 (setup, epoch 1)
            extra["cpu_seconds_warm_up_fit"] = fit_mf(1, options)[3]  # imports, numba's cache: once a process
            extra["cpu_seconds_one_epoch_fit"] = fit_mf(1, options)[3]
        estimator, summary, seconds, cpu = fit_mf(args.epochs, options)
        if cpu_per_epoch:
            extra["cpu_seconds_per_epoch"] = (cpu - extra["cpu_seconds_one_epoch_fit"]) / max(args.epochs - 1, 1)
        pred = np.clip(estimator.predict_pairs(t_rows, t_cols), low, high)
        # seconds_per_epoch: the whole fit (setup, and a valid pass per epoch that Surprise does not make) / epochs
        return {"seconds": seconds, "seconds_per_epoch": seconds / args.epochs,
                "epoch_seconds": [round(s, 2) for s in summary["history"]["seconds"]],
                "median_epoch_seconds": float(np.median(summary["history"]["seconds"])),
                "test_rmse": float(np.sqrt(np.mean((pred - t_values) ** 2))), "cpu_seconds": cpu, **extra,
                "load": _load()}

    if "mf" not in args.skip:
        result["project_mf"] = {"solver": "sgd", "lr": args.sgd_lr, "l2": args.sgd_reg,
                                **mf(cpu_per_epoch=True, solver="sgd", lr=args.sgd_lr, l2=args.sgd_reg)}
        if args.autograd_mf:
            result["project_mf_autograd"] = mf(sparse=True)
        if args.dense_mf:
            result["project_mf_dense"] = mf(sparse=False)
    if "als" not in args.skip:
        estimator = models.create("als", seed=args.seed, **als_options)
        started = time.perf_counter()
        summary = estimator.fit(data)
        seconds = time.perf_counter() - started
        result["project_als"] = {"seconds": seconds, "seconds_per_sweep": seconds / args.als_iterations,
                                 "sweep_seconds": summary["seconds_per_sweep"], "load": _load()}
    wanted = {"surprise": "surprise" not in args.skip, "implicit": "implicit" not in args.skip}
    if args.baseline_python and any(wanted.values()):
        with tempfile.TemporaryDirectory() as folder:
            np.savez(Path(folder) / "train.npz", users=rows, items=cols, values=values)
            np.savez(Path(folder) / "test.npz", users=t_rows, items=t_cols, values=t_values)
            spec = {**wanted, "dim": args.dim, "epochs": args.epochs, "seed": args.seed, "range": [low, high],
                    "threads": args.threads, "als": als_options, "n_users": int(data.train.shape[0]),
                    "n_items": int(data.train.shape[1])}
            env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # implicit asks for this
            done = subprocess.run([args.baseline_python, "-c", BASELINES, folder, json.dumps(spec)],
                                  capture_output=True, text=True, env=env)
            if done.returncode == 0:
                result.update(json.loads(done.stdout.strip().splitlines()[-1]))
            else:  # the project's numbers are still printed
                result["baselines_error"] = done.stderr.strip().splitlines()[-1:]
    if "project_mf" in result and "surprise_svd" in result:
        result["mf_epoch_vs_svd"] = round(result["project_mf"]["seconds_per_epoch"]
                                          / result["surprise_svd"]["seconds_per_epoch"], 2)
        # an epoch as the loop times it (its updates and a valid pass), without the fit's one-off setup
        result["mf_median_epoch_vs_svd"] = round(result["project_mf"]["median_epoch_seconds"]
                                                 / result["surprise_svd"]["seconds_per_epoch"], 2)
        # CPU seconds per epoch: what the machine's other work disturbs least (the sgd solver is one thread)
        result["mf_cpu_epoch_vs_svd"] = round(result["project_mf"]["cpu_seconds_per_epoch"]
                                              / result["surprise_svd"]["cpu_seconds_per_epoch"], 2)
    if "project_als" in result and "implicit_als" in result:
        result["als_sweep_vs_implicit"] = round(result["project_als"]["seconds_per_sweep"]
                                                / result["implicit_als"]["seconds_per_sweep"], 2)
    result["load_at_end"] = _load()
    result["peak_rss_mb"] = round(peak_rss_mb())
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
