"""The one schema of each stage's tables. Every writer casts to these; every reader may rely on them.

See README "Data layout" for the folder layout around them.
"""

from __future__ import annotations

import pyarrow as pa

# Stage 1 (convert) and stage 2 (split parts): one row per rating, raw ids of the source.
RATINGS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int32(), nullable=False),   # raw id of the source (Netflix customer id)
        pa.field("item_id", pa.int32(), nullable=False),   # raw id of the source (Netflix movie id)
        pa.field("rating", pa.float32(), nullable=False),  # on the source's scale (1..5, MovieLens 20M+ 0.5 steps)
        pa.field("timestamp", pa.timestamp("s", tz="UTC"), nullable=False),  # Netflix: the date at 00:00 UTC
    ]
)

# Stage 1: the catalogue, one row per item the source lists (rated or not).
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int32(), nullable=False),
        pa.field("title", pa.string(), nullable=True),
        pa.field("year", pa.int16(), nullable=True),                 # null where the source says NULL / none
        pa.field("genres", pa.list_(pa.string()), nullable=True),    # null where the source has no genres
    ]
)
