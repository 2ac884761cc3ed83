"""The flow's last step when it names a registry model: compare the runs it trained with the champion,
promote only a better one (``recsys_core.promotion``), and publish the decision as a Prefect artifact.

The task is not cached: the champion may have changed since the last run (a promotion by another run, a
rollback), and a decision on an unchanged run is cheap (the champion's own run is recognised without
evaluating anything).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from recsys_core.errors import RecsysError
from recsys_core.registry import Registry, check_name, default_root

if TYPE_CHECKING:
    from recsys_core.promotion import Decision

SPLIT_PLACEHOLDER = "{split}"


def _artifact_key(name: str) -> str:
    return "recsys-promotion-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model")


def _table(decision: Decision) -> list[dict]:
    return [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in decision.table()]


@task(name="promote", task_run_name="promote {name}", cache_policy=NO_CACHE)
def promote_task(registry_dir: str, name: str, run_dirs: list[str], margin: float, k: int, device: str,
                 split_stats: str | None = None) -> Decision:
    from recsys_core.promotion import promote_if_better  # torch (~1.5 s): only runs with a registry_model promote

    decision = promote_if_better(Registry(registry_dir), name, run_dirs, margin=margin, k=k, device=device,
                                 split_stats=split_stats)
    create_table_artifact(table=_table(decision), key=_artifact_key(name),
                          description=f"{decision.line()} (champion vs challenger vs baselines on the newest "
                                      f"split, {decision.decided_on} {decision.metric} decides)")
    print(decision.line())
    return decision


def check_options(registry_model: str, margin: float, splits: list[str] | None = None) -> None:
    """The flow's registry options, checked before any stage runs (one sentence each); ``splits``: the
    split names when they are known before splitting (netflix-time)."""
    if not isinstance(registry_model, str):
        raise RecsysError(f"registry_model must be a name such as netflix-{SPLIT_PLACEHOLDER}, got {registry_model!r}")
    try:
        check_name(registry_model.replace(SPLIT_PLACEHOLDER, "N3M"))
    except RecsysError:
        raise RecsysError(f"registry_model {registry_model!r} must be 1-100 letters, digits, '.', '_' or '-' "
                          f"(starting with a letter or digit; {SPLIT_PLACEHOLDER} stands for each split's name), "
                          f"e.g. netflix-{SPLIT_PLACEHOLDER}") from None
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise RecsysError(f"promotion_margin must be a relative improvement of 0 or more (0.001 = 0.1%), "
                          f"got {margin!r}")
    if splits:
        registry_names(registry_model, splits)


def registry_names(registry_model: str, splits: list[str]) -> dict[str, str]:
    """{split: registry model name}: ``{split}`` in the name is replaced by each split's name; a name
    without it serves one split only."""
    if SPLIT_PLACEHOLDER not in registry_model and len(splits) > 1:
        raise RecsysError(f"registry_model {registry_model!r} names one model but the run trains "
                          f"{len(splits)} splits ({', '.join(splits)}); put {SPLIT_PLACEHOLDER} in the name, "
                          f"e.g. netflix-{SPLIT_PLACEHOLDER}")
    return {split: check_name(registry_model.replace(SPLIT_PLACEHOLDER, split)) for split in splits}


def promote_runs(data_dir: str | Path, registry_model: str, runs: list[dict], margin: float, k: int,
                 device: str, split_root: str | Path | None = None) -> list[Decision]:
    """One decision per split of the flow's trained ``runs`` ({"split", "model", "run_dir"}); ``split_root``
    is the stage-2 output holding each split's stats.json (the training dates the registry records)."""
    splits = list(dict.fromkeys(run["split"] for run in runs))
    names = registry_names(registry_model, splits)
    decisions = []
    for split in splits:
        run_dirs = [run["run_dir"] for run in runs if run["split"] == split]
        decisions.append(promote_task(registry_dir=str(default_root(data_dir)), name=names[split],
                                      run_dirs=run_dirs, margin=margin, k=k, device=device,
                                      split_stats=str(Path(split_root) / split) if split_root else None))
    return decisions
