"""Tests of the synthetic Netflix-format generator (recsys_core.synth)."""

from __future__ import annotations

import datetime as dt
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

import recsys_core.synth as synth
from recsys_core.cli import main as cli_main
from recsys_core.errors import RecsysError
from recsys_core.io import read_json
from recsys_core.synth import Oracle, generate_netflix, load_oracle, scaled_shape

SCALE = 0.002
LINE = re.compile(rb"([1-9][0-9]{0,6}),([1-5]),(\d{4}-\d{2}-\d{2})\n")


@pytest.fixture(autouse=True)
def _no_bars(monkeypatch):
    monkeypatch.setenv("RECSYS_PROGRESS", "0")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "netflix"
    meta = generate_netflix(out, scale=SCALE, seed=7, tar=True)
    return out, meta


def parse_training_set(folder: Path):
    """All ratings of a training_set folder as arrays, checking every line's exact format."""
    files = sorted(folder.iterdir())
    users, movies, ratings, days = [], [], [], []
    for path in files:
        data = path.read_bytes()
        movie_id = int(re.fullmatch(r"mv_(\d{7})\.txt", path.name).group(1))
        header, _, body = data.partition(b"\n")
        assert header == f"{movie_id}:".encode(), path
        assert b"\r" not in data
        for line in body.splitlines(keepends=True):
            match = LINE.fullmatch(line)
            assert match, (path, line)
            users.append(int(match.group(1)))
            movies.append(movie_id)
            ratings.append(int(match.group(2)))
            days.append(dt.date.fromisoformat(match.group(3).decode()))
    return files, np.array(users), np.array(movies), np.array(ratings), np.array(days)


@pytest.fixture(scope="module")
def parsed(generated):
    out, _ = generated
    return parse_training_set(out / "training_set")


def test_scale_rule():
    assert scaled_shape(1.0) == (17_770, 480_189, 100_480_507)
    assert scaled_shape(0.01)[:2] == (1777, 4802)
    assert scaled_shape(0.001)[:2] == (562, 480)


def test_layout_every_movie_file_and_line_format(generated, parsed):
    out, meta = generated
    files, users, movies, ratings, days = parsed
    n_movies, n_users, target = scaled_shape(SCALE)
    assert [p.name for p in files] == [f"mv_{i:07d}.txt" for i in range(1, n_movies + 1)]
    assert meta["movies"] == n_movies and meta["customers"] == n_users
    # Unreleased movies keep their file with only the header line.
    header_only = [p for p in files if p.read_bytes().count(b"\n") == 1]
    assert header_only and meta["rated_movies"] == n_movies - len(header_only)
    # Lines of one movie are ordered by customer id.
    for movie in np.unique(movies)[:50]:
        assert np.all(np.diff(users[movies == movie]) > 0)
    assert abs(len(ratings) - target) < 0.05 * target


def test_counts_match_synth_json(generated, parsed):
    out, meta = generated
    files, users, movies, ratings, days = parsed
    assert synth.read_synth_meta(out) == {k: v for k, v in meta.items() if k != "phase_seconds"}
    assert meta["ratings"] == len(ratings)
    assert meta["rating_customers"] == len(np.unique(users)) == meta["customers"]
    assert meta["rated_movies"] == len(np.unique(movies))
    assert meta["rating_counts"] == {str(r): int((ratings == r).sum()) for r in range(1, 6)}
    assert meta["training_set_bytes"] == sum(p.stat().st_size for p in files)
    months = np.array([d.strftime("%Y-%m") for d in days])
    keys, counts = np.unique(months, return_counts=True)
    assert meta["ratings_per_month"] == dict(zip(keys.tolist(), counts.tolist()))
    assert meta["first_date"] == min(days).isoformat() and meta["last_date"] == max(days).isoformat()


