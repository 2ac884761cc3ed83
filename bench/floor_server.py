"""The floor of ``bench_serve.py --floor``: a minimal FastAPI app on the same uvicorn, with the same
uvicorn settings as ``recsys serve`` (h11, keep-alive, concurrency limit, no access log), that answers
``GET /users/{user_id}/recommendations?k=`` (the same path and query validation) with a fixed body: a
real answer of the service, captured by the benchmark, so the bytes on the wire are the same shape and
size. No model work, no middleware: what is left is what the HTTP stack costs.

    .venv/bin/python bench/floor_server.py --body ANSWER.json --port 8001
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--body", required=True, help="file holding the JSON body to answer with")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()

    import uvicorn
    from fastapi import FastAPI, Query
    from fastapi import Path as PathParam
    from starlette.responses import Response

    body = Path(args.body).read_bytes()
    app = FastAPI()

    @app.get("/health")
    async def health():
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/users/{user_id}/recommendations")
    async def recommendations(user_id: int = PathParam(ge=-2**31, le=2**31 - 1), k: int = Query(10, ge=1, le=1000)):
        return Response(body, media_type="application/json")

    # the settings of recsys_core/cli/serve.py (its defaults)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning", http="h11",
                h11_max_incomplete_event_size=16 << 10, limit_concurrency=256, timeout_keep_alive=5, backlog=2048,
                timeout_graceful_shutdown=10, server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
