"""The full pipeline's parameters, declared once: ``PipelineParams``, a frozen dataclass, one field each.

From this declaration are generated
- the signature (and the documented ``Args``) of the flow ``full_pipeline`` (``flow_signature``), from which
  Prefect builds the deployment's parameter schema: deployments keep the flat parameters
  (``prefect deployment run ... -p models='["mf"]'``);
- the command line of ``python flows/full.py`` (``build_parser``; ``--data-dir`` is ``data_dir``);
- the checks of a parameter object, as a deployment or the flow gets it (``check_parameters``): unknown
  names, old spellings, types and choices, one sentence each;
- the table of parameters in README.md (``markdown_table``; ``python flows/parameters.py --markdown`` prints
  it, tests/test_parameters.py checks README.md holds exactly this);
- the check of a prefect.yaml's deployments before ``prefect deploy`` (``python flows/parameters.py --check
  prefect.yaml``; tests/test_parameters.py runs it on the repository's).

A parameter renamed keeps its old spelling in ``old`` for one release: the command line and
``check_parameters`` accept it with a deprecation line.

This module imports no Prefect (and no torch until a check needs the model catalogue).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

if __package__ in (None, ""):  # run as a script: python flows/parameters.py --markdown
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from recsys_core import models as catalogue  # discovers (imports) its model modules, so torch, at the first call
from recsys_core.errors import RecsysError
from recsys_core.settings import RunSettings, split_legacy
from recsys_core.split import PROTOCOLS
from recsys_core.split import check_options as check_split_options
from recsys_core.sweep import parse_sweep
from recsys_core.threads import check_threads
from tasks.fanout import RUNNERS, check_runner

log = logging.getLogger("recsys_core.flow")

UNTIL = ("convert", "split", "matrices", "train")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_MODELS = ["autoencoder"]
# Embedded default sample: small enough for the whole run to take well under 3 minutes on 2 CPU cores.
DEFAULT_SCALE = 0.01

# How a value is written on the command line: "text" (a word), "number" (int/float), "list" (words),
# "json" (a JSON object).
CLI_FORMS = ("text", "number", "list", "json")


def parameter(default: Any, help: str, *, group: str, choices: tuple | None = None, metavar: str | None = None,
              cli: str | None = None, shown_default: str | None = None, old: tuple[str, ...] = ()) -> Any:
    """A field of ``PipelineParams`` with what the command line and the docs need; ``help`` is Markdown
    (backticks, links) and may name ``{models}`` (the registered models); ``shown_default``: the default as
    the docs say it where the value (None) means "chosen" or "from the environment"."""
    meta = {"help": help, "group": group, "choices": choices, "metavar": metavar, "cli": cli,
            "shown_default": shown_default, "old": tuple(old)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class PipelineParams:
    """Every parameter of ``full_pipeline`` (and of ``python flows/full.py``), checked when made."""

    # data
    source: str = parameter(
        "sample", group="data", metavar="PATH|sample",
        help="`sample` (generate one under DATA_DIR/raw/sample/), a Netflix path in any form (a folder holding "
        "`training_set/` + `movie_titles.txt`, a `training_set/` folder, `training_set.tar`, "
        "`nf_prize_dataset.tar.gz`, the Kaggle \"Netflix Prize data\" folder or its zip), or a MovieLens folder "
        "(100K, 1M, 20M/25M/latest)")
    data_dir: str = parameter("data", group="data", metavar="DIR",
                              help="where every stage writes (`converted/`, `splits/`, `matrices/`, `runs/`)")
    sample_scale: float = parameter(
        DEFAULT_SCALE, group="data",
        help="size of the generated sample as a fraction of Netflix (1.0 = 17,770 movies, 480,189 users, 100M "
        "ratings)")
    sample_seed: int = parameter(0, group="data", help="seed of the generated sample")
    # splits
    protocol: str = parameter(
        "netflix-time", group="splits", choices=PROTOCOLS,
        help="`netflix-time` (the splits of arXiv 1708.01715), `time` (one global time cut; quantile 0.9 by "
        "default), `chrono` (per user by time: oldest 80% train, next 10% valid, latest 10% test), "
        "`leave-one-out`, `random`, `netflix-probe` (the Netflix Prize's probe.txt of the source; "
        "[docs/prize.md](docs/prize.md))")
    splits: list[str] = parameter(["N3M"], group="splits", metavar="NAME",
                                  help="the netflix-time splits to cut: any of `N3M N6M N1Y NF`")
    split_options: dict | None = parameter(
        None, group="splits", cli="json",
        help="the protocol's own options as JSON, e.g. `'{\"quantile\": 0.9}'` (time), `'{\"fraction\": 0.1}'` "
        "(random), `'{\"negatives\": 99, \"valid\": true}'` (leave-one-out), `'{\"valid_share\": 0.5}'` "
        "(netflix-time, netflix-probe), `'{\"train_share\": 0.8, \"valid_share\": 0.1}'` (chrono); checked "
        "before the first stage")
    # models
    models: list[str] = parameter(
        DEFAULT_MODELS, group="models", metavar="MODEL",
        help="any registered model (`{models}`; `blend` trains after the others); the baselines are evaluated "
        "beside each")
    model_options: dict[str, dict] | None = parameter(
        None, group="models", cli="json",
        help="options per model, a JSON object keyed by model name: "
        "`'{\"autoencoder\": {\"layers\": [128, 256, 256], \"epochs\": 20}}'`; the option names of "
        "`recsys train --help` (`_` for `-`), JSON values; every model's defaults in [docs/train.md](docs/train.md)")
    device: str = parameter("auto", group="models", choices=DEVICES,
                            help="`auto` (CUDA when available), `cpu`, `cuda`")
    seed: int = parameter(0, group="models", help="seed of the splits and of training (models with a `seed` "
                          "option; `model_options` may set another)")
    top_k: int = parameter(10, group="models",
                           help="length of the recommendation lists and cut-off of HR/NDCG/Recall")
    until: str = parameter("train", group="models", choices=UNTIL,
                           help="last stage to run: `convert`, `split`, `matrices` or `train`")
    # where training runs
    task_runner: str = parameter(
        "sequential", group="where training runs", choices=RUNNERS,
        help="where training runs: `sequential` (in the flow's process, one after another) or `dask` (every "
        "training and sweep trial of a round at once on a Dask cluster: a local one sized to the machine unless "
        "`--dask-address`); [docs/dask.md](docs/dask.md)")
    dask_address: str | None = parameter(
        None, group="where training runs", metavar="tcp://HOST:8786",
        help="an existing Dask scheduler, e.g. `tcp://127.0.0.1:8786` (implies `--task-runner dask`; every worker "
        "must see the data dir at the same path and run the same code)")
    dask_workers: int | None = parameter(None, group="where training runs", metavar="N",
                                         shown_default="one per available core",
                                         help="worker processes of the local cluster")
    threads: int | None = parameter(
        None, group="where training runs", metavar="N", shown_default="chosen",
        help="torch threads per training; default: the cores available to the process (affinity, cgroup quota) "
        "shared by the trainings at once, fewer when other work holds some of them at the start (measured), or "
        "`RECSYS_THREADS`; a resumed run keeps its count; logged and in `metrics.json`")
    # sweeps
    sweep: dict | str | None = parameter(
        None, group="sweeps", metavar="FILE|default", cli="text",
        help="a hyperparameter sweep declared in a YAML/JSON file (the flow's parameter: the sweep object), or "
        "`default` (every model of `--models` over its shipped space); chosen on valid only; "
        "[docs/sweeps.md](docs/sweeps.md)")
    # tracking and the registry
    mlflow_tracking_uri: str | None = parameter(
        None, group="tracking and the registry", metavar="URI", shown_default="`$MLFLOW_TRACKING_URI`",
        help="log every training run to this MLflow store, e.g. `sqlite:///mlflow.db`; unset: no tracking; needs "
        "`pip install '.[mlflow]'`")
    registry_model: str | None = parameter(
        None, group="tracking and the registry", metavar="NAME",
        help="registry model (e.g. `netflix-{split}`) whose champion the trained models challenge; only a "
        "better one is promoted (DATA_DIR/registry, [docs/serving.md](docs/serving.md))")
    promotion_margin: float = parameter(
        0.001, group="tracking and the registry",
        help="relative improvement on the primary valid metric a challenger needs to be promoted")

    def __post_init__(self) -> None:
        for p in PARAMETERS:
            value = getattr(self, p.name)
            if not _is_a(value, p.annotation):
                raise RecsysError(f"parameter {p.name} must be {_type_words(p.annotation)}, got {value!r}")
            if p.choices and value not in p.choices:
                raise RecsysError(f"{p.name} must be one of {', '.join(p.choices)}, got {value!r}")

    def values(self) -> dict[str, Any]:
        return {p.name: getattr(self, p.name) for p in PARAMETERS}


@dataclass(frozen=True)
class Parameter:
    """One parameter as the generators read it (made from a field of ``PipelineParams``)."""

    name: str
    annotation: Any
    default: Any
    help: str
    group: str
    choices: tuple | None = None
    metavar: str | None = None
    cli: str = "text"
    shown_default: str | None = None
    old: tuple[str, ...] = ()
    flow: bool = True                 # False: the command line only

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def old_flags(self) -> tuple[str, ...]:
        return tuple("--" + name.replace("_", "-") for name in self.old)

    def help_markdown(self) -> str:
        if "{models}" not in self.help:
            return self.help
        return self.help.replace("{models}", " ".join(_registered_models()))

    def help_text(self) -> str:
        """The help without Markdown: links as their text, no backticks."""
        text = re.sub(r"\[([^]]+)\]\([^)]+\)", r"\1", self.help_markdown())
        return text.replace("`", "")

    def default_markdown(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None:
            return ""
        if isinstance(self.default, list):
            return f"`{' '.join(map(str, self.default))}`"
        return f"`{self.default}`"


# --------------------------------------------------------------------------- types


def _alternatives(annotation: Any) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _is_a(value: Any, annotation: Any) -> bool:
    for kind in _alternatives(annotation):
        origin = typing.get_origin(kind) or kind
        if kind is type(None):
            if value is None:
                return True
        elif origin is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return True
        elif origin is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif origin is list:
            args = typing.get_args(kind)
            if isinstance(value, (list, tuple)) and (not args or all(_is_a(v, args[0]) for v in value)):
                return True
        elif isinstance(value, origin):
            return True
    return False


def _type_words(annotation: Any) -> str:
    words = {str: "a string", int: "an integer", float: "a number", dict: "an object", type(None): "null"}
    out = []
    for kind in _alternatives(annotation):
        origin = typing.get_origin(kind) or kind
        out.append("a list of strings" if origin is list else words.get(origin, getattr(origin, "__name__", "?")))
    return " or ".join(out)


def _cli_form(annotation: Any) -> str:
    base = {a for a in _alternatives(annotation) if a is not type(None)}
    if base <= {int, float}:
        return "number"
    if any(typing.get_origin(a) is list or a is list for a in base):
        return "list"
    if any(typing.get_origin(a) is dict or a is dict for a in base):
        return "json"
    return "text"


def _parameters() -> tuple[Parameter, ...]:
    hints = typing.get_type_hints(PipelineParams)
    out = []
    for f in dataclasses.fields(PipelineParams):
        meta = f.metadata
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        out.append(Parameter(name=f.name, annotation=hints[f.name], default=default, help=meta["help"],
                             group=meta["group"], choices=meta["choices"], metavar=meta["metavar"],
                             cli=meta["cli"] or _cli_form(hints[f.name]), shown_default=meta["shown_default"],
                             old=meta["old"]))
    return tuple(out)


PARAMETERS: tuple[Parameter, ...] = _parameters()
# Of the command line only: not a parameter of the flow.
REPORT_JSON = Parameter(name="report_json", annotation=str | None, default=None, metavar="FILE",
                        group="tracking and the registry", flow=False,
                        help="also write the run's report (stage statuses, stats, metrics, paths) as JSON (command "
                        "line only)")
CLI_PARAMETERS: tuple[Parameter, ...] = (*PARAMETERS, REPORT_JSON)
NAMES = tuple(p.name for p in PARAMETERS)


# --------------------------------------------------------------------------- the flow's signature


def flow_signature(fn: Callable) -> Callable:
    """Give ``fn(**values)`` the declared parameters as its signature (keyword-only, annotated, with their
    defaults) and their help as the ``Args`` of its docstring: what Prefect builds the flow's parameter schema
    (and the descriptions the UI shows) from."""
    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default, annotation=p.annotation)
         for p in PARAMETERS], return_annotation=inspect.signature(fn).return_annotation)
    fn.__annotations__ = {**{p.name: p.annotation for p in PARAMETERS}, "return": fn.__annotations__.get("return")}
    args = "\n".join(f"    {p.name}: {p.help_text()}" for p in PARAMETERS)
    fn.__doc__ = f"{inspect.cleandoc(fn.__doc__ or '')}\n\nArgs:\n{args}\n"
    return fn


# --------------------------------------------------------------------------- checks of a parameter object


def check_parameters(values: Mapping[str, Any], where: str = "parameters") -> PipelineParams:
    """A parameter object (a deployment's ``parameters``, a flow call's) as ``PipelineParams``: old spellings
    renamed with a deprecation line, an unknown name, a wrong type or a value outside its choices refused
    with one sentence."""
    if not isinstance(values, Mapping):
        raise RecsysError(f"{where} must be an object of parameters, got {values!r}")
    renamed = dict(values)
    for p in PARAMETERS:
        for old in p.old:
            if old in renamed:
                log.warning("%s: parameter %s is deprecated, use %s (the old name is accepted for one release)",
                            where, old, p.name)
                if p.name in renamed:
                    raise RecsysError(f"{where} give both {old} and {p.name}; keep {p.name}")
                renamed[p.name] = renamed.pop(old)
    stray = sorted(set(renamed) - set(NAMES))
    if stray:
        raise RecsysError(f"{where} name {', '.join(map(str, stray))}, which the pipeline has no parameter of; "
                          f"its parameters are {', '.join(NAMES)}")
    return PipelineParams(**renamed)


# --------------------------------------------------------------------------- what the parameters resolve to


@dataclass(frozen=True)
class Resolved:
    """The parameters turned into what the stages get, every part checked before the first stage runs."""

    arguments: dict[str, tuple[dict, RunSettings]]  # per model (a sweep's own models included): what ``train``
    #                                 gets, the model's options and its run settings
    sweep: Any                      # recsys_core.sweep.SweepSpec, or None


def resolve(p: PipelineParams) -> Resolved:
    """Check every model option, split option, runner, thread count, sweep and registry option of ``p`` (one
    sentence each, before any work) and return the models' options and the sweep."""
    arguments = train_arguments(p.models, p.model_options, seed=p.seed, k=p.top_k)
    check_split_options(p.protocol, split_options(p))
    check_runner(p.task_runner, p.dask_address, p.dask_workers)
    check_threads(p.threads)  # a bad value is one sentence now, not in every task
    sweep = None
    if p.sweep is not None:
        sweep = parse_sweep(p.sweep, p.models, seed=p.seed)
        stray = sorted(set(sweep.models) - set(p.models))
        if stray:
            arguments.update(train_arguments(stray, None, seed=p.seed, k=p.top_k))
    if p.registry_model:
        from tasks.promotion import check_options  # imports Prefect, which this module does not

        check_options(p.registry_model, p.promotion_margin, list(p.splits) if p.protocol == "netflix-time" else None)
    return Resolved(arguments, sweep)


