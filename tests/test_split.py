"""Stage 2 (split): known small cases, a slow reference implementation, invariants, bad input, CLI."""

from __future__ import annotations

import datetime as dt
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from split_fixtures import random_rows, read_rows, ts, write_stage1

from recsys_core.cli import main as cli_main
from recsys_core.errors import InputError, RecsysError
from recsys_core.schema import RATINGS_SCHEMA
from recsys_core.split import (
    NETFLIX_SPLITS,
    SALT_RANDOM_HOLDOUT,
    SALT_VALID_TEST,
    hash_unit,
    hash_unit_scalar,
    reading,
    split,
)

PARTS = ("train", "valid", "test")


def parts_of(folder):
    return {p: read_rows(folder / f"{p}.parquet") for p in PARTS}


def assert_ratings_schema(schema):
    """RATINGS_SCHEMA up to the timestamp unit (Parquet has no seconds unit: it stores ms)."""
    assert schema.names == RATINGS_SCHEMA.names
    assert [f.type for f in schema][:3] == [f.type for f in RATINGS_SCHEMA][:3]
    assert pa.types.is_timestamp(schema.field("timestamp").type) and schema.field("timestamp").type.tz == "UTC"


def to_valid(seed, user, item, share=0.5):
    return hash_unit_scalar(seed, SALT_VALID_TEST, user, item) < share


# ------------------------------------------------------------------------------------------- hashing


def test_vectorised_hash_equals_the_plain_python_hash():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 2**31 - 1, 500).astype(np.int32)
    items = rng.integers(0, 2**31 - 1, 500).astype(np.int32)
    for seed in (0, 7, 2**40):
        fast = hash_unit(seed, SALT_VALID_TEST, users, items)
        slow = [hash_unit_scalar(seed, SALT_VALID_TEST, int(u), int(i)) for u, i in zip(users, items)]
        assert fast.tolist() == slow
    assert 0.45 < float((hash_unit(0, 1, users, items) < 0.5).mean()) < 0.55
    assert not np.array_equal(hash_unit(0, 1, users, items), hash_unit(1, 1, users, items))


# ------------------------------------------------------------------------------------------- netflix-time


def test_netflix_n3m_known_small_case(tmp_path):
    rows = [
        (1, 10, 4.0, ts("2005-09-01")),          # first train day
        (1, 11, 3.0, ts("2005-12-01")),          # test period, user and item in train -> kept
        (2, 11, 5.0, ts("2005-11-30", 86399)),   # last second of the last train day
        (2, 12, 2.0, ts("2005-12-31", 86399)),   # last test second; item 12 only in N6M train
        (2, 10, 1.0, ts("2006-01-01")),          # after the test period: nowhere
        (3, 10, 5.0, ts("2005-12-15")),          # user 3 has no train rating -> dropped
        (4, 12, 3.0, ts("2005-08-31")),          # before N3M train (in N6M train)
        (4, 10, 4.0, ts("2005-10-10")),
        (4, 14, 4.0, ts("2005-12-02")),          # item 14 never in train -> dropped
    ]
    src = write_stage1(tmp_path / "in", rows)
    seed = next(s for s in range(100) if not to_valid(s, 1, 11))  # (1, 11) in test: an empty test part is an error
    stats = split(src, tmp_path / "out", "netflix-time", splits=["N3M", "N6M"], seed=seed)
    n3m = parts_of(tmp_path / "out" / "N3M")
    assert [r[:2] for r in n3m["train"]] == [(1, 10), (2, 11), (4, 10)]
    held = sorted(n3m["valid"] + n3m["test"])
    assert [r[:2] for r in held] == [(1, 11)]
    assert n3m["valid"] == [] and [r[:2] for r in n3m["test"]] == [(1, 11)]
    n6m = parts_of(tmp_path / "out" / "N6M")
    assert [r[:2] for r in n6m["train"]] == [(1, 10), (2, 11), (4, 10), (4, 12)]
    assert [r[:2] for r in sorted(n6m["valid"] + n6m["test"])] == [(1, 11), (2, 12)]
    s = stats["N3M"]
    assert s["train"] == {"ratings": 3, "users": 3, "items": 2, "first_date": "2005-09-01", "last_date": "2005-11-30"}
    assert s["valid+test"]["ratings"] == 1
    # user 3 has no train; items 12 (only in N6M train) and 14 have none in N3M
    assert s["dropped"] == {"heldout_ratings_of_users_not_in_train": 1, "heldout_ratings_of_items_not_in_train": 2}
    on_disk = json.loads((tmp_path / "out" / "N3M" / "stats.json").read_text())
    assert on_disk == s
    md = (tmp_path / "out" / "N3M" / "stats.md").read_text()
    assert "| Ratings train | 3 |" in md and "| Time range train | 2005-09-01 to 2005-11-30 |" in md
    split_json = json.loads((tmp_path / "out" / "N3M" / "split.json").read_text())
    assert split_json["seed"] == seed
    assert split_json["train_start"] == "2005-09-01" and split_json["test_end"] == "2005-12-31"
    assert pq.read_table(tmp_path / "out" / "N3M" / "items.parquet").num_rows == 4
    assert not (tmp_path / "out" / "NF").exists()


