"""The data-folder layout: where each stage writes and under which content key (``StageSpec``), computed
from what it reads.

Layout under the data dir (every name carries a short content key, so different inputs or parameters
never overwrite each other)::

    raw/sample/s<scale>-seed<seed>/            generated Netflix-format sample (source=sample)
    converted/<source>-<key>/                  stage 1
    splits/<source>-<key>/<protocol>-<key>/    stage 2, one folder per split inside
    matrices/<source>-<key>/<protocol>-<key>/  stage 3, one folder per split inside
    runs/<source>-<key>/<protocol>-<key>/<split>/<model>-<key>/   stage 4: model, metrics, top-K
    sweeps/<source>-<key>/<protocol>-<key>/sweep-<key>/           a sweep's table, plot and chosen trials
    registry/<name>/                           champion pointer and history (recsys_core.registry)
    .cache/file-hashes.json                    memo of file hashes (path, size, mtimes, inode -> sha256)
"""

from __future__ import annotations

import re
from pathlib import Path

from recsys_core.artifacts.hashing import HashMemo, code_version, digest, tree_hashes
from recsys_core.artifacts.manifest import MANIFEST_NAME, StageSpec, make_spec, output_hashes
from recsys_core.convert import detect
from recsys_core.errors import RecsysError
from recsys_core.prize import probe_holder
from recsys_core.settings import RunSettings

SAMPLE = "sample"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.") or "source"


def sample_spec(data_dir: str | Path, scale: float, seed: int) -> StageSpec:
    return make_spec(
        "synth",
        inputs={},
        params={"scale": scale, "seed": seed},
        code=code_version("recsys_core.synth"),
        out_dir=Path(data_dir) / "raw" / SAMPLE / f"s{scale:g}-seed{seed}",
    )


def source_name(source: Path) -> str:
    name = source.parent.name if source.name == "training_set" else source.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return _slug(name)


def convert_spec(data_dir: str | Path, source: str | Path, memo: HashMemo, name: str | None = None) -> StageSpec:
    """Stage 1's spec: its key holds the content of the files ``recsys_core.convert.detect`` says the
    conversion reads (never their paths); the folder is named after the source (or ``name``)."""
    source = Path(source)
    if not source.exists():
        raise RecsysError(f"{source}: no such file or folder (source must be 'sample', a Netflix path or a "
                          "MovieLens folder)")
    hashes: dict[str, str] = {}
    for root in detect(source).reads:
        hashes.update(tree_hashes(root, memo, skip_names=(MANIFEST_NAME,)))
    if not hashes:
        raise RecsysError(f"{source}: holds no files to convert")
    return make_spec(
        "convert",
        inputs={"source_files": len(hashes), "source_sha256": digest(hashes)},
        params={},
        code=code_version("recsys_core.convert"),
        parent=Path(data_dir) / "converted",
        prefix=name or source_name(source),
    )


def split_spec(data_dir: str | Path, converted: StageSpec, memo: HashMemo, protocol: str, options: dict) -> StageSpec:
    params = {"protocol": protocol, **options}
    if protocol == "netflix-probe" and options.get("source") is not None:
        # The key holds what is read, not where: the content of the file holding probe.txt (the archive for
        # a tar.gz or zip, already hashed for the convert stage), not the source's path.
        holder = probe_holder(options["source"])
        if holder is None:
            raise RecsysError(f"{options['source']} holds no probe.txt (protocol netflix-probe needs it): give the "
                              "Netflix Prize source as distributed (nf_prize_dataset.tar.gz or its download/ folder) "
                              "or Kaggle's folder or zip")
        params["source"] = {"probe_sha256": memo.file_hash(holder)}
    return make_spec(
        "split",
        inputs={"converted": digest(output_hashes(converted, memo))},
        params=params,
        code=code_version("recsys_core.split"),
        parent=Path(data_dir) / "splits" / converted.path.name,
        prefix=_slug(protocol),
    )


def matrices_spec(data_dir: str | Path, splits: StageSpec, memo: HashMemo, protocol: str) -> StageSpec:
    return make_spec(
        "matrices",
        inputs={"splits": digest(output_hashes(splits, memo))},
        params={},
        code=code_version("recsys_core.matrices"),
        parent=Path(data_dir) / "matrices" / splits.path.parent.name,
        prefix=_slug(protocol),
    )


def split_names(matrices: StageSpec, memo: HashMemo) -> list[str]:
    """The split folders of a matrices output (each holds meta.json)."""
    return sorted({p.split("/")[0] for p in output_hashes(matrices, memo) if p.endswith("/meta.json")})


def train_spec(data_dir: str | Path, matrices: StageSpec, memo: HashMemo, split: str, model: str, options: dict,
               settings: RunSettings, prune: dict | None = None) -> StageSpec:
    """A training run's folder and key: the model's ``options`` and those run ``settings`` that change what
    the run writes (``RunSettings.cache_params``: k and device, not threads). ``prune``: a sweep trial's pruning
    rule (it can stop the run early, so it is part of the key; a trial without one shares the folder of an
    ordinary run of its options)."""
    prefix = f"{split}/"
    hashes = {p: h for p, h in output_hashes(matrices, memo).items() if p.startswith(prefix)}
    if not hashes:
        raise RecsysError(f"{matrices.out_dir} has no split named {split!r}")
    return make_spec(
        "train",
        inputs={"matrices": digest(hashes)},
        params={"model": model, **options, **settings.cache_params(), **({"prune": prune} if prune else {})},
        code=code_version("recsys_core.train", *(("recsys_core.sweep",) if prune else ())),
        parent=Path(data_dir) / "runs" / matrices.path.parent.name / matrices.path.name / split,
        prefix=_slug(model),
    )
