"""The Kaggle "Netflix Prize data" layout -> exactly the Parquet of the per-movie files.

``combined_data_1.txt`` .. ``combined_data_4.txt`` hold the movies' blocks one after the other: a line
``<movie id>:``, then that movie's ``customer_id,rating,YYYY-MM-DD`` lines. ``movie_titles.csv`` has the
fields of ``movie_titles.txt`` (ISO-8859-1, titles with commas); ``probe.txt``, ``qualifying.txt`` and
``README`` are not ratings and are not read. Sources: the folder, or the Kaggle zip archive read in
place (each member decompressed as a stream, its CRC-32 checked at its end; nothing is extracted).

Each combined file is read in order, 16 MB at a time, into one reused buffer; the header lines are
found with ``bytes.find`` (a rating line never holds ':'), and every complete block becomes one entry of
the per-movie path's own batcher (``netflix._read_batches``), exactly as if it were the file
``mv_<id>.txt``: the same batches, row groups, checks (duplicates within a movie included) and one-sentence
errors, with the line numbers of the combined file. A block cut by the end of the buffer moves to its
front for the next round; a block larger than the buffer grows it.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol, cast

from recsys_core.convert.common import UTF8_BOM, RatingsSink, Timings, trailing_blank_start
from recsys_core.convert.netflix import (
    ARCHIVE_ERRORS,
    DEFAULT_BATCH_MB,
    NetflixInput,
    _MovieFile,
    _Pipeline,
    _read_batches,
    archive_error,
    parse_titles,
    write_netflix_catalogue,
)
from recsys_core.errors import InputError
from recsys_core.progress import progress_bar

COMBINED_FILE = re.compile(r"combined_data_(\d+)\.txt")
TITLES_CSV = "movie_titles.csv"
_HEADER = re.compile(rb"(\d+):\r?")
_MAX_MOVIE_ID = 2**31 - 1
_ZIP_ERRORS = (*ARCHIVE_ERRORS, zipfile.BadZipFile, zipfile.LargeZipFile)
_READ_BYTES = 16 << 20  # bytes of a combined file read per round


class _Stream(Protocol):
    """An unbuffered file or a zip member (typeshed types ZipFile.open as IO[bytes], which lacks the
    readinto of the ZipExtFile it returns)."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...

    def __enter__(self) -> _Stream: ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass
class _Combined:
    label: str  # how messages name the file: its path, or "ARCHIVE member NAME"
    number: int  # N of combined_data_N.txt (the files are read in this order)
    size: int  # bytes (uncompressed)
    open: Callable[[], _Stream]
    archive: str | None = None  # the zip holding it, and its name there
    member: str | None = None

    def damaged(self, err: Exception) -> InputError:
        return archive_error(self.archive or self.label, err, self.member)


def combined_names(names) -> list[tuple[int, str]]:
    """(N, name) of the names that are ``combined_data_N.txt`` (at any folder depth), by N."""
    found = []
    for name in names:
        match = COMBINED_FILE.fullmatch(name.rsplit("/", 1)[-1])
        if match:
            found.append((int(match.group(1)), name))
    return sorted(found)


def is_kaggle_folder(folder: Path) -> bool:
    return folder.is_dir() and bool(combined_names(os.listdir(folder)))


def is_kaggle_zip(path: Path) -> bool:
    """A zip archive holding combined_data_N.txt (False for anything that is not a readable zip)."""
    if not path.is_file() or not path.name.lower().endswith(".zip"):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(combined_names(archive.namelist()))
    except (zipfile.BadZipFile, OSError):
        return True  # named .zip but unreadable: let the conversion say what is wrong with it


def find_kaggle(src: Path) -> NetflixInput | None:
    """The Kaggle layout: a folder holding combined_data_N.txt, or a zip archive holding them."""
    if is_kaggle_zip(src):
        return NetflixInput("kaggle zip", src, None)
    if is_kaggle_folder(src):
        return NetflixInput("kaggle", src, src / TITLES_CSV)
    return None


def kaggle_input_bytes(src: Path) -> int:
    if src.is_file():
        return src.stat().st_size
    return sum((src / name).stat().st_size for _, name in combined_names(os.listdir(src)))


# ----------------------------------------------------------------------------------------------
# Reading one combined file into batches


