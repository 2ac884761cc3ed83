"""A sweep inside the flow: the library's rounds of trials (``recsys_core.sweep.run_sweep``) with each round run
as ordinary training tasks on the flow's task runner (``tasks.fanout``), each an ordinary content-keyed run
folder, so a re-run or a killed sweep run again finds every finished trial cached and asks exactly the same
trials.

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
from recsys_core.settings import RunSettings
from recsys_core.sweep import FAILED, SweepSpec, TrialRun, read_outcome, run_sweep, write_outputs
from tasks.fanout import Call, Fanout
from tasks.stages import reported_status, train_task

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
    stages: list[dict] = []

    def run_round(jobs: list[TrialRun]) -> list[dict]:
        """A round's trials as training tasks, all at once on the flow's runner."""
        specs, calls = [], []
        for job in jobs:
            options = job.trial.config or {}
            settings = spec.models[job.model].settings(arguments[job.model][1].replace(device=device, threads=threads))
            trained = layout.train_spec(data, matrices, memo, job.split, job.model, options, settings,
                                        prune=job.trial.prune)
            specs.append(trained)
            calls.append(Call(job.label, dict(spec=trained, data_dir=str(data), model=job.model, options=options,
                                              split_dir=str(matrices.path / job.split), settings=settings,
                                              prune=job.trial.prune)))
        log.info("sweep: %d trial(s) on %s", len(calls), fanout.description)
        outcomes = []
        for job, trained, done in zip(jobs, specs, fanout.run(train_task, calls)):
            state = done.state
            if state.is_completed():
                outcome = read_outcome(trained.out_dir, job.metric)
                status = reported_status(state)
            else:
                outcome = {"state": FAILED, "error": _one_line(state), "run_dir": trained.out_dir}
                status = "failed"
            outcome["seconds"] = round(done.seconds, 2)
            stages.append({"stage": done.call.label, "status": status, "seconds": outcome["seconds"],
                           "output": trained.out_dir})
            outcomes.append(outcome)
        return outcomes

    swept = run_sweep(spec, split_names, {model: options for model, (options, _) in arguments.items()}, run_round,
                      k=top_k)
    base = {model: {**options, **settings.cache_params()} for model, (options, settings) in arguments.items()}
    key = digest({"sweep": spec.as_dict(), "base": base, "matrices": matrices.key})
    out_dir = Path(data) / "sweeps" / matrices.path.parent.name / matrices.path.name / f"sweep-{key[:10]}"
    files = write_outputs(spec, swept, out_dir)
    log.info("sweep: table, plot and chosen trials in %s", out_dir)
    return SweepResult(swept.rows, swept.chosen, out_dir, files, stages)


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
