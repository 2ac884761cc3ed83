"""Netflix Prize training set -> Parquet, fast.

The ~17,770 per-movie files are read into one reusable buffer in batches of ~128 MB (header line
checked and dropped, lines counted with ``bytes.count``), each batch is parsed by polars'
multithreaded CSV reader with an explicit schema, checked with vectorised operations, and written
as one Parquet row group. Reading, parsing and writing run in three threads (polars, pyarrow and
the read syscalls release the GIL). Only when a batch fails a check is it rescanned line by line
in Python, to name the exact file, line and problem.

Sources: a folder with ``training_set/`` and ``movie_titles.txt``; the ``training_set/`` folder
itself; ``training_set.tar`` (titles beside it); the distribution archive ``nf_prize_dataset.tar.gz``.
Archives are read in place: the plain tar by offset, the tar.gz as a stream, never extracted.
"""

from __future__ import annotations

import collections
import datetime
import gzip
import logging
import os
import re
import stat
import tarfile
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import polars as pl

from recsys_core.convert.common import (
    END_DAY,
    FIRST_DAY,
    LAST_DAY,
    PERIOD,
    UTF8_BOM,
    WHOLE_STARS,
    RatingsSink,
    Timings,
    ascii_int,
    decode_latin1_or_utf8,
    ratings_table,
    text_lines,
    trailing_blank_start,
    write_catalogue,
)
from recsys_core.errors import InputError
from recsys_core.progress import progress_bar

log = logging.getLogger("recsys_core")

TITLES_NAME = "movie_titles.txt"
TRAINING_DIR = "training_set"
TRAINING_TAR = "training_set.tar"
DEFAULT_BATCH_MB = 128

_MOVIE_FILE = re.compile(r"mv_(\d+)\.txt")
_HEADER = re.compile(rb"(\d+):\r?")
_RATING_LINE = re.compile(rb"\s*(-?\d+)\s*,\s*(-?\d+)\s*,(\d{4})-(\d{1,2})-(\d{1,2})\r?")
_CSV_SCHEMA = {"user": pl.Int32, "rating": pl.Int8, "date": pl.Date}
_HEAD_PROBE = 256  # bytes read to find the header line; real headers are at most 7 digits + ':'
_INT32_MAX = 2**31 - 1
_DENSE_DUPLICATE_LIMIT = 1 << 26  # user ids below this are checked for duplicates with a dense table
_BLANK_BYTES = frozenset(b" \t\r\n\f\v")
# What reading a damaged archive raises (gzip.BadGzipFile: a wrong CRC-32 or length in the gzip trailer).
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)
_STREAM_BUFFER = 1 << 20  # bytes per read of a streamed archive (tarfile's default, 10 KB, costs ~1 s at 2 GB)
_MAX_MOVIE_ID = 2**31 - 1


# ----------------------------------------------------------------------------------------------
# Sources: each yields _MovieFile entries and puts a file's body into a buffer.


@dataclass
class _MovieFile:
    label: str  # how messages name the file
    movie_id: int  # from the file name
    size: int
    # load(dest) writes the body (all after the first line) into dest[:n], returns (first line, n).
    load: Callable[[memoryview], tuple[bytes, int]]
    first_line: int = 2  # line number of the body's first line in the file (a Kaggle block: in combined_data)


def archive_error(label: str, err: Exception, member: str | None = None) -> InputError:
    """One sentence for a damaged archive: a failed checksum says so; the rest is truncation or corruption."""
    inside = f" inside member {member}" if member else ""
    text = str(err)
    if isinstance(err, gzip.BadGzipFile) and ("CRC" in text or "length" in text):
        return InputError(label, f"is corrupt{inside}: its gzip checksum (CRC-32 and length) does not match its "
                                 f"content ({text}); the archive was damaged in transfer or on disk")
    if "Bad CRC-32" in text:  # zipfile
        return InputError(label, f"is corrupt{inside}: its CRC-32 checksum does not match its content; the "
                                 "archive was damaged in transfer or on disk")
    return InputError(label, f"is truncated or corrupt{inside} ({text})")


