"""The full pipeline as one Prefect flow: (sample) -> convert -> split -> matrices -> train/evaluate -> top-K.

    python flows/full.py             # embedded default: a generated Netflix-format sample under data/
    python flows/full.py --help      # every option (the same names as the flow's parameters)

Without PREFECT_API_URL it runs on Prefect's local ephemeral API (no server). Deployments use the
entrypoint ``flows/full.py:full_pipeline`` (see prefect.yaml). Every stage is cached by content: a
second run with nothing changed computes nothing and reports every stage as Cached.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from pathlib import Path

# Runnable as a script from anywhere and importable by a Prefect worker from its file path: the
# repository root (holding recsys_core/ and tasks/) must be importable.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flows import local_api  # noqa: E402 (no Prefect: it must start before Prefect is imported)

if __name__ == "__main__" and not {"-h", "--help"} & set(sys.argv[1:]):
    # A command-line run: local Prefect defaults before Prefect is imported (it reads them then), and the
    # temporary API server starting now, while the rest imports (flows/local_api.py says why).
    local_api.start_early()

from prefect import flow  # noqa: E402
from prefect.client.schemas.objects import State  # noqa: E402
from prefect.settings import (  # noqa: E402
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_UI_URL,
    temporary_settings,
)
from rich.console import Console  # noqa: E402

from flows import steps  # noqa: E402
from flows.parameters import (  # noqa: E402, F401 (DEFAULT_SCALE, build_parser: their old home)
    DEFAULT_SCALE,
    PipelineParams,
    build_parser,
    flow_signature,
    parse_args,
    resolve,
    resolve_device,
    split_options,
)
from recsys_core.artifacts import layout  # noqa: E402
from recsys_core.artifacts.hashing import hash_memo  # noqa: E402
from recsys_core.errors import RecsysError  # noqa: E402
from recsys_core.sweep import load_sweep_file  # noqa: E402
from recsys_core.tracking import require as require_mlflow  # noqa: E402
from tasks import report, schedule  # noqa: E402
from tasks.fanout import Fanout  # noqa: E402
from tasks.logs import forward_library_logs, quiet_user_error_tracebacks  # noqa: E402
from tasks.promotion import promote_runs  # noqa: E402
from tasks.report import RunReport  # noqa: E402
from tasks.tracking import tracking_uri  # noqa: E402


@flow(name="recsys-full-pipeline", log_prints=True)
@flow_signature  # the parameters, their types, defaults and help: PipelineParams in flows/parameters.py
def full_pipeline(**values) -> dict | State:
    """Run the pipeline; returns the report (stages with cached/built status, stats, metrics, paths)."""
    p = PipelineParams(**values)
    forward_library_logs()
    resolved = resolve(p)  # every option of every model, split, sweep and registry: one sentence, before any stage
    data = Path(p.data_dir).resolve()
    memo = hash_memo(data)
    run = RunReport(data, p.source)
    tracking = tracking_uri(p.mlflow_tracking_uri)
    if tracking and p.until == "train":
        require_mlflow()  # before any work: a missing extra is one sentence, not a failure after training

    # Stage 0 (sample only) and stage 1: raw files -> Parquet.
    source = steps.raw_source(run, data, p)
    if p.source != layout.SAMPLE and (skipped := schedule.skip_without_data(source)) is not None:
        return skipped  # a scheduled run before the data is there: Skipped, not Failed
    converted = steps.convert(run, data, memo, source, name=layout.SAMPLE if p.source == layout.SAMPLE else None)
    if p.until == "convert":
        return run.finish()

    # Stage 2: splits.
    options = split_options(p, source)
    splits = steps.split(run, data, memo, converted, p.protocol, options)
    if p.until == "split":
        return run.finish()

    # Stage 3: CSR matrices, one index per split.
    matrices = steps.matrices(run, data, memo, splits, p.protocol)
    if p.until == "matrices":
        return run.finish()

    # Stage 4: per split and model: train, evaluate beside the baselines, write top-K recommendations; on the
    # task runner (all at once on Dask), then the sweep's rounds of trials on the same runner.
    training = steps.Training(data, matrices, memo, resolved.arguments, resolve_device(p.device), p.threads, tracking)
    with Fanout(p.task_runner, str(data), p.dask_address, p.dask_workers) as fanout:
        runs = steps.train_models(run, fanout, training, p.models)
        if resolved.sweep is not None:
            runs += steps.sweep(run, fanout, training, resolved.sweep, p.top_k)
    steps.results(run, runs, p, options)
    if p.registry_model:  # champion vs challenger: promote only a better model (tasks/promotion.py, docs/serving.md)
        decisions = promote_runs(data, p.registry_model, runs, p.promotion_margin, p.top_k, training.device,
                                 splits.out_dir)
        run.report["promotion"] = [d.line() for d in decisions]
    return run.finish()


# --------------------------------------------------------------------------- command line


def print_summary(result: dict) -> None:
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
    only wait then): torch, through the model registry, is ~1.5 s of an all-cached run.
    """
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
    args = parse_args(argv)
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
