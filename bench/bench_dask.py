"""Wall time of the flow's training fan-out, sequential vs ``--task-runner dask`` (a local cluster), two workloads:

- ``sweep``: a sweep of ``--trials`` trials of one model on the embedded default sample (``--sweep-scale`` 0.01,
  N3M), after the flow's plain training of that model (same epochs);
- ``fanout``: 4 netflix-time splits (N3M N6M N1Y NF) x 2 models on a ``--fanout-scale`` sample.

    .venv/bin/python bench/bench_dask.py [--repeat 1] [--trials 16] [--sweep-model mf] [--sweep-epochs 8]
        [--sweep-scale 0.01] [--fanout-scale 0.1] [--fanout-models mf autoencoder] [--fanout-epochs 2] [--workers 2]

Each measurement is the user's command, ``python flows/full.py ...`` in a fresh process (its temporary Prefect
API included, in both modes alike), on a data dir whose ETL stages are built once first and whose training
runs (runs/, sweeps/) are deleted before every measurement, so every training task runs. The two modes take
turns within one run (the machine is shared: compare the ratio, not the seconds across runs), and the load
average is printed around each measurement.

Per-task overhead of the runner: ``(wall x slots - sum of the tasks' own build seconds) / tasks`` for each mode
(slots = 1 sequential, = workers on Dask): the wall time the runner spends per task beyond the training
itself (Prefect task orchestration, Dask dispatch, worker imports, the local cluster's start, idle slots at
the end of a round). The all-cached re-run (every task Cached) gives the pure dispatch cost per task.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], env: dict, report: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "flows/full.py", *args, "--report-json", str(report)], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"run failed: {' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return wall, json.loads(report.read_text())


def task_seconds(report: dict) -> tuple[int, float, int]:
    """(training tasks, sum of their build seconds from the run folders' manifests, how many were cached)."""
    tasks, work, cached = 0, 0.0, 0
    for stage in report["stages"]:
        if not stage["stage"].startswith(("train ", "trial ")):
            continue
        tasks += 1
        cached += stage["status"] == "cached"
        manifest = Path(stage["output"]) / "manifest.json"
        work += json.loads(manifest.read_text())["elapsed_s"] if manifest.exists() else 0.0
    return tasks, work, cached


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--sweep-model", default="mf")
    p.add_argument("--sweep-epochs", type=int, default=8, help="epochs of every trial (fixed in the sweep)")
    p.add_argument("--sweep-scale", type=float, default=0.01, help="sample scale of the sweep (0.01: the default)")
    p.add_argument("--fanout-scale", type=float, default=0.1)
    p.add_argument("--fanout-models", nargs="+", default=["mf", "autoencoder"])
    p.add_argument("--fanout-epochs", type=int, default=2)
    p.add_argument("--only", choices=("sweep", "fanout"), help="run one workload only")
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(work / "prefect-home"), RECSYS_PROGRESS="0")
    sweep_file = work / "sweep.json"
    sweep_file.write_text(json.dumps({"trials": args.trials, "sampler": "random", "seed": 0, "models": {
        args.sweep_model: {"fixed": {"epochs": args.sweep_epochs}}}}))
    options = json.dumps({m: {"epochs": args.fanout_epochs} for m in args.fanout_models})
    workloads = {
        # the plain training of stage 4 (before the sweep) gets the trials' epochs too, not the model's default
        "sweep": (work / "sweep-data", ["--sample-scale", str(args.sweep_scale), "--models", args.sweep_model,
                                        "--sweep", str(sweep_file), "--model-options",
                                        json.dumps({args.sweep_model: {"epochs": args.sweep_epochs}})]),
        "fanout": (work / "fanout-data", ["--sample-scale", str(args.fanout_scale), "--splits", "N3M", "N6M",
                                          "N1Y", "NF", "--models", *args.fanout_models, "--model-options", options]),
    }
    modes = {"sequential": [], "dask": ["--task-runner", "dask", "--dask-workers", str(args.workers)]}
    results = []
    try:
        for name, (data, extra) in workloads.items():
            if args.only and name != args.only:
                continue
            started = time.perf_counter()
            run(["--data-dir", str(data), *extra, "--until", "matrices"], env, work / "etl.json")
            print(f"{name}: ETL built in {time.perf_counter() - started:.0f} s", flush=True)
            for rep in range(args.repeat):
                order = list(modes) if rep % 2 == 0 else list(reversed(modes))
                for mode in order:
                    for folder in ("runs", "sweeps"):
                        shutil.rmtree(data / folder, ignore_errors=True)
                    load = os.getloadavg()[0]
                    wall, report = run(["--data-dir", str(data), *extra, *modes[mode]], env, work / "r.json")
                    tasks, work_s, cached = task_seconds(report)
                    slots = 1 if mode == "sequential" else args.workers
                    cached_wall, cached_report = run(["--data-dir", str(data), *extra, *modes[mode]], env,
                                                     work / "c.json")
                    row = {"workload": name, "rep": rep, "mode": mode, "wall_s": round(wall, 1), "tasks": tasks,
                           "task_build_s": round(work_s, 1),
                           "overhead_per_task_s": round((wall * slots - work_s) / max(tasks, 1), 2),
                           "all_cached_wall_s": round(cached_wall, 1),
                           "all_cached_tasks": task_seconds(cached_report)[2],
                           "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}
                    results.append(row)
                    print(json.dumps(row), flush=True)
        for name in workloads:
            rows = {m: [r for r in results if r["workload"] == name and r["mode"] == m] for m in modes}
            if rows["sequential"] and rows["dask"]:
                ratios = [s["wall_s"] / d["wall_s"] for s, d in zip(rows["sequential"], rows["dask"])]
                print(f"{name}: sequential / dask wall = {', '.join(f'{r:.2f}' for r in ratios)}")
                results.append({"workload": name, "speedup": [round(r, 2) for r in ratios]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
