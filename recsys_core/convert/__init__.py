"""Stage 1: convert raw Netflix Prize / MovieLens files into ``ratings.parquet``, ``items.parquet``
and ``meta.json`` (see docs/convert.md).

``convert(src, out_dir)`` recognises the input form by itself (``detect``, the one place that knows the
forms: the flow's cache key hashes the files ``detect`` says a conversion reads); the whole ``out_dir`` is
written under a temporary name and renamed into place, so on any error the previous output stays intact.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from recsys_core.convert.common import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    WHOLE_STARS,
    RatingsSink,
    Timings,
    describe_os_error,
    write_meta,
)
from recsys_core.convert.kaggle import convert_kaggle, find_kaggle, kaggle_input_bytes
from recsys_core.convert.movielens import MovieLensFormat, convert_movielens, find_format
from recsys_core.convert.netflix import DEFAULT_BATCH_MB, NetflixInput, convert_netflix, find_input
from recsys_core.errors import RecsysError
from recsys_core.io import atomic_dir

log = logging.getLogger("recsys_core")

RECOGNISED = ("a Netflix Prize folder (training_set/ + movie_titles.txt), a training_set/ folder, training_set.tar, "
              "nf_prize_dataset.tar.gz, the Kaggle 'Netflix Prize data' folder (combined_data_1..4.txt + "
              "movie_titles.csv) or its zip archive, or a MovieLens folder (u.data, ratings.dat or ratings.csv)")


@dataclass(frozen=True)
class Source:
    """A recognised input: the path given, and its Netflix form or its MovieLens format (exactly one is set)."""

    path: Path
    netflix: NetflixInput | None
    movielens: MovieLensFormat | None

    @property
    def reads(self) -> list[Path]:
        """The files and folders a conversion reads (a cache key hashes their content): a Netflix training
        folder or training_set.tar given as a file, with the titles file beside it; anything else as a whole
        (an archive, a Kaggle or MovieLens folder, a folder holding training_set.tar)."""
        netflix = self.netflix
        if netflix is not None and (netflix.kind == "folder" or (netflix.kind == "tar" and self.path.is_file())):
            return [netflix.path] + ([netflix.titles] if netflix.titles is not None and netflix.titles.exists()
                                     else [])
        return [self.path]

    @property
    def form(self) -> NetflixInput | MovieLensFormat:
        """The one form recognised (``detect`` sets exactly one of ``netflix`` and ``movielens``)."""
        if self.netflix is not None:
            return self.netflix
        if self.movielens is None:
            raise RecsysError(f"{self.path} is not a recognised data set; expected {RECOGNISED}")
        return self.movielens


def detect(src: str | Path) -> Source:
    """Recognise the form of ``src``; RecsysError (one sentence) when it is missing or none of ``RECOGNISED``."""
    src = Path(src)
    if not src.exists():
        raise RecsysError(f"{src} does not exist; expected {RECOGNISED}")
    netflix = find_input(src) or find_kaggle(src)
    movielens = None if netflix else find_format(src)
    if netflix is None and movielens is None:
        raise RecsysError(f"{src} is not a recognised data set; expected {RECOGNISED}")
    return Source(src, netflix, movielens)


@dataclass
class ConversionReport:
    meta: dict
    timings: Timings
    input_bytes: int  # bytes of the ratings input as read (compressed size for the tar.gz)
    peak_rss_mb: float

    def summary(self) -> str:
        wall = self.timings.wall
        rate = self.meta["ratings"] / wall if wall else 0.0
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.as_dict().items() if k != "wall")
        return (f"{self.meta['ratings']:,} ratings, {self.meta['users']:,} users, {self.meta['items']:,} items "
                f"in {wall:.1f}s ({rate / 1e6:.2f}M ratings/s, {self.input_bytes / 1e6 / wall if wall else 0:.0f} "
                f"MB/s); phases (thread seconds): {phases}; peak RSS {self.peak_rss_mb:.0f} MB")


def _input_bytes(src: Path, netflix: NetflixInput | None) -> int:
    if netflix is not None and netflix.kind.startswith("kaggle"):
        return kaggle_input_bytes(netflix.path)
    if src.is_file():
        return src.stat().st_size
    folder = src / "training_set" if (src / "training_set").is_dir() else src
    return sum(entry.stat().st_size for entry in folder.iterdir() if entry.is_file())


def _refuse_overlap(inputs: list[Path], out_dir: Path) -> None:
    """The output folder is replaced as a whole: it must neither be, hold, nor lie inside an input."""
    out_dir = out_dir.resolve()
    for path in inputs:
        path = path.resolve()
        if out_dir == path or out_dir in path.parents or path in out_dir.parents:
            raise RecsysError(f"the output folder {out_dir} overlaps the input {path} (writing it would replace "
                              "or mix with the input); choose an output folder outside the input")


def run_conversion(src: str | Path, out_dir: str | Path, *, compression: str = DEFAULT_COMPRESSION,
                   batch_mb: float = DEFAULT_BATCH_MB) -> ConversionReport:
    """Convert ``src`` into ``out_dir`` and report timings and memory as well as the meta."""
    src, out_dir = Path(src), Path(out_dir)
    if not batch_mb > 0:
        raise RecsysError(f"the batch size must be a positive number of megabytes, not {batch_mb}")
    if compression not in COMPRESSIONS:
        raise RecsysError(f"compression must be one of {', '.join(COMPRESSIONS)}, not {compression!r}")
    form = detect(src).form
    netflix = form if isinstance(form, NetflixInput) else None
    inputs = [src, netflix.path] + ([netflix.titles] if netflix.titles else []) if netflix else [src]
    _refuse_overlap(inputs, out_dir)
    timings = Timings()
    start = time.perf_counter()
    try:
        # A convert killed for real (SIGKILL) leaves its temporary folder; atomic_dir removes those of dead
        # writers first (about 1 GB each at full scale), never that of a conversion still running.
        with atomic_dir(out_dir) as tmp:
            sink = RatingsSink(tmp / "ratings.parquet", compression, label=out_dir / "ratings.parquet")
            try:
                if isinstance(form, NetflixInput) and form.kind.startswith("kaggle"):
                    log.info("converting Netflix (%s layout) %s into %s", form.kind, form.path, out_dir)
                    catalog = convert_kaggle(form.path, tmp, sink, timings, batch_mb, label_dir=out_dir)
                elif isinstance(form, NetflixInput):
                    log.info("converting Netflix %s %s into %s", form.kind, form.path, out_dir)
                    catalog = convert_netflix(form, tmp, sink, timings, batch_mb, label_dir=out_dir)
                else:
                    log.info("converting %s %s into %s", form.source, src, out_dir)
                    catalog = convert_movielens(src, form, tmp, sink, timings, label_dir=out_dir)
            finally:
                sink.close()
            meta = write_meta(tmp, "netflix" if isinstance(form, NetflixInput) else form.source, sink, catalog,
                              WHOLE_STARS if isinstance(form, NetflixInput) else form.scale,
                              label=out_dir / "meta.json")
    except OSError as err:  # unreadable input, full disk, ...: the user's environment, one sentence
        raise _environment_error(err, out_dir) from err
    timings.wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ratings_input = form.path if isinstance(form, NetflixInput) else src / form.ratings_name
    report = ConversionReport(meta, timings, _input_bytes(ratings_input, netflix), peak)
    log.info("converted %s into %s: %s", src, out_dir, report.summary())
    return report


def _environment_error(err: OSError, out_dir: Path) -> RecsysError:
    """Name the side that failed: an input that could not be read, or the output folder that could not
    be written (creating the temporary folder, renaming it into place; the files inside it name
    themselves, see ``common.writing``)."""
    names = [Path(name) for name in (err.filename, err.filename2) if name is not None]
    parent = out_dir.resolve().parent
    if not names or any(path.resolve().parent == parent and path.name.startswith(f".{out_dir.name}.")
                        for path in names) or any(path.resolve() == out_dir.resolve() for path in names):
        return RecsysError(f"could not write {out_dir}: {describe_os_error(err)}; the previous output, if any, "
                           "is unchanged")
    return RecsysError(f"{names[0]}: {describe_os_error(err)} (nothing was written to {out_dir})")


def convert(src: str | Path, out_dir: str | Path, *, compression: str = DEFAULT_COMPRESSION,
            batch_mb: float = DEFAULT_BATCH_MB) -> dict:
    """Convert a Netflix Prize or MovieLens source into ``out_dir`` (ratings.parquet, items.parquet,
    meta.json); returns the meta. Raises InputError (file, line, problem) on bad input."""
    return run_conversion(src, out_dir, compression=compression, batch_mb=batch_mb).meta
