"""A Netflix Prize submission: one predicted rating per line of ``qualifying.txt``, from a trained rating model.

``write_qualifying(run_dir, source, out)`` streams qualifying.txt (any layout, recsys_core/prize.py) in chunks
of ``LINES_PER_CHUNK`` lines: map raw ids to the run's rows and columns, predict, clip to the rating scale,
write ``d.dddd`` lines under the same ``<movie id>:`` headers, in the same order. Memory is bounded by one
chunk, whatever the file's length (2.8M lines on the real data). A pair whose customer or movie the run never
saw gets the training mean (counted, and said). The file is written atomically: a failure leaves no part.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys_core import prize
from recsys_core.errors import RecsysError
from recsys_core.interactions import rating_range
from recsys_core.io import atomic_file
from recsys_core.progress import progress_bar
from recsys_core.train import load_run

log = logging.getLogger("recsys_core")


@dataclass(frozen=True)
class QualifyReport:
    out: str
    lines: int  # predictions written
    movies: int  # <movie id>: headers written
    unknown: int  # pairs with a customer or movie the run never saw (predicted with the training mean)
    seconds: float
    peak_rss_mb: float
    model: str

    def summary(self) -> str:
        rate = self.lines / self.seconds if self.seconds else 0.0
        unknown = f"; {self.unknown:,} with a customer or movie the run never saw got the training mean" \
            if self.unknown else ""
        return (f"wrote {self.lines:,} predictions of {self.model} under {self.movies:,} movie headers to "
                f"{self.out} in {self.seconds:.1f} s ({rate / 1e6:.2f}M lines/s, peak RSS {self.peak_rss_mb:.0f} MB)"
                f"{unknown}")


def write_qualifying(run_dir: str | Path, source: str | Path, out: str | Path, device: str | None = None,
                     lines_per_chunk: int = prize.LINES_PER_CHUNK) -> QualifyReport:
    """Predict every line of ``source``'s qualifying.txt with the rating model of ``run_dir`` into ``out``."""
    started = time.perf_counter()
    qualifying = prize.require_prize_file(source, prize.QUALIFYING, "a qualifying submission")
    config, data, estimator = load_run(run_dir, device)
    if not estimator.rating_model:
        raise RecsysError(f"{run_dir} holds {config['model']}, a ranking model whose scores are not ratings; a "
                          "Netflix Prize submission needs a rating model (autoencoder, mf, ...)")
    low, high = rating_range(data.meta)
    mean = float(data.train.data.mean()) if data.train.nnz else (low + high) / 2
    users, items = _Index(data.user_ids), _Index(data.item_ids)
    lines = movies = unknown = 0
    previous = None
    out = Path(out)
    with atomic_file(out) as tmp, open(tmp, "wb") as sink, \
            progress_bar("qualify: predicting", None, "lines") as bar:
        for chunk in prize.read_chunks(qualifying, qualifying=True, lines_per_chunk=lines_per_chunk):
            rows, cols = users.positions(chunk.customers), items.positions(chunk.movies)
            known = (rows >= 0) & (cols >= 0)
            prediction = np.full(len(rows), mean, dtype=np.float64)
            if known.any():
                prediction[known] = estimator.predict_pairs(rows[known], cols[known])
            np.clip(prediction, low, high, out=prediction)
            np.nan_to_num(prediction, copy=False, nan=mean)
            pieces, last = prize.submission_pieces(chunk, previous, prize.format_ratings(prediction))
            movies += sum(1 for p in pieces if p.endswith(b":\n"))
            sink.writelines(pieces)
            previous = last
            lines += len(rows)
            unknown += int(np.count_nonzero(~known))
            bar.advance(len(rows))
    if unknown:
        log.warning("%d of %d qualifying pairs have a customer or movie that %s never saw; they got the training "
                    "mean %.4f", unknown, lines, run_dir, mean)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = QualifyReport(str(out), lines, movies, unknown, time.perf_counter() - started, peak, config["model"])
    log.info("%s", report.summary())
    return report


class _Index:
    """Raw ids -> the run's rows (or columns), -1 for an id it never saw."""

    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids, np.int64)
        self.order = np.argsort(ids, kind="stable")
        self.ordered = ids[self.order]

    def positions(self, ids: np.ndarray) -> np.ndarray:
        if len(self.ordered) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.ordered, ids), len(self.ordered) - 1)
        return np.where(self.ordered[at] == ids, self.order[at], -1).astype(np.int64)
