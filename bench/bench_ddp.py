"""Benchmark: one model trained by 1 process vs by N processes (DistributedDataParallel, gloo on CPU) on the
same split, through the stage API (``recsys_core.train.train(..., RunSettings(processes=N))``). Results and command in
BENCHMARKS.md ("Several processes").

    flock /tmp/heavy.lock .venv/bin/python bench/bench_train.py make-data      # data/bench/N3M-like
    flock /tmp/heavy.lock .venv/bin/python bench/bench_ddp.py --models autoencoder,mf --nproc 1,2 --repeats 2

Runs are interleaved (1, N, 1, N, ...) so that both see the same machine load; compare them as ratios
within one run. Per run: seconds of each training epoch (``history.json``; includes process 0's validation
pass), the whole call's wall time (with N processes: the start of N interpreters, loading the split in
each, training, then process 0's evaluation and writing), test RMSE, and the load average around it.
On CPU, N processes share this process's threads (``torch.get_num_threads() // N`` each), so on a machine
of C cores the comparison is 1 process x C threads against N processes x C/N threads; with
``--threads-per-process T`` it is 1 process x T threads against N processes x T threads each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys_core.settings import RunSettings  # noqa: E402
from recsys_core.train import train  # noqa: E402

# The options of each model for this benchmark (everything else: the model's defaults).
MODELS = {
    "autoencoder": {},  # the default deep autoencoder (gathered outputs, no re-feeding)
    "mf": {},
}


def one_run(split: Path, model: str, nproc: int, epochs: int, work: Path, per_process: int | None) -> dict:
    if per_process:
        torch.set_num_threads(per_process * nproc)  # shared out: per_process threads in each process
    run_dir = work / f"{model}-{nproc}-{time.monotonic_ns()}"
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    metrics = train(split, run_dir, model, {"epochs": epochs, "patience": 0, **MODELS[model]},
                    RunSettings(recall_users=0, processes=nproc))
    wall = time.perf_counter() - started
    history = json.loads((run_dir / "history.json").read_text())
    return {"model": model, "nproc": nproc, "threads_per_process": max(1, torch.get_num_threads() // nproc),
            "epoch_s": [round(s, 2) for s in history["seconds"]], "wall_s": round(wall, 1),
            "test_rmse": round(metrics["test"]["rmse"], 4), "load_before": round(load_before, 1),
            "load_after": round(os.getloadavg()[0], 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", type=Path, default=Path("data/bench/N3M-like"))
    p.add_argument("--models", default="autoencoder,mf", help="comma-separated: " + ", ".join(MODELS))
    p.add_argument("--nproc", default="1,2", help="comma-separated process counts, run interleaved")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of this process, shared out")
    p.add_argument("--threads-per-process", type=int,
                   help="give each process this many threads whatever N is (1 process x T vs N x T: the scaling "
                        "when each added process brings its own cores) instead of sharing --threads out")
    p.add_argument("--json", type=Path, help="also write every run's record here")
    args = p.parse_args()
    os.environ.setdefault("RECSYS_PROGRESS", "0")
    torch.set_num_threads(args.threads)
    counts = [int(n) for n in args.nproc.split(",")]
    records = []
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        for model in args.models.split(","):
            for repeat in range(args.repeats):
                for nproc in counts:
                    record = {"repeat": repeat, **one_run(args.split, model, nproc, args.epochs, Path(tmp),
                                                                 args.threads_per_process)}
                    print(json.dumps(record), flush=True)
                    records.append(record)
    print(f"\n{'model':<12} {'nproc':>5} {'epoch s (each run)':<40} {'wall s':<20} {'test RMSE':<10}")
    for model in args.models.split(","):
        for nproc in counts:
            runs = [r for r in records if r["model"] == model and r["nproc"] == nproc]
            epochs = "; ".join(", ".join(f"{s:.1f}" for s in r["epoch_s"]) for r in runs)
            walls = ", ".join(f"{r['wall_s']:.1f}" for r in runs)
            print(f"{model:<12} {nproc:>5} {epochs:<40} {walls:<20} {runs[0]['test_rmse']:<10}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
