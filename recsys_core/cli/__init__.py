"""The command line, in ONE place: ``recsys <stage> ...`` or ``python -m recsys_core <stage> ...`` runs one stage
without Prefect. One module per stage here (``synth``, ``convert``, ``split``, ``matrices``, ``train`` with
``evaluate`` and ``recommend``; ``qualify`` for a Netflix Prize submission; ``registry`` and ``serve`` for the
retraining loop; ``verify`` for the flow's stage folders) defines its sub-command with ``add(subparsers, name)``
and calls the stage's library function.

A stage imports only what it needs: the parser is built for the sub-command named on the command line
alone (the others are listed by name and one-line help), and each section imports its library when it is
built, so ``recsys convert`` never imports torch. Errors of type RecsysError are printed as one sentence
with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from recsys_core.errors import RecsysError

# Sub-commands in pipeline order: section module and one-line help (shown by ``recsys --help``).
COMMANDS = {
    "synth": ("recsys_core.cli.synth", "generate synthetic Netflix-Prize-format data from a known low-rank model"),
    "convert": ("recsys_core.cli.convert", "stage 1: convert raw Netflix Prize / MovieLens files to Parquet"),
    "split": ("recsys_core.cli.split", "stage 2: split a stage-1 ratings folder into train/valid/test"),
    "matrices": ("recsys_core.cli.matrices", "stage 3: CSR matrices + id index of every split"),
    "train": ("recsys_core.cli.train", "stage 4: train a model on one split folder of stage 3"),
    "evaluate": ("recsys_core.cli.train", "re-evaluate a trained run against the baselines"),
    "recommend": ("recsys_core.cli.train", "write top-K recommendations of a trained run"),
    "qualify": ("recsys_core.cli.qualify", "Netflix Prize submission: predict every line of qualifying.txt"),
    "registry": ("recsys_core.cli.registry", "list, show, promote or roll back registry models (champions)"),
    "serve": ("recsys_core.cli.serve", "HTTP recommendation service answering from a registry champion"),
    "verify": ("recsys_core.cli.verify", "check stage folders against their manifests (size and sha256 of each file)"),
}


def build_parser(only: str | None = None, prog: str = "recsys") -> argparse.ArgumentParser:
    """The parser with every sub-command built (``only=None``), or only ``only``'s (the others listed)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Collaborative-filtering pipeline stages, one at a time (no Prefect needed).",
    )
    sub = parser.add_subparsers(dest="command", metavar="<stage>", required=True)
    for name, (module, summary) in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).add(sub, name, summary)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def _command(argv: list[str]) -> str:
    """The sub-command named on the command line ('' when none is: the parser then only lists them)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else ""
    return ""


def main(argv: list[str] | None = None, prog: str = "recsys") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(_command(argv), prog).parse_args(argv)
        result = args.func(args)
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; outputs already in place are complete, partial ones were discarded", file=sys.stderr)
        return 130
    return int(result or 0)


def console() -> None:
    """The ``recsys`` console script."""
    sys.exit(main())