def _header_id(line: bytes) -> int | None:
    match = _HEADER.fullmatch(line)
    if match is None:
        return None
    movie_id = int(match.group(1))
    return movie_id if 0 < movie_id <= _MAX_MOVIE_ID else None


def _shown(line: bytes) -> str:
    return repr(line[:60].decode("latin-1"))


class _BlockReader:
    """The movie blocks of the combined files, one after the other, as ``_MovieFile`` entries whose body
    is copied out of the read buffer when ``netflix._read_batches`` loads it (see the module docstring)."""

    def __init__(self, read_bytes: int):
        self._buffer = bytearray(read_bytes)
        self._seen: dict[int, str] = {}  # movie id -> where its block starts (file, line)

    def blocks(self, source: _Combined, bar) -> Iterator[_MovieFile]:
        try:
            stream = source.open()
        except _ZIP_ERRORS as err:
            raise source.damaged(err) from None
        with stream:
            yield from self._blocks(source, stream, bar)

    def _blocks(self, source: _Combined, stream: _Stream, bar) -> Iterator[_MovieFile]:
        label = source.label
        fill, line_of_start, at_file_start, eof = 0, 1, True, False
        while not eof or fill:
            buffer = self._buffer
            with memoryview(buffer) as view:
                while fill < len(buffer) and not eof:
                    try:
                        got = stream.readinto(view[fill:])  # a zip member: inflated here, its CRC-32 checked at its end
                    except _ZIP_ERRORS as err:
                        raise source.damaged(err) from None
                    except OSError as err:  # the disk under the input: name the input
                        raise OSError(err.errno, err.strerror, source.label) from None
                    eof = not got
                    fill += got or 0
                    bar.advance((got or 0) / 1e6)
            if at_file_start:
                at_file_start = False
                if buffer.startswith(UTF8_BOM):  # an editor's byte-order mark: dropped
                    buffer[:fill - len(UTF8_BOM)] = buffer[len(UTF8_BOM):fill]
                    fill -= len(UTF8_BOM)
                if fill == 0 and eof:
                    raise InputError(label, "is empty; expected a first line '<movie id>:'", 1)
            consumed, lines = yield from self._cut(label, buffer, fill, eof, line_of_start)
            if consumed == 0 and not eof:  # not one whole block in the buffer: grow it
                self._buffer = buffer + bytearray(len(buffer))
                continue
            buffer[:fill - consumed] = buffer[consumed:fill]
            fill -= consumed
            line_of_start += lines

    def _cut(self, label: str, buffer: bytearray, fill: int, eof: bool, line_of_start: int):
        """Yield the complete blocks of ``buffer[:fill]``; return (bytes consumed, lines consumed). At the
        end of the file (``eof``) everything is consumed."""
        position, line = 0, line_of_start  # a line start, and its line number in the file
        while position < fill:
            if eof and trailing_blank_start(buffer, fill, position) == position:
                position = fill  # only blank lines are left: the end of the file
                break
            end = buffer.find(b"\n", position, fill)
            if end < 0 and not eof:
                break  # the header line is cut by the end of the buffer
            header_end = fill if end < 0 else end
            header = bytes(buffer[position:header_end])
            movie_id = _header_id(header)
            if movie_id is None:
                shown = _shown(header.rstrip(b"\r"))
                if _HEADER.fullmatch(header):
                    raise InputError(label, f"the movie id of {shown} is not a positive 32-bit integer", line)
                if line == 1:
                    raise InputError(label, f"the first line must be '<movie id>:' but is {shown}", line)
                raise InputError(label, f"{shown} is neither a '<movie id>:' line (a positive id) nor a rating "
                                        "line 'customer_id,rating,YYYY-MM-DD'", line)
            body_start = min(header_end + 1, fill)
            colon = buffer.find(b":", body_start, fill)  # rating lines hold no ':', so: the next header
            if colon < 0 and not eof:
                break  # this block may go on beyond the buffer
            block_end = fill if colon < 0 else buffer.rfind(b"\n", body_start, colon) + 1 or body_start
            if movie_id in self._seen:
                raise InputError(label, f"movie {movie_id} was already read from {self._seen[movie_id]}", line)
            self._seen[movie_id] = f"{label}, line {line}"
            yield _MovieFile(label, movie_id, block_end - position, _copy_body(buffer, header, body_start, block_end),
                             line + 1)
            line += (end >= 0) + buffer.count(b"\n", body_start, block_end)
            position = block_end
        return position, line - line_of_start


