"""The registry: champion pointer, append-only history, verified runs, rollback, atomicity under writers."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from recsys_core.cli import main as cli_main
from recsys_core.errors import RecsysError
from recsys_core.registry import HISTORY, POINTER, Registry, verify_run

ROOT = Path(__file__).resolve().parents[1]


def fake_run(folder: Path, rmse: float = 0.9, manifest: bool = True) -> Path:
    """A run folder with the files the registry checks (the registry never loads the weights)."""
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(f"weights {folder.name}".encode())
    (folder / "config.json").write_text(json.dumps({"model": "mf", "split_dir": str(folder / "no-split")}))
    (folder / "metrics.json").write_text(json.dumps({"valid": {"rmse": rmse + 0.01}, "test": {"rmse": rmse}}))
    if manifest:
        files = [{"path": p.name, "size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                 for p in sorted(folder.iterdir())]
        made_from = {"inputs": {"matrices": "data-key-1"}, "code": {"source_sha256": "code-key-1"}}
        (folder / "manifest.json").write_text(json.dumps({"stage": "train", "key": "run-key-1", "files": files,
                                                          "made_from": made_from}))
    return folder


def test_promote_records_pointer_and_history(tmp_path):
    registry = Registry(tmp_path / "registry")
    first, second = fake_run(tmp_path / "a", 0.95), fake_run(tmp_path / "b", 0.90, manifest=False)
    registry.promote("netflix-N3M", first, "first")
    event = registry.promote("netflix-N3M", second, "better")
    assert event.version == 2 and event.previous_version == 1
    pointer = registry.champion("netflix-N3M")
    assert pointer.version == 2 and pointer.run_dir == str(second.resolve())
    assert pointer.primary_metric == "rmse" and pointer.run.metrics["test"]["rmse"] == 0.90
    history = registry.history("netflix-N3M")
    assert [(e.event, e.version) for e in history] == [("promoted", 1), ("promoted", 2)]
    # content keys: from the flow's manifest, else hashed from the split folder (gone here) / unknown
    assert (history[0].run.data_key, history[0].run.code_key) == ("data-key-1", "code-key-1")
    assert history[1].run.code_key is None and history[0].run.model_sha256 != history[1].run.model_sha256
    assert registry.names() == ["netflix-N3M"]


def test_rollback_walks_back_the_champion_chain(tmp_path):
    registry = Registry(tmp_path / "registry")
    runs = [fake_run(tmp_path / name) for name in ("a", "b", "c")]
    for run in runs:
        registry.promote("m", run, "x")
    assert registry.rollback("m").version == 2
    assert registry.rollback("m").version == 1
    assert registry.champion("m").run_dir == str(runs[0].resolve())
    with pytest.raises(RecsysError, match="no earlier champion"):
        registry.rollback("m")
    assert registry.rollback("m", to_version=3).version == 3   # forward again to a version rolled past
    assert registry.chain("m") == [1, 3]
    with pytest.raises(RecsysError, match="has no version 7"):
        registry.rollback("m", to_version=7)
    events = [e.event for e in registry.history("m")]
    assert events == ["promoted"] * 3 + ["rolled_back"] * 3


def test_damaged_or_unfinished_runs_are_refused(tmp_path, capsys):
    registry = Registry(tmp_path / "registry")
    run = fake_run(tmp_path / "a")
    registry.promote("m", run, "x")
    (run / "model.pt").write_bytes(b"tampered")
    with pytest.raises(RecsysError, match="model.pt: changed since the run's manifest"):
        verify_run(run)
    with pytest.raises(RecsysError, match="cannot roll back|changed since"):
        registry.promote("m", run, "again")
    unfinished = tmp_path / "b"
    unfinished.mkdir()
    code = cli_main(["registry", "--registry", str(tmp_path / "registry"), "promote", "m", str(unfinished)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "missing model.pt, config.json, metrics.json" in err
    assert "\n" not in err
    assert registry.champion("m").version == 1 and len(registry.history("m")) == 1
    with pytest.raises(RecsysError, match="registry model name"):
        registry.promote("../escape", run, "x")


def test_cli_ls_show_promote_rollback(tmp_path, capsys):
    root = str(tmp_path / "registry")
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b")
    assert cli_main(["registry", "--registry", root, "promote", "demo", str(a), "--reason", "baseline"]) == 0
    assert cli_main(["registry", "--registry", root, "promote", "demo", str(b)]) == 0
    assert cli_main(["registry", "--registry", root, "rollback", "demo"]) == 0
    capsys.readouterr()
    assert cli_main(["registry", "--registry", root, "ls", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing == [{"name": "demo", "version": 1, "model": "mf", "run_dir": str(a.resolve()),
                        "promoted_at": listing[0]["promoted_at"], "events": 3}]
    assert cli_main(["registry", "--registry", root, "show", "demo", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["reason"] for e in shown["history"]] == ["manual: baseline", "manual promotion",
                                                       "rolled back from version 2"]
    assert cli_main(["registry", "--registry", root, "show", "demo"]) == 0
    assert "champion version 1" in capsys.readouterr().out
    assert cli_main(["registry", "--registry", root, "show", "nope"]) == 2
    assert "no registry model 'nope'" in capsys.readouterr().err


def test_readers_skip_a_history_line_still_being_written(tmp_path):
    registry = Registry(tmp_path / "registry")
    registry.promote("m", fake_run(tmp_path / "a"), "x")
    with open(registry.folder("m") / HISTORY, "a") as fh:
        fh.write('{"time": "2030-01-01T00:00:00Z", "event": "prom')   # a writer mid-line
    assert [e.version for e in registry.history("m")] == [1]


WRITER = """
import sys
from recsys_core.registry import Registry
registry = Registry(sys.argv[1])
for i in range(int(sys.argv[3])):
    registry.promote("m", sys.argv[2], f"writer {sys.argv[2]} #{i}")
