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
import json
import sys
import time
from pathlib import Path

# Runnable as a script from anywhere and importable by a Prefect worker from its file path: the
# repository root (holding recsys_core/ and tasks/) must be importable.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from prefect import flow  # noqa: E402

from recsys_core.errors import RecsysError  # noqa: E402
from tasks import plan, report  # noqa: E402
from tasks.caching import hash_memo  # noqa: E402
from tasks.logs import forward_library_logs, quiet_user_error_tracebacks  # noqa: E402
from tasks.stages import convert_task, matrices_task, split_task, synth_task, train_task  # noqa: E402

UNTIL = ("convert", "split", "matrices", "train")
PROTOCOLS = ("netflix-time", "time", "leave-one-out", "random")
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
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    layers: list[int] | None = None,
    dropout: float | None = None,
    weight_decay: float | None = None,
    optimizer: str | None = None,
    patience: int | None = None,
    device: str = "auto",
    seed: int = 0,
    top_k: int = 10,
    until: str = "train",
    registry_model: str | None = None,
    promotion_margin: float = 0.001,
) -> dict:
    """Run the pipeline; returns the report (stages with cached/built status, stats, metrics, paths)."""
    forward_library_logs()
    _check_choice("protocol", protocol, PROTOCOLS)
    _check_choice("device", device, DEVICES)
    _check_choice("until", until, UNTIL)
    data = Path(data_dir).resolve()
    memo = hash_memo(data)
    run = _Run(data, source)

    # Stage 0 (sample only) and stage 1: raw files -> Parquet.
    if source == plan.SAMPLE:
        sample = plan.sample_spec(data, sample_scale, sample_seed)
        run.stage(synth_task, sample, "sample", scale=sample_scale, seed=sample_seed)
        source_path, name = sample.path, plan.SAMPLE
    else:
        source_path, name = Path(source).expanduser().resolve(), None
    converted = plan.convert_spec(data, source_path, memo, name=name)
    run.stage(convert_task, converted, "convert", source=str(source_path))
    run.artifacts["converted"] = converted.out_dir
    report.publish_table("recsys-dataset", [_dataset_row(converted.path)], "stage 1: the converted ratings")
    if until == "convert":
        return run.finish()

    # Stage 2: splits.
    options = {"seed": seed, **(split_options or {})}
    if protocol == "netflix-time":
        options["splits"] = list(splits)
    splits_spec = plan.split_spec(data, converted, memo, protocol, options)
    run.stage(split_task, splits_spec, "split", ratings_dir=converted.out_dir, protocol=protocol, options=options)
    run.artifacts["splits"] = splits_spec.out_dir
    run.report["split_stats"] = report.split_stat_rows(splits_spec.path)
    report.publish_table("recsys-split-stats", run.report["split_stats"], "stage 2: split statistics")
    if until == "split":
        return run.finish()

    # Stage 3: CSR matrices, one index per split.
    matrices = plan.matrices_spec(data, splits_spec, memo, protocol)
    run.stage(matrices_task, matrices, "matrices", split_root=splits_spec.out_dir)
    run.artifacts["matrices"] = matrices.out_dir
    report.publish_table("recsys-matrices", _matrices_rows(matrices.path), "stage 3: matrix shapes")
    if until == "matrices":
        return run.finish()

    # Stage 4: per split and model: train, evaluate beside the baselines, write top-K recommendations.
    hyper = dict(epochs=epochs, batch_size=batch_size, lr=lr, layers=layers, dropout=dropout,
                 weight_decay=weight_decay, optimizer=optimizer, patience=patience)
    runs = []
    for split_name in plan.split_names(matrices, memo):
        split_dir = str(matrices.path / split_name)
        for model in models:
            config = model_config(model, hyper, seed=seed, device=device, k=top_k)
            trained = plan.train_spec(data, matrices, memo, split_name, model, config)
            label = f"train {split_name}/{model}"
            run.stage(train_task, trained, label, split_dir=split_dir, model=model, config=config)
            run.artifacts[f"run {split_name}/{model}"] = trained.out_dir
            for what, name in (("metrics", "metrics.json"), ("recommendations", "recommendations.parquet"),
                               ("learning curve", "learning_curve.png")):
                run.artifacts[f"{what} {split_name}/{model}"] = str(trained.path / name)
            runs.append({"split": split_name, "model": model, "run_dir": trained.out_dir})
            curve = trained.path / "learning_curve.png"
            if curve.exists():
                report.publish_learning_curve(f"recsys-curve-{_key(split_name)}-{_key(model)}", curve, model)
    run.report["metrics"] = report.metric_rows(runs)
    report.publish_table("recsys-metrics", run.report["metrics"], "stage 4: test metrics, models beside baselines")
    if registry_model:  # champion vs challenger: promote only a better model (tasks/promote.py, docs/serving.md)
        from tasks.promote import promote_runs

        decisions = promote_runs(data, registry_model, runs, promotion_margin, top_k, resolve_device(device),
                                 splits_spec.out_dir)
        run.report["promotion"] = [d["line"] for d in decisions]
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
        status = "cached" if state.name == "Cached" else result["status"]
        self.report["stages"].append({"stage": label, "status": status, "seconds": round(time.perf_counter() - started, 2),
                                      "output": spec.out_dir})
        return result

    def finish(self) -> dict:
        self.report["artifacts"] = self.artifacts
        report.publish_table("recsys-stages", self.report["stages"], "what each stage did: cached, reused or built")
        report.publish_summary(self.report)
        return self.report


