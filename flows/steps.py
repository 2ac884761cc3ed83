"""The steps of ``full_pipeline`` (flows/full.py): each runs its stage's task(s) on the content-keyed cache and
adds what it did to the run's report (``tasks.report.RunReport``): statuses, tables, artifact paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows.parameters import PipelineParams
from recsys_core import models as catalogue
from recsys_core import prize
from recsys_core.artifacts import layout
from recsys_core.artifacts.hashing import HashMemo
from recsys_core.artifacts.manifest import StageSpec
from recsys_core.settings import RunSettings
from tasks import report
from tasks.fanout import Call, Fanout
from tasks.report import RunReport
from tasks.stages import convert_task, matrices_task, split_task, synth_task, train_task
from tasks.sweep import run_sweeps, summary_rows
from tasks.tracking import track_task


def raw_source(run: RunReport, data: Path, p: PipelineParams) -> Path:
    """Stage 0: the generated Netflix-format sample when ``source`` is ``sample``, else the user's path."""
    if p.source != layout.SAMPLE:
        return Path(p.source).expanduser().resolve()
    sample = layout.sample_spec(data, p.sample_scale, p.sample_seed)
    run.stage(synth_task, sample, "sample", scale=p.sample_scale, seed=p.sample_seed)
    return sample.path


def convert(run: RunReport, data: Path, memo: HashMemo, source: Path, name: str | None) -> StageSpec:
    """Stage 1: raw files -> Parquet."""
    converted = layout.convert_spec(data, source, memo, name=name)
    run.stage(convert_task, converted, "convert", source=str(source))
    run.artifacts["converted"] = converted.out_dir
    report.publish_table("recsys-dataset", [report.dataset_row(converted.path)], "stage 1: the converted ratings")
    return converted


def split(run: RunReport, data: Path, memo: HashMemo, converted: StageSpec, protocol: str,
          options: dict) -> StageSpec:
    """Stage 2: the protocol's splits of the converted ratings."""
    splits = layout.split_spec(data, converted, memo, protocol, options)
    run.stage(split_task, splits, "split", ratings_dir=converted.out_dir, protocol=protocol, options=options)
    run.artifacts["splits"] = splits.out_dir
    run.report["split_warnings"] = report.split_warnings(splits.path)
    run.table("split_stats", report.split_stat_rows(splits.path), "recsys-split-stats", "stage 2: split statistics")
    return splits


def matrices(run: RunReport, data: Path, memo: HashMemo, splits: StageSpec, protocol: str) -> StageSpec:
    """Stage 3: CSR matrices, one id index per split."""
    built = layout.matrices_spec(data, splits, memo, protocol)
    run.stage(matrices_task, built, "matrices", split_root=splits.out_dir)
    run.artifacts["matrices"] = built.out_dir
    report.publish_table("recsys-matrices", report.matrices_rows(built.path), "stage 3: matrix shapes")
    return built


@dataclass(frozen=True)
class Training:
    """What every training task of a run shares (stage 4)."""

    data: Path
    matrices: StageSpec
    memo: HashMemo
    arguments: dict[str, tuple[dict, RunSettings]]  # per model: options and run settings (flows.parameters.resolve)
    device: str                     # cpu or cuda
    threads: int | None
    tracking: str | None            # the MLflow store, or None

    @property
    def split_names(self) -> list[str]:
        return layout.split_names(self.matrices, self.memo)


