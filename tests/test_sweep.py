"""Sweeps in the library (recsys_core.sweep): declarations checked against the option classes, samplers that
give the same trials for the same seed, median pruning from earlier rounds, selection on valid only."""

from __future__ import annotations

import json

import pytest
import torch
from train_fixtures import make_rating_split

from recsys_core import models
from recsys_core.errors import RecsysError
from recsys_core.settings import RunSettings
from recsys_core.sweep import (
    COMPLETE,
    FAILED,
    PRUNED,
    MedianRule,
    Pruning,
    Study,
    load_sweep_file,
    median_rule,
    parse_sweep,
    read_outcome,
)
from recsys_core.train import train

MF_SPACE = {"dim": {"choices": [4, 8, 16]}, "lr": {"low": 1e-3, "high": 1e-2, "log": True},
            "l2": {"low": 0.0, "high": 0.1}, "optimizer": {"choices": ["adam", "sgd"]}}


def _study(sampler="tpe", seed=0, trials=8, batch=2, space=MF_SPACE, prune=None) -> Study:
    spec = parse_sweep({"sampler": sampler, "seed": seed, "trials": trials, "batch": batch, "prune": prune or False,
                        "models": {"mf": {"space": space}}})
    return Study(spec.models["mf"], {"k": 10, "seed": 0}, rating_model=True, loop_higher=False)


def _fake_outcome(trial, valid, test, state=COMPLETE, curve=None):
    return {"state": state, "valid": valid, "test": {"rmse": test}, "curve": curve or [valid], "run_dir": "x"}


@pytest.mark.parametrize("sweep, says", [
    ({"models": {"mf": {"space": {"depth": {"choices": [1]}}}}}, "model mf has no option depth"),
    ({"models": {"autoencoder": {"space": {"activation": {"choices": ["selu", "gelu"]}}}}},
     "model autoencoder: option activation must be one of"),
    ({"models": {"mf": {"space": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}}}, "must be above 0"),
    ({"models": {"mf": {"space": {"lr": {"low": 0.01, "high": 0.001}}}}}, "low must be below high"),
    ({"models": {"autoencoder": {"space": {"dropout": {"low": 0.1, "high": 1.5}}}}}, "option dropout must be"),
    ({"models": {"mf": {"space": {"squash": {"low": 0, "high": 1}}}}}, "searched over choices"),
    ({"sampler": "grid", "models": {"mf": {"space": {"lr": {"low": 0.001, "high": 0.01}}}}},
     "grid sampler needs choices or a step for lr"),
    ({"sampler": "bayes", "models": {"mf": "default"}}, "sampler must be one of grid, random, tpe"),
    ({"trials": 0, "models": {"mf": "default"}}, "trials must be an integer of at least 1"),
    ({"models": {"mf": {"space": {"dim": {"choices": [4]}}, "fixed": {"dim": 8}}}}, "both searched and fixed"),
    ({"models": {"mf": {"space": {"dim": [4]}, "fixed": {"epochs": -1}}}}, "option epochs must be"),
    ({"models": {"mf": {"spaces": {}}}}, "has no setting spaces"),
    ({"models": {"nope": "default"}}, "unknown model 'nope'"),
    ({"models": {}}, "models must map at least one model"),
])
def test_bad_declarations_are_one_sentence(sweep, says):
    with pytest.raises(RecsysError, match=says) as err:
        parse_sweep(sweep)
    assert "\n" not in str(err.value)


def test_every_model_ships_a_default_space_that_checks():
    spec = parse_sweep("default", models.names(), seed=3)
    assert set(spec.models) == set(models.names())
    for name, sweep in spec.models.items():
        assert sweep.space and sweep.seed == 3 and sweep.sampler == "tpe" and sweep.trials == 16, name