def reference_time_split(rows, train_start, train_end, test_start, test_end, seed, share=0.5):
    """The converter's rule, row by row with plain Python sets (slow and obvious)."""
    def day(row):
        return row[3].astimezone(dt.timezone.utc).date()

    train = [r for r in rows if train_start <= day(r) <= train_end]
    train_users = {r[0] for r in train}
    train_items = {r[1] for r in train}
    valid, test = [], []
    for r in rows:
        if not (test_start <= day(r) <= test_end) or r[0] not in train_users:
            continue
        target = valid if to_valid(seed, r[0], r[1], share) else test
        if r[1] in train_items:
            target.append(r)
    return {"train": sorted(train), "valid": sorted(valid), "test": sorted(test)}


@pytest.mark.parametrize("seed", [0, 11])
def test_netflix_time_equals_reference_row_for_row(tmp_path, monkeypatch, seed):
    monkeypatch.setattr(reading, "READ_BATCH_ROWS", 257)  # many batches, partial row groups
    rows = random_rows(2400, seed=seed)
    src = write_stage1(tmp_path / "in", rows, row_group_size=700)
    stats = split(src, tmp_path / "out", "netflix-time", seed=seed)
    assert list(stats) == ["N3M", "N6M", "N1Y", "NF"]
    for name, spec in NETFLIX_SPLITS.items():
        expected = reference_time_split(rows, spec.train_start, spec.train_end, spec.test_start, spec.test_end, seed)
        got = parts_of(tmp_path / "out" / name)
        for part in PARTS:
            assert got[part] == expected[part], (name, part)
        assert stats[name]["train"]["ratings"] == len(expected["train"])
        assert stats[name]["valid"]["ratings"] + stats[name]["test"]["ratings"] == stats[name]["valid+test"]["ratings"]


def test_netflix_assignment_ignores_row_order_and_split_subset(tmp_path):
    rows = random_rows(1500, seed=4)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    split(write_stage1(tmp_path / "a", rows), tmp_path / "out_a", "netflix-time", seed=5)
    split(write_stage1(tmp_path / "b", shuffled), tmp_path / "out_b", "netflix-time", seed=5, splits=["NF"])
    assert parts_of(tmp_path / "out_a" / "NF") == parts_of(tmp_path / "out_b" / "NF")
    split(write_stage1(tmp_path / "c", rows), tmp_path / "out_c", "netflix-time", seed=6, splits=["NF"])
    assert parts_of(tmp_path / "out_c" / "NF")["valid"] != parts_of(tmp_path / "out_a" / "NF")["valid"]


