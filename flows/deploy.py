"""``prefect deploy`` of prefect.yaml, working around a Prefect 3.8.8 / fastapi 0.152 mismatch.

    python flows/deploy.py --all          # = prefect --no-prompt deploy --all

At the end of a deploy, Prefect 3.8.8's client asks the server for the pool's online workers with an
explicit ``"offset": null, "limit": null`` body; the server of the pinned fastapi (0.152; newer ones
break the server import) rejects that with 422, failing the command after the first deployment. This
wrapper sends the server's own defaults instead, then runs the unmodified CLI.
"""

from __future__ import annotations

import sys

DEFAULT_LIMIT = 200


def _patch_worker_query() -> None:
    from prefect.client.orchestration._work_pools.client import WorkPoolAsyncClient

    original = WorkPoolAsyncClient.read_workers_for_work_pool
    if getattr(original, "_recsys_patched", False):
        return

    async def read_workers_for_work_pool(self, work_pool_name, worker_filter=None, offset=None, limit=None):
        return await original(self, work_pool_name, worker_filter=worker_filter,
                              offset=0 if offset is None else offset,
                              limit=DEFAULT_LIMIT if limit is None else limit)

    read_workers_for_work_pool._recsys_patched = True
    WorkPoolAsyncClient.read_workers_for_work_pool = read_workers_for_work_pool


def main(argv: list[str] | None = None) -> int:
    _patch_worker_query()
    from prefect.cli import app

    sys.argv = ["prefect", "--no-prompt", "deploy", *(sys.argv[1:] if argv is None else argv)]
    return app() or 0


if __name__ == "__main__":
    sys.exit(main())