def test_yaml_and_json_files_declare_the_same_sweep(tmp_path):
    obj = {"trials": 4, "sampler": "random", "models": {"mf": {"space": {"dim": {"choices": [4, 8]},
                                                                          "lr": {"low": 0.001, "high": 0.01,
                                                                                 "log": True}}}}}
    (tmp_path / "s.json").write_text(json.dumps(obj))
    (tmp_path / "s.yaml").write_text("trials: 4\nsampler: random\nmodels:\n  mf:\n    space:\n"
                                     "      dim: {choices: [4, 8]}\n      lr: {low: 0.001, high: 0.01, log: true}\n")
    assert parse_sweep(load_sweep_file(tmp_path / "s.json")) == parse_sweep(load_sweep_file(tmp_path / "s.yaml"))
    (tmp_path / "bad.yaml").write_text("trials: 4\nmodels: {mf: [\n")
    with pytest.raises(RecsysError, match=r"bad.yaml, line \d+: not a valid sweep file"):
        load_sweep_file(tmp_path / "bad.yaml")
    with pytest.raises(RecsysError, match="cannot read the sweep file"):
        load_sweep_file(tmp_path / "missing.json")


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe"])
def test_same_seed_same_trials_other_seed_other_trials(sampler):
    space = {**MF_SPACE, "lr": {"low": 0.001, "high": 0.009, "step": 0.002}, "l2": {"choices": [0.0, 0.05]}}

    def asked(seed):
        study, params = _study(sampler, seed, trials=8, space=space), []
        while trial_round := study.next_round():
            for trial in trial_round:  # outcomes that depend on the options only, told in trial order
                valid = trial.params["dim"] * 0.01 + trial.params["lr"]
                study.tell(trial, _fake_outcome(trial, valid, valid))
                params.append(json.dumps(trial.params, sort_keys=True))
        return params

    first = asked(0)
    assert first == asked(0) and len(first) == 8
    assert first != asked(1)
    if sampler == "grid":
        assert len(set(first)) == len(first)  # a grid visits each point once


def test_a_grid_is_walked_to_its_last_point():
    """Telling the grid's last point ends the sweep quietly (Optuna's GridSampler calls study.stop() there,
    which raises outside study.optimize), whatever that trial's state; the budget is capped at the grid."""
    for last in (COMPLETE, FAILED, PRUNED):
        study = _study("grid", trials=10, batch=2, space={"dim": {"choices": [4, 8, 16]}})
        seen = []
        while trial_round := study.next_round():
            for trial in trial_round:
                state = last if len(seen) == 2 else COMPLETE
                study.tell(trial, _fake_outcome(trial, 1.0 - len(seen) * 0.1, 1.0, state=state))
                seen.append(trial.params["dim"])
        assert sorted(seen) == [4, 8, 16] and study.done
        assert study.best().number == (2 if last == COMPLETE else 1)


def test_selection_reads_valid_only_and_skips_pruned_and_failed():
    study = _study("random", trials=4, batch=4)
    trials = study.next_round()
    study.tell(trials[0], _fake_outcome(trials[0], valid=0.90, test=0.99))
    study.tell(trials[1], _fake_outcome(trials[1], valid=0.95, test=0.80))  # best on test: never chosen for it
    study.tell(trials[2], _fake_outcome(trials[2], valid=0.85, test=0.85, state=PRUNED))
    study.tell(trials[3], {"state": FAILED, "error": "diverged"})
    assert study.best().number == 0
    rows = study.rows("N3M")
    assert [r["state"] for r in rows] == [COMPLETE, COMPLETE, PRUNED, FAILED]
    assert [r["chosen"] for r in rows] == [True, False, False, False]
    assert rows[3]["error"] == "diverged" and rows[0]["test_rmse"] == 0.99


def test_median_rule():
    assert median_rule([[1.0, 0.9]], Pruning(startup_trials=2, warmup_epochs=0), False) is None
    rule = median_rule([[1.0, 0.9, 0.8], [1.2, 1.0, 0.9], [1.1, 1.1]], Pruning(2, 1), higher_is_better=False)
    assert rule.medians == pytest.approx((1.1, 1.0, 0.85))
    assert MedianRule.from_dict(json.loads(json.dumps(rule.as_dict()))) == rule
    on_epoch = rule.callback()
    assert not on_epoch(1, 5.0)          # within the warm-up: never pruned
    assert not on_epoch(2, 0.95)         # best so far 0.95 <= median 1.0
    assert on_epoch(3, 0.99)             # best so far 0.95 > median 0.85
    higher = MedianRule((0.5, 0.5), 0, higher_is_better=True).callback()
    assert not higher(1, 0.6) and not higher(2, 0.4)  # best so far 0.6 stays above the median


def test_a_pruned_trial_is_an_ordinary_run_folder(tmp_path):
    torch.set_num_threads(2)
    split = make_rating_split(tmp_path / "N3M", n_users=120, n_items=40, n_ratings=3000)
    rule = MedianRule((0.1, 0.1, 0.1, 0.1), warmup_epochs=1, higher_is_better=False)  # nothing reaches 0.1
    metrics = train(split.path, tmp_path / "run", "mf", {"epochs": 4, "patience": 0, "dim": 4},
                    RunSettings(recall_users=20), on_epoch=rule.callback())
    assert metrics["training"]["pruned_at_epoch"] == 2 and metrics["training"]["epochs_done"] == 2
    outcome = read_outcome(tmp_path / "run", "rmse")
    assert outcome["state"] == PRUNED and len(outcome["curve"]) == 2 and outcome["valid"] > 0
    assert (tmp_path / "run" / "recommendations.parquet").exists()


