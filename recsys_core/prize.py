"""The Netflix Prize's own files beside the training set: ``probe.txt`` and ``qualifying.txt``, a submission.

* ``probe.txt``: ``<movie id>:`` lines, each followed by one customer id per line: 1,408,395 training ratings
  the Prize set aside for participants to test on (the ``netflix-probe`` split protocol, split/probe.py).
* ``qualifying.txt``: ``<movie id>:`` lines, each followed by ``customer_id,YYYY-MM-DD`` lines: 2,817,131 pairs
  whose ratings were never published. A submission is one predicted rating per qualifying line, in the same
  order under the same headers (``write_submission``).

``find_prize_file`` finds either file in every form of a Netflix source the converter reads: a folder holding
``training_set/`` (or ``training_set.tar``) with the file beside it, the ``training_set/`` folder (the file in
its parent), the distribution archive ``nf_prize_dataset.tar.gz`` (member ``download/<name>``, streamed,
never extracted), the Kaggle folder or its zip archive (member streamed), or the file itself. Files are read
in chunks of lines, so qualifying's 2.8M lines take bounded memory.

``PUBLISHED_RMSE``: the Prize's published numbers (real data, other systems), shown beside a run's probe RMSE.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import re
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, ContextManager, Iterator

import numpy as np

from recsys_core.errors import InputError, RecsysError

log = logging.getLogger("recsys_core")

PROBE = "probe.txt"
QUALIFYING = "qualifying.txt"
PROBE_PAIRS = 1_408_395  # the real probe.txt
QUALIFYING_PAIRS = 2_817_131  # the real qualifying.txt (quiz 1,408,342 + test 1,408,789)
LINES_PER_CHUNK = 1 << 20  # qualifying lines parsed, predicted and written per round (bounded memory)
_READ_BYTES = 1 << 22
_MAX_ID = 2**31 - 1
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile, gzip.BadGzipFile)
_QUALIFYING_LINE = re.compile(rb"\s*(\d{1,10})\s*,\s*(\d{4})-(\d{1,2})-(\d{1,2})\s*")

# The Prize's published RMSE (real Netflix data, other systems): what a probe RMSE is read against.
PUBLISHED_RMSE = (
    ("Cinematch (Netflix's own system)", "quiz", 0.9514),
    ("Cinematch (Netflix's own system)", "test", 0.9525),
    ("a movie's mean rating", "quiz", 1.0540),
    ("Grand Prize threshold (10% below Cinematch)", "test", 0.8572),
    ("BellKor's Pragmatic Chaos (the winner)", "test", 0.8567),
)


@dataclass(frozen=True)
class PrizeFile:
    """One of the Prize's side files inside a source."""

    label: str  # how messages name it: its path, or "ARCHIVE member NAME"
    name: str  # its name inside the source (probe.txt, download/probe.txt)
    holder: Path  # the file on disk that holds it (itself or the archive): what a cache key hashes
    open: Callable[[], ContextManager[IO[bytes]]]


def _plain(path: Path, name: str) -> PrizeFile:
    return PrizeFile(str(path), name, path, lambda: open(path, "rb"))


@contextlib.contextmanager
def _tar_gz_member(path: Path, member_name: str) -> Iterator[IO[bytes]]:
    """The member of a .tar.gz as a stream (the archive is read up to it; nothing is extracted)."""
    with gzip.GzipFile(path, "rb") as compressed, tarfile.open(fileobj=compressed, mode="r|") as archive:
        for member in archive:
            if member.name == member_name:
                stream = archive.extractfile(member)
                if stream is None:  # found by _tar_gz_find, a regular file: extractfile gives None for others
                    raise InputError(path, f"member {member_name} is not a regular file")
                yield stream
                return
    raise InputError(path, f"holds no member {member_name}")


def _tar_gz_find(path: Path, base: str) -> str | None:
    """The name of the first regular member whose base name is ``base`` (streams the archive's headers)."""
    try:
        with gzip.GzipFile(path, "rb") as compressed, tarfile.open(fileobj=compressed, mode="r|") as archive:
            for member in archive:
                if member.isfile() and member.name.rsplit("/", 1)[-1] == base:
                    return member.name
    except _ARCHIVE_ERRORS as err:
        raise InputError(path, f"is truncated or corrupt ({err})") from None
    return None