def test_paper_split_dates():
    got = {n: (str(s.train_start), str(s.train_end), str(s.test_start), str(s.test_end))
           for n, s in NETFLIX_SPLITS.items()}
    assert got == {
        "N3M": ("2005-09-01", "2005-11-30", "2005-12-01", "2005-12-31"),
        "N6M": ("2005-06-01", "2005-11-30", "2005-12-01", "2005-12-31"),
        "N1Y": ("2004-06-01", "2005-05-31", "2005-06-01", "2005-06-30"),
        "NF": ("1999-12-01", "2005-11-30", "2005-12-01", "2005-12-31"),
    }


# ------------------------------------------------------------------------------------------- invariants

PROTOCOL_CASES = [
    ("netflix-time", {"seed": 2}),
    ("netflix-time", {"seed": 2, "valid_share": 0.0}),
    ("time", {"train_start": "2004-01-01", "train_end": "2005-06-30", "test_start": "2005-07-01",
              "test_end": "2005-12-31", "seed": 2}),
    ("time", {"train_start": "2004-01-01", "train_end": "2005-06-30", "test_start": "2005-07-01",
              "test_end": "2005-12-31", "valid_share": 0.3}),
    ("time", {"quantile": 0.8, "seed": 2}),
    ("time", {"quantile": 0.8, "valid_share": 0.5, "seed": 2}),
    ("leave-one-out", {"negatives": 5, "seed": 2}),
    ("leave-one-out", {"valid": False, "negatives": 0, "min_interactions": 4}),
    ("random", {"seed": 2}),
    ("random", {"fraction": 0.2, "valid_fraction": 0.1, "seed": 2}),
    ("random", {"fraction": 0.2, "valid_fraction": 0.0, "keep_unseen": True}),
]


