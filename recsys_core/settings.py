"""How a training runs, apart from what it learns: ``RunSettings``.

A model's options (``recsys_core.options``, one class per model) are its hyperparameters: they say what is
learned. ``RunSettings`` says how one run of it is carried out and evaluated: the device, torch's threads,
the processes that train it together, whether to resume, and the evaluation's cut-offs (``k``,
``recall_users``) and batch size. ``recsys_core.train.train`` takes the two apart::

    train(split_dir, run_dir, "mf", {"dim": 32}, RunSettings(device="cpu", k=20))

Each setting enters a training's cache key (``cache_params``) only where it changes what the run writes:
``k`` (the written top-K and the @K metrics), ``recall_users`` (the metrics), ``device`` (the numbers a GPU
computes differ from the CPU's), ``amp`` off on a GPU, more than one process. ``threads``, ``concurrent``,
``resume`` and ``eval_batch_size`` change how long a run takes, not what it writes (a resumed run gives
what an uninterrupted one would; the thread count a resumed run keeps is recorded in its config.json).

Settings left at None are "not set": the default, or on a resumed run the value that run was written with
(``resolved``). Before this class existed a model's options carried ``k``, ``recall_users``,
``eval_batch_size``, ``amp`` and ``nproc``; a mapping of options that still does is accepted for one release
with a deprecation line (``split_legacy``), and run folders written then resume and evaluate as before
(their config.json keeps these names: ``recorded``).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

from recsys_core.errors import RecsysError
from recsys_core.threads import check_threads

DEFAULTS: dict[str, Any] = {"k": 10, "recall_users": 5000, "eval_batch_size": 4096, "amp": True, "processes": 1}
# The names a model's options used to carry, and the setting each is now (nproc -> processes).
LEGACY_OPTIONS = {"k": "k", "recall_users": "recall_users", "eval_batch_size": "eval_batch_size", "amp": "amp",
                  "nproc": "processes"}


def _whole(value, name: str, low: int, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
        raise RecsysError(f"{name} must be at least {low} ({what}; an integer), got {value!r}")


@dataclass(frozen=True)
class RunSettings:
    """How one training runs and is evaluated (see the module's docstring). Checked when made."""

    device: str | None = None           # cpu, cuda, cuda:N or auto (None = auto)
    threads: int | None = None          # torch threads of the whole training (None or 0 = choose by the cores)
    concurrent: int | None = None       # trainings sharing this process's cores (None = a Dask worker's slots, else 1)
    processes: int | None = None        # processes training the model data-parallel on this host (nproc)
    resume: bool | str = False          # True: continue the run folder; "auto": when it holds this run
    k: int | None = None                # cut-off of HR/NDCG/Recall and length of the written top-K lists
    recall_users: int | None = None     # test users sampled for full-catalogue Recall@K (0 = skip)
    eval_batch_size: int | None = None  # rows per evaluation batch (memory vs speed)
    amp: bool | None = None             # bf16 autocast when training on CUDA (ignored on CPU)

    def __post_init__(self) -> None:
        if self.device is not None and not isinstance(self.device, str):
            raise RecsysError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        check_threads(self.threads)
        _whole(self.concurrent, "concurrent", 1, "trainings sharing the cores")
        _whole(self.processes, "nproc", 1, "processes training one model")
        if self.resume not in (False, True, "auto"):
            raise RecsysError(f"resume must be true, false or 'auto', got {self.resume!r}")
        _whole(self.k, "k", 1, "items per user")
        _whole(self.recall_users, "recall_users", 0, "0 skips full-catalogue Recall@K")
        _whole(self.eval_batch_size, "eval_batch_size", 1, "rows per evaluation batch")
        if self.amp is not None and not isinstance(self.amp, bool):
            raise RecsysError(f"amp must be true or false, got {self.amp!r}")

    def replace(self, **changes) -> "RunSettings":
        return dataclasses.replace(self, **changes)

    def resolved(self, saved: Mapping[str, Any] | None = None) -> "RunSettings":
        """Every unset value filled: from ``saved`` (a resumed run's config.json, see ``recorded``), else the
        default."""
        saved = saved or {}
        filled = {}
        for name, default in DEFAULTS.items():
            if getattr(self, name) is None:
                key = "nproc" if name == "processes" else name
                filled[name] = saved.get(key, default)
        return dataclasses.replace(self, **filled)

    def recorded(self) -> dict[str, Any]:
        """What a run folder's config.json keeps of these settings (the names it has always had)."""
        done = self.resolved()
        return {"k": done.k, "recall_users": done.recall_users, "eval_batch_size": done.eval_batch_size,
                "amp": done.amp, "nproc": done.processes}

    def cache_params(self) -> dict[str, Any]:
        """The settings that change what a training writes, for its cache key: ``k`` and ``device`` always
        (as the flow's keys have always held them), the others only where they differ from the default, so
        that a run that does not set them keeps its key."""
        done = self.resolved()
        params: dict[str, Any] = {"k": done.k}
        if self.device is not None:
            params["device"] = self.device
        if done.recall_users != DEFAULTS["recall_users"]:
            params["recall_users"] = done.recall_users
        if not done.amp and not (self.device or "auto").startswith("cpu"):
            params["amp"] = False
        if done.processes != 1:
            params["nproc"] = done.processes
        return params


def split_legacy(given: Mapping[str, Any] | None, where: str = "model options"
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model options, run settings by ``RunSettings`` field) of a mapping that may still carry run settings
    among a model's options, as before ``RunSettings`` (``{"epochs": 5, "k": 20}``); one deprecation line
    names what moved. Kept for one release."""
    given = dict(given or {})
    moved = {name: given.pop(name) for name in list(given) if name in LEGACY_OPTIONS}
    if moved:
        they = "these are" if len(moved) > 1 else "it is"
        warnings.warn(f"{', '.join(sorted(moved))} in {where} is deprecated: {they} a run setting now "
                      "(recsys_core.settings.RunSettings; the command line's and the flow's flags of the same "
                      "name); accepted until the next release", FutureWarning, stacklevel=3)
    return given, {LEGACY_OPTIONS[name]: value for name, value in moved.items() if value is not None}
