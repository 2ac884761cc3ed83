"""``recsys registry ls|show|promote|rollback``: the model registry (``recsys_core.registry``).

Kept light like every sub-command: nothing here imports torch, fastapi or uvicorn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from recsys_core.errors import RecsysError

if TYPE_CHECKING:
    from recsys_core.records import HistoryEntry


def _registry(args):
    from recsys_core.registry import Registry  # with rich, ~0.4 s of `recsys registry --help` (0.23 -> 0.68 s)

    return Registry(args.registry)


def _short(event: HistoryEntry) -> dict:
    """One history event as a table row."""
    primary = event.primary_metric
    return {"time": event.time, "event": event.event, "version": event.version, "model": event.run.model,
            "run": Path(event.run_dir).name,
            f"valid {primary or ''}".strip(): _round(event.run.value("valid", primary)),
            f"test {primary or ''}".strip(): _round(event.run.value("test", primary)), "reason": event.reason}


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def _print_table(title: str, rows: list[dict]) -> None:
    from rich.console import Console  # rich: not for `--help` (see _registry)
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console(width=160).print(table)


def _cmd_ls(args) -> int:
    registry = _registry(args)
    rows = []
    for name in registry.names():
        try:
            champion, note = registry.champion(name), None
        except RecsysError as err:   # one damaged pointer does not hide the other models
            champion, note = None, str(err)
        row = {"name": name, "version": champion.version if champion else None,
               "model": champion.run.model if champion else None, "run_dir": champion.run_dir if champion else None,
               "promoted_at": champion.promoted_at if champion else None, "events": len(registry.history(name))}
        rows.append({**row, "problem": note} if note else row)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        _print_table(f"Registry {args.registry}", rows)
    else:
        print(f"{args.registry}: no registry models yet")
    return 0


def _cmd_show(args) -> int:
    registry = _registry(args)
    champion = registry.champion(args.name)
    history = registry.history(args.name)
    if champion is None and not history:
        raise RecsysError(f"{args.registry} has no registry model {args.name!r}; "
                          f"known: {', '.join(registry.names()) or 'none'}")
    if args.json:
        print(json.dumps({"champion": champion.to_json() if champion else None,
                          "history": [event.to_json() for event in history]}, indent=2))
        return 0
    if champion:
        print(f"{args.name}: champion version {champion.version} ({champion.run.model}) since "
              f"{champion.promoted_at}\n  run: {champion.run_dir}\n  reason: {champion.reason}")
    else:
        print(f"{args.name}: no champion")
    _print_table(f"History of {args.name} (oldest first)", [_short(e) for e in history])
    return 0


def _cmd_promote(args) -> int:
    registry = _registry(args)
    event = registry.promote(args.name, args.run_dir, f"manual: {args.reason}" if args.reason else "manual promotion",
                             by="cli", primary_metric=args.primary_metric, split_stats=args.split_stats)
    print(f"{args.name}: version {event.version} is now the champion ({event.run_dir})")
    return 0


def _cmd_rollback(args) -> int:
    registry = _registry(args)
    event = registry.rollback(args.name, args.to, args.reason or "")
    print(f"{args.name}: rolled back from version {event.from_version} to version {event.version} "
          f"({event.run_dir})")
    return 0


def add(subparsers, name: str, summary: str) -> None:
    r = subparsers.add_parser(name, help=summary,
                              description="The model registry under a data dir: named models, each with a "
                                          "champion (the run the service answers from) and an append-only history.")
    r.add_argument("--registry", default="data/registry", help="registry folder (default data/registry: "
                                                                "the flow's data dir + /registry)")
    sub = r.add_subparsers(dest="registry_command", metavar="<command>", required=True)
    ls = sub.add_parser("ls", help="every registry model and its champion")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=_cmd_ls)
    show = sub.add_parser("show", help="a registry model's champion and history")
    show.add_argument("name", help="registry model name, e.g. netflix-N3M")
    show.add_argument("--json", action="store_true", help="print JSON (the whole history) instead of a table")
    show.set_defaults(func=_cmd_show)
    promote = sub.add_parser("promote", help="make a run folder the champion (manual: no comparison)",
                             description="Verify RUN_DIR (model.pt, config.json, metrics.json; every file of "
                                         "its manifest unchanged) and make it the champion of NAME as a new "
                                         "version. The flow's --registry-model promotes only better models; "
                                         "this command is the operator's override.")
    promote.add_argument("name", help="registry model name (created if new)")
    promote.add_argument("run_dir", help="a run folder written by `train` or the flow")
    promote.add_argument("--reason", help="why, recorded in the history")
    promote.add_argument("--split-stats", metavar="SPLIT_DIR",
                         help="the stage-2 split folder the run was trained on (its stats.json gives the "
                              "training dates that GET /model reports)")
    promote.add_argument("--primary-metric", help="the metric later challengers are compared on "
                                                  "(default: kept, or chosen by the first comparison)")
    promote.set_defaults(func=_cmd_promote)
    rollback = sub.add_parser("rollback", help="point the champion back at an earlier version")
    rollback.add_argument("name", help="registry model name")
    rollback.add_argument("--to", type=int, help="version to return to (default: the champion before the current)")
    rollback.add_argument("--reason", help="why, recorded in the history")
    rollback.set_defaults(func=_cmd_rollback)