@pytest.mark.parametrize("protocol,options", PROTOCOL_CASES)
def test_invariants_of_every_protocol(tmp_path, protocol, options):
    rows = random_rows(1800, seed=9, n_items=100)
    src = write_stage1(tmp_path / "in", rows)
    stats = split(src, tmp_path / "out", protocol, **options)
    all_rows = sorted(rows)
    for name, s in stats.items():
        folder = tmp_path / "out" / name
        got = parts_of(folder)
        keys = [set(got[p]) for p in PARTS]
        assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
        assert all(set(got[p]) <= set(all_rows) for p in PARTS)
        for p in PARTS:
            assert s[p]["ratings"] == len(got[p])
            assert s[p]["users"] == len({r[0] for r in got[p]})
            assert_ratings_schema(pq.read_schema(folder / f"{p}.parquet"))
        # every protocol validates by default; an explicit 0 / False turns it off
        off = options.get("valid_share") == 0.0 or options.get("valid_fraction") == 0.0 or options.get("valid") is False
        assert (s["valid"]["ratings"] == 0) == off, s["valid"]
        train_users = {r[0] for r in got["train"]}
        train_items = {r[1] for r in got["train"]}
        held = got["valid"] + got["test"]
        day = lambda r: r[3].date().isoformat()  # noqa: E731
        if protocol in ("netflix-time", "time"):
            cfg = json.loads((folder / "split.json").read_text())
            assert {r[0] for r in held} <= train_users and {r[1] for r in held} <= train_items
            if "quantile" in cfg:
                cut = dt.datetime.fromisoformat(cfg["cut"])
                low = dt.datetime.fromisoformat(cfg.get("valid_cut", cfg["cut"]))
                assert all(r[3] < low for r in got["train"]) and all(r[3] >= cut for r in got["test"])
                if "valid_cut" in cfg:  # valid: the period just before the test period
                    assert all(low <= r[3] < cut for r in got["valid"])
                else:  # valid: the hashed share of the test period (issue 23: this branch checked nothing)
                    assert all(r[3] >= cut for r in got["valid"])
                in_heldout = [r for r in all_rows if r[3] >= low]
            else:
                assert all(cfg["train_start"] <= day(r) <= cfg["train_end"] for r in got["train"])
                assert all(cfg["test_start"] <= day(r) <= cfg["test_end"] for r in got["test"])
                first_held = cfg.get("valid_start", cfg["test_start"])
                assert all(first_held <= day(r) <= cfg.get("valid_end", cfg["test_end"]) for r in got["valid"])
                in_heldout = [r for r in all_rows if cfg["test_start"] <= day(r) <= cfg["test_end"]
                              or "valid_start" in cfg and cfg["valid_start"] <= day(r) <= cfg["valid_end"]]
            if "valid_share" in cfg:  # which held-out rating is valid: the seeded hash, whatever the period rule
                share = cfg["valid_share"]
                assert all(to_valid(cfg["seed"], r[0], r[1], share) for r in got["valid"])
                assert not any(to_valid(cfg["seed"], r[0], r[1], share) for r in got["test"])
            dropped = s["dropped"]
            assert len(held) + dropped["heldout_ratings_of_users_not_in_train"] + \
                dropped["heldout_ratings_of_items_not_in_train"] == len(in_heldout)
        elif protocol == "leave-one-out":
            assert len(got["train"]) + len(held) == len(all_rows)
            assert {r[0] for r in held} <= train_users
            assert len({r[0] for r in got["test"]}) == len(got["test"])  # one test rating per user
            assert {r[0] for r in got["valid"]} <= {r[0] for r in got["test"]}
            assert len({r[0] for r in got["valid"]}) == len(got["valid"])
            counts = {}
            for r in all_rows:
                counts[r[0]] = counts.get(r[0], 0) + 1
            min_interactions = json.loads((folder / "split.json").read_text())["min_interactions"]
            assert min_interactions == options.get("min_interactions", 3 if options.get("valid", True) else 2)
            short = [u for u, c in counts.items() if c < min_interactions]
            assert s["train_only_users"] == len(short)
            assert len(got["test"]) == len(counts) - len(short)
            if options.get("valid", True):
                assert len(got["valid"]) == len(got["test"])  # the second-latest of every test user
            # the window: test is each user's latest rating (by timestamp, then item_id), valid the one before
            by_user = {}
            for r in sorted(all_rows, key=lambda r: (r[3], r[1])):
                by_user.setdefault(r[0], []).append(r)
            assert sorted(got["test"]) == sorted(by_user[r[0]][-1] for r in got["test"])
            assert sorted(got["valid"]) == sorted(by_user[r[0]][-2] for r in got["valid"])
        else:
            dropped = s["dropped"]
            assert len(got["train"]) + len(held) + dropped["heldout_ratings_of_users_not_in_train"] + \
                dropped["heldout_ratings_of_items_not_in_train"] == len(all_rows)
            if not options.get("keep_unseen"):
                assert {r[0] for r in held} <= train_users and {r[1] for r in held} <= train_items
            assert abs(len(got["test"]) / len(all_rows) - options.get("fraction", 0.1)) < 0.05
            assert abs(len(got["valid"]) / len(all_rows) - options.get("valid_fraction", 0.05)) < 0.03
            # which rating is valid: hash in [fraction, fraction + valid_fraction), test below fraction
            cfg = json.loads((folder / "split.json").read_text())
            low, high = cfg["fraction"], cfg["fraction"] + cfg["valid_fraction"]
            unit = {part: [hash_unit_scalar(cfg["seed"], SALT_RANDOM_HOLDOUT, r[0], r[1]) for r in got[part]]
                    for part in PARTS}
            assert all(u < low for u in unit["test"]) and all(low <= u < high for u in unit["valid"])
            assert all(u >= high for u in unit["train"])


# ------------------------------------------------------------------------------------------- time, random


def test_time_quantile_cut(tmp_path):
    rows = [(u, i, 3.0, ts(dt.date(2003, 1, 1) + dt.timedelta(days=10 * k)))
            for k, (u, i) in enumerate((u, i) for u in range(1, 11) for i in range(1, 11))]
    src = write_stage1(tmp_path / "in", rows)
    stats = split(src, tmp_path / "out", "time", quantile=0.75, valid_share=0.0)
    got = parts_of(tmp_path / "out" / "time")
    assert len(got["train"]) == 74  # 'lower' quantile of 100 distinct days is the 75th: 74 before it
    assert got["valid"] == [] and stats["time"]["valid"]["ratings"] == 0
    assert max(r[3] for r in got["train"]) < min(r[3] for r in got["test"])