def _movie_id_of(name: str) -> int | None:
    match = _MOVIE_FILE.fullmatch(name)
    return int(match.group(1)) if match else None


def _pread_exact(fd: int, dest: memoryview, offset: int, label: str) -> None:
    done = 0
    while done < len(dest):
        got = os.preadv(fd, [dest[done:]], offset + done)
        if got == 0:
            raise InputError(label, "ends early: the file or archive is truncated")
        done += got


def _load_by_offset(fd: int, offset: int, size: int, label: str) -> Callable[[memoryview], tuple[bytes, int]]:
    """Loader for a byte range of an open file (a rating file, or a member of a plain tar)."""

    def load(dest: memoryview) -> tuple[bytes, int]:
        try:
            return read(dest)
        except OSError as err:
            raise OSError(err.errno, err.strerror, label) from None

    def read(dest: memoryview) -> tuple[bytes, int]:
        head = os.pread(fd, min(size, _HEAD_PROBE), offset)
        if len(head) < min(size, _HEAD_PROBE):
            raise InputError(label, "ends early: the file or archive is truncated")
        end = head.find(b"\n")
        if end < 0:  # a header-only file without line end, or a first line too long to be a header
            return head, 0
        body = size - end - 1
        _pread_exact(fd, dest[:body], offset + end + 1, label)
        return head[:end], body

    return load


def _load_from_bytes(data: bytes) -> Callable[[memoryview], tuple[bytes, int]]:
    def load(dest: memoryview) -> tuple[bytes, int]:
        end = data.find(b"\n")
        if end < 0:
            return data, 0
        body = len(data) - end - 1
        dest[:body] = memoryview(data)[end + 1:]
        return data[:end], body

    return load


def _folder_files(folder: Path) -> tuple[int, Iterator[_MovieFile]]:
    # By movie id (the order of the distribution's tar, also for names without zero padding).
    names = sorted((movie_id, name) for name in os.listdir(folder) if (movie_id := _movie_id_of(name)) is not None)
    if not names:
        raise InputError(folder, "holds no rating files named mv_NNNNNNN.txt")

    def entries() -> Iterator[_MovieFile]:
        for movie_id, name in names:
            path = folder / name
            fd = os.open(path, os.O_RDONLY)
            try:
                status = os.fstat(fd)
                if not stat.S_ISREG(status.st_mode):
                    raise InputError(path, "is not a regular file")
                yield _MovieFile(str(path), movie_id, status.st_size,
                                 _load_by_offset(fd, 0, status.st_size, str(path)))
            finally:
                os.close(fd)

    return len(names), entries()


class _CheckedTarInfo(tarfile.TarInfo):
    """Records whether the archive's end-of-archive block was seen: tarfile silently stops at a
    truncated header, which would make a cut-off archive look complete."""

    @classmethod
    def fromtarfile(cls, archive):
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:  # pyright: ignore[reportAttributeAccessIssue]  # real, missing from typeshed
            archive.end_marker_seen = True
            raise


def _open_tar(label: str, **kwargs) -> tarfile.TarFile:
    try:
        archive = tarfile.open(tarinfo=_CheckedTarInfo, **kwargs)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        if isinstance(err, gzip.BadGzipFile) and ("CRC" in str(err) or "length" in str(err)):
            raise archive_error(label, err) from None  # a small archive is read to its end on opening
        raise InputError(label, f"is truncated or not a tar archive ({err})") from None
    return archive


