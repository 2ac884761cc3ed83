"""Stage 4, the stage API: train, evaluate and recommend on run folders. The ``train``/``evaluate``/
``recommend`` commands (``recsys_core.cli.train``) and the flow's train task call these functions. The
models are in ``recsys_core.models`` (one module each); iterative ones are trained by the loop of
``recsys_core.training_loop``.

A run folder holds:
``config.json`` (every option, resolved), ``checkpoint.pt`` (last epoch of an iterative model, for
``--resume``), ``model.pt`` (best weights or fitted state + config, ``torch.load(weights_only=True)``),
``history.json`` (iterative models, per epoch: train loss, valid metric, lr, seconds),
``learning_curve.png`` (iterative models), ``metrics.json`` (model and baseline metrics on valid and test,
``beaten_by``; ``"valid": null`` and ``"trained_blind": true`` when the split has no valid part; ``"buckets"``,
the model's and each baseline's, per bucket of the user's training ratings and for new items),
``predictions.parquet`` (test pairs: user_id, item_id, rating, prediction) and
``recommendations.parquet`` (user_id, rank, item_id, title, score).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import polars as pl
import torch

from recsys_core import distributed, models
from recsys_core.baselines import BASELINES, fit_baselines
from recsys_core.buckets import Buckets
from recsys_core.errors import RecsysError
from recsys_core.estimators import TorchEstimator, data_dims
from recsys_core.evaluation import beaten_by, evaluate_predictor, top_k
from recsys_core.interactions import csr_triplets, load_split_data, rating_range
from recsys_core.io import atomic_file, write_json
from recsys_core.options import ModelOptions
from recsys_core.predictor import FoldIn, folds_in
from recsys_core.progress import progress_bar
from recsys_core.ranking import ScoredOnce, best_items
from recsys_core.runs import (
    CONFIG,
    CURVE,
    HISTORY,
    METRICS,
    MODEL,
    PREDICTIONS,
    RECOMMENDATIONS,
    RunConfig,
    RunFolder,
    RunMetrics,
)
from recsys_core.settings import DEFAULTS, RunSettings, split_legacy
from recsys_core.threads import apply_threads, decide_threads
from recsys_core.training_loop import CHECKPOINT, load_checkpoint

log = logging.getLogger("recsys_core")

MODEL_FILE = MODEL
# What a run writes, removed before a fresh start over an unfinished run (resume="auto").
RUN_FILES = (CONFIG, CHECKPOINT, MODEL, HISTORY, CURVE, METRICS, PREDICTIONS, RECOMMENDATIONS)


def pick_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RecsysError(f"device {name!r} was asked for but this machine has no usable CUDA GPU")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RecsysError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None


def train(split_dir, run_dir, model: str = "autoencoder", options: Mapping[str, Any] | None = None,
          settings: RunSettings | None = None, *, on_epoch=None, **legacy) -> dict | None:
    """Train ``model`` on one stage-3 split folder into ``run_dir``; returns the metrics (also written).

    ``options`` are the model's hyperparameters (``recsys_core.models.get(model).options``), all checked
    before anything is read or written; ``settings`` (``recsys_core.settings.RunSettings``) say how the run is
    carried out and evaluated: device, threads, processes, resume, k, recall_users, eval_batch_size, amp.

    ``settings.resume=True`` continues the run in ``run_dir`` from its checkpoint with its saved options (only
    resumable ones such as epochs/patience may change; settings left unset keep the run's) and gives exactly
    what an uninterrupted run would have given. ``resume="auto"`` resumes when ``run_dir`` holds a run of
    the same model and options (resumable ones aside) with a readable checkpoint, and otherwise starts
    afresh (what the flow does after a killed run).

    Several processes (``recsys_core.distributed``): ``processes=N`` (models trained by the loop) spawns N
    processes on this host that train one model together; under ``torchrun`` every process calls this
    function, process 0 returns the metrics and the others ``None``.

    ``threads``/``concurrent``: torch's threads, chosen by ``recsys_core.threads.decide_threads`` (None =
    the cores available to this process shared by ``concurrent`` trainings), for the whole training: its
    processes on this host share them; logged and recorded in metrics.json, and per process in config.json
    (a resumed run keeps that). ``on_epoch(epoch, valid) -> stop?`` is the training loop's per-epoch hook (a
    sweep's pruner); models fitted in closed form have no epochs and ignore it.

    ``legacy``: the keyword arguments this function took before (``device=``, ``threads=``, ``resume=``,
    ``k=`` and the model's options as keywords), accepted for one release with a deprecation line.
    """
    run_dir = Path(run_dir)
    split_dir = Path(split_dir)
    options, settings = _arguments(options, settings, legacy)
    dev = pick_device(settings.device)
    registration = models.get(model)
    ctx = distributed.from_environment(dev)  # the group torchrun started, joined here; else one process
    try:
        wanted = settings.resume  # settings is reassigned below: a lambda would see it as possibly None
        resume = ctx.decide(lambda: _decide_resume(run_dir, registration, options, wanted))
        resumed_threads = None
        if resume:
            registration, model_options, split_dir, saved = _resumed_options(run_dir, model, options)
            settings = settings.resolved(saved)
            resumed_threads = saved.get("threads")
        else:
            model_options = registration.resolve(options)
            settings = settings.resolved()
        settings = settings.replace(resume=resume)
        nproc = int(settings.processes or 1)
        local = nproc  # the processes of this training on this host, which share its threads
        by_loop = issubclass(registration.estimator, TorchEstimator)
        if (nproc > 1 or ctx.enabled) and not by_loop:
            raise RecsysError(f"model {registration.name} is not trained by the loop and runs in one process: "
                              f"{'start it without torchrun' if ctx.enabled else 'leave nproc out'}")
        if ctx.enabled:
            if nproc not in (1, ctx.world):
                raise RecsysError(f"nproc {nproc} was given but torchrun started {ctx.world} processes: "
                                  "leave nproc out under torchrun")
            settings = settings.replace(processes=ctx.world)
            local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world))
        # One decision for the whole training, taken by process 0 alone under torchrun (only it measures the
        # free cores) and given to every process: spawned or started by torchrun, the same request gives each
        # process the same count (recsys_core.threads).
        thread_choice = ctx.decide(lambda: decide_threads(settings.threads, settings.concurrent, processes=local,
                                                          resumed=resumed_threads))
        if nproc > 1 and not ctx.enabled:
            if on_epoch is not None:
                raise RecsysError("an on_epoch hook (a sweep's pruner) needs one process: leave nproc out")
            return distributed.spawn(nproc, dev, _train_process, str(split_dir), str(run_dir), registration.name,
                                     model_options.to_dict(), settings, str(dev), thread_choice.as_dict(),
                                     threads=thread_choice.threads)
        apply_threads(thread_choice)
        return _train_process(split_dir, run_dir, registration.name, model_options.to_dict(), settings, str(dev),
                              thread_choice.as_dict(), on_epoch)
    finally:
        distributed.leave()


def _arguments(options: Mapping[str, Any] | None, settings: RunSettings | None,
               legacy: dict[str, Any]) -> tuple[dict[str, Any], RunSettings]:
    """(model options, run settings) of ``train``'s arguments, with the spellings of the release before
    (run settings among the options, everything as keywords) moved where they belong, with a deprecation
    line."""
    if options is not None and not isinstance(options, Mapping):
        raise RecsysError(f"options must map option names to values, e.g. {{\"epochs\": 5}}, got {options!r}")
    options, moved = split_legacy(options)
    if legacy:
        warnings.warn(f"train(..., {', '.join(f'{name}=' for name in sorted(legacy))}) is deprecated: pass the "
                      "model's options as train(split_dir, run_dir, model, {...}) and how to run it as "
                      "settings=RunSettings(...); accepted until the next release", FutureWarning, stacklevel=3)
        fields = {f.name for f in dataclasses.fields(RunSettings)}
        moved.update({name: value for name, value in legacy.items() if name in fields})
        rest = {name: value for name, value in legacy.items() if name not in fields}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # one deprecation line is enough
            rest, moved_too = split_legacy(rest)
        options.update(rest)
        moved.update(moved_too)
    settings = settings if settings is not None else RunSettings()
    if not isinstance(settings, RunSettings):
        raise RecsysError(f"settings must be a RunSettings (recsys_core.settings), got {settings!r}")
    return options, settings.replace(**moved) if moved else settings


def _decide_resume(run_dir: Path, registration, options: dict, resume: bool | str) -> bool:
    """``resume`` as true or false; "auto" looks at ``run_dir`` and clears an unfinished other run."""
    if resume != "auto":
        return bool(resume)
    if _can_resume(run_dir, registration.name, registration.resolve(options)):
        return True
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    return False


def _train_process(split_dir, run_dir, model: str, saved_options: dict, settings: RunSettings, device: str,
                   thread_info: dict, on_epoch=None) -> dict | None:
    """What every training process does (the only one, or one of ``distributed.current()``'s group): train;
    process 0 also writes the run folder and returns the metrics. ``settings``: resolved (every value set,
    ``resume`` true or false). ``thread_info``: the thread decision of the calling process
    (``ThreadChoice.as_dict``); the threads this process really has are recorded."""
    split_dir, run_dir = Path(split_dir), Path(run_dir)
    ctx = distributed.current()
    registration = models.get(model)
    options = registration.options.from_saved(saved_options, model)
    dev = ctx.device if ctx.enabled else pick_device(device)
    thread_info = {**thread_info, "threads": torch.get_num_threads()}
    data = load_split_data(split_dir)
    torch.set_float32_matmul_precision("high")
    estimator = registration.create(options, device=dev, settings=settings)
    run_config = {**estimator.describe(), **settings.recorded(), "split_dir": str(split_dir.resolve())}
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # the threads go with the options so that a resumed run keeps them
        RunFolder(run_dir).write_config(RunConfig.from_json({**run_config, "threads": thread_info["threads"]}))
    blind = data.valid.nnz == 0
    if ctx.is_main:
        log.info("training %s on %s (%d users x %d items, %d ratings) on %s%s, %d torch thread%s (%s)",
                 registration.name, split_dir, *data.train.shape, data.train.nnz, dev,
                 f" and {ctx.world - 1} more processes" if ctx.enabled else "", thread_info["threads"],
                 "s" if thread_info["threads"] != 1 else "", thread_info["threads_reason"])
    if blind and ctx.is_main:
        log.warning("%s has no valid part: %s trains blind (nothing is selected on valid%s); split with a valid "
                    "part to select on it", split_dir, registration.name,
                    "; no early stopping: the last epoch is kept" if isinstance(estimator, TorchEstimator) else "")
    started = time.perf_counter()
    hook = {"on_epoch": on_epoch} if on_epoch is not None and isinstance(estimator, TorchEstimator) else {}
    result = estimator.fit(data, run_dir=run_dir, resume=bool(settings.resume), **hook)
    train_seconds = time.perf_counter() - started
    world = ctx.world
    distributed.leave()  # training is over: process 0 evaluates and writes alone
    if not ctx.is_main:
        return None
    with atomic_file(run_dir / MODEL_FILE) as tmp:
        torch.save({"config": run_config, "dims": data_dims(data), "state_dict": estimator.state_dict()}, tmp)
    history = result.get("history")
    summary = {"train_seconds": round(train_seconds, 3), "device": str(dev), **thread_info}
    if world > 1:
        summary["processes"] = world
    summary.update(result.get("report", {}))  # what a model reports of its fit (a blend: weights, members)
    if history is not None:
        write_json(run_dir / HISTORY, {"valid_metric": estimator.valid_metric, **history})
        plot_learning_curve(history, estimator, run_dir / CURVE)
        summary = {"epochs_done": result["epochs_done"], "best_epoch": result["best_epoch"],
                   "stopped_early": result["stopped_early"], "pruned_at_epoch": result.get("pruned"), **summary,
                   "seconds_per_epoch": round(float(np.mean(history["seconds"])), 3) if history["seconds"] else None}
    scored = ScoredOnce.wrap(estimator, *data.train.shape)  # evaluation and recommendations share the scores
    metrics = _evaluate_and_write(scored, data, run_config, run_dir, summary)
    _write_recommendations(scored, data, run_dir, int(settings.k or DEFAULTS["k"]))
    return metrics


def _resumed_options(run_dir: Path, model: str, options: dict):
    """(registration, options, split folder, saved config.json) of the run to resume, with the resumable
    ``options`` applied. The caller keeps the saved run settings not given again and the threads (the count
    can change some models' sums: recsys_core.threads)."""
    if not (run_dir / CONFIG).exists() or not (run_dir / CHECKPOINT).exists():
        raise RecsysError(f"{run_dir} holds no {CONFIG} and {CHECKPOINT} to resume from")
    saved = RunFolder(run_dir).config().to_json()
    if model != saved["model"] and model != "autoencoder":
        raise RecsysError(f"{run_dir} holds a {saved['model']} run, not {model}")
    registration = models.get(saved["model"])
    resumed = registration.options.from_saved(saved, registration.name)
    given = {k: v for k, v in options.items() if v is not None}
    resumable = {info.name for info in registration.options.describe() if info.resumable}
    changed = {k for k in given if k not in resumed.names()
               or resumed.replace(registration.name, **{k: given[k]}) != resumed}
    if changed - resumable:
        raise RecsysError(f"options {', '.join(sorted(changed - resumable))} cannot change when "
                          f"resuming; only {', '.join(sorted(resumable))} can")
    return registration, resumed.replace(registration.name, **given), Path(saved["split_dir"]), saved


def _can_resume(run_dir: Path, model: str, given: ModelOptions) -> bool:
    """Whether ``run_dir`` holds a run of this model and options (resumable ones aside) to continue."""
    if not (run_dir / CHECKPOINT).exists() or not (run_dir / CONFIG).exists():
        return False
    try:
        saved = RunFolder(run_dir).config().to_json()
        options = models.get(model).options
        fixed = [info.name for info in options.describe() if not info.resumable]
        same = saved.get("model") == model and all(
            getattr(options.from_saved(saved, model), name) == getattr(given, name) for name in fixed)
        if not same:
            log.warning("%s holds a run of other options; training from scratch", run_dir)
            return False
        load_checkpoint(run_dir / CHECKPOINT)
    except (RecsysError, ValueError, KeyError) as err:
        log.warning("cannot resume %s (%s); training from scratch", run_dir, err)
        return False
    log.info("resuming %s from its checkpoint", run_dir)
    return True


def load_run(run_dir, device: str | None = None, split_dir=None):
    """(run config as in config.json, data, estimator) of a finished run, with its fitted state loaded."""
    run_dir = Path(run_dir)
    if not (run_dir / MODEL_FILE).exists():
        raise RecsysError(f"{run_dir} holds no {MODEL_FILE}: train a model there first")
    saved = torch.load(run_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    config = saved["config"]
    registration = models.get(config["model"])
    options = registration.options.from_saved(config, registration.name)
    settings = RunSettings().resolved(config)  # its eval_batch_size and amp, as recorded in config.json
    dev = pick_device(device)
    data = load_split_data(split_dir or config["split_dir"])
    dims = data_dims(data)
    if (dims["n_users"], dims["n_items"]) != (saved["dims"]["n_users"], saved["dims"]["n_items"]):
        raise RecsysError(f"the split at {split_dir or config['split_dir']} has {dims['n_users']} users x "
                          f"{dims['n_items']} items but the model in {run_dir} was trained on "
                          f"{saved['dims']['n_users']} x {saved['dims']['n_items']}")
    estimator = registration.create(options, device=dev, settings=settings).load(saved["state_dict"], data)
    return config, data, estimator


def evaluate(run_dir, device: str | None = None, split_dir=None) -> dict:
    """Re-evaluate a trained run (model + baselines); rewrites metrics.json and predictions.parquet."""
    run_dir = Path(run_dir)
    config, data, estimator = load_run(run_dir, device, split_dir)
    previous = RunFolder(run_dir).metrics().training if (run_dir / METRICS).exists() else {}
    return _evaluate_and_write(ScoredOnce.wrap(estimator, *data.train.shape), data, config, run_dir, dict(previous))


def _evaluate_and_write(estimator, data, config, run_dir: Path, training_summary: dict) -> dict:
    """Model and baseline metrics on valid and test into metrics.json, the model's test predictions into
    predictions.parquet (made once: the test RMSE reads the same array). Logs the seconds of each phase."""
    k, recall_users = int(config["k"]), int(config["recall_users"])
    seconds: dict[str, float] = {}
    lap = time.perf_counter()

    def done(phase: str) -> None:
        nonlocal lap
        now = time.perf_counter()
        seconds[phase] = now - lap
        lap = now
        bar.advance()

    with progress_bar(f"evaluating {config['model']} and {len(BASELINES)} baselines",
                      4 + len(BASELINES), "steps") as bar:
        rows, cols, truth = csr_triplets(data.test)
        test_prediction = estimator.predict_pairs(rows, cols) if data.test.nnz else None
        done("test predictions")
        buckets = Buckets.of(data.train)  # per-bucket errors: which bucket each user and item is in, once
        model_metrics = evaluate_predictor(estimator, data, rating_model=estimator.rating_model, k=k,
                                           recall_users=recall_users, test_prediction=test_prediction,
                                           buckets=buckets)
        done("model metrics")
        eval_seconds = seconds["test predictions"] + seconds["model metrics"]
        baselines = fit_baselines(data.train)
        done("baselines fitted")
        baseline_metrics = {}
        for name, baseline in baselines.items():
            rating = baseline.rating_model and estimator.rating_model
            baseline_metrics[name] = evaluate_predictor(baseline, data, rating_model=rating, k=k,
                                                        recall_users=recall_users, ranking=baseline.ranks,
                                                        buckets=buckets)
            done(name)
        _write_predictions(estimator, data, run_dir, (rows, cols, truth, test_prediction))
        done("predictions.parquet")
    log.info("evaluation of %s in %.1f s: %s", config["model"], sum(seconds.values()),
             ", ".join(f"{phase} {value:.1f} s" for phase, value in seconds.items()))
    losers_to = beaten_by(model_metrics, baseline_metrics, estimator.rating_model, k)
    metrics = {"model": config["model"], "split": data.meta.get("split"), **model_metrics,
               "baselines": baseline_metrics, "beaten_by": losers_to,
               "top_k_beaten_by": beaten_by(model_metrics, baseline_metrics, rating_model=False, k=k),
               "evaluation_seconds": round(eval_seconds, 3), "training": training_summary}
    if data.valid.nnz == 0:  # no early stopping and no model selection happened: say so in the record
        metrics.update(valid=None, trained_blind=True)
    if losers_to:
        log.warning("%s is beaten by baseline(s) %s on test", config["model"], ", ".join(losers_to))
    RunFolder(run_dir).write_metrics(RunMetrics.from_json(metrics))
    return metrics


def _write_predictions(estimator, data, run_dir: Path, made=None) -> None:
    """The test pairs with the model's predictions (``made``: (rows, cols, truth, prediction) already made)."""
    rows, cols, truth, prediction = made or (*csr_triplets(data.test), None)
    if prediction is None:
        prediction = estimator.predict_pairs(rows, cols)
    if estimator.rating_model:
        prediction = np.clip(prediction, *rating_range(data.meta))
    table = pl.DataFrame({"user_id": data.user_ids[rows], "item_id": data.item_ids[cols],
                          "rating": truth.astype(np.float32), "prediction": prediction.astype(np.float32)})
    with atomic_file(run_dir / PREDICTIONS) as tmp:
        table.write_parquet(tmp)


def _known(data):
    """Every rating of the split (train, valid and test): never recommended again."""
    known = (data.train + data.valid + data.test).tocsr()
    known.sort_indices()
    return known


def _titles(data) -> pl.Series:
    """Title of every item column (null where the split has none), as a string Series to gather from."""
    items = data.items.sort("col") if "col" in data.items.columns else data.items
    if "title" in items.columns:
        return items["title"].cast(pl.String)
    return pl.Series("title", [None] * len(data.item_ids), dtype=pl.String)


def _recommendation_table(data, user_ids: np.ndarray, top: np.ndarray, scores: np.ndarray) -> pl.DataFrame:
    """The recommendations table from arrays in one go: ``top`` ``[users, k]`` item columns, best first, and
    their ``scores`` ``[users, k]``; items that scored -inf (excluded: users who rated nearly everything get
    fewer than k) are dropped."""
    k = top.shape[1]
    flat = top.reshape(-1)
    table = pl.DataFrame({
        "user_id": np.repeat(np.asarray(user_ids), k).astype(np.int32),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(user_ids)),
        "item_id": data.item_ids[flat].astype(np.int32),
        "title": _titles(data).gather(flat) if len(flat) else pl.Series("title", [], dtype=pl.String),
        "score": scores.reshape(-1).astype(np.float32)})
    return table.filter(pl.col("score") > float("-inf"))


def _write_recommendations(estimator, data, run_dir: Path, k: int, rows: np.ndarray | None = None,
                           dest: Path | None = None) -> Path:
    """Top ``k`` of every user with training ratings (or of ``rows``) among the items they never rated
    (train, valid or test), scored block by block (``recsys_core.ranking``), written as one table."""
    started = time.perf_counter()
    known = _known(data)
    if rows is None:
        rows = np.flatnonzero(np.diff(data.train.indptr) > 0)
    top, scores = best_items(estimator, rows, k, exclude=known, description="top-k recommendations")
    table = _recommendation_table(data, data.user_ids[rows], top, scores)
    dest = dest or run_dir / RECOMMENDATIONS
    with atomic_file(dest) as tmp:
        table.write_parquet(tmp)
    log.info("recommendations: top %d of %d users in %.1f s -> %s", k, len(rows), time.perf_counter() - started,
             dest)
    return dest


def recommend(run_dir, k: int = 10, users: list[int] | None = None, device: str | None = None,
              split_dir=None, out=None) -> Path:
    """Write the top ``k`` unrated items of each user (raw ``users`` ids, or every user with training
    ratings), best first, with titles, to ``out`` (default ``RUN_DIR/recommendations-k<k>[-users].parquet``);
    never to the run's own ``recommendations.parquet``, an output of ``train`` that caches verify."""
    _check_k(k)
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / f"recommendations-k{k}{'-users' if users is not None else ''}.parquet"
    if out.resolve() == (run_dir / RECOMMENDATIONS).resolve():
        raise RecsysError(f"{out} is the run's own output (written by train, verified by the pipeline's cache); "
                          "give another --out")
    _, data, estimator = load_run(run_dir, device, split_dir)
    rows = None
    if users is not None:
        lookup = {int(u): r for r, u in enumerate(data.user_ids)}
        missing = [u for u in users if int(u) not in lookup]
        if missing:
            raise RecsysError(f"user id(s) {', '.join(map(str, missing[:5]))} are not in the split of {run_dir}; "
                              "use recommend_for_ratings for users absent from training")
        rows = np.array([lookup[int(u)] for u in users], np.int64)
    return _write_recommendations(estimator, data, run_dir, k, rows, dest=out)


def recommend_for_ratings(run_dir, ratings: dict[int, float], k: int = 10, device: str | None = None) -> pl.DataFrame:
    """Top ``k`` items for a user absent from training, from their ratings {raw item id: rating}: the
    ratings are folded into the model (models with ``fold_in``: user-facing autoencoders, EASE, ALS)."""
    _check_k(k)
    config, data, estimator = load_run(run_dir, device)
    if not folds_in(estimator):
        able = [name for name, r in models.catalogue().items()
                if issubclass(r.estimator, FoldIn) and r.create().folds_in()]  # with their default options
        raise RecsysError(f"a {config['model']} model{' of these options' if isinstance(estimator, FoldIn) else ''} "
                          f"cannot score a user absent from training; use one of {', '.join(able)}")
    col_of = {int(i): c for c, i in enumerate(data.item_ids)}
    unknown = [i for i in ratings if int(i) not in col_of]
    if unknown:
        raise RecsysError(f"item id(s) {', '.join(map(str, unknown[:5]))} are not in the catalogue of the split")
    if not ratings:
        raise RecsysError("give at least one rating to recommend for a new user")
    cols = np.array([col_of[int(i)] for i in ratings], np.int64)
    order = np.argsort(cols)
    values = np.array(list(ratings.values()), np.float32)[order]
    scores = estimator.fold_in(cols[order], values)[None, :].copy()
    scores[0, cols] = -np.inf
    top = top_k(scores, k)
    return _recommendation_table(data, np.array([-1], np.int32), top,
                                 np.take_along_axis(scores, top, axis=1)).drop("user_id")


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise RecsysError(f"k (items per user) must be an integer of at least 1, got {k!r}")


def plot_learning_curve(history: dict, estimator, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    epochs = history["epoch"]
    valid = [np.nan if v is None else v for v in history["valid"]]
    if estimator.rating_model:
        ax.plot(epochs, np.sqrt(history["train_loss"]), marker=".",
                label="train RMSE (observed ratings, training mode)")
        ax.plot(epochs, valid, marker=".", label="valid RMSE")
        ax.set_ylabel("RMSE")
    else:
        ax.plot(epochs, history["train_loss"], marker=".", color="C0", label="train BCE")
        ax.set_ylabel("train BCE")
        other = ax.twinx()
        other.plot(epochs, valid, marker=".", color="C1", label=f"valid {estimator.valid_metric}")
        other.set_ylabel(f"valid {estimator.valid_metric}")
        other.legend(loc="upper right")
    ax.set_xlabel("epoch")
    ax.legend(loc="upper left" if not estimator.rating_model else "best")
    ax.set_title(f"{estimator.name}: learning curve")
    fig.tight_layout()
    with atomic_file(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