def reference_mirrored_time_split(rows, train_start, train_end, test_start, test_end):
    """time's default, row by row: valid = the last days of the train range, as many as the test period has."""
    def day(row):
        return row[3].astimezone(dt.timezone.utc).date()

    valid_start = train_end - (test_end - test_start)
    train = [r for r in rows if train_start <= day(r) < valid_start]
    users, items = {r[0] for r in train}, {r[1] for r in train}
    kept = [r for r in rows if r[0] in users and r[1] in items]
    return {"train": sorted(train),
            "valid": sorted(r for r in kept if valid_start <= day(r) <= train_end),
            "test": sorted(r for r in kept if test_start <= day(r) <= test_end)}


def test_time_valid_mirrors_the_test_period_by_dates(tmp_path, monkeypatch):
    monkeypatch.setattr(reading, "READ_BATCH_ROWS", 301)
    rows = random_rows(2400, seed=12)
    src = write_stage1(tmp_path / "in", rows, row_group_size=700)
    d = dt.date.fromisoformat
    stats = split(src, tmp_path / "out", "time", train_start="2004-01-01", train_end="2005-10-31",
                  test_start="2005-11-01", test_end="2005-12-31")["time"]
    expected = reference_mirrored_time_split(rows, d("2004-01-01"), d("2005-10-31"), d("2005-11-01"), d("2005-12-31"))
    got = parts_of(tmp_path / "out" / "time")
    assert got == expected and len(got["valid"]) > 50 and len(got["test"]) > 50
    cfg = json.loads((tmp_path / "out" / "time" / "split.json").read_text())
    # the test period has 61 days: valid is the last 61 days of the train range
    assert (cfg["train_end"], cfg["valid_start"], cfg["valid_end"]) == ("2005-08-31", "2005-09-01", "2005-10-31")
    assert cfg["valid"] == "period before test" and "valid_share" not in cfg
    assert stats["valid"]["ratings"] == len(expected["valid"]) and stats["valid"]["first_date"] >= "2005-09-01"


