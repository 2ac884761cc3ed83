"""The full flow with the real stages on the default sample: what is cached, what runs again, and why.

One first run builds a reference data dir ("golden"); each test works on a copy of it (content keys do
not depend on paths, so a copy is as cached as the original) and changes one thing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flow_support import (
    TINY,
    all_manifests_verify,
    cli_args,
    model_options,
    sandbox_fixture,  # noqa: F401 (the sandbox fixture)
    start_cli,
    statuses,
    subprocess_env,
)

ETL = ("convert", "split", "matrices")
TRAIN = "train N3M/autoencoder"


@pytest.fixture(scope="session")
def netflix_raw(tmp_path_factory):
    """A Netflix-format source folder (what a user passes as --source): the default sample's data."""
    from flows.full import DEFAULT_SCALE
    from recsys_core.synth import generate_netflix

    raw = tmp_path_factory.mktemp("raw") / "netflix"
    generate_netflix(raw, scale=DEFAULT_SCALE, seed=0)
    return raw


@pytest.fixture(scope="session")
def golden(sandbox, netflix_raw, tmp_path_factory):
    """The first run on a fresh data dir: (data dir, report)."""
    from flows.full import full_pipeline

    data = tmp_path_factory.mktemp("golden") / "data"
    report = full_pipeline(source=str(netflix_raw), data_dir=str(data), **_train_params())
    return data, report


# The golden run: the embedded default sample (flows/full.py's DEFAULT_SCALE), 2 epochs. The cached rerun is
# checked by what ran (issue 23), so the first run need not be long (it was 60 epochs for a timing check).
GOLDEN_TRAINING = dict(epochs=2, patience=0)


def _train_params(models=("autoencoder",), **changes) -> dict:
    """Flow parameters: ``models``, each with the golden run's training options updated by ``changes``."""
    return {"models": list(models), **model_options(models, **{**GOLDEN_TRAINING, **changes})}


