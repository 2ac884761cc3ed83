"""recsys_core.io: atomic writes, the one-step folder swap, and the leftovers of writers killed for real
(SIGKILL) - removed by the next writer when the writer is dead, never while it lives."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from recsys_core import io
from recsys_core.io import atomic_dir, atomic_file, clean_leftovers


def _folder(path, text):
    path.mkdir(parents=True, exist_ok=True)
    (path / "part").write_text(text)


def _content(path):
    return (path / "part").read_text()


def _leftovers(dest):
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}."))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _run_killed(script: str, dest) -> None:
    """Run ``script`` (with ``dest`` bound) in a fresh interpreter that kills itself with SIGKILL."""
    code = "import os, signal, sys\nfrom pathlib import Path\nfrom recsys_core import io\n" \
           f"dest = Path({str(dest)!r})\n" + textwrap.dedent(script)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_atomic_dir_replaces_a_folder_and_leaves_nothing_beside_it(tmp_path):
    dest = tmp_path / "out"
    for text in ("one", "two"):
        with atomic_dir(dest) as tmp:
            _folder(tmp, text)
        assert _content(dest) == text
    with pytest.raises(RuntimeError), atomic_dir(dest) as tmp:
        _folder(tmp, "three")
        raise RuntimeError("the stage failed")
    assert _content(dest) == "two"
    assert _leftovers(dest) == []


def test_atomic_file_replaces_and_a_failure_keeps_the_old_file(tmp_path):
    dest = tmp_path / "a.json"
    io.write_json(dest, {"v": 1})
    with pytest.raises(RuntimeError), atomic_file(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert io.read_json(dest) == {"v": 1}
    assert _leftovers(dest) == []


@pytest.mark.skipif(io._RENAMEAT2 is None, reason="no renameat2 on this system")
def test_the_folder_swap_is_one_step_a_reader_never_finds_it_missing(tmp_path):
    """A reader in another process stats the folder in a tight loop while it is replaced 300 times."""
    dest = tmp_path / "out"
    with atomic_dir(dest) as tmp:
        _folder(tmp, "0")
    code = textwrap.dedent(f"""
        import os, sys, threading
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        print("reading", flush=True)
        missing = looks = 0
        while not done.is_set():
            looks += 1
            if not os.path.exists({str(dest / "part")!r}):
                missing += 1
        print(missing, looks)
    """)
    reader = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert reader.stdout.readline().strip() == "reading"
    for i in range(1, 301):
        with atomic_dir(dest) as tmp:
            _folder(tmp, str(i))
    missing, looks = map(int, reader.communicate("", timeout=60)[0].split())
    assert looks > 1000 and missing == 0
    assert _content(dest) == "300"


def test_killed_between_moving_aside_and_renaming_in_the_next_run_restores_the_old_folder(tmp_path):
    """Without RENAME_EXCHANGE the swap is two renames; a SIGKILL between them leaves no folder at dest
    but the old one aside, which the next writer (even a failing one) moves back first."""
    dest = tmp_path / "out"
    with atomic_dir(dest) as tmp:
        _folder(tmp, "old")
    _run_killed("""
        io._exchange = lambda a, b: False       # a system without RENAME_EXCHANGE
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if ".old-" in str(dst):             # the old folder is aside, the new one not yet in place
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        with io.atomic_dir(dest) as tmp:
            (tmp / "part").write_text("new")
    """, dest)
    assert not dest.exists()
    assert [name.split("-")[0] for name in _leftovers(dest)] == [".out.old", ".out.tmp"]
    with pytest.raises(RuntimeError), atomic_dir(dest):
        assert _content(dest) == "old"          # restored before the new writer even starts
        raise RuntimeError("this run fails too")
    assert _content(dest) == "old"
    assert _leftovers(dest) == []


def test_killed_right_after_the_exchange_the_old_folder_is_removed_by_the_next_run(tmp_path):
    dest = tmp_path / "out"
    with atomic_dir(dest) as tmp:
        _folder(tmp, "old")
    _run_killed("""
        io._remove = lambda path: os.kill(os.getpid(), signal.SIGKILL)
        with io.atomic_dir(dest) as tmp:
            (tmp / "part").write_text("new")
    """, dest)
    assert _content(dest) == ("new" if io._RENAMEAT2 is not None else "old")
    assert len(_leftovers(dest)) == 1
    assert clean_leftovers(dest) and _leftovers(dest) == []
    assert _content(dest) == ("new" if io._RENAMEAT2 is not None else "old")


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_a_writer_killed_mid_write_leaves_a_temporary_the_next_run_removes(tmp_path, kind):
    dest = tmp_path / ("out" if kind == "dir" else "out.parquet")
    writer = "atomic_dir" if kind == "dir" else "atomic_file"
    _run_killed(f"""
        with io.{writer}(dest) as tmp:
            (tmp / "part" if tmp.is_dir() else tmp).write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """, dest)
    assert len(_leftovers(dest)) == 1 and not dest.exists()
    with (atomic_dir if kind == "dir" else atomic_file)(dest):
        assert len(_leftovers(dest)) == 1      # only this writer's own temporary
    assert _leftovers(dest) == []


def test_a_live_writers_temporary_is_never_removed(tmp_path):
    dest = tmp_path / "out"
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from recsys_core.io import atomic_dir
        with atomic_dir(Path({str(dest)!r})) as tmp:
            (tmp / "part").write_text("slow writer")
            print("writing", flush=True)
            sys.stdin.readline()                 # works until told to finish
    """)
    slow = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert slow.stdout.readline().strip() == "writing"
        with atomic_dir(dest) as tmp:            # a concurrent writer finishes first
            _folder(tmp, "fast writer")
        assert len(_leftovers(dest)) == 1        # the slow writer's temporary is still there
        slow.stdin.write("\n")
        slow.stdin.flush()
        assert slow.wait(timeout=60) == 0
    finally:
        if slow.poll() is None:
            slow.kill()
    assert _content(dest) == "slow writer" and _leftovers(dest) == []


def test_a_temporary_locked_by_a_live_writer_stays_even_when_its_pid_is_gone_here(tmp_path):
    """A writer on another host sharing the folder: its pid means nothing here, its lock does."""
    dest = tmp_path / "out"
    other = tmp_path / f".out.tmp-{_dead_pid()}-0123abcd"
    _folder(other, "remote writer")
    fd = os.open(other, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert clean_leftovers(dest) == [] and other.exists()
    finally:
        os.close(fd)
    assert clean_leftovers(dest) == [other] and not other.exists()


def test_leftovers_of_the_old_naming_and_other_names_are_handled(tmp_path):
    dest = tmp_path / "out"
    dead = tmp_path / f".out.tmp-{_dead_pid()}-89abcdef"  # written before writers took locks
    dead.write_text("x")
    unrelated = [tmp_path / ".out.tmp-notapid-12345678", tmp_path / ".outer.tmp-1-12345678", tmp_path / "out.tmp"]
    for path in unrelated:
        path.write_text("keep")
    assert clean_leftovers(dest) == [dead]
    assert all(path.exists() for path in unrelated)