def _zip_find(path: Path, base: str) -> PrizeFile | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == base]
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(path, f"is not a readable zip archive ({err})") from None
    if not names:
        return None

    @contextlib.contextmanager
    def opener():
        with zipfile.ZipFile(path) as archive, archive.open(names[0]) as member:
            yield member

    return PrizeFile(f"{path} member {names[0]}", names[0], path, opener)


def find_prize_file(source: str | Path, base: str) -> PrizeFile | None:
    """``base`` (probe.txt or qualifying.txt) of a Netflix source in any layout, or None where it has none."""
    source = Path(source)
    if source.is_file():
        name = source.name.lower()
        if source.name == base:
            return _plain(source, base)
        if name.endswith((".tar.gz", ".tgz")):
            member = _tar_gz_find(source, base)
            if member is None:
                return None

            def opener(source=source, member=member):
                return _tar_gz_member(source, member)

            return PrizeFile(f"{source} member {member}", member, source, opener)
        if name.endswith(".zip"):
            return _zip_find(source, base)
        if name.endswith(".tar"):  # training_set.tar: the file lies beside it
            beside = source.parent / base
            return _plain(beside, base) if beside.is_file() else None
        return None
    if source.is_dir():
        for folder in (source, source.parent if source.name == "training_set" else None):
            if folder is not None and (folder / base).is_file():
                return _plain(folder / base, base)
    return None


def require_prize_file(source: str | Path | None, base: str, what: str) -> PrizeFile:
    """``find_prize_file`` or one sentence saying that ``source`` has no such file (``what``: who needs it)."""
    if source is None:
        raise RecsysError(f"{what} needs the Netflix Prize source that holds {base} (a folder with training_set/, "
                          "nf_prize_dataset.tar.gz, the Kaggle folder or zip, or the file itself): give --source")
    if not Path(source).exists():
        raise RecsysError(f"{source} does not exist ({what} reads {base} from it)")
    found = find_prize_file(source, base)
    if found is None:
        raise RecsysError(f"{source} holds no {base} ({what} needs it): give the Netflix Prize source as "
                          "distributed (nf_prize_dataset.tar.gz or its download/ folder) or Kaggle's folder or zip")
    return found


# ----------------------------------------------------------------------------------------------
# Reading: <movie>: blocks, in chunks of lines.


@dataclass
class Chunk:
    """Consecutive data lines of a probe or qualifying file (headers are not lines here)."""

    movies: np.ndarray  # int64 movie id of each line
    customers: np.ndarray  # int64 customer id of each line
    lines: np.ndarray  # int64 line number of each line in the file (1-based)


def _blocks(stream: IO[bytes], label: str) -> Iterator[bytes]:
    """The stream in blocks of ~4 MB cut after a line end (the last block gets one if it lacks it)."""
    rest = b""
    try:
        while True:
            block = stream.read(_READ_BYTES)
            if not block:
                break
            data = rest + block
            cut = data.rfind(b"\n") + 1
            if cut:
                yield data[:cut]
            rest = data[cut:]
    except _ARCHIVE_ERRORS as err:
        raise InputError(label, f"could not be read to its end: the file or its archive is truncated or corrupt "
                                f"({err})") from None
    if rest:
        yield rest + b"\n"


@dataclass
class _State:
    """What parsing carries from one block to the next."""

    movie: int | None = None  # the movie of the block being read
    line: int = 0  # lines read so far
    seen_movies: dict[int, int] = field(default_factory=dict)  # movie id -> line of its header


def _parse_int(arr: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray | None:
    """The values of the ASCII digit fields ``arr[starts:ends]`` (1..10 digits), or None if one is not."""
    width = ends - starts
    if len(width) and (width.min() < 1 or width.max() > 10):
        return None
    value = np.zeros(len(starts), np.int64)
    last = len(arr) - 1
    for k in range(int(width.max()) if len(width) else 0):
        take = k < width
        digit = arr[np.minimum(starts + k, last)].astype(np.int64) - 48
        if ((digit < 0) | (digit > 9))[take].any():
            return None
        value = np.where(take, value * 10 + digit, value)
    if len(value) and (value.min() < 1 or value.max() > _MAX_ID):
        return None
    return value


_DATE_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9])