def test_time_valid_mirrors_the_test_share_by_quantile(tmp_path):
    # one rating a day for 100 days; a Latin square of (user, item) so that train holds every user and item
    rows = [((k // 10 + k % 10) % 10 + 1, k % 10 + 1, 3.0, ts(dt.date(2003, 1, 1) + dt.timedelta(days=k)))
            for k in range(100)]
    src = write_stage1(tmp_path / "in", rows)
    stats = split(src, tmp_path / "out", "time", quantile=0.8)["time"]
    got = parts_of(tmp_path / "out" / "time")
    # the 'lower' 0.6 and 0.8 quantiles of 100 days are days 59 and 79: train days 0..58, valid 59..78, test 79..99
    day = lambda r: (r[3].date() - dt.date(2003, 1, 1)).days  # noqa: E731
    assert sorted(map(day, got["train"])) == list(range(59))
    assert sorted(map(day, got["valid"])) == list(range(59, 79))
    assert sorted(map(day, got["test"])) == list(range(79, 100))
    assert stats["valid"]["ratings"] == 20 and stats["dropped"] == {
        "heldout_ratings_of_users_not_in_train": 0, "heldout_ratings_of_items_not_in_train": 0}
    cfg = json.loads((tmp_path / "out" / "time" / "split.json").read_text())
    assert (cfg["valid_cut"], cfg["cut"]) == ("2003-03-01T00:00:00+00:00", "2003-03-21T00:00:00+00:00")


def test_time_valid_options_and_errors(tmp_path):
    src = write_stage1(tmp_path / "in", random_rows(600, seed=2))
    dates = {"train_start": "2005-11-01", "train_end": "2005-11-20", "test_start": "2005-11-21",
             "test_end": "2005-12-31"}
    with pytest.raises(RecsysError, match=r"train range 2005-11-01..2005-11-20 is too short to give its last 41 days"):
        split(src, tmp_path / "out", "time", **dates)
    with pytest.raises(RecsysError, match="needs a quantile above 0.5"):
        split(src, tmp_path / "out", "time", quantile=0.5)
    assert not (tmp_path / "out").exists()
    # valid_share: the paper's rule (a share of the test period); 0: no valid set, train keeps its whole range
    stats = split(src, tmp_path / "out", "time", **dates, valid_share=0.0)["time"]
    assert stats["valid"]["ratings"] == 0
    assert json.loads((tmp_path / "out" / "time" / "split.json").read_text())["train_end"] == "2005-11-20"


def test_random_test_part_does_not_depend_on_valid_fraction(tmp_path):
    rows = random_rows(2000, seed=6, n_items=30)
    src = write_stage1(tmp_path / "in", rows)
    split(src, tmp_path / "a", "random", seed=3)  # default: fraction 0.1, valid_fraction 0.05
    split(src, tmp_path / "b", "random", seed=3, valid_fraction=0.0)
    split(src, tmp_path / "c", "random", seed=3, valid_fraction=0.2)
    a, b, c = (parts_of(tmp_path / x / "random") for x in "abc")
    assert a["test"] == b["test"] == c["test"]
    assert b["valid"] == [] and set(a["valid"]) < set(c["valid"])
    assert set(a["train"]) == set(b["train"]) - set(a["valid"])
    u = [hash_unit_scalar(3, 2, r[0], r[1]) for r in a["valid"]]
    assert all(0.1 <= x < 0.15 for x in u)


def test_random_is_reproducible_and_order_free(tmp_path):
    rows = random_rows(1000, seed=3)
    shuffled = rows[::-1]
    split(write_stage1(tmp_path / "a", rows), tmp_path / "oa", "random", fraction=0.15, seed=1)
    split(write_stage1(tmp_path / "b", shuffled), tmp_path / "ob", "random", fraction=0.15, seed=1)
    assert parts_of(tmp_path / "oa" / "random") == parts_of(tmp_path / "ob" / "random")


# ------------------------------------------------------------------------------------------- leave-one-out


def test_leave_one_out_known_case(tmp_path):
    rows = [
        (1, 5, 4.0, ts("2005-01-01")), (1, 6, 3.0, ts("2005-01-03")), (1, 7, 2.0, ts("2005-01-03")),  # tie -> 7 later
        (1, 8, 5.0, ts("2005-01-02")),
        (2, 5, 1.0, ts("2005-02-01")), (2, 9, 2.0, ts("2005-02-02")),
        (3, 6, 5.0, ts("2005-03-01")),                                  # one rating: train only
    ]
    src = write_stage1(tmp_path / "in", rows, items=[5, 6, 7, 8, 9, 10, 11])
    stats = split(src, tmp_path / "out", "leave-one-out", negatives=1, seed=4)["leave-one-out"]  # valid by default
    got = parts_of(tmp_path / "out" / "leave-one-out")
    assert [r[:2] for r in got["test"]] == [(1, 7)]
    assert [r[:2] for r in got["valid"]] == [(1, 6)]
    assert [r[:2] for r in got["train"]] == [(1, 5), (1, 8), (2, 5), (2, 9), (3, 6)]
    assert stats["train_only_users"] == 2 and stats["train_only_ratings"] == 3  # users 2 and 3 (< 3 ratings)
    negatives = pq.read_table(tmp_path / "out" / "leave-one-out" / "negatives.parquet").to_pylist()
    # the rated items are 5..9; user 1 rated 5, 6, 7, 8 -> only item 9 is free (10, 11 are never rated)
    assert negatives == [{"user_id": 1, "negatives": [9]}]
    assert stats["users_without_room_for_negatives"] == 0
    # without valid, 2 negatives: user 1 rated 4 of the 5 rated items, too few left to sample from -> train only
    stats = split(src, tmp_path / "out2", "leave-one-out", valid=False, negatives=2, seed=4)["leave-one-out"]
    got = parts_of(tmp_path / "out2" / "leave-one-out")
    assert [r[:2] for r in got["test"]] == [(2, 9)]
    assert [r[:2] for r in got["train"]] == [(1, 5), (1, 6), (1, 7), (1, 8), (2, 5), (3, 6)]
    assert stats["users_without_room_for_negatives"] == 1
    assert stats["train_only_users"] == 2 and stats["train_only_ratings"] == 5  # users 1 (no room) and 3 (short)
    negatives = pq.read_table(tmp_path / "out2" / "leave-one-out" / "negatives.parquet").to_pylist()
    assert [row["user_id"] for row in negatives] == [2]
    drawn = negatives[0]["negatives"]  # user 2 rated 5 and 9: two distinct of 6, 7, 8
    assert len(set(drawn)) == 2 and set(drawn) <= {6, 7, 8}
    # with valid no user has both 3 ratings and room for 2 negatives: an empty test part is an error
    with pytest.raises(RecsysError, match="empty test part"):
        split(src, tmp_path / "out3", "leave-one-out", negatives=2, seed=4)
    assert not (tmp_path / "out3").exists()


def test_leave_one_out_negatives_are_unrated_distinct_and_seeded(tmp_path):
    rows = random_rows(1500, seed=8, n_users=50, n_items=60)
    src = write_stage1(tmp_path / "in", rows)
    split(src, tmp_path / "a", "leave-one-out", negatives=20, seed=1)
    split(src, tmp_path / "b", "leave-one-out", negatives=20, seed=1)
    split(src, tmp_path / "c", "leave-one-out", negatives=20, seed=2)
    a = pq.read_table(tmp_path / "a" / "leave-one-out" / "negatives.parquet").to_pylist()
    b = pq.read_table(tmp_path / "b" / "leave-one-out" / "negatives.parquet").to_pylist()
    c = pq.read_table(tmp_path / "c" / "leave-one-out" / "negatives.parquet").to_pylist()
    assert a == b and a != c
    rated = {}
    for r in rows:
        rated.setdefault(r[0], set()).add(r[1])
    universe = {r[1] for r in rows}
    test_users = {r[0] for r in read_rows(tmp_path / "a" / "leave-one-out" / "test.parquet")}
    assert [x["user_id"] for x in a] == sorted(test_users)
    for entry in a:
        negs = entry["negatives"]
        assert len(negs) == 20 and len(set(negs)) == 20
        assert not set(negs) & rated[entry["user_id"]] and set(negs) <= universe


def test_leave_one_out_dense_users_use_the_exact_fallback(tmp_path):
    # user 1 rated 45 of 50 items: rejection sampling mostly fails, the exact fallback must still be right
    rows = [(1, i, 3.0, ts("2005-01-01", i)) for i in range(1, 46)]
    rows += [(2, i, 3.0, ts("2005-01-01", i)) for i in range(40, 51)]
    src = write_stage1(tmp_path / "in", rows)
    split(src, tmp_path / "out", "leave-one-out", negatives=5, seed=0)
    table = pq.read_table(tmp_path / "out" / "leave-one-out" / "negatives.parquet").to_pylist()
    assert sorted(table[0]["negatives"]) == [46, 47, 48, 49, 50]


# ------------------------------------------------------------------------------------------- bad input


def test_missing_columns_named_and_nothing_written(tmp_path):
    src = tmp_path / "in"
    write_stage1(src, random_rows(50))
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int32()), "item_id": pa.array([2], pa.int32())}),
                   src / "ratings.parquet")
    with pytest.raises(InputError, match=r"ratings\.parquet: missing column\(s\) rating, timestamp"):
        split(src, tmp_path / "out", "netflix-time")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_empty_train_part_fails_cleanly_and_keeps_old_output(tmp_path):
    rows = [(1, 1, 3.0, ts("2005-01-01")), (1, 2, 3.0, ts("2005-12-10")), (2, 1, 4.0, ts("2005-12-11"))]
    src = write_stage1(tmp_path / "in", rows)
    old = tmp_path / "out" / "time"
    old.mkdir(parents=True)
    (old / "marker").write_text("old")
    with pytest.raises(RecsysError, match="split time would have an empty train part"):
        split(src, tmp_path / "out", "time", train_start="2005-03-01", train_end="2005-04-01",
              test_start="2005-12-01", test_end="2005-12-31")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["time"]
    assert (old / "marker").read_text() == "old" and len(list(old.iterdir())) == 1


