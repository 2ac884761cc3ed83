"""Content-keyed stage cache: what a stage reads, with which parameters and which code, names its output.

A stage's key is the hash of
  * the CONTENT of every file it reads (never paths or mtimes; a file's hash is memoized by
    (path, size, mtime_ns, ctime_ns, inode) the way git's index does, so a second run only stats files),
  * its parameters (canonical JSON),
  * the source of every ``recsys_core`` module it imports (followed transitively), and the versions of
    the third-party libraries that shape its bytes (polars, pyarrow, numpy, scipy, torch).

Each output folder gets a manifest written LAST (key + every output file with size and sha256). An
output counts as complete only if its manifest carries the expected key and every listed file still
has that size and hash, so a folder left by a killed run (no manifest), a deleted or truncated file or
a manifest of other inputs all make the stage run again. Writers hold an ``fcntl.flock`` on a lock
file beside the output, so concurrent runs of the same stage wait for each other and then reuse.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from recsys_core.io import atomic_file, write_json
from recsys_core.progress import progress_bar

log = logging.getLogger("recsys_core.cache")

MANIFEST_NAME = "manifest.json"
# Name pattern of the temporaries of recsys_core.io (".<name>.tmp-<pid>-<hex>").
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")
_LIBRARIES = ("numpy", "scipy", "polars", "pyarrow", "torch")
_CHUNK = 1 << 20
_BAR_MB = 256  # sources above this size show a hashing progress bar


# --------------------------------------------------------------------------- file hashes


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
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        # A file modified while being hashed gets a new signature: do not memoize that hash.
        if _stat_signature(path.stat()) != signature:
            return digest.hexdigest()
        with self._mutex:
            self._entries[key] = signature + [digest.hexdigest()]
            self._dirty = True
        return digest.hexdigest()

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




def list_files(root: Path) -> list[Path]:
    """Regular files under ``root`` (a file or folder), sorted, skipping hidden names and temporaries."""
    root = Path(root)
    if root.is_file():
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _is_temporary(d))
        for name in sorted(filenames):
            if not _is_temporary(name) and name != MANIFEST_NAME:
                found.append(Path(dirpath) / name)
    return found


def tree_hashes(root: Path, memo: HashMemo) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (a progress bar when there is much to read)."""
    root = Path(root)
    base = root.parent if root.is_file() else root
    files = list_files(root)
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
    package are often imported dynamically by name.
    """
    found: dict[str, Path] = {}
    pending = [root_module]
    while pending:
        name = pending.pop()
        if name in found:
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


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class StageSpec:
    """One stage invocation: where it writes and under which content key."""

    stage: str
    out_dir: str
    key: str
    description: dict  # what went into the key (inputs, params, code), kept in the manifest

    @property
    def path(self) -> Path:
        return Path(self.out_dir)

    @property
    def short_key(self) -> str:
        return self.key[:10]


def make_spec(
    stage: str,
    inputs: dict,
    params: dict,
    code: dict,
    out_dir: str | Path | None = None,
    parent: str | Path | None = None,
    prefix: str | None = None,
) -> StageSpec:
    """The spec of a stage; the output folder is ``out_dir`` or ``parent/<prefix>-<short key>``."""
    description = {"stage": stage, "inputs": inputs, "params": params, "code": code}
    key = digest(description)
    if out_dir is None:
        out_dir = Path(parent) / f"{prefix}-{key[:10]}"
    return StageSpec(stage=stage, out_dir=str(Path(out_dir).resolve()), key=key, description=description)


def manifest_path(spec: StageSpec) -> Path:
    return spec.path / MANIFEST_NAME


def read_manifest(spec: StageSpec) -> dict | None:
    try:
        return json.loads(manifest_path(spec).read_text())
    except (OSError, ValueError):
        return None


def verify(spec: StageSpec, memo: HashMemo) -> str | None:
    """None when ``spec.out_dir`` holds the complete output of ``spec``; else why not (one phrase)."""
    manifest = read_manifest(spec)
    if manifest is None:
        return "no manifest (never completed)"
    if manifest.get("key") != spec.key:
        return "manifest of other inputs, parameters or code"
    for entry in manifest.get("files", []):
        path = spec.path / entry["path"]
        try:
            size = path.stat().st_size
        except OSError:
            return f"{entry['path']} is missing"
        if size != entry["size"]:
            return f"{entry['path']} changed size"
        if memo.file_hash(path) != entry["sha256"]:
            return f"{entry['path']} changed content"
    return None


def output_hashes(spec: StageSpec, memo: HashMemo) -> dict[str, str]:
    """{relative path: sha256} of a verified output, from its manifest (what the next stage reads)."""
    manifest = read_manifest(spec)
    if manifest is None or manifest.get("key") != spec.key:
        raise RuntimeError(f"{spec.out_dir} has no complete output of stage {spec.stage}")
    return {e["path"]: e["sha256"] for e in manifest["files"]}


def write_manifest(
    spec: StageSpec,
    memo: HashMemo,
    elapsed_s: float,
    result: Any = None,
    cache_key: str | None = None,
) -> dict:
    """Hash every output file (all but temporaries) and write the manifest: the last write of a stage."""
    files = [
        {"path": p.relative_to(spec.path).as_posix(), "size": p.stat().st_size, "sha256": memo.file_hash(p)}
        for p in list_files(spec.path)
    ]
    if not files:
        raise RuntimeError(f"stage {spec.stage} wrote no files into {spec.out_dir}")
    manifest = {
        "stage": spec.stage,
        "key": spec.key,
        "cache_key": cache_key,  # the Prefect cache record this build committed
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": round(elapsed_s, 3),
        "files": files,
        "result": result,
        "made_from": spec.description,
    }
    write_json(manifest_path(spec), manifest)
    return manifest


def invalidate(spec: StageSpec) -> None:
    """Remove the manifest first, so a crash during the rebuild never leaves a valid-looking folder."""
    with contextlib.suppress(FileNotFoundError):
        manifest_path(spec).unlink()


# --------------------------------------------------------------------------- locks and leftovers


@contextlib.contextmanager
def file_lock(lock_path: Path) -> Iterator[None]:
    """Exclusive ``flock`` (released by the kernel if the holder dies, even by SIGKILL)."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def stage_lock(spec: StageSpec) -> contextlib.AbstractContextManager:
    return file_lock(spec.path.parent / f".{spec.path.name}.lock")


def remove_temporaries(spec: StageSpec) -> list[Path]:
    """Delete temporaries (``.<name>.tmp-<pid>-<hex>``) of this output left by a killed run.

    Called only while holding the stage lock: every writer of this output holds it too, so any
    temporary present belongs to a writer that died.
    """
    removed = []
    candidates = list(spec.path.parent.glob(f".{spec.path.name}.tmp-*"))
    if spec.path.is_dir():
        candidates += [p for p in spec.path.rglob(".*.tmp-*")]
    for entry in candidates:
        if not _TEMP_RE.match(entry.name):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed
