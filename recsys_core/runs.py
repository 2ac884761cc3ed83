"""A training run's folder (stage 4's output): its files, and its ``config.json`` and ``metrics.json`` as
typed records, each read and written here and nowhere else.

A run folder holds (``recsys_core.train`` writes them; the flow adds ``manifest.json``):
``config.json`` (every option, resolved; ``RunConfig``), ``checkpoint.pt`` (last epoch of an iterative
model, for ``--resume``), ``model.pt`` (best weights or fitted state + config), ``history.json``
(iterative models, per epoch), ``learning_curve.png`` (iterative models), ``metrics.json`` (model and
baseline metrics on valid and test; ``RunMetrics``), ``predictions.parquet``, ``recommendations.parquet``
and, when the flow built it, ``manifest.json`` (every file's size and sha256, what it was made from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from recsys_core.artifacts.hashing import HashMemo
from recsys_core.artifacts.manifest import MANIFEST_NAME, Manifest, changed_file, load_manifest
from recsys_core.errors import RecsysError
from recsys_core.io import read_json, write_json
from recsys_core.records import finite

CONFIG = "config.json"
METRICS = "metrics.json"
MODEL = "model.pt"
MANIFEST = MANIFEST_NAME
HISTORY = "history.json"
CURVE = "learning_curve.png"
PREDICTIONS = "predictions.parquet"
RECOMMENDATIONS = "recommendations.parquet"
FINISHED = (MODEL, CONFIG, METRICS)  # a run folder without one of these is not a finished run

Part = Mapping[str, Any]          # one part's metrics: {"rmse": 0.91, "mae": 0.72, "n": 1234, ...}


@dataclass(frozen=True)
class RunConfig:
    """``config.json``: the model, its options (every one, resolved), the split folder it trained on and
    the torch threads it used (a resumed run keeps them)."""

    model: str
    options: Mapping[str, Any]             # the model's options by name, as its options class saves them
    family: str | None = None              # how the model meets the data (``Estimator.family``)
    split_dir: str | None = None
    threads: int | None = None

    _OWN = ("model", "family", "split_dir", "threads")

    @classmethod
    def from_json(cls, obj: Mapping) -> RunConfig:
        return cls(model=obj.get("model") or "", options={k: v for k, v in obj.items() if k not in cls._OWN},
                   family=obj.get("family"), split_dir=obj.get("split_dir"), threads=obj.get("threads"))

    def to_json(self) -> dict:
        """Flat, as ``Estimator.describe`` gives it: the options, then model, family, split_dir, threads."""
        out = {**self.options, "model": self.model, "family": self.family, "split_dir": self.split_dir,
               "threads": self.threads}
        return {k: v for k, v in out.items() if v is not None or k in self.options}


@dataclass(frozen=True)
class PredictorMetrics:
    """One predictor's (the model's or a baseline's) metrics on the valid and test parts, and per bucket of
    the user's training ratings (``recsys_core.buckets``: {part: [row, ...]})."""

    valid: Part | None = None              # None: the split has no valid part (trained blind)
    test: Part | None = None
    buckets: Mapping[str, list] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Mapping) -> PredictorMetrics:
        return cls(obj.get("valid"), obj.get("test"), obj.get("buckets") or {})

    def to_json(self) -> dict:
        return {"valid": self.valid, "test": self.test, "buckets": self.buckets}


@dataclass(frozen=True)
class RunMetrics(PredictorMetrics):
    """``metrics.json``: the model's metrics beside its baselines', which baselines beat it, the training
    summary (epochs, seconds, threads; what a model reports of its fit)."""

    model: str | None = None
    split: str | None = None
    baselines: Mapping[str, PredictorMetrics] = field(default_factory=dict)
    beaten_by: tuple[str, ...] = ()        # baselines better on the model's primary metric
    top_k_beaten_by: tuple[str, ...] = ()  # baselines that rank better
    training: Mapping[str, Any] = field(default_factory=dict)
    trained_blind: bool = False            # the split had no valid part: nothing was selected on valid
    other: Mapping[str, Any] = field(default_factory=dict)   # any other key (evaluation_seconds, ...)

    _OWN = ("model", "split", "valid", "test", "buckets", "baselines", "beaten_by", "top_k_beaten_by",
            "training", "trained_blind")

    @classmethod
    def from_json(cls, obj: Mapping) -> RunMetrics:
        return cls(valid=obj.get("valid"), test=obj.get("test"), buckets=obj.get("buckets") or {},
                   model=obj.get("model"), split=obj.get("split"),
                   baselines={name: PredictorMetrics.from_json(values)
                              for name, values in (obj.get("baselines") or {}).items()},
                   beaten_by=tuple(obj.get("beaten_by") or ()), top_k_beaten_by=tuple(obj.get("top_k_beaten_by") or ()),
                   training=obj.get("training") or {}, trained_blind=bool(obj.get("trained_blind")),
                   other={k: v for k, v in obj.items() if k not in cls._OWN})

    def to_json(self) -> dict:
        out = {"model": self.model, "split": self.split, "valid": self.valid, "test": self.test,
               "buckets": self.buckets, "baselines": {name: b.to_json() for name, b in self.baselines.items()},
               "beaten_by": list(self.beaten_by), "top_k_beaten_by": list(self.top_k_beaten_by), **self.other,
               "training": self.training}
        if self.trained_blind:
            out["trained_blind"] = True
        return finite(out)


@dataclass(frozen=True)
class RunFolder:
    """One run folder: where its files are, and its config, metrics and manifest read from them."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def model_file(self) -> Path:
        return self.path / MODEL

    @property
    def name(self) -> str:
        return self.path.name

    def is_finished(self) -> bool:
        return all((self.path / name).is_file() for name in FINISHED)

    # --- reading ------------------------------------------------------------------------------------------
    def config(self) -> RunConfig:
        """``config.json`` (OSError when absent, ValueError when not JSON)."""
        return RunConfig.from_json(read_json(self.path / CONFIG))

    def metrics(self) -> RunMetrics:
        """``metrics.json`` (OSError when absent, ValueError when not JSON)."""
        return RunMetrics.from_json(read_json(self.path / METRICS))

    def manifest(self) -> Manifest | None:
        """``manifest.json`` as the flow wrote it, None for a run trained by hand (no manifest)."""
        try:
            return load_manifest(self.path)
        except ValueError as err:
            raise RecsysError(f"{self.path / MANIFEST}: {err}; the run folder is damaged") from None

    def verify(self) -> Manifest | None:
        """Check the folder is a finished run and every file its manifest lists is unchanged; returns the
        manifest (None without one). RecsysError (one sentence naming the file) otherwise."""
        if not self.path.is_dir():
            raise RecsysError(f"{self.path}: no such run folder")
        missing = [name for name in FINISHED if not (self.path / name).is_file()]
        if missing:
            raise RecsysError(f"{self.path} is not a finished run folder (missing {', '.join(missing)}); "
                              "train it first")
        manifest = self.manifest()
        if manifest is not None:
            changed = changed_file(self.path, manifest.files, HashMemo(None))
            if changed is not None:
                path = self.path / changed[0]
                if changed[1] == "is missing":
                    raise RecsysError(f"{path}: listed in the run's manifest but missing; the run folder is damaged")
                raise RecsysError(f"{path}: changed since the run's manifest was written; the run folder is damaged")
        return manifest

    # --- writing (atomically) -------------------------------------------------------------------------------
    def write_config(self, config: RunConfig) -> None:
        write_json(self.path / CONFIG, config.to_json())

    def write_metrics(self, metrics: RunMetrics) -> None:
        write_json(self.path / METRICS, metrics.to_json())