def train_arguments(models: list[str], model_options: dict | None, seed: int, k: int
                    ) -> dict[str, tuple[dict, RunSettings]]:
    """What ``recsys_core.train`` gets for each model: its options (the flow's ``seed``, for models that have
    one, then the model's ``model_options``) and its run settings (``top_k`` as k; a run setting still given
    among ``model_options``, as before run settings existed, is moved there with a deprecation line); every
    one checked here, before any stage runs."""
    if not models:
        raise RecsysError(f"models is empty; name at least one of {', '.join(catalogue.names())}")
    for model in models:
        catalogue.get(model)  # an unknown name is refused with the list of registered models
    model_options = {} if model_options is None else model_options
    if not isinstance(model_options, dict) or not all(isinstance(v, dict) for v in model_options.values()):
        raise RecsysError("model_options must map model names to objects of options, e.g. "
                          f"{{\"autoencoder\": {{\"layers\": [128, 256, 256]}}}}, got {model_options!r}")
    stray = sorted(set(model_options) - set(models))
    if stray:
        raise RecsysError(f"model_options names {', '.join(stray)}, which {'is' if len(stray) == 1 else 'are'} "
                          f"not among the models to train ({', '.join(models)}); add it to models or drop its options")
    for model in models:  # a blend of this flow's runs needs a rating model among them (or named members)
        if getattr(catalogue.get(model).estimator, "trains_after_others", False) and not model_options.get(
                model, {}).get("members") and not any(catalogue.get(m).estimator.rating_model and not getattr(
                    catalogue.get(m).estimator, "trains_after_others", False) for m in models):
            raise RecsysError(f"{model} blends the other rating models of the flow, and models names none; add "
                              "some (e.g. mf knn-item svdpp) or name its members in model_options")
    arguments = {}
    for model in models:
        registration = catalogue.get(model)
        given, moved = split_legacy(model_options.get(model), where=f"model_options of {model}")
        options = {**({"seed": seed} if "seed" in registration.options.names() else {}), **given}
        registration.resolve(options)  # RecsysError: one sentence naming the model, the option and the value
        arguments[model] = (options, RunSettings(**{"k": k, **moved}))
    return arguments


