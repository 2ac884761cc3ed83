"""A stage invocation (``StageSpec``: where it writes, under which content key) and its ``manifest.json``
(``Manifest``): the one place that writes, reads and checks that format.

The manifest is the LAST file a stage writes into its output folder: the key, every output file with size
and sha256, what went into the key (``made_from``), the build's result and seconds. An output counts as
complete only if its manifest carries the expected key and every listed file still has that size and hash,
so a folder left by a killed run (no manifest), a deleted or truncated file or a manifest of other inputs all
make the stage run again. The registry's run verification checks a run folder through ``load_manifest`` and
``changed_file`` too.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from recsys_core.artifacts.hashing import HashMemo, digest, list_files
from recsys_core.io import write_json

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class StageSpec:
    """One stage invocation: where it writes and under which content key."""

    stage: str
    out_dir: str
    key: str
    description: dict  # what went into the key (inputs, params, code), kept in the manifest as "made_from"

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
        if parent is None or prefix is None:
            raise ValueError("make_spec needs out_dir, or parent and prefix")
        out_dir = Path(parent) / f"{prefix}-{key[:10]}"
    return StageSpec(stage=stage, out_dir=str(Path(out_dir).resolve()), key=key, description=description)


# --------------------------------------------------------------------------- the format


@dataclass(frozen=True)
class FileRecord:
    """One output file as its manifest recorded it."""

    path: str  # relative to the output folder, with "/" separators
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The content of ``manifest.json`` (JSON keys = field names, in the order written)."""

    stage: str
    key: str                      # the StageSpec's content key
    cache_key: str | None         # the orchestrator's record of the build (Prefect's cache key), None without one
    created: str | None           # UTC, ISO 8601
    elapsed_s: float | None       # seconds the build took
    files: tuple[FileRecord, ...]
    result: Any                   # what the stage's library function returned (JSON)
    made_from: dict               # the StageSpec's description: stage, inputs, params, code

    def to_json(self) -> dict:
        return {"stage": self.stage, "key": self.key, "cache_key": self.cache_key, "created": self.created,
                "elapsed_s": self.elapsed_s, "files": [vars(f) for f in self.files], "result": self.result,
                "made_from": self.made_from}

    @classmethod
    def from_json(cls, obj: Any) -> Manifest:
        """The manifest in ``obj`` (parsed JSON); ValueError saying what is wrong when it is not one."""
        if not isinstance(obj, dict):
            raise ValueError(f"not a manifest (a JSON {type(obj).__name__}, not an object)")
        missing = [name for name in ("stage", "key", "files", "made_from") if name not in obj]
        if missing:
            raise ValueError(f"not a manifest (no {', '.join(missing)})")
        try:
            files = tuple(FileRecord(str(e["path"]), int(e["size"]), str(e["sha256"])) for e in obj["files"])
        except (TypeError, KeyError, ValueError):
            raise ValueError("not a manifest (its files are not a list of path, size and sha256)") from None
        if not isinstance(obj["made_from"], dict):
            raise ValueError("not a manifest (made_from is not an object)")
        return cls(stage=obj["stage"], key=obj["key"], cache_key=obj.get("cache_key"), created=obj.get("created"),
                   elapsed_s=obj.get("elapsed_s"), files=files, result=obj.get("result"), made_from=obj["made_from"])

    def hashes(self) -> dict[str, str]:
        """{relative path: sha256} of the recorded files."""
        return {f.path: f.sha256 for f in self.files}

    def spec(self, folder: str | Path) -> StageSpec:
        """The spec this manifest records for the output folder ``folder``."""
        return StageSpec(stage=self.stage, out_dir=str(Path(folder).resolve()), key=self.key,
                         description=self.made_from)


def manifest_path(folder: StageSpec | str | Path) -> Path:
    return (folder.path if isinstance(folder, StageSpec) else Path(folder)) / MANIFEST_NAME


def load_manifest(folder: StageSpec | str | Path) -> Manifest | None:
    """The manifest of a spec's (or a folder's) output; None when there is none; ValueError (what is wrong)
    when it cannot be read as one."""
    path = manifest_path(folder)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot be read ({err})") from None
    try:
        obj = json.loads(text)
    except ValueError:
        raise ValueError("not valid JSON") from None
    return Manifest.from_json(obj)


def read_manifest(folder: StageSpec | str | Path) -> Manifest | None:
    """``load_manifest``, with a damaged manifest read as none (the output is then incomplete)."""
    try:
        return load_manifest(folder)
    except ValueError:
        return None


