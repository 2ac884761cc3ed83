"""Champion vs challenger on the newest split: promote only what is better.

The rule (``decide``):

1. Every model is measured on the SAME split, the challenger's (the newest): the challenger as trained,
   the baselines fitted on its train part, and the champion's own weights mapped onto it (``OnNewSplit``).
2. The primary metric is the registry model's (fixed by its first champion): RMSE for rating models,
   full-catalogue Recall@K for ranking models (the one top-K metric every split can give on its valid
   part; HR@K needs sampled negatives, which only leave-one-out test parts have). It is read on the
   valid part (test when the split has none); test is shown beside it but decides nothing.
3. The best challenger on that metric is promoted when no baseline beats it and it improves on the
   champion by more than ``margin`` (relative: 0.001 = 0.1%). First run (no champion): promoted when no
   baseline beats it. Otherwise the champion stays, and the history says why.

The champion on the new split: the split has its own id index, so raw user and item ids are mapped.
A user the champion never saw is folded in from their ratings in the new train part where the model
can (the ``FoldIn`` capability of ``recsys_core.predictor``: the user-facing autoencoders, MF, EASE,
ALS); otherwise, and for items new since the champion was trained, the champion answers what it would
answer if served: its global mean rating for a pair it cannot score, its most-popular list for a user it
cannot score; new items are never in its lists.
The counts of each case are part of the decision.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from recsys_core.baselines import fit_baselines
from recsys_core.errors import RecsysError
from recsys_core.evaluation import full_catalogue_recall, rating_metrics
from recsys_core.registry import Registry

log = logging.getLogger("recsys_core.promotion")

DEFAULT_MARGIN = 0.001
DEFAULT_RECALL_USERS = 5000


def primary_metric(rating_model: bool, k: int) -> str:
    return "rmse" if rating_model else f"recall@{k}"


def lower_is_better(metric: str) -> bool:
    return metric in ("rmse", "mae")


def _k_of(metric: str) -> int | None:
    return int(metric.split("@")[1]) if "@" in metric else None


# --------------------------------------------------------------------------- the champion on a new split


class OnNewSplit:
    """A trained model (``ServableModel``) answering ``predict_pairs``/``score_rows`` in another split's
    index (see the module docstring for users and items it does not know)."""

    def __init__(self, model, data):
        self.model, self.data = model, data
        self.rating_model = model.rating_model
        self.old_rows = model.rows_of(data.user_ids)
        self.old_cols = model.cols_of(data.item_ids)
        self.new_cols = np.flatnonzero(self.old_cols >= 0)      # new columns the model knows
        train = data.train
        owners = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
        on_known_item = self.old_cols[train.indices] >= 0
        has_known_rating = np.bincount(owners[on_known_item], minlength=train.shape[0]) > 0
        self.fold = (self.old_rows < 0) & has_known_rating & model.can_fold_in   # new users folded in
        self.fallback_pairs = 0
        popularity = np.full(data.n_items, -np.inf, np.float32)
        popularity[self.new_cols] = model.popularity[self.old_cols[self.new_cols]]
        self._popular = popularity

    def coverage(self) -> dict:
        """How many users and items of the new split the model knows, folds in, or answers by fallback."""
        active = np.diff(self.data.train.indptr) > 0
        unknown = active & (self.old_rows < 0)
        counts = {"users": int(active.sum()), "users_known": int((active & (self.old_rows >= 0)).sum()),
                  "users_new_folded_in": int((unknown & self.fold).sum()),
                  "users_new_fallback": int((unknown & ~self.fold).sum()),
                  "items": int(self.data.n_items), "items_new": int((self.old_cols < 0).sum())}
        for part in ("valid", "test"):
            matrix = getattr(self.data, part)
            rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
            scorable = (self.old_cols[matrix.indices] >= 0) & ((self.old_rows[rows] >= 0) | self.fold[rows])
            counts[f"{part}_pairs_fallback"] = int((~scorable).sum())
        return counts

    def _folded(self, row: int) -> np.ndarray:
        """Scores (the model's own columns) of a new user, from their ratings in the new train part."""
        train = self.data.train
        lo, hi = train.indptr[row], train.indptr[row + 1]
        cols = self.old_cols[train.indices[lo:hi]]
        keep = cols >= 0
        return self.model.fold_in(cols[keep], train.data[lo:hi][keep])

    def predict_pairs(self, rows, cols) -> np.ndarray:
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        out = np.full(len(rows), self.model.global_mean, np.float32)
        old_rows, old_cols = self.old_rows[rows], self.old_cols[cols]
        known = (old_rows >= 0) & (old_cols >= 0)
        if known.any():
            out[known] = self.model.predict_pairs(old_rows[known], old_cols[known])
        folded = np.flatnonzero(self.fold[rows] & (old_cols >= 0))
        if len(folded):
            folded = folded[np.argsort(rows[folded], kind="stable")]
            users, starts = np.unique(rows[folded], return_index=True)
            for user, idx in zip(users, np.split(folded, starts[1:])):
                out[idx] = self._folded(int(user))[old_cols[idx]]
        return out

    def score_rows(self, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        out = np.full((len(rows), self.data.n_items), -np.inf, np.float32)
        old_rows = self.old_rows[rows]
        known = np.flatnonzero(old_rows >= 0)
        if len(known):
            scores = self.model.score_rows(old_rows[known])
            out[np.ix_(known, self.new_cols)] = scores[:, self.old_cols[self.new_cols]]
        for pos in np.flatnonzero(old_rows < 0):
            if self.fold[rows[pos]]:
                out[pos, self.new_cols] = self._folded(int(rows[pos]))[self.old_cols[self.new_cols]]
            else:
                out[pos] = self._popular
        return out


# --------------------------------------------------------------------------- measuring


def measure(predictor, data, metric: str, recall_users: int = DEFAULT_RECALL_USERS) -> dict:
    """``metric`` of one predictor on the valid and test parts of ``data`` (None for an empty part)."""
    result = {}
    for part in ("valid", "test"):
        matrix = getattr(data, part)
        if matrix.nnz == 0:
            result[part] = None
        elif metric in ("rmse", "mae"):
            from recsys_core.interactions import rating_range

            result[part] = rating_metrics(predictor, matrix, rating_range(data.meta))[metric]
        else:
            result[part] = full_catalogue_recall(predictor, data.train, matrix, _k_of(metric), recall_users)[metric]
    return result


def improvement(new: float, old: float, metric: str) -> float:
    """Relative improvement of ``new`` over ``old`` (positive = better)."""
    if old == 0:
        return 0.0 if new == old else (float("inf") if not lower_is_better(metric) and new > 0 else -float("inf"))
    gain = (old - new) if lower_is_better(metric) else (new - old)
    return gain / abs(old)


@dataclass
class Decision:
    name: str
    promoted: bool
    reason: str
    metric: str
    decided_on: str                        # "valid" or "test"
    margin: float
    challenger: str | None                 # run folder of the chosen challenger
    champion: str | None                   # run folder of the champion before the decision
    champion_version: int | None
    rows: list[dict] = field(default_factory=list)     # the table: champion, challengers, baselines
    coverage: dict | None = None           # the champion on the new split
    version: int | None = None             # the new champion's version when promoted

    def line(self) -> str:
        """One line for the run summary."""
        if self.promoted:
            verdict = f"PROMOTED as version {self.version}" if self.version else "better (not recorded)"
        elif self.champion is None:  # nothing to keep: say that nothing is served yet
            return f"registry {self.name}: no champion yet: {self.reason}; nothing promoted"
        else:
            verdict = "KEPT the champion"
        return f"registry {self.name}: {verdict}: {self.reason}"

    def as_dict(self) -> dict:
        return {**asdict(self), "line": self.line()}


def _better(a: float | None, b: float | None, metric: str) -> bool:
    if a is None or b is None:
        return False
    return a < b if lower_is_better(metric) else a > b


def decide(name: str, champion_pointer: dict | None, run_dirs: list[str], *, margin: float = DEFAULT_MARGIN,
           k: int = 10, recall_users: int = DEFAULT_RECALL_USERS, device: str = "cpu") -> Decision:
    """Compare the challengers (trained on one split) with the champion and the baselines; decides, records nothing."""
    from recsys_core.serving.model_access import ServableModel

    if not run_dirs:
        raise RecsysError(f"no trained run to compare for registry model {name}")
    champion_run = (champion_pointer or {}).get("run_dir")
    champion_version = (champion_pointer or {}).get("version")
    if champion_run and {Path(r).resolve() for r in run_dirs} == {Path(champion_run).resolve()}:
        return Decision(name, False, "the challenger is the champion's own run (nothing was retrained)",
                        champion_pointer.get("primary_metric") or "", "", margin, champion_run, champion_run,
                        champion_version)
    challengers = [ServableModel(run_dir, device) for run_dir in run_dirs]
    data = challengers[0].data
    for other in challengers[1:]:
        if Path(other.data.path).resolve() != Path(data.path).resolve():
            raise RecsysError(f"the challengers of {name} were trained on different splits "
                              f"({data.path} and {other.data.path}); give runs of one split")
    metric = (champion_pointer or {}).get("primary_metric") or primary_metric(
        all(c.rating_model for c in challengers), k)
    rows: list[dict] = []
    scores: dict[str, dict] = {}

    def add(role: str, label: str, run_dir: str | None, values: dict, note: str = "") -> None:
        rows.append({"role": role, "model": label, f"valid {metric}": values.get("valid"),
                     f"test {metric}": values.get("test"), "note": note, "run_dir": run_dir})

    for candidate in challengers:
        if lower_is_better(metric) and not candidate.rating_model:
            add("challenger", candidate.model_name, str(candidate.run_dir), {},
                f"not comparable: predicts no ratings for {metric}")
            continue
        scores[str(candidate.run_dir)] = measure(candidate, data, metric, recall_users)
    decided_on = "valid" if data.valid.nnz else "test"
    if not scores:
        return Decision(name, False, f"no challenger can be measured by {metric}", metric, decided_on, margin,
                        None, champion_run, champion_version, rows)
    best = min(scores, key=lambda r: scores[r][decided_on] * (1 if lower_is_better(metric) else -1))
    by_run = {str(c.run_dir): c for c in challengers}
    for run_dir, values in scores.items():
        add("challenger", by_run[run_dir].model_name, run_dir, values,
            "best challenger" if run_dir == best else "not the best challenger")

    baselines = {}
    for label, baseline in fit_baselines(data.train).items():
        if lower_is_better(metric) and not baseline.rating_model:
            continue
        baselines[label] = measure(baseline, data, metric, recall_users)
        add("baseline", label, None, baselines[label])
    mine = scores[best][decided_on]
    beaten = [b for b, values in baselines.items() if _better(values[decided_on], mine, metric)]

    decision = Decision(name, False, "", metric, decided_on, margin, best, champion_run, champion_version, rows)
    champion_value = None
    if champion_pointer is not None and Path(champion_run).resolve() == Path(best).resolve():
        decision.reason = "the best challenger is the champion's own run"
        return decision
    if champion_pointer is not None:
        try:
            champion = OnNewSplit(ServableModel(champion_run, device), data)
        except RecsysError as err:
            champion = None
            rows.insert(0, {"role": "champion", "model": champion_pointer.get("model"), "run_dir": champion_run,
                            "note": f"cannot be loaded: {err}"})
        if champion is not None:
            decision.coverage = champion.coverage()
            values = measure(champion, data, metric, recall_users)
            champion_value = values[decided_on]
            cov = decision.coverage
            note = (f"version {champion_version}; new users folded in {cov['users_new_folded_in']}, by fallback "
                    f"{cov['users_new_fallback']}; new items {cov['items_new']}")
            rows.insert(0, {"role": "champion", "model": champion_pointer.get("model"), f"valid {metric}":
                            values.get("valid"), f"test {metric}": values.get("test"), "note": note,
                            "run_dir": champion_run})
    where = f"{decided_on} {metric}"
    if beaten:
        decision.reason = (f"{by_run[best].model_name} ({where} {mine:.4f}) loses to "
                           + ", ".join(f"{b} ({baselines[b][decided_on]:.4f})" for b in beaten))
    elif champion_pointer is None:
        decision.promoted = True
        decision.reason = f"first champion: {by_run[best].model_name} ({where} {mine:.4f}) beats every baseline"
    elif champion_value is None:
        decision.promoted = True
        decision.reason = (f"the champion (version {champion_version}) cannot be loaded; {by_run[best].model_name} "
                           f"({where} {mine:.4f}) beats every baseline")
    else:
        gain = improvement(mine, champion_value, metric)
        versus = (f"{by_run[best].model_name} {where} {mine:.4f} vs champion version {champion_version} "
                  f"{champion_value:.4f} ({gain:+.2%}, margin {margin:.2%})")
        decision.promoted = gain > margin
        verdict = "better than the champion: " if decision.promoted else "not better than the champion by the margin: "
        decision.reason = verdict + versus
    return decision


def promote_if_better(registry: Registry, name: str, run_dirs: list[str], *, margin: float = DEFAULT_MARGIN,
                      k: int = 10, recall_users: int = DEFAULT_RECALL_USERS, device: str = "cpu",
                      by: str = "flow", split_stats: str | Path | None = None) -> Decision:
    """``decide``, then record it: a promotion moves the champion pointer, a rejection is a history line.

    The comparison runs without the writer lock (it takes minutes at full scale); the promotion then
    checks, under the lock, that the champion is still the one compared against, so two runs deciding
    at once cannot both promote against the same champion."""
    champion = registry.champion(name)
    candidates = sorted(str(Path(r).resolve()) for r in run_dirs)
    earlier = _earlier_rejection(name, registry.history(name), candidates, champion, margin)
    if earlier is not None:
        return earlier
    decision = decide(name, champion, candidates, margin=margin, k=k, recall_users=recall_users, device=device)
    summary = {"metric": decision.metric, "decided_on": decision.decided_on, "margin": margin,
               "rows": decision.rows, "coverage": decision.coverage, "candidates": candidates}
    if decision.challenger is None or (champion and decision.challenger == champion.get("run_dir")):
        return decision  # nothing new was compared: no history line
    if decision.promoted:
        event = registry.promote(name, decision.challenger, decision.reason, by=by, primary_metric=decision.metric,
                                 decision=summary, expected_champion=(champion or {}).get("version"),
                                 split_stats=split_stats)
        decision.version = event["version"]
    else:
        registry.reject(name, decision.challenger, decision.reason, by=by, decision=summary, split_stats=split_stats)
    log.info(decision.line())
    return decision


def _earlier_rejection(name: str, history: list[dict], candidates: list[str], champion: dict | None,
                       margin: float) -> Decision | None:
    """The same runs already rejected against the same champion with the same margin (a scheduled run
    with nothing retrained): that decision again, without evaluating or recording anything."""
    champion_version = (champion or {}).get("version")
    for event in reversed(history):
        summary = event.get("decision") or {}
        if (event["event"] == "rejected" and summary.get("candidates") == candidates
                and event.get("champion_version") == champion_version and summary.get("margin") == margin):
            return Decision(name, False, f"already kept out on {event['time']}: {event['reason']}",
                            summary.get("metric", ""), summary.get("decided_on", ""), margin, event["run_dir"],
                            (champion or {}).get("run_dir"), champion_version, summary.get("rows", []),
                            summary.get("coverage"))
        if event["event"] in ("promoted", "rolled_back"):
            return None
    return None