def _parse_fast(data: bytes, state: _State, qualifying: bool) -> tuple[np.ndarray, ...] | None:
    """(movies, customers, line numbers) of a block of well-formed lines (the real files' exact format:
    no blank lines, no spaces), vectorised; None if any line is otherwise (the line-by-line parser then
    reads the block and names the problem, or accepts what is merely unusual)."""
    arr = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(arr == 10)
    starts = np.concatenate([[0], ends[:-1] + 1])
    ends = ends - (arr[np.maximum(ends - 1, 0)] == 13)  # a CR before the LF
    if len(starts) == 0 or (ends <= starts).any():
        return None
    header = arr[ends - 1] == ord(":")
    head_at = np.flatnonzero(header)
    head_values = _parse_int(arr, starts[head_at], ends[head_at] - 1)
    if head_values is None:
        return None
    rows = np.flatnonzero(~header)
    if len(rows) and (state.movie is None and (len(head_at) == 0 or rows[0] < head_at[0])):
        return None  # data before the first header
    line_starts, line_ends = starts[rows], ends[rows]
    if qualifying:
        commas = np.flatnonzero(arr == ord(","))
        at = np.searchsorted(commas, line_starts)
        if len(rows) and (at.max() >= len(commas)):
            return None
        comma = commas[np.minimum(at, max(len(commas) - 1, 0))] if len(commas) else line_ends
        if (line_ends - comma != 11).any():
            return None
        date = arr[comma[:, None] + 1 + np.arange(10)] if len(rows) else np.zeros((0, 10), np.uint8)
        digits = date[:, _DATE_DIGITS]
        if ((digits < 48) | (digits > 57)).any() or (date[:, [4, 7]] != ord("-")).any():
            return None
        customers = _parse_int(arr, line_starts, comma)
    else:
        customers = _parse_int(arr, line_starts, line_ends)
    if customers is None:
        return None
    seen = state.seen_movies
    for index, movie in zip(head_at.tolist(), head_values.tolist()):
        if movie in seen:
            return None
        seen[movie] = state.line + index + 1
    # the movie of each data line: the last header before it (or the one carried from the previous block)
    which = np.searchsorted(head_at, rows) - 1
    carried = -1 if state.movie is None else state.movie
    movies = np.where(which >= 0, head_values[np.maximum(which, 0)] if len(head_values) else carried, carried)
    numbers = state.line + rows + 1
    if len(head_values):
        state.movie = int(head_values[-1])
    state.line += len(starts)
    return movies.astype(np.int64), customers, numbers.astype(np.int64)


def _parse_slow(data: bytes, state: _State, qualifying: bool, label: str, name: str) -> tuple[np.ndarray, ...]:
    """The line-by-line parser: accepts blank lines and spaces; names the file, line and problem otherwise."""
    expected = "'customer_id,YYYY-MM-DD'" if qualifying else "a customer id"
    movies: list[int] = []
    customers: list[int] = []
    numbers: list[int] = []
    for line in data.split(b"\n")[:-1]:
        state.line += 1
        number = state.line
        line = line.rstrip(b"\r")
        text = line.strip()
        if not text:
            continue
        if text.endswith(b":"):
            head = text[:-1].strip()
            if not head.isdigit() or not 0 < int(head) <= _MAX_ID:
                raise InputError(label, f"the movie id of {_shown(line)} is not a positive 32-bit integer", number)
            movie = int(head)
            if movie in state.seen_movies:
                raise InputError(label, f"movie {movie} has a second block (the first starts on line "
                                        f"{state.seen_movies[movie]})", number)
            state.seen_movies[movie] = number
            state.movie = movie
            continue
        if state.movie is None:
            raise InputError(label, f"the first line must be '<movie id>:' but is {_shown(line)}", number)
        if qualifying:
            match = _QUALIFYING_LINE.fullmatch(text)
            customer = int(match.group(1)) if match else None
        else:
            customer = int(text) if text.isdigit() else None
        if customer is None or not 0 < customer <= _MAX_ID:
            raise InputError(label, f"expected {expected} under movie {state.movie} but found {_shown(line)}", number)
        movies.append(state.movie)
        customers.append(customer)
        numbers.append(number)
    return np.array(movies, np.int64), np.array(customers, np.int64), np.array(numbers, np.int64)


