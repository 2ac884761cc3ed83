"""Hyperparameter sweeps: a search space over a model's options, a trial budget, a seed and a sampler (grid,
random or Optuna's TPE), selection on the VALID metric only, median pruning of hopeless trials per epoch.

A sweep is declared as one object (a YAML or JSON file, or the flow's ``sweep`` parameter)::

    trials: 16            # defaults for every model below (each may override them)
    sampler: tpe          # grid | random | tpe
    seed: 0
    batch: 4              # trials asked per round (see "Rounds")
    prune: {startup_trials: 4, warmup_epochs: 3}     # or false
    models:
      mf:                 # "default" or {} = the model's shipped space (its options class's sweep_space)
        space:
          dim: {choices: [8, 16, 32, 64]}
          lr: {low: 0.0005, high: 0.01, log: true}
          l2: {low: 0.001, high: 0.1, log: true}
        fixed: {epochs: 30}

Every range and choice is checked against the model's option class (``describe()``: kind, choices, bounds)
before any work, with one sentence naming the model and the option.

Rounds. Trials are asked ``batch`` at a time; a round's trials run concurrently (on any task runner) and
are told to the sampler together, in trial order, before the next round is asked. What a trial gets (its
options and its pruning thresholds) therefore depends only on the trials of earlier rounds, never on which
finished first: the same seed gives the same trials and the same metrics sequentially and on Dask, and a
re-run (or a killed sweep run again) asks the same trials, which the content-keyed cache has finished.

Pruning (Optuna's median rule, evaluated here so it needs no shared study storage): once ``startup_trials``
trials have completed, a trial stops after epoch e > ``warmup_epochs`` when its best valid metric so far is
worse than the median of the completed trials' valid metric at epoch e. The medians are computed from
earlier rounds when the trial is asked, travel with the trial (and into its cache key), and the training
loop's ``on_epoch`` hook applies them. A pruned trial is an ordinary run folder whose metrics.json says
``pruned_at_epoch``; it is never chosen.

Selection: the complete trial with the best VALID metric (RMSE for rating models, Recall@K on valid for
ranking models), ties to the earlier trial. Test metrics are reported for every trial and never read to
choose.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import polars as pl
import yaml

from recsys_core import models as catalogue
from recsys_core.errors import RecsysError
from recsys_core.io import atomic_file, write_json
from recsys_core.options import OptionInfo, _checked
from recsys_core.runs import HISTORY, METRICS, RunFolder
from recsys_core.settings import RunSettings, split_legacy

log = logging.getLogger("recsys_core")

SAMPLERS = ("grid", "random", "tpe")
DEFAULTS = {"trials": 16, "sampler": "tpe", "seed": 0, "batch": 4,
            "prune": {"startup_trials": 4, "warmup_epochs": 3}}
_TOP_KEYS = {"trials", "sampler", "seed", "batch", "prune", "models"}
_MODEL_KEYS = {"trials", "sampler", "seed", "batch", "prune", "space", "fixed"}
_PARAM_KEYS = {"choices", "low", "high", "log", "step"}
_PRUNE_KEYS = {"startup_trials", "warmup_epochs"}
MAX_GRID = 10_000

COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"


# --------------------------------------------------------------------------- the declaration


@dataclass(frozen=True)
class Param:
    """One searched option: ``choices`` or a ``low``..``high`` range (``log`` scale, ``step``)."""

    name: str
    kind: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def as_dict(self) -> dict:
        if self.choices is not None:
            return {"choices": [list(c) if isinstance(c, tuple) else c for c in self.choices]}
        out = {"low": self.low, "high": self.high, "log": self.log}
        return out if self.step is None else {**out, "step": self.step}

    def bounds(self) -> tuple[float, float]:
        """``low``, ``high`` of a range."""
        if self.low is None or self.high is None:
            raise ValueError(f"{self.name} is searched over choices, not a range")
        return self.low, self.high

    def grid(self) -> list | None:
        """Every value of a grid over this parameter, or None when it has no finite grid."""
        if self.choices is not None:
            return list(self.choices)
        low, high = self.bounds()
        if self.kind == "int":
            step = int(self.step or 1)
            return list(range(int(low), int(high) + 1, step))
        if self.step is not None:
            count = int(math.floor((high - low) / self.step + 1e-9)) + 1
            return [round(low + i * self.step, 12) for i in range(count)]
        return None


@dataclass(frozen=True)
class Pruning:
    startup_trials: int = 4
    warmup_epochs: int = 3


@dataclass(frozen=True)
class ModelSweep:
    model: str
    space: tuple[Param, ...]
    fixed: dict
    trials: int
    sampler: str
    seed: int
    batch: int
    prune: Pruning | None
    # run settings a sweep file still gives among its fixed options (``recall_users: 50``), as before
    # RunSettings: accepted for one release with a deprecation line, applied to every trial's settings
    run_settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Canonical JSON form (what a sweep's identity is made of)."""
        out = {"model": self.model, "space": {p.name: p.as_dict() for p in self.space}, "fixed": self.fixed,
               "trials": self.trials, "sampler": self.sampler, "seed": self.seed, "batch": self.batch,
               "prune": None if self.prune is None else vars(self.prune)}
        return {**out, "run_settings": self.run_settings} if self.run_settings else out

    def settings(self, base: RunSettings) -> RunSettings:
        """``base`` with the run settings this sweep's file gave among its fixed options."""
        return base.replace(**self.run_settings) if self.run_settings else base