def _archive_members(archive: tarfile.TarFile, label: str) -> Iterator[tarfile.TarInfo]:
    """Members of an archive, refusing any whose path leaves the archive root, and failing
    clearly on truncation (tarfile's own iteration stops silently at a cut-off header)."""
    try:
        for member in archive:
            parts = member.name.split("/")
            if member.name.startswith("/") or ".." in parts:
                raise InputError(label, f"holds the member {member.name!r}, whose path lies outside the archive "
                                        "root; refusing to read it")
            yield member
    except ARCHIVE_ERRORS as err:
        raise archive_error(label, err) from None
    if not getattr(archive, "end_marker_seen", False):
        raise InputError(label, "is truncated: it ends without the end-of-archive block")


def _member_movie_id(member: tarfile.TarInfo, label: str) -> int | None:
    parts = [part for part in member.name.split("/") if part not in ("", ".")]
    if len(parts) != 2 or parts[0] != TRAINING_DIR:
        return None
    movie_id = _movie_id_of(parts[1])
    if movie_id is not None and not member.isfile():
        raise InputError(label, f"member {member.name} is not a regular file")
    return movie_id


def _member_bytes(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    if handle is None:  # callers pass regular files only; extractfile answers None for others
        raise ValueError(f"member {member.name} is not a regular file")
    return handle.read()


def _tar_files(tar_path: Path) -> tuple[int, Iterator[_MovieFile]]:
    """Members of a plain tar on disk: the member list is read first (so a bad member is refused
    before anything is converted), then each body is read by offset with pread."""
    label = str(tar_path)
    with _open_tar(label, name=tar_path, mode="r:") as archive:
        members = []
        for member in _archive_members(archive, label):
            movie_id = _member_movie_id(member, label)
            if movie_id is not None:
                members.append((member, movie_id))
    if not members:
        raise InputError(label, "holds no members named training_set/mv_NNNNNNN.txt")
    tar_size = tar_path.stat().st_size
    for member, _ in members:
        if member.offset_data + member.size > tar_size:
            raise InputError(label, f"is truncated: member {member.name} ends past the end of the archive")

    def entries() -> Iterator[_MovieFile]:
        fd = os.open(tar_path, os.O_RDONLY)
        try:
            for member, movie_id in members:
                member_label = f"{label} member {member.name}"
                yield _MovieFile(member_label, movie_id, member.size,
                                 _load_by_offset(fd, member.offset_data, member.size, member_label))
        finally:
            os.close(fd)

    return len(members), entries()


def _streamed_tar_files(fileobj, label: str) -> Iterator[_MovieFile]:
    """Members of a tar read as a stream (inside the tar.gz), one after the other."""
    archive = _open_tar(label, fileobj=fileobj, mode="r|")
    found = False
    for member in _archive_members(archive, label):
        movie_id = _member_movie_id(member, label)
        if movie_id is None:
            continue
        found = True
        try:
            data = _member_bytes(archive, member)
        except ARCHIVE_ERRORS as err:
            raise archive_error(label, err, member.name) from None
        yield _MovieFile(f"{label} member {member.name}", movie_id, len(data), _load_from_bytes(data))
    if not found:
        raise InputError(label, "holds no members named training_set/mv_NNNNNNN.txt")


# ----------------------------------------------------------------------------------------------
# Batches


@dataclass
class _Batch:
    data: bytes  # the bodies of the files, one after the other, every line ending in \n
    labels: list[str]
    movie_ids: np.ndarray  # int32 per file
    line_counts: np.ndarray  # int64 per file
    body_starts: np.ndarray  # int64 per file: offset of the body in data (plus a final end offset)
    first_lines: np.ndarray | None = None  # int64 per file: line number of its first body line (None: all 2)

    def first_line(self, index: int) -> int:
        return 2 if self.first_lines is None else int(self.first_lines[index])


def _check_header(entry: _MovieFile, head: bytes) -> None:
    if entry.size == 0:
        raise InputError(entry.label, "is empty; expected a first line '<movie id>:'", 1)
    if head.startswith(UTF8_BOM):  # an editor's byte-order mark
        head = head[len(UTF8_BOM):]
    match = _HEADER.fullmatch(head)
    if match is None:
        shown = head[:40].decode("latin-1")
        raise InputError(entry.label, f"the first line must be '<movie id>:' but is {shown!r}", 1)
    header_id = int(match.group(1))
    if header_id != entry.movie_id:
        raise InputError(entry.label, f"the first line names movie {header_id} but the file name says movie "
                                      f"{entry.movie_id}", 1)


def _read_batches(entries: Iterator[_MovieFile], batch_bytes: int, timings: Timings) -> Iterator[_Batch]:
    buffer = bytearray(batch_bytes)
    view = memoryview(buffer)
    fill = 0
    labels: list[str] = []
    movie_ids: list[int] = []
    counts: list[int] = []
    starts: list[int] = []
    first_lines: list[int] = []
    seen_movies: dict[int, str] = {}
    start = time.perf_counter()

    def cut() -> _Batch:
        batch = _Batch(bytes(view[:fill]), labels[:], np.array(movie_ids, dtype=np.int32),
                       np.array(counts, dtype=np.int64), np.array(starts + [fill], dtype=np.int64),
                       np.array(first_lines, dtype=np.int64))
        for column in (labels, movie_ids, counts, starts, first_lines):
            column.clear()
        return batch

    for entry in entries:
        need = entry.size + 1  # a final line without \n gets one
        if fill + need > len(buffer) and labels:
            timings.add("read", time.perf_counter() - start)
            yield cut()
            start = time.perf_counter()
            fill = 0
        if need > len(buffer):
            buffer = bytearray(need)
            view = memoryview(buffer)
        head, body = entry.load(view[fill:fill + entry.size])
        _check_header(entry, head)
        if entry.movie_id in seen_movies:
            raise InputError(entry.label, f"movie {entry.movie_id} was already read from {seen_movies[entry.movie_id]}")
        seen_movies[entry.movie_id] = entry.label
        if body and buffer[fill + body - 1] != 0x0A:
            buffer[fill + body] = 0x0A
            body += 1
        if body and (body == 1 or buffer[fill + body - 2] in _BLANK_BYTES):  # blank lines at the end: dropped
            body = trailing_blank_start(buffer, fill + body, fill) - fill
        labels.append(entry.label)
        movie_ids.append(entry.movie_id)
        first_lines.append(entry.first_line)
        starts.append(fill)
        counts.append(buffer.count(b"\n", fill, fill + body))
        fill += body
    timings.add("read", time.perf_counter() - start)
    if labels:
        yield cut()


# ----------------------------------------------------------------------------------------------
# Parsing and checking one batch


def _line_problem(line: bytes, seen: dict[int, int], line_number: int) -> str | None:
    """What is wrong with one rating line (None if nothing); records the customer in ``seen``."""
    match = _RATING_LINE.fullmatch(line)
    if match is None:
        shown = line[:60].decode("latin-1")
        return f"cannot parse {shown!r}: expected 'customer_id,rating,YYYY-MM-DD'"
    user, rating, year, month, day = (int(group) for group in match.groups())
    if not 0 < user <= _INT32_MAX:
        return f"customer id {user} is not a positive 32-bit integer"
    if not 1 <= rating <= 5:
        return f"rating {rating} is outside the Netflix scale {WHOLE_STARS.describe()}"
    shown = f"{match.group(3).decode()}-{match.group(4).decode()}-{match.group(5).decode()}"
    try:
        date = datetime.date(year, month, day)
    except ValueError:
        return f"impossible date {shown}"
    if not FIRST_DAY <= date <= LAST_DAY:
        return f"the date {shown} lies outside the accepted period {PERIOD}"
    if user in seen:
        return f"customer {user} rated this movie already on line {seen[user]} (duplicate rating)"
    seen[user] = line_number
    return None


def _locate_problem(batch: _Batch, fast_path_says: str) -> InputError:
    """Rescan a failed batch line by line to name the first bad file, line and problem."""
    for index, label in enumerate(batch.labels):
        body = batch.data[batch.body_starts[index]:batch.body_starts[index + 1]]
        seen: dict[int, int] = {}
        first = batch.first_line(index)
        for offset, line in enumerate(body.split(b"\n")[:-1]):
            problem = _line_problem(line, seen, first + offset)
            if problem is not None:
                return InputError(label, problem, first + offset)
    first, last = batch.labels[0], batch.labels[-1]
    return InputError(f"{first} .. {last}", f"could not be parsed ({fast_path_says.splitlines()[0]})")


class _DuplicateChecker:
    """Finds a customer rating the same movie twice. Within a batch every movie is one file, so a
    duplicate is a repeated user id inside one file's rows: each file's rows write their row number
    into a dense user-indexed table and read it back; a repeated user keeps only one of its rows."""

    def __init__(self) -> None:
        self._table = np.zeros(0, dtype=np.int64)

    def has_duplicate(self, users: np.ndarray, counts: np.ndarray) -> bool:
        if len(users) == 0:
            return False
        top = int(users.max())
        if top >= _DENSE_DUPLICATE_LIMIT:
            file_of_row = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
            keys = np.sort((file_of_row << 32) | users.astype(np.int64))
            return bool((keys[1:] == keys[:-1]).any())
        if top >= len(self._table):
            self._table = np.zeros(top + 1 + (top >> 3), dtype=np.int64)
        table = self._table
        rows = np.arange(len(users), dtype=np.int64)
        ends = np.cumsum(counts)
        begin = 0
        for end in ends.tolist():
            if end - begin > 1:
                block = users[begin:end]
                table[block] = rows[begin:end]
                if not np.array_equal(table[block], rows[begin:end]):
                    return True
            begin = end
        return False


def _parse_batch(batch: _Batch, duplicates: _DuplicateChecker, timings: Timings):
    start = time.perf_counter()
    total_lines = int(batch.line_counts.sum())
    try:
        frame = pl.read_csv(batch.data, has_header=False, schema=_CSV_SCHEMA, quote_char=None,
                            raise_if_empty=False)
    except Exception as err:  # polars raises several types; any of them means a bad line
        raise _locate_problem(batch, str(err)) from None
    parsed = time.perf_counter()
    timings.add("parse", parsed - start)
    if frame.height != total_lines:
        raise _locate_problem(batch, f"{frame.height} rows parsed from {total_lines} lines")
    if frame.height and frame.null_count().sum_horizontal().item():
        raise _locate_problem(batch, "empty fields")
    users = frame["user"].to_numpy()
    ratings = frame["rating"].to_numpy()
    if frame.height and (ratings.min() < 1 or ratings.max() > 5 or users.min() <= 0):
        raise _locate_problem(batch, "rating or customer id out of range")
    days = frame["date"].cast(pl.Int32).to_numpy()
    if frame.height and (days.min() < 0 or days.max() >= END_DAY):
        raise _locate_problem(batch, "date outside the accepted period")
    if duplicates.has_duplicate(users, batch.line_counts):
        raise _locate_problem(batch, "duplicate rating")
    items = np.repeat(batch.movie_ids, batch.line_counts)
    seconds = days.astype(np.int64) * 86400
    table = ratings_table(users, items, ratings, seconds)
    timings.add("validate", time.perf_counter() - parsed)
    return table


# ----------------------------------------------------------------------------------------------
# Titles


def parse_titles(data: bytes, label: str) -> tuple[list[int], list[str], list[int | None]]:
    """``movie_titles.txt`` (Kaggle: ``movie_titles.csv``): ISO-8859-1 lines ``id,year,title``; year may
    be NULL; the title may hold commas (only the first two commas separate fields). A file saved as
    UTF-8 is recognised and decoded as such (with a warning); blank lines at its end are ignored."""
    text = decode_latin1_or_utf8(data, label)
    ids: list[int] = []
    titles: list[str] = []
    years: list[int | None] = []
    first_line: dict[int, int] = {}
    for number, line in enumerate(text_lines(text), start=1):
        fields = line.split(",", 2)
        if len(fields) < 3:
            raise InputError(label, f"expected 'id,year,title' (3 fields) but found {len(fields)} in {line!r}", number)
        movie, year, title = fields
        movie_id = ascii_int(movie)
        if movie_id is None or not 0 < movie_id <= _MAX_MOVIE_ID:
            raise InputError(label, f"the movie id {movie!r} is not a positive 32-bit integer", number)
        if movie_id in first_line:
            raise InputError(label, f"movie {movie_id} is listed again (first on line {first_line[movie_id]})", number)
        first_line[movie_id] = number
        year = year.strip()
        if year == "NULL" or year == "":
            years.append(None)
        elif len(year) == 4 and ascii_int(year) is not None:
            years.append(int(year))
        else:
            raise InputError(label, f"the year {year!r} is neither a 4-digit year nor NULL", number)
        ids.append(movie_id)
        titles.append(title)
    return ids, titles, years


# ----------------------------------------------------------------------------------------------
# Driving a conversion


@dataclass
class NetflixInput:
    kind: str  # "folder" | "tar" | "tar.gz" | "kaggle" | "kaggle zip"
    path: Path  # training_set/ folder, training_set.tar, the tar.gz; Kaggle: the folder or the zip
    titles: Path | None  # movie_titles.txt (Kaggle: movie_titles.csv) beside (None inside an archive)


def find_input(src: Path) -> NetflixInput | None:
    """Recognise the Netflix input forms; None if ``src`` is none of them."""
    name = src.name.lower()
    if src.is_file():
        if name.endswith((".tar.gz", ".tgz")):
            return NetflixInput("tar.gz", src, None)
        if name.endswith(".tar"):
            return NetflixInput("tar", src, src.parent / TITLES_NAME)
        return None
    if not src.is_dir():
        return None
    if (src / TRAINING_DIR).is_dir():
        return NetflixInput("folder", src / TRAINING_DIR, src / TITLES_NAME)
    if (src / TRAINING_TAR).is_file():
        return NetflixInput("tar", src / TRAINING_TAR, src / TITLES_NAME)
    if src.name == TRAINING_DIR or any(_movie_id_of(entry.name) is not None for entry in os.scandir(src)):
        return NetflixInput("folder", src, src.parent / TITLES_NAME)
    return None


def _read_titles_file(path: Path) -> tuple[list[int], list[str], list[int | None]]:
    if not path.is_file():
        raise InputError(path, "is missing: the movie titles file must lie beside the training set")
    return parse_titles(path.read_bytes(), str(path))


class _Pipeline:
    """Read (caller's thread) -> parse + check (one thread) -> write (one thread), in order, with
    at most two batches waiting at each step so memory stays bounded."""

    def __init__(self, sink: RatingsSink, timings: Timings):
        self._sink = sink
        self._timings = timings
        self._duplicates = _DuplicateChecker()
        self._parser = ThreadPoolExecutor(1, thread_name_prefix="convert-parse")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="convert-write")
        self._parsing: collections.deque[Future] = collections.deque()
        self._writing: collections.deque[Future] = collections.deque()

    def submit(self, batch: _Batch) -> None:
        self._parsing.append(self._parser.submit(_parse_batch, batch, self._duplicates, self._timings))
        while len(self._parsing) > 1:
            self._hand_to_writer()

    def _hand_to_writer(self) -> None:
        table = self._parsing.popleft().result()
        self._writing.append(self._writer.submit(self._sink.write, table, self._timings))
        while len(self._writing) > 1:
            self._writing.popleft().result()

    def finish(self) -> None:
        while self._parsing:
            self._hand_to_writer()
        while self._writing:
            self._writing.popleft().result()

    def close(self) -> None:
        for future in (*self._parsing, *self._writing):
            future.cancel()
        self._parser.shutdown(wait=True, cancel_futures=True)
        self._writer.shutdown(wait=True, cancel_futures=True)


