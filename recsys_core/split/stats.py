"""Statistics of split parts (stats.json) and their table in the layout of the paper's README (stats.md)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from recsys_core.split.reading import iso_ticks, ticks_per_second


def part_stats(table: pa.Table) -> dict:
    """ratings, users, items, first_date, last_date of one part."""
    if table.num_rows == 0:
        return {"ratings": 0, "users": 0, "items": 0, "first_date": None, "last_date": None}
    low_high = pc.min_max(table.column("timestamp").cast(pa.int64()))
    per_second = ticks_per_second(table.schema)
    return {
        "ratings": table.num_rows,
        "users": len(pc.unique(table.column("user_id"))),
        "items": len(pc.unique(table.column("item_id"))),
        "first_date": iso_ticks(low_high["min"].as_py(), per_second),
        "last_date": iso_ticks(low_high["max"].as_py(), per_second),
    }


def stats_table(all_stats: dict[str, dict]) -> str:
    """Markdown table of the stats of several splits, one column per split (layout of the paper's README)."""
    names = list(all_stats)
    rows = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    parts = ["train", "valid", "test"]
    if any("valid+test" in s for s in all_stats.values()):
        parts.append("valid+test")

    def cell(stats: dict, part: str, key: str) -> str:
        p = stats.get(part)
        if p is None:
            return ""
        if key == "range":
            return f"{p['first_date']} to {p['last_date']}" if p["ratings"] else "-"
        return f"{p[key]:,}"

    for part in parts:
        for key, label in (("ratings", "Ratings"), ("users", "Users"), ("items", "Items"), ("range", "Time range")):
            rows.append(f"| {label} {part} | " + " | ".join(cell(all_stats[n], part, key) for n in names) + " |")
    return "\n".join(rows) + "\n"
