"""Content hashes: of files (memoized), of parameters (canonical JSON) and of the library code a stage runs.

* A file's sha256 is memoized by its stat signature (size, mtime_ns, ctime_ns, inode) the way git's index
  does, in one JSON file per data dir (``hash_memo``), so a second run only stats files; a truncated or
  rewritten file changes the signature (ctime moves even when mtime is forged) and is read again.
* ``digest`` hashes the canonical JSON of parameters.
* ``code_version`` hashes the source of every ``recsys_core`` module a stage imports (followed transitively)
  and the versions of the third-party libraries that shape its bytes (polars, pyarrow, numpy, scipy, torch).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterable

from recsys_core.artifacts.locks import file_lock
from recsys_core.io import atomic_file
from recsys_core.progress import progress_bar

_LIBRARIES = ("numpy", "scipy", "polars", "pyarrow", "torch")
_CHUNK = 1 << 20
_BAR_MB = 256  # sources above this size show a hashing progress bar
# The build system itself: its source decides how keys are computed and checked, never what a stage writes, so
# it is not part of any stage's code version (else any edit here would rebuild every data set; a change in how
# keys are computed changes the keys by itself).
BUILD_SYSTEM = "recsys_core.artifacts"


# --------------------------------------------------------------------------- file hashes


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (not memoized: see ``HashMemo``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class HashMemo:
    """sha256 of files, memoized on disk by stat signature (one JSON file per data dir)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._entries: dict[str, list] = {}
        self._dirty = False
        self._mutex = threading.Lock()
        if path is not None and path.exists():
            try:
                self._entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self._entries = {}  # a damaged memo only costs re-hashing

    def file_hash(self, path: Path) -> str:
        path = Path(path).resolve()
        st = path.stat()
        signature = _stat_signature(st)
        key = str(path)
        with self._mutex:
            entry = self._entries.get(key)
        if entry is not None and entry[:4] == signature:
            return entry[4]
        sha256 = file_sha256(path)
        # A file modified while being hashed gets a new signature: do not memoize that hash.
        if _stat_signature(path.stat()) != signature:
            return sha256
        with self._mutex:
            self._entries[key] = signature + [sha256]
            self._dirty = True
        return sha256

    def save(self) -> None:
        """Merge into the on-disk memo (other runs may have added entries) and write atomically."""
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            merged: dict[str, list] = {}
            if self.path.exists():
                with contextlib.suppress(OSError, ValueError):
                    merged = json.loads(self.path.read_text())
            with self._mutex:
                merged.update(self._entries)
                self._dirty = False
            # Forget files that no longer exist so the memo does not grow forever.
            merged = {p: e for p, e in merged.items() if os.path.exists(p)}
            with atomic_file(self.path) as tmp:
                tmp.write_text(json.dumps(merged))


_MEMOS: dict[str, HashMemo] = {}
_MEMOS_MUTEX = threading.Lock()


def hash_memo(data_dir: str | Path) -> HashMemo:
    """The process-wide memo of one data dir."""
    path = Path(data_dir).resolve() / ".cache" / "file-hashes.json"
    with _MEMOS_MUTEX:
        if str(path) not in _MEMOS:
            _MEMOS[str(path)] = HashMemo(path)
        return _MEMOS[str(path)]


def _is_temporary(name: str) -> bool:
    return name.startswith(".") or name.endswith(".lock")


def list_files(root: Path, skip_names: Iterable[str] = ()) -> list[Path]:
    """Regular files under ``root`` (a file or folder), sorted, skipping hidden names, temporaries, lock files
    and the names in ``skip_names``."""
    root = Path(root)
    if root.is_file():
        return [root]
    skip = set(skip_names)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _is_temporary(d))
        for name in sorted(filenames):
            if not _is_temporary(name) and name not in skip:
                found.append(Path(dirpath) / name)
    return found


def tree_hashes(root: Path, memo: HashMemo, skip_names: Iterable[str] = ()) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (``list_files``; a progress bar when there is
    much to read)."""
    root = Path(root)
    base = root.parent if root.is_file() else root
    files = list_files(root, skip_names)
    sizes = [p.stat().st_size for p in files]
    total_mb = sum(sizes) / 1e6
    hashes = {}
    # Memoized files cost a stat; the bar only matters for a first read of a big source (Netflix: 2 GB).
    big = total_mb > _BAR_MB
    with progress_bar(f"hashing {root.name}", total_mb, "MB") if big else contextlib.nullcontext() as bar:
        for path, size in zip(files, sizes):
            hashes[path.relative_to(base).as_posix()] = memo.file_hash(path)
            if bar is not None:
                bar.advance(size / 1e6)
    return hashes


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- code versions


def _module_file(name: str) -> Path | None:
    """The source file of a module, found on disk: ``find_spec`` of ``a.b.c`` would import ``a.b`` (and
    with it torch, polars, ...), which made an all-cached run pay ~1.5 s of imports it never uses."""
    top, _, rest = name.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    path = Path(spec.origin).parent.joinpath(*rest.split(".")) if rest else Path(spec.origin).parent
    for candidate in ((path.with_suffix(".py"),) if rest else ()) + (path / "__init__.py",):
        if candidate.is_file():
            return candidate
    return None


_IMPORTS_MEMO: dict[tuple, set[str]] = {}


def _imported_modules(path: Path, module: str) -> set[str]:
    """recsys_core modules named by the import statements of one source file (memoized per file version)."""
    st = path.stat()
    memo_key = (str(path), module, st.st_size, st.st_mtime_ns, st.st_ino)
    if memo_key not in _IMPORTS_MEMO:
        _IMPORTS_MEMO[memo_key] = _parse_imports(path, module)
    return _IMPORTS_MEMO[memo_key]


def _parse_imports(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)  # "from pkg import submodule"
    return {n for n in names if n == "recsys_core" or n.startswith("recsys_core.")}


def module_sources(root_module: str) -> dict[str, Path]:
    """Every recsys_core source file ``root_module`` depends on: its imports, transitively.

    A sub-package reached counts as a whole (all its files), because model registries inside a
    package are often imported dynamically by name. The build system (``BUILD_SYSTEM``) never counts.
    """
    found: dict[str, Path] = {}
    pending = [root_module]
    while pending:
        name = pending.pop()
        if name in found or name == BUILD_SYSTEM or name.startswith(BUILD_SYSTEM + "."):
            continue
        path = _module_file(name)
        if path is None:
            continue
        found[name] = path
        pending.extend(_imported_modules(path, name))
        parts = name.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # importing a.b runs a/__init__
        if path.name == "__init__.py" and name != "recsys_core":
            for sub in sorted(path.parent.rglob("*.py")):
                rel = sub.relative_to(path.parent).with_suffix("")
                parts = [p for p in rel.parts if p != "__init__"]
                pending.append(".".join([name, *parts]))
    return found


def code_version(*root_modules: str) -> dict[str, Any]:
    """Hash of the recsys_core sources behind ``root_modules`` plus the relevant library versions."""
    files: dict[str, Path] = {}
    for module in root_modules:
        files.update(module_sources(module))
    if not any(m in files for m in root_modules):
        raise ModuleNotFoundError(f"none of {root_modules} is importable")
    source_digest = hashlib.sha256()
    for name in sorted(files):
        source_digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    libraries = {}
    for lib in _LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            libraries[lib] = importlib.metadata.version(lib)
    return {
        "modules": sorted(files),
        "source_sha256": source_digest.hexdigest(),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "libraries": libraries,
    }
