"""A sweep inside the flow: rounds of trials (``recsys_core.sweep.Study``) run as ordinary training tasks on the
flow's task runner (``tasks.fanout``), each an ordinary content-keyed run folder, so a re-run or a killed
sweep run again finds every finished trial cached and asks exactly the same trials.

Outputs, under ``DATA/sweeps/<source>/<protocol>/sweep-<key>/`` (the key: the sweep, the base options and
the matrices it ran on): ``sweep.parquet`` (every trial: options, valid and test metrics, epochs, seconds,
state), ``sweep.png`` (valid metric vs trial) and ``chosen.json`` (per split and model: the trial chosen on
valid, its options and run folder).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from recsys_core.artifacts import layout
from recsys_core.artifacts.hashing import HashMemo, digest
from recsys_core.artifacts.manifest import StageSpec
from recsys_core.io import write_json
from recsys_core.settings import RunSettings
from recsys_core.sweep import COMPLETE, FAILED, Study, SweepSpec, plot, read_outcome, write_table
from tasks.fanout import Call, Fanout
from tasks.stages import train_task

log = logging.getLogger("recsys_core.flow")


@dataclass
class SweepResult:
    rows: list[dict]
    chosen: list[dict]                      # {"split", "model", "trial", "params", "run_dir", "valid"}
    out_dir: Path
    files: dict[str, str] = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)


def run_sweeps(spec: SweepSpec, fanout: Fanout, data: Path, matrices: StageSpec, memo: HashMemo,
               split_names: list[str], arguments: dict[str, tuple[dict, RunSettings]], device: str,
               threads: int | None, top_k: int) -> SweepResult:
    from recsys_core import models as catalogue

    studies: dict[tuple[str, str], Study] = {}
    for split in split_names:
        for model, sweep in spec.models.items():
            estimator = catalogue.get(model).estimator
            studies[(split, model)] = Study(sweep, arguments[model][0], rating_model=estimator.rating_model,
                                            loop_higher=estimator.higher_is_better, k=top_k, label=f"{split}/{model}")
    total = sum(s.sweep.trials for s in studies.values())
    finished = 0
    stages: list[dict] = []
    round_number = 0
    while True:
        asked = [(key, study, trial) for key, study in studies.items() for trial in study.next_round()]
        if not asked:
            break
        round_number += 1
        runnable, calls = [], []
        for (split, model), study, trial in asked:
            if trial.config is None:  # options refused by a rule between options: failed without running
                study.tell(trial, {"state": FAILED, "error": trial.error})
                continue
            options = trial.config
            settings = arguments[model][1].replace(device=device, threads=threads)
            trained = layout.train_spec(data, matrices, memo, split, model, options, settings, prune=trial.prune)
            label = f"trial {split}/{model} #{trial.number}"
            runnable.append((study, trial, trained))
            calls.append(Call(label, dict(spec=trained, data_dir=str(data), split_dir=str(matrices.path / split),
                                          model=model, options=options, settings=settings, prune=trial.prune)))
        log.info("sweep round %d: %d trial(s) on %s", round_number, len(calls), fanout.description)
        for (study, trial, trained), done in zip(runnable, fanout.run(train_task, calls)):
            state = done.state
            if state.is_completed():
                outcome = read_outcome(trained.out_dir, study.metric)
                result = state.result()
                status = "cached" if state.name == "Cached" else result.status
            else:
                outcome = {"state": FAILED, "error": _one_line(state), "run_dir": trained.out_dir}
                status = "failed"
            outcome["seconds"] = round(done.seconds, 2)
            study.tell(trial, outcome)
            finished += 1
            stages.append({"stage": done.call.label, "status": status, "seconds": outcome["seconds"],
                           "output": trained.out_dir})
            valid = outcome.get("valid")
            log.info("sweep %d/%d: %s %s, valid %s %s", finished, total, done.call.label, outcome["state"],
                     study.metric, "-" if valid is None else f"{valid:.4f}")
    rows = [row for (split, _), study in studies.items() for row in study.rows(split)]
    chosen = []
    for (split, model), study in studies.items():
        best = study.best()
        if best is None:
            log.warning("sweep %s/%s: no trial completed, nothing chosen", split, model)
            continue
        chosen.append({"split": split, "model": model, "trial": best.number, "params": best.params,
                       "valid_metric": study.metric, "valid": best.outcome["valid"],
                       "run_dir": best.outcome["run_dir"]})
    base = {model: {**options, **settings.cache_params()} for model, (options, settings) in arguments.items()}
    key = digest({"sweep": spec.as_dict(), "base": base, "matrices": matrices.key})
    out_dir = Path(data) / "sweeps" / matrices.path.parent.name / matrices.path.name / f"sweep-{key[:10]}"
    files = {"sweep table": str(write_table(rows, out_dir / "sweep.parquet")),
             "sweep plot": str(plot(rows, out_dir / "sweep.png"))}
    write_json(out_dir / "chosen.json", {"sweep": spec.as_dict(), "chosen": chosen})
    files["sweep chosen"] = str(out_dir / "chosen.json")
    done_count = sum(1 for r in rows if r["state"] == COMPLETE)
    log.info("sweep: %d trials, %d complete, %d pruned, %d failed; %s", len(rows), done_count,
             sum(1 for r in rows if r["state"] == "pruned"), sum(1 for r in rows if r["state"] == FAILED),
             out_dir)
    return SweepResult(rows, chosen, out_dir, files, stages)


def _one_line(state) -> str:
    try:
        state.result()
    except BaseException as err:  # the failed state re-raises its exception here
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    return state.message or state.name


def summary_rows(rows: list[dict]) -> list[dict]:
    """The sweep table for the terminal and the Prefect artifact: the columns a person compares."""
    out = []
    for r in rows:
        test = {k: v for k, v in r.items() if k.startswith("test_") and isinstance(v, float) and math.isfinite(v)}
        out.append({"split": r["split"], "model": r["model"], "trial": r["trial"], "state": r["state"],
                    "chosen": "<-" if r["chosen"] else "", f"valid {r['valid_metric']}": _round(r["valid"]),
                    **{k.replace("_", " ", 1): _round(v) for k, v in test.items()},
                    "epochs": r["epochs"], "seconds": r["seconds"], "params": r["params"]})
    return out


def _round(value):
    return round(value, 4) if isinstance(value, float) else value

