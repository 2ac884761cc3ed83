"""Prefect tasks around the library stages, built by the library's content-keyed build system
(``recsys_core.artifacts``).

Each task takes a ``StageSpec`` (output folder + content key, computed by ``recsys_core.artifacts.layout``)
and the library parameters. ``ContentCachePolicy`` makes Prefect report the task as *Cached* when the output
folder verifies against its manifest; otherwise the task runs ``recsys_core.artifacts.build.build_stage``,
which under the stage's file lock either finds the output completed meanwhile by a concurrent run
("reused") or builds it ("built").
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.transactions import get_transaction

from recsys_core.artifacts.build import build_stage
from recsys_core.artifacts.hashing import hash_memo
from recsys_core.artifacts.manifest import StageSpec, read_manifest, verify
from recsys_core.convert import convert
from recsys_core.errors import RecsysError
from recsys_core.matrices import build_matrices
from recsys_core.records import StageResult
from recsys_core.settings import RunSettings
from recsys_core.split import split
from recsys_core.sweep import MedianRule
from recsys_core.synth import generate_netflix
from tasks.logs import forward_library_logs

log = logging.getLogger("recsys_core.flow")

RETRIES = 2
RETRY_DELAY_S = 2


# --------------------------------------------------------------------------- cache policy


@dataclass
class ContentCachePolicy(CachePolicy):
    """Cache key of a stage task = the key recorded in its verified manifest.

    A verified output folder names the Prefect record its build committed (so the task is reported
    Cached). A folder that does not verify (missing, killed mid-stage, a file deleted or truncated, other
    inputs) gets a fresh key that no record has: the task runs, and its manifest records that new key.
    """

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> Optional[str]:
        spec: StageSpec = inputs["spec"]
        memo = hash_memo(inputs["data_dir"])
        reason = verify(spec, memo)
        memo.save()
        if reason is None:
            manifest = read_manifest(spec)
            if manifest is not None and manifest.cache_key:
                return manifest.cache_key
        else:
            log.info("%s must run: %s (%s)", spec.stage, reason, spec.out_dir)
        return new_cache_key(spec)


def new_cache_key(spec: StageSpec) -> str:
    return f"{spec.stage}-{spec.key[:16]}-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- retries


_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def is_transient(exc: BaseException) -> bool:
    """Failures worth a retry: I/O hiccups and CUDA running out of memory, never a user error."""
    if isinstance(exc, RecsysError):
        return False
    if type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS)


def retry_transient(task_obj, task_run, state) -> bool:
    """``retry_condition_fn`` of every stage task."""
    try:
        state.result()
    except BaseException as exc:  # the failed state re-raises its exception here
        if type(exc).__name__ == "OutOfMemoryError":
            _release_cuda_memory()
        return is_transient(exc)
    return False


def _release_cuda_memory() -> None:
    with contextlib.suppress(Exception):
        import torch  # torch (~1.5 s): a training task has loaded it already; the ETL tasks never need it

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def stage_task(name: str):
    """Decorator: a Prefect task with the content cache, retries on transient failures."""
    return task(
        name=name,
        cache_policy=ContentCachePolicy(),
        retries=RETRIES,
        retry_delay_seconds=RETRY_DELAY_S,
        retry_condition_fn=retry_transient,
        task_run_name=name + " [{spec.short_key}]",
    )


# --------------------------------------------------------------------------- the common stage body


def reported_status(state) -> str:
    """What the run's report says a finished stage task did: "cached" (Prefect's record, the task body did not
    run), else its ``StageResult.status`` ("built" or "reused"). Re-raises a failed task's error."""
    result = state.result()
    return "cached" if state.name == "Cached" else result.status


def run_stage(spec: StageSpec, data_dir: str, build: Callable[[Path], Any], keep_partial: bool = False) -> StageResult:
    """``build_stage`` with the data dir's hash memo, naming this task's Prefect cache record in the manifest
    (so the next run reports the stage Cached)."""
    txn = get_transaction()
    return build_stage(spec, hash_memo(data_dir), build, keep_partial=keep_partial,
                       cache_key=txn.key if txn is not None and txn.key else None)


# --------------------------------------------------------------------------- the stages


@stage_task("synth")
def synth_task(spec: StageSpec, data_dir: str, scale: float, seed: int) -> StageResult:
    return run_stage(spec, data_dir, lambda out: generate_netflix(out, scale=scale, seed=seed))


@stage_task("convert")
def convert_task(spec: StageSpec, data_dir: str, source: str) -> StageResult:
    return run_stage(spec, data_dir, lambda out: convert(source, out))


@stage_task("split")
def split_task(spec: StageSpec, data_dir: str, ratings_dir: str, protocol: str, options: dict) -> StageResult:
    return run_stage(spec, data_dir, lambda out: split(ratings_dir, out, protocol, **options))


@stage_task("matrices")
def matrices_task(spec: StageSpec, data_dir: str, split_root: str) -> StageResult:
    return run_stage(spec, data_dir, lambda out: build_matrices(split_root, out))


@stage_task("train")
def train_task(spec: StageSpec, data_dir: str, split_dir: str, model: str, options: dict, settings: RunSettings,
               concurrent: int | None = 1, prune: dict | None = None) -> StageResult:
    """Train, evaluate (model + baselines) and write top-K recommendations of one model: its ``options``,
    run as ``settings`` say (``recsys_core.settings.RunSettings``).

    The run folder keeps its checkpoint when a run fails or is killed; the library's ``resume="auto"``
    continues from it on the next run of the same key (giving the result of an uninterrupted run), or
    starts afresh when there is nothing it can continue. ``concurrent``: trainings sharing the cores, for
    torch's threads (``recsys_core.threads.decide_threads``; None on a Dask worker: its task slots).
    ``prune``: a sweep trial's pruning rule (``recsys_core.sweep.MedianRule``; it is part of ``spec``'s key).
    """
    from recsys_core.train import train  # torch (~1.5 s): only training tasks need it, not the ETL stages'

    forward_library_logs()  # on a Dask worker too: the library's log lines go to this task run
    on_epoch = MedianRule.from_dict(prune).callback() if prune else None
    run = settings.replace(resume="auto", concurrent=concurrent)
    return run_stage(spec, data_dir, lambda out: train(split_dir, out, model, options, run, on_epoch=on_epoch),
                     keep_partial=True)
