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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from recsys_core.baselines import fit_baselines
from recsys_core.errors import RecsysError
from recsys_core.evaluation import full_catalogue_recall, rating_metrics
from recsys_core.interactions import rating_range
from recsys_core.records import ChampionPointer, Coverage, DecisionRow, HistoryEntry, PromotionSummary
from recsys_core.registry import Registry
from recsys_core.serving.model_access import ServableModel

log = logging.getLogger("recsys_core.promotion")

DEFAULT_MARGIN = 0.001
DEFAULT_RECALL_USERS = 5000


def primary_metric(rating_model: bool, k: int) -> str:
    return "rmse" if rating_model else f"recall@{k}"


def lower_is_better(metric: str) -> bool:
    return metric in ("rmse", "mae")


def _k_of(metric: str) -> int:
    """K of a top-K metric ("recall@10" -> 10)."""
    return int(metric.split("@")[1])


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

    def coverage(self) -> Coverage:
        """How many users and items of the new split the model knows, folds in, or answers by fallback."""
        active = np.diff(self.data.train.indptr) > 0
        unknown = active & (self.old_rows < 0)
        fallback = {}
        for part in ("valid", "test"):
            matrix = getattr(self.data, part)
            rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
            scorable = (self.old_cols[matrix.indices] >= 0) & ((self.old_rows[rows] >= 0) | self.fold[rows])
            fallback[part] = int((~scorable).sum())
        return Coverage(users=int(active.sum()), users_known=int((active & (self.old_rows >= 0)).sum()),
                        users_new_folded_in=int((unknown & self.fold).sum()),
                        users_new_fallback=int((unknown & ~self.fold).sum()), items=int(self.data.n_items),
                        items_new=int((self.old_cols < 0).sum()), valid_pairs_fallback=fallback["valid"],
                        test_pairs_fallback=fallback["test"])

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


@dataclass(frozen=True)
class Decision:
    """A comparison of challengers with the champion and the baselines on the newest split, and its verdict."""

    name: str
    promoted: bool
    reason: str
    metric: str
    decided_on: str                        # "valid" or "test"
    margin: float
    challenger: str | None                 # run folder of the chosen challenger
    champion: str | None                   # run folder of the champion before the decision
    champion_version: int | None
    rows: tuple[DecisionRow, ...] = ()     # the table: champion, challengers, baselines
    coverage: Coverage | None = None       # the champion on the new split
    version: int | None = None             # the new champion's version when promoted
    champion_error: str | None = None      # why the champion could not be loaded or measured

    def line(self) -> str:
        """One line for the run summary."""
        if self.promoted:
            verdict = f"PROMOTED as version {self.version}" if self.version else "better (not recorded)"
        elif self.champion is None:  # nothing to keep: say that nothing is served yet
            return f"registry {self.name}: no champion yet: {self.reason}; nothing promoted"
        else:
            verdict = "KEPT the champion"
        return f"registry {self.name}: {verdict}: {self.reason}"

    def table(self) -> list[dict]:
        """The rows as a table (values under "valid <metric>" and "test <metric>")."""
        return [row.to_json(self.metric) for row in self.rows]

    def summary(self, candidates: list[str]) -> PromotionSummary:
        """What the registry's history records of the decision."""
        return PromotionSummary(self.metric, self.decided_on, self.margin, self.rows, self.coverage,
                                tuple(candidates), self.champion_error)

    def as_dict(self) -> dict:
        """The decision as JSON (its table as ``table``), with its ``line``."""
        return {**{name: getattr(self, name) for name in self.__dataclass_fields__}, "rows": self.table(),
                "coverage": self.coverage.to_json() if self.coverage else None, "line": self.line()}


def _better(a: float | None, b: float | None, metric: str) -> bool:
    if a is None or b is None:
        return False
    return a < b if lower_is_better(metric) else a > b


