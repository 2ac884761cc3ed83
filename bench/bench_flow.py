"""First run vs second (all cached) run of the full flow, on the generated sample at given scales.

    flock /tmp/heavy.lock .venv/bin/python bench/bench_flow.py --scales 0.01 0.05 --epochs 10

For each scale: a fresh data dir, the flow twice in one process (the local ephemeral Prefect API is
started and warmed by a trivial flow first, so neither run pays its start-up). Prints wall time, CPU
time and the process's peak RSS per run, and each stage's status and seconds; writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from measure import peak_rss_mb  # noqa: E402

os.environ.setdefault("RECSYS_PROGRESS", "0")


def timed_run(params: dict) -> dict:
    from flows.full import full_pipeline

    wall, cpu = time.perf_counter(), time.process_time()
    report = full_pipeline(**params)
    return {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "stages": [(s["stage"], s["status"], s["seconds"]) for s in report["stages"]],
            "ratings": next((r["ratings"] for r in report["split_stats"] if r.get("part") == "train"), None)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", type=float, nargs="+", default=[0.01], help="sample scales to measure")
    p.add_argument("--epochs", type=int, help="training epochs (default: the model's own)")
    p.add_argument("--models", nargs="+", default=["autoencoder"], help="models to train")
    p.add_argument("--work-dir", default=str(ROOT / "bench" / "out" / "flow"), help="data dirs go here (wiped)")
    p.add_argument("--json", default=str(ROOT / "bench" / "out" / "bench_flow.json"), help="results file")
    args = p.parse_args()

    from prefect import flow

    from flows.full import local_run_settings

    results = []
    with local_run_settings():
        flow(name="bench-warm-up")(lambda: None)()  # starts the local API outside the timings
        for scale in args.scales:
            data = Path(args.work_dir) / f"s{scale:g}"
            shutil.rmtree(data, ignore_errors=True)
            params = {"data_dir": str(data), "sample_scale": scale, "models": args.models}
            if args.epochs is not None:
                params["model_options"] = {model: {"epochs": args.epochs} for model in args.models}
            first, second = timed_run(params), timed_run(params)
            results.append({"scale": scale, "epochs": args.epochs, "first": first, "second": second})

    print(f"{'scale':>7} {'train ratings':>13} {'run':>6} {'wall s':>8} {'cpu s':>8} {'peak RSS MB':>11}  stages")
    for r in results:
        for name in ("first", "second"):
            m = r[name]
            stages = ", ".join(f"{s}={st} {sec}s" for s, st, sec in m["stages"])
            print(f"{r['scale']:>7g} {m['ratings'] or '':>13} {name:>6} {m['wall_s']:>8} {m['cpu_s']:>8} "
                  f"{m['peak_rss_mb']:>11}  {stages}")
        print(f"{'':>7} second/first wall = {r['second']['wall_s'] / r['first']['wall_s']:.1%}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
