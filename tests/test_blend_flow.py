"""The flow trains a blend after its members, on the members of the same flow."""

from __future__ import annotations

import pytest

from tests.flow_support import sandbox_fixture, statuses  # noqa: F401 (the sandbox fixture)

# a whole flow run (36 s of the fast lane's 210 s on the quiet machine): slow, as the other flow modules
pytestmark = pytest.mark.slow


def test_flow_trains_the_blend_after_its_members(sandbox, tmp_path):
    from flows.full import full_pipeline

    options = {"mf": {"epochs": 2, "patience": 0}, "knn-item": {"neighbours": 20}, "blend": {}}
    report = full_pipeline(data_dir=str(tmp_path / "data"), sample_scale=0.002, splits=["N3M"],
                           models=["blend", "mf", "knn-item"], model_options=options)
    trained = [s["stage"] for s in report["stages"] if s["stage"].startswith("train")]
    assert trained == ["train N3M/mf", "train N3M/knn-item", "train N3M/blend"]
    assert set(statuses(report).values()) == {"built"}
    rows = {r["model"]: r for r in report["metrics"] if r["split"] == "N3M"}
    assert {"mf", "knn-item", "blend"} <= set(rows)


def test_a_blend_without_rating_members_is_refused_before_the_first_stage(sandbox, tmp_path, capsys):
    from flows.full import main

    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "--models", "ease", "blend"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("error: blend blends the other rating models of the flow, and models names none; add some "
                   "(e.g. mf knn-item svdpp) or name its members in model_options")
    assert not data.exists()