SWEEP_SCRIPT = """
import json, sys
from recsys_core.sweep import sweep
result = sweep(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], threads=1)
prefect = sorted({name.split(".")[0] for name in sys.modules} & {"prefect", "prefect_dask"})
print(json.dumps({"rows": result.rows, "chosen": result.chosen, "prefect": prefect}))
"""


@pytest.mark.slow  # two child processes that import torch and train the trials: 9.5 s in a fresh-clone CI run
def test_a_sweep_runs_from_the_library_alone(tmp_path):
    """``recsys_core.sweep.sweep`` with no Prefect imported: rounds of trials trained in run folders, one chosen on
    valid, the table, plot and chosen.json written; run again, the same trials are read back from their folders
    (nothing trains: every run folder keeps its metrics.json)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    make_rating_split(tmp_path / "matrices" / "N3M", n_users=120, n_items=40, n_ratings=3000)
    obj = {"trials": 4, "batch": 2, "sampler": "random", "seed": 1, "prune": False,
           "models": {"mf": {"space": {"dim": {"choices": [2, 4]}, "lr": {"low": 0.005, "high": 0.05, "log": True}},
                             "fixed": {"epochs": 2, "patience": 0}}}}
    env = {**os.environ, "PYTHONPATH": str(root), "RECSYS_PROGRESS": "0"}

    def run_alone() -> dict:
        done = subprocess.run([sys.executable, "-c", SWEEP_SCRIPT, json.dumps(obj), str(tmp_path / "matrices"),
                               str(tmp_path / "sweep")], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run_alone()
    assert first["prefect"] == []
    rows = first["rows"]
    assert [r["trial"] for r in rows] == [0, 1, 2, 3] and {r["state"] for r in rows} == {COMPLETE}
    best = min(rows, key=lambda r: (r["valid"], r["trial"]))
    assert [r["chosen"] for r in rows] == [r is best for r in rows]
    assert first["chosen"] == [{"split": "N3M", "model": "mf", "trial": best["trial"],
                                "params": json.loads(best["params"]), "valid_metric": "rmse", "valid": best["valid"],
                                "run_dir": best["run_dir"]}]
    for name in ("sweep.parquet", "sweep.png", "chosen.json"):
        assert (tmp_path / "sweep" / name).exists(), name
    folders = {r["run_dir"] for r in rows}
    assert len(folders) == 4 and all(Path(f).parent == tmp_path / "sweep" / "runs" / "N3M" for f in folders)
    written = {f: (Path(f) / "metrics.json").stat().st_mtime_ns for f in folders}

    from recsys_core.sweep import sweep

    again = sweep(obj, tmp_path / "matrices", tmp_path / "sweep", threads=1)  # in this process: no second start-up
    assert [(r["params"], r["valid"]) for r in again.rows] == [(r["params"], r["valid"]) for r in rows]
    assert {f: (Path(f) / "metrics.json").stat().st_mtime_ns for f in folders} == written


def test_a_run_setting_among_a_sweep_files_fixed_options_is_moved_with_a_deprecation_line():
    """Sweep files written before RunSettings (``fixed: {recall_users: 50}``) keep working for one release: the
    setting leaves the options (which would refuse it) and applies to every trial's run settings."""
    obj = {"models": {"mf": {"space": {"dim": {"choices": [4, 8]}}, "fixed": {"epochs": 2, "recall_users": 50}}}}
    with pytest.warns(FutureWarning, match="recall_users in the sweep's fixed options of mf is deprecated"):
        spec = parse_sweep(obj)
    mf = spec.models["mf"]
    assert mf.fixed == {"epochs": 2} and mf.run_settings == {"recall_users": 50}
    assert mf.settings(RunSettings(k=5)) == RunSettings(k=5, recall_users=50)
    assert mf.as_dict()["run_settings"] == {"recall_users": 50}
    plain = parse_sweep({"models": {"mf": {"space": {"dim": {"choices": [4, 8]}}, "fixed": {"epochs": 2}}}})
    assert "run_settings" not in plain.models["mf"].as_dict()  # a sweep without one keeps its identity
