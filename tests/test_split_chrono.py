"""The ``chrono`` protocol (per user by time), the checks of every protocol's options before any data is read,
the ``time`` protocol's default cut, and the warning of a thin held-out part (issue 17)."""

from __future__ import annotations

import json
import logging
import math

import polars as pl
import pytest
from split_fixtures import random_rows, read_rows, ts, write_stage1

from recsys_core.cli import main as cli_main
from recsys_core.errors import RecsysError
from recsys_core.split import check_options, hash_unit_scalar, split
from recsys_core.split.hashing import SALT_CHRONO_TIES
from recsys_core.split.time_splits import DEFAULT_QUANTILE


def _reference_chrono(rows, train_share=0.8, valid_share=0.1, seed=0):
    """Per user in plain Python: sort by (timestamp, seeded tie hash), cut at round(share * n), drop held-out
    ratings of items without a train rating."""
    by_user: dict[int, list] = {}
    for row in rows:
        by_user.setdefault(row[0], []).append(row)
    parts = {"train": [], "valid": [], "test": []}
    for own in by_user.values():
        own.sort(key=lambda r: (r[3], hash_unit_scalar(seed, SALT_CHRONO_TIES, r[0], r[1])))
        n = len(own)
        # halves round up: floor(x + 0.5), not Python's round() (half to even)
        a, b = math.floor(n * train_share + 0.5), math.floor(n * (train_share + valid_share) + 0.5)
        parts["train"] += own[:a]
        parts["valid"] += own[a:b]
        parts["test"] += own[b:]
    train_items = {r[1] for r in parts["train"]}
    return {k: sorted(v if k == "train" else [r for r in v if r[1] in train_items]) for k, v in parts.items()}


@pytest.mark.parametrize("shares", [(0.8, 0.1), (0.6, 0.25), (0.7, 0.0)])
def test_chrono_matches_a_per_user_reference(tmp_path, shares):
    rows = random_rows(900, seed=5, n_users=40, n_items=60)
    # ties on one timestamp within a user: the seeded hash orders them
    rows += [(9001, item, 4.0, ts("2005-12-01")) for item in range(1, 11)]
    src = write_stage1(tmp_path / "in", rows)
    stats = split(src, tmp_path / "out", "chrono", train_share=shares[0], valid_share=shares[1], seed=3)["chrono"]
    expected = _reference_chrono(rows, *shares, seed=3)
    for part in ("train", "valid", "test"):
        got = read_rows(tmp_path / "out" / "chrono" / f"{part}.parquet")
        assert got == expected[part], part
        assert stats[part]["ratings"] == len(expected[part])
    if shares[1] == 0:
        assert stats["valid"]["ratings"] == 0
    # every user with a held-out rating keeps train ratings; the latest ratings of each user are in test
    train_users = {r[0] for r in expected["train"]}
    assert {r[0] for r in expected["test"]} <= train_users
    saved = json.loads((tmp_path / "out" / "chrono" / "split.json").read_text())
    assert saved["protocol"] == "chrono" and saved["train_share"] == shares[0]


def test_chrono_is_seeded_and_independent_of_row_order(tmp_path):
    rows = [(u, i, 3.0, ts("2005-01-01")) for u in range(1, 6) for i in range(1, 21)]  # every rating ties
    a = split(write_stage1(tmp_path / "a", rows), tmp_path / "oa", "chrono", seed=1)
    b = split(write_stage1(tmp_path / "b", rows[::-1]), tmp_path / "ob", "chrono", seed=1)
    split(write_stage1(tmp_path / "c", rows), tmp_path / "oc", "chrono", seed=2)
    assert a == b
    read = lambda o, p: read_rows(tmp_path / o / "chrono" / f"{p}.parquet")  # noqa: E731
    assert read("oa", "test") == read("ob", "test")
    assert read("oa", "test") != read("oc", "test")  # another seed breaks the ties otherwise
    assert [len(read("oa", p)) for p in ("train", "valid", "test")] == [80, 10, 10]


