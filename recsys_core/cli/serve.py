"""``recsys serve``: the HTTP recommendation service (``recsys_core.serving``, docs/serving.md).

fastapi, uvicorn and torch are imported only when the command runs, never to build the parser.
"""

from __future__ import annotations

import ctypes
import logging
import os

from recsys_core.errors import RecsysError


def single_threaded_blas() -> list[str]:
    """Set every loaded OpenBLAS (numpy's, scipy's) to one thread; returns the libraries set.

    A request's product (a user vector times the 64 x 17,733 output layer) is far too small to split:
    with OpenBLAS's 2 threads it took 26 ms on the loaded 2-core machine, with 1 thread 1.3 ms. numpy is
    imported before this command runs, so the OPENBLAS_NUM_THREADS variable would come too late."""
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


MIN_KEY_CHARS = 16


def api_key(args) -> str | None:
    """The API key from ``--api-key-file`` (its first line) or ``RECSYS_API_KEY``; None when neither is set."""
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as fh:
                key, where = fh.readline().strip(), args.api_key_file
        except (OSError, UnicodeDecodeError) as err:
            raise RecsysError(f"{args.api_key_file}: cannot read the API key ({err})") from None
    elif os.environ.get("RECSYS_API_KEY"):
        key, where = os.environ["RECSYS_API_KEY"].strip(), "RECSYS_API_KEY"
    else:
        return None
    if len(key) < MIN_KEY_CHARS or any(c.isspace() or not c.isprintable() for c in key):
        raise RecsysError(f"{where}: the API key must be at least {MIN_KEY_CHARS} printable characters without "
                          "spaces, e.g. from `python -c \"import secrets; print(secrets.token_urlsafe(32))\"`")
    return key


def _serve(args) -> int:
    # torch, fastapi and uvicorn (~2 s): only when the service runs, never for the parser (or `recsys --help`)
    import torch
    import uvicorn

    from recsys_core.serving.app import create_app, is_loopback

    key = api_key(args)
    # One thread per product (torch and BLAS): a request is one small matrix product; several threads per
    # product only fight each other and the event loop for the cores.
    torch.set_num_threads(args.torch_threads)
    single_threaded_blas()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(args.registry, args.model, device=args.device, watch_interval=args.watch_interval,
                     api_key=key, reload_open=is_loopback(args.host), max_body_bytes=args.max_body_bytes,
                     max_ratings=args.max_ratings, max_header_bytes=args.max_header_bytes,
                     load_in_child=args.load == "child")
    # uvicorn's own limits, explicit: h11 (its header buffer is bounded; the gate also answers 431), open
    # connections + requests beyond --limit-concurrency get 503, idle keep-alive connections close after
    # --keep-alive seconds, and a shutdown waits at most 10 s for requests in flight.
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log, log_level="info", http="h11",
                h11_max_incomplete_event_size=args.max_header_bytes, limit_concurrency=args.limit_concurrency,
                timeout_keep_alive=args.keep_alive, backlog=2048, timeout_graceful_shutdown=10,
                server_header=False)
    return 0


def add(subparsers, name: str, summary: str) -> None:
    s = subparsers.add_parser(name, help=summary,
                              description="Serve the champion of registry model MODEL over HTTP (FastAPI + "
                                          "uvicorn): /health, /model, /users/{id}/recommendations, "
                                          "POST /recommendations, /items/{id}/similar, POST /reload, /metrics. "
                                          "A new champion is picked up without dropping requests. See "
                                          "docs/serving.md.")
    s.add_argument("--registry", required=True, help="registry folder, e.g. data/registry")
    s.add_argument("--model", required=True, help="registry model name, e.g. netflix-N3M")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--watch-interval", type=float, default=2.0,
                   help="seconds between looks at the champion pointer (default 2; 0 = only POST /reload)")
    s.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    s.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (default 1)")
    s.add_argument("--access-log", action="store_true", help="log every request")
    s.add_argument("--api-key-file", help="file whose first line is the API key; then every route but /health "
                                          "needs 'Authorization: Bearer <key>' (else RECSYS_API_KEY; none: open)")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20,
                   help="largest request body; a larger one gets 413 before it is read (default 1 MiB)")
    s.add_argument("--max-ratings", type=int, default=10_000,
                   help="most ratings in one POST /recommendations (default 10000; more get 422)")
    s.add_argument("--max-header-bytes", type=int, default=16 << 10,
                   help="largest request header block (default 16 KiB; more get 431 or 400)")
    s.add_argument("--limit-concurrency", type=int, default=256,
                   help="open connections and requests at once; beyond it uvicorn answers 503 (default 256)")
    s.add_argument("--keep-alive", type=int, default=5, help="seconds an idle keep-alive connection stays open "
                                                             "(default 5)")
    s.add_argument("--load", choices=("child", "in-process"), default="child",
                   help="where a champion whose scores are linear in a user vector (autoencoder, MF, ALS) is "
                        "loaded: a child process that also answers its fold-ins (default), or this process")
    s.set_defaults(func=_serve)