def split_options(p: PipelineParams, source_path: Path | None = None) -> dict:
    """The split stage's options: the flow's seed, the user's ``split_options``, for netflix-time ``splits`` and
    for netflix-probe the raw source (its probe.txt, recsys_core/prize.py) unless the options name one."""
    options = {"seed": p.seed, **(p.split_options or {})}
    if p.protocol == "netflix-time":
        options["splits"] = list(p.splits)
    if p.protocol == "netflix-probe" and source_path is not None:
        options.setdefault("source", str(source_path))
    return options


def resolve_device(device: str) -> str:
    """``auto``: cuda when torch sees a GPU, else cpu."""
    if device != "auto":
        return device
    import torch  # torch (~1.5 s): only runs that train resolve the device

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- the command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python flows/full.py",
        description="Run the whole recommender pipeline as a Prefect flow, every stage cached by content. "
        "Option names are the flow's parameter names (use them with `prefect deployment run -p name=value`).")
    groups: dict[str, Any] = {}
    for p in CLI_PARAMETERS:
        group = groups.get(p.group) or groups.setdefault(p.group, parser.add_argument_group(p.group))
        kwargs: dict[str, Any] = {"dest": p.name, "default": p.default, "metavar": p.metavar,
                                  "help": (p.help_text() + _default_words(p)).replace("%", "%%")}
        if p.choices:
            kwargs.update(choices=p.choices, metavar=None)
        if p.cli == "number":
            kwargs["type"] = next(a for a in _alternatives(p.annotation) if a in (int, float))
        elif p.cli == "list":
            kwargs["nargs"] = "+"
        elif p.cli == "json":
            kwargs.update(type=_json_object, metavar=p.metavar or "JSON")
        group.add_argument(p.flag, **kwargs)
    return parser


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    """The command line's values by parameter name; an old spelling of an option is accepted with a line on
    stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for p in CLI_PARAMETERS:
        for old in p.old_flags:
            for i, arg in enumerate(argv):
                if arg == old or arg.startswith(old + "="):
                    print(f"warning: {old} is deprecated, use {p.flag} (the old name is accepted for one release)",
                          file=sys.stderr)
                    argv[i] = p.flag + arg[len(old):]
    return vars(build_parser().parse_args(argv))


def _default_words(p: Parameter) -> str:
    if p.shown_default is not None:
        return f" (default: {p.shown_default.replace('`', '')})"
    if p.default is None:
        return ""
    shown = " ".join(map(str, p.default)) if isinstance(p.default, list) else p.default
    return f" (default: {shown})"


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


# --------------------------------------------------------------------------- the docs table


def markdown_table() -> str:
    """README.md's table of parameters."""
    lines = ["| option | default | meaning |", "|---|---|---|"]
    for p in CLI_PARAMETERS:
        option = f"`{p.flag}{' ' + p.metavar if p.metavar and not p.choices and p.cli != 'list' else ''}`"
        cells = (option.replace("|", "\\|"), p.default_markdown(), p.help_markdown())
        lines.append("|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|")
    return "\n".join(lines) + "\n"


def _registered_models() -> list[str]:
    return catalogue.names()


def check_deployments(path) -> list[str]:
    """Check the parameters of every deployment of a prefect.yaml as the flow will (``check_parameters`` and
    ``resolve``: names, types, choices, every model's and the split's options, the registry name); one line
    each. RecsysError, naming the file and the deployment, for the first one that fails."""
    path = Path(path)
    lines = []
    for deployment in (yaml.safe_load(path.read_text()) or {}).get("deployments") or []:
        where = f"{path}: deployment {deployment.get('name')!r} parameters"
        resolve(check_parameters(deployment.get("parameters") or {}, where=where))
        lines.append(f"{path}: deployment {deployment.get('name')}: parameters ok")
    return lines


def _main(argv: list[str]) -> int:
    if argv == ["--markdown"]:
        sys.stdout.write(markdown_table())
        return 0
    if len(argv) == 2 and argv[0] == "--check":
        try:
            print("\n".join(check_deployments(argv[1])))
        except (RecsysError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    print("usage: python flows/parameters.py --markdown        README.md's table of parameters\n"
          "       python flows/parameters.py --check FILE      check the parameters of a prefect.yaml's deployments",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