def _copy(golden_dir: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(golden_dir, data)
    return data


def test_first_run_builds_every_stage_and_publishes_artifacts(golden):
    data, report = golden
    assert set(statuses(report).values()) == {"built"}
    assert list(statuses(report)) == [*ETL, TRAIN]
    assert {r["split"] for r in report["split_stats"]} == {"N3M"}
    kinds = {r["model"]: r["kind"] for r in report["metrics"]}
    assert kinds["autoencoder"] == "model" and "global_mean" in kinds and "user_item_bias" in kinds
    run_dir = Path(report["artifacts"]["run N3M/autoencoder"])
    for name in ("metrics.json", "learning_curve.png", "model.pt", "predictions.parquet", "recommendations.parquet"):
        assert (run_dir / name).is_file(), name
    assert len(all_manifests_verify(data)) == 4
    # where the model loses: one row per bucket, read back from its metrics.json
    rows = [r for r in report["buckets"] if r["model"] == "autoencoder"]
    assert [r["bucket"] for r in rows] == ["0", "1-5", "6-20", "21-100", ">100", "new items"]
    assert {r["metric"] for r in rows} == {"rmse"} and rows[-1]["test"] == "absent"  # N3M drops new items


def _files(data: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``data``: (size, mtime in ns), by relative path."""
    return {str(p.relative_to(data)): (p.stat().st_size, p.stat().st_mtime_ns) for p in data.rglob("*") if p.is_file()}


def test_second_run_with_nothing_changed_computes_nothing(golden, netflix_raw, monkeypatch):
    """Checked by what ran, not by the clock: no stage function and no training loop is entered, every stage
    reports cached, and no file under the data dir (outputs, manifests) is written again."""
    import recsys_core.convert
    import recsys_core.matrices
    import recsys_core.split
    import recsys_core.train
    import recsys_core.training_loop
    from flows.full import full_pipeline

    entered = []

    def forbidden(name):
        def call(*args, **kwargs):
            entered.append(name)
            raise AssertionError(f"a cached rerun entered {name}")
        return call

    for module, name in ((recsys_core.convert, "convert"), (recsys_core.split, "split"),
                         (recsys_core.matrices, "build_matrices"), (recsys_core.train, "train"),
                         (recsys_core.training_loop, "fit")):
        monkeypatch.setattr(module, name, forbidden(f"{module.__name__}.{name}"))
    data, first = golden
    before = _files(data)
    report = full_pipeline(source=str(netflix_raw), data_dir=str(data), **_train_params())
    assert entered == []
    assert set(statuses(report).values()) == {"cached"}, statuses(report)
    assert _files(data) == before
    assert report["metrics"] == first["metrics"]
    assert report["buckets"] == first["buckets"]


def test_changed_raw_file_reruns_convert_and_everything_after(golden, netflix_raw, tmp_path):
    from flows.full import full_pipeline

    data = _copy(golden[0], tmp_path)
    raw = tmp_path / "netflix"
    shutil.copytree(netflix_raw, raw)
    # A moved copy of the same content is still cached: keys are content, not paths.
    assert set(statuses(full_pipeline(source=str(raw), data_dir=str(data), **_train_params())).values()) == {"cached"}

    movie = sorted((raw / "training_set").glob("mv_*.txt"))[0]
    lines = movie.read_text().splitlines()
    customer, rating, date = lines[1].split(",")
    lines[1] = ",".join([customer, str(6 - int(rating) if rating != "3" else 1), date])
    movie.write_text("\n".join(lines) + "\n")
    report = full_pipeline(source=str(raw), data_dir=str(data), **_train_params())
    assert statuses(report) == {"convert": "built", "split": "built", "matrices": "built", TRAIN: "built"}
    assert report["artifacts"]["converted"] != golden[1]["artifacts"]["converted"]
    all_manifests_verify(data)


def test_changed_training_parameter_reruns_training_only(golden, netflix_raw, tmp_path):
    from flows.full import full_pipeline

    data = _copy(golden[0], tmp_path)
    report = full_pipeline(source=str(netflix_raw), data_dir=str(data), **_train_params(epochs=1))
    assert statuses(report) == {**{s: "cached" for s in ETL}, TRAIN: "built"}
    assert report["artifacts"]["run N3M/autoencoder"] != golden[1]["artifacts"]["run N3M/autoencoder"]
    history = json.loads((Path(report["artifacts"]["run N3M/autoencoder"]) / "history.json").read_text())
    assert history["epoch"] == [1]


def test_deleted_or_truncated_artifact_reruns_its_stage(golden, netflix_raw, tmp_path):
    from flows.full import full_pipeline

    data = _copy(golden[0], tmp_path)
    artifacts = golden[1]["artifacts"]
    matrices = data / Path(artifacts["matrices"]).relative_to(golden[0].resolve())
    run_dir = data / Path(artifacts["run N3M/autoencoder"]).relative_to(golden[0].resolve())
    (matrices / "N3M" / "test.npz").unlink()
    with open(run_dir / "predictions.parquet", "r+b") as fh:
        fh.truncate(100)

    report = full_pipeline(source=str(netflix_raw), data_dir=str(data), **_train_params())
    assert statuses(report) == {"convert": "cached", "split": "cached", "matrices": "built", TRAIN: "built"}
    assert (matrices / "N3M" / "test.npz").is_file()
    assert (run_dir / "predictions.parquet").stat().st_size > 100
    all_manifests_verify(data)


def test_failed_training_keeps_etl_cached_and_next_run_resumes_there(golden, netflix_raw, tmp_path, monkeypatch):
    import recsys_core.train
    from flows.full import full_pipeline

    data = _copy(golden[0], tmp_path)
    real_train = recsys_core.train.train
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise ValueError("a bug in training")

    monkeypatch.setattr(recsys_core.train, "train", broken)
    with pytest.raises(ValueError, match="a bug in training"):
        full_pipeline(source=str(netflix_raw), data_dir=str(data), **_train_params(epochs=1))
    assert len(calls) == 1  # a bug is not retried

    def flaky(*args, **kwargs):  # an I/O hiccup is retried
        calls.append(1)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(recsys_core.train, "train", flaky)
    report = full_pipeline(source=str(netflix_raw), data_dir=str(data), **_train_params(epochs=1))
    assert statuses(report) == {**{s: "cached" for s in ETL}, TRAIN: "built"}
    assert len(calls) == 3


# A driver for a run in another process: the real split, then a pause before the stage can write its
# manifest, long enough to be killed there (the worst moment: every output file is in place).
KILL_DRIVER = """
import runpy, sys, time
from pathlib import Path
import recsys_core.split as split_module
marker = Path(sys.argv.pop(1))
real_split = split_module.split
def split_then_wait(*args, **kwargs):
    result = real_split(*args, **kwargs)
    marker.write_text("in split")
    time.sleep(120)
    return result
split_module.split = split_then_wait
sys.argv[0] = "flows/full.py"
runpy.run_path("flows/full.py", run_name="__main__")
"""


def test_sigkill_mid_stage_leaves_nothing_taken_as_complete(sandbox, golden, netflix_raw, tmp_path):
    from flows.full import full_pipeline

    data = _copy(golden[0], tmp_path)
    driver = tmp_path / "driver.py"
    driver.write_text(KILL_DRIVER)
    marker = tmp_path / "marker"
    params = {"source": str(netflix_raw), "data_dir": str(data), **_train_params(), "seed": 7}
    env = subprocess_env(sandbox["api_url"], sandbox["home"])
    proc = subprocess.Popen([sys.executable, str(driver), str(marker), *cli_args(params)],
                            cwd=Path(__file__).parents[1],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, "the run ended before reaching the split stage"
            assert time.time() < deadline, "the run did not reach the split stage"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    report = full_pipeline(**params)
    assert statuses(report) == {"convert": "cached", "split": "built", "matrices": "built", TRAIN: "built"}
    all_manifests_verify(data)


def test_two_runs_at_once_on_one_data_dir(sandbox, tmp_path):
    data = tmp_path / "data"
    env = subprocess_env(sandbox["api_url"], sandbox["home"])
    params = {"source": "sample", "data_dir": str(data), **TINY, **model_options(epochs=1, patience=0)}
    reports = [tmp_path / f"report-{i}.json" for i in range(2)]
    procs = [start_cli(params, env, r, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in reports]
    for proc in procs:
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output[-3000:]
    runs = [statuses(json.loads(r.read_text())) for r in reports]
    assert list(runs[0]) == ["sample", *ETL, TRAIN]
    for stage in runs[0]:
        # Each stage was computed by one run only; the other waited for its lock and reused the output.
        assert sorted(run[stage] for run in runs) in (["built", "reused"], ["built", "cached"]), (stage, runs)
    assert len(all_manifests_verify(data)) == 5
    first, second = (json.loads(r.read_text())["metrics"] for r in reports)
    assert first == second


def test_user_error_is_one_sentence_and_nonzero_exit(sandbox, tmp_path, capsys):
    from flows.full import main

    assert main(["--source", str(tmp_path / "missing"), "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "missing: no such file or folder" in err


def test_bad_model_options_stop_the_flow_before_its_first_stage(sandbox, tmp_path, capsys):
    from flows.full import main

    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "--models", "mf", "--model-options", '{"mf": {"lr": -1}}']) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "error: model mf: option lr must be above 0, got -1"
    assert not data.exists()


def test_help_lists_every_flow_parameter():
    import inspect

    from flows.full import build_parser, full_pipeline

    options = {a.dest for a in build_parser()._actions} - {"help", "report_json"}
    assert options == set(inspect.signature(full_pipeline.fn).parameters)


def test_leave_one_out_protocol_trains_ncf_and_ranks_against_most_popular(sandbox, netflix_raw, tmp_path):
    from flows.full import full_pipeline

    report = full_pipeline(source=str(netflix_raw), data_dir=str(tmp_path / "data"),
                           protocol="leave-one-out", **_train_params(models=["neumf"], epochs=1))
    assert statuses(report) == {**{stage: "built" for stage in ETL}, "train leave-one-out/neumf": "built"}
    rows = {r["model"]: r for r in report["metrics"]}
    assert rows["neumf"]["kind"] == "model" and rows["most_popular"]["kind"] == "baseline"
    for name in ("neumf", "most_popular"):
        assert 0.0 <= rows[name]["hr@10"] <= 1.0 and rows[name]["n_ranked"] > 0
    assert len(all_manifests_verify(tmp_path / "data")) == 4


def test_mlflow_tracking_logs_each_run_once_and_the_run_table_lists_every_run(golden, netflix_raw, tmp_path,
                                                                                 monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra")
    import mlflow

    from flows.full import full_pipeline

    data = _copy(golden[0], tmp_path)
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Tracking turned on after the fact: the cached run is logged once, a second cached run logs nothing.
    for _ in range(2):
        report = full_pipeline(source=str(netflix_raw), data_dir=str(data), mlflow_tracking_uri=uri, **_train_params())
        assert set(statuses(report).values()) == {"cached"}
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name("netflix/N3M")  # one experiment per data set and split
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["recsys.model"] == "autoencoder"
    assert len(client.get_metric_history(runs[0].info.run_id, "train_loss")) == GOLDEN_TRAINING["epochs"]

    # A second model beside it: the run table lists both, with their options and metrics.
    report = full_pipeline(source=str(netflix_raw), data_dir=str(data), **_train_params(models=["mf"], epochs=1))
    rows = {row["model"]: row for row in report["runs"]}
    assert set(rows) == {"autoencoder", "mf"}
    assert "epochs=60" in rows["autoencoder"]["options"] and "epochs=1" in rows["mf"]["options"]
    assert all(row["test rmse"] > 0 and row["valid rmse"] > 0 and row["seconds"] > 0 for row in rows.values())
    assert len(client.search_runs([experiment.experiment_id])) == 1  # tracking was off for that run
