"""The typed records load what the code before them wrote (tests/fixtures/records_v0: a registry with every
kind of history event, four run folders and two flow reports), and write it back with the same content."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recsys_core.records import ChampionPointer, HistoryEntry, RunReport, StageResult
from recsys_core.registry import HISTORY, POINTER, Registry
from recsys_core.runs import RunConfig, RunFolder, RunMetrics

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "records_v0"
NAME = "sample-N3M"
RUNS = "runs/sample-07576ca1b5/netflix-time-b571f72a61/N3M"


@pytest.fixture
def old_data(tmp_path) -> Path:
    """The fixture's data dir under ``tmp_path``, its absolute paths pointing there."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURE / "data", data)
    for path in data.rglob("*.json*"):
        path.write_text(path.read_text().replace("@DATA_DIR@", str(data)))
    return data


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_an_old_registry_loads(old_data):
    registry = Registry(old_data / "registry")
    assert registry.names() == [NAME]
    pointer = registry.champion(NAME)
    assert (pointer.version, pointer.event, pointer.run.model) == (2, "pointer_rebuilt", "ease")
    assert pointer.run_dir == str(old_data / RUNS / "ease-e412456085")
    assert pointer.primary_metric == "recall@10" and pointer.run.value("valid", "recall@10") > 0.03
    assert pointer.run.trained_on.first_date == "2005-09-01" and pointer.run.trained_on.ratings == 27701

    history = registry.history(NAME)
    assert [(e.event, e.version) for e in history] == [
        ("promoted", 1), ("rejected", None), ("promoted", 2), ("promoted", 3), ("rolled_back", 2),
        ("pointer_rebuilt", 2)]
    assert registry.chain(NAME) == [1, 2]
    first, rejected, better, manual = history[:4]
    assert first.previous_version is None and rejected.champion_version == 1 and better.previous_version == 1
    assert history[4].from_version == 3 and manual.decision is None and manual.by == "cli"
    # the flow's decisions: the table keyed by the metric, the champion's coverage on the new split
    assert first.decision.metric == "recall@10" and first.decision.decided_on == "valid"
    assert [row.role for row in first.decision.rows] == ["challenger"] * 2 + ["baseline"] * 4
    assert first.decision.rows[0].valid == pytest.approx(0.0282690, abs=1e-6)
    assert "loses to" in rejected.reason and rejected.decision.candidates[0].endswith("mf-82dc62cdba")
    champion_row = better.decision.rows[0]
    assert champion_row.role == "champion" and champion_row.note.startswith("version 1;")
    assert better.decision.coverage.users_new_fallback == 0 and better.decision.coverage.users > 0
    assert registry.entry(NAME, 3).run.model == "mf"


def test_old_registry_records_are_written_back_with_their_content(old_data):
    folder = old_data / "registry" / NAME
    old_pointer = json.loads((folder / POINTER).read_text())
    assert ChampionPointer.from_json(old_pointer).to_json() == old_pointer
    for old in _lines(folder / HISTORY):
        entry = HistoryEntry.from_json(old)
        new = entry.to_json()
        assert HistoryEntry.from_json(new) == entry
        assert {k: new[k] for k in new if k in old} == {k: old[k] for k in new if k in old}
        # the only keys that differ: a rejection now says it has no primary metric; a rollback and a rebuild
        # no longer carry the previous_version of the promotion they copy
        assert {k for k in new if k not in old} <= {"primary_metric"}
        assert {k for k in old if k not in new} <= {"previous_version"}
        assert entry.event in ("rolled_back", "pointer_rebuilt") or set(old) <= set(new)


def test_an_old_registry_takes_new_promotions(old_data, tmp_path):
    run = tmp_path / "new-run"
    run.mkdir()
    (run / "model.pt").write_bytes(b"weights")
    (run / "config.json").write_text(json.dumps({"model": "mf", "split_dir": str(tmp_path / "gone")}))
    (run / "metrics.json").write_text(json.dumps({"valid": {"recall@10": 0.04}, "test": {"recall@10": 0.05}}))
    registry = Registry(old_data / "registry")
    event = registry.promote(NAME, run, "after the upgrade")
    assert (event.version, event.previous_version, event.primary_metric) == (4, 2, "recall@10")
    assert registry.champion(NAME).run_dir == str(run.resolve()) and registry.chain(NAME) == [1, 2, 4]


@pytest.mark.parametrize("run", ["ease-d1e436913b", "ease-e412456085", "mf-719dbb526f", "mf-82dc62cdba"])
def test_old_run_folders_load(old_data, run):
    folder = RunFolder(old_data / RUNS / run)
    config, metrics = folder.config(), folder.metrics()
    assert config.model == run.split("-")[0] == metrics.model and metrics.split == "N3M"
    assert config.split_dir.startswith(str(old_data / "matrices")) and config.threads == 1
    assert config.options["k"] == 10 and "model" not in config.options
    assert set(metrics.baselines) == {"global_mean", "item_mean", "user_item_bias", "most_popular"}
    assert metrics.test["n_recall_users"] > 0 and metrics.other["evaluation_seconds"] >= 0
    manifest = folder.manifest()
    assert manifest is not None and manifest.stage == "train"
    if config.model == "mf":
        assert metrics.valid["rmse"] > 0 and metrics.training["epochs_done"] in (2, 3)
        assert metrics.beaten_by == () or all(isinstance(name, str) for name in metrics.beaten_by)
    old_config = json.loads((folder.path / "config.json").read_text())
    old_metrics = json.loads((folder.path / "metrics.json").read_text())
    assert RunConfig.from_json(old_config).to_json() == old_config
    assert RunMetrics.from_json(old_metrics).to_json() == old_metrics


def test_old_run_folders_in_the_report_tables(old_data):
    from tasks.report import bucket_rows, metric_rows, run_rows

    runs = [{"split": "N3M", "model": p.name.split("-")[0], "run_dir": str(p)}
            for p in sorted((old_data / RUNS).iterdir())]
    rows = metric_rows(runs)
    assert [row["model"] for row in rows if row["kind"] == "model"] == ["ease", "ease", "mf", "mf"]
    assert len([row for row in rows if row["kind"] == "baseline"]) == 4       # once per split
    assert {row["model"] for row in bucket_rows(runs)} == {"mf"}               # per bucket: rating models
    table = run_rows(old_data)
    assert sorted(row["model"] for row in table) == ["ease", "ease", "mf", "mf"]
    assert {row["split"] for row in table} == {"N3M"} and all(row["seconds"] is not None for row in table)


@pytest.mark.parametrize("name", ["report1.json", "report3.json"])
def test_old_run_reports_load(name):
    old = json.loads((FIXTURE / name).read_text())
    report = RunReport.from_json(old)
    assert report.to_json() == old
    assert report.stages[-1].stage.startswith("train N3M/") and report.stages[-1].status == "built"
    assert report.promotion and report.promotion[0].startswith("registry sample-N3M: PROMOTED")


def test_stage_result_json():
    result = StageResult("train", "ab" * 32, "reused", 1.5)
    assert StageResult.from_json(result.to_json()) == result
