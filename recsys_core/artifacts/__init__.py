"""The content-keyed build system: what names a stage's output, how an output proves it is complete, and how
concurrent writers of one output keep out of each other's way. Plain functions, no Prefect: ``tasks/`` wraps
them as tasks, the ``recsys verify`` command and any Python script call them directly.

One module per job (import from the module; this package re-exports nothing, so ``recsys_core.io`` can take
its locks from here without an import cycle):

* ``hashing``: content hashes of files (memoized by stat signature per data dir), of JSON-able parameters, and
  of the library source a stage runs (``code_version``).
* ``locks``: the one file-lock implementation (``flock``): a writer's lock on a lock file, and the liveness
  lock on a temporary.
* ``manifest``: a stage invocation (``StageSpec``: output folder + content key) and its ``manifest.json``,
  written last and verified before any reuse.
* ``layout``: the data-folder layout and each stage's spec (what its key holds).
* ``build``: build one stage's output unless it verifies, under its lock, manifest last.

Example (no Prefect)::

    from recsys_core.artifacts import build, hashing, layout

    memo = hashing.hash_memo("data")
    spec = layout.convert_spec("data", Path("ml-latest-small"), memo)
    build.build_stage(spec, memo, lambda out: convert("ml-latest-small", out))   # "built", later "reused"
"""
