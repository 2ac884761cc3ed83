"""Stage 4: train, evaluate and recommend (library functions + the ``train``/``evaluate``/``recommend``
sub-commands).

A run folder holds:
``config.json`` (every option, resolved), ``checkpoint.pt`` (last epoch, for ``--resume``),
``model.pt`` (best weights + config, ``torch.load(weights_only=True)``), ``history.json`` (per epoch:
train loss, valid metric, lr, seconds), ``learning_curve.png``, ``metrics.json`` (model and baseline
metrics on valid and test, ``beaten_by``), ``predictions.parquet`` (test pairs: user_id, item_id,
rating, prediction) and ``recommendations.parquet`` (user_id, rank, item_id, title, score).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recsys_core.baselines import fit_baselines
from recsys_core.errors import RecsysError
from recsys_core.estimators import ImplicitEstimator, PairsEstimator, RowsEstimator
from recsys_core.evaluation import beaten_by, evaluate_predictor, exclude_seen, top_k
from recsys_core.interactions import csr_triplets, load_split_data, rating_range
from recsys_core.io import atomic_file, read_json, write_json
from recsys_core.models import MODELS, TRAINING_DEFAULTS, build_model, resolve_config
from recsys_core.models.autoencoder import ACTIVATIONS, PRESETS
from recsys_core.training import CHECKPOINT, fit

log = logging.getLogger("recsys_core")

MODEL_FILE = "model.pt"
RECOMMENDATIONS = "recommendations.parquet"
# Options that may change when a run is resumed (they do not change what was computed so far).
RESUMABLE_OPTIONS = {"epochs", "patience", "eval_batch_size", "recall_users", "k", "amp"}


def pick_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RecsysError(f"device {name!r} was asked for but this machine has no usable CUDA GPU")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RecsysError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None


def _dims(data) -> dict:
    return {"n_users": int(data.train.shape[0]), "n_items": int(data.train.shape[1]),
            "global_mean": float(data.train.data.mean()), "rating_range": rating_range(data.meta)}


def _estimator(config: dict, data, device: torch.device, dims: dict | None = None):
    torch.manual_seed(int(config["seed"]))  # deterministic initial weights
    model = build_model(config, dims or _dims(data))
    family = config["family"]
    if family == "rows":
        return RowsEstimator(model, data, config, device, config["orientation"])
    if family == "pairs":
        return PairsEstimator(model, data, config, device)
    return ImplicitEstimator(model, data, config, device)


def train(split_dir, run_dir, model: str = "autoencoder", *, resume: bool = False, device: str | None = None,
          **options) -> dict:
    """Train ``model`` on one stage-3 split folder into ``run_dir``; returns the metrics (also written).

    ``options`` are the model's options (see ``recsys_core.models``). ``resume=True`` continues the run
    in ``run_dir`` from its checkpoint with its saved config (only epochs/patience/evaluation options
    may be changed) and gives exactly what an uninterrupted run would have given.
    """
    run_dir = Path(run_dir)
    split_dir = Path(split_dir)
    if resume:
        if not (run_dir / "config.json").exists() or not (run_dir / CHECKPOINT).exists():
            raise RecsysError(f"{run_dir} holds no config.json and checkpoint.pt to resume from")
        config = read_json(run_dir / "config.json")
        if model != config["model"] and model != "autoencoder":
            raise RecsysError(f"{run_dir} holds a {config['model']} run, not {model}")
        changed = {k for k, v in options.items() if v is not None and config.get(k) != v}
        if changed - RESUMABLE_OPTIONS:
            raise RecsysError(f"options {', '.join(sorted(changed - RESUMABLE_OPTIONS))} cannot change when "
                              f"resuming; only {', '.join(sorted(RESUMABLE_OPTIONS))} can")
        config.update({k: v for k, v in options.items() if v is not None})
        split_dir = Path(config["split_dir"])
    else:
        config = resolve_config(model, options)
        config["split_dir"] = str(split_dir.resolve())
    dev = pick_device(device)
    data = load_split_data(split_dir)
    torch.set_float32_matmul_precision("high")
    estimator = _estimator(config, data, dev)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config)
    log.info("training %s on %s (%d users x %d items, %d ratings) on %s", config["model"], split_dir,
             *data.train.shape, data.train.nnz, dev)
    started = time.perf_counter()
    result = fit(estimator, config, run_dir, resume=resume)
    train_seconds = time.perf_counter() - started
    with atomic_file(run_dir / MODEL_FILE) as tmp:
        torch.save({"config": config, "dims": _dims(data), "state_dict": estimator.model.state_dict()}, tmp)
    write_json(run_dir / "history.json", {"valid_metric": estimator.valid_metric, **result["history"]})
    plot_learning_curve(result["history"], estimator, run_dir / "learning_curve.png")
    summary = {"epochs_done": result["epochs_done"], "best_epoch": result["best_epoch"],
               "stopped_early": result["stopped_early"], "train_seconds": round(train_seconds, 3),
               "seconds_per_epoch": round(float(np.mean(result["history"]["seconds"])), 3)
               if result["history"]["seconds"] else None, "device": str(dev)}
    metrics = _evaluate_and_write(estimator, data, config, run_dir, summary)
    _write_recommendations(estimator, data, run_dir, int(config["k"]))
    return metrics


def load_run(run_dir, device: str | None = None, split_dir=None):
    """(config, data, estimator) of a finished run, with its best weights loaded."""
    run_dir = Path(run_dir)
    if not (run_dir / MODEL_FILE).exists():
        raise RecsysError(f"{run_dir} holds no {MODEL_FILE}: train a model there first")
    saved = torch.load(run_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    config = saved["config"]
    data = load_split_data(split_dir or config["split_dir"])
    dims = _dims(data)
    if (dims["n_users"], dims["n_items"]) != (saved["dims"]["n_users"], saved["dims"]["n_items"]):
        raise RecsysError(f"the split at {split_dir or config['split_dir']} has {dims['n_users']} users x "
                          f"{dims['n_items']} items but the model in {run_dir} was trained on "
                          f"{saved['dims']['n_users']} x {saved['dims']['n_items']}")
    estimator = _estimator(config, data, pick_device(device), saved["dims"])
    estimator.model.load_state_dict(saved["state_dict"])
    return config, data, estimator


def evaluate(run_dir, device: str | None = None, split_dir=None) -> dict:
    """Re-evaluate a trained run (model + baselines); rewrites metrics.json and predictions.parquet."""
    run_dir = Path(run_dir)
    config, data, estimator = load_run(run_dir, device, split_dir)
    previous = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
    return _evaluate_and_write(estimator, data, config, run_dir, previous.get("training", {}))


def _evaluate_and_write(estimator, data, config, run_dir: Path, training_summary: dict) -> dict:
    k, recall_users = int(config["k"]), int(config["recall_users"])
    started = time.perf_counter()
    model_metrics = evaluate_predictor(estimator, data, rating_model=estimator.rating_model, k=k,
                                       recall_users=recall_users)
    eval_seconds = time.perf_counter() - started
    baseline_metrics = {}
    for name, baseline in fit_baselines(data.train).items():
        rating = baseline.rating_model and estimator.rating_model
        baseline_metrics[name] = evaluate_predictor(baseline, data, rating_model=rating, k=k,
                                                    recall_users=recall_users)
    losers_to = beaten_by(model_metrics, baseline_metrics, estimator.rating_model, k)
    metrics = {"model": config["model"], "split": data.meta.get("split"), **model_metrics,
               "baselines": baseline_metrics, "beaten_by": losers_to,
               "top_k_beaten_by": beaten_by(model_metrics, baseline_metrics, rating_model=False, k=k),
               "evaluation_seconds": round(eval_seconds, 3), "training": training_summary}
    if losers_to:
        log.warning("%s is beaten by baseline(s) %s on test", config["model"], ", ".join(losers_to))
    write_json(run_dir / "metrics.json", _finite(metrics))
    _write_predictions(estimator, data, run_dir)
    return metrics


def _finite(obj):
    """JSON has no NaN: write null instead."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_predictions(estimator, data, run_dir: Path) -> None:
    rows, cols, truth = csr_triplets(data.test)
    prediction = estimator.predict_pairs(rows, cols)
    if estimator.rating_model:
        prediction = np.clip(prediction, *rating_range(data.meta))
    table = pl.DataFrame({"user_id": data.user_ids[rows], "item_id": data.item_ids[cols],
                          "rating": truth.astype(np.float32), "prediction": prediction.astype(np.float32)})
    with atomic_file(run_dir / "predictions.parquet") as tmp:
        table.write_parquet(tmp)


