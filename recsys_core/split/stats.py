"""Statistics of split parts (stats.json) and their table in the layout of the paper's README (stats.md)."""

from __future__ import annotations

import pyarrow as pa

from recsys_core.split.reading import iso_ticks, ticks_per_second

# A held-out part this thin measures a handful of people, not the model: a global time cut at quantile 0.9 of
# ml-latest-small (real data) kept 8 test users of 671 (issue 17). Below either bound the split says so.
THIN_USERS = 50
THIN_SHARE_OF_TRAIN_USERS = 0.05


def part_stats(table: pa.Table) -> dict:
    """ratings, users, items, first_date, last_date of one part."""
    if table.num_rows == 0:
        return {"ratings": 0, "users": 0, "items": 0, "first_date": None, "last_date": None}
    ticks = table.column("timestamp").cast(pa.int64()).to_numpy()
    per_second = ticks_per_second(table.schema)
    return {
        "ratings": table.num_rows,
        "users": len(table.column("user_id").unique()),
        "items": len(table.column("item_id").unique()),
        "first_date": iso_ticks(int(ticks.min()), per_second),
        "last_date": iso_ticks(int(ticks.max()), per_second),
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


def thin_part_warnings(name: str, stats: dict) -> list[str]:
    """One sentence per held-out part (valid, test) that holds few users: fewer than
    ``THIN_SHARE_OF_TRAIN_USERS`` of train's users, or fewer than ``THIN_USERS`` while train has over twice as
    many (a small data set whose every user is held out is not thin). An empty valid part is said as such."""
    train_users = (stats.get("train") or {}).get("users") or 0
    bound = max(THIN_SHARE_OF_TRAIN_USERS * train_users, min(THIN_USERS, 0.5 * train_users))
    warnings = []
    for part in ("valid", "test"):
        values = stats.get(part)
        if not isinstance(values, dict):
            continue
        users = values.get("users") or 0
        if users == 0 and part == "valid":
            warnings.append(f"split {name} has no valid part: models train blind (no early stopping, nothing "
                            "chosen on valid)")
        elif users < bound:
            warnings.append(f"split {name}: its {part} part holds only {users:,} users ({values.get('ratings', 0):,} "
                            f"ratings) against {train_users:,} in train; its metrics describe few people (a "
                            f"per-user split such as --protocol chrono keeps every user's latest ratings)")
    return warnings