@dataclass(frozen=True)
class SweepSpec:
    models: dict[str, ModelSweep]

    def as_dict(self) -> dict:
        return {name: sweep.as_dict() for name, sweep in self.models.items()}


def load_sweep_file(path) -> dict:
    """The sweep object of a YAML (.yaml/.yml) or JSON file; one sentence naming the file when unreadable."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise RecsysError(f"{path}: cannot read the sweep file ({err.strerror or err})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            obj = yaml.safe_load(text)
        else:
            obj = json.loads(text)
    except Exception as err:  # yaml.YAMLError / ValueError: the parser names the line
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        line = err.lineno if isinstance(err, json.JSONDecodeError) else None if line is None else line + 1
        where = f", line {line}" if line else ""
        what = getattr(err, "problem", None) or getattr(err, "msg", None) or str(err)
        raise RecsysError(f"{path}{where}: not a valid sweep file ({what})") from None
    if not isinstance(obj, dict):
        raise RecsysError(f"{path}: a sweep file holds one object (trials, sampler, seed, models: ...), "
                          f"not {type(obj).__name__}")
    return obj


def parse_sweep(obj: Any, models: list[str] | None = None, seed: int = 0) -> SweepSpec:
    """Check a sweep object against the registered models' options; ``"default"`` sweeps ``models`` over
    their shipped spaces. ``seed`` is the sweep's seed where the object gives none."""
    if obj == "default":
        obj = {"models": {m: "default" for m in (models or [])}}
    if not isinstance(obj, Mapping):
        raise RecsysError(f"sweep must be an object (trials, sampler, seed, models: ...) or \"default\", got {obj!r}")
    _unknown("sweep", obj, _TOP_KEYS)
    top = {**DEFAULTS, "seed": seed, **{k: v for k, v in obj.items() if k != "models"}}
    declared = obj.get("models")
    if not isinstance(declared, Mapping) or not declared:
        raise RecsysError("sweep: models must map at least one model name to its search "
                          "(\"default\" or {space: ..., trials: ...})")
    result = {}
    for model, entry in declared.items():
        registration = catalogue.get(model)
        if entry in ("default", None):
            entry = {}
        if not isinstance(entry, Mapping):
            raise RecsysError(f"sweep: model {model} must be \"default\" or an object (space, fixed, trials, "
                              f"sampler, seed, batch, prune), got {entry!r}")
        _unknown(f"sweep: model {model}", entry, _MODEL_KEYS)
        settings = {**top, **{k: v for k, v in entry.items() if k not in ("space", "fixed")}}
        space = entry.get("space")
        if space is None:
            space = registration.options.sweep_space
            if not space:
                raise RecsysError(f"sweep: model {model} ships no default search space; declare its space")
        fixed, run_settings = split_legacy(entry.get("fixed"), where=f"the sweep's fixed options of {model}")
        result[model] = dataclasses.replace(_model_sweep(model, registration.options, space, fixed, settings),
                                            run_settings=run_settings)
    return SweepSpec(result)


