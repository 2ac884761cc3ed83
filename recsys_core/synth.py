"""Synthetic Netflix-Prize-format data drawn from a known low-rank model (the product's default data).

``generate_netflix(out_dir, scale, seed, tar)`` writes exactly the layout of the real Netflix Prize
training set (``training_set/mv_0000001.txt`` ..., ``movie_titles.txt`` in ISO-8859-1, optionally
``training_set.tar``) plus the generating model (``oracle.npz``, read back by ``load_oracle``) and
``synth.json`` (parameters and counts).

The model: rating = clip(round(mu + b_user + b_item + p_user . q_item + noise), 1, 5) with Gaussian
noise. Who rates what: heavy-tailed (lognormal) movie popularity and user activity, no repeated
(user, movie) pair. When: every user has an activity window; the windows are mapped onto the calendar
so that the monthly volume follows the real data's growth toward 2005 (so all four time splits of
arXiv 1708.01715 are populated much like the real ones).

Scale s: movies = round(17770*sqrt(s)), users = round(480189*s), ratings ~= 100,480,507*s (fewer at
tiny scales where a user cannot rate more movies than exist). Everything is vectorised with numpy; the
100M lines of scale 1.0 are formatted through fixed-width byte records, one group per id length.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import io
import logging
import os
import shutil
import tarfile
import threading
import time
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from recsys_core.errors import RecsysError
from recsys_core.io import atomic_dir, atomic_file, read_json, write_json
from recsys_core.progress import progress_bar

log = logging.getLogger("recsys_core")

# Shape of the real Netflix Prize training set.
REAL_MOVIES = 17_770
REAL_USERS = 480_189
REAL_RATINGS = 100_480_507
MAX_CUSTOMER_ID = 2_649_429
FIRST_DATE = dt.date(1999, 11, 11)
LAST_DATE = dt.date(2005, 12, 31)
N_DAYS = (LAST_DATE - FIRST_DATE).days + 1

MIN_SCALE = 1e-4
MAX_SCALE = 2.0
FORMAT_VERSION = 1

# Layouts: "netflix" = the Prize distribution's training_set/mv_*.txt + movie_titles.txt; "kaggle" = the
# Kaggle "Netflix Prize data" set: combined_data_1..4.txt (the movies' blocks one after the other),
# movie_titles.csv, probe.txt, qualifying.txt (+ README), optionally as the Kaggle zip archive.
LAYOUTS = ("netflix", "kaggle")
KAGGLE_ZIP = "netflix-prize-data.zip"
# The last movie of combined_data_1..3.txt in the real set (the fourth ends with movie 17,770).
KAGGLE_FILE_ENDS = (4_499, 9_210, 13_367)
# The real probe set holds 1,408,395 of the training ratings (recent ones), the qualifying set 2,817,131
# (customer, movie, date) triples that are NOT in the training set. The Prize drew them alike: per customer
# up to nine of its most recent ratings, each sent to probe, quiz or test (quiz + test = qualifying).
PROBE_FRACTION = 1_408_395 / REAL_RATINGS
QUALIFYING_FRACTION = 2_817_131 / REAL_RATINGS
HOLDOUT_MAX = 9  # recent ratings per customer held out at most (probe + qualifying)
QUALIFYING_TRUTH = "qualifying_truth.txt"  # the generator's own output: the hidden qualifying ratings
DISTRIBUTION_TAR_GZ = "nf_prize_dataset.tar.gz"
_ZIP_TIME = (2019, 11, 20, 0, 0, 0)  # fixed: deterministic zip

_USER_BITS = 20  # pair key = movie_index << 20 | user_index (users < 2**20 up to MAX_SCALE)
_LINES_PER_CHUNK = 1 << 22  # ratings formatted and written per chunk of movies (bounds memory)
_BITMAP_CELLS = 1 << 26  # users x movies cells per sampling block (a 64 MB bool matrix)
_TAR_MTIME = int(dt.datetime(2006, 1, 4, tzinfo=dt.timezone.utc).timestamp())  # fixed: deterministic tar


@dataclass(frozen=True)
class SynthParams:
    """Every knob of the generator (written to synth.json). The defaults are the "real" profile; ``PROFILES``
    holds the older "plain" one (a global low-rank model, activity and popularity without time or taste)."""

    rank: int = 10
    global_mean: float = 3.63  # plain: 3.7 (with the favourite-cluster boost the rating mean is ~3.6)
    user_bias_sd: float = 0.4
    item_bias_sd: float = 0.5
    interaction_sd: float = 0.5  # sd of the low-rank dot product p_user . q_item
    noise_sd: float = 0.9
    # lognormal sigma of a user's rating rate: with the windows and newcomers below, at scale 1.0 ratings per
    # user have mean 209, median 96, max ~4,500 (real: 209, 96, 17,653; plain: sigma 1.25 of the count itself)
    user_activity_sigma: float = 0.5
    min_user_ratings: int = 3
    max_user_fraction: float = 0.95  # a user rates at most this fraction of the rateable movies
    # lognormal sigma of the movie popularity weights; with the exact cap below, 2.3 gives at scale 1.0 a
    # median of ~530 ratings per movie, mean/median ~10.6 and a most-rated movie at ~240K (real: 561, 10.1,
    # 232,944; plain's 1.8 gave a median of 1,608)
    movie_popularity_sigma: float = 2.3
    max_movie_user_fraction: float = 0.5  # expected raters of a movie capped at this fraction of users
    exact_popularity_cap: bool = True  # cap by water-filling (plain: five rounds of cap and renormalize)
    unreleased_fraction: float = 0.001  # movies with zero popularity (their file holds only the header)
    stay_probability: float = 0.55  # users still active at the end of 2005
    null_year_fraction: float = 0.002
    comma_title_fraction: float = 0.05
    accented_title_fraction: float = 0.04
    # Arrival: a user's ratings ~ rate x (length of its activity window)**window_exponent (plain: 0,
    # independent of the window), so customers who joined shortly before a test period have few earlier
    # ratings, as on real data. Newcomers: a newcomer_share of the customers joins in the last newcomer_span
    # of activity time (about the last months of 2005) and stays (plain: 0).
    window_exponent: float = 1.0
    newcomer_share: float = 0.3
    newcomer_span: float = 0.03
    # Taste: every movie belongs to one of taste_clusters clusters (genres); every user has taste_favourites
    # favourite clusters, draws a taste_share of its movies from them (by popularity inside the cluster) and
    # rates each cluster with an offset N(0, taste_sd^2), plus taste_boost for the favourites. 0 clusters: none.
    taste_clusters: int = 24
    taste_favourites: int = 2
    taste_share: float = 0.5
    taste_sd: float = 0.3
    taste_boost: float = 0.3


# "real": heavy-tailed popularity, users arriving over time with ratings in proportion to their time active,
# taste clusters beyond the global low-rank model (the default); "plain": the generator before issue 14
# (same files for the same seed as then).
PROFILES = {
    "real": SynthParams(),
    "plain": SynthParams(global_mean=3.7, user_activity_sigma=1.25, movie_popularity_sigma=1.8,
                         window_exponent=0.0, newcomer_share=0.0, exact_popularity_cap=False, taste_clusters=0),
}
DEFAULT_PROFILE = "real"


def scaled_shape(scale: float) -> tuple[int, int, int]:
    """(movies, users, target ratings) of a scale, by the rule of CONTRACTS.md."""
    return (
        int(round(REAL_MOVIES * np.sqrt(scale))),
        int(round(REAL_USERS * scale)),
        int(round(REAL_RATINGS * scale)),
    )


# --------------------------------------------------------------------------------------------------
# Calendar: the target monthly volume (shaped after the real data) as a per-day CDF.


def _month_starts() -> list[dt.date]:
    months, y, m = [], FIRST_DATE.year, FIRST_DATE.month
    while (y, m) <= (LAST_DATE.year, LAST_DATE.month):
        months.append(dt.date(y, m, 1))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return months


def target_month_weights() -> tuple[list[dt.date], np.ndarray]:
    """Relative rating volume per calendar month, 1999-11 .. 2005-12 (sums to 1).

    Calibrated on the real split sizes: ~27% before June 2004 (10%/month growth), ~41% June 2004 -
    May 2005, ~29% June - November 2005 (June ~3.9%), ~2.3% December 2005.
    """
    months = _month_starts()
    weights = np.empty(len(months))
    jun04 = months.index(dt.date(2004, 6, 1))
    jun05 = months.index(dt.date(2005, 6, 1))
    weights[:jun04] = 2.5 * 1.10 ** (np.arange(jun04) - (jun04 - 1))
    weights[jun04:jun05] = np.linspace(2.6, 4.3, jun05 - jun04)
    weights[jun05:] = [3.9, 5.6, 6.0, 4.7, 4.6, 4.4, 2.3]
    weights[0] *= 20 / 30  # the data start on November 11
    return months, weights / weights.sum()


def _day_cdf() -> np.ndarray:
    """CDF at day boundaries (length N_DAYS + 1) of the target calendar volume."""
    months, weights = target_month_weights()
    day_weights = np.empty(N_DAYS)
    for i, start in enumerate(months):
        end = months[i + 1] if i + 1 < len(months) else LAST_DATE + dt.timedelta(days=1)
        first = max(start, FIRST_DATE)
        a, b = (first - FIRST_DATE).days, (end - FIRST_DATE).days
        day_weights[a:b] = weights[i] / (b - a)
    return np.concatenate([[0.0], np.cumsum(day_weights)]) / day_weights.sum()


def _activity_to_calendar(starts, ends, counts, grid_size=1 << 13):
    """Map activity-time y in [0, 1] to the calendar CDF value so that the aggregate hits the target.

    Each user rates uniformly in y over its window [start, end]; the aggregate density over y is the
    sum of the users' counts / window lengths. Its CDF A(y) is uniform on [0, 1] in the aggregate, so
    day = G^-1(A(y)) (G the target day CDF) reproduces the target monthly volume whatever the windows.
    Returns the grid of A values (length grid_size + 1) for np.interp.
    """
    height = counts / (ends - starts)
    start_bin = np.minimum((starts * grid_size).astype(np.int64), grid_size - 1)
    end_bin = np.minimum((ends * grid_size).astype(np.int64), grid_size)
    delta = np.bincount(start_bin, weights=height, minlength=grid_size + 1)
    delta -= np.bincount(end_bin, weights=height, minlength=grid_size + 1)
    density = np.cumsum(delta)[:grid_size]
    cdf = np.concatenate([[0.0], np.cumsum(np.maximum(density, 0.0))])
    return cdf / cdf[-1]


# --------------------------------------------------------------------------------------------------
# Model and sampling.


@dataclass
class _World:
    user_ids: np.ndarray  # int32 sorted raw customer ids
    user_counts: np.ndarray  # int64 target ratings per user
    user_start: np.ndarray  # activity window in y-space
    user_end: np.ndarray
    movie_weights: np.ndarray  # float64 popularity weights (0 = unreleased)
    mu: float
    user_bias: np.ndarray
    user_factors: np.ndarray
    item_bias: np.ndarray
    item_factors: np.ndarray
    # taste (None without clusters): cluster of each movie, favourite clusters of each user, offsets per
    # (user, cluster)
    item_cluster: np.ndarray | None = None  # int32 [movies]
    user_favourites: np.ndarray | None = None  # int32 [users, taste_favourites]
    user_affinity: np.ndarray | None = None  # float32 [users, taste_clusters]


def _water_fill(weights, total, low, high, integer=True):
    """Integer counts ~ f*weights clipped to [low, high] with sum ~ total (f found by bisection);
    ``integer=False``: the clipped values themselves."""
    lo, hi = 0.0, float(total) / weights.min()
    for _ in range(100):
        f = 0.5 * (lo + hi)
        if np.clip(f * weights, low, high).sum() < total:
            lo = f
        else:
            hi = f
    if not integer:
        return np.clip(hi * weights, low, high)
    return np.clip(np.rint(hi * weights), low, high).astype(np.int64)


def _build_world(n_movies, n_users, target, params: SynthParams, seed) -> _World:
    """Draw everything that is per customer or per movie: ids, activity, windows, biases, factors.

    Activity windows live in "activity time" y in [0, 1]; ``_activity_to_calendar`` maps y to dates.
    """
    rng = np.random.default_rng([seed, 1])
    user_ids = np.sort(rng.choice(MAX_CUSTOMER_ID, size=n_users, replace=False) + 1).astype(np.int32)

    popularity = rng.lognormal(0.0, params.movie_popularity_sigma, n_movies)
    n_unreleased = max(1, int(round(params.unreleased_fraction * n_movies)))
    popularity[rng.choice(n_movies, n_unreleased, replace=False)] = 0.0
    # Cap the most popular movies (a movie cannot be rated by more users than exist).
    cap = params.max_movie_user_fraction * n_users
    if params.exact_popularity_cap:
        released = popularity > 0
        popularity[released] = _water_fill(popularity[released], target, 0, cap, integer=False)
    else:
        for _ in range(5):
            expected = popularity / popularity.sum() * target
            popularity = np.minimum(expected, cap)
    popularity /= popularity.sum()

    rateable = int((popularity > 0).sum())
    high = max(1, int(params.max_user_fraction * rateable))
    low = min(params.min_user_ratings, high)
    activity = rng.lognormal(0.0, params.user_activity_sigma, n_users)
    if not params.window_exponent:
        counts = _water_fill(activity, min(target, high * n_users), low, high)

    starts = rng.random(n_users)
    stays = rng.random(n_users) < params.stay_probability
    ends = np.where(stays, 1.0, starts + (1.0 - starts) * rng.random(n_users))
    if params.newcomer_share:
        late = np.random.default_rng([seed, 8]).random((2, n_users))
        newcomer = late[0] < params.newcomer_share
        starts[newcomer] = 1.0 - params.newcomer_span * late[1][newcomer]
        ends[newcomer] = 1.0
    ends = np.maximum(ends, np.minimum(starts + 2e-3, 1.0))
    starts = np.minimum(starts, ends - 2e-3)
    if params.window_exponent:
        # activity is (about) a rate: a customer who joined late (or left early) has rated less
        counts = _water_fill(activity * (ends - starts) ** params.window_exponent, min(target, high * n_users),
                             low, high)

    factor_sd = np.sqrt(params.interaction_sd / np.sqrt(params.rank))
    world = _World(
        user_ids=user_ids,
        user_counts=counts,
        user_start=starts,
        user_end=ends,
        movie_weights=popularity,
        mu=params.global_mean,
        user_bias=rng.normal(0.0, params.user_bias_sd, n_users).astype(np.float32),
        user_factors=rng.normal(0.0, factor_sd, (n_users, params.rank)).astype(np.float32),
        item_bias=rng.normal(0.0, params.item_bias_sd, n_movies).astype(np.float32),
        item_factors=rng.normal(0.0, factor_sd, (n_movies, params.rank)).astype(np.float32),
    )
    if params.taste_clusters:
        _add_taste(world, params, seed)
    return world


def _add_taste(world: _World, params: SynthParams, seed: int) -> None:
    """Clusters of movies, favourite clusters of users (drawn by the clusters' popularity, Gumbel top-k)
    and per-(user, cluster) rating offsets, from a random stream of their own."""
    rng = np.random.default_rng([seed, 6])
    n_clusters, n_users = params.taste_clusters, len(world.user_ids)
    item_cluster = rng.integers(0, n_clusters, len(world.movie_weights)).astype(np.int32)
    cluster_weight = np.bincount(item_cluster, world.movie_weights, n_clusters)
    log_weight = np.full(n_clusters, -np.inf)
    log_weight[cluster_weight > 0] = np.log(cluster_weight[cluster_weight > 0])
    favourites_per_user = min(params.taste_favourites, int((cluster_weight > 0).sum()))
    favourites = np.empty((n_users, favourites_per_user), np.int32)
    step = 1 << 16
    for a in range(0, n_users, step):
        gumbel = -np.log(-np.log(rng.random((min(step, n_users - a), n_clusters)) + 1e-30))
        favourites[a:a + step] = np.argsort(-(gumbel + log_weight), axis=1)[:, :favourites_per_user]
    affinity = rng.normal(0.0, params.taste_sd, (n_users, n_clusters)).astype(np.float32)
    affinity[np.arange(n_users)[:, None], favourites] += np.float32(params.taste_boost)  # distinct per row
    world.item_cluster, world.user_favourites, world.user_affinity = item_cluster, favourites, affinity


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique, minus its slow hash path for large int arrays)."""
    values = np.sort(values)
    if len(values) == 0:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


class _TasteDraws:
    """Draws by taste: a mixture of popularity and each user's favourite clusters (``_sample_pairs``)."""

    def __init__(self, world: _World, log_weights: np.ndarray, taste_share: float):
        if world.item_cluster is None or world.user_favourites is None or world.user_affinity is None:
            raise ValueError("a world without taste clusters has no draws by taste")
        weights = world.movie_weights
        self.item_cluster, self.favourites = world.item_cluster, world.user_favourites
        self.log_weights, self.taste_share, self.n_movies = log_weights, taste_share, len(weights)
        self.by_cluster = np.argsort(self.item_cluster, kind="stable")  # movies grouped by cluster
        self.cluster_cumulative = np.cumsum(weights[self.by_cluster])
        cluster_ends = np.cumsum(np.bincount(self.item_cluster, minlength=world.user_affinity.shape[1]))
        cluster_hi = self.cluster_cumulative[cluster_ends - 1]
        self.cluster_lo = np.concatenate([[0.0], cluster_hi[:-1]])
        self.cluster_weight = cluster_hi - self.cluster_lo

    def weights(self, rows: np.ndarray) -> np.ndarray:
        """log of each row's (user's) probability of drawing each movie: the popularity mixture."""
        favourites, taste_share = self.favourites, self.taste_share
        boost = np.zeros((len(rows), self.n_movies), np.float32)
        for f in range(favourites.shape[1]):
            cluster = favourites[rows, f]
            match = self.item_cluster[None, :] == cluster[:, None]
            boost += match / np.float32(self.cluster_weight[cluster][:, None] * favourites.shape[1])
        with np.errstate(divide="ignore"):
            return self.log_weights + np.log(np.float32(1 - taste_share) + np.float32(taste_share) * boost)

    def draw(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        """A movie from one of each user's favourite clusters (uniform among them), by popularity inside."""
        favourites = self.favourites
        cluster = favourites[users, rng.integers(0, favourites.shape[1], len(users))]
        x = self.cluster_lo[cluster] + rng.random(len(users)) * self.cluster_weight[cluster]
        return self.by_cluster[np.minimum(np.searchsorted(self.cluster_cumulative, x, side="right"),
                                          self.n_movies - 1)]


def _sample_pairs(world: _World, seed: int, max_rounds: int = 16, taste_share: float = 0.0,
                  taste_rounds: int = 4) -> np.ndarray:
    """Distinct (movie, user) pairs as sorted int64 keys ``movie << 20 | user`` (movie-major).

    Users rating a large share of the catalogue get an exact weighted sample without replacement
    (Gumbel top-k). The others draw movies with replacement by popularity, drop the pairs they already
    have (a per-block bitmap) and draw their deficit again, for a few rounds. With taste clusters, a
    ``taste_share`` of each user's draws picks one of its favourite clusters and a movie inside it by
    popularity (in the first ``taste_rounds`` rounds; later rounds fill what is left by popularity alone,
    so a user whose favourites run out still gets its count).
    """
    counts, weights = world.user_counts, world.movie_weights
    n_users, n_movies = len(counts), len(weights)
    cumulative = np.cumsum(weights)
    log_weights = np.full(n_movies, -np.inf, dtype=np.float32)
    log_weights[weights > 0] = np.log(weights[weights > 0])
    heavy_threshold = max(n_movies // 8, 1)
    block = max(1, _BITMAP_CELLS // n_movies)
    bitmaps = threading.local()  # one reusable bitmap of block x movies per worker thread
    taste = _TasteDraws(world, log_weights, taste_share) if world.item_cluster is not None and taste_share > 0 else None

    def sample_block(block_index: int) -> np.ndarray:
        first = block_index * block
        rng = np.random.default_rng([seed, 2, block_index])
        if not hasattr(bitmaps, "seen"):
            bitmaps.seen = np.zeros(block * n_movies, dtype=bool)
        seen = bitmaps.seen
        need = counts[first : first + block]
        size = len(need)
        accepted = []
        heavy = np.flatnonzero(need > heavy_threshold)
        for rows in np.array_split(heavy, max(1, len(heavy) * n_movies // (1 << 24))):
            if len(rows) == 0:
                continue
            gumbel = -np.log(-np.log(rng.random((len(rows), n_movies), dtype=np.float32) + np.float32(1e-30)))
            order = np.argsort(-(gumbel + (taste.weights(rows + first) if taste else log_weights)), axis=1)
            take = need[rows]
            keep = np.arange(take.max())[None, :] < take[:, None]
            chosen_rows = np.broadcast_to(rows[:, None], keep.shape)[keep]
            accepted.append(chosen_rows.astype(np.int64) * n_movies + order[:, : take.max()][keep])
        have = np.zeros(size, dtype=np.int64)
        have[heavy] = need[heavy]
        for round_index in range(max_rounds):
            deficit = need - have
            active = np.flatnonzero(deficit > 0)
            if len(active) == 0:
                break
            users = np.repeat(active, deficit[active])
            movies = np.searchsorted(cumulative, rng.random(len(users)) * cumulative[-1], side="right")
            if taste and round_index < taste_rounds:
                by_taste = np.flatnonzero(rng.random(len(users)) < taste_share)
                movies[by_taste] = taste.draw(rng, users[by_taste] + first)
            flat = users.astype(np.int64) * n_movies + np.minimum(movies, n_movies - 1)
            flat = _distinct(flat[~seen[flat]])
            seen[flat] = True
            accepted.append(flat)
            have += np.bincount(flat // n_movies, minlength=size)
        flat = np.concatenate(accepted) if accepted else np.empty(0, dtype=np.int64)
        seen[flat] = False
        return ((flat % n_movies) << _USER_BITS) | (flat // n_movies + first)

    # Blocks are independent (own random stream), so two threads sample them; numpy releases the GIL.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="synth-pairs") as pool:
        pieces = list(pool.map(sample_block, range((n_users + block - 1) // block)))
    keys = np.concatenate(pieces)
    del pieces
    keys.sort()
    return keys


# --------------------------------------------------------------------------------------------------
# Text formatting and file writing.


def _id_tables(user_ids: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Per user: the length of its id in digits, and per length the ids as fixed-width byte strings."""
    lengths = np.char.str_len(user_ids.astype("U7")).astype(np.int8)
    text = user_ids.astype("S7")
    return lengths, {int(n): text.astype(f"S{n}") for n in np.unique(lengths)}


def _suffix_table() -> np.ndarray:
    """``,<rating>,YYYY-MM-DD\\n`` for code = (rating - 1) * N_DAYS + day."""
    dates = [(FIRST_DATE + dt.timedelta(days=d)).isoformat() for d in range(N_DAYS)]
    return np.array([f",{r},{d}\n".encode() for r in range(1, 6) for d in dates], dtype="S14")


def _writev_all(fd: int, pieces: list) -> int:
    """os.writev until every byte is written (a regular file may accept fewer bytes per call)."""
    total = sum(len(p) for p in pieces)
    written = os.writev(fd, pieces)
    if written != total:  # rare: finish with plain writes
        data = b"".join(bytes(p) for p in pieces)
        while written < total:
            written += os.write(fd, data[written:])
    return total


def _tar_header(name: str, size: int, is_dir: bool = False) -> bytes:
    return _tar_info(name, size, is_dir).tobuf(format=tarfile.USTAR_FORMAT)


def _tar_info(name: str, size: int, is_dir: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if is_dir else size
    info.mtime = _TAR_MTIME
    info.mode = 0o755 if is_dir else 0o644
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _format_movies(movie_counts, users, codes, id_lengths, id_text, suffixes):
    """Per movie of the chunk, the list of byte pieces of its lines (in the given line order).

    Lines of one id length are fixed-width records (id + a fixed-width suffix: ``,r,YYYY-MM-DD\\n`` for
    ratings), built by two gathers into a structured array. Lines are sorted by customer id inside each
    movie, so each movie's lines of one length form one contiguous run: a movie is a few slices, one per
    id length.
    """
    n_local = len(movie_counts)
    local_movie = np.repeat(np.arange(n_local), movie_counts)
    lengths = id_lengths[users]
    per_movie_length = np.bincount(local_movie * 8 + lengths, minlength=n_local * 8).reshape(n_local, 8)
    buffers = {}
    for width in np.flatnonzero(per_movie_length.sum(axis=0)):
        rows = np.flatnonzero(lengths == width)
        records = np.empty(len(rows), dtype=[("id", f"S{width}"), ("rest", suffixes.dtype)])
        records["id"] = id_text[int(width)][users[rows]]
        records["rest"] = suffixes[codes[rows]]
        line_bytes = int(width) + suffixes.dtype.itemsize
        starts = np.concatenate([[0], np.cumsum(per_movie_length[:, width])]) * line_bytes
        buffers[int(width)] = (records.view(np.uint8).data, starts)
    out = []
    for i in range(n_local):
        pieces = []
        for buffer, starts in buffers.values():
            if starts[i + 1] > starts[i]:
                pieces.append(buffer[starts[i] : starts[i + 1]])
        out.append(pieces)
    return out


def _expected_rating_and_square(scores, noise_sd):
    """E[R] and E[R^2] for R = clip(round(score + N(0, sd^2)), 1, 5), exactly via the normal CDF.

    With S_j = P(R > j) = Phi((score - j - 0.5) / sd): E[R] = 1 + sum_j S_j and, since
    R^2 = 1 + sum_{j<R} (2j + 1), E[R^2] = 1 + sum_j (2j + 1) S_j  (j = 1..4).
    """
    scores = np.asarray(scores, dtype=np.float64)
    mean = np.ones_like(scores)
    square = np.ones_like(scores)
    for j in range(1, 5):
        above = ndtr((scores - (j + 0.5)) / noise_sd)
        mean += above
        square += (2 * j + 1) * above
    return mean, square


# --------------------------------------------------------------------------------------------------
# Titles.

_WORDS = (
    "Dinosaur Planet Isle Man Character Paula Abdul Greatest Hits Lord Rings Silent Night Deadly "
    "River Shadow Summer Winter Midnight Express Empire Ghost Dragon Heart Storm Crimson Tide Glass "
    "Blue Iron Golden Gate Last Stand Lost Island Broken Arrow Wild Bunch Desert Moon Star Street "
    "City Lights Perfect Crime Little House Prairie Secret Garden Dark Water Fire Ice Road Home"
).split()
_ACCENTED = ["Café", "Amélie", "Über", "Señor", "Noël", "Götterdämmerung", "Façade", "Ça", "Mañana",
             "Søren", "Crème Brûlée", "Déjà Vu", "Niño", "Zoë", "Smörgåsbord", "Fête"]
_NAMES = ["Bob", "Carol", "Ted", "Alice", "Sex", "Lies", "Videotape", "Lock", "Stock", "Harry", "Sally"]


def _titles(n_movies: int, params: SynthParams, seed: int) -> bytes:
    """movie_titles.txt: ``id,year,title`` ISO-8859-1, some NULL years, commas and accents in titles."""
    rng = np.random.default_rng([seed, 4])
    years = np.clip(np.rint(2005 - rng.exponential(12.0, n_movies)), 1915, 2005).astype(int)
    kinds = rng.random(n_movies)
    special = rng.choice(n_movies, 3, replace=False)  # guarantee one of each special case
    null_year = rng.random(n_movies) < params.null_year_fraction
    null_year[special[0]] = True
    comma = kinds < params.comma_title_fraction
    comma[special[1]] = True
    accent = (kinds >= params.comma_title_fraction) & (
        kinds < params.comma_title_fraction + params.accented_title_fraction)
    accent[special[2]] = True
    picks = rng.integers(0, 1 << 30, (n_movies, 3))
    lines = []
    for i in range(n_movies):
        a, b, c = (int(x) for x in picks[i])
        if comma[i]:
            title = f"{_NAMES[a % len(_NAMES)]}, {_NAMES[b % len(_NAMES)]} and {_WORDS[c % len(_WORDS)]}"
        elif accent[i]:
            title = f"{_ACCENTED[a % len(_ACCENTED)]} {_WORDS[b % len(_WORDS)]}"
        elif c % 7 == 0:
            title = f"{_WORDS[a % len(_WORDS)]} {_WORDS[b % len(_WORDS)]}: Season {1 + c % 9}"
        else:
            title = f"The {_WORDS[a % len(_WORDS)]} {_WORDS[b % len(_WORDS)]}"
        year = "NULL" if null_year[i] else str(years[i])
        lines.append(f"{i + 1},{year},{title}\n")
    return "".join(lines).encode("latin-1")


# --------------------------------------------------------------------------------------------------
# Oracle.


@dataclass
class Oracle:
    """The generating model; ids are raw ids (customer id, movie id)."""

    mu: float
    noise_sd: float
    user_ids: np.ndarray  # sorted int32
    user_bias: np.ndarray
    user_factors: np.ndarray
    item_ids: np.ndarray  # sorted int32
    item_bias: np.ndarray
    item_factors: np.ndarray
    item_cluster: np.ndarray | None = None  # "real" profile: taste cluster of each movie
    user_affinity: np.ndarray | None = None  # and each customer's offset per cluster

    @staticmethod
    def _index(known: np.ndarray, ids, what: str) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(known, ids)
        pos = np.minimum(pos, len(known) - 1)
        bad = known[pos] != ids
        if bad.any():
            raise RecsysError(f"the oracle knows no {what} id {int(ids[bad][0])}")
        return pos

    def score(self, user_ids, item_ids) -> np.ndarray:
        """Noise-free score mu + b_u + b_i + p_u . q_i (+ a_u[cluster_i] with taste clusters), float64."""
        u = self._index(self.user_ids, user_ids, "customer")
        i = self._index(self.item_ids, item_ids, "movie")
        if u.shape != i.shape:
            raise RecsysError(f"got {u.size} customer ids but {i.size} movie ids")
        scores = self.mu + self.user_bias[u].astype(np.float64) + self.item_bias[i]
        step = 1 << 20  # bounded memory for the factor gathers, even for 100M pairs
        for a in range(0, u.size, step):
            p = self.user_factors[u.flat[a : a + step]].astype(np.float64)
            scores.flat[a : a + step] += np.einsum("nk,nk->n", p, self.item_factors[i.flat[a : a + step]])
        if self.user_affinity is not None and self.item_cluster is not None:
            scores += self.user_affinity[u, self.item_cluster[i]]
        return scores

    def predict(self, user_ids, item_ids) -> np.ndarray:
        """Bayes-optimal E[rating | score] of clip(round(score + noise), 1, 5)."""
        return _expected_rating_and_square(self.score(user_ids, item_ids), self.noise_sd)[0]

    def rmse(self, user_ids, item_ids, ratings) -> float:
        """RMSE of ``predict`` on these ratings: the floor any model can reach on them (in expectation)."""
        error = self.predict(user_ids, item_ids) - np.asarray(ratings, dtype=np.float64)
        return float(np.sqrt(np.mean(error**2)))

    def expected_rmse(self, user_ids, item_ids) -> float:
        """Theoretical RMSE of ``predict`` over fresh ratings of these pairs: sqrt(mean Var[R | score])."""
        mean, square = _expected_rating_and_square(self.score(user_ids, item_ids), self.noise_sd)
        return float(np.sqrt(np.mean(square - mean**2)))


def _save_npz(dest: Path, arrays: dict) -> None:
    """np.savez without timestamps in the zip (so equal seeds give byte-identical files)."""
    with atomic_file(dest) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def load_oracle(out_dir) -> Oracle:
    """Read the generating model written by ``generate_netflix`` (``out_dir/oracle.npz``)."""
    path = Path(out_dir) / "oracle.npz"
    if not path.is_file():
        raise RecsysError(f"{path} does not exist: not a folder written by `python -m recsys_core synth`")
    with np.load(path) as data:
        return Oracle(
            mu=float(data["mu"]),
            noise_sd=float(data["noise_sd"]),
            user_ids=data["user_ids"],
            user_bias=data["user_bias"],
            user_factors=data["user_factors"],
            item_ids=data["item_ids"],
            item_bias=data["item_bias"],
            item_factors=data["item_factors"],
            item_cluster=data["item_cluster"] if "item_cluster" in data else None,
            user_affinity=data["user_affinity"] if "user_affinity" in data else None,
        )


# --------------------------------------------------------------------------------------------------
# The Kaggle layout's extra files.

KAGGLE_FILES = ["combined_data_1.txt", "combined_data_2.txt", "combined_data_3.txt", "combined_data_4.txt",
                "movie_titles.csv", "probe.txt", "qualifying.txt", "README"]
_KAGGLE_README = """Synthetic data in the layout of the Kaggle "Netflix Prize data" set, written by recsys_core.synth.

combined_data_1.txt .. combined_data_4.txt: the training ratings, movie after movie: a line "<movie id>:",
    then one line "customer_id,rating,YYYY-MM-DD" per rating of that movie.
movie_titles.csv: "movie_id,year_of_release,title" (ISO-8859-1; year may be NULL; titles hold commas).
probe.txt: "<movie id>:" then one customer id per line: training ratings to hold out (recent ones).
qualifying.txt: "<movie id>:" then "customer_id,YYYY-MM-DD" lines: recent ratings not in the data, to predict.
"""
_DISTRIBUTION_README = """Synthetic data in the layout of the Netflix Prize distribution, written by recsys_core.synth.

training_set.tar: training_set/mv_0000001.txt ...: a line "<movie id>:", then "customer_id,rating,YYYY-MM-DD".
movie_titles.txt: "movie_id,year_of_release,title" (ISO-8859-1; year may be NULL; titles hold commas).
probe.txt: "<movie id>:" then one customer id per line: training ratings to hold out (recent ones).
qualifying.txt: "<movie id>:" then "customer_id,YYYY-MM-DD" lines: recent ratings not in the data, to predict.
"""


@dataclass
class _Holdout:
    """The Prize's hold-out sets of a generated set (customer and movie as indices)."""

    probe: np.ndarray  # int64 keys movie << 20 | customer of training ratings, sorted
    qualifying: np.ndarray  # int64 keys of pairs NOT in the training set, sorted
    qualifying_days: np.ndarray  # day index of each qualifying pair
    qualifying_ratings: np.ndarray  # int64 hidden rating 1..5
    quiz: np.ndarray  # bool: the pair is in the quiz half (else test)
    oracle_rmse: float  # RMSE of the Bayes-optimal prediction on the qualifying ratings
    per_customer: int  # recent ratings per customer held out at most


def _rated(users: np.ndarray, movie_ends: np.ndarray, movies: np.ndarray, who: np.ndarray) -> np.ndarray:
    """Whether customer ``who`` rated movie ``movies`` (indices): a vectorised bisection inside each movie's
    block of ``users`` (the training ratings movie-major, customers ascending), no key array built."""
    starts = np.concatenate([[0], movie_ends[:-1]])
    lo, hi = starts[movies].astype(np.int64), movie_ends[movies].astype(np.int64)
    last = max(len(users) - 1, 0)
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) >> 1
        less = users[np.minimum(mid, last)] < who
        lo = np.where(active & less, mid + 1, lo)
        hi = np.where(active & ~less, mid, hi)
    return (lo < movie_ends[movies]) & (users[np.minimum(lo, last)] == who) if len(users) else lo < 0


def _holdout(world: _World, users: np.ndarray, movie_counts: np.ndarray, days: np.ndarray, seed: int,
             scores, noise_sd: float) -> _Holdout:
    """probe and qualifying the way the Prize drew them: per customer, up to ``HOLDOUT_MAX`` (more where the
    customers have too few recent ratings for the real shares; at most half of its ratings) of its most recent
    ratings are held out, each to probe with probability p and to qualifying with 2p (p set
    so that probe is ~1.4% of the ratings, qualifying ~2.8%: the real shares). The training files stay as
    they are: the probe ratings are the customer's most recent training ratings (the Prize's probe is inside
    its training set); the qualifying ratings (never published by the Prize) are new ones of the same
    customers, drawn from the same model for movies they did not rate (by popularity), dated within the span of
    their held-out recent ratings. Ties of a day are broken by movie id. Half of qualifying is quiz, half test.
    Own random stream, so the training ratings are those of a generator without hold-out."""
    n_users, n = len(world.user_ids), len(users)
    rng = np.random.default_rng([seed, 9])
    movie_ends = np.cumsum(movie_counts)
    # Every rating as customer | day | row, sorted: each customer's ratings by date, its most recent last.
    order = users.astype(np.int64)
    order <<= 40  # in place: at scale 1.0 each temporary is 800 MB
    order |= days.astype(np.int64) << 28
    order |= np.arange(n, dtype=np.int64)
    order.sort()
    per_user = np.bincount(users, minlength=n_users)
    user_ends = np.cumsum(per_user)
    ratio = QUALIFYING_FRACTION / PROBE_FRACTION
    # The Prize's nine is raised where the generated customers' recent ratings are too few to give the real
    # shares (scale 0.01: 9 gives 1.18% + 2.25%, 1.40% + 2.80% needs 12).
    cap = HOLDOUT_MAX
    while cap < 64 and np.minimum(cap, per_user // 2).sum() < (PROBE_FRACTION + QUALIFYING_FRACTION) * n:
        cap += 1
    window = np.minimum(cap, per_user // 2)
    p = min(1.0 / (1.0 + ratio), PROBE_FRACTION * n / max(int(window.sum()), 1))
    n_probe = rng.binomial(window, p)
    n_qualifying = rng.binomial(window - n_probe, min(1.0, ratio * p / (1.0 - p)))

    def last_of_each(counts: np.ndarray) -> np.ndarray:  # positions in ``order`` of each user's last counts
        offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(user_ends - counts, counts) + offsets

    rows = order[last_of_each(n_probe)] & ((1 << 28) - 1)
    probe_movies = np.searchsorted(movie_ends, rows, side="right")
    probe = np.sort((probe_movies.astype(np.int64) << _USER_BITS) | users[rows])

    # Qualifying: new pairs of the same customers, by movie popularity (then any movie, for the customers who
    # rated most of the popular ones), none rated, none twice.
    wanted = np.repeat(np.arange(n_users, dtype=np.int64), n_qualifying)
    cumulative = np.cumsum(world.movie_weights)
    chosen = np.empty(0, np.int64)
    released = np.flatnonzero(movie_counts > 0)
    for round_index in range(16):
        if len(wanted) == 0:
            break
        if round_index < 8:
            movies = np.minimum(np.searchsorted(cumulative, rng.random(len(wanted)) * cumulative[-1], side="right"),
                                len(cumulative) - 1)
        else:  # customers who rated most popular movies: any released movie they did not rate
            movies = released[rng.integers(0, len(released), len(wanted))]
        keys = (movies.astype(np.int64) << _USER_BITS) | wanted
        position = np.minimum(np.searchsorted(chosen, keys), max(len(chosen) - 1, 0))
        taken = chosen[position] == keys if len(chosen) else np.zeros(len(keys), dtype=bool)
        fresh = ~_rated(users, movie_ends, movies, wanted) & ~taken  # (np.isin: 8 of 11 s of the hold-out)
        fresh &= movie_counts[movies] > 0  # a movie with training ratings, as every real qualifying movie
        chosen = np.sort(np.concatenate([chosen, _distinct(keys[fresh])]))
        still = np.maximum(n_qualifying - np.bincount(chosen & ((1 << _USER_BITS) - 1), minlength=n_users), 0)
        wanted = np.repeat(np.arange(n_users, dtype=np.int64), still)
    who = (chosen & ((1 << _USER_BITS) - 1)).astype(np.int64)
    movies = chosen >> _USER_BITS
    first_day = (order[user_ends - np.maximum(window, 1)] >> 28) & 0xFFF
    last_day = (order[user_ends - 1] >> 28) & 0xFFF
    lo, hi = first_day[who], last_day[who]
    qualifying_days = lo + (rng.random(len(chosen)) * (hi - lo + 1)).astype(np.int64)
    score = scores(who.astype(np.int32), movies)
    noisy = score + rng.normal(0.0, noise_sd, len(chosen)).astype(np.float32)
    ratings = np.clip(np.rint(noisy), 1, 5).astype(np.int64)
    quiz = rng.random(len(chosen)) < 0.5
    expected = _expected_rating_and_square(score, noise_sd)[0]
    oracle_rmse = float(np.sqrt(np.mean((expected - ratings) ** 2))) if len(chosen) else float("nan")
    return _Holdout(probe, chosen, qualifying_days, ratings, quiz, oracle_rmse, cap)


def _write_blocks(dest: Path, counts: np.ndarray, per_movie: list) -> None:
    """``<movie id>:`` then the movie's lines, for the movies with lines (ascending)."""
    with atomic_file(dest) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            for movie_index in np.flatnonzero(counts).tolist():
                _writev_all(fd, [f"{movie_index + 1}:\n".encode(), *per_movie[movie_index]])
        finally:
            os.close(fd)


def _write_probe_and_qualifying(out_dir: Path, n_movies: int, holdout: _Holdout, id_lengths, id_text) -> dict:
    """probe.txt (``<movie>:`` then customer ids), qualifying.txt (``<movie>:`` then ``customer,YYYY-MM-DD``),
    movies ascending and customers ascending inside each, formatted like the rating lines; and
    qualifying_truth.txt: the same headers and one line ``rating,quiz`` or ``rating,test`` per qualifying line,
    in its order (a submission's layout: ``recsys_core.prize.score_submission`` reads it)."""
    mask = (1 << _USER_BITS) - 1
    dates = np.array([f",{(FIRST_DATE + dt.timedelta(days=d)).isoformat()}\n".encode() for d in range(N_DAYS)],
                     dtype="S12")
    probe, qualifying = holdout.probe, holdout.qualifying
    for name, keys, codes, suffixes in (("probe.txt", probe, np.zeros(len(probe), np.int64), np.array([b"\n"], "S1")),
                                        ("qualifying.txt", qualifying, holdout.qualifying_days, dates)):
        counts = np.bincount(keys >> _USER_BITS, minlength=n_movies)
        per_movie = _format_movies(counts, (keys & mask).astype(np.int32), codes, id_lengths, id_text, suffixes)
        _write_blocks(out_dir / name, counts, per_movie)
    counts = np.bincount(qualifying >> _USER_BITS, minlength=n_movies)
    truth_lines = np.array([f"{r},{part}\n".encode() for r in range(1, 6) for part in ("test", "quiz")], "S7")
    records = truth_lines[(holdout.qualifying_ratings - 1) * 2 + holdout.quiz].view(np.uint8).data
    starts = np.concatenate([[0], np.cumsum(counts)]) * truth_lines.dtype.itemsize
    _write_blocks(out_dir / QUALIFYING_TRUTH, counts, [[records[starts[i]:starts[i + 1]]] for i in range(n_movies)])
    return {"probe_ratings": int(len(probe)), "qualifying_pairs": int(len(qualifying)),
            "quiz_pairs": int(holdout.quiz.sum()), "qualifying_oracle_rmse": holdout.oracle_rmse,
            "holdout_per_customer": holdout.per_customer}


def _write_distribution(out_dir: Path) -> None:
    """nf_prize_dataset.tar.gz as distributed: download/ holding training_set.tar, movie_titles.txt, probe.txt,
    qualifying.txt and README (fixed dates and owners, gzip level 1: deterministic and quick)."""
    members = [("movie_titles.txt", None), ("probe.txt", None), ("qualifying.txt", None),
               ("README", _DISTRIBUTION_README.encode()), ("training_set.tar", None)]
    with atomic_file(out_dir / DISTRIBUTION_TAR_GZ) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0) as compressed, \
            tarfile.open(fileobj=compressed, mode="w|", format=tarfile.USTAR_FORMAT) as archive:
        archive.addfile(_tar_info("download/", 0, is_dir=True))
        for name, data in members:
            if data is not None:
                archive.addfile(_tar_info(f"download/{name}", len(data)), io.BytesIO(data))
                continue
            with open(out_dir / name, "rb") as source:
                archive.addfile(_tar_info(f"download/{name}", os.fstat(source.fileno()).st_size), source)


def _write_kaggle_zip(out_dir: Path) -> None:
    """netflix-prize-data.zip as downloaded from Kaggle: the layout's files at the archive root, deflated
    (level 1: a third of the time of level 6 for ~10% more bytes), fixed dates (deterministic)."""
    with atomic_file(out_dir / KAGGLE_ZIP) as tmp, \
            zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name in KAGGLE_FILES:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with open(out_dir / name, "rb") as source, archive.open(info, "w", force_zip64=True) as member:
                shutil.copyfileobj(source, member, 1 << 20)


# --------------------------------------------------------------------------------------------------
# Generator.


def generate_netflix(out_dir, scale: float = 0.01, seed: int = 0, tar: bool = False, layout: str = "netflix",
                     zip_archive: bool = False, profile: str = DEFAULT_PROFILE, distribution: bool = False) -> dict:
    """Write a synthetic Netflix Prize data set of the given scale into ``out_dir``; return synth.json.

    ``layout="netflix"``: training_set/mv_*.txt + movie_titles.txt + probe.txt + qualifying.txt (``tar``: also
    training_set.tar; ``distribution``: also nf_prize_dataset.tar.gz, the Prize's distribution archive holding
    download/training_set.tar, movie_titles.txt, probe.txt, qualifying.txt, README);
    ``layout="kaggle"``: combined_data_1..4.txt, movie_titles.csv, probe.txt, qualifying.txt, README
    (``zip_archive``: also the Kaggle archive netflix-prize-data.zip holding them). The same scale and seed give
    the same ratings, probe and qualifying sets in either layout. Both also write qualifying_truth.txt, the
    hidden ratings of the qualifying pairs (never part of a layout's files or archives; see
    ``_write_probe_and_qualifying``). ``profile`` picks the generating model (``PROFILES``: "real", the
    default, or "plain"). The returned dict also holds ``phase_seconds`` (timings; not
    written to synth.json so that equal seeds give byte-identical files).
    """
    scale, seed = _check_arguments(scale, seed, tar, layout, zip_archive, profile, distribution)
    tar = tar or distribution  # the distribution archive holds training_set.tar
    kaggle = layout == "kaggle"
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RecsysError(f"{out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    params = PROFILES[profile]
    n_movies, n_users, target = scaled_shape(scale)
    phases = _Phases()

    log.info("synth: scale %g -> %d movies, %d users, ~%d ratings", scale, n_movies, n_users, target)
    world = _build_world(n_movies, n_users, target, params, seed)
    calendar_of_activity = _activity_to_calendar(world.user_start, world.user_end, world.user_counts)
    phases.lap("model")

    keys = _sample_pairs(world, seed, taste_share=params.taste_share)
    movie_counts = np.bincount(keys >> _USER_BITS, minlength=n_movies)
    users = (keys & ((1 << _USER_BITS) - 1)).astype(np.int32)
    del keys
    phases.lap("pairs")

    ratings = _Ratings(world, params, users, movie_counts, calendar_of_activity, seed)
    phases.lap("setup")
    totals = _write_training_set(out_dir, ratings, n_movies, kaggle, tar, phases)
    phases.lap("write")

    titles = _titles(n_movies, params, seed)
    with atomic_file(out_dir / ("movie_titles.csv" if kaggle else "movie_titles.txt")) as tmp:
        tmp.write_bytes(titles)
    holdout = _holdout(world, users, movie_counts, totals.pop_days(), seed, ratings.scores, params.noise_sd)
    side_counts = _write_probe_and_qualifying(out_dir, n_movies, holdout, ratings.id_lengths, ratings.id_text)
    if kaggle:
        with atomic_file(out_dir / "README") as tmp:
            tmp.write_text(_KAGGLE_README)
    phases.lap("probe, qualifying")
    _save_oracle(out_dir / "oracle.npz", world, params, n_movies)
    meta = {
        "format_version": FORMAT_VERSION,
        "generator": "recsys_core.synth",
        "scale": scale,
        "seed": seed,
        "profile": profile,
        "params": asdict(params),
        "movies": n_movies,
        "customers": n_users,
        **_rating_summary(world, users, movie_counts, n_users, target, totals),
        "layout": layout,
        "tar": bool(tar),
        **side_counts,
        "files": _files_written(kaggle, tar, zip_archive, distribution),
    }
    if zip_archive:
        _write_kaggle_zip(out_dir)
        phases.lap("zip")
    if distribution:
        _write_distribution(out_dir)
        phases.lap("tar.gz")
    write_json(out_dir / "synth.json", meta)
    phases.lap("metadata")
    log.info("synth: wrote %d ratings (%d bytes) to %s", meta["ratings"], totals.bytes_written, out_dir)
    return {**meta, "phase_seconds": phases.seconds}


def _check_arguments(scale: float, seed: int, tar: bool, layout: str, zip_archive: bool, profile: str,
                     distribution: bool) -> tuple[float, int]:
    """One sentence for the first bad argument; the scale and seed as float and int."""
    if profile not in PROFILES:
        raise RecsysError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
    if layout not in LAYOUTS:
        raise RecsysError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if tar and layout != "netflix":
        raise RecsysError("--tar writes training_set.tar of the netflix layout; the kaggle layout's archive is --zip")
    if zip_archive and layout != "kaggle":
        raise RecsysError("--zip writes the Kaggle archive: use it with --layout kaggle")
    if distribution and layout != "netflix":
        raise RecsysError("--tar-gz writes the Prize's distribution archive of the netflix layout; the kaggle "
                          "layout's archive is --zip")
    scale = float(scale)
    if not (MIN_SCALE <= scale <= MAX_SCALE):
        raise RecsysError(f"scale must be between {MIN_SCALE} and {MAX_SCALE}, got {scale}")
    seed = int(seed)
    if seed < 0:
        raise RecsysError(f"seed must be a non-negative integer, got {seed}")
    return scale, seed


class _Phases:
    """Seconds spent per phase (returned, never written: equal seeds give byte-identical files)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 3)

    def lap(self, name: str) -> None:
        """Count the time since the last lap to ``name``."""
        now = time.perf_counter()
        self.add(name, now - self._clock)
        self._clock = now


class _Ratings:
    """The ratings of the sampled pairs, made chunk by chunk of movies (``chunk``, thread-safe): noise-free
    scores, noisy ratings, days, and the formatted lines of each movie."""

    def __init__(self, world: _World, params: SynthParams, users: np.ndarray, movie_counts: np.ndarray,
                 calendar_of_activity: np.ndarray, seed: int):
        self.world, self.params, self.users, self.movie_counts, self.seed = world, params, users, movie_counts, seed
        self.calendar_of_activity = calendar_of_activity
        self.day_cdf = _day_cdf()
        self.id_lengths, self.id_text = _id_tables(world.user_ids)
        self.suffixes = _suffix_table()
        self.ends = np.cumsum(movie_counts)
        chunk_of_movie = (np.concatenate([[0], self.ends[:-1]]) // _LINES_PER_CHUNK).astype(np.int64)
        self.chunk_bounds = np.flatnonzero(np.diff(np.concatenate([[-1], chunk_of_movie,
                                                                   [chunk_of_movie[-1] + 1]])))
        self.n_chunks = len(self.chunk_bounds) - 1
        # Factor columns as contiguous rows: gathering p_u[k] for millions of u is then one 1-D take.
        self.user_factor_rows = np.ascontiguousarray(world.user_factors.T)
        self.item_factor_rows = np.ascontiguousarray(world.item_factors.T)
        self.activity_grid = np.linspace(0.0, 1.0, len(calendar_of_activity))

    def calendar_days(self, y: np.ndarray) -> np.ndarray:
        x = np.interp(y, self.activity_grid, self.calendar_of_activity)
        return np.clip(np.searchsorted(self.day_cdf, x, side="right") - 1, 0, N_DAYS - 1)

    def scores(self, u: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Noise-free float32 score of customers ``u`` (indices) for movies ``m`` (indices)."""
        world, params = self.world, self.params
        score = world.mu + world.user_bias[u] + world.item_bias[m]
        for k in range(params.rank):
            score += self.user_factor_rows[k][u] * self.item_factor_rows[k][m]
        # the user's offset for the movie's taste cluster
        if world.user_affinity is not None and world.item_cluster is not None:
            score += world.user_affinity.ravel()[u.astype(np.int64) * params.taste_clusters + world.item_cluster[m]]
        return score

    def chunk(self, chunk_index: int) -> _Chunk:
        """Ratings, dates and formatted lines of one chunk of movies (runs in a worker thread)."""
        t0 = time.perf_counter()
        world, params, movie_counts = self.world, self.params, self.movie_counts
        m0, m1 = int(self.chunk_bounds[chunk_index]), int(self.chunk_bounds[chunk_index + 1])
        r0 = int(self.ends[m0 - 1]) if m0 else 0
        r1 = int(self.ends[m1 - 1])
        rng = np.random.default_rng([self.seed, 3, chunk_index])
        u = self.users[r0:r1]
        m = np.repeat(np.arange(m0, m1), movie_counts[m0:m1])
        score = self.scores(u, m)
        noisy = score + rng.normal(0.0, params.noise_sd, len(u)).astype(np.float32)
        rating = np.clip(np.rint(noisy), 1, 5).astype(np.int64)
        mean, square = _expected_rating_and_square(score, params.noise_sd)
        # When: uniform in the user's activity window, then onto the calendar.
        start = world.user_start[u]
        y = start + (world.user_end[u] - start) * rng.random(len(u))
        day = self.calendar_days(y)
        t1 = time.perf_counter()
        per_movie = _format_movies(movie_counts[m0:m1], u, (rating - 1) * N_DAYS + day, self.id_lengths,
                                   self.id_text, self.suffixes)
        return _Chunk(m0, m1, per_movie, float(((rating - mean) ** 2).sum()), float((square - mean**2).sum()),
                      np.bincount(rating, minlength=6), np.bincount(day, minlength=N_DAYS), day.astype(np.int16),
                      t1 - t0, time.perf_counter() - t1)


@dataclass
class _Chunk:
    """One chunk of movies made by ``_Ratings.chunk``."""

    m0: int  # its movies' indices: [m0, m1)
    m1: int
    per_movie: list  # each movie's lines: a list of buffers
    sq_error: float  # sum of (rating - E[rating | score])^2
    expected_var: float  # sum of Var[rating | score]
    rating_counts: np.ndarray  # [6]
    day_counts: np.ndarray  # [N_DAYS]
    days: np.ndarray  # int16, every rating's day in file order
    rating_seconds: float
    format_seconds: float


@dataclass
class _Totals:
    """What the training set's writer counted over every chunk."""

    rating_hist: np.ndarray = field(default_factory=lambda: np.zeros(6, dtype=np.int64))
    day_hist: np.ndarray = field(default_factory=lambda: np.zeros(N_DAYS, dtype=np.int64))
    sq_error: float = 0.0
    expected_var: float = 0.0
    bytes_written: int = 0
    day_parts: list[np.ndarray] = field(default_factory=list)  # every rating's day, in file order

    def pop_days(self) -> np.ndarray:
        """Every rating's day, in file order (the recent ones become probe); the parts are let go."""
        days = np.concatenate(self.day_parts)
        self.day_parts.clear()
        return days

    def add(self, chunk: _Chunk) -> None:
        self.sq_error += chunk.sq_error
        self.expected_var += chunk.expected_var
        self.rating_hist += chunk.rating_counts
        self.day_hist += chunk.day_counts
        self.day_parts.append(chunk.days)


def _write_training_set(out_dir: Path, ratings: _Ratings, n_movies: int, kaggle: bool, tar: bool,
                        phases: _Phases) -> _Totals:
    """training_set/mv_*.txt (and training_set.tar) or the Kaggle layout's combined_data_N.txt, each file
    replaced atomically; two worker threads make the chunks while this thread writes them in order."""
    totals = _Totals()
    combined_ends = [int(round(end * n_movies / REAL_MOVIES)) for end in KAGGLE_FILE_ENDS] + [n_movies]
    with contextlib.ExitStack() as stack:
        folder = None if kaggle else stack.enter_context(atomic_dir(out_dir / "training_set"))
        combined_fds = []
        for number in range(1, len(combined_ends) + 1) if kaggle else ():
            combined_tmp = stack.enter_context(atomic_file(out_dir / f"combined_data_{number}.txt"))
            combined_fds.append(os.open(combined_tmp, os.O_WRONLY | os.O_TRUNC))
            stack.callback(os.close, combined_fds[-1])
        tar_fd = None
        if tar:
            tar_tmp = stack.enter_context(atomic_file(out_dir / "training_set.tar"))
            tar_fd = os.open(tar_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if tar_fd is not None:
                os.write(tar_fd, _tar_header("training_set/", 0, is_dir=True))
            # Two worker threads build chunks (numpy releases the GIL) while this thread writes them
            # in order; at most two chunks wait in memory.
            n_chunks = ratings.n_chunks
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=2, thread_name_prefix="synth"))
            pending = deque(pool.submit(ratings.chunk, i) for i in range(min(2, n_chunks)))
            with progress_bar("synth: writing movies", n_movies, "movies") as bar:
                for chunk_index in range(n_chunks):
                    chunk = pending.popleft().result()
                    if chunk_index + 2 < n_chunks:
                        pending.append(pool.submit(ratings.chunk, chunk_index + 2))
                    totals.add(chunk)
                    phases.add("ratings (threads)", chunk.rating_seconds)
                    phases.add("format (threads)", chunk.format_seconds)
                    phases.lap("wait for chunks")
                    for offset, pieces in enumerate(chunk.per_movie):
                        movie_id = chunk.m0 + offset + 1
                        pieces.insert(0, f"{movie_id}:\n".encode())
                        if folder is None:  # kaggle: the movie's block goes into the combined file of its id range
                            fd = combined_fds[sum(1 for end in combined_ends[:-1] if movie_id > end)]
                            totals.bytes_written += _writev_all(fd, pieces)
                        else:
                            totals.bytes_written += _write_movie_file(folder, movie_id, pieces, tar_fd)
                    bar.advance(chunk.m1 - chunk.m0)
                    del chunk
                    phases.lap("write")
            if tar_fd is not None:
                position = os.lseek(tar_fd, 0, os.SEEK_CUR) + 1024
                os.write(tar_fd, b"\0" * (1024 + (-position % tarfile.RECORDSIZE)))
        finally:
            if tar_fd is not None:
                os.close(tar_fd)
    return totals


def _write_movie_file(folder: Path, movie_id: int, pieces: list, tar_fd: int | None) -> int:
    """training_set/mv_NNNNNNN.txt (and its member of training_set.tar); returns its size."""
    name = f"mv_{movie_id:07d}.txt"
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        size = _writev_all(fd, pieces)
    finally:
        os.close(fd)
    if tar_fd is not None:
        padding = b"\0" * (-size % 512)
        _writev_all(tar_fd, [_tar_header(f"training_set/{name}", size), *pieces, padding])
    return size


def _save_oracle(dest: Path, world: _World, params: SynthParams, n_movies: int) -> None:
    """oracle.npz: the generating model, which ``load_oracle`` reads back."""
    item_ids = np.arange(1, n_movies + 1, dtype=np.int32)
    _save_npz(
        dest,
        {
            "mu": np.float64(world.mu),
            "noise_sd": np.float64(params.noise_sd),
            "user_ids": world.user_ids,
            "user_bias": world.user_bias,
            "user_factors": world.user_factors,
            "item_ids": item_ids,
            "item_bias": world.item_bias,
            "item_factors": world.item_factors,
            **({} if world.item_cluster is None else
               {"item_cluster": world.item_cluster, "user_affinity": world.user_affinity}),
        },
    )


def _rating_summary(world: _World, users: np.ndarray, movie_counts: np.ndarray, n_users: int, target: int,
                    totals: _Totals) -> dict:
    """synth.json's counts of the training set: ratings, dates, rating histogram, the oracle's RMSE."""
    n_ratings = int(len(users))
    day_hist = totals.day_hist
    days = np.flatnonzero(day_hist)
    month_counts = {}
    for d, count in zip(days, day_hist[days]):
        key = (FIRST_DATE + dt.timedelta(days=int(d))).strftime("%Y-%m")
        month_counts[key] = month_counts.get(key, 0) + int(count)
    rating_hist = totals.rating_hist
    return {
        "rated_movies": int((movie_counts > 0).sum()),
        "rating_customers": int(np.count_nonzero(np.bincount(users, minlength=n_users))),
        "ratings": n_ratings,
        "target_ratings": target,
        "first_date": (FIRST_DATE + dt.timedelta(days=int(days[0]))).isoformat(),
        "last_date": (FIRST_DATE + dt.timedelta(days=int(days[-1]))).isoformat(),
        "date_range": [FIRST_DATE.isoformat(), LAST_DATE.isoformat()],
        "customer_id_range": [int(world.user_ids[0]), int(world.user_ids[-1])],
        "rating_counts": {str(r): int(rating_hist[r]) for r in range(1, 6)},
        "rating_mean": float((np.arange(6) * rating_hist).sum() / max(n_ratings, 1)),
        "oracle_rmse": float(np.sqrt(totals.sq_error / max(n_ratings, 1))),
        "oracle_expected_rmse": float(np.sqrt(totals.expected_var / max(n_ratings, 1))),
        "ratings_per_month": month_counts,
        "training_set_bytes": totals.bytes_written,
    }


def _files_written(kaggle: bool, tar: bool, zip_archive: bool, distribution: bool) -> list[str]:
    layout_files = (KAGGLE_FILES + ([KAGGLE_ZIP] if zip_archive else []) if kaggle
                    else ["training_set/", "movie_titles.txt", "probe.txt", "qualifying.txt"])
    return (layout_files + [QUALIFYING_TRUTH, "oracle.npz", "synth.json"] + (["training_set.tar"] if tar else [])
            + ([DISTRIBUTION_TAR_GZ] if distribution else []))


def read_synth_meta(out_dir) -> dict:
    """synth.json of a generated folder."""
    path = Path(out_dir) / "synth.json"
    if not path.is_file():
        raise RecsysError(f"{path} does not exist: not a folder written by `python -m recsys_core synth`")
    return read_json(path)
