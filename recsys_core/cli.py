"""``python -m recsys_core <stage> ...``: run one stage without Prefect.

Each stage module defines ``add_cli(subparsers)``, which adds its sub-command and sets ``func`` to a
function taking the parsed ``argparse.Namespace``. Errors of type RecsysError are printed as one
sentence with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from recsys_core.errors import RecsysError

# Sub-command modules, in pipeline order.
STAGE_MODULES = [
    "recsys_core.synth",
    "recsys_core.convert",
    "recsys_core.split",
    "recsys_core.matrices",
    "recsys_core.train",
    "recsys_core.serving.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recsys_core",
        description="Collaborative-filtering pipeline stages, one at a time (no Prefect needed).",
    )
    sub = parser.add_subparsers(dest="command", metavar="<stage>", required=True)
    for name in STAGE_MODULES:
        importlib.import_module(name).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except RecsysError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; outputs already in place are complete, partial ones were discarded", file=sys.stderr)
        return 130
    return int(result or 0)
