"""``python -m recsys_core registry ls|show|promote|rollback`` and ``python -m recsys_core serve``.

Kept light: nothing here imports fastapi, uvicorn or torch until ``serve`` runs.
"""

from __future__ import annotations

import json
from pathlib import Path


def _registry(args):
    from recsys_core.registry import Registry

    return Registry(args.registry)


def _short(event: dict) -> dict:
    """One history event as a table row."""
    metrics = event.get("metrics") or {}
    primary = event.get("primary_metric")
    valid = (metrics.get("valid") or {}).get(primary) if primary else None
    test = (metrics.get("test") or {}).get(primary) if primary else None
    return {"time": event.get("time"), "event": event.get("event"), "version": event.get("version"),
            "model": event.get("model"), "run": Path(event.get("run_dir") or "").name,
            f"valid {primary or ''}".strip(): _round(valid), f"test {primary or ''}".strip(): _round(test),
            "reason": event.get("reason")}


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def _print_table(title: str, rows: list[dict]) -> None:
    from rich.console import Console
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
        champion = registry.champion(name) or {}
        rows.append({"name": name, "version": champion.get("version"), "model": champion.get("model"),
                     "run_dir": champion.get("run_dir"), "promoted_at": champion.get("promoted_at"),
                     "events": len(registry.history(name))})
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        _print_table(f"Registry {args.registry}", rows)
    else:
        print(f"{args.registry}: no registry models yet")
    return 0


def _cmd_show(args) -> int:
    from recsys_core.errors import RecsysError

    registry = _registry(args)
    champion = registry.champion(args.name)
    history = registry.history(args.name)
    if champion is None and not history:
        raise RecsysError(f"{args.registry} has no registry model {args.name!r}; "
                          f"known: {', '.join(registry.names()) or 'none'}")
    if args.json:
        print(json.dumps({"champion": champion, "history": history}, indent=2))
        return 0
    if champion:
        print(f"{args.name}: champion version {champion['version']} ({champion['model']}) since "
              f"{champion['promoted_at']}\n  run: {champion['run_dir']}\n  reason: {champion.get('reason')}")
    else:
        print(f"{args.name}: no champion")
    _print_table(f"History of {args.name} (oldest first)", [_short(e) for e in history])
    return 0


def _cmd_promote(args) -> int:
    registry = _registry(args)
    event = registry.promote(args.name, args.run_dir, f"manual: {args.reason}" if args.reason else "manual promotion",
                             by="cli", primary_metric=args.primary_metric, split_stats=args.split_stats)
    print(f"{args.name}: version {event['version']} is now the champion ({event['run_dir']})")
    return 0


def _cmd_rollback(args) -> int:
    registry = _registry(args)
    event = registry.rollback(args.name, args.to, args.reason or "")
    print(f"{args.name}: rolled back from version {event['from_version']} to version {event['version']} "
          f"({event['run_dir']})")
    return 0


def single_threaded_blas() -> list[str]:
    """Set every loaded OpenBLAS (numpy's, scipy's) to one thread; returns the libraries set.

    A request's product (a user vector times the 64 x 17,733 output layer) is far too small to split:
    with OpenBLAS's 2 threads it took 26 ms on the loaded 2-core machine, with 1 thread 1.3 ms. numpy is
    imported before this command runs, so the OPENBLAS_NUM_THREADS variable would come too late."""
    import ctypes

    done = []
    with open("/proc/self/maps") as maps:
        paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    for path in paths:
        lib = ctypes.CDLL(path)
        for symbol in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(lib, symbol):
                getattr(lib, symbol)(1)
                done.append(path)
                break
    return done


def _cmd_serve(args) -> int:
    import logging

    import torch
    import uvicorn

    from recsys_core.serving.app import create_app

    # One thread per product (torch and BLAS): a request is one small matrix product; several threads per
    # product only fight each other and the event loop for the cores.
    torch.set_num_threads(args.torch_threads)
    single_threaded_blas()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(args.registry, args.model, device=args.device, watch_interval=args.watch_interval)
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log, log_level="info")
    return 0


def add_cli(subparsers) -> None:
    r = subparsers.add_parser("registry", help="list, show, promote or roll back registry models",
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

    s = subparsers.add_parser("serve", help="HTTP recommendation service answering from a registry champion",
                              description="Serve the champion of registry model MODEL over HTTP (FastAPI + "
                                          "uvicorn): /health, /model, /users/{id}/recommendations, "
                                          "POST /recommendations, /items/{id}/similar, POST /reload. A new "
                                          "champion is picked up without dropping requests. See docs/serving.md.")
    s.add_argument("--registry", required=True, help="registry folder, e.g. data/registry")
    s.add_argument("--model", required=True, help="registry model name, e.g. netflix-N3M")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--watch-interval", type=float, default=2.0,
                   help="seconds between looks at the champion pointer (default 2; 0 = only POST /reload)")
    s.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    s.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (default 1)")
    s.add_argument("--access-log", action="store_true", help="log every request")
    s.set_defaults(func=_cmd_serve)