def test_ratings_pairs_ids_and_dates(parsed):
    _, users, movies, ratings, days = parsed
    assert set(np.unique(ratings)) == {1, 2, 3, 4, 5}
    assert 3.45 < ratings.mean() < 3.8
    assert np.bincount(ratings).argmax() == 4  # mode 4, like Netflix
    pairs = users.astype(np.int64) * 100_000 + movies
    assert len(np.unique(pairs)) == len(pairs), "duplicate (customer, movie) pair"
    assert users.min() >= 1 and users.max() <= synth.MAX_CUSTOMER_ID
    assert days.min() >= dt.date(1999, 11, 11) and days.max() <= dt.date(2005, 12, 31)
    per_year = {y: sum(d.year == y for d in days) for y in range(2000, 2006)}
    assert per_year[2001] < per_year[2003] < per_year[2004] < per_year[2005]
    # Heavy tails, and every customer has a few ratings.
    per_user = np.unique(users, return_counts=True)[1]
    per_movie = np.unique(movies, return_counts=True)[1]
    assert per_user.min() >= 3 and per_user.max() > 4 * np.median(per_user)
    assert per_movie.max() > 4 * np.percentile(per_movie, 10)


def gini(counts) -> float:
    x = np.sort(np.asarray(counts, dtype=float))
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