def _known(data):
    """Every rating of the split (train, valid and test): never recommended again."""
    known = (data.train + data.valid + data.test).tocsr()
    known.sort_indices()
    return known


def _titles(data) -> np.ndarray:
    items = data.items.sort("col") if "col" in data.items.columns else data.items
    return items["title"].to_numpy() if "title" in items.columns else np.array([None] * len(data.item_ids))


def _recommendation_table(data, user_ids: np.ndarray, top: np.ndarray, scores: np.ndarray) -> pl.DataFrame:
    k = top.shape[1]
    table = pl.DataFrame({
        "user_id": np.repeat(user_ids, k).astype(np.int32),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(user_ids)),
        "item_id": data.item_ids[top.reshape(-1)].astype(np.int32),
        "title": _titles(data)[top.reshape(-1)],
        "score": np.take_along_axis(scores, top, axis=1).reshape(-1).astype(np.float32)})
    # users who rated (nearly) the whole catalogue get fewer than k: excluded items score -inf
    return table.filter(pl.col("score") > float("-inf"))


def _write_recommendations(estimator, data, run_dir: Path, k: int, rows: np.ndarray | None = None,
                           chunk: int = 2048, dest: Path | None = None) -> Path:
    known = _known(data)
    if rows is None:
        rows = np.flatnonzero(np.diff(data.train.indptr) > 0)
    tables = []
    for lo in range(0, len(rows), chunk):
        part = rows[lo:lo + chunk]
        scores = exclude_seen(np.array(estimator.score_rows(part), np.float32, copy=True), part, known)
        top = top_k(scores, k)
        tables.append(_recommendation_table(data, data.user_ids[part], top, scores))
    table = pl.concat(tables) if tables else _recommendation_table(data, np.empty(0, np.int32),
                                                                   np.empty((0, k), np.int64), np.empty((0, 0)))
    dest = dest or run_dir / RECOMMENDATIONS
    with atomic_file(dest) as tmp:
        table.write_parquet(tmp)
    return dest


