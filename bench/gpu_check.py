"""The GPU check of issue 13 in one command that fits the lent GPU machine (15 minutes of device time per
task in all, 10 per command, nothing reachable from it, Python 3.12 + torch 2.11 CUDA 13 + numpy, scipy,
pyarrow; polars is carried as wheels by bench/gpu_check.sh). Start it through bench/gpu_check.sh.

1. env: versions, the GPU, and a bf16 matrix-product probe (the ceiling the training is compared with).
2. data: the project's own stages make the data there (full-scale matrices are too big to carry):
   ``synth --scale S`` -> ``convert`` -> ``split --protocol netflix-time --splits N3M,NF`` -> ``matrices``.
3. train: the paper's NF architecture (512,512,1024, selu, dropout 0.8, one dense re-feeding step, batch
   128 users, SGD momentum 0.9) through the stage API ``recsys_core.train.train`` (bf16 autocast on CUDA)
   on NF, then on N3M: seconds per epoch (the training pass plus the valid pass), users/s, achieved TFLOP/s
   of useful work against the probe and the datasheet bf16 peak, peak GPU memory, the evaluation pass,
   test RMSE after the epochs.
4. amp: the same N3M run in float32 (TF32 matmuls: the stage's setting) beside the bf16 one: test RMSE of
   both, agreement of their test predictions, and the time per epoch of both.
5. ddp: where the machine has 2 GPUs or more, one NF epoch in 2 processes (``nproc=2``, NCCL).

Every phase is timed and appended to OUT/gpu_check.json as soon as it ends, so a run stopped by the
command's limit still returns what it measured; a phase that would start after ``--budget-s`` is recorded
as skipped. ``--device cpu --scale 0.001 --epochs 1`` runs the whole path on a CPU in about a minute (how it
is tested before a machine is lent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

# The paper's NF configuration, every option spelled out (as bench/bench_train.py's NF, with its optimizer).
NF = dict(layers=[512, 512, 1024], dropout=0.8, refeed=1, batch_size=128, activation="selu", output_bias="zero",
          last_layer_activation=False, constrained=False, noise=0.0, center="none", weight_decay=0.0,
          optimizer="sgd", lr=0.005, patience=0, seed=0)
# Dense bf16 peak of the H100/H200 SXM by the vendor's datasheet (TFLOP/s), beside the probe measured here.
DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}


class Check:
    """The results file, written whole after every phase; the budget that later phases must start within."""

    def __init__(self, out: Path, budget_s: float, args: dict):
        self.path = out / "gpu_check.json"
        out.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.budget_s = budget_s
        self.results = {"args": args, "phases": {}}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def run(self, name: str, fn, *args):
        if self.elapsed() > self.budget_s:
            self.record(name, {"skipped": f"budget of {self.budget_s:.0f} s spent ({self.elapsed():.0f} s)"})
            return None
        print(f"[{self.elapsed():6.1f} s] {name} ...", flush=True)
        started = time.monotonic()
        try:
            result = fn(*args)
        except Exception as err:  # record what broke and go on with the phases that do not need it
            result = {"error": f"{type(err).__name__}: {err}"}
        self.record(name, {**result, "seconds": round(time.monotonic() - started, 1)})
        if "error" in result:
            return None
        return result

    def record(self, name: str, result: dict) -> None:
        self.results["phases"][name] = result
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1))
        tmp.replace(self.path)
        print(f"[{self.elapsed():6.1f} s] {name}: {json.dumps(result)}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ env
def environment(device: torch.device) -> dict:
    versions = {}
    for name in ("numpy", "scipy", "pyarrow", "polars"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpus": os.cpu_count(), "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            **versions}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count)
    return info


def matmul_probe(device: torch.device) -> dict:
    """bf16 (CUDA) or float32 (CPU) n x n x n products: the mean of 10 after 3 warm-ups, as TFLOP/s."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - started) / 10
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflops": round(2 * n**3 / seconds / 1e12, 2)}


# ----------------------------------------------------------------------------------------------- data
def stage(*args) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recsys_core", *map(str, args)], check=True, cwd=ROOT,
                   env={**os.environ, "RECSYS_PROGRESS": "0"})
    return round(time.perf_counter() - started, 1)


def make_data(work: Path, scale: float) -> dict:
    seconds = {"synth": stage("synth", work / "raw", "--scale", scale),
               "convert": stage("convert", work / "raw", work / "converted")}
    shutil.rmtree(work / "raw")  # ~2 GB of text at scale 1.0, not needed any more
    seconds["split"] = stage("split", work / "converted", work / "splits", "--protocol", "netflix-time",
                             "--splits", "N3M,NF")
    seconds["matrices"] = stage("matrices", work / "splits", work / "matrices")
    shapes = {}
    for name in ("NF", "N3M"):
        meta = json.loads((work / "matrices" / name / "meta.json").read_text())
        shapes[name] = {key: meta[key] for key in ("n_users", "n_items", "nnz") if key in meta}
    return {"scale": scale, "stage_s": seconds, "splits": shapes}