def test_empty_test_part_fails_and_writes_no_split(tmp_path):
    rows = [(1, 1, 3.0, ts("2005-10-01")), (2, 2, 3.0, ts("2005-12-10"))]  # the only test user has no train
    src = write_stage1(tmp_path / "in", rows)
    with pytest.raises(RecsysError, match="split N3M would have an empty test part"):
        split(src, tmp_path / "out", "netflix-time", splits=["N3M", "NF"])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("dates,message", [
    (("2005-06-01", "2005-01-01", "2005-07-01", "2005-08-01"), "train range 2005-06-01..2005-01-01 is reversed"),
    (("2005-01-01", "2005-06-01", "2005-08-01", "2005-07-01"), "test range 2005-08-01..2005-07-01 is reversed"),
    (("2005-01-01", "2005-06-01", "2005-05-01", "2005-07-01"), "overlaps train range"),
    (("1990-01-01", "1990-06-01", "2005-05-01", "2005-07-01"),
     "train range 1990-01-01..1990-06-01 lies outside the data"),
])
def test_bad_date_ranges(tmp_path, dates, message):
    src = write_stage1(tmp_path / "in", random_rows(100))
    with pytest.raises(RecsysError, match=message):
        split(src, tmp_path / "out", "time", train_start=dates[0], train_end=dates[1], test_start=dates[2],
              test_end=dates[3])
    assert not (tmp_path / "out").exists()


