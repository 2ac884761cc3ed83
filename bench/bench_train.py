"""Benchmarks of stage 4 (results and commands in BENCHMARKS.md). Heavy: run under
``flock /tmp/heavy.lock``. Every mode prints wall time, CPU time and peak RSS.

Modes:
  make-data    generate an N3M-like split folder (default 48K users x 5.6K items, ~2M train ratings,
               ~200K valid and ~200K test) with the test-fixture generator, in the stage-3 layout.
  autoencoder  CPU: the paper's NF architecture (512,512,1024, dropout 0.8, one re-feeding step, batch 128)
               on that split: seconds per training epoch and per evaluation pass (test RMSE), test RMSE
               after the epochs, and the same measured for the reference-style implementation
               (bench/reference_autoencoder.py) on a slice of batches/users, extrapolated; plus a check
               that one training step of both gives the same weights from the same start.
  ncf          CPU: NeuMF training samples/s for several batch sizes.
  gpu          an NF-size epoch on the scale-1.0 shape (480K users x 17.7K items, ~86M ratings, random
               sparse data made in memory): users/s, achieved TFLOP/s, peak GPU memory, evaluation time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from recsys_core import models  # noqa: E402
from recsys_core.evaluation import rating_metrics  # noqa: E402
from recsys_core.interactions import csr_triplets, load_split_data  # noqa: E402
from recsys_core.models import resolve_options  # noqa: E402
from recsys_core.models.autoencoder import DeepAutoencoder  # noqa: E402
from recsys_core.settings import RunSettings  # noqa: E402
from recsys_core.training_loop import fit, make_optimizer  # noqa: E402

# Every option the paper's NF run fixes is spelled out, so the library's defaults (tuned for the sample:
# centering, weight decay) cannot leak into the benchmark or into its comparison with the reference.
NF = dict(layers=[512, 512, 1024], dropout=0.8, refeed=1, batch_size=128, activation="selu", output_bias="zero",
          last_layer_activation=False, constrained=False, noise=0.0, center="none", weight_decay=0.0)


def usage() -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": round(ru.ru_utime + ru.ru_stime, 1), "peak_rss_mb": round(ru.ru_maxrss / 1024)}


def bound(model: str, config, data, device="cpu", settings: RunSettings | None = None):
    """The estimator of ``model`` with ``config`` bound to ``data``: its network built from config.seed."""
    estimator = models.get(model).create(config, device=device, settings=settings)
    estimator.bind(data)
    return estimator


def report(name: str, **fields) -> None:
    print(json.dumps({"bench": name, **fields, **usage()}), flush=True)


# ------------------------------------------------------------------------------------------- data
def make_data(args) -> None:
    from train_fixtures import make_rating_split

    started = time.perf_counter()
    total = args.train_ratings + 2 * args.heldout_ratings
    g = make_rating_split(args.out, n_users=args.users, n_items=args.items, n_ratings=total, rank=8, noise=0.8,
                          valid_frac=args.heldout_ratings / total, test_frac=args.heldout_ratings / total, seed=0)
    meta = json.loads((g.path / "meta.json").read_text())
    report("make-data", path=str(g.path), wall_s=round(time.perf_counter() - started, 1), nnz=meta["nnz"],
           oracle_test_rmse=round(g.oracle_test_rmse, 4))


# ------------------------------------------------------------------------------------ autoencoder
def flops_per_epoch(n_users_trained, nnz, n_items, layers, refeed) -> float:
    """2 x multiply-adds of the work done (backward counted as 2x forward): the first pass takes the
    sparse input (embedding_bag) and, with re-feeding, produces the dense output; re-feeding is dense."""
    h1 = layers[0]
    inner = sum(a * b for a, b in zip(layers[:-1], layers[1:]))
    first_in = nnz * h1 * 3
    middle = 2 * inner * n_users_trained * 3
    first_out = (n_users_trained * n_items * h1 if refeed else nnz * h1) * 3
    dense_pass = (2 * n_items * h1 + 2 * inner) * n_users_trained * 3
    return 2.0 * (first_in + middle + first_out + refeed * dense_pass)


def autoencoder(args) -> None:
    torch.set_num_threads(args.threads)
    data = load_split_data(args.split)
    n_users, n_items = data.train.shape
    layers = args.layers or NF["layers"]
    config = resolve_options("autoencoder", {**NF, "epochs": args.epochs, "patience": 0, "lr": args.lr,
                                            "optimizer": args.optimizer, "seed": 0,
                                            "refeed": args.refeed, "layers": layers})
    estimator = bound("autoencoder", config, data)
    model = estimator.model
    users_trained = len(estimator.train_rows)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        result = fit(estimator, config, Path(run_dir))
        wall = time.perf_counter() - started
    epoch_s = result["history"]["seconds"]
    started = time.perf_counter()
    test = rating_metrics(estimator, data.test, (1.0, 5.0))
    eval_s = time.perf_counter() - started
    flops = flops_per_epoch(users_trained, data.train.nnz, n_items, layers, args.refeed)
    report("autoencoder-NF-cpu", threads=args.threads, refeed=args.refeed, layers=layers, users=n_users, items=n_items,
           train_nnz=int(data.train.nnz),
           test_nnz=int(data.test.nnz), epochs=args.epochs, optimizer=args.optimizer, lr=args.lr,
           seconds_per_epoch=[round(s, 1) for s in epoch_s], fit_wall_s=round(wall, 1),
           eval_pass_s=round(eval_s, 2), test_rmse=round(test["rmse"], 4),
           valid_rmse_per_epoch=[round(v, 4) for v in result["history"]["valid"]],
           achieved_gflops=round(flops / np.mean(epoch_s) / 1e9, 1))
    if args.reference_epochs:
        reference_full(args, data, initial, estimator.train_rows)
    if args.reference_batches:
        reference(args, data, model_seed=0)


def reference_full(args, data, initial_state, train_rows) -> None:
    """Train the reference-style implementation for the same epochs from the same initial weights, with
    the same user order and dropout seeds per epoch, then evaluate it on all test users as it does."""
    from reference_autoencoder import ReferenceAutoEncoder, as_user_lists, evaluate_users, rmse_of, train_batches

    n_items = data.train.shape[1]
    start = DeepAutoencoder(n_items, NF["layers"], "selu", 0.8, False, False)
    start.load_state_dict(initial_state)
    ref = ReferenceAutoEncoder([n_items, *NF["layers"]], "selu", 0.8, last_layer_activations=False)
    ref.copy_from(start)
    train_lists, test_lists = as_user_lists(data.train), as_user_lists(data.test)
    optimizer = (torch.optim.SGD(ref.parameters(), lr=args.lr, momentum=0.9) if args.optimizer == "sgd"
                 else torch.optim.Adam(ref.parameters(), lr=args.lr))
    epoch_s = []
    for epoch in range(1, args.reference_epochs + 1):
        order = np.random.default_rng([0, epoch]).permutation(train_rows).tolist()
        torch.manual_seed(epoch)  # seed 0 * 1_000_003 + epoch, as recsys_core.training_loop
        started = time.perf_counter()
        train_batches(ref, optimizer, train_lists, order, n_items, 128, 1)
        epoch_s.append(time.perf_counter() - started)
    started = time.perf_counter()
    total, count, clipped = evaluate_users(ref, train_lists, test_lists, n_items, sorted(test_lists))
    eval_s = time.perf_counter() - started
    report("reference-style-cpu-full", threads=args.threads, epochs=args.reference_epochs,
           seconds_per_epoch=[round(x, 1) for x in epoch_s], eval_pass_s=round(eval_s, 1),
           test_rmse=round(rmse_of(total, count), 4), test_rmse_clipped=round(rmse_of(clipped, count), 4))


def reference(args, data, model_seed: int) -> None:
    """Time the reference-style implementation on a slice and check step equivalence."""
    from reference_autoencoder import ReferenceAutoEncoder, as_user_lists, evaluate_users, train_batches

    n_users, n_items = data.train.shape
    sizes = [n_items, *NF["layers"]]
    started = time.perf_counter()
    train_lists = as_user_lists(data.train)
    test_lists = as_user_lists(data.test)
    load_s = time.perf_counter() - started
    ref = ReferenceAutoEncoder(sizes, "selu", 0.8, last_layer_activations=False)
    optimizer = torch.optim.Adam(ref.parameters(), lr=args.lr)
    users = np.random.default_rng(0).permutation(list(train_lists))
    started = time.perf_counter()
    done = train_batches(ref, optimizer, train_lists, users.tolist(), n_items, 128, 1, args.reference_batches)
    per_batch = (time.perf_counter() - started) / done
    n_batches = -(-len(train_lists) // 128)
    eval_users = sorted(test_lists)
    sample = eval_users[:args.reference_eval_users]
    started = time.perf_counter()
    evaluate_users(ref, train_lists, test_lists, n_items, sample)
    per_user = (time.perf_counter() - started) / len(sample)
    report("reference-style-cpu", threads=args.threads, batches_timed=done, s_per_batch=round(per_batch, 3),
           epoch_s_extrapolated=round(per_batch * n_batches, 1), eval_users_timed=len(sample),
           eval_pass_s_extrapolated=round(per_user * len(eval_users), 1), python_lists_build_s=round(load_s, 1))
    equivalence(data, train_lists, n_items)


def equivalence(data, train_lists, n_items) -> None:
    """One batch (pass + re-feed, plain SGD) from the same weights and dropout seed in both implementations:
    the weight changes must agree up to float rounding (SGD, as Adam's first step is sign(gradient) and
    flips on rounding noise for near-zero gradients)."""
    from reference_autoencoder import ReferenceAutoEncoder, train_batches

    from recsys_core.interactions import row_batch

    config = resolve_options("autoencoder", {**NF, "optimizer": "sgd", "lr": 0.5, "momentum": 0.0, "seed": 1})
    estimator = bound("autoencoder", config, data)
    mine = estimator.model
    ref = ReferenceAutoEncoder([n_items, *NF["layers"]], "selu", 0.8, False)
    ref.copy_from(mine)
    start = mine.dec_w[0].detach().clone()
    users = sorted(train_lists)[:128]
    optimizer = make_optimizer(mine, config)
    torch.manual_seed(7)
    for loss, _ in estimator.losses(row_batch(data.train, np.array(users))):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.manual_seed(7)
    train_batches(ref, torch.optim.SGD(ref.parameters(), lr=0.5), train_lists, users, n_items, 128, 1)
    with torch.no_grad():
        diff = float((mine.dec_w[0] - ref.decode_w[-1]).abs().max())
        moved = float((mine.dec_w[0] - start).abs().max())
        diff_in = float((mine.enc_w[0].T - ref.encode_w[0]).abs().max())
    report("step-equivalence", optimizer="sgd lr 0.5", max_weight_change_of_the_step=moved,
           max_abs_difference_output_layer=diff, max_abs_difference_input_layer=diff_in,
           relative=round(diff / moved, 8))


# --------------------------------------------------------------------------------------------- NCF
def ncf(args) -> None:
    torch.set_num_threads(args.threads)
    data = load_split_data(args.split)
    for batch_size in args.batch_sizes:
        config = resolve_options("neumf", {"batch_size": batch_size, "seed": 0})
        estimator = bound("neumf", config, data)
        optimizer = make_optimizer(estimator.model, config)
        started = time.perf_counter()
        batches = estimator.batches(np.random.default_rng(1))
        next(batches)  # negative sampling and shuffling of the whole epoch happen before the first batch
        prep_s = time.perf_counter() - started
        samples = 0
        started = time.perf_counter()
        for batch in batches:
            for loss, _ in estimator.losses(batch):
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            samples += len(batch[0])
            if samples >= args.ncf_samples:
                break
        wall = time.perf_counter() - started
        report("neumf-cpu", threads=args.threads, batch_size=batch_size, samples=samples,
               samples_per_s=round(samples / wall), epoch_samples=int(data.train.nnz * 5),
               epoch_prep_s=round(prep_s, 2), epoch_s_extrapolated=round(data.train.nnz * 5 / (samples / wall), 1))


# --------------------------------------------------------------------------------------------- GPU
def random_csr(n_rows, n_cols, mean_per_row, seed) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    counts = np.clip(rng.lognormal(np.log(mean_per_row) - 0.5, 1.0, n_rows).astype(np.int64), 1, n_cols)
    indptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = rng.integers(0, n_cols, indptr[-1], dtype=np.int32)
    values = rng.integers(1, 6, indptr[-1]).astype(np.float32)
    return sp.csr_matrix((values, indices, indptr), shape=(n_rows, n_cols))


def gpu(args) -> None:
    device = torch.device(args.device)
    n_users, n_items = args.users, args.items
    started = time.perf_counter()
    train = random_csr(n_users, n_items, args.ratings / n_users, 0)
    test = random_csr(n_users, n_items, args.test_ratings / n_users, 1)
    empty = sp.csr_matrix((n_users, n_items), dtype=np.float32)
    data = SimpleNamespace(train=train, valid=empty, test=test, meta={"rating_min": 1.0, "rating_max": 5.0})
    make_s = time.perf_counter() - started
    config = resolve_options("autoencoder", {**NF, "epochs": 1, "patience": 0, "batch_size": args.batch_size,
                                            "seed": 0})
    estimator = bound("autoencoder", config, data, device, RunSettings(amp=args.amp, eval_batch_size=8192))
    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    with tempfile.TemporaryDirectory() as run_dir:
        result = fit(estimator, config, Path(run_dir))
    epoch_s = result["history"]["seconds"][0]
    users = len(estimator.train_rows)
    flops = flops_per_epoch(users, train.nnz, n_items, NF["layers"], 1)
    started = time.perf_counter()
    rows, cols, _ = csr_triplets(test)
    estimator.predict_pairs(rows, cols)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    eval_s = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    report("autoencoder-NF-gpu", device=str(device),
           gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None, amp=args.amp,
           users=n_users, items=n_items, train_nnz=int(train.nnz), data_make_s=round(make_s, 1),
           batch_size=args.batch_size, epoch_s=round(epoch_s, 2), users_per_s=round(users / epoch_s),
           achieved_tflops=round(flops / epoch_s / 1e12, 2), eval_pairs=int(test.nnz), eval_s=round(eval_s, 2),
           peak_gpu_mem_gib=None if peak is None else round(peak, 2))


def main() -> None:
    os.environ.setdefault("RECSYS_PROGRESS", "0")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("make-data", help="generate the N3M-like split folder")
    m.add_argument("--out", type=Path, default=Path("data/bench/N3M-like"))
    m.add_argument("--users", type=int, default=48_000)
    m.add_argument("--items", type=int, default=5_600)
    m.add_argument("--train-ratings", type=int, default=2_000_000)
    m.add_argument("--heldout-ratings", type=int, default=200_000, help="ratings in valid and in test, each")
    m.set_defaults(func=make_data)
    a = sub.add_parser("autoencoder", help="CPU NF-architecture epoch + evaluation vs reference-style")
    a.add_argument("--split", type=Path, default=Path("data/bench/N3M-like"))
    a.add_argument("--epochs", type=int, default=2)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--optimizer", default="adam")
    a.add_argument("--lr", type=float, default=0.001)
    a.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")],
                   help="encoder sizes instead of the NF architecture's 512,512,1024 (e.g. 64: the default model)")
    a.add_argument("--refeed", type=int, default=1, help="re-feeding steps (the paper: 1; 0: the sparse path that "
                                                            "gathers only the observed outputs, as the default model)")
    a.add_argument("--reference-epochs", type=int, default=0,
                   help="also train the reference-style implementation for these many full epochs (same start, "
                        "order and dropout seeds) and evaluate it on every test user")
    a.add_argument("--reference-batches", type=int, default=20, help="batches timed for the reference (0: skip)")
    a.add_argument("--reference-eval-users", type=int, default=300)
    a.set_defaults(func=autoencoder)
    n = sub.add_parser("ncf", help="CPU NeuMF samples/s by batch size")
    n.add_argument("--split", type=Path, default=Path("data/bench/N3M-like"))
    n.add_argument("--threads", type=int, default=2)
    n.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[256, 1024, 4096])
    n.add_argument("--ncf-samples", type=int, default=400_000, help="training samples timed per batch size")
    n.set_defaults(func=ncf)
    g = sub.add_parser("gpu", help="NF-size epoch at the scale-1.0 shape on a GPU")
    g.add_argument("--device", default="cuda")
    g.add_argument("--users", type=int, default=480_189)
    g.add_argument("--items", type=int, default=17_770)
    g.add_argument("--ratings", type=int, default=86_000_000)
    g.add_argument("--test-ratings", type=int, default=2_000_000)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    g.set_defaults(func=gpu)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