def recommend(run_dir, k: int = 10, users: list[int] | None = None, device: str | None = None,
              split_dir=None, out=None) -> Path:
    """Write the top ``k`` unrated items of each user (raw ``users`` ids, or every user with training
    ratings), best first, with titles, to ``out`` (default ``RUN_DIR/recommendations-k<k>[-users].parquet``);
    never to the run's own ``recommendations.parquet``, an output of ``train`` that caches verify."""
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
    """Top ``k`` items for a user absent from training, from their ratings {raw item id: rating}:
    the ratings are fed through the autoencoder (user-oriented autoencoder models only)."""
    config, data, estimator = load_run(run_dir, device)
    if not isinstance(estimator, RowsEstimator) or estimator.orientation != "user":
        raise RecsysError(f"a {config['model']} model cannot score a user absent from training; "
                          "use the autoencoder or autorec-user")
    col_of = {int(i): c for c, i in enumerate(data.item_ids)}
    unknown = [i for i in ratings if int(i) not in col_of]
    if unknown:
        raise RecsysError(f"item id(s) {', '.join(map(str, unknown[:5]))} are not in the catalogue of the split")
    if not ratings:
        raise RecsysError("give at least one rating to recommend for a new user")
    cols = np.array([col_of[int(i)] for i in ratings], np.int64)
    order = np.argsort(cols)
    values = np.array(list(ratings.values()), np.float32)[order]
    scores = estimator.score_new_user(cols[order], values)[None, :].copy()
    scores[0, cols] = -np.inf
    top = top_k(scores, k)
    return _recommendation_table(data, np.array([-1], np.int32), top, scores).drop("user_id")


