"""Typed records that cross modules: the champion registry's pointer and history entries, the promotion's
decision rows, a stage's result and the pipeline's run report.

JSON stays the on-disk format. Each record is read from JSON (``from_json``) and written to it
(``to_json``) here and nowhere else, and reads what every earlier version of the code wrote (a key that
an older file lacks reads as None; tests/test_records.py loads a registry and run folders written before
these records existed). The run folder's records (config, metrics, files) are in ``recsys_core.runs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

# Metrics of a model as the registry records them: {"valid": {"rmse": 0.9, ...}, "test": {...}}
PartMetrics = Mapping[str, Any]
Metrics = Mapping[str, PartMetrics]

EventKind = Literal["promoted", "rejected", "rolled_back", "pointer_rebuilt"]
MOVES_THE_CHAMPION = ("promoted", "rolled_back")


def finite(obj: Any) -> Any:
    """JSON has no NaN: null instead (history lines and pointers must stay valid JSON)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _int_or_none(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- the champion registry


@dataclass(frozen=True)
class TrainedOn:
    """First and last date of a run's training ratings, from its split's ``stats.json``."""

    first_date: str | None
    last_date: str | None
    ratings: int | None
    stats: str | None                      # the stats.json they were read from

    @classmethod
    def from_json(cls, obj) -> TrainedOn | None:
        if not isinstance(obj, dict):
            return None
        return cls(obj.get("first_date"), obj.get("last_date"), obj.get("ratings"), obj.get("stats"))

    def to_json(self) -> dict:
        return {"first_date": self.first_date, "last_date": self.last_date, "ratings": self.ratings,
                "stats": self.stats}


@dataclass(frozen=True)
class RunFacts:
    """What the registry records about a verified run folder (``registry.verify_run``)."""

    run_dir: str
    model: str | None
    split_dir: str | None
    model_sha256: str | None               # of model.pt when verified: the service refuses other weights
    metrics: Metrics                       # the run's own valid/test metrics
    data_key: str | None                   # content key of the data it was trained on (None: unknown)
    code_key: str | None                   # content key of the code that trained it (None: unknown)
    trained_on: TrainedOn | None

    @classmethod
    def from_json(cls, obj: Mapping) -> RunFacts:
        return cls(run_dir=obj.get("run_dir") or "", model=obj.get("model"), split_dir=obj.get("split_dir"),
                   model_sha256=obj.get("model_sha256"), metrics=obj.get("metrics") or {},
                   data_key=obj.get("data_key"), code_key=obj.get("code_key"),
                   trained_on=TrainedOn.from_json(obj.get("trained_on")))

    def to_json(self) -> dict:
        return {"run_dir": self.run_dir, "model": self.model, "split_dir": self.split_dir,
                "model_sha256": self.model_sha256, "metrics": dict(self.metrics), "data_key": self.data_key,
                "code_key": self.code_key, "trained_on": self.trained_on.to_json() if self.trained_on else None}

    def value(self, part: str, metric: str | None):
        """The run's ``metric`` on ``part`` (valid or test), None when it has none."""
        return (self.metrics.get(part) or {}).get(metric) if metric else None


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a registry model's ``history.jsonl``: a promotion, rejection, rollback or pointer rebuild.

    ``version``: the champion version the event made current (promoted, rolled_back, pointer_rebuilt) or
    None (rejected). ``previous_version`` (promoted), ``champion_version`` (rejected) and ``from_version``
    (rolled_back): the champion when it happened; ``decision``: the comparison that led to it (the flow's
    promotions and rejections)."""

    time: str
    event: EventKind
    version: int | None
    run: RunFacts
    reason: str
    by: str
    primary_metric: str | None = None
    previous_version: int | None = None
    champion_version: int | None = None
    from_version: int | None = None
    decision: PromotionSummary | None = None

    @property
    def run_dir(self) -> str:
        return self.run.run_dir

    @property
    def moves_the_champion(self) -> bool:
        return self.event in MOVES_THE_CHAMPION

    @classmethod
    def from_json(cls, obj: Mapping) -> HistoryEntry:
        event, decision = obj["event"], obj.get("decision")

        def only_for(kind: str, key: str) -> int | None:   # a rollback once copied its target's previous_version
            return _int_or_none(obj.get(key)) if event == kind else None

        return cls(time=obj.get("time") or "", event=event, version=_int_or_none(obj.get("version")),
                   run=RunFacts.from_json(obj), reason=obj.get("reason") or "", by=obj.get("by") or "",
                   primary_metric=obj.get("primary_metric"),
                   previous_version=only_for("promoted", "previous_version"),
                   champion_version=only_for("rejected", "champion_version"),
                   from_version=only_for("rolled_back", "from_version"),
                   decision=PromotionSummary.from_json(decision) if isinstance(decision, dict) else None)

    def to_json(self) -> dict:
        """The history line (keys each kind of event has always had; NaN written as null)."""
        out: dict[str, Any] = {"time": self.time, "event": self.event, "version": self.version,
                               **self.run.to_json(), "primary_metric": self.primary_metric,
                               "reason": self.reason, "by": self.by}
        if self.event == "promoted":
            out["previous_version"] = self.previous_version
        elif self.event == "rejected":
            out["champion_version"] = self.champion_version
        elif self.event == "rolled_back":
            out["from_version"] = self.from_version
        if self.decision is not None:
            out["decision"] = self.decision.to_json()
        return finite(out)


@dataclass(frozen=True)
class ChampionPointer:
    """``champion.json``: which run folder serves a registry model, as what version, with what metrics."""

    name: str
    version: int
    run: RunFacts
    primary_metric: str | None
    reason: str | None
    promoted_at: str | None                # when the version it points at was promoted (or rolled back to)
    updated_at: str | None                 # when the pointer was written
    event: str | None                      # the history event that wrote it

    @property
    def run_dir(self) -> str:
        return self.run.run_dir

    @classmethod
    def of(cls, name: str, entry: HistoryEntry, promoted_at: str, updated_at: str) -> ChampionPointer:
        """The pointer a history entry that moves the champion implies."""
        assert entry.version is not None, "only an event with a version moves the champion"
        return cls(name, entry.version, entry.run, entry.primary_metric, entry.reason, promoted_at, updated_at,
                   entry.event)

    @staticmethod
    def problem(obj) -> str | None:
        """What makes a parsed ``champion.json`` unusable, or None."""
        if not isinstance(obj, dict):
            return f"a JSON {type(obj).__name__}, not an object"
        version = obj.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            return f"version {version!r} is not a positive integer"
        if not isinstance(obj.get("run_dir"), str) or not obj["run_dir"]:
            return f"run_dir {obj.get('run_dir')!r} is not a folder path"
        return None

    @classmethod
    def from_json(cls, obj) -> ChampionPointer:
        """The pointer; ValueError (the ``problem``) when ``obj`` is not one."""
        problem = cls.problem(obj)
        if problem:
            raise ValueError(problem)
        return cls(name=obj.get("name") or "", version=obj["version"], run=RunFacts.from_json(obj),
                   primary_metric=obj.get("primary_metric"), reason=obj.get("reason"),
                   promoted_at=obj.get("promoted_at"), updated_at=obj.get("updated_at"), event=obj.get("event"))

    def to_json(self) -> dict:
        run = self.run.to_json()
        return finite({"version": self.version, "run_dir": run.pop("run_dir"), "model": run.pop("model"),
                       "split_dir": run.pop("split_dir"), "model_sha256": run.pop("model_sha256"),
                       "primary_metric": self.primary_metric, **run, "reason": self.reason, "name": self.name,
                       "promoted_at": self.promoted_at, "updated_at": self.updated_at, "event": self.event})


# --------------------------------------------------------------------------- the promotion's decision


Role = Literal["champion", "challenger", "baseline"]


@dataclass(frozen=True)
class DecisionRow:
    """One line of a promotion's table: the champion, a challenger or a baseline on the newest split."""

    role: Role
    model: str | None
    valid: float | None                    # the primary metric on the valid part (None: not measured)
    test: float | None
    note: str = ""
    run_dir: str | None = None             # None for a baseline

    def to_json(self, metric: str) -> dict:
        """The row as tables and history.jsonl show it: the values under "valid <metric>", "test <metric>"."""
        return {"role": self.role, "model": self.model, f"valid {metric}": self.valid,
                f"test {metric}": self.test, "note": self.note, "run_dir": self.run_dir}

    @classmethod
    def from_json(cls, obj: Mapping, metric: str) -> DecisionRow:
        return cls(obj.get("role", "challenger"), obj.get("model"), obj.get(f"valid {metric}"),
                   obj.get(f"test {metric}"), obj.get("note") or "", obj.get("run_dir"))


@dataclass(frozen=True)
class Coverage:
    """How many users and items of the new split the champion knows, folds in, or answers by fallback
    (``promotion.OnNewSplit.coverage``)."""

    users: int
    users_known: int
    users_new_folded_in: int
    users_new_fallback: int
    items: int
    items_new: int
    valid_pairs_fallback: int
    test_pairs_fallback: int

    @classmethod
    def from_json(cls, obj) -> Coverage | None:
        if not isinstance(obj, dict):
            return None
        return cls(**{name: int(obj.get(name) or 0) for name in cls.__dataclass_fields__})

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class PromotionSummary:
    """A comparison as a history entry records it (its ``decision``): on what, against what, the table."""

    metric: str
    decided_on: str                        # "valid" or "test"
    margin: float
    rows: tuple[DecisionRow, ...] = ()
    coverage: Coverage | None = None
    candidates: tuple[str, ...] = ()       # every challenger's run folder, resolved and sorted
    champion_error: str | None = None

    @classmethod
    def from_json(cls, obj: Mapping) -> PromotionSummary:
        metric = obj.get("metric") or ""
        return cls(metric, obj.get("decided_on") or "", obj.get("margin", math.nan),  # nan: equals no margin
                   tuple(DecisionRow.from_json(row, metric) for row in obj.get("rows") or []),
                   Coverage.from_json(obj.get("coverage")), tuple(obj.get("candidates") or ()),
                   obj.get("champion_error"))

    def to_json(self) -> dict:
        return {"metric": self.metric, "decided_on": self.decided_on, "margin": self.margin,
                "rows": [row.to_json(self.metric) for row in self.rows],
                "coverage": self.coverage.to_json() if self.coverage else None,
                "candidates": list(self.candidates), "champion_error": self.champion_error}


# --------------------------------------------------------------------------- the pipeline


StageStatus = Literal["built", "reused", "cached", "failed"]  # cached: Prefect's verdict; failed: a sweep trial


@dataclass(frozen=True)
class StageResult:
    """What running one stage did: built its output, or reused one a concurrent or earlier run completed."""

    stage: str
    key: str                               # the output's content key
    status: StageStatus
    elapsed_s: float | None                # seconds the build took (for "reused": the original build's)

    def to_json(self) -> dict:
        return {"stage": self.stage, "key": self.key, "status": self.status, "elapsed_s": self.elapsed_s}

    @classmethod
    def from_json(cls, obj: Mapping) -> StageResult:
        return cls(obj["stage"], obj["key"], obj["status"], obj.get("elapsed_s"))


@dataclass(frozen=True)
class StageRow:
    """One stage of a pipeline run as its report shows it."""

    stage: str                             # "convert", or "train N3M/mf" for a training
    status: StageStatus
    seconds: float
    output: str                            # the stage's output folder

    def to_json(self) -> dict:
        return {"stage": self.stage, "status": self.status, "seconds": self.seconds, "output": self.output}

    @classmethod
    def from_json(cls, obj: Mapping) -> StageRow:
        return cls(obj["stage"], obj["status"], obj.get("seconds") or 0.0, obj.get("output") or "")


Table = list[dict]   # rows of a report table: column -> value, every row of one table with the same meaning


@dataclass(frozen=True)
class RunReport:
    """What a pipeline run tells its user (``flows/full.py``'s result, ``--report-json``): the stages with
    their status, then, as far as the run went, split statistics, test metrics, where models lose, sweep
    trials, the Prize comparison, every run of the data dir, the registry's decisions and artifact paths.
    A part the run did not reach is None (absent from the JSON)."""

    source: str
    data_dir: str
    stages: tuple[StageRow, ...] = ()
    split_stats: Table = field(default_factory=list)
    metrics: Table = field(default_factory=list)
    artifacts: Mapping[str, str] = field(default_factory=dict)
    split_warnings: list[str] | None = None
    buckets: Table | None = None
    sweep: Table | None = None
    sweep_chosen: Table | None = None
    prize: Table | None = None
    prize_note: str | None = None
    runs: Table | None = None
    promotion: list[str] | None = None     # one line per registry decision

    _OPTIONAL = ("split_warnings", "buckets", "sweep", "sweep_chosen", "prize", "prize_note", "runs", "promotion")

    @classmethod
    def from_json(cls, obj: Mapping) -> RunReport:
        return cls(source=obj["source"], data_dir=obj["data_dir"],
                   stages=tuple(StageRow.from_json(row) for row in obj.get("stages") or []),
                   split_stats=list(obj.get("split_stats") or []), metrics=list(obj.get("metrics") or []),
                   artifacts=dict(obj.get("artifacts") or {}), **{name: obj.get(name) for name in cls._OPTIONAL})

    def to_json(self) -> dict:
        out: dict[str, Any] = {"source": self.source, "data_dir": self.data_dir,
                               "stages": [row.to_json() for row in self.stages], "split_stats": self.split_stats,
                               "metrics": self.metrics}
        out.update({name: getattr(self, name) for name in self._OPTIONAL if getattr(self, name) is not None})
        out["artifacts"] = dict(self.artifacts)
        return out