def test_options_are_checked_before_any_data_is_read(tmp_path):
    nowhere = tmp_path / "nowhere"  # no ratings: each mistake must be found before reading
    cases = [
        ("chrono", {"train_share": 0.95, "valid_share": 0.1}, "train-share \\+ --valid-share < 1"),
        ("chrono", {"train_share": 1.5}, "--train-share must be between 0 and 1"),
        ("chrono", {"quantile": 0.9}, "do not apply to protocol chrono"),
        ("time", {"quantile": 0.4}, "needs a quantile above 0.5"),
        ("time", {"quantile": "0.9"}, "split option quantile of protocol time must be"),
        ("time", {"train_start": "2005-01-01"}, "needs --quantile or all four dates"),
        ("time", {"train_start": "2005-01-01", "train_end": "2005-02-01", "test_start": "2005-13-01",
                  "test_end": "2005-03-01"}, "dates must be YYYY-MM-DD"),
        ("random", {"fraction": 0.7, "valid_fraction": 0.5}, "fraction \\+ --valid-fraction < 1"),
        ("netflix-time", {"splits": ["N2M"]}, "unknown Netflix split"),
        ("leave-one-out", {"negatives": True}, "split option negatives of protocol leave-one-out must be int"),
    ]
    for protocol, options, message in cases:
        with pytest.raises(RecsysError, match=message):
            check_options(protocol, options)
        with pytest.raises(RecsysError, match=message):
            split(nowhere, tmp_path / "out", protocol, **options)
    assert check_options("time", {"seed": 1, "quantile": None}) == {"seed": 1}


def test_time_without_options_cuts_at_the_documented_quantile(tmp_path):
    # every user rates along the whole period, items in a user-specific order
    rows = [(u, (u * 7 + i) % 50 + 1, 4.0, ts("2001-01-01", 3600 * (i * 40 + u))) for u in range(1, 41)
            for i in range(50)]
    src = write_stage1(tmp_path / "in", rows)
    default = split(src, tmp_path / "d", "time")["time"]
    explicit = split(src, tmp_path / "e", "time", quantile=DEFAULT_QUANTILE)["time"]
    assert default == explicit and DEFAULT_QUANTILE == 0.9
    assert json.loads((tmp_path / "d" / "time" / "split.json").read_text())["quantile"] == 0.9


def test_a_thin_held_out_part_is_said_loudly(tmp_path, caplog):
    # 100 users active early, 3 of them also late: a global time cut keeps 3 test users
    rows = [(u, i, 4.0, ts("2001-01-01", 3600 * i)) for u in range(1, 101) for i in range(1, 11)]
    rows += [(u, 20 + j, 4.0, ts("2001-02-01", j)) for u in range(50, 60) for j in range(1, 5)]
    rows += [(u, 20 + j, 4.0, ts("2003-01-01", j)) for u in (1, 2, 3) for j in range(1, 5)]
    rows += [(u, 1, 3.0, ts("2001-06-01")) for u in range(101, 104)]
    src = write_stage1(tmp_path / "in", rows)
    with caplog.at_level(logging.WARNING, logger="recsys_core"):
        stats = split(src, tmp_path / "out", "time", train_start="2001-01-01", train_end="2002-06-30",
                      test_start="2002-07-01", test_end="2003-12-31", valid_share=0.0)["time"]
    saved = json.loads((tmp_path / "out" / "time" / "stats.json").read_text())
    assert saved["warnings"] == stats["warnings"]
    assert any("test part holds only 3 users" in w for w in saved["warnings"])
    assert any("has no valid part" in w for w in saved["warnings"])
    assert "test part holds only 3 users" in caplog.text
    assert "Warning:" in (tmp_path / "out" / "time" / "stats.md").read_text()
    # a per-user split of the same data has no such warning
    assert "warnings" not in split(src, tmp_path / "c", "chrono")["chrono"] or not any(
        "test part" in w for w in split(src, tmp_path / "c2", "chrono")["chrono"].get("warnings", []))


def test_cli_chrono_and_its_flags(tmp_path, capsys):
    src = write_stage1(tmp_path / "in", random_rows(600, seed=2))
    assert cli_main(["split", str(src), str(tmp_path / "out"), "--protocol", "chrono", "--train-share", "0.7",
                     "--valid-share", "0.15"]) == 0
    assert "chrono" in capsys.readouterr().out
    train = pl.read_parquet(tmp_path / "out" / "chrono" / "train.parquet")
    assert 0.6 < train.height / 600 < 0.8
    assert cli_main(["split", str(src), str(tmp_path / "bad"), "--protocol", "chrono", "--quantile", "0.9"]) == 2
    assert "does not apply to --protocol chrono" in capsys.readouterr().err