@pytest.mark.parametrize("profile", ["real", "plain"])
def test_full_scale_world_is_heavy_tailed(profile):
    """At scale 1.0 the planned activity looks like Netflix (mean ~209, median ~96 ratings per user)."""
    n_movies, n_users, target = scaled_shape(1.0)
    world = synth._build_world(n_movies, n_users, target, synth.PROFILES[profile], seed=0)
    counts = world.user_counts
    assert abs(counts.sum() - target) < 0.001 * target
    assert 180 < counts.mean() < 240 and 70 < np.median(counts) < 130 and counts.min() >= 3
    expected_raters = world.movie_weights * target
    assert expected_raters.max() > 50 * np.median(expected_raters)
    assert expected_raters.max() <= 0.5 * n_users + 1
    assert len(np.unique(world.user_ids)) == n_users
    if profile == "real":
        # movies as the real set: median 561 raters, mean/median 10.1, most rated 232,944 (docs/synth.md)
        released = expected_raters[expected_raters > 0]
        assert 450 < np.median(released) < 700 and 8 < released.mean() / np.median(released) < 13
        assert expected_raters.max() > 200_000
        top = np.sort(released)[::-1][: len(released) // 100]
        assert top.sum() / released.sum() > 0.25 and gini(released) > 0.8  # plain: 0.24 and 0.78


def test_time_splits_populated_like_netflix(parsed):
    _, users, _, _, days = parsed

    def window(a, b):
        return (days >= dt.date.fromisoformat(a)) & (days <= dt.date.fromisoformat(b))

    share = {
        "NF": window("1999-12-01", "2005-11-30").mean(),
        "N1Y": window("2004-06-01", "2005-05-31").mean(),
        "N6M": window("2005-06-01", "2005-11-30").mean(),
        "N3M": window("2005-09-01", "2005-11-30").mean(),
        "Dec": window("2005-12-01", "2005-12-31").mean(),
        "Jun": window("2005-06-01", "2005-06-30").mean(),
    }
    real = {"NF": 0.976, "N1Y": 0.413, "N6M": 0.290, "N3M": 0.136, "Dec": 0.0224, "Jun": 0.0387}
    for name, expected in real.items():
        assert abs(share[name] - expected) < 0.2 * expected, (name, share[name])
    december_users = np.unique(users[window("2005-12-01", "2005-12-31")])
    train_users = np.unique(users[window("2005-09-01", "2005-11-30")])
    assert np.isin(december_users, train_users).mean() > 0.8


def few_earlier_ratings_share(users, days, limit=5):
    """Among the customers who rate in December 2005 and in the N3M train window (Sep-Nov 2005; the test users
    of N3M), the share with fewer than ``limit`` ratings in that window."""
    train = (days >= np.datetime64("2005-09-01")) & (days <= np.datetime64("2005-11-30"))
    december = days >= np.datetime64("2005-12-01")
    train_users, train_counts = np.unique(users[train], return_counts=True)
    test_users = np.intersect1d(np.unique(users[december]), train_users)
    return float((train_counts[np.searchsorted(train_users, test_users)] < limit).mean())


@pytest.fixture(scope="module")
def default_scale_profiles(tmp_path_factory):
    """The default sample's scale (0.01, ~1M ratings) in both profiles, converted: (users, movies, days)."""
    import polars as pl

    from recsys_core.convert import convert

    result = {}
    for profile in ("real", "plain"):
        out = tmp_path_factory.mktemp("profiles") / profile
        generate_netflix(out / "raw", scale=0.01, seed=0, profile=profile)
        convert(out / "raw", out / "converted")
        frame = pl.read_parquet(out / "converted" / "ratings.parquet", columns=["user_id", "item_id", "timestamp"])
        result[profile] = (frame["user_id"].to_numpy(), frame["item_id"].to_numpy(),
                           frame["timestamp"].dt.date().to_numpy().astype("datetime64[D]"))
    return result


def test_real_profile_many_test_users_have_few_earlier_ratings(default_scale_profiles):
    """Customers join over time (30% of them shortly before the end of 2005), so on N3M many test users have
    few train ratings: 11.6% with < 5 and 22.6% with < 10 at scale 0.01 (plain: 5.5% and 15.2%; the same
    numbers come out of the split and matrices stages)."""
    real_users, _, real_days = default_scale_profiles["real"]
    plain_users, _, plain_days = default_scale_profiles["plain"]
    real = few_earlier_ratings_share(real_users, real_days)
    assert real > 0.09 and real > 1.5 * few_earlier_ratings_share(plain_users, plain_days), real
    assert few_earlier_ratings_share(real_users, real_days, limit=10) > 0.18


def test_real_profile_popularity_is_more_skewed_than_plain(default_scale_profiles):
    """At small scales the cap (half the customers) and heavy customers flatten the planned tail (see the
    full-scale test above); it stays heavier than plain's (scale 0.01: Gini 0.52 vs 0.47)."""
    real = np.unique(default_scale_profiles["real"][1], return_counts=True)[1]
    plain = np.unique(default_scale_profiles["plain"][1], return_counts=True)[1]
    assert gini(real) > gini(plain) + 0.03 and gini(real) > 0.49


def test_real_profile_taste_clusters(generated, parsed):
    """Customers draw half of their movies from two favourite clusters and rate them higher: per customer,
    the two clusters holding most of its ratings hold far more than two of 24 clusters would by chance, and
    are rated higher than the rest; the oracle carries the clusters (beyond its rank-10 factors)."""
    out, meta = generated
    _, users, movies, ratings, _ = parsed
    oracle = load_oracle(out)
    assert meta["profile"] == "real" and meta["params"]["taste_clusters"] == 24
    assert oracle.user_affinity.shape == (meta["customers"], 24) and oracle.item_cluster.shape == (meta["movies"],)
    def top_two(cluster):
        """Per customer with >= 30 ratings: the share of its ratings in its two most-rated clusters, and how
        much higher it rates them than the rest."""
        shares, lifts = [], []
        for user in np.unique(users):
            mine = users == user
            if mine.sum() < 30:
                continue
            per_cluster = np.bincount(cluster[mine], minlength=24)
            top = np.argsort(-per_cluster)[:2]
            shares.append(per_cluster[top].sum() / mine.sum())
            favourite = np.isin(cluster[mine], top)
            if (~favourite).sum() >= 5:
                lifts.append(ratings[mine][favourite].mean() - ratings[mine][~favourite].mean())
        return np.mean(shares), np.mean(lifts), len(shares)

    share, lift, n = top_two(oracle.item_cluster[movies - 1])
    chance_share, chance_lift, _ = top_two(np.random.default_rng(0).permutation(oracle.item_cluster)[movies - 1])
    assert n > 100
    assert share > chance_share + 0.05, (share, chance_share)  # scale 0.002: 0.25 vs 0.16
    assert lift > chance_lift + 0.1, (lift, chance_lift)


def test_plain_profile_has_no_taste(tmp_path):
    out = tmp_path / "plain"
    meta = generate_netflix(out, scale=0.0005, seed=7, profile="plain")
    assert meta["profile"] == "plain" and meta["params"]["taste_clusters"] == 0
    oracle = load_oracle(out)
    assert oracle.user_affinity is None and oracle.item_cluster is None


def test_movie_titles_latin1_null_years_commas_accents(generated):
    out, meta = generated
    raw = (out / "movie_titles.txt").read_bytes()
    assert b"\r" not in raw
    lines = raw.decode("latin-1").splitlines()
    assert len(lines) == meta["movies"]
    fields = [line.split(",", 2) for line in lines]
    assert [int(f[0]) for f in fields] == list(range(1, meta["movies"] + 1))
    assert all(f[1] == "NULL" or re.fullmatch(r"(19|20)\d\d", f[1]) for f in fields)
    assert any(f[1] == "NULL" for f in fields)
    assert any("," in f[2] for f in fields)
    assert any(any(ord(ch) > 127 for ch in f[2]) for f in fields)
    with pytest.raises(UnicodeDecodeError):  # really ISO-8859-1, not UTF-8
        raw.decode("utf-8")


def test_tar_members_equal_folder_files(generated):
    out, _ = generated
    folder = out / "training_set"
    with tarfile.open(out / "training_set.tar") as archive:
        members = archive.getmembers()
        assert members[0].name == "training_set" and members[0].isdir()
        names = [m.name for m in members[1:]]
        assert names == [f"training_set/{p.name}" for p in sorted(folder.iterdir())]
        for member in members[1:]:
            assert archive.extractfile(member).read() == (out / member.name).read_bytes()
    assert (out / "training_set.tar").stat().st_size % tarfile.RECORDSIZE == 0


def all_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_byte_identical_other_seed_differs(generated, tmp_path):
    out, _ = generated
    again = tmp_path / "again"
    generate_netflix(again, scale=SCALE, seed=7, tar=True)
    assert all_files(again) == all_files(out)
    other = tmp_path / "other"
    generate_netflix(other, scale=SCALE, seed=8, tar=False)
    assert not (other / "training_set.tar").exists()
    assert (other / "training_set" / "mv_0000001.txt").read_bytes() != (
        out / "training_set" / "mv_0000001.txt").read_bytes()
    assert all_files(other)["oracle.npz"] != all_files(out)["oracle.npz"]


def test_oracle_predict_is_exact_expected_rating():
    sd = 0.9
    scores = np.array([-3.0, 0.7, 1.2, 2.5, 3.0, 3.49, 4.1, 5.3, 8.0])
    edges = np.array([1.5, 2.5, 3.5, 4.5])
    cdf = norm.cdf((edges[None, :] - scores[:, None]) / sd)
    probs = np.diff(np.concatenate([np.zeros((len(scores), 1)), cdf, np.ones((len(scores), 1))], axis=1), axis=1)
    exact = probs @ np.arange(1, 6)
    mean, square = synth._expected_rating_and_square(scores, sd)
    np.testing.assert_allclose(mean, exact, atol=1e-12)
    np.testing.assert_allclose(square, probs @ np.arange(1, 6) ** 2, atol=1e-12)
    assert mean[0] < 1.001 and mean[-1] > 4.999
    # Monte Carlo: simulate the generating process for each score.
    rng = np.random.default_rng(0)
    draws = np.clip(np.rint(scores[:, None] + rng.normal(0, sd, (len(scores), 200_000))), 1, 5)
    np.testing.assert_allclose(draws.mean(axis=1), mean, atol=0.01)


def test_oracle_on_generated_data(generated, parsed):
    out, meta = generated
    _, users, movies, ratings, _ = parsed
    oracle = load_oracle(out)
    assert isinstance(oracle, Oracle)
    u = np.searchsorted(oracle.user_ids, users)
    i = movies - 1
    manual = (oracle.mu + oracle.user_bias[u] + oracle.item_bias[i]
              + (oracle.user_factors[u].astype(float) * oracle.item_factors[i]).sum(axis=1)
              + oracle.user_affinity[u, oracle.item_cluster[i]])
    np.testing.assert_allclose(oracle.score(users, movies), manual, atol=1e-5)
    rmse = oracle.rmse(users, movies, ratings)
    assert rmse == pytest.approx(meta["oracle_rmse"], abs=1e-6)
    assert rmse == pytest.approx(oracle.expected_rmse(users, movies), abs=0.01)
    assert 0.78 < rmse < 0.9
    # The low-rank part carries signal: the oracle clearly beats user + item biases alone.
    bias_only = np.clip(oracle.mu + oracle.user_bias[u] + oracle.item_bias[i], 1, 5)
    assert np.sqrt(np.mean((bias_only - ratings) ** 2)) > rmse + 0.05
    np.testing.assert_allclose(oracle.score(users[:6].reshape(2, 3), movies[:6].reshape(2, 3)).ravel(), manual[:6])
    with pytest.raises(RecsysError, match="customer ids but"):
        oracle.score(users[:3], movies[:2])
    with pytest.raises(RecsysError, match="customer id"):
        oracle.score([users.max() + 1 if users.max() < synth.MAX_CUSTOMER_ID else 0], [1])


def test_failed_run_keeps_previous_output(generated, tmp_path, monkeypatch):
    out = tmp_path / "keep"
    generate_netflix(out, scale=0.0005, seed=1)
    before = all_files(out)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(synth, "_format_movies", broken)
    with pytest.raises(OSError):
        generate_netflix(out, scale=0.0005, seed=2)
    assert all_files(out) == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_cli_help_run_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["synth", "--help"])
    text = capsys.readouterr().out
    for option in ("--scale", "--seed", "--tar", "--profile", "OUT"):
        assert option in text
    assert cli_main(["synth", str(tmp_path / "cli"), "--scale", "0.0005", "--seed", "3"]) == 0
    assert "ratings" in capsys.readouterr().out
    assert read_json(tmp_path / "cli" / "synth.json")["seed"] == 3
    assert cli_main(["synth", str(tmp_path / "bad"), "--scale", "5"]) == 2
    assert "scale must be between" in capsys.readouterr().err
    assert cli_main(["synth", str(tmp_path / "p"), "--scale", "0.0005", "--profile", "plain"]) == 0
    assert read_json(tmp_path / "p" / "synth.json")["profile"] == "plain"
    with pytest.raises(RecsysError, match="profile must be one of real, plain"):
        generate_netflix(tmp_path / "bad", scale=0.0005, profile="fancy")
    (tmp_path / "file").write_text("x")
    assert cli_main(["synth", str(tmp_path / "file")]) == 2
    with pytest.raises(RecsysError, match="oracle.npz"):
        load_oracle(tmp_path / "bad")
    with pytest.raises(RecsysError, match="synth.json"):
        synth.read_synth_meta(tmp_path / "bad")