def plot_learning_curve(history: dict, estimator, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    epochs = history["epoch"]
    valid = [np.nan if v is None else v for v in history["valid"]]
    if estimator.rating_model:
        ax.plot(epochs, np.sqrt(history["train_loss"]), marker=".", label="train RMSE (observed ratings, training mode)")
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
    ax.set_title(f"{estimator.config['model']}: learning curve")
    fig.tight_layout()
    with atomic_file(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------- CLI
def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_model_options(p: argparse.ArgumentParser) -> None:
    d = TRAINING_DEFAULTS
    g = p.add_argument_group("training (defaults depend on the model; see docs/train.md)")
    g.add_argument("--epochs", type=int, help="maximum number of epochs")
    g.add_argument("--batch-size", type=int, help="users (autoencoders) or ratings (MF, MLP, NCF) per batch")
    g.add_argument("--optimizer", choices=["sgd", "adam", "adagrad", "rmsprop"],
                   help="sgd is momentum SGD (the paper's choice with --lr 0.001..0.005)")
    g.add_argument("--lr", type=float, help="learning rate")
    g.add_argument("--weight-decay", type=float, help="L2 on weight matrices through the optimizer")
    g.add_argument("--momentum", type=float, help=f"momentum of sgd and rmsprop (default {d['momentum']})")
    g.add_argument("--lr-milestones", type=_int_list,
                   help="comma-separated epochs after which lr is multiplied by --lr-gamma "
                        "(the paper's schedule: 24,36,48,66,72)")
    g.add_argument("--lr-gamma", type=float, help=f"factor of the step schedule (default {d['lr_gamma']})")
    g.add_argument("--patience", type=int, help="stop after this many epochs without a better valid metric "
                                                "(0 = never stop early)")
    g.add_argument("--seed", type=int, help=f"seed of weights, shuffling, dropout and sampling (default {d['seed']})")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction,
                   help="bf16 autocast when training on CUDA (default on; ignored on CPU)")
    g.add_argument("--eval-batch-size", type=int, help="rows per evaluation batch (memory vs speed)")
    g.add_argument("-k", "--k", type=int, dest="k", help=f"cut-off of HR/NDCG/Recall and of the written "
                                                         f"recommendations (default {d['k']})")
    g.add_argument("--recall-users", type=int, help="test users sampled for full-catalogue Recall@K (0 = skip)")
    a = p.add_argument_group("autoencoder / AutoRec")
    a.add_argument("--preset", choices=sorted(PRESETS), help="the paper's architecture for that split: "
                   + "; ".join(f"{k}: {v['layers']} dropout {v['dropout']}" for k, v in PRESETS.items()))
    a.add_argument("--layers", type=_int_list, help="encoder layer sizes after the input, e.g. 512,512,1024 "
                                                   "(the decoder mirrors them)")
    a.add_argument("--activation", choices=list(ACTIVATIONS), help="activation of every layer")
    a.add_argument("--dropout", type=float, help="dropout on the code layer (MLP/NCF: between hidden layers)")
    a.add_argument("--constrained", action=argparse.BooleanOptionalAction,
                   help="tie decoder weights to the transposed encoder weights")
    a.add_argument("--last-layer-activation", action=argparse.BooleanOptionalAction,
                   help="apply the activation to the output layer too")
    a.add_argument("--noise", type=float, help="input dropout probability (denoising)")
    a.add_argument("--noise-loss", choices=["all", "dropped"],
                   help="with --noise: the loss covers all observed ratings (default) or only those dropped "
                        "from the input (pure denoising: copying the input earns nothing)")
    a.add_argument("--refeed", type=int, help="dense re-feeding steps per batch (the paper uses 1)")
    a.add_argument("--output-bias", choices=["mean", "zero"],
                   help="initial output bias: each output's mean training rating (default; linear output "
                        "only) or zero (the paper)")
    a.add_argument("--center", choices=["none", "row"],
                   help="row: the network reads and predicts residuals from each user's mean training rating "
                        "(shrunk toward the global mean), added back to every prediction; none: raw ratings "
                        "(the paper)")
    m = p.add_argument_group("MF / embedding MLP / NCF")
    m.add_argument("--dim", type=int, help="embedding size")
    m.add_argument("--hidden", type=_int_list, help="hidden layer sizes of the MLP tower, e.g. 64,32,16")
    m.add_argument("--l2", type=float, help="per-example L2 on the embeddings and biases a batch touches")
    m.add_argument("--squash", action=argparse.BooleanOptionalAction,
                   help="MF: squash the output into the rating range with a scaled sigmoid")
    m.add_argument("--negatives", type=int, help="NCF: sampled negatives per positive, resampled every epoch")


OPTION_NAMES = ["epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "lr_milestones", "lr_gamma",
                "patience", "seed", "amp", "eval_batch_size", "k", "recall_users", "preset", "layers",
                "activation", "dropout", "constrained", "last_layer_activation", "noise", "noise_loss", "refeed", "output_bias", "center",
                "dim",
                "hidden", "l2", "squash", "negatives"]


def _cmd_train(args) -> int:
    options = {name: getattr(args, name) for name in OPTION_NAMES}
    metrics = train(args.split_dir, args.run_dir, args.model, resume=args.resume, device=args.device, **options)
    print(json.dumps(_summary(metrics), indent=2))
    return 0


def _summary(metrics: dict) -> dict:
    return {"model": metrics["model"], "test": metrics.get("test"), "beaten_by": metrics["beaten_by"],
            "baselines_test": {k: v.get("test") for k, v in metrics["baselines"].items()}}


def _cmd_evaluate(args) -> int:
    print(json.dumps(_summary(evaluate(args.run_dir, args.device, args.split_dir)), indent=2))
    return 0


def _cmd_recommend(args) -> int:
    if args.ratings:
        try:
            ratings = {int(i): float(r) for i, r in (pair.split(":") for pair in args.ratings.split(","))}
        except ValueError:
            raise RecsysError(f"--ratings must look like 'item:rating,item:rating', got {args.ratings!r}") from None
        print(recommend_for_ratings(args.run_dir, ratings, args.k, args.device))
        return 0
    path = recommend(args.run_dir, args.k, args.users, args.device, args.split_dir, out=args.out)
    print(path)
    return 0


def add_cli(subparsers) -> None:
    models = "; ".join(f"{name}: {spec.help}" for name, spec in MODELS.items())
    p = subparsers.add_parser("train", help="train a model on one split folder of stage 3",
                              description="Train a model on one stage-3 split folder and write a run folder "
                                          "(config, checkpoint, model, history, learning curve, metrics with "
                                          "baselines, test predictions, top-K recommendations).")
    p.add_argument("split_dir", help="a stage-3 folder, e.g. data/matrices/N3M")
    p.add_argument("run_dir", help="the run folder to write (created if missing)")
    p.add_argument("--model", default="autoencoder", choices=list(MODELS), help=f"the model: {models}")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in RUN_DIR from its checkpoint with its saved options (only "
                        "--epochs, --patience and evaluation options may change); gives exactly the result "
                        "of an uninterrupted run")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: cuda when present, else cpu)")
    _add_model_options(p)
    p.set_defaults(func=_cmd_train)

    e = subparsers.add_parser("evaluate", help="re-evaluate a trained run against the baselines",
                              description="Evaluate the model of RUN_DIR (RMSE/MAE on valid and test, HR@K and "
                                          "NDCG@K with sampled negatives when the split has them, full-catalogue "
                                          "Recall@K) beside the baselines; rewrites metrics.json and "
                                          "predictions.parquet.")
    e.add_argument("run_dir", help="a run folder written by `train`")
    e.add_argument("--split-dir", help="evaluate on this split folder instead of the one trained on "
                                       "(same users and items)")
    e.add_argument("--device", help="cpu, cuda, cuda:N or auto (default auto)")
    e.set_defaults(func=_cmd_evaluate)

    r = subparsers.add_parser("recommend", help="write top-K recommendations of a trained run",
                              description="Write the K best items each user has not rated (user_id, rank, "
                                          "item_id, title, score) to a new file, RUN_DIR/recommendations-kK.parquet "
                                          "or --out; the run's own recommendations.parquet is never touched. With "
                                          "--ratings, print the top K for a new user instead (autoencoder models).")
    r.add_argument("run_dir", help="a run folder written by `train`")
    r.add_argument("-k", "--k", type=int, default=10, help="items per user (default 10)")
    r.add_argument("--users", type=_int_list, help="comma-separated raw user ids (default: every user)")
    r.add_argument("--ratings", help="ratings of a user absent from training, 'item_id:rating,...' (raw ids)")
    r.add_argument("--split-dir", help="use this split folder instead of the one trained on")
    r.add_argument("--out", help="the Parquet file to write (default RUN_DIR/recommendations-kK.parquet, "
                                 "-users added with --users)")
    r.add_argument("--device", help="cpu, cuda, cuda:N or auto (default auto)")
    r.set_defaults(func=_cmd_recommend)
