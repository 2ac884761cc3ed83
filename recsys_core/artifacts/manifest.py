"""A stage invocation (``StageSpec``: where it writes, under which content key) and its ``manifest.json``.

The manifest is the LAST file a stage writes into its output folder: the key, every output file with size
and sha256, what went into the key (``made_from``), the build's result and seconds. An output counts as
complete only if its manifest carries the expected key and every listed file still has that size and hash,
so a folder left by a killed run (no manifest), a deleted or truncated file or a manifest of other inputs all
make the stage run again. This module is the one place that writes and checks that format (the registry's
run verification calls ``changed_file`` too).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
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


def manifest_path(folder: StageSpec | str | Path) -> Path:
    return (folder.path if isinstance(folder, StageSpec) else Path(folder)) / MANIFEST_NAME


def read_manifest(folder: StageSpec | str | Path) -> dict | None:
    """The parsed manifest of a spec's (or a folder's) output; None when there is none or it is not JSON."""
    try:
        manifest = json.loads(manifest_path(folder).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def spec_of(folder: str | Path) -> StageSpec | None:
    """The spec a folder's own manifest records (to verify an output without knowing its inputs); None when
    it has no readable manifest."""
    manifest = read_manifest(folder)
    if manifest is None or not {"stage", "key", "made_from"} <= set(manifest):
        return None
    return StageSpec(stage=manifest["stage"], out_dir=str(Path(folder).resolve()), key=manifest["key"],
                     description=manifest["made_from"])


def output_files(folder: Path) -> list[Path]:
    """The files of an output folder a manifest lists: all but the manifest, hidden names and temporaries."""
    return list_files(folder, skip_names=(MANIFEST_NAME,))


def changed_file(folder: str | Path, manifest: dict, memo: HashMemo) -> tuple[str, str] | None:
    """The first file ``manifest`` lists that is no longer as recorded under ``folder``: (its relative path,
    "is missing" | "changed size" | "changed content"); None when every one is unchanged."""
    folder = Path(folder)
    for entry in manifest.get("files", []):
        path = folder / entry["path"]
        try:
            size = path.stat().st_size
        except OSError:
            return entry["path"], "is missing"
        if size != entry["size"]:
            return entry["path"], "changed size"
        if memo.file_hash(path) != entry["sha256"]:
            return entry["path"], "changed content"
    return None


def verify(spec: StageSpec, memo: HashMemo) -> str | None:
    """None when ``spec.out_dir`` holds the complete output of ``spec``; else why not (one phrase)."""
    manifest = read_manifest(spec)
    if manifest is None:
        return "no manifest (never completed)"
    if manifest.get("key") != spec.key:
        return "manifest of other inputs, parameters or code"
    changed = changed_file(spec.path, manifest, memo)
    return None if changed is None else " ".join(changed)


def output_hashes(spec: StageSpec, memo: HashMemo) -> dict[str, str]:
    """{relative path: sha256} of a verified output, from its manifest (what the next stage's key holds)."""
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
    """Hash every output file and write the manifest, atomically: the last write of a stage.

    ``cache_key``: the orchestrator's record of this build (Prefect's cache key), so its next run can report
    the stage as cached; None when built without one."""
    files = [
        {"path": p.relative_to(spec.path).as_posix(), "size": p.stat().st_size, "sha256": memo.file_hash(p)}
        for p in output_files(spec.path)
    ]
    if not files:
        raise RuntimeError(f"stage {spec.stage} wrote no files into {spec.out_dir}")
    manifest = {
        "stage": spec.stage,
        "key": spec.key,
        "cache_key": cache_key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": round(elapsed_s, 3),
        "files": files,
        "result": result,
        "made_from": spec.description,
    }
    write_json(manifest_path(spec), manifest)
    return manifest


def record_cache_key(spec: StageSpec, cache_key: str) -> None:
    """Name the orchestrator's record in a complete output's manifest that has none yet (reused, not built)."""
    manifest = read_manifest(spec)
    if manifest is not None and manifest.get("cache_key") is None:
        manifest["cache_key"] = cache_key
        write_json(manifest_path(spec), manifest)


def invalidate(spec: StageSpec) -> None:
    """Remove the manifest first, so a crash during the rebuild never leaves a valid-looking folder."""
    with contextlib.suppress(FileNotFoundError):
        manifest_path(spec).unlink()


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
        spec = spec_of(path.parent)
        if spec is None:
            checks.append(FolderCheck(path.parent, None, f"{MANIFEST_NAME} cannot be read or is not a manifest"))
        else:
            checks.append(FolderCheck(path.parent, spec.stage, verify(spec, memo)))
    return checks