def _copy_body(buffer: bytearray, header: bytes, start: int, end: int):
    """``_MovieFile.load`` of a block: its body is copied from the read buffer into the batch."""

    def load(dest: memoryview) -> tuple[bytes, int]:
        dest[:end - start] = memoryview(buffer)[start:end]
        return header, end - start

    return load


# ----------------------------------------------------------------------------------------------
# Sources and the conversion


def _folder_sources(folder: Path) -> list[_Combined]:
    sources = []
    for number, name in combined_names(os.listdir(folder)):
        path = folder / name
        if not path.is_file():
            raise InputError(path, "is not a regular file")
        sources.append(_Combined(str(path), number, path.stat().st_size,
                                 lambda path=path: open(path, "rb", buffering=0)))
    return sources


def _zip_sources(archive: zipfile.ZipFile, label: str) -> list[_Combined]:
    infos = {info.filename: info for info in archive.infolist()}
    return [_Combined(f"{label} member {name}", number, infos[name].file_size,
                      lambda name=name: cast(_Stream, archive.open(infos[name])), label, name)
            for number, name in combined_names(infos)]


def _check_numbers(sources: list[_Combined], where: str) -> None:
    numbers = [source.number for source in sources]
    if len(set(numbers)) != len(numbers):
        raise InputError(where, "holds two files named combined_data_N.txt with the same N")


def convert_kaggle(src: Path, out_dir: Path, sink: RatingsSink, timings: Timings,
                   batch_mb: float = DEFAULT_BATCH_MB, label_dir: Path | None = None) -> int:
    """Convert the Kaggle folder or zip ``src``: ratings through ``sink``, ``out_dir/items.parquet``;
    returns the catalogue size."""
    batch_bytes = max(1, int(batch_mb * (1 << 20)))
    archive = None
    try:
        if src.is_file():
            try:
                archive = zipfile.ZipFile(src)
            except (zipfile.BadZipFile, EOFError) as err:
                raise InputError(src, f"is not a readable zip archive, or it is truncated ({err})") from None
            sources = _zip_sources(archive, str(src))
            titles_names = [name for name in archive.namelist() if name.rsplit("/", 1)[-1] == TITLES_CSV]
            if not titles_names:
                raise InputError(src, f"holds no {TITLES_CSV}")
            titles_label = f"{src} member {titles_names[0]}"
            try:
                titles_data = archive.read(titles_names[0])
            except _ZIP_ERRORS as err:
                raise archive_error(str(src), err, titles_names[0]) from None
        else:
            sources = _folder_sources(src)
            titles_path = src / TITLES_CSV
            if not titles_path.is_file():
                raise InputError(titles_path, "is missing: the movie titles file must lie beside the "
                                              "combined_data files")
            titles_label, titles_data = str(titles_path), titles_path.read_bytes()
        if not sources:
            raise InputError(src, "holds no combined_data_N.txt")
        _check_numbers(sources, str(src))
        titles = parse_titles(titles_data, titles_label)  # before the long part: fail early
        _run(sources, batch_bytes, sink, timings)
    finally:
        if archive is not None:
            archive.close()
    return write_netflix_catalogue(out_dir, titles, sink, label_dir or out_dir, TITLES_CSV)


def _run(sources: list[_Combined], batch_bytes: int, sink: RatingsSink, timings: Timings) -> None:
    # Batches are cut by netflix._read_batches with the per-movie files' own rule (a block is exactly the
    # bytes of its mv_*.txt), so both layouts give the same row groups: byte-identical ratings.parquet.
    # The read buffer only has to hold whole blocks (it grows for a larger one): 16 MB instead of a second
    # batch-sized buffer saves ~110 MB of peak memory at the default batch size, at the same speed.
    reader = _BlockReader(min(batch_bytes, _READ_BYTES))
    pipeline = _Pipeline(sink, timings)
    try:
        with progress_bar("convert netflix (kaggle)", round(sum(s.size for s in sources) / 1e6), "MB") as bar:
            entries = (entry for source in sources for entry in reader.blocks(source, bar))
            for batch in _read_batches(entries, batch_bytes, timings):
                pipeline.submit(batch)
        pipeline.finish()
    finally:
        pipeline.close()