def train_models(run: RunReport, fanout: Fanout, training: Training, models: list[str]) -> list[dict]:
    """Stage 4: per split and model, train, evaluate beside the baselines and write top-K lists, all at once on
    the task runner; models that read other runs of their split (the blend) in a second round, after the
    others. Returns the runs ({"split", "model", "run_dir"})."""
    later = [m for m in models if getattr(_estimator(m), "trains_after_others", False)]
    members: dict[str, list[str]] = {}  # per split: the run folders of its rating models (blend members)
    runs = []
    for phase in ([m for m in models if m not in later], later):
        calls, specs = [], []
        for split_name in training.split_names:
            for model in phase:
                options, settings = training.arguments[model]
                settings = settings.replace(device=training.device, threads=training.threads)
                if model in later and not options.get("members"):
                    options = {**options, "members": ",".join(members.get(split_name, []))}
                trained = layout.train_spec(training.data, training.matrices, training.memo, split_name, model,
                                            options, settings)
                if _estimator(model).rating_model and model not in later:
                    members.setdefault(split_name, []).append(trained.path.name)
                specs.append((split_name, model, trained))
                calls.append(Call(f"train {split_name}/{model}", dict(
                    spec=trained, data_dir=str(training.data), split_dir=str(training.matrices.path / split_name),
                    model=model, options=options, settings=settings)))
        for (split_name, model, trained), done in zip(specs, fanout.run(train_task, calls) if calls else []):
            run.record(done, trained)
            _publish_run(run, training, split_name, model, trained)
            runs.append({"split": split_name, "model": model, "run_dir": trained.out_dir})
    return runs


def _publish_run(run: RunReport, training: Training, split_name: str, model: str, trained: StageSpec) -> None:
    run.artifacts[f"run {split_name}/{model}"] = trained.out_dir
    for what, name in (("metrics", "metrics.json"), ("recommendations", "recommendations.parquet"),
                       ("learning curve", "learning_curve.png")):
        if (trained.path / name).exists():  # closed-form models have no learning curve
            run.artifacts[f"{what} {split_name}/{model}"] = str(trained.path / name)
    if training.tracking:
        track_task(trained.out_dir, trained.key, training.tracking, f"{split_name}/{model}")
    curve = trained.path / "learning_curve.png"
    if curve.exists():
        report.publish_learning_curve(f"recsys-curve-{_key(split_name)}-{_key(model)}", curve, model)


def sweep(run: RunReport, fanout: Fanout, training: Training, spec, top_k: int) -> list[dict]:
    """The sweep's rounds of trials on the same task runner (tasks/sweep.py); returns the chosen trials' runs."""
    swept = run_sweeps(spec, fanout, training.data, training.matrices, training.memo, training.split_names,
                       training.arguments, training.device, training.threads, top_k)
    run.report["stages"].extend(swept.stages)
    run.report["sweep_chosen"] = swept.chosen
    run.artifacts.update(swept.files)
    run.table("sweep", summary_rows(swept.rows), "recsys-sweep",
              "every sweep trial: options, valid and test metrics, epochs, seconds, state; chosen on valid only")
    return [{"split": c["split"], "model": f"{c['model']} (sweep #{c['trial']})", "run_dir": c["run_dir"]}
            for c in swept.chosen]


def results(run: RunReport, runs: list[dict], p: PipelineParams, split_options: dict) -> None:
    """The tables of the trained runs: test metrics beside the baselines, where models lose, the Prize's numbers
    (netflix-probe) and every run under the data dir."""
    run.table("metrics", report.metric_rows(runs), "recsys-metrics", "stage 4: test metrics, models beside baselines")
    run.table("buckets", report.bucket_rows(runs), "recsys-buckets", "stage 4: where models lose, per bucket of the "
              "user's training ratings and for new items, model beside its best baseline")
    if p.protocol == "netflix-probe":  # the Prize's published numbers beside the run's probe RMSE, labelled
        generated = p.source == layout.SAMPLE or prize.is_generated(split_options["source"])
        run.report["prize_note"] = prize.GENERATED_NOTE if generated else prize.REAL_NOTE
        run.table("prize", prize.comparison_rows(run.report["metrics"], generated), "recsys-prize",
                  f"probe RMSE beside the Netflix Prize's published RMSE: {run.report['prize_note']}")
    run.table("runs", report.run_rows(Path(run.report["data_dir"])), "recsys-runs", "every training run under the "
              "data dir: model, split, options, valid/test metrics, seconds (compare runs here)")


def _estimator(model: str):
    return catalogue.get(model).estimator


def _key(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