def read_chunks(prize_file: PrizeFile, qualifying: bool, lines_per_chunk: int = LINES_PER_CHUNK) -> Iterator[Chunk]:
    """The data lines of probe.txt (``customer_id``) or qualifying.txt (``customer_id,YYYY-MM-DD``) under their
    ``<movie id>:`` headers, checked (one sentence with the file and line for a bad one), in chunks of at most
    ``lines_per_chunk`` lines. Blocks of the files' exact format are parsed with vectorised numpy (2.8M lines
    in ~1 s instead of ~10 s line by line); any other block line by line."""
    label = prize_file.label
    state = _State(seen_movies={})
    with prize_file.open() as stream:
        for data in _blocks(stream, label):
            before = _State(state.movie, state.line, dict(state.seen_movies))
            parsed = _parse_fast(data, state, qualifying)
            if parsed is None:
                state = before
                parsed = _parse_slow(data, state, qualifying, label, prize_file.name)
            movies, customers, numbers = parsed
            for a in range(0, len(numbers), lines_per_chunk):
                yield Chunk(movies[a:a + lines_per_chunk], customers[a:a + lines_per_chunk],
                            numbers[a:a + lines_per_chunk])
    if not state.seen_movies:
        raise InputError(label, f"holds no '<movie id>:' block; expected the Netflix Prize's {prize_file.name}")


def _shown(line: bytes) -> str:
    return repr(line[:60].decode("latin-1"))


def pair_keys(movies: np.ndarray, customers: np.ndarray) -> np.ndarray:
    """One int64 per (movie, customer): movie-major, as the rating files are ordered."""
    return (np.asarray(movies, np.int64) << 32) | np.asarray(customers, np.int64)


@dataclass(frozen=True)
class ProbePairs:
    keys: np.ndarray  # sorted pair_keys of probe.txt
    lines: np.ndarray  # the line of each key in the file
    label: str
    name: str


def read_probe(prize_file: PrizeFile) -> ProbePairs:
    """Every (movie, customer) pair of probe.txt, sorted, with its line; a pair listed twice is refused."""
    chunks = list(read_chunks(prize_file, qualifying=False))
    keys = np.concatenate([pair_keys(c.movies, c.customers) for c in chunks] + [np.zeros(0, np.int64)])
    lines = np.concatenate([c.lines for c in chunks] + [np.zeros(0, np.int64)])
    order = np.argsort(keys, kind="stable")
    keys, lines = keys[order], lines[order]
    twice = np.flatnonzero(keys[1:] == keys[:-1])
    if len(twice):
        first = int(np.argmin(lines[twice + 1]))
        at = twice[first]
        raise InputError(prize_file.label, f"customer {int(keys[at] & 0xFFFFFFFF)} of movie {int(keys[at] >> 32)} is "
                                           f"listed again (first on line {int(lines[at])})", int(lines[at + 1]))
    return ProbePairs(keys, lines, prize_file.label, prize_file.name)


# ----------------------------------------------------------------------------------------------
# Submissions


