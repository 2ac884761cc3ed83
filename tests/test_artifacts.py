"""The build system as a library (``recsys_core.artifacts``), without Prefect: a real stage built, reused and
rebuilt from Python; ``recsys verify``; the one file lock; input detection in ``recsys_core.convert``."""

from __future__ import annotations

import json
import multiprocessing
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from test_convert import write_ml_csv, write_netflix

from recsys_core.artifacts import build, hashing, layout, locks, manifest
from recsys_core.cli import main as cli_main
from recsys_core.convert import convert, detect
from recsys_core.errors import RecsysError
from recsys_core.registry import Registry, verify_run

ROOT = Path(__file__).resolve().parent.parent


def _convert(data: Path, source: Path) -> tuple[manifest.StageSpec, dict]:
    memo = hashing.hash_memo(data)
    spec = layout.convert_spec(data, source, memo)
    return spec, build.build_stage(spec, memo, lambda out: convert(source, out))


def test_a_stage_is_built_verified_reused_and_rebuilt_without_prefect(tmp_path):
    source = write_ml_csv(tmp_path / "ml")
    data = tmp_path / "data"
    spec, first = _convert(data, source)
    assert first.status == "built" and first.key == spec.key
    assert spec.path.parent == data / "converted" and spec.path.name == f"ml-{spec.short_key}"
    assert manifest.verify(spec, hashing.HashMemo(None)) is None
    recorded = manifest.read_manifest(spec)
    assert recorded is not None and recorded.key == spec.key and recorded.made_from == spec.description
    assert sorted(f.path for f in recorded.files) == ["items.parquet", "meta.json", "ratings.parquet"]
    assert recorded.result["ratings"] == 4 and recorded.cache_key is None
    on_disk = json.loads((spec.path / "manifest.json").read_text())  # the JSON format, unchanged
    assert list(on_disk) == ["stage", "key", "cache_key", "created", "elapsed_s", "files", "result", "made_from"]
    assert manifest.Manifest.from_json(on_disk) == recorded

    written = (spec.path / "ratings.parquet").stat().st_mtime_ns
    again_spec, again = _convert(data, source)  # nothing changed: same key, reused, not rebuilt
    assert again_spec == spec and again.status == "reused"
    assert (spec.path / "ratings.parquet").stat().st_mtime_ns == written

    (spec.path / "meta.json").write_text("{}")  # damaged behind the cache's back: verify says so, build repairs
    assert manifest.verify(spec, hashing.HashMemo(None)) == "meta.json changed size"
    assert _convert(data, source)[1].status == "built"
    assert json.loads((spec.path / "meta.json").read_text())["ratings"] == 4

    (source / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    changed, built = _convert(data, source)  # other input content: another key, another folder
    assert changed.key != spec.key and changed.out_dir != spec.out_dir and built.status == "built"

    # the next stage's key holds the verified output's hashes (from its manifest)
    split = layout.split_spec(data, changed, hashing.HashMemo(None), "random", {"seed": 0})
    assert split.description["inputs"]["converted"] == hashing.digest(
        manifest.output_hashes(changed, hashing.HashMemo(None)))


def test_a_damaged_manifest_counts_as_none_and_is_named(tmp_path):
    data = tmp_path / "data"
    spec, _ = _convert(data, write_ml_csv(tmp_path / "ml"))
    (spec.path / "manifest.json").write_text('{"stage": "convert", "files": []}')
    assert manifest.verify(spec, hashing.HashMemo(None)) == "no manifest (never completed)"
    [check] = manifest.verify_tree(data, hashing.HashMemo(None))
    assert check.folder == spec.path and check.problem == "manifest.json: not a manifest (no key, made_from)"
    for text, problem in (("[1]", "not a manifest (a JSON list, not an object)"), ("{", "not valid JSON")):
        (spec.path / "manifest.json").write_text(text)
        for name in ("model.pt", "config.json", "metrics.json"):  # what the registry asks of a run folder
            (spec.path / name).write_text("{}")
        with pytest.raises(RecsysError, match=f"manifest.json: {re.escape(problem)}; the run folder is damaged"):
            verify_run(spec.path)


def test_the_library_imports_no_prefect():
    code = ("import sys; import recsys_core.artifacts.build, recsys_core.artifacts.layout, recsys_core.registry, "
            "recsys_core.cli.verify; assert not [m for m in sys.modules if m.split('.')[0] == 'prefect'], 'prefect'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_recsys_verify_names_the_damaged_folder(tmp_path, capsys):
    source = write_ml_csv(tmp_path / "ml")
    data = tmp_path / "data"
    spec, _ = _convert(data, source)
    assert cli_main(["verify", str(data)]) == 0
    assert f"ok       convert   {spec.out_dir}" in capsys.readouterr().out

    (spec.path / "ratings.parquet").unlink()
    assert cli_main(["verify", str(data)]) == 2
    captured = capsys.readouterr()
    assert f"DAMAGED  convert   {spec.out_dir}: ratings.parquet is missing" in captured.out
    assert "1 of 1 stage folders under" in captured.err
    assert cli_main(["verify", str(source)]) == 2
    assert "holds no stage folder" in capsys.readouterr().err


def test_build_system_source_is_not_part_of_any_stage_code_version():
    modules = hashing.code_version("recsys_core.synth")["modules"]
    assert "recsys_core.io" in modules  # imports recsys_core.artifacts.locks ...
    assert not [m for m in modules if m.startswith(hashing.BUILD_SYSTEM)]  # ... which is not stage code


# --------------------------------------------------------------------------- input detection (once, in convert)


def test_detect_names_the_files_a_conversion_reads(tmp_path):
    netflix = write_netflix(tmp_path / "nf")
    titles = netflix / "movie_titles.txt"
    assert detect(netflix).reads == [netflix / "training_set", titles]
    assert detect(netflix / "training_set").reads == [netflix / "training_set", titles]
    with tarfile.open(tmp_path / "nf" / "training_set.tar", "w") as archive:
        archive.add(netflix / "training_set", arcname="training_set")
    assert detect(netflix / "training_set.tar").reads == [netflix / "training_set.tar", titles]
    movielens = write_ml_csv(tmp_path / "ml")
    assert detect(movielens).reads == [movielens] and detect(movielens).movielens is not None
    with pytest.raises(RecsysError, match="is not a recognised data set"):
        detect(tmp_path)
    with pytest.raises(RecsysError, match="does not exist"):
        detect(tmp_path / "missing")


def test_the_convert_key_changes_with_the_titles_beside_a_movie_folder(tmp_path):
    netflix = write_netflix(tmp_path / "nf")
    folder = netflix / "training_set"
    movies = folder.rename(tmp_path / "nf" / "movies")  # mv_*.txt in a folder of another name
    before = layout.convert_spec(tmp_path / "data", movies, hashing.HashMemo(None))
    (netflix / "movie_titles.txt").write_bytes((netflix / "movie_titles.txt").read_bytes() + b"\n")
    after = layout.convert_spec(tmp_path / "data", movies, hashing.HashMemo(None))
    assert before.key != after.key


# --------------------------------------------------------------------------- the one file lock


def _hold(lock_path: str, holding, release) -> None:
    with locks.file_lock(lock_path):
        holding.set()
        release.wait(60)


def test_one_lock_for_stage_writers_registry_writers_and_liveness(tmp_path):
    """A lock held by another process: ``file_lock`` with a timeout gives up with one sentence (the registry's
    lock is this lock), ``try_lock`` does not get it; once released, both do."""
    context = multiprocessing.get_context("fork")
    holding, release = context.Event(), context.Event()
    lock = tmp_path / "model" / ".lock"
    holder = context.Process(target=_hold, args=(str(lock), holding, release))
    holder.start()
    try:
        assert holding.wait(60)
        with pytest.raises(locks.LockTimeout, match=r"\.lock: another writer has held the registry lock for 0 s"):
            with Registry(tmp_path).lock("model", timeout=0.1):
                pass
        assert locks.try_lock(lock) is None
    finally:
        release.set()
        holder.join(60)
    assert holder.exitcode == 0
    fd = locks.try_lock(lock)
    assert fd is not None
    locks.unlock(fd)
    with locks.file_lock(lock, timeout=0.1):
        pass