def _same_folder(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


@dataclass(frozen=True)
class _Measured:
    """A challenger or baseline measured on the newest split."""

    label: str
    run_dir: str | None
    valid: float | None
    test: float | None

    def on(self, part: str) -> float | None:
        return self.valid if part == "valid" else self.test

    def deciding(self, part: str) -> float:
        """The value on the part that decides, which the split has (so every challenger has a value there)."""
        value = self.on(part)
        assert value is not None, f"{self.label} has no value on {part}"
        return value

    def row(self, role, note: str = "") -> DecisionRow:
        return DecisionRow(role, self.label, self.valid, self.test, note, self.run_dir)


@dataclass(frozen=True)
class _ChampionOnSplit:
    """The champion re-measured on the newest split, or why it could not be."""

    row: DecisionRow
    value: float | None = None             # on the part that decides; None when it cannot be loaded
    coverage: Coverage | None = None
    error: str | None = None


def _load_challengers(name: str, run_dirs: list[str], device: str) -> list:
    """The challengers as ``ServableModel``s; RecsysError unless all were trained on one split."""
    challengers = [ServableModel(run_dir, device) for run_dir in dict.fromkeys(run_dirs)]
    data = challengers[0].data
    for other in challengers[1:]:
        if not _same_folder(other.data.path, data.path):
            raise RecsysError(f"the challengers of {name} were trained on different splits "
                              f"({data.path} and {other.data.path}); give runs of one split")
    return challengers


def _measure_challengers(challengers, data, metric: str,
                         recall_users: int) -> tuple[list[_Measured], list[DecisionRow]]:
    """(the challengers measured by ``metric``, rows of those that cannot be: ranking models by RMSE)."""
    measured, refused = [], []
    for candidate in challengers:
        if lower_is_better(metric) and not candidate.rating_model:
            refused.append(DecisionRow("challenger", candidate.model_name, None, None,
                                       f"not comparable: predicts no ratings for {metric}", str(candidate.run_dir)))
            continue
        values = measure(candidate, data, metric, recall_users)
        measured.append(_Measured(candidate.model_name, str(candidate.run_dir), values["valid"], values["test"]))
    return measured, refused


def _measure_baselines(data, metric: str, recall_users: int) -> list[_Measured]:
    """The baselines fitted on the newest split's train part that can be measured by ``metric``."""
    out = []
    for label, baseline in fit_baselines(data.train).items():
        if lower_is_better(metric) and not baseline.rating_model:
            continue
        values = measure(baseline, data, metric, recall_users)
        out.append(_Measured(label, None, values["valid"], values["test"]))
    return out


def _measure_champion(name: str, champion: ChampionPointer, data, metric: str, decided_on: str,
                      recall_users: int, device: str) -> _ChampionOnSplit:
    """The champion's own weights mapped onto the newest split (``OnNewSplit``) and measured.

    Any failure of loading or re-measuring it (a missing folder, a corrupt model.pt that torch cannot
    unpickle, weights of the wrong shape) makes it unreadable, not the comparison: the reason is recorded
    and the best valid challenger that beats the baselines replaces it."""
    try:
        mapped = OnNewSplit(ServableModel(champion.run_dir, device), data)
        coverage = mapped.coverage()
        values = measure(mapped, data, metric, recall_users)
    except Exception as err:  # every failure means the same: the champion cannot answer
        error = str(err) if isinstance(err, RecsysError) else f"{type(err).__name__}: {err}"
        log.warning("registry %s: champion version %s (%s) cannot be loaded or measured: %s", name,
                    champion.version, champion.run_dir, error)
        return _ChampionOnSplit(DecisionRow("champion", champion.run.model, None, None,
                                            f"cannot be loaded: {error}", champion.run_dir), error=error)
    note = (f"version {champion.version}; new users folded in {coverage.users_new_folded_in}, by fallback "
            f"{coverage.users_new_fallback}; new items {coverage.items_new}")
    row = DecisionRow("champion", champion.run.model, values.get("valid"), values.get("test"), note,
                      champion.run_dir)
    return _ChampionOnSplit(row, values[decided_on], coverage)


def _verdict(best: _Measured, beaten: list[_Measured], champion: ChampionPointer | None,
             on_split: _ChampionOnSplit | None, decided_on: str, metric: str, margin: float) -> tuple[bool, str]:
    """(promoted, why): no baseline may beat the best challenger; then it must beat the champion by the
    margin, unless there is none or it cannot be loaded."""
    where = f"{decided_on} {metric}"
    mine = best.deciding(decided_on)
    if beaten:
        return False, (f"{best.label} ({where} {mine:.4f}) loses to "
                       + ", ".join(f"{b.label} ({b.on(decided_on):.4f})" for b in beaten))
    if champion is None:
        return True, f"first champion: {best.label} ({where} {mine:.4f}) beats every baseline"
    if on_split is None or on_split.value is None:
        error = on_split.error if on_split else None
        return True, (f"the champion (version {champion.version}) cannot be loaded ({error}); {best.label} "
                      f"({where} {mine:.4f}) beats every baseline")
    gain = improvement(mine, on_split.value, metric)
    versus = (f"{best.label} {where} {mine:.4f} vs champion version {champion.version} "
              f"{on_split.value:.4f} ({gain:+.2%}, margin {margin:.2%})")
    if gain > margin:
        return True, "better than the champion: " + versus
    return False, "not better than the champion by the margin: " + versus


def decide(name: str, champion: ChampionPointer | None, run_dirs: list[str], *, margin: float = DEFAULT_MARGIN,
           k: int = 10, recall_users: int = DEFAULT_RECALL_USERS, device: str = "cpu") -> Decision:
    """Compare the challengers (trained on one split) with the champion and the baselines; decides, records nothing."""
    if not run_dirs:
        raise RecsysError(f"no trained run to compare for registry model {name}")
    champion_run = champion.run_dir if champion else None
    champion_version = champion.version if champion else None
    if champion is not None and {Path(r).resolve() for r in run_dirs} == {Path(champion.run_dir).resolve()}:
        return Decision(name, promoted=False, reason="the challenger is the champion's own run (nothing was retrained)",
                        metric=champion.primary_metric or "", decided_on="", margin=margin, challenger=champion_run,
                        champion=champion_run, champion_version=champion_version)

    challengers = _load_challengers(name, run_dirs, device)
    data = challengers[0].data
    metric = (champion.primary_metric if champion else None) or primary_metric(
        all(c.rating_model for c in challengers), k)
    decided_on = "valid" if data.valid.nnz else "test"
    measured, refused = _measure_challengers(challengers, data, metric, recall_users)
    if not measured:
        return Decision(name, promoted=False, reason=f"no challenger can be measured by {metric}", metric=metric,
                        decided_on=decided_on, margin=margin, challenger=None, champion=champion_run,
                        champion_version=champion_version, rows=tuple(refused))

    sign = 1 if lower_is_better(metric) else -1
    best = min(measured, key=lambda m: m.deciding(decided_on) * sign)   # the first of equals, as listed
    baselines = _measure_baselines(data, metric, recall_users)
    rows = refused + [m.row("challenger", "best challenger" if m is best else "not the best challenger")
                      for m in measured] + [b.row("baseline") for b in baselines]
    decision = Decision(name, promoted=False, reason="", metric=metric, decided_on=decided_on, margin=margin,
                        challenger=best.run_dir, champion=champion_run, champion_version=champion_version,
                        rows=tuple(rows))
    if champion is not None and _same_folder(champion.run_dir, best.run_dir or ""):
        return replace(decision, reason="the best challenger is the champion's own run")

    on_split = None if champion is None else _measure_champion(name, champion, data, metric, decided_on,
                                                                recall_users, device)
    if on_split is not None:
        rows.insert(0, on_split.row)   # the champion's row heads the table
    beaten = [b for b in baselines if _better(b.on(decided_on), best.on(decided_on), metric)]
    promoted, reason = _verdict(best, beaten, champion, on_split, decided_on, metric, margin)
    return replace(decision, promoted=promoted, reason=reason, rows=tuple(rows),
                   coverage=on_split.coverage if on_split else None,
                   champion_error=on_split.error if on_split else None)


def promote_if_better(registry: Registry, name: str, run_dirs: list[str], *, margin: float = DEFAULT_MARGIN,
                      k: int = 10, recall_users: int = DEFAULT_RECALL_USERS, device: str = "cpu",
                      by: str = "flow", split_stats: str | Path | None = None) -> Decision:
    """``decide``, then record it: a promotion moves the champion pointer, a rejection is a history line.

    The comparison runs without the writer lock (it takes minutes at full scale); the promotion then
    checks, under the lock, that the champion is still the one compared against, so two runs deciding
    at once cannot both promote against the same champion."""
    try:
        champion = registry.champion(name)
    except RecsysError:  # a damaged pointer: rebuilt from the history (recorded there), then compared
        champion = registry.repair(name)
    candidates = sorted(str(Path(r).resolve()) for r in run_dirs)
    earlier = _earlier_rejection(name, registry.history(name), candidates, champion, margin)
    if earlier is not None:
        return earlier
    decision = decide(name, champion, candidates, margin=margin, k=k, recall_users=recall_users, device=device)
    if decision.challenger is None or (champion and decision.challenger == champion.run_dir):
        return decision  # nothing new was compared: no history line
    if decision.promoted:
        event = registry.promote(name, decision.challenger, decision.reason, by=by, primary_metric=decision.metric,
                                 decision=decision.summary(candidates),
                                 expected_champion=champion.version if champion else None, split_stats=split_stats)
        decision = replace(decision, version=event.version)
    else:
        registry.reject(name, decision.challenger, decision.reason, by=by, decision=decision.summary(candidates),
                        split_stats=split_stats)
    log.info(decision.line())
    return decision


def _earlier_rejection(name: str, history: list[HistoryEntry], candidates: list[str],
                       champion: ChampionPointer | None, margin: float) -> Decision | None:
    """The same runs already rejected against the same champion with the same margin (a scheduled run
    with nothing retrained): that decision again, without evaluating or recording anything."""
    champion_version = champion.version if champion else None
    for event in reversed(history):
        summary = event.decision
        if (event.event == "rejected" and summary is not None and list(summary.candidates) == candidates
                and event.champion_version == champion_version and summary.margin == margin):
            return Decision(name, promoted=False, reason=f"already kept out on {event.time}: {event.reason}",
                            metric=summary.metric, decided_on=summary.decided_on, margin=margin,
                            challenger=event.run_dir, champion=champion.run_dir if champion else None,
                            champion_version=champion_version, rows=summary.rows, coverage=summary.coverage)
        if event.moves_the_champion:
            return None
    return None
