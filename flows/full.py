"""The full pipeline as one Prefect flow: (sample) -> convert -> split -> matrices -> train/evaluate -> top-K.

    python flows/full.py             # embedded default: a generated Netflix-format sample under data/
    python flows/full.py --help      # every option (the same names as the flow's parameters)

Without PREFECT_API_URL it runs on Prefect's local ephemeral API (no server). Deployments use the
entrypoint ``flows/full.py:full_pipeline`` (see prefect.yaml). Every stage is cached by content: a
second run with nothing changed computes nothing and reports every stage as Cached.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
from pathlib import Path

# Runnable as a script from anywhere and importable by a Prefect worker from its file path: the
# repository root (holding recsys_core/ and tasks/) must be importable.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if __name__ == "__main__" and not {"-h", "--help"} & set(sys.argv[1:]):
    # A command-line run: local Prefect defaults before Prefect is imported (it reads them then), and the
    # temporary API server starting now, while the rest imports (flows/local_api.py says why).
    from flows import local_api

    local_api.start_early()

from prefect import flow  # noqa: E402

from recsys_core.artifacts import layout  # noqa: E402
from recsys_core.artifacts.hashing import hash_memo  # noqa: E402
from recsys_core.errors import RecsysError  # noqa: E402
from recsys_core.settings import RunSettings, split_legacy  # noqa: E402
from recsys_core.split import PROTOCOLS as split_protocols  # noqa: E402
from recsys_core.split import check_options as check_split_options  # noqa: E402
from recsys_core.sweep import load_sweep_file, parse_sweep  # noqa: E402
from recsys_core.threads import check_threads  # noqa: E402
from recsys_core.tracking import require as require_mlflow  # noqa: E402
from tasks import report, schedule  # noqa: E402
from tasks.fanout import RUNNERS, Call, Fanout, check_runner  # noqa: E402
from tasks.logs import forward_library_logs, quiet_user_error_tracebacks  # noqa: E402
from tasks.stages import convert_task, matrices_task, split_task, synth_task, train_task  # noqa: E402
from tasks.sweep import run_sweeps  # noqa: E402
from tasks.sweep import summary_rows as sweep_summary_rows  # noqa: E402
from tasks.tracking import track_task, tracking_uri  # noqa: E402

UNTIL = ("convert", "split", "matrices", "train")
PROTOCOLS = split_protocols  # netflix-time, time, leave-one-out, random, chrono, netflix-probe (recsys_core.split)
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_MODELS = ["autoencoder"]
# Embedded default sample: small enough for the whole run to take well under 3 minutes on 2 CPU cores.
DEFAULT_SCALE = 0.01


@flow(name="recsys-full-pipeline", log_prints=True)
def full_pipeline(
    source: str = "sample",
    data_dir: str = "data",
    sample_scale: float = DEFAULT_SCALE,
    sample_seed: int = 0,
    protocol: str = "netflix-time",
    splits: list[str] = ["N3M"],  # noqa: B006 (Prefect parameters need a literal default)
    split_options: dict | None = None,
    models: list[str] = DEFAULT_MODELS,  # noqa: B006
    model_options: dict[str, dict] | None = None,
    device: str = "auto",
    seed: int = 0,
    top_k: int = 10,
    until: str = "train",
    mlflow_tracking_uri: str | None = None,
    task_runner: str = "sequential",
    dask_address: str | None = None,
    dask_workers: int | None = None,
    threads: int | None = None,
    sweep: dict | str | None = None,
    registry_model: str | None = None,
    promotion_margin: float = 0.001,
) -> dict:
    """Run the pipeline; returns the report (stages with cached/built status, stats, metrics, paths).

    ``model_options`` maps a model name to its options, e.g. ``{"autoencoder": {"layers": [128, 256, 256]}}``
    (the names and values of ``python -m recsys_core train``'s flags, as JSON). Every option of every model
    is checked before the first stage runs.

    ``task_runner``: ``sequential`` (training in the flow's process, one run after another) or ``dask``
    (every training task at once on a local cluster of ``dask_workers`` processes sized to the machine, or on
    the cluster at ``dask_address``); ETL stages always run in the flow's process. ``threads``: torch threads
    per training (None: chosen from the cores, see recsys_core.threads). ``sweep``: a sweep object
    (docs/sweeps.md) or ``"default"`` (every model of ``models`` over its shipped search space).
    """
    forward_library_logs()
    _check_choice("protocol", protocol, PROTOCOLS)
    _check_choice("device", device, DEVICES)
    _check_choice("until", until, UNTIL)
    arguments = train_arguments(models, model_options, seed=seed, k=top_k)
    check_split_options(protocol, _split_options(protocol, split_options, splits, seed))
    check_runner(task_runner, dask_address, dask_workers)
    check_threads(threads)  # a bad value is one sentence now, not in every task
    sweep_spec = None
    if sweep is not None:
        sweep_spec = parse_sweep(sweep, models, seed=seed)
        stray = sorted(set(sweep_spec.models) - set(models))
        if stray:
            arguments.update(train_arguments(stray, None, seed=seed, k=top_k))
    if registry_model:
        from tasks.promotion import check_options

        check_options(registry_model, promotion_margin, list(splits) if protocol == "netflix-time" else None)
    data = Path(data_dir).resolve()
    memo = hash_memo(data)
    run = _Run(data, source)
    tracking = tracking_uri(mlflow_tracking_uri)
    if tracking and until == "train":
        require_mlflow()  # before any work: a missing extra is one sentence, not a failure after training

    # Stage 0 (sample only) and stage 1: raw files -> Parquet.
    if source == layout.SAMPLE:
        sample = layout.sample_spec(data, sample_scale, sample_seed)
        run.stage(synth_task, sample, "sample", scale=sample_scale, seed=sample_seed)
        source_path, name = sample.path, layout.SAMPLE
    else:
        source_path, name = Path(source).expanduser().resolve(), None
        if (skipped := schedule.skip_without_data(source_path)) is not None:
            return skipped  # a scheduled run before the data is there: Skipped, not Failed
    converted = layout.convert_spec(data, source_path, memo, name=name)
    run.stage(convert_task, converted, "convert", source=str(source_path))
    run.artifacts["converted"] = converted.out_dir
    report.publish_table("recsys-dataset", [_dataset_row(converted.path)], "stage 1: the converted ratings")
    if until == "convert":
        return run.finish()

    # Stage 2: splits.
    options = _split_options(protocol, split_options, splits, seed, source_path)
    splits_spec = layout.split_spec(data, converted, memo, protocol, options)
    run.stage(split_task, splits_spec, "split", ratings_dir=converted.out_dir, protocol=protocol, options=options)
    run.artifacts["splits"] = splits_spec.out_dir
    run.report["split_stats"] = report.split_stat_rows(splits_spec.path)
    run.report["split_warnings"] = report.split_warnings(splits_spec.path)
    report.publish_table("recsys-split-stats", run.report["split_stats"], "stage 2: split statistics")
    if until == "split":
        return run.finish()

    # Stage 3: CSR matrices, one index per split.
    matrices = layout.matrices_spec(data, splits_spec, memo, protocol)
    run.stage(matrices_task, matrices, "matrices", split_root=splits_spec.out_dir)
    run.artifacts["matrices"] = matrices.out_dir
    report.publish_table("recsys-matrices", _matrices_rows(matrices.path), "stage 3: matrix shapes")
    if until == "matrices":
        return run.finish()

    # Stage 4: per split and model: train, evaluate beside the baselines, write top-K recommendations; on the
    # task runner (all at once on Dask), then the sweep's rounds of trials on the same runner.
    runs = []
    split_names = layout.split_names(matrices, memo)
    with Fanout(task_runner, str(data), dask_address, dask_workers) as fanout:
        # models that read other runs of their split (the blend) train in a second round, after the others
        later = [m for m in models if getattr(registered(m).estimator, "trains_after_others", False)]
        folders: dict[str, list[str]] = {}  # per split: the run folders of its rating models (blend members)
        for phase in ([m for m in models if m not in later], later):
            calls, specs = [], []
            for split_name in split_names:
                for model in phase:
                    options, settings = arguments[model]
                    settings = settings.replace(device=resolve_device(device), threads=threads)
                    if model in later and not options.get("members"):
                        options = {**options, "members": ",".join(folders.get(split_name, []))}
                    trained = layout.train_spec(data, matrices, memo, split_name, model, options, settings)
                    if registered(model).estimator.rating_model and model not in later:
                        folders.setdefault(split_name, []).append(trained.path.name)
                    specs.append((split_name, model, trained))
                    calls.append(Call(f"train {split_name}/{model}", dict(
                        spec=trained, data_dir=str(data), split_dir=str(matrices.path / split_name), model=model,
                        options=options, settings=settings)))
            for (split_name, model, trained), done in zip(specs, fanout.run(train_task, calls) if calls else []):
                run.record(done, trained)
                run.artifacts[f"run {split_name}/{model}"] = trained.out_dir
                for what, name in (("metrics", "metrics.json"), ("recommendations", "recommendations.parquet"),
                                   ("learning curve", "learning_curve.png")):
                    if (trained.path / name).exists():  # closed-form models have no learning curve
                        run.artifacts[f"{what} {split_name}/{model}"] = str(trained.path / name)
                runs.append({"split": split_name, "model": model, "run_dir": trained.out_dir})
                if tracking:
                    track_task(trained.out_dir, trained.key, tracking, f"{split_name}/{model}")
                curve = trained.path / "learning_curve.png"
                if curve.exists():
                    report.publish_learning_curve(f"recsys-curve-{_key(split_name)}-{_key(model)}", curve, model)
        if sweep_spec is not None:
            swept = run_sweeps(sweep_spec, fanout, data, matrices, memo, split_names, arguments,
                               resolve_device(device), threads, top_k)
            run.report["stages"].extend(swept.stages)
            run.report["sweep"] = sweep_summary_rows(swept.rows)
            run.report["sweep_chosen"] = swept.chosen
            run.artifacts.update(swept.files)
            report.publish_table("recsys-sweep", run.report["sweep"], "every sweep trial: options, valid and test "
                                 "metrics, epochs, seconds, state; chosen on valid only")
            for chosen in swept.chosen:
                runs.append({"split": chosen["split"], "model": f"{chosen['model']} (sweep #{chosen['trial']})",
                             "run_dir": chosen["run_dir"]})
    run.report["metrics"] = report.metric_rows(runs)
    report.publish_table("recsys-metrics", run.report["metrics"], "stage 4: test metrics, models beside baselines")
    run.report["buckets"] = report.bucket_rows(runs)
    report.publish_table("recsys-buckets", run.report["buckets"], "stage 4: where models lose, per bucket of the "
                         "user's training ratings and for new items, model beside its best baseline")
    if protocol == "netflix-probe":  # the Prize's published numbers beside the run's probe RMSE, labelled
        from recsys_core import prize

        generated = source == layout.SAMPLE or prize.is_generated(options["source"])
        run.report["prize"] = prize.comparison_rows(run.report["metrics"], generated)
        run.report["prize_note"] = prize.GENERATED_NOTE if generated else prize.REAL_NOTE
        report.publish_table("recsys-prize", run.report["prize"], f"probe RMSE beside the Netflix Prize's published "
                             f"RMSE: {run.report['prize_note']}")
    run.report["runs"] = report.run_rows(data)
    report.publish_table("recsys-runs", run.report["runs"], "every training run under the data dir: model, split, "
                         "options, valid/test metrics, seconds (compare runs here)")
    if registry_model:  # champion vs challenger: promote only a better model (tasks/promotion.py, docs/serving.md)
        from tasks.promotion import promote_runs

        decisions = promote_runs(data, registry_model, runs, promotion_margin, top_k, resolve_device(device),
                                 splits_spec.out_dir)
        run.report["promotion"] = [d.line() for d in decisions]
    return run.finish()


class _Run:
    """Collects what each stage did (cached / reused / built) for the summary."""

    def __init__(self, data: Path, source: str):
        self.report = {"source": source, "data_dir": str(data), "stages": [], "split_stats": [], "metrics": []}
        self.artifacts: dict[str, str] = {}

    def stage(self, task_fn, spec, label: str, **kwargs) -> dict:
        started = time.perf_counter()
        state = task_fn(spec=spec, data_dir=self.report["data_dir"], return_state=True, **kwargs)
        result = state.result()  # re-raises the stage's error
        status = "cached" if state.name == "Cached" else result.status
        seconds = round(time.perf_counter() - started, 2)
        self.report["stages"].append({"stage": label, "status": status, "seconds": seconds,
                                      "output": spec.out_dir})
        return result

    def record(self, done, spec) -> dict:
        """A training task's end (``tasks.fanout.Done``) in the report; re-raises its error."""
        result = done.result()
        status = "cached" if done.state.name == "Cached" else result.status
        self.report["stages"].append({"stage": done.call.label, "status": status, "seconds": round(done.seconds, 2),
                                      "output": spec.out_dir})
        return result

    def finish(self) -> dict:
        self.report["artifacts"] = self.artifacts
        report.publish_table("recsys-stages", self.report["stages"], "what each stage did: cached, reused or built")
        report.publish_summary(self.report)
        return self.report


def train_arguments(models: list[str], model_options: dict | None, seed: int, k: int
                    ) -> dict[str, tuple[dict, RunSettings]]:
    """What ``recsys_core.train`` gets for each model: its options (the flow's ``seed``, for models that have
    one, then the model's ``model_options``) and its run settings (``top_k`` as k; a run setting still given
    among ``model_options``, as before run settings existed, is moved there with a deprecation line); every
    one checked here, before any stage runs."""
    from recsys_core import models as catalogue

    if not models:
        raise RecsysError(f"models is empty; name at least one of {', '.join(catalogue.names())}")
    for model in models:
        catalogue.get(model)  # an unknown name is refused with the list of registered models
    model_options = {} if model_options is None else model_options
    if not isinstance(model_options, dict) or not all(isinstance(v, dict) for v in model_options.values()):
        raise RecsysError("model_options must map model names to objects of options, e.g. "
                          f"{{\"autoencoder\": {{\"layers\": [128, 256, 256]}}}}, got {model_options!r}")
    stray = sorted(set(model_options) - set(models))
    if stray:
        raise RecsysError(f"model_options names {', '.join(stray)}, which {'is' if len(stray) == 1 else 'are'} "
                          f"not among the models to train ({', '.join(models)}); add it to models or drop its options")
    for model in models:  # a blend of this flow's runs needs a rating model among them (or named members)
        if getattr(catalogue.get(model).estimator, "trains_after_others", False) and not model_options.get(
                model, {}).get("members") and not any(catalogue.get(m).estimator.rating_model and not getattr(
                    catalogue.get(m).estimator, "trains_after_others", False) for m in models):
            raise RecsysError(f"{model} blends the other rating models of the flow, and models names none; add "
                              "some (e.g. mf knn-item svdpp) or name its members in model_options")
    arguments = {}
    for model in models:
        registration = catalogue.get(model)
        given, moved = split_legacy(model_options.get(model), where=f"model_options of {model}")
        options = {**({"seed": seed} if "seed" in registration.options.names() else {}), **given}
        registration.resolve(options)  # RecsysError: one sentence naming the model, the option and the value
        arguments[model] = (options, RunSettings(**{"k": k, **moved}))
    return arguments


def registered(model: str):
    from recsys_core import models as catalogue

    return catalogue.get(model)


def registered_models() -> list[str]:
    from recsys_core import models as catalogue

    return catalogue.names()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dataset_row(converted: Path) -> dict:
    return json.loads((converted / "meta.json").read_text())


def _matrices_rows(root: Path) -> list[dict]:
    rows = []
    for meta_file in sorted(root.glob("*/meta.json")):
        meta = json.loads(meta_file.read_text())
        nnz = meta.get("nnz", {})
        rows.append({"split": meta_file.parent.name, "users": meta.get("n_users"), "items": meta.get("n_items"),
                     **{f"nnz {part}": n for part, n in nnz.items()}})
    return rows


def _key(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _split_options(protocol: str, split_options: dict | None, splits: list[str], seed: int,
                   source_path: Path | None = None) -> dict:
    """The split stage's options: the flow's seed, the user's ``split_options``, for netflix-time ``splits`` and
    for netflix-probe the raw source (its probe.txt, recsys_core/prize.py) unless the options name one."""
    if split_options is not None and not isinstance(split_options, dict):
        raise RecsysError(f"split_options must be a JSON object of the protocol's options, got {split_options!r}")
    options = {"seed": seed, **(split_options or {})}
    if protocol == "netflix-time":
        options["splits"] = list(splits)
    if protocol == "netflix-probe" and source_path is not None:
        options.setdefault("source", str(source_path))
    return options


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise RecsysError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python flows/full.py",
        description="Run the whole recommender pipeline as a Prefect flow, every stage cached by content. "
        "Option names are the flow's parameter names (use them with `prefect deployment run -p name=value`).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--source", default="sample",
                   help="'sample' (generate a Netflix-format sample under DATA_DIR/raw/sample/), a Netflix path "
                   "(a folder with training_set/ + movie_titles.txt, a training_set/ folder, training_set.tar, "
                   "nf_prize_dataset.tar.gz, the Kaggle folder with combined_data_*.txt or its zip) or a MovieLens "
                   "folder (100K, 1M, 20M/25M/latest)")
    g.add_argument("--data-dir", default="data",
                   help="where every stage writes (converted/, splits/, matrices/, runs/)")
    g.add_argument("--sample-scale", type=float, default=DEFAULT_SCALE,
                   help="size of the generated sample as a fraction of Netflix (1.0 = 100M ratings)")
    g.add_argument("--sample-seed", type=int, default=0, help="seed of the generated sample")
    g = p.add_argument_group("splits")
    g.add_argument("--protocol", choices=PROTOCOLS, default="netflix-time",
                   help="netflix-time: the time splits of arXiv 1708.01715; netflix-probe: the Netflix Prize's own "
                   "split by the source's probe.txt; time, leave-one-out, random otherwise")
    g.add_argument("--splits", nargs="+", default=["N3M"], metavar="NAME",
                   help="netflix-time splits to cut: N3M N6M N1Y NF")
    g.add_argument("--split-options", type=_json_object, metavar="JSON",
                   help="options of the protocol as a JSON object, e.g. '{\"quantile\": 0.9}' (time), "
                   "'{\"fraction\": 0.1}' (random), '{\"negatives\": 99, \"valid\": true}' (leave-one-out), "
                   "'{\"valid_share\": 0.5}' (netflix-time, netflix-probe; 0 puts all of probe in test); see "
                   "`python -m recsys_core split --help`")
    g = p.add_argument_group("models")
    g.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="MODEL",
                   help=f"models to train, of {', '.join(registered_models())}; baselines are evaluated beside each")
    g.add_argument("--model-options", type=_json_object, metavar="JSON",
                   help="options per model as a JSON object keyed by model name, e.g. "
                   "'{\"autoencoder\": {\"layers\": [128, 256, 256], \"epochs\": 20}, \"mf\": {\"dim\": 32}}': the "
                   "option names of `python -m recsys_core train --help` (with _ for -), JSON values")
    g.add_argument("--device", choices=DEVICES, default="auto", help="auto = cuda when available, else cpu")
    g.add_argument("--seed", type=int, default=0, help="seed of splits and training")
    g.add_argument("--top-k", type=int, default=10, help="length of the recommendation lists and cut-off of HR/NDCG")
    g = p.add_argument_group("where training runs")
    g.add_argument("--task-runner", choices=RUNNERS, default="sequential",
                   help="sequential: every training in this process, one after another; dask: all at once on a "
                   "Dask cluster (a local one sized to this machine unless --dask-address)")
    g.add_argument("--dask-address", metavar="tcp://HOST:8786",
                   help="use the existing Dask cluster at this scheduler address (implies --task-runner dask; every "
                   "worker must see --data-dir at the same path and run the same code)")
    g.add_argument("--dask-workers", type=int, metavar="N",
                   help="worker processes of the local cluster (default: one per available core)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="torch threads per training (default: the available cores shared by the trainings at once, "
                   "fewer when other work keeps some busy, or RECSYS_THREADS; the log and metrics.json say what "
                   "was used)")
    g = p.add_argument_group("sweeps")
    g.add_argument("--sweep", metavar="FILE|default",
                   help="run a hyperparameter sweep declared in a YAML or JSON file (docs/sweeps.md), or 'default': "
                   "every model of --models over its shipped search space; chosen on valid only")
    p.add_argument("--until", choices=UNTIL, default="train", help="last stage to run")
    p.add_argument("--mlflow-tracking-uri", metavar="URI",
                   help="log every training run to this MLflow store, e.g. sqlite:///mlflow.db (default: "
                   "MLFLOW_TRACKING_URI when set, else no tracking; needs pip install '.[mlflow]')")
    p.add_argument("--registry-model", metavar="NAME", help="registry model (e.g. netflix-{split}) whose champion "
                   "the trained models challenge; a better one is promoted (DATA_DIR/registry, docs/serving.md)")
    p.add_argument("--promotion-margin", type=float, default=0.001,
                   help="relative improvement on the primary valid metric a challenger needs to be promoted")
    p.add_argument("--report-json", metavar="FILE",
                   help="also write the run's report (stage statuses, stats, metrics, paths) as JSON "
                   "(not a flow parameter)")
    return p


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def print_summary(result: dict) -> None:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    data = Path(result["data_dir"])
    stages = [{**s, "output": _relative(s["output"], data)} for s in result["stages"]]
    console.print(f"[bold]Data dir[/bold] {data}")
    console.print(report.rich_table("Stages", stages))
    if result.get("split_stats"):
        console.print(report.rich_table("Split statistics", result["split_stats"]))
    for warning in result.get("split_warnings", []):
        console.print(f"[bold yellow]Warning:[/bold yellow] {warning}", soft_wrap=True)
    if result.get("metrics"):
        hidden = ("run_dir", "n", "n_recall_users")
        rows = [{k: v for k, v in r.items() if k not in hidden} for r in result["metrics"]]
        console.print(report.rich_table("Test metrics (a model beaten by a baseline is flagged)", rows))
    if result.get("buckets"):
        console.print(report.rich_table(report.BUCKETS_TITLE, result["buckets"]))
    if result.get("sweep"):
        console.print(report.rich_table("Sweep: every trial (chosen on valid only)", result["sweep"]))
    if result.get("prize"):
        console.print(report.rich_table("Probe RMSE beside the Netflix Prize's published RMSE", result["prize"]))
        console.print(f"[bold]Note:[/bold] {result['prize_note']}", soft_wrap=True)
    for line in result.get("promotion", []):
        console.print(f"[bold]{line}[/bold]", soft_wrap=True)
    console.print("[bold]Artifacts[/bold]")
    for what, where in result.get("artifacts", {}).items():
        console.print(f"  {what}: {where}", soft_wrap=True)


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


@contextlib.contextmanager
def local_run_settings(preload: tuple[str, ...] = ()):
    """Prefect settings of a command-line run (flows/local_api.py says why).

    Without a Prefect server configured: the temporary API in a child process tied to this one, analytics
    off, a generous start-up wait. Flow-run heartbeats off unless the user set a frequency: they serve a
    server's detection of crashed deployment runs, and each run ends by joining their thread (up to 1 s).

    ``preload``: modules the run will import, imported while the temporary API boots (the parent would
    only wait then): torch, through the model catalogue, is ~1.5 s of an all-cached run.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_UI_URL,
        temporary_settings,
    )

    from flows import local_api

    local_api.apply_local_defaults()
    server = local_api.take_started()
    updates = {}
    if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" not in os.environ:
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    if PREFECT_API_URL.value():
        if server is not None:  # a server is configured in a way only Prefect sees (e.g. prefect.toml)
            server.stop()
    else:
        server = server or local_api.LocalAPI()
        for module in preload:
            importlib.import_module(module)
        updates[PREFECT_API_URL] = server.wait_healthy()
        updates[PREFECT_UI_URL] = ""  # it serves no UI: no "View at <link>" line
    # The server is stopped at exit (registered before Prefect's log and event workers, so after they flush).
    with temporary_settings(updates):
        yield


def main(argv: list[str] | None = None) -> int:
    from flows import local_api

    args = vars(build_parser().parse_args(argv))
    report_json = args.pop("report_json")
    quiet_user_error_tracebacks()
    if args["dask_address"]:
        args["task_runner"] = "dask"
    try:
        if args["sweep"] not in (None, "default"):
            args["sweep"] = load_sweep_file(args["sweep"])
        with local_run_settings(preload=("recsys_core.models",) if args["until"] == "train" else ()):
            result = full_pipeline(**args)
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except local_api.StartupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; completed stages stay cached, the interrupted one will run again", file=sys.stderr)
        return 130
    if report_json:
        Path(report_json).write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
