"""Time and memory of one champion/challenger decision (what the flow's registry step costs).

    .venv/bin/python bench/bench_promote.py --champion RUN_DIR --challenger RUN_DIR [--challenger ...]

Compares the challengers with the champion on the challengers' split exactly as the flow does
(``recsys_core.promotion.decide``: the champion mapped onto the split, the baselines fitted there, the
primary metric on valid and test), records nothing, and prints the decision, its table, the seconds and
this process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from measure import peak_rss_mb  # noqa: E402

os.environ.setdefault("RECSYS_PROGRESS", "0")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--champion", required=True, help="the champion's run folder")
    p.add_argument("--challenger", action="append", required=True, help="a challenger's run folder (repeatable)")
    p.add_argument("--metric", default="rmse", help="the registry's primary metric (rmse or recall@K)")
    p.add_argument("--margin", type=float, default=0.001)
    p.add_argument("--out", help="also write the result as JSON")
    args = p.parse_args()
    from recsys_core.promotion import decide

    pointer = {"run_dir": str(Path(args.champion).resolve()), "version": 1, "model": "champion",
               "primary_metric": args.metric}
    started = time.perf_counter()
    decision = decide("bench", pointer, args.challenger, margin=args.margin)
    result = {"seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
              "line": decision.line(), "coverage": decision.coverage, "rows": decision.rows}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