def test_netflix_split_outside_the_data(tmp_path):
    src = write_stage1(tmp_path / "in", [(1, 1, 3.0, ts("2005-10-01")), (1, 2, 3.0, ts("2005-12-10"))])
    with pytest.raises(RecsysError, match="split N1Y train range 2004-06-01..2005-05-31 lies outside the data"):
        split(src, tmp_path / "out", "netflix-time")
    with pytest.raises(RecsysError, match="unknown Netflix split"):
        split(src, tmp_path / "out", "netflix-time", splits=["N2M"])


def test_option_of_another_protocol_is_refused(tmp_path):
    src = write_stage1(tmp_path / "in", random_rows(100))
    with pytest.raises(RecsysError, match="negatives do not apply to protocol random"):
        split(src, tmp_path / "out", "random", negatives=3)
    with pytest.raises(RecsysError, match="unknown protocol"):
        split(src, tmp_path / "out", "kfold")


# ------------------------------------------------------------------------------------------- CLI


def test_cli_runs_and_reports_errors_in_one_sentence(tmp_path, capsys):
    src = write_stage1(tmp_path / "in", random_rows(800))
    assert cli_main(["split", str(src), str(tmp_path / "out"), "--protocol", "netflix-time", "--splits", "NF,N3M",
                     "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "| | NF | N3M |" in out and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["N3M", "NF"]
    assert cli_main(["split", str(src), str(tmp_path / "out"), "--protocol", "leave-one-out", "--no-valid",
                     "--negatives", "3"]) == 0
    assert json.loads((tmp_path / "out" / "leave-one-out" / "stats.json").read_text())["valid"]["ratings"] == 0
    capsys.readouterr()
    assert cli_main(["split", str(src), str(tmp_path / "out"), "--protocol", "random", "--valid"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: option --valid does not apply to --protocol random"
    assert cli_main(["split", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--protocol", "random"]) == 2
    assert "ratings.parquet: not found" in capsys.readouterr().err


def test_cli_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        cli_main(["split", "--help"])
    text = capsys.readouterr().out
    for flag in ("--protocol", "--seed", "--splits", "--valid-share", "--train-start", "--train-end", "--test-start",
                 "--test-end", "--quantile", "--valid", "--no-valid", "--negatives", "--min-interactions", "--fraction",
                 "--valid-fraction", "--keep-unseen"):
        assert flag in text