# ------------------------------------------------------------------------------------------------
# The Kaggle layout: the same ratings, written as combined_data_1..4.txt (+ probe, qualifying, zip).

PROBE_LINE = re.compile(rb"[1-9][0-9]{0,6}")
QUALIFYING_LINE = re.compile(rb"([1-9][0-9]{0,6}),(\d{4}-\d{2}-\d{2})")


def parse_blocks(data: bytes, line: re.Pattern) -> dict[int, list[re.Match]]:
    """``<movie>:`` blocks of probe.txt / qualifying.txt, every line checked against ``line``."""
    blocks: dict[int, list] = {}
    current = None
    for text in data.split(b"\n")[:-1]:
        if text.endswith(b":"):
            current = int(text[:-1])
            assert current not in blocks
            blocks[current] = []
        else:
            match = line.fullmatch(text)
            assert match and current is not None, text
            blocks[current].append(match)
    return blocks


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "kaggle"
    meta = generate_netflix(out, scale=SCALE, seed=7, layout="kaggle", zip_archive=True)
    return out, meta


def test_kaggle_layout_holds_the_same_ratings_as_the_per_movie_files(generated, kaggle):
    (per_movie, meta), (out, kaggle_meta) = generated, kaggle
    names = ["combined_data_1.txt", "combined_data_2.txt", "combined_data_3.txt", "combined_data_4.txt",
             "movie_titles.csv", "probe.txt", "qualifying.txt", "README", "netflix-prize-data.zip", "oracle.npz",
             "synth.json", "qualifying_truth.txt"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert kaggle_meta["layout"] == "kaggle" and meta["layout"] == "netflix"
    for key in ("ratings", "rating_counts", "ratings_per_month", "oracle_rmse", "training_set_bytes"):
        assert kaggle_meta[key] == meta[key], key
    movie_files = sorted((per_movie / "training_set").iterdir())
    combined = [(out / f"combined_data_{n}.txt").read_bytes() for n in range(1, 5)]
    assert b"".join(combined) == b"".join(p.read_bytes() for p in movie_files)  # the files, one after the other
    # each file holds the real set's share of the movie ids (real: 1-4499, 4500-9210, 9211-13367, 13368-17770)
    firsts = [int(block.split(b":", 1)[0]) for block in combined]
    n = meta["movies"]
    assert firsts == [1] + [round(end * n / 17_770) + 1 for end in (4_499, 9_210, 13_367)]
    assert (out / "movie_titles.csv").read_bytes() == (per_movie / "movie_titles.txt").read_bytes()
    assert (out / "oracle.npz").read_bytes() == (per_movie / "oracle.npz").read_bytes()


def test_probe_and_qualifying_are_drawn_the_prizes_way(generated, parsed, kaggle):
    out, meta = generated
    _, users, movies, _, days = parsed
    n = meta["ratings"]
    rated = {(int(m), int(u)): d for m, u, d in zip(movies, users, days)}
    probe = parse_blocks((out / "probe.txt").read_bytes(), PROBE_LINE)
    pairs = [(movie, int(match.group())) for movie, lines in probe.items() for match in lines]
    assert len(pairs) == meta["probe_ratings"] == len(set(pairs))
    assert abs(len(pairs) - 0.014 * n) < 0.002 * n
    assert all(pair in rated for pair in pairs)  # probe ratings are training ratings
    # ... and each customer's most recent ones: none of its other ratings is later than one of its probe ratings
    in_probe = set(pairs)
    earliest_probe: dict[int, dt.date] = {}
    latest_other: dict[int, dt.date] = {}
    for (movie, user), day in rated.items():
        side = earliest_probe if (movie, user) in in_probe else latest_other
        side[user] = min(side[user], day) if side is earliest_probe and user in side else \
            max(side.get(user, day), day) if side is latest_other else day
    assert all(latest_other[user] <= day for user, day in earliest_probe.items())
    per_customer = np.unique([u for _, u in pairs], return_counts=True)[1]
    assert per_customer.max() <= meta["holdout_per_customer"] and len(per_customer) > 0.3 * meta["customers"]
    qualifying = parse_blocks((out / "qualifying.txt").read_bytes(), QUALIFYING_LINE)
    triples = [(movie, int(m.group(1)), dt.date.fromisoformat(m.group(2).decode()))
               for movie, lines in qualifying.items() for m in lines]
    assert len(triples) == meta["qualifying_pairs"] == len({t[:2] for t in triples})
    assert abs(len(triples) - 0.028 * n) < 0.005 * n
    assert not any(t[:2] in rated for t in triples)  # never published: not in the training set
    assert {t[1] for t in triples} <= set(users.tolist()) and {t[0] for t in triples} <= set(movies.tolist())
    first_rating = {}
    for (_, user), day in rated.items():
        first_rating[user] = min(first_rating.get(user, day), day)
    assert all(first_rating[t[1]] <= t[2] <= dt.date(2005, 12, 31) for t in triples)
    assert np.mean([t[2] >= dt.date(2005, 1, 1) for t in triples]) > 0.5  # recent, as the real ones
    for blocks in (probe, qualifying):  # movies ascending, customers ascending inside each
        assert list(blocks) == sorted(blocks)
        for lines in blocks.values():
            ids = [int(m.group(1) if m.re is QUALIFYING_LINE else m.group()) for m in lines]
            assert ids == sorted(ids)
    # The hidden ratings: one "rating,quiz|test" line per qualifying line, under the same headers.
    truth = parse_blocks((out / synth.QUALIFYING_TRUTH).read_bytes(), re.compile(rb"([1-5]),(quiz|test)"))
    assert {m: len(lines) for m, lines in truth.items()} == {m: len(lines) for m, lines in qualifying.items()}
    quiz = [m.group(2) == b"quiz" for lines in truth.values() for m in lines]
    assert sum(quiz) == meta["quiz_pairs"] and 0.4 < np.mean(quiz) < 0.6
    # The same sets in the Kaggle layout.
    kaggle_out, kaggle_meta = kaggle
    for name in ("probe.txt", "qualifying.txt", synth.QUALIFYING_TRUTH):
        assert (kaggle_out / name).read_bytes() == (out / name).read_bytes(), name


def test_distribution_archive_holds_the_files_of_the_prize(tmp_path):
    meta = generate_netflix(tmp_path / "nf", scale=0.0005, seed=2, distribution=True)
    assert synth.DISTRIBUTION_TAR_GZ in meta["files"] and meta["tar"]
    with tarfile.open(tmp_path / "nf" / synth.DISTRIBUTION_TAR_GZ) as archive:
        names = archive.getnames()
        assert names == ["download", "download/movie_titles.txt", "download/probe.txt", "download/qualifying.txt",
                         "download/README", "download/training_set.tar"]
        for name in ("movie_titles.txt", "probe.txt", "qualifying.txt", "training_set.tar"):
            assert archive.extractfile(f"download/{name}").read() == (tmp_path / "nf" / name).read_bytes()
    with pytest.raises(RecsysError, match="--tar-gz"):
        generate_netflix(tmp_path / "k", scale=0.0005, layout="kaggle", distribution=True)


def test_kaggle_zip_and_repeatability(kaggle, tmp_path):
    out, _ = kaggle
    with zipfile.ZipFile(out / "netflix-prize-data.zip") as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        assert [i.filename for i in infos] == synth.KAGGLE_FILES
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in infos)
        for info in infos:
            assert archive.read(info) == (out / info.filename).read_bytes()
    again = tmp_path / "again"
    generate_netflix(again, scale=SCALE, seed=7, layout="kaggle", zip_archive=True)
    assert all_files(again) == all_files(out)


def test_kaggle_options_and_cli(tmp_path, capsys):
    with pytest.raises(RecsysError, match="layout must be one of netflix, kaggle"):
        generate_netflix(tmp_path / "a", scale=0.0005, layout="zip")
    with pytest.raises(RecsysError, match="use it with --layout kaggle"):
        generate_netflix(tmp_path / "a", scale=0.0005, zip_archive=True)
    with pytest.raises(RecsysError, match="the kaggle layout's archive is --zip"):
        generate_netflix(tmp_path / "a", scale=0.0005, tar=True, layout="kaggle")
    assert cli_main(["synth", str(tmp_path / "k"), "--scale", "0.0005", "--layout", "kaggle", "--zip"]) == 0
    assert (tmp_path / "k" / "netflix-prize-data.zip").is_file() and not (tmp_path / "k" / "training_set").exists()
    assert cli_main(["synth", str(tmp_path / "t"), "--scale", "0.0005", "--tar", "--layout", "kaggle"]) == 2
    assert "--zip" in capsys.readouterr().err