def convert_netflix(netflix: NetflixInput, out_dir: Path, sink: RatingsSink, timings: Timings,
                    batch_mb: float = DEFAULT_BATCH_MB, label_dir: Path | None = None) -> int:
    """Write the ratings through ``sink`` and ``out_dir/items.parquet``; return the catalogue size."""
    batch_bytes = max(1, int(batch_mb * (1 << 20)))
    titles: tuple | None = None
    pipeline = _Pipeline(sink, timings)
    try:
        if netflix.kind == "tar.gz":
            titles = _convert_tar_gz(netflix.path, pipeline, batch_bytes, timings)
        else:
            assert netflix.titles is not None  # find_input names the titles file of every kind but tar.gz
            titles = _read_titles_file(netflix.titles)  # before the long part: fail early
            total, entries = (_folder_files if netflix.kind == "folder" else _tar_files)(netflix.path)
            _run(entries, total, pipeline, batch_bytes, timings)
        pipeline.finish()
    finally:
        pipeline.close()
    return write_netflix_catalogue(out_dir, titles, sink, label_dir or out_dir)


def _run(entries: Iterator[_MovieFile], total: int | None, pipeline: _Pipeline, batch_bytes: int,
         timings: Timings) -> None:
    with progress_bar("convert netflix", total, "files") as bar:
        for batch in _read_batches(entries, batch_bytes, timings):
            pipeline.submit(batch)
            bar.advance(len(batch.labels))
            bar.update(MB=round(len(batch.data) / 1e6))


