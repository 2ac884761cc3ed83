"""recsys_core: the library behind the pipeline. Plain functions and classes, no Prefect.

Stages (each reads files written by the one before and writes files of one documented schema,
see README "Data layout"):

1. ``convert``  raw Netflix Prize / MovieLens files      -> ratings.parquet, items.parquet, meta.json
2. ``split``    ratings.parquet                          -> <split>/{train,valid,test}.parquet, stats
3. ``matrices`` a split                                  -> CSR matrices + one user/item index per split
4. ``train`` / ``evaluate`` / ``recommend``              -> a run folder: model, metrics, predictions, top-K
"""

__version__ = "0.1.0"