def format_ratings(values: np.ndarray) -> np.ndarray:
    """``d.dddd\\n`` records (7 bytes each, values already within 1..5), built without a Python loop."""
    scaled = np.rint(np.asarray(values, np.float64) * 10_000).astype(np.int64)
    out = np.empty((len(scaled), 7), np.uint8)
    out[:, 0] = 48 + scaled // 10_000
    out[:, 1] = ord(".")
    for place, divisor in enumerate((1000, 100, 10, 1), start=2):
        out[:, place] = 48 + (scaled // divisor) % 10
    out[:, 6] = ord("\n")
    return out


def submission_pieces(chunk: Chunk, previous_movie: int | None, records: np.ndarray) -> tuple[list[bytes], int | None]:
    """The bytes of a chunk's part of a submission: a ``<movie>:`` header wherever the movie changes (also
    across chunks: ``previous_movie``), then the records of its lines. Returns (pieces, last movie)."""
    if len(chunk.movies) == 0:
        return [], previous_movie
    starts = np.flatnonzero(np.diff(chunk.movies, prepend=-1 if previous_movie is None else previous_movie))
    bounds = np.append(starts, len(chunk.movies))
    flat = records.reshape(-1)
    pieces = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        pieces.append(f"{int(chunk.movies[a])}:\n".encode())
        pieces.append(flat[a * 7:b * 7].tobytes())
    if len(starts) == 0 or starts[0] != 0:  # the chunk continues the previous movie's block
        head = starts[0] if len(starts) else len(chunk.movies)
        pieces.insert(0, flat[:head * 7].tobytes())
    return pieces, int(chunk.movies[-1])


@dataclass(frozen=True)
class SubmissionScore:
    rmse: float
    quiz_rmse: float | None
    test_rmse: float | None
    n: int


def score_submission(predictions: str | Path, truth: str | Path) -> SubmissionScore:
    """RMSE of a submission against the generator's hidden qualifying ratings (``qualifying_truth.txt``: the
    same headers, one ``rating,quiz|test`` line per qualifying line); both read line by line in step."""
    sums = {"quiz": [0.0, 0], "test": [0.0, 0]}
    with open(predictions, "rb") as left, open(truth, "rb") as right:
        left_lines, right_lines = _all_lines(left), _all_lines(right)
        number = 0
        while True:
            got, want = next(left_lines), next(right_lines)
            if got is None and want is None:
                break
            number += 1
            if got is None or want is None:
                raise InputError(predictions, "ends early" if got is None else "holds more lines than qualifying.txt",
                                 number)
            if want.endswith(b":"):
                if got.strip() != want:
                    raise InputError(predictions, f"expected the header {want.decode()!r} of qualifying.txt "
                                                  f"but found {_shown(got)}", number)
                continue
            rating, _, part = want.partition(b",")
            try:
                value = float(got)
            except ValueError:
                raise InputError(predictions, f"expected a predicted rating but found {_shown(got)}",
                                 number) from None
            error = value - float(rating)
            entry = sums[part.decode().strip()]
            entry[0] += error * error
            entry[1] += 1
    n = sums["quiz"][1] + sums["test"][1]
    if n == 0:
        raise InputError(truth, "holds no rating")

    def root(total: float, count: int) -> float:
        return float(np.sqrt(total / count))

    quiz, test = sums["quiz"], sums["test"]
    return SubmissionScore(root(quiz[0] + test[0], n), root(*quiz) if quiz[1] else None,
                           root(*test) if test[1] else None, n)


def _all_lines(stream: IO[bytes]) -> Iterator[bytes | None]:
    """Lines without their ends, then None forever (so that ``zip`` notices the shorter file)."""
    for line in stream:
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield line
    while True:
        yield None


# ----------------------------------------------------------------------------------------------
# The Prize's numbers beside a run's


def probe_holder(source: str | Path) -> Path | None:
    """The file on disk whose content holds ``source``'s probe.txt (the file, or its archive), found without
    reading archives (a cache key hashes it); None where there is plainly none."""
    source = Path(source)
    if source.is_file():
        if source.name.endswith(".tar") and not source.name.endswith(".tar.gz"):
            beside = source.parent / PROBE
            return beside if beside.is_file() else None
        return source
    for folder in (source, source.parent if source.name == "training_set" else None):
        if folder is not None and (folder / PROBE).is_file():
            return folder / PROBE
    return None


def is_generated(source: str | Path) -> bool:
    """Whether a source was written by the project's generator (its synth.json lies in or beside it)."""
    source = Path(source)
    folders = [source, source.parent] if source.is_dir() else [source.parent]
    if source.name == "training_set":
        folders.append(source.parent)
    return any((folder / "synth.json").is_file() for folder in folders)


GENERATED_NOTE = ("the run's data are GENERATED (recsys_core.synth): its probe RMSE is NOT comparable with the "
                  "Prize's numbers, which are quiz/test RMSE on the real Netflix data")
REAL_NOTE = ("the Prize's numbers are quiz/test RMSE of other systems on the real data; probe, quiz and test were "
             "drawn alike, so a probe RMSE is read against them, though a submission trained with probe included "
             "usually scores a little better on quiz")


def comparison_rows(runs: list[dict], generated: bool) -> list[dict]:
    """The run's probe RMSE (``runs``: {"model", "rmse", "n"} per model and baseline) beside the Prize's
    published RMSE, each row labelled with its data, set and who made it."""
    data = "this run: generated" if generated else "this run"
    rows = [{"system": run["model"], "data": data, "set": f"probe ({run.get('n')} ratings in test)",
             "rmse": round(float(run["rmse"]), 4)} for run in runs if isinstance(run.get("rmse"), (int, float))]
    rows += [{"system": name, "data": "real Netflix (published)", "set": part, "rmse": value}
             for name, part, value in PUBLISHED_RMSE]
    return rows
