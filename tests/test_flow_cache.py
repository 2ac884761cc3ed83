"""The content-keyed stage cache on its own (no Prefect run): hashes, code versions, manifests, locks
(``recsys_core.artifacts``), and the retry rule of the Prefect stage tasks."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from recsys_core.artifacts import hashing, locks
from recsys_core.artifacts.build import remove_temporaries
from recsys_core.artifacts.hashing import HashMemo
from recsys_core.artifacts.manifest import StageSpec, make_spec, verify, write_manifest
from tasks.stages import is_transient


def _spec(out_dir: Path, params: dict | None = None) -> StageSpec:
    return make_spec("demo", inputs={"x": 1}, params=params or {"p": 1}, code={"v": 1}, out_dir=out_dir)


def _build(out_dir: Path) -> None:
    (out_dir / "sub").mkdir(parents=True, exist_ok=True)
    (out_dir / "a.bin").write_bytes(b"a" * 1000)
    (out_dir / "sub" / "b.txt").write_text("hello")


def test_file_hash_is_by_content_and_memoized_by_stat(tmp_path, monkeypatch):
    memo = HashMemo(tmp_path / "memo.json")
    first, second = tmp_path / "one.txt", tmp_path / "two.txt"
    first.write_text("same content")
    second.write_text("same content")
    assert memo.file_hash(first) == memo.file_hash(second)  # content, not path
    memo.save()

    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: (reads.append(str(p)), real_open(p, *a, **k))[1])
    again = HashMemo(tmp_path / "memo.json")  # a later run: the memo on disk answers, no file is read
    assert again.file_hash(first) == memo.file_hash(first)
    assert str(first.resolve()) not in reads


def test_truncation_is_seen_even_with_the_old_mtime(tmp_path):
    memo = HashMemo(None)
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    before = memo.file_hash(path)
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.truncate(10)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the change from mtime
    assert memo.file_hash(path) != before


def test_same_size_rewrite_is_seen(tmp_path):
    memo = HashMemo(None)
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    before = memo.file_hash(path)
    st = path.stat()
    path.write_bytes(b"y" * 100)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: ctime still moves
    assert memo.file_hash(path) != before


def test_manifest_verifies_only_complete_unchanged_output(tmp_path):
    memo = HashMemo(None)
    spec = _spec(tmp_path / "out")
    assert verify(spec, memo) == "no manifest (never completed)"
    _build(spec.path)
    assert verify(spec, memo) == "no manifest (never completed)"  # outputs without manifest: incomplete
    manifest = write_manifest(spec, memo, elapsed_s=0.1)
    assert sorted(f.path for f in manifest.files) == ["a.bin", "sub/b.txt"]
    assert verify(spec, memo) is None

    other = _spec(spec.path, params={"p": 2})
    assert verify(other, memo) == "manifest of other inputs, parameters or code"

    (spec.path / "sub" / "b.txt").unlink()
    assert verify(spec, memo) == "sub/b.txt is missing"
    _build(spec.path)
    assert verify(spec, memo) is None
    with open(spec.path / "a.bin", "r+b") as fh:
        fh.truncate(10)
    assert verify(spec, memo) == "a.bin changed size"


def test_spec_key_depends_on_inputs_params_and_code(tmp_path):
    base = make_spec("s", {"i": 1}, {"p": 1}, {"c": 1}, parent=tmp_path, prefix="x")
    assert base.path.name == f"x-{base.key[:10]}"
    variants = [make_spec("s", {"i": 2}, {"p": 1}, {"c": 1}, parent=tmp_path, prefix="x"),
                make_spec("s", {"i": 1}, {"p": 2}, {"c": 1}, parent=tmp_path, prefix="x"),
                make_spec("s", {"i": 1}, {"p": 1}, {"c": 2}, parent=tmp_path, prefix="x")]
    assert len({base.key, *(v.key for v in variants)}) == 4
    assert len({base.out_dir, *(v.out_dir for v in variants)}) == 4  # never overwrite each other


def test_code_version_follows_library_imports(tmp_path, monkeypatch):
    version = hashing.code_version("recsys_core.synth")
    assert "recsys_core.synth" in version["modules"]
    assert "recsys_core.io" in version["modules"]  # imported by synth
    assert "recsys_core.cli" not in version["modules"]  # not a dependency

    # A change in a dependency (not in the stage module itself) changes the version.
    package = tmp_path / "recsys_core"
    package.mkdir()
    for name in ("__init__.py", "errors.py"):
        (package / name).write_text((Path(hashing.__file__).parents[1] / name).read_text())
    (package / "stage.py").write_text("from recsys_core.helper import f\n")
    (package / "helper.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in [m for m in list(__import__("sys").modules) if m == "recsys_core" or m.startswith("recsys_core.")]:
        monkeypatch.delitem(__import__("sys").modules, mod)
    before = hashing.code_version("recsys_core.stage")
    assert before["modules"] == ["recsys_core", "recsys_core.helper", "recsys_core.stage"]
    (package / "helper.py").write_text("def f():\n    return 2\n")
    assert hashing.code_version("recsys_core.stage")["source_sha256"] != before["source_sha256"]


def test_dead_writers_temporaries_are_removed(tmp_path):
    spec = _spec(tmp_path / "out")
    _build(spec.path)
    left = [tmp_path / ".out.tmp-12345-0123abcd", spec.path / "sub" / ".b.txt.tmp-999-89abcdef"]
    left[0].mkdir()
    left[1].write_text("partial")
    removed = remove_temporaries(spec)
    assert sorted(removed) == sorted(left)
    assert not any(p.exists() for p in left)
    assert (spec.path / "sub" / "b.txt").exists()


def _hold_lock(lock_path: str, started, trying, released) -> None:
    with locks.file_lock(Path(lock_path)):
        started.set()
        trying.wait(60)
        time.sleep(0.2)  # the other process is at (or in) its file_lock call; not a threshold: see below
        released.set()


def test_stage_lock_excludes_other_processes(tmp_path):
    """Checked by the order of events, not by the clock: the lock is taken only after its holder has said it
    releases it. (A broken lock lets it be taken at once, before that; a loaded machine only delays both.)"""
    lock = tmp_path / ".out.lock"
    context = multiprocessing.get_context("fork")
    started, trying, released = context.Event(), context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(lock), started, trying, released))
    holder.start()
    assert started.wait(60)
    trying.set()
    with locks.file_lock(lock):
        assert released.is_set(), "the lock was taken while another process held it"
    holder.join(60)
    assert holder.exitcode == 0


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (OSError(5, "Input/output error"), True),
        (TimeoutError("read timed out"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (type("OutOfMemoryError", (RuntimeError,), {})("oom"), True),
        (FileNotFoundError("gone"), False),
        (PermissionError("denied"), False),
        (__import__("recsys_core.errors", fromlist=["InputError"]).InputError("f.txt", "bad rating", 3), False),
        (ValueError("bug"), False),
    ],
)
def test_only_transient_failures_are_retried(exc, transient):
    assert is_transient(exc) is transient
