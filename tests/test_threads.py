"""Thread counts are chosen (recsys_core.threads): the cores this process really has (affinity, cgroup
quota), shared by the trainings running at once; the choice is logged and recorded in metrics.json."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from train_fixtures import make_rating_split

from recsys_core.cli import main
from recsys_core.errors import RecsysError
from recsys_core.settings import RunSettings
from recsys_core.threads import ENV, available_cores, cgroup_cpu_limit, decide_threads
from recsys_core.train import train
from tests.flow_support import ROOT

MF = dict(epochs=2, patience=0, dim=4)
ONE_THREAD = RunSettings(threads=1, recall_users=20)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return make_rating_split(tmp_path_factory.mktemp("small") / "N3M", n_users=120, n_items=40, n_ratings=3000)


def test_cgroup_v2_and_v1_quotas_are_read(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2) == 1.5
    assert available_cores(v2) == min(2, len(os.sched_getaffinity(0)))  # 1.5 CPUs: 2 threads can be busy
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 1.0
    assert available_cores(v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no quota"
    assert cgroup_cpu_limit(v1) is None
    assert cgroup_cpu_limit(tmp_path / "none") is None


def quiet(cores):
    return float(cores)


def test_the_decision(tmp_path):
    none = tmp_path / "no-cgroup"
    cores = len(os.sched_getaffinity(0))
    assert decide_threads(environ={}, root=none, free=quiet).threads == cores
    assert decide_threads(concurrent=cores * 4, environ={}, root=none).threads == 1  # never below one
    assert decide_threads(concurrent=2, environ={}, root=none, free=quiet).threads == max(1, cores // 2)
    assert decide_threads(3, environ={ENV: "5"}, root=none).threads == 3  # an explicit request wins
    chosen = decide_threads(environ={ENV: "5"}, root=none)
    assert chosen.threads == 5 and ENV in chosen.reason
    assert decide_threads(0, environ={}, root=none, free=quiet).threads == cores  # 0 = choose
    chosen = decide_threads(environ={}, root=none, resumed=3, free=quiet)  # a resumed run keeps its threads
    assert chosen.threads == 3 and "as the run it resumes" in chosen.reason
    assert decide_threads(2, environ={}, root=none, resumed=3).threads == 2  # unless asked otherwise
    assert decide_threads(environ={ENV: "5"}, root=none, resumed=3).threads == 3  # the machine's setting does not
    for bad in (-1, 1.5, True):
        with pytest.raises(RecsysError, match="threads must be"):
            decide_threads(bad, environ={}, root=none)
    with pytest.raises(RecsysError, match=f"{ENV} must be a positive integer"):
        decide_threads(environ={ENV: "many"}, root=none)


def test_the_processes_of_one_training_share_its_count(tmp_path):
    """Spawned (nproc) or started by torchrun, the processes of one training on a host share one count:
    the same request gives each the same threads, whatever launched them (issue 24)."""
    none = tmp_path / "no-cgroup"
    cores = len(os.sched_getaffinity(0))
    for env, requested, expected in (({ENV: "2"}, None, 1), ({ENV: "5"}, None, 2), ({}, 4, 2), ({}, 1, 1)):
        chosen = decide_threads(requested, environ=env, root=none, processes=2, free=quiet)
        assert (chosen.threads, chosen.processes) == (expected, 2), (env, requested)
        assert "shared by 2 processes" in chosen.reason or expected == requested
    assert decide_threads(environ={}, root=none, processes=2, free=quiet).threads == max(1, cores // 2)
    # a resumed run's count is per process already: taken as it is
    assert decide_threads(environ={ENV: "2"}, root=none, processes=2, resumed=2).threads == 2


def test_cores_busy_with_other_work_are_left_to_it(tmp_path, monkeypatch):
    """Fewer threads than cores when others' work holds some of them (OpenMP barriers stall on a shared core)."""
    none = tmp_path / "no-cgroup"
    monkeypatch.setattr("recsys_core.threads.available_cores", lambda root: 4)
    for free, expected in ((4.0, 4), (3.8, 4), (3.2, 3), (2.8, 3), (2.6, 2), (1.5, 1), (1.33, 1), (0.4, 1)):
        chosen = decide_threads(environ={}, root=none, free=lambda cores, f=free: f)
        assert chosen.threads == expected, (free, chosen)
        assert ("free now" in chosen.reason) == (expected < 4)
    # two trainings at once share the cores first; a busy core lowers that share only where it must
    assert decide_threads(concurrent=2, environ={}, root=none, free=lambda cores: 3.2).threads == 2
    assert decide_threads(concurrent=2, environ={}, root=none, free=lambda cores: 1.33).threads == 1


def test_a_process_spinning_on_one_of_two_cores_leaves_one_thread():
    """The real measurement: two cores of this machine, another process spinning on one of them."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    pair = sorted(os.sched_getaffinity(0))[:2]
    busy = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{pair[1]}}})\nwhile 1: pass"])
    try:
        code = (f"import os; os.sched_setaffinity(0, {set(pair)}); "
                "from recsys_core.threads import decide_threads as d; c = d(); print(c.threads, '|', c.reason)")
        env = {k: v for k, v in os.environ.items() if k != ENV}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True, timeout=120)
    finally:
        busy.kill()
        busy.wait()
    threads, reason = out.stdout.strip().split(" | ")
    assert threads == "1" and "busy with other work" in reason, out.stdout


def test_affinity_of_the_process_is_what_counts():
    """A process pinned to one core gets one thread, whatever /proc says about the machine."""
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from recsys_core.threads import decide_threads; print(decide_threads().threads)")
    env = {k: v for k, v in os.environ.items() if k != ENV}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "1"


def test_train_logs_and_records_the_threads(split, tmp_path, caplog):
    import torch

    with caplog.at_level(logging.INFO, logger="recsys_core"):
        metrics = train(split.path, tmp_path / "run", "mf", MF, ONE_THREAD)
    assert torch.get_num_threads() == 1
    assert "1 torch thread (asked for" in caplog.text
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["training"]
    assert saved["threads"] == metrics["training"]["threads"] == 1
    assert saved["cores_available"] == available_cores()
    # the command line: --threads reaches the same decision
    assert main(["train", str(split.path), str(tmp_path / "cli"), "--model", "mf", "--threads", "2",
                 "--epochs", "1", "--dim", "4", "--recall-users", "20"]) == 0
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["training"]["threads"] == 2
    assert main(["train", str(split.path), str(tmp_path / "bad"), "--model", "mf", "--threads", "-2"]) == 2
    assert not (tmp_path / "bad").exists()
    torch.set_num_threads(2)


def test_a_resumed_run_keeps_the_threads_of_the_run_it_continues(split, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    run = tmp_path / "run"
    train(split.path, run, "mf", MF, ONE_THREAD)
    assert json.loads((run / "config.json").read_text())["threads"] == 1
    metrics = train(split.path, run, "mf", {"epochs": 3}, RunSettings(resume=True))
    assert metrics["training"]["threads"] == 1 and "as the run it resumes" in metrics["training"]["threads_reason"]
    import torch

    torch.set_num_threads(2)
