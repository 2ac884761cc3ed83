"""``recsys train|evaluate|recommend``: stage 4 (``recsys_core.train``).

The model options of ``train`` are generated from the registered models' option classes
(``recsys_core.options``): one flag per option name (``--layers 128,256,256`` for a list of integers,
``--constrained/--no-constrained`` for a switch), its help text from the option's declaration, with each
model's default. Flags are grouped by the models that take them; an option the chosen model does not
have is refused before anything runs. How the run is carried out and evaluated (device, threads, nproc,
resume, k, recall users, evaluation batch, amp) are the run settings (``recsys_core.settings.RunSettings``),
flags of their own.
"""

from __future__ import annotations

import argparse
import json

from recsys_core.errors import RecsysError


def int_list(text: str) -> list[int]:
    """``128,256,256`` -> [128, 256, 256] (the command-line form of a list-of-integers option)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _by_value(per_model: dict[str, object], shown=_shown) -> str:
    """'x' when every model agrees, else 'x for a, b; y for c'."""
    groups: dict[str, list[str]] = {}
    for model, value in per_model.items():
        groups.setdefault(shown(value), []).append(model)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{value} for {', '.join(names)}" for value, names in groups.items())


def model_option_table() -> dict[str, dict]:
    """Every option name of every registered model: {name: {"info": OptionInfo, "models": {model: info}}}.
    One name means one thing: its kind and choices must agree across models (checked here)."""
    from recsys_core import models  # at the top, `recsys evaluate --help` took 0.32 s instead of 0.16 s

    table: dict[str, dict] = {}
    for name, registration in models.catalogue().items():
        for info in registration.options.describe():
            entry = table.setdefault(info.name, {"info": info, "models": {}})
            first = entry["info"]
            if (first.kind, first.choices) != (info.kind, info.choices):
                raise TypeError(f"option {info.name} of model {name} is a {info.kind} {info.choices or ''} but "
                                f"a {first.kind} {first.choices or ''} elsewhere: one name, one meaning")
            entry["models"][name] = info
    return table


def add_model_options(parser: argparse.ArgumentParser) -> list[str]:
    """Add one flag per model option (grouped by the models that take it); returns the option names."""
    from recsys_core import models  # not for `--help` of evaluate/recommend (see model_option_table)

    every = models.names()
    groups: dict[tuple[str, ...], argparse._ArgumentGroup] = {}
    table = model_option_table()
    for name, entry in sorted(table.items(), key=lambda kv: -len(kv[1]["models"])):
        owners = tuple(entry["models"])
        if owners not in groups:
            title = "options of every model" if len(owners) == len(every) else f"options of {', '.join(owners)}"
            groups[owners] = parser.add_argument_group(title)
        info = entry["info"]
        helps = _by_value({m: i.help for m, i in entry["models"].items()}, shown=str)
        text = f"{helps} (default {_by_value({m: i.default for m, i in entry['models'].items()})}"
        bounds = info.range_text()
        text += f"; {bounds})" if bounds else ")"
        flags = ["--" + name.replace("_", "-")]
        kwargs: dict = {"dest": name, "default": None, "help": text.replace("%", "%%")}
        if info.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif info.kind == "ints":
            kwargs.update(type=int_list, metavar="N,N,...")
        elif info.kind in ("int", "float"):
            kwargs["type"] = int if info.kind == "int" else float
        elif info.choices is not None:
            kwargs["choices"] = list(info.choices)
        groups[owners].add_argument(*flags, **kwargs)
    return list(table)


def add(subparsers, name: str, summary: str) -> None:
    {"train": _add_train, "evaluate": _add_evaluate, "recommend": _add_recommend}[name](subparsers, name, summary)


def _add_train(subparsers, name: str, summary: str) -> None:
    from recsys_core import models  # not for `--help` of evaluate/recommend (see model_option_table)

    described = "; ".join(f"{n}: {r.help}" for n, r in models.catalogue().items())
    p = subparsers.add_parser(name, help=summary,
                              description="Train a model on one stage-3 split folder and write a run folder "
                                          "(config, model, metrics with baselines, test predictions, top-K "
                                          "recommendations; iterative models also checkpoint, history and "
                                          "learning curve). Every option is checked before anything runs.")
    p.add_argument("split_dir", help="a stage-3 folder, e.g. data/matrices/N3M")
    p.add_argument("run_dir", help="the run folder to write (created if missing)")
    p.add_argument("--model", default="autoencoder", choices=models.names(), metavar="MODEL",
                   help=f"the model (default autoencoder): {described}")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in RUN_DIR from its checkpoint with its saved options (only "
                        "--epochs and --patience may change; run settings not given keep the run's); gives "
                        "exactly the result of an uninterrupted run")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: cuda when present, else cpu)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads (default: the cores available to this process, from its CPU affinity and "
                        "cgroup quota, fewer when other work keeps some busy as training starts, or RECSYS_THREADS; "
                        "a resumed run keeps its count; the log and metrics.json say what was used)")
    run = p.add_argument_group("run settings (how the run is carried out and evaluated, not what the model learns)")
    run.add_argument("-k", "--k", type=int, metavar="K",
                     help="cut-off of HR/NDCG/Recall and length of the written recommendation lists (default 10; "
                          "a resumed run keeps its own)")
    run.add_argument("--recall-users", type=int, metavar="N",
                     help="test users sampled for full-catalogue Recall@K, 0 = skip (default 5000)")
    run.add_argument("--eval-batch-size", type=int, metavar="N",
                     help="rows per evaluation batch, memory vs speed (default 4096)")
    run.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                     help="bf16 autocast when training on CUDA, ignored on CPU (default on)")
    run.add_argument("--nproc", type=int, metavar="N",
                     help="processes training a model of the loop data-parallel on this host (DistributedDataParallel: "
                          "gloo on CPU, NCCL with one GPU each on CUDA); batch_size stays the examples per step over "
                          "all of them. Under torchrun the launcher's processes (default 1)")
    names = add_model_options(p)
    p.set_defaults(func=_train, option_names=names)


def _train(args) -> int:
    from recsys_core.settings import RunSettings  # with train: torch (~1.5 s), not for `--help`
    from recsys_core.train import train

    options = {name: getattr(args, name) for name in args.option_names if getattr(args, name) is not None}
    settings = RunSettings(device=args.device, threads=args.threads, processes=args.nproc, resume=args.resume,
                           k=args.k, recall_users=args.recall_users, eval_batch_size=args.eval_batch_size,
                           amp=args.amp)
    metrics = train(args.split_dir, args.run_dir, args.model, options, settings)
    if metrics is not None:  # None: one of the processes of a torchrun launch other than process 0
        print(json.dumps(_summary(metrics), indent=2))
    return 0


def _summary(metrics: dict) -> dict:
    return {"model": metrics["model"], "test": metrics.get("test"), "beaten_by": metrics["beaten_by"],
            "baselines_test": {k: v.get("test") for k, v in metrics["baselines"].items()}}


def _add_evaluate(subparsers, name: str, summary: str) -> None:
    e = subparsers.add_parser(name, help=summary,
                              description="Evaluate the model of RUN_DIR (RMSE/MAE on valid and test, HR@K and "
                                          "NDCG@K with sampled negatives when the split has them, full-catalogue "
                                          "Recall@K) beside the baselines; rewrites metrics.json and "
                                          "predictions.parquet.")
    e.add_argument("run_dir", help="a run folder written by `train`")
    e.add_argument("--split-dir", help="evaluate on this split folder instead of the one trained on "
                                       "(same users and items)")
    e.add_argument("--device", help="cpu, cuda, cuda:N or auto (default auto)")
    e.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from recsys_core.train import evaluate  # torch (~1.5 s): not for `--help` of evaluate/recommend

    print(json.dumps(_summary(evaluate(args.run_dir, args.device, args.split_dir)), indent=2))
    return 0


def _add_recommend(subparsers, name: str, summary: str) -> None:
    r = subparsers.add_parser(name, help=summary,
                              description="Write the K best items each user has not rated (user_id, rank, "
                                          "item_id, title, score) to a new file, RUN_DIR/recommendations-kK.parquet "
                                          "or --out; the run's own recommendations.parquet is never touched. With "
                                          "--ratings, "
                                          "print the top K for a new user instead (models that fold in a new "
                                          "user: user-facing autoencoders, MF, EASE, ALS).")
    r.add_argument("run_dir", help="a run folder written by `train`")
    r.add_argument("-k", "--k", type=int, default=10, help="items per user (default 10)")
    r.add_argument("--users", type=int_list, help="comma-separated raw user ids (default: every user)")
    r.add_argument("--ratings", help="ratings of a user absent from training, 'item_id:rating,...' (raw ids)")
    r.add_argument("--split-dir", help="use this split folder instead of the one trained on")
    r.add_argument("--out", help="the Parquet file to write (default RUN_DIR/recommendations-kK.parquet, "
                                 "-users added with --users)")
    r.add_argument("--device", help="cpu, cuda, cuda:N or auto (default auto)")
    r.set_defaults(func=_recommend)


def _recommend(args) -> int:
    from recsys_core.train import recommend, recommend_for_ratings  # torch (~1.5 s): not for --help

    if args.ratings:
        try:
            ratings = {int(i): float(r) for i, r in (pair.split(":") for pair in args.ratings.split(","))}
        except ValueError:
            raise RecsysError(f"--ratings must look like 'item:rating,item:rating', got {args.ratings!r}") from None
        print(recommend_for_ratings(args.run_dir, ratings, args.k, args.device))
        return 0
    print(recommend(args.run_dir, args.k, args.users, args.device, args.split_dir, out=args.out))
    return 0