def model_config(model: str, hyper: dict, seed: int, device: str, k: int) -> dict:
    """The options recsys_core.train gets for ``model``: only those the model knows, unset ones left out."""
    from recsys_core.models import MODELS, TRAINING_DEFAULTS

    if model not in MODELS:
        raise RecsysError(f"unknown model {model!r}; choose among {', '.join(MODELS)}")
    known = set(TRAINING_DEFAULTS) | set(MODELS[model].defaults)
    config = {k_: v for k_, v in hyper.items() if v is not None and k_ in known}
    config.update(seed=seed, k=k, device=resolve_device(device))
    return config


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
                   "nf_prize_dataset.tar.gz) or a MovieLens folder (100K, 1M, 20M/25M/latest)")
    g.add_argument("--data-dir", default="data", help="where every stage writes (converted/, splits/, matrices/, runs/)")
    g.add_argument("--sample-scale", type=float, default=DEFAULT_SCALE,
                   help="size of the generated sample as a fraction of Netflix (1.0 = 100M ratings)")
    g.add_argument("--sample-seed", type=int, default=0, help="seed of the generated sample")
    g = p.add_argument_group("splits")
    g.add_argument("--protocol", choices=PROTOCOLS, default="netflix-time",
                   help="netflix-time: the time splits of arXiv 1708.01715; time, leave-one-out, random otherwise")
    g.add_argument("--splits", nargs="+", default=["N3M"], metavar="NAME",
                   help="netflix-time splits to cut: N3M N6M N1Y NF")
    g.add_argument("--split-options", type=_json_object, metavar="JSON",
                   help="options of the protocol as a JSON object, e.g. '{\"quantile\": 0.9}' (time), "
                   "'{\"fraction\": 0.1}' (random), '{\"negatives\": 99, \"valid\": true}' (leave-one-out), "
                   "'{\"valid_share\": 0.5}' (netflix-time); see `python -m recsys_core split --help`")
    g = p.add_argument_group("models")
    g.add_argument("--models", nargs="+", default=DEFAULT_MODELS, metavar="MODEL",
                   help="models to train (autoencoder, autorec-item, autorec-user, mf, mlp, gmf, ncf-mlp, neumf); "
                   "baselines are evaluated beside each")
    g.add_argument("--epochs", type=int, help="training epochs (default: the model's own)")
    g.add_argument("--batch-size", type=int, help="mini-batch size (default: the model's own)")
    g.add_argument("--lr", type=float, help="learning rate (default: the model's own)")
    g.add_argument("--layers", type=int, nargs="+", metavar="N", help="autoencoder encoder layer sizes, e.g. 128 256 256")
    g.add_argument("--dropout", type=float, help="dropout rate (autoencoder: on the code layer)")
    g.add_argument("--weight-decay", type=float, help="L2 weight decay")
    g.add_argument("--optimizer", choices=("sgd", "adam", "adagrad", "rmsprop"), help="optimizer")
    g.add_argument("--patience", type=int, help="early stopping: epochs without a better valid metric (0 = off)")
    g.add_argument("--device", choices=DEVICES, default="auto", help="auto = cuda when available, else cpu")
    g.add_argument("--seed", type=int, default=0, help="seed of splits and training")
    g.add_argument("--top-k", type=int, default=10, help="length of the recommendation lists and cut-off of HR/NDCG")
    p.add_argument("--until", choices=UNTIL, default="train", help="last stage to run")
    p.add_argument("--registry-model", metavar="NAME", help="registry model (e.g. netflix-{split}) whose champion "
                   "the trained models challenge; a better one is promoted (DATA_DIR/registry, docs/serving.md)")
    p.add_argument("--promotion-margin", type=float, default=0.001,
                   help="relative improvement on the primary valid metric a challenger needs to be promoted")
    p.add_argument("--report-json", metavar="FILE",
                   help="also write the run's report (stage statuses, stats, metrics, paths) as JSON (not a flow parameter)")
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
    if result.get("metrics"):
        hidden = ("run_dir", "n", "n_recall_users")
        rows = [{k: v for k, v in r.items() if k not in hidden} for r in result["metrics"]]
        console.print(report.rich_table("Test metrics (a model beaten by a baseline is flagged)", rows))
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
def local_run_settings():
    """Without a Prefect server (ephemeral local API) flow-run heartbeats serve nothing: they exist to
    let a server spot crashed runs of deployments. Turning them off saves up to a second per run."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    report_json = args.pop("report_json")
    quiet_user_error_tracebacks()
    try:
        with local_run_settings():
            result = full_pipeline(**args)
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed stages stay cached, the interrupted one will run again", file=sys.stderr)
        return 130
    if report_json:
        Path(report_json).write_text(json.dumps(result, indent=2) + "\n")
    print_summary(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
