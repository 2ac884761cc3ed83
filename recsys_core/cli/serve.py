"""``recsys serve``: the HTTP recommendation service (``recsys_core.serving``, docs/serving.md).

fastapi, uvicorn and torch are imported only when the command runs, never to build the parser.
"""

from __future__ import annotations


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


def _serve(args) -> int:
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


def add(subparsers, name: str, summary: str) -> None:
    s = subparsers.add_parser(name, help=summary,
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
    s.set_defaults(func=_serve)