def _convert_tar_gz(path: Path, pipeline: _Pipeline, batch_bytes: int, timings: Timings):
    """Stream the distribution archive once: the inner training_set.tar is read as a stream of its
    own; the titles may come before or after it."""
    label = str(path)
    titles = None
    saw_training = False
    # gzip.GzipFile, not tarfile's own "r|gz": it checks the CRC-32 and length of the gzip trailer, which
    # tarfile never reads (a corrupted archive converted without complaint). The gzip stream is read to
    # its end below so that the check runs.
    compressed = gzip.GzipFile(path, "rb")
    outer = _open_tar(label, fileobj=compressed, mode="r|", bufsize=_STREAM_BUFFER)
    try:
        for member in _archive_members(outer, label):
            base = member.name.rsplit("/", 1)[-1]
            if base == TITLES_NAME and member.isfile():
                data = _member_bytes(outer, member)
                titles = parse_titles(data, f"{label} member {member.name}")
            elif base == TRAINING_TAR and member.isfile():
                saw_training = True
                inner = outer.extractfile(member)
                entries = _streamed_tar_files(inner, f"{label} member {member.name}")
                _run(entries, None, pipeline, batch_bytes, timings)
        while compressed.read(_STREAM_BUFFER):  # the end-of-archive padding, then the gzip trailer's check
            pass
    except ARCHIVE_ERRORS as err:
        raise archive_error(label, err) from None
    except OSError as err:  # the disk under the input: name the input
        if err.filename is None:
            raise OSError(err.errno, err.strerror, label) from None
        raise
    finally:
        outer.close()
        compressed.close()
    if not saw_training:
        raise InputError(label, f"holds no {TRAINING_TAR}")
    if titles is None:
        raise InputError(label, f"holds no {TITLES_NAME}")
    return titles


def write_netflix_catalogue(out_dir: Path, titles, sink: RatingsSink, label_dir: Path,
                            titles_name: str = TITLES_NAME) -> int:
    ids, names, years = titles
    return write_catalogue(out_dir / "items.parquet", ids, names, years, [None] * len(ids), sink.items.ids,
                           titles_name, label=label_dir / "items.parquet")