"""


def test_concurrent_writers_and_a_reader(tmp_path):
    """Two processes promoting at once: versions never collide, no history line is lost or torn, and a
    reader polling the pointer meanwhile always finds a complete JSON object."""
    root = tmp_path / "registry"
    runs = [fake_run(tmp_path / "a"), fake_run(tmp_path / "b")]
    per_writer = 15
    seen, errors, done = [], [], threading.Event()

    def read() -> None:
        registry = Registry(root)
        while not done.is_set():
            try:
                pointer = registry.champion("m")
            except Exception as err:  # a torn read would land here
                errors.append(repr(err))
                return
            if pointer is not None:
                seen.append(pointer.version)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(run), str(per_writer)], cwd=ROOT)
               for run in runs]
    try:
        assert [w.wait(timeout=120) for w in writers] == [0, 0]
    finally:
        done.set()
        reader.join()
    assert errors == []
    registry = Registry(root)
    versions = [e.version for e in registry.history("m")]
    assert sorted(versions) == list(range(1, 2 * per_writer + 1))
    assert registry.champion("m").version == 2 * per_writer
    assert seen and seen == sorted(seen)   # the reader saw versions only move forward
    assert not [p for p in registry.folder("m").iterdir() if ".tmp-" in p.name]
    assert (registry.folder("m") / POINTER).is_file()


def test_the_cli_does_not_import_the_web_stack():
    """`serve` imports fastapi/uvicorn when it runs; every other command stays without them."""
    code = ("import sys; from recsys_core.cli import build_parser, main; build_parser(); "
            "main(['registry', '--registry', sys.argv[1], 'ls']); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, "/nonexistent/registry"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().endswith("[]"), out


@pytest.mark.parametrize("damage", ["[1, 2]", '{"run_dir": "x"}', '{"version": true, "run_dir": "x"}',
                                    "{not json", b"\xff\xfe", "directory", "deleted"])
def test_rollback_and_promote_rebuild_a_damaged_pointer_from_history(tmp_path, capsys, damage):
    """Whatever happened to champion.json, the history names the champion: ``rollback`` and ``promote``
    rewrite the pointer from it (recorded as a pointer_rebuilt event), no hand edit needed."""
    root = tmp_path / "registry"
    registry = Registry(root)
    runs = [fake_run(tmp_path / name) for name in ("a", "b", "c")]
    for run in runs:
        registry.promote("m", run, "x")
    registry.rollback("m")                                   # champion: version 2 (b)
    pointer = root / "m" / POINTER
    pointer.unlink()
    if damage == "directory":
        pointer.mkdir()
    elif isinstance(damage, bytes):
        pointer.write_bytes(damage)
    elif damage != "deleted":
        pointer.write_text(damage)
    if damage != "deleted":
        with pytest.raises(RecsysError, match="rebuilds it from history.jsonl"):
            registry.champion("m")
    if damage == "directory":
        pointer.rmdir()   # a folder in its place cannot be replaced by a file; the rest rebuilds itself
    assert cli_main(["registry", "--registry", str(root), "rollback", "m"]) == 0, capsys.readouterr().err
    assert registry.champion("m").version == 1 and registry.champion("m").run_dir == str(runs[0].resolve())
    events = registry.history("m")
    rebuilt = events[-2]
    assert rebuilt.event == "pointer_rebuilt" and rebuilt.version == 2 and "rolled_back" in rebuilt.reason
    assert registry.chain("m") == [1]

    (root / "m" / POINTER).write_text("[]")
    event = registry.promote("m", runs[2], "after damage")
    assert event.version == 4 and event.previous_version == 1
    assert [e.event for e in registry.history("m")][-2:] == ["pointer_rebuilt", "promoted"]


def test_a_pointer_damaged_without_any_history_says_so(tmp_path):
    registry = Registry(tmp_path / "registry")
    (tmp_path / "registry" / "m").mkdir(parents=True)
    (tmp_path / "registry" / "m" / POINTER).write_text("[1]")
    with pytest.raises(RecsysError, match="records no champion to rebuild it from"):
        registry.rollback("m")


@pytest.mark.parametrize("name", ["demo\n", "\ndemo", "de/mo", "../demo", "", ".demo", "x" * 101])
def test_names_are_matched_whole(tmp_path, name):
    registry = Registry(tmp_path / "registry")
    run = fake_run(tmp_path / "a")
    with pytest.raises(RecsysError, match="registry model name"):
        registry.promote(name, run, "x")
    assert not (tmp_path / "registry").exists() or list((tmp_path / "registry").iterdir()) == []


def test_ls_lists_every_model_when_one_pointer_is_damaged(tmp_path, capsys):
    root = tmp_path / "registry"
    registry = Registry(root)
    registry.promote("good", fake_run(tmp_path / "a"), "x")
    registry.promote("hurt", fake_run(tmp_path / "b"), "x")
    (root / "hurt" / POINTER).write_text("[1]")
    capsys.readouterr()
    assert cli_main(["registry", "--registry", str(root), "ls", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["good"]["version"] == 1 and "problem" not in rows["good"]
    assert rows["hurt"]["version"] is None and "rebuilds it from history.jsonl" in rows["hurt"]["problem"]