# ---------------------------------------------------------------------------------------------- train
def train_nf(work: Path, split: str, device: torch.device, epochs: int, amp: bool, probe: dict | None,
             nproc: int = 1) -> dict:
    from bench_train import flops_per_epoch

    from recsys_core.interactions import load_split_data
    from recsys_core.settings import RunSettings
    from recsys_core.train import train

    split_dir = work / "matrices" / split
    run_dir = work / "runs" / f"{split}-{'bf16' if amp else 'fp32'}-{nproc}"
    shutil.rmtree(run_dir, ignore_errors=True)
    train_matrix = load_split_data(split_dir).train
    users = int((np.diff(train_matrix.indptr) > 0).sum())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    metrics = train(split_dir, run_dir, "autoencoder", {"epochs": epochs, **NF},
                    RunSettings(device=str(device), amp=amp, processes=nproc, recall_users=1000))
    wall = time.perf_counter() - started
    history = json.loads((run_dir / "history.json").read_text())
    epoch_s = history["seconds"]
    steady = min(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]  # the first epoch includes warm-up
    flops = flops_per_epoch(users, int(train_matrix.nnz), train_matrix.shape[1], NF["layers"], NF["refeed"])
    tflops = flops / steady / 1e12
    result = {"split": split, "device": str(device), "amp_bf16": amp and device.type == "cuda", "processes": nproc,
              "users": users, "items": int(train_matrix.shape[1]), "train_nnz": int(train_matrix.nnz),
              "epochs": epochs, "epoch_s": [round(s, 3) for s in epoch_s], "steady_epoch_s": round(steady, 3),
              "users_per_s": round(users / steady), "useful_tflop_per_epoch": float(f"{flops / 1e12:.4g}"),
              "achieved_tflops": float(f"{tflops:.4g}"), "evaluation_s": metrics["evaluation_seconds"],
              "test_rmse": round(metrics["test"]["rmse"], 4), "valid_rmse": [round(v, 4) for v in history["valid"]],
              "baselines_test_rmse": {k: round(v["test"]["rmse"], 4) for k, v in metrics["baselines"].items()
                                      if "rmse" in v["test"]},
              "stage_wall_s": round(wall, 1), "run_dir": str(run_dir)}
    if probe:
        result["of_probe"] = round(tflops / probe["tflops"], 4)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)
        result["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if nproc == 1 else None
        result["of_datasheet_bf16_peak"] = round(tflops / peak, 4) if peak else None
    return result


def amp_agreement(bf16: dict, fp32: dict) -> dict:
    import pyarrow.parquet as pq

    a = pq.read_table(Path(bf16["run_dir"]) / "predictions.parquet").column("prediction").to_numpy()
    b = pq.read_table(Path(fp32["run_dir"]) / "predictions.parquet").column("prediction").to_numpy()
    diff = np.abs(a.astype(np.float64) - b)
    return {"test_rmse_bf16": bf16["test_rmse"], "test_rmse_fp32": fp32["test_rmse"],
            "rmse_difference": round(bf16["test_rmse"] - fp32["test_rmse"], 4),
            "prediction_abs_diff_mean": round(float(diff.mean()), 4),
            "prediction_abs_diff_p99": round(float(np.quantile(diff, 0.99)), 4),
            "prediction_correlation": round(float(np.corrcoef(a, b)[0, 1]), 4),
            "steady_epoch_s_bf16": bf16["steady_epoch_s"], "steady_epoch_s_fp32": fp32["steady_epoch_s"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (its dry run)")
    p.add_argument("--scale", type=float, default=1.0, help="synth scale of the generated data (1.0: full)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each training run (>= 2 gives a steady epoch)")
    p.add_argument("--fp32-epochs", type=int, help="epochs of the bf16-vs-fp32 pair on N3M (default --epochs)")
    p.add_argument("--budget-s", type=float, default=480.0, help="no phase starts after this many seconds")
    p.add_argument("--work", type=Path, default=Path("/tmp/recsys-gpu-check"), help="data and run folders")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench/out/gpu-check"),
                   help="where gpu_check.json goes (default $OUT)")
    p.add_argument("--reuse-data", action="store_true", help="keep the matrices already under --work")
    p.add_argument("--data-only", action="store_true", help="stop after making the data (to time it)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU here (use --device cpu for the dry run)", file=sys.stderr)
        return 2
    os.environ.setdefault("RECSYS_PROGRESS", "0")
    check = Check(args.out, args.budget_s, {k: str(v) for k, v in vars(args).items()})
    check.run("env", environment, device)
    probe = check.run("matmul_probe", matmul_probe, device)
    if not (args.reuse_data and (args.work / "matrices" / "N3M" / "meta.json").exists()):
        shutil.rmtree(args.work, ignore_errors=True)
        if check.run("data", make_data, args.work, args.scale) is None:
            return 1
    if args.data_only:
        return 0
    check.run("train_NF_bf16", train_nf, args.work, "NF", device, args.epochs, True, probe)
    fp32_epochs = args.fp32_epochs or args.epochs
    bf16 = check.run("train_N3M_bf16", train_nf, args.work, "N3M", device, fp32_epochs, True, probe)
    # On CPU both runs are float32 (amp is for CUDA only): the dry run checks the path, agreement is exact.
    fp32 = check.run("train_N3M_fp32", train_nf, args.work, "N3M", device, fp32_epochs, False, probe)
    if bf16 and fp32:
        check.run("amp_agreement", amp_agreement, bf16, fp32)
    if device.type == "cuda" and torch.cuda.device_count() >= 2:
        check.run("ddp_NF_2gpu", train_nf, args.work, "NF", device, 1, True, probe, 2)
    failed = [name for name, result in check.results["phases"].items() if "error" in result]
    print(f"done in {check.elapsed():.0f} s; results in {check.path}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