def output_files(folder: Path) -> list[Path]:
    """The files of an output folder a manifest lists: all but the manifest, hidden names and temporaries."""
    return list_files(folder, skip_names=(MANIFEST_NAME,))


def changed_file(folder: str | Path, files: tuple[FileRecord, ...], memo: HashMemo) -> tuple[str, str] | None:
    """The first of ``files`` that is no longer as recorded under ``folder``: (its relative path, "is missing"
    | "changed size" | "changed content"); None when every one is unchanged."""
    folder = Path(folder)
    for record in files:
        path = folder / record.path
        try:
            size = path.stat().st_size
        except OSError:
            return record.path, "is missing"
        if size != record.size:
            return record.path, "changed size"
        if memo.file_hash(path) != record.sha256:
            return record.path, "changed content"
    return None


def verify(spec: StageSpec, memo: HashMemo) -> str | None:
    """None when ``spec.out_dir`` holds the complete output of ``spec``; else why not (one phrase)."""
    manifest = read_manifest(spec)
    if manifest is None:
        return "no manifest (never completed)"
    if manifest.key != spec.key:
        return "manifest of other inputs, parameters or code"
    changed = changed_file(spec.path, manifest.files, memo)
    return None if changed is None else " ".join(changed)


def output_hashes(spec: StageSpec, memo: HashMemo) -> dict[str, str]:
    """{relative path: sha256} of a verified output, from its manifest (what the next stage's key holds)."""
    manifest = read_manifest(spec)
    if manifest is None or manifest.key != spec.key:
        raise RuntimeError(f"{spec.out_dir} has no complete output of stage {spec.stage}")
    return manifest.hashes()


def write_manifest(
    spec: StageSpec,
    memo: HashMemo,
    elapsed_s: float,
    result: Any = None,
    cache_key: str | None = None,
) -> Manifest:
    """Hash every output file and write the manifest, atomically: the last write of a stage.

    ``result``: JSON-able; ``cache_key``: the orchestrator's record of this build (so its next run can report
    the stage as cached), None when built without one."""
    files = tuple(FileRecord(p.relative_to(spec.path).as_posix(), p.stat().st_size, memo.file_hash(p))
                  for p in output_files(spec.path))
    if not files:
        raise RuntimeError(f"stage {spec.stage} wrote no files into {spec.out_dir}")
    manifest = Manifest(stage=spec.stage, key=spec.key, cache_key=cache_key,
                        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), elapsed_s=round(elapsed_s, 3),
                        files=files, result=result, made_from=spec.description)
    write_json(manifest_path(spec), manifest.to_json())
    return manifest


def record_cache_key(spec: StageSpec, cache_key: str) -> None:
    """Name the orchestrator's record in a complete output's manifest that has none yet (reused, not built)."""
    manifest = read_manifest(spec)
    if manifest is not None and manifest.cache_key is None:
        write_json(manifest_path(spec), replace(manifest, cache_key=cache_key).to_json())


def invalidate(spec: StageSpec) -> None:
    """Remove the manifest first, so a crash during the rebuild never leaves a valid-looking folder."""
    with contextlib.suppress(FileNotFoundError):
        manifest_path(spec).unlink()


# --------------------------------------------------------------------------- checking a tree of outputs


@dataclass(frozen=True)
class FolderCheck:
    """What ``verify_tree`` found in one output folder: its stage and, when it is not complete, why not."""

    folder: Path
    stage: str | None
    problem: str | None  # None: complete and unchanged

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_tree(root: str | Path, memo: HashMemo) -> list[FolderCheck]:
    """Check every output folder at or under ``root`` that holds a manifest against that manifest's own key
    and files (without knowing the inputs: that its files are still those it recorded). Sorted by folder."""
    root = Path(root)
    found = [root / MANIFEST_NAME] if (root / MANIFEST_NAME).is_file() else []
    found += sorted(p for p in root.rglob(MANIFEST_NAME) if p.parent != root)
    checks = []
    for path in found:
        try:
            manifest = load_manifest(path.parent)
        except ValueError as err:
            checks.append(FolderCheck(path.parent, None, f"{MANIFEST_NAME}: {err}"))
            continue
        if manifest is not None:
            checks.append(FolderCheck(path.parent, manifest.stage, verify(manifest.spec(path.parent), memo)))
    return checks