def _unknown(where: str, obj: Mapping, allowed: set) -> None:
    stray = sorted(set(obj) - allowed)
    if stray:
        raise RecsysError(f"{where} has no setting {', '.join(map(str, stray))}; use {', '.join(sorted(allowed))}")


def _int_setting(where: str, name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RecsysError(f"{where}: {name} must be an integer of at least {low}, got {value!r}")
    return value


def _model_sweep(model: str, options_class, space, fixed: dict, settings: dict) -> ModelSweep:
    where = f"sweep: model {model}"
    if not isinstance(space, Mapping) or not space:
        raise RecsysError(f"{where}: space must map option names to {{choices: [...]}} or {{low, high, log}}")
    infos = {info.name: info for info in options_class.describe()}
    params = tuple(_param(model, name, spec, infos) for name, spec in space.items())
    overlap = sorted(set(fixed) & set(space))
    if overlap:
        raise RecsysError(f"{where}: {', '.join(overlap)} is both searched and fixed")
    options_class.resolve(fixed, model=model)  # a bad fixed option: the usual one sentence
    sampler = settings["sampler"]
    if sampler not in SAMPLERS:
        raise RecsysError(f"{where}: sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    trials = _int_setting(where, "trials", settings["trials"], 1)
    seed = _int_setting(where, "seed", settings["seed"], 0)
    batch = _int_setting(where, "batch", settings["batch"], 1)
    if sampler == "grid":
        grids = [p.grid() for p in params]
        flat = [p.name for p, g in zip(params, grids) if g is None]
        if flat:
            raise RecsysError(f"{where}: the grid sampler needs choices or a step for {', '.join(flat)}")
        size = math.prod(len(g or ()) for g in grids)
        if size > MAX_GRID:
            raise RecsysError(f"{where}: the grid has {size} points (at most {MAX_GRID}); use random or tpe")
        trials = min(trials, size)
    prune = settings["prune"]
    if prune in (False, None):
        pruning = None
    else:
        if prune is True:
            prune = DEFAULTS["prune"]
        if not isinstance(prune, Mapping):
            raise RecsysError(f"{where}: prune must be false or {{startup_trials: N, warmup_epochs: N}}, "
                              f"got {prune!r}")
        _unknown(f"{where}: prune", prune, _PRUNE_KEYS)
        merged = {**DEFAULTS["prune"], **prune}
        pruning = Pruning(_int_setting(where, "prune.startup_trials", merged["startup_trials"], 1),
                          _int_setting(where, "prune.warmup_epochs", merged["warmup_epochs"], 0))
    return ModelSweep(model, params, fixed, trials, sampler, seed, batch, pruning)


def _param(model: str, name: str, spec, infos: dict[str, OptionInfo]) -> Param:
    where = f"sweep: model {model}, option {name}"
    if name not in infos:
        raise RecsysError(f"sweep: model {model} has no option {name}; its options are {', '.join(sorted(infos))}")
    info = infos[name]
    if not isinstance(spec, Mapping):
        spec = {"choices": spec} if isinstance(spec, list) else spec
    if not isinstance(spec, Mapping):
        raise RecsysError(f"{where}: give {{choices: [...]}} or {{low: .., high: .., log: true}}, got {spec!r}")
    _unknown(where, spec, _PARAM_KEYS)
    if "choices" in spec:
        if set(spec) - {"choices"}:
            raise RecsysError(f"{where}: choices cannot be combined with {', '.join(sorted(set(spec) - {'choices'}))}")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise RecsysError(f"{where}: choices must be a non-empty list, got {choices!r}")
        checked = tuple(_checked(info, c, model) for c in choices)
        if len(set(checked)) != len(checked):
            raise RecsysError(f"{where}: choices repeat a value ({choices!r})")
        return Param(name, info.kind, choices=checked)
    if info.kind not in ("int", "float"):
        raise RecsysError(f"{where}: a {info.kind} option is searched over choices, not a range")
    if "low" not in spec or "high" not in spec:
        raise RecsysError(f"{where}: a range needs both low and high (or give choices)")
    low: Any = _checked(info, spec["low"], model)
    high: Any = _checked(info, spec["high"], model)
    if not low < high:
        raise RecsysError(f"{where}: low must be below high, got low {spec['low']!r} and high {spec['high']!r}")
    log_scale = spec.get("log", False)
    if not isinstance(log_scale, bool):
        raise RecsysError(f"{where}: log must be true or false, got {log_scale!r}")
    if log_scale and low <= 0:
        raise RecsysError(f"{where}: a log-scale range must start above 0, got low {spec['low']!r}")
    step: Any = spec.get("step")
    if step is not None:
        bad_type = isinstance(step, bool) or not isinstance(step, (int, float))
        if bad_type or step <= 0 or (info.kind == "int" and not isinstance(step, int)):
            raise RecsysError(f"{where}: step must be a positive {'integer' if info.kind == 'int' else 'number'}, "
                              f"got {step!r}")
        if log_scale:
            raise RecsysError(f"{where}: a range has a step or a log scale, not both")
    return Param(name, info.kind, low=low, high=high, log=log_scale, step=step)


# --------------------------------------------------------------------------- pruning


@dataclass(frozen=True)
class MedianRule:
    """Stop after epoch e (> ``warmup_epochs``) when the best valid so far is worse than ``medians[e - 1]``."""

    medians: tuple[float | None, ...]
    warmup_epochs: int
    higher_is_better: bool

    def as_dict(self) -> dict:
        return {"rule": "median", "medians": list(self.medians), "warmup_epochs": self.warmup_epochs,
                "higher_is_better": self.higher_is_better}

    @classmethod
    def from_dict(cls, obj: Mapping) -> "MedianRule":
        return cls(tuple(obj["medians"]), int(obj["warmup_epochs"]), bool(obj["higher_is_better"]))

    def callback(self):
        """The training loop's ``on_epoch`` hook applying this rule."""
        best: list[float] = []

        def on_epoch(epoch: int, valid: float | None) -> bool:
            if valid is None or not math.isfinite(valid):
                return False
            best.append(valid if not best else (max if self.higher_is_better else min)(best[-1], valid))
            if epoch <= self.warmup_epochs or epoch > len(self.medians):
                return False
            median = self.medians[epoch - 1]
            if median is None:
                return False
            return best[-1] < median if self.higher_is_better else best[-1] > median

        return on_epoch


def median_rule(curves: list[list[float | None]], pruning: Pruning, higher_is_better: bool) -> MedianRule | None:
    """The rule from the per-epoch valid curves of completed trials (None before ``startup_trials``)."""
    if len(curves) < pruning.startup_trials:
        return None
    longest = max((len(c) for c in curves), default=0)
    medians = []
    for e in range(longest):
        values = [v for c in curves if e < len(c) and (v := c[e]) is not None and math.isfinite(v)]
        medians.append(float(statistics.median(values)) if values else None)
    return MedianRule(tuple(medians), pruning.warmup_epochs, higher_is_better)


# --------------------------------------------------------------------------- one study: trials and outcomes


@dataclass
class Trial:
    number: int                      # 0-based, in the order asked
    params: dict                     # the searched options' values
    config: dict | None              # every option of the run (base + fixed + params); None when invalid
    prune: dict | None = None        # MedianRule.as_dict() or None
    error: str | None = None         # why the options are refused (the trial fails without running)
    outcome: dict = field(default_factory=dict)
    _optuna: Any = None


def selection_metric(rating_model: bool, k: int) -> tuple[str, bool]:
    """(name of the valid metric a sweep selects on, higher is better)."""
    return ("rmse", False) if rating_model else (f"recall@{k}", True)


def read_outcome(run_dir, metric: str) -> dict:
    """What a finished trial's run folder says: state, valid metric, test metrics, epochs, seconds, curve."""
    run_dir = Path(run_dir)
    metrics = RunFolder(run_dir).metrics()
    training = metrics.training
    history_file = run_dir / HISTORY
    curve = json.loads(history_file.read_text())["valid"] if history_file.exists() else []
    valid = (metrics.valid or {}).get(metric)
    pruned = training.get("pruned_at_epoch")
    state = PRUNED if pruned else COMPLETE
    if valid is None or not math.isfinite(valid):
        state = FAILED if not pruned else PRUNED
    test = metrics.test if metrics.test is not None else {}
    return {"state": state, "valid": valid, "test": test, "epochs": training.get("epochs_done"),
            "best_epoch": training.get("best_epoch"), "train_seconds": training.get("train_seconds"),
            "pruned_at_epoch": pruned, "curve": curve, "run_dir": str(run_dir),
            "error": None if state != FAILED else f"no valid {metric} in metrics.json"}


def _grid_sampler(*args, **kwargs):
    """Optuna's GridSampler without its end-of-grid ``study.stop()`` in ``after_trial``: that call raises
    RuntimeError outside ``study.optimize`` (ask-and-tell, as here), so telling the grid's last point failed
    the whole sweep; the trial budget (capped at the grid's size) ends a sweep here."""
    import optuna  # ~0.3 s: the flow imports this module for every run, sweep or not

    class RoundsGridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study, trial, state, values) -> None:
            return None

    return RoundsGridSampler(*args, **kwargs)


class Study:
    """One model's sweep on one split: asks rounds of trials, is told their outcomes, chooses on valid."""

    def __init__(self, sweep: ModelSweep, base_config: Mapping, rating_model: bool, loop_higher: bool,
                 k: int = 10, label: str = ""):
        import optuna  # ~0.3 s: the flow imports this module for every run, sweep or not

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.sweep = sweep
        self.base = dict(base_config)
        self.metric, self.higher = selection_metric(rating_model, k)
        self.loop_higher = loop_higher
        self.label = label or sweep.model
        self.trials: list[Trial] = []
        self._study = optuna.create_study(direction="maximize" if self.higher else "minimize",
                                          sampler=self._sampler(), pruner=optuna.pruners.NopPruner())
        self._distributions: dict[str, Any] = {p.name: self._distribution(p) for p in sweep.space}

    # --- Optuna's side ----------------------------------------------------------------------------------
    def _sampler(self):
        import optuna  # ~0.3 s: the flow imports this module for every run, sweep or not

        s = self.sweep
        if s.sampler == "grid":
            return _grid_sampler({p.name: [_encode(v) for v in p.grid() or ()] for p in s.space}, seed=s.seed)
        if s.sampler == "random":
            return optuna.samplers.RandomSampler(seed=s.seed)
        # TPE: random until a few rounds have completed, then the model of good vs bad configurations.
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=max(s.batch, s.trials // 3))

    @staticmethod
    def _distribution(p: Param):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # ~0.3 s, ditto

        if p.choices is not None or p.step is not None and p.kind == "float":
            return CategoricalDistribution([_encode(v) for v in p.grid() or ()])
        low, high = p.bounds()
        if p.kind == "int":
            return IntDistribution(int(low), int(high), log=p.log, step=int(p.step or 1))
        return FloatDistribution(low, high, log=p.log)

    # --- rounds -----------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return len(self.trials) >= self.sweep.trials

    def next_round(self) -> list[Trial]:
        """The next ``batch`` trials (fewer at the end of the budget; none when it is spent)."""
        registration = catalogue.get(self.sweep.model)
        rule = None
        if self.sweep.prune is not None:
            curves = [t.outcome["curve"] for t in self.trials if t.outcome.get("state") == COMPLETE]
            made = median_rule(curves, self.sweep.prune, self.loop_higher)
            rule = made.as_dict() if made is not None else None
        asked = []
        for _ in range(min(self.sweep.batch, self.sweep.trials - len(self.trials))):
            trial = self._study.ask(self._distributions)
            params = {p.name: _decode(p, trial.params[p.name]) for p in self.sweep.space}
            config = {**self.base, **self.sweep.fixed, **params}
            entry = Trial(len(self.trials), params, config, prune=rule, _optuna=trial)
            try:
                registration.resolve(config)
            except RecsysError as err:  # options that break a rule between options: the trial fails
                entry.config, entry.error = None, str(err)
            self.trials.append(entry)
            asked.append(entry)
        return asked

    def tell(self, trial: Trial, outcome: dict) -> None:
        """Record a trial's outcome (``read_outcome`` or {"state": "failed", "error": ...}) in trial order."""
        from optuna.trial import TrialState  # ~0.3 s: the flow imports this module for every run, sweep or not

        trial.outcome = outcome
        state = outcome.get("state", FAILED)
        if state == COMPLETE:
            self._study.tell(trial._optuna, float(outcome["valid"]))
            return
        if state == PRUNED:
            for epoch, value in enumerate(outcome.get("curve") or [], start=1):
                if value is not None and math.isfinite(value):
                    trial._optuna.report(float(value), epoch)
            self._study.tell(trial._optuna, state=TrialState.PRUNED)
            return
        self._study.tell(trial._optuna, state=TrialState.FAIL)

    def best(self) -> Trial | None:
        """The complete trial with the best VALID metric (ties: the earlier trial)."""
        complete = [t for t in self.trials if t.outcome.get("state") == COMPLETE]
        if not complete:
            return None
        sign = -1.0 if self.higher else 1.0
        return min(complete, key=lambda t: (sign * t.outcome["valid"], t.number))

    def rows(self, split: str) -> list[dict]:
        """One row per trial for sweep.parquet."""
        best = self.best()
        rows = []
        for t in self.trials:
            o = t.outcome
            rows.append({
                "split": split, "model": self.sweep.model, "trial": t.number, "state": o.get("state", FAILED),
                "chosen": best is not None and t.number == best.number, "valid_metric": self.metric,
                "valid": o.get("valid"), **{f"test_{k}": v for k, v in sorted((o.get("test") or {}).items())
                                             if not k.startswith("n")},
                "epochs": o.get("epochs"), "pruned_at_epoch": o.get("pruned_at_epoch"),
                "seconds": o.get("seconds"), "params": json.dumps(t.params, sort_keys=True),
                "options": json.dumps(t.config, sort_keys=True, default=str) if t.config else None,
                "run_dir": o.get("run_dir"), "error": o.get("error") or t.error})
        return rows


def _encode(value):
    """Optuna's categorical choices are scalars: a list of integers travels as "128,256"."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def _decode(param: Param, value):
    if param.kind == "ints":
        return [int(part) for part in value.split(",") if part]
    return value


# --------------------------------------------------------------------------- the loop: rounds of trials


@dataclass(frozen=True)
class TrialRun:
    """One trial to train: its split and model, the trial (number, options, pruning rule) and the valid metric
    its outcome is read for (``read_outcome``)."""

    split: str
    model: str
    trial: Trial
    metric: str

    @property
    def label(self) -> str:
        return f"trial {self.split}/{self.model} #{self.trial.number}"


# Trains a round of trials (concurrently if it can) and returns, in the same order, each one's outcome:
# ``read_outcome`` of its run folder plus "seconds", or {"state": "failed", "error": ..., "seconds": ...}.
RunRound = Callable[[list[TrialRun]], list[dict]]


@dataclass(frozen=True)
class SweepRun:
    """What a sweep found: every trial's row (``Study.rows``) and, per split and model, the trial chosen on valid
    ({"split", "model", "trial", "params", "valid_metric", "valid", "run_dir"})."""

    rows: list[dict]
    chosen: list[dict]


def run_sweep(spec: SweepSpec, splits: list[str], base_configs: Mapping[str, dict], run_round: RunRound,
              k: int = 10) -> SweepRun:
    """Every model of ``spec`` on every split: rounds of trials asked of its ``Study``, trained by ``run_round``
    and told back in trial order; then the complete trial with the best valid metric of each. ``base_configs``:
    per model, the options every trial starts from (``base_config``)."""
    studies: dict[tuple[str, str], Study] = {}
    for split in splits:
        for model, sweep in spec.models.items():
            estimator = catalogue.get(model).estimator
            studies[(split, model)] = Study(sweep, base_configs[model], rating_model=estimator.rating_model,
                                            loop_higher=estimator.higher_is_better, k=k, label=f"{split}/{model}")
    total = sum(s.sweep.trials for s in studies.values())
    finished = 0
    round_number = 0
    while asked := [(key, study, trial) for key, study in studies.items() for trial in study.next_round()]:
        round_number += 1
        runnable: list[tuple[Study, TrialRun]] = []
        for (split, model), study, trial in asked:
            if trial.config is None:  # options refused by a rule between options: failed without running
                study.tell(trial, {"state": FAILED, "error": trial.error})
                continue
            runnable.append((study, TrialRun(split, model, trial, study.metric)))
        log.info("sweep round %d: %d trial(s)", round_number, len(runnable))
        outcomes = run_round([job for _, job in runnable]) if runnable else []
        for (study, job), outcome in zip(runnable, outcomes):
            study.tell(job.trial, outcome)
            finished += 1
            valid = outcome.get("valid")
            log.info("sweep %d/%d: %s %s, valid %s %s", finished, total, job.label, outcome["state"], study.metric,
                     "-" if valid is None else f"{valid:.4f}")
    rows = [row for (split, _), study in studies.items() for row in study.rows(split)]
    chosen = []
    for (split, model), study in studies.items():
        best = study.best()
        if best is None:
            log.warning("sweep %s/%s: no trial completed, nothing chosen", split, model)
            continue
        chosen.append({"split": split, "model": model, "trial": best.number, "params": best.params,
                       "valid_metric": study.metric, "valid": best.outcome["valid"],
                       "run_dir": best.outcome["run_dir"]})
    log.info("sweep: %d trials, %d complete, %d pruned, %d failed", len(rows),
             sum(1 for r in rows if r["state"] == COMPLETE), sum(1 for r in rows if r["state"] == PRUNED),
             sum(1 for r in rows if r["state"] == FAILED))
    return SweepRun(rows, chosen)


def base_config(model: str, seed: int = 0) -> dict:
    """The options a model's trials start from: ``seed`` for models that have one."""
    return {"seed": seed} if "seed" in catalogue.get(model).options.names() else {}


# --------------------------------------------------------------------------- outputs


def write_table(rows: list[dict], dest) -> Path:
    """sweep.parquet: one row per trial (every column of ``Study.rows``; test metrics as test_<name>)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = pl.DataFrame([{c: row.get(c) for c in columns} for row in rows], infer_schema_length=None)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(dest) as tmp:
        table.write_parquet(tmp)
    return dest


def plot(rows: list[dict], dest) -> Path:
    """Valid metric vs trial, one panel per split and model: complete trials as dots, pruned as x, failed as
    marks on the axis, the best-so-far line and the chosen trial circled."""
    import matplotlib  # pyplot ~0.5 s, only for a sweep's plot; and the Agg backend must be chosen before it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        panels.setdefault((row["split"], row["model"]), []).append(row)
    n = max(1, len(panels))
    cols = min(n, 3)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(4.8 * cols, 3.4 * ((n + cols - 1) // cols)),
                             dpi=100, squeeze=False)
    for ax, ((split, model), trials) in zip(axes.flat, sorted(panels.items())):
        metric = trials[0]["valid_metric"]
        higher = not metric.startswith(("rmse", "mae"))
        for state, marker, color in ((COMPLETE, "o", "C0"), (PRUNED, "x", "C1")):
            pts = [(r["trial"], r["valid"]) for r in trials if r["state"] == state and r["valid"] is not None]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, color=color, label=state, zorder=3)
        failed = [r["trial"] for r in trials if r["state"] == FAILED]
        if failed:
            ax.scatter(failed, [0] * len(failed), marker="|", color="C3", label=FAILED,
                       transform=ax.get_xaxis_transform())
        best, line = None, []
        for r in sorted(trials, key=lambda r: r["trial"]):
            if r["state"] == COMPLETE and r["valid"] is not None:
                best = r["valid"] if best is None else (max if higher else min)(best, r["valid"])
            line.append((r["trial"], best))
        pts = [(x, y) for x, y in line if y is not None]
        if pts:
            ax.step(*zip(*pts), where="post", color="C2", label="best so far")
        chosen = [r for r in trials if r.get("chosen")]
        if chosen:
            ax.scatter([chosen[0]["trial"]], [chosen[0]["valid"]], s=160, facecolors="none", edgecolors="k",
                       label="chosen", zorder=4)
        ax.set_title(f"{split} / {model}")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"valid {metric}")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    dest = Path(dest)
    with atomic_file(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dest


def write_outputs(spec: SweepSpec, result: SweepRun, out_dir) -> dict[str, str]:
    """``sweep.parquet`` (every trial), ``sweep.png`` (valid metric vs trial) and ``chosen.json`` (the trial
    chosen on valid per split and model) in ``out_dir``; returns their paths by name."""
    out_dir = Path(out_dir)
    files = {"sweep table": str(write_table(result.rows, out_dir / "sweep.parquet")),
             "sweep plot": str(plot(result.rows, out_dir / "sweep.png"))}
    write_json(out_dir / "chosen.json", {"sweep": spec.as_dict(), "chosen": result.chosen})
    files["sweep chosen"] = str(out_dir / "chosen.json")
    return files


# --------------------------------------------------------------------------- a sweep from the library alone


def train_in_folders(matrices_dir, runs_dir, device: str | None = None, threads: int | None = None,
                     k: int = 10, spec: SweepSpec | None = None) -> RunRound:
    """A ``RunRound`` training each trial in this process, one after another, with ``recsys_core.train`` into
    ``runs_dir/<split>/<model>-<key>`` (the key: the trial's options and pruning rule). A folder that holds a
    finished run is read, not trained again; an unfinished one is resumed: a sweep run again asks the same
    trials and finds them done. (The flow runs rounds on its task runner instead: tasks/sweep.py.)"""
    from recsys_core.train import train  # torch (~1.5 s): the flow imports this module to check sweeps

    settings = RunSettings(device=device, threads=threads, k=k, resume="auto")

    def run_round(jobs: list[TrialRun]) -> list[dict]:
        outcomes = []
        for job in jobs:
            config, prune = dict(job.trial.config or {}), job.trial.prune
            moved = spec.models[job.model].run_settings if spec is not None else {}
            trial_settings = settings.replace(**moved) if moved else settings
            key = hashlib.sha256(json.dumps({"model": job.model, **config, "prune": prune,
                                             **({"run_settings": moved} if moved else {})}, sort_keys=True,
                                            default=str).encode()).hexdigest()[:10]
            run_dir = Path(runs_dir) / job.split / f"{job.model}-{key}"
            started = time.perf_counter()
            try:
                if not (run_dir / METRICS).exists():
                    on_epoch = MedianRule.from_dict(prune).callback() if prune else None
                    train(Path(matrices_dir) / job.split, run_dir, job.model, config, trial_settings,
                          on_epoch=on_epoch)
                outcome = read_outcome(run_dir, job.metric)
            except Exception as err:  # a failed trial is a row of the sweep, not the end of it
                message = str(err).splitlines()[0] if str(err) else ""
                outcome = {"state": FAILED, "error": f"{type(err).__name__}: {message}"[:300], "run_dir": str(run_dir)}
            outcomes.append({**outcome, "seconds": round(time.perf_counter() - started, 2)})
        return outcomes

    return run_round


def sweep(obj: Any, matrices_dir, out_dir, models: list[str] | None = None, k: int = 10, seed: int = 0,
          device: str | None = None, threads: int | None = None) -> SweepRun:
    """Run a sweep (a sweep object, the path of a YAML/JSON sweep file, or ``"default"`` over ``models``) on every split
    folder of a stage-3 output ``matrices_dir``, without Prefect: trials in ``out_dir/runs/``, the sweep's table,
    plot and chosen trials in ``out_dir``."""
    if isinstance(obj, (str, Path)) and obj != "default":
        obj = load_sweep_file(obj)
    spec = parse_sweep(obj, models, seed=seed)
    matrices_dir = Path(matrices_dir)
    splits = sorted(p.parent.name for p in matrices_dir.glob("*/meta.json"))
    if not splits:
        raise RecsysError(f"{matrices_dir} holds no split folder (a stage-3 output: <split>/meta.json)")
    base = {model: base_config(model, seed) for model in spec.models}
    result = run_sweep(spec, splits, base, train_in_folders(matrices_dir, Path(out_dir) / "runs", device, threads, k,
                                                          spec),
                       k=k)
    write_outputs(spec, result, out_dir)
    return result

