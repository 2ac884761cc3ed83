"""Stage 1 (convert): Netflix in its four input forms and MovieLens 100K / 1M / csv, row for row,
plus every kind of bad input (message names file, line and problem; old output left intact)."""

from __future__ import annotations

import datetime as dt
import errno
import gzip
import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recsys_core import io as io_module
from recsys_core.cli import main
from recsys_core.convert import convert
from recsys_core.errors import InputError, RecsysError
from recsys_core.schema import ITEMS_SCHEMA, RATINGS_SCHEMA

# ------------------------------------------------------------------------------------------------
# Netflix fixtures

RATINGS = {
    1: [(1488844, 3, "2005-09-06"), (822109, 5, "2005-05-13"), (885013, 4, "2005-10-19")],
    2: [(2059652, 4, "2005-09-05"), (1488844, 1, "1999-11-11")],
    3: [],  # header only: a valid movie without ratings
    10: [(7, 2, "2004-02-29"), (2649429, 5, "2005-12-31")],
}
TITLES = (
    "1,2003,Dinosaur Planet\n"
    "2,NULL,Isle of Man TT 2004 Review\n"
    "3,1997,Character, with, commas\n"
    "10,2001,Amélie\n"
    "11,1999,Never Rated\n"
).encode("latin-1")


def movie_text(movie_id: int, rows) -> bytes:
    return (f"{movie_id}:\n" + "".join(f"{u},{r},{d}\n" for u, r, d in rows)).encode()


def write_netflix(root: Path, ratings=RATINGS, titles: bytes = TITLES, overrides: dict[str, bytes] | None = None
                  ) -> Path:
    """A Netflix folder: training_set/mv_NNNNNNN.txt + movie_titles.txt; ``overrides`` replaces
    (or adds) files of training_set/ by name with raw bytes."""
    folder = root / "training_set"
    folder.mkdir(parents=True)
    files = {f"mv_{m:07d}.txt": movie_text(m, rows) for m, rows in ratings.items()}
    files.update(overrides or {})
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (root / "movie_titles.txt").write_bytes(titles)
    return root


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def training_members(netflix_root: Path) -> dict[str, bytes]:
    return {f"training_set/{p.name}": p.read_bytes() for p in sorted((netflix_root / "training_set").iterdir())}


def write_tar(netflix_root: Path, dest_dir: Path, extra: dict[str, bytes] | None = None) -> Path:
    """training_set.tar with the titles beside it, as on the real distribution."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    tar_path = dest_dir / "training_set.tar"
    tar_path.write_bytes(tar_bytes({**training_members(netflix_root), **(extra or {})}))
    (dest_dir / "movie_titles.txt").write_bytes((netflix_root / "movie_titles.txt").read_bytes())
    return tar_path


def write_tar_gz(netflix_root: Path, dest: Path, titles_first: bool = True) -> Path:
    """nf_prize_dataset.tar.gz holding download/{training_set.tar, movie_titles.txt, probe, ...}."""
    inner = tar_bytes(training_members(netflix_root))
    titles = {"download/movie_titles.txt": (netflix_root / "movie_titles.txt").read_bytes()}
    members = {"download/README": b"readme\n", **(titles if titles_first else {}),
               "download/training_set.tar": inner, "download/probe.txt": b"1:\n30878\n",
               "download/qualifying.txt": b"1:\n1046323,2005-12-19\n", **({} if titles_first else titles)}
    dest.write_bytes(gzip.compress(tar_bytes(members)))
    return dest


def read_rows(out: Path) -> list[tuple]:
    # Parquet has no second unit: the timestamps are stored as milliseconds, read back as RATINGS_SCHEMA.
    stored = pq.read_schema(out / "ratings.parquet")
    assert stored.names == RATINGS_SCHEMA.names and stored.field("timestamp").type.tz == "UTC"
    table = pq.read_table(out / "ratings.parquet", schema=RATINGS_SCHEMA)
    return list(zip(*(table.column(name).to_pylist() for name in table.column_names)))


def expected_netflix_rows(ratings=RATINGS) -> list[tuple]:
    return [(u, m, float(r), dt.datetime.fromisoformat(d).replace(tzinfo=dt.timezone.utc))
            for m, rows in sorted(ratings.items()) for u, r, d in rows]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------------------------
# Netflix: good input


def test_netflix_folder_row_for_row(tmp_path):
    src = write_netflix(tmp_path / "nf")
    meta = convert(src, tmp_path / "out")
    assert read_rows(tmp_path / "out") == expected_netflix_rows()
    assert meta == {
        "schema_version": 1, "source": "netflix", "ratings": 7, "users": 6, "items": 3, "catalog_items": 5,
        "first_date": "1999-11-11", "last_date": "2005-12-31", "rating_min": 1.0, "rating_max": 5.0,
        "rating_step": 1.0,
    }
    items = pq.read_table(tmp_path / "out" / "items.parquet")
    assert items.schema.equals(ITEMS_SCHEMA)
    assert items.to_pylist() == [
        {"item_id": 1, "title": "Dinosaur Planet", "year": 2003, "genres": None},
        {"item_id": 2, "title": "Isle of Man TT 2004 Review", "year": None, "genres": None},
        {"item_id": 3, "title": "Character, with, commas", "year": 1997, "genres": None},
        {"item_id": 10, "title": "Amélie", "year": 2001, "genres": None},
        {"item_id": 11, "title": "Never Rated", "year": 1999, "genres": None},
    ]
    from recsys_core.io import read_json
    assert read_json(tmp_path / "out" / "meta.json") == meta


def test_netflix_input_forms_give_identical_output(tmp_path):
    root = write_netflix(tmp_path / "nf")
    tar = write_tar(root, tmp_path / "tar")
    forms = {
        "folder": root,
        "training_set": root / "training_set",
        "tar": tar,
        "folder with tar": tar.parent,
        "tar.gz": write_tar_gz(root, tmp_path / "nf_prize_dataset.tar.gz"),
        "tar.gz titles last": write_tar_gz(root, tmp_path / "titles_last.tar.gz", titles_first=False),
    }
    outputs = {}
    for name, src in forms.items():
        out = tmp_path / f"out-{name.replace(' ', '_')}"
        meta = convert(src, out)
        outputs[name] = (read_rows(out), pq.read_table(out / "items.parquet").to_pylist(), meta)
    reference = outputs["folder"]
    assert reference[0] == expected_netflix_rows()
    for name, output in outputs.items():
        assert output == reference, name


def test_netflix_many_small_batches_equal_one_batch(tmp_path):
    ratings = {m: [(u * 7 + m, 1 + (u + m) % 5, f"2005-0{1 + u % 9}-1{m % 10}") for u in range(1, 40 + m)]
               for m in range(1, 30)}
    src = write_netflix(tmp_path / "nf", ratings=ratings, titles=b"".join(f"{m},2000,T{m}\n".encode()
                                                                             for m in ratings))
    convert(src, tmp_path / "one")
    convert(src, tmp_path / "many", batch_mb=0.001)  # ~1 KB: every file is a batch of its own
    assert read_rows(tmp_path / "many") == read_rows(tmp_path / "one") == expected_netflix_rows(ratings)
    assert pq.ParquetFile(tmp_path / "many" / "ratings.parquet").metadata.num_row_groups == 29


def test_netflix_header_only_files_and_missing_final_newline(tmp_path):
    src = write_netflix(tmp_path / "nf", ratings={1: [(5, 3, "2005-01-01")]}, titles=b"1,2000,A\n2,2000,B\n3,2000,C",
                        overrides={"mv_0000001.txt": b"1:\n5,3,2005-01-01",  # no final line end
                                   "mv_0000002.txt": b"2:\n", "mv_0000003.txt": b"3:"})
    meta = convert(src, tmp_path / "out")
    assert read_rows(tmp_path / "out") == expected_netflix_rows({1: [(5, 3, "2005-01-01")]})
    assert (meta["ratings"], meta["items"], meta["catalog_items"]) == (1, 1, 3)


def test_netflix_bom_crlf_and_blank_lines_at_the_end_are_accepted(tmp_path, caplog):
    """What editors leave: a UTF-8 byte-order mark, CRLF line ends, blank lines at the end of a file."""
    bom = b"\xef\xbb\xbf"
    src = write_netflix(tmp_path / "nf", overrides={
        "mv_0000001.txt": bom + movie_text(1, RATINGS[1]) + b"\n\n",
        "mv_0000002.txt": movie_text(2, RATINGS[2]).replace(b"\n", b"\r\n") + b"\r\n  \r\n",
        "mv_0000003.txt": b"3:\n\n\n",  # header, then only blank lines: a movie without ratings
        "mv_0000010.txt": movie_text(10, RATINGS[10]) + b" \t\n\n ",
    }, titles=bom + TITLES.replace("Amélie".encode("latin-1"), "Amélie".encode()) + b"\n\r\n \n")
    meta = convert(src, tmp_path / "out")
    assert read_rows(tmp_path / "out") == expected_netflix_rows()
    items = pq.read_table(tmp_path / "out" / "items.parquet").to_pylist()
    assert items[0]["title"] == "Dinosaur Planet" and items[3]["title"] == "Amélie"
    assert (meta["ratings"], meta["catalog_items"]) == (7, 5)
    assert "is UTF-8, not ISO-8859-1" in caplog.text  # the titles held 'é' as UTF-8


def test_netflix_titles_saved_as_utf8_are_decoded_right_with_a_warning(tmp_path, caplog):
    titles = "1,2003,Amélie\n2,2004,Les Misérables, the musical\n10,2001,Smörgåsbord ½\n".encode()
    src = write_netflix(tmp_path / "nf", titles=titles)
    convert(src, tmp_path / "out")
    names = [row["title"] for row in pq.read_table(tmp_path / "out" / "items.parquet").to_pylist()]
    assert names[:3] == ["Amélie", "Les Misérables, the musical", "Smörgåsbord ½"]  # not 'AmÃ©lie'
    assert "movie_titles.txt is UTF-8, not ISO-8859-1 as the format says: decoded as UTF-8" in caplog.text
    caplog.clear()
    convert(write_netflix(tmp_path / "latin", titles=titles.decode().encode("latin-1")), tmp_path / "out2")
    assert [row["title"] for row in pq.read_table(tmp_path / "out2" / "items.parquet").to_pylist()][:3] == names[:3]
    assert "UTF-8" not in caplog.text  # real ISO-8859-1 is read as such, silently


def test_netflix_without_any_rating_is_valid(tmp_path):
    src = write_netflix(tmp_path / "nf", ratings={1: []}, titles=b"1,NULL,Only\n")
    meta = convert(src, tmp_path / "out")
    assert (meta["ratings"], meta["users"], meta["first_date"]) == (0, 0, None)
    assert read_rows(tmp_path / "out") == []


def test_rated_movie_missing_from_titles_is_catalogued_untitled(tmp_path):
    src = write_netflix(tmp_path / "nf", ratings={1: [(5, 3, "2005-01-01")], 4: [(5, 2, "2005-01-02")]},
                        titles=b"1,2000,A\n")
    convert(src, tmp_path / "out")
    items = pq.read_table(tmp_path / "out" / "items.parquet").to_pylist()
    assert items == [{"item_id": 1, "title": "A", "year": 2000, "genres": None},
                     {"item_id": 4, "title": None, "year": None, "genres": None}]


# ------------------------------------------------------------------------------------------------
# Netflix: bad input. Each case: (file name that must appear, line, words of the problem).

BAD_MOVIE_FILES = {
    "unparsable line": ("mv_0000002.txt", b"2:\n1,3,2005-01-01\nhello world\n", 3, "cannot parse 'hello world'"),
    "missing field": ("mv_0000002.txt", b"2:\n1,3\n", 2, "cannot parse '1,3'"),
    "empty line": ("mv_0000002.txt", b"2:\n1,3,2005-01-01\n\n4,3,2005-01-01\n", 3, "cannot parse ''"),
    "rating 6": ("mv_0000002.txt", b"2:\n1,3,2005-01-01\n2,6,2005-01-01\n", 3, "rating 6 is outside"),
    "rating 0": ("mv_0000002.txt", b"2:\n1,0,2005-01-01\n", 2, "rating 0 is outside"),
    "half star": ("mv_0000002.txt", b"2:\n1,3.5,2005-01-01\n", 2, "cannot parse"),
    "february 30": ("mv_0000002.txt", b"2:\n1,3,2005-01-01\n2,4,2005-02-30\n", 3, "impossible date 2005-02-30"),
    "month 13": ("mv_0000002.txt", b"2:\n1,3,2005-13-01\n", 2, "impossible date 2005-13-01"),
    "bad header": ("mv_0000002.txt", b"movie two\n1,3,2005-01-01\n", 1, "first line must be '<movie id>:'"),
    "header id differs": ("mv_0000002.txt", b"7:\n1,3,2005-01-01\n", 1,
                          "names movie 7 but the file name says movie 2"),
    "empty file": ("mv_0000002.txt", b"", 1, "is empty"),
    "duplicate": ("mv_0000002.txt", b"2:\n1,3,2005-01-01\n9,4,2005-01-02\n1,5,2005-01-03\n", 4,
                  "customer 1 rated this movie already on line 2"),
    "negative customer": ("mv_0000002.txt", b"2:\n-1,3,2005-01-01\n", 2, "customer id -1 is not a positive"),
    "year 1": ("mv_0000002.txt", b"2:\n1,3,2005-01-01\n2,3,0001-01-01\n", 3,
               "the date 0001-01-01 lies outside the accepted period 1970-01-01..2099-12-31"),
    "year 9999": ("mv_0000002.txt", b"2:\n1,3,9999-12-31\n", 2, "the date 9999-12-31 lies outside the accepted period"),
    "blank line then a rating": ("mv_0000002.txt", b"2:\n1,3,2005-01-01\n \n4,3,2005-01-01\n", 3, "cannot parse ' '"),
}


@pytest.fixture
def previous_output(tmp_path):
    """A valid conversion already in place: bad input must leave it byte for byte."""
    out = tmp_path / "out"
    convert(write_netflix(tmp_path / "good"), out)
    return out, snapshot(out)


def assert_refused(src, out, before, file_name, line, problem, **options):
    with pytest.raises(InputError) as caught:
        convert(src, out, **options)
    message = str(caught.value)
    assert file_name in message and problem in message, message
    if line is not None:
        assert f", line {line}:" in message, message
    assert snapshot(out) == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".out")] == []  # no temp left


@pytest.mark.parametrize("case", sorted(BAD_MOVIE_FILES))
@pytest.mark.parametrize("form", ["folder", "tar"])
def test_netflix_bad_rating_file_is_refused(tmp_path, previous_output, case, form):
    name, data, line, problem = BAD_MOVIE_FILES[case]
    src = write_netflix(tmp_path / "bad", overrides={name: data})
    if form == "tar":
        src = write_tar(src, tmp_path / "bad-tar")
    assert_refused(src, *previous_output, name, line, problem)


def test_netflix_error_in_a_later_batch_is_located(tmp_path, previous_output):
    ratings = {m: [(u, 3, "2005-01-01") for u in range(1, 50)] for m in range(1, 20)}
    ratings[17][30] = (5, 4, "2005-01-02")  # customer 5 again
    src = write_netflix(tmp_path / "bad", ratings=ratings)
    assert_refused(src, *previous_output, "mv_0000017.txt", 32, "customer 5 rated this movie already on line 6",
                   batch_mb=0.002)


def test_same_customer_on_different_movies_is_fine(tmp_path):
    src = write_netflix(tmp_path / "nf", ratings={1: [(5, 3, "2005-01-01")], 2: [(5, 3, "2005-01-01")]},
                        titles=b"1,2000,A\n2,2000,B\n")
    assert convert(src, tmp_path / "out")["ratings"] == 2


BAD_TITLES = {
    "too few fields": (b"1,2003,Dinosaur Planet\n2,NULL\n", 2, "expected 'id,year,title' (3 fields) but found 2"),
    "control byte": (b"1,2003,Dino\x00saur\n", 1, "control byte 0x00"),
    "bad year": (b"1,20x3,Dinosaur\n", 1, "the year '20x3'"),
    "bad id": (b"one,2003,Dinosaur\n", 1, "the movie id 'one' is not a positive 32-bit integer"),
    # 0xB2 is '²' in ISO-8859-1: str.isdigit() says yes, int() says no (it was a traceback)
    "0xB2 in the id": (b"1,2003,A\n\xb2,2004,B\n", 2, "the movie id '\xb2' is not a positive 32-bit integer"),
    "0xB2 in the year": (b"1,2003,A\n2,200\xb2,B\n", 2, "the year '200\xb2' is neither a 4-digit year nor NULL"),
    "blank line then a title": (b"1,2003,A\n\n2,2004,B\n", 2, "expected 'id,year,title' (3 fields) but found 1"),
    "repeated id": (b"1,2003,A\n1,2004,B\n", 2, "movie 1 is listed again (first on line 1)"),
}


@pytest.mark.parametrize("case", sorted(BAD_TITLES))
def test_netflix_bad_titles_are_refused(tmp_path, previous_output, case):
    titles, line, problem = BAD_TITLES[case]
    src = write_netflix(tmp_path / "bad", titles=titles)
    assert_refused(src, *previous_output, "movie_titles.txt", line, problem)


def test_netflix_missing_titles_is_refused(tmp_path, previous_output):
    src = write_netflix(tmp_path / "bad")
    (src / "movie_titles.txt").unlink()
    assert_refused(src, *previous_output, "movie_titles.txt", None, "is missing")


def test_truncated_tar_is_refused(tmp_path, previous_output):
    tar = write_tar(write_netflix(tmp_path / "nf"), tmp_path / "t")
    data = tar.read_bytes()
    member_end = 512 + 512  # first member: header + one block of data
    for cut in (700, member_end, len(data) - 10240 + 100):  # inside data, at a member boundary, mid-header
        tar.write_bytes(data[:cut])
        assert_refused(tar, *previous_output, "training_set.tar", None, "truncated")


def test_truncated_tar_gz_is_refused(tmp_path, previous_output):
    archive = write_tar_gz(write_netflix(tmp_path / "nf"), tmp_path / "nf_prize_dataset.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) * 2 // 3])
    assert_refused(archive, *previous_output, "nf_prize_dataset.tar.gz", None, "truncated")


@pytest.mark.parametrize("damage", ["crc", "length", "both"])
@pytest.mark.parametrize("read_size", [None, 512])  # 512: the trailer is reached only after the last member
def test_tar_gz_with_a_wrong_gzip_checksum_is_refused(tmp_path, previous_output, damage, read_size, monkeypatch):
    """The gzip trailer (CRC-32 and length of the data, the last 8 bytes) is checked: tarfile alone never
    reads it, so a damaged archive converted without complaint."""
    if read_size:
        monkeypatch.setattr("recsys_core.convert.netflix._STREAM_BUFFER", read_size)
    archive = write_tar_gz(write_netflix(tmp_path / "nf"), tmp_path / "nf_prize_dataset.tar.gz")
    data = bytearray(archive.read_bytes())
    for position in {"crc": range(-8, -4), "length": range(-4, 0), "both": range(-8, 0)}[damage]:
        data[position] ^= 0x5A
    archive.write_bytes(bytes(data))
    assert_refused(archive, *previous_output, "nf_prize_dataset.tar.gz", None,
                   "is corrupt: its gzip checksum (CRC-32 and length) does not match its content")


@pytest.mark.parametrize("bad_name", ["../evil.txt", "/etc/evil.txt", "training_set/../../mv_0000009.txt"])
def test_tar_member_outside_root_is_refused(tmp_path, previous_output, bad_name):
    tar = write_tar(write_netflix(tmp_path / "nf"), tmp_path / "t", extra={bad_name: b"9:\n1,1,2005-01-01\n"})
    assert_refused(tar, *previous_output, "training_set.tar", None, "outside the archive root")
    assert not (tmp_path / "evil.txt").exists()


def test_tar_gz_member_outside_root_is_refused(tmp_path, previous_output):
    archive = tmp_path / "nf_prize_dataset.tar.gz"
    archive.write_bytes(gzip.compress(tar_bytes({"download/../../escape.txt": b"x"})))
    assert_refused(archive, *previous_output, "nf_prize_dataset.tar.gz", None, "outside the archive root")


# ------------------------------------------------------------------------------------------------
# MovieLens

ML100K_ITEMS = (
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|0|0|0|1|1|1|0|0|0|0|0"
    "|0|0|0|0|0|0|0|0\n"
    "2|Café, Noir (1998)|||http://x|0|0|0|0|0|0|0|0|0|0|1|0|0|0|0|0|1|0|0\n"
    "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
).encode("latin-1")


def write_ml100k(root: Path, data: bytes = b"196\t1\t3\t881250949\n22\t2\t1\t878887116\n196\t2\t5\t881250950\n",
                 items: bytes = ML100K_ITEMS) -> Path:
    root.mkdir(parents=True)
    (root / "u.data").write_bytes(data)
    (root / "u.item").write_bytes(items)
    return root


def write_ml1m(root: Path, data: bytes = b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
               movies: bytes = "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant "
                               "Peach (1996)::Animation|Children's|Musical\n5::Père: Part II (1995)::Comedy\n"
                               .encode("latin-1")) -> Path:
    root.mkdir(parents=True)
    (root / "ratings.dat").write_bytes(data)
    (root / "movies.dat").write_bytes(movies)
    return root


ML_CSV_MOVIES = ('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n'
                 '11,"American President, The (1995)",Comedy|Drama|Romance\n'
                 '209171,Ça commence aujourd\'hui (1999),(no genres listed)\n'
                 '5,Untitled,(no genres listed)\n').encode()


def write_ml_csv(root: Path, data: bytes = b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,11,0.5,"
                                           b"964981247\n2,209171,5.0,1445714835\n2,1,3.5,1445714836\n",
                 movies: bytes = ML_CSV_MOVIES) -> Path:
    root.mkdir(parents=True)
    (root / "ratings.csv").write_bytes(data)
    (root / "movies.csv").write_bytes(movies)
    return root


def utc(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)


def test_movielens_100k(tmp_path):
    meta = convert(write_ml100k(tmp_path / "ml"), tmp_path / "out")
    assert read_rows(tmp_path / "out") == [(196, 1, 3.0, utc(881250949)), (22, 2, 1.0, utc(878887116)),
                                           (196, 2, 5.0, utc(881250950))]
    assert pq.read_table(tmp_path / "out" / "items.parquet").to_pylist() == [
        {"item_id": 1, "title": "Toy Story (1995)", "year": 1995,
         "genres": ["Animation", "Children's", "Comedy"]},
        {"item_id": 2, "title": "Café, Noir (1998)", "year": 1998, "genres": ["Film-Noir", "Thriller"]},
        {"item_id": 267, "title": "unknown", "year": None, "genres": ["unknown"]},
    ]
    assert (meta["source"], meta["ratings"], meta["users"], meta["items"], meta["catalog_items"]) == \
        ("movielens-100k", 3, 2, 2, 3)
    assert (meta["first_date"], meta["rating_min"], meta["rating_max"], meta["rating_step"]) == \
        ("1997-11-07", 1.0, 5.0, 1.0)


def test_movielens_1m(tmp_path):
    meta = convert(write_ml1m(tmp_path / "ml"), tmp_path / "out")
    assert read_rows(tmp_path / "out") == [(1, 1193, 5.0, utc(978300760)), (1, 661, 3.0, utc(978302109)),
                                           (2, 1193, 4.0, utc(978298413))]
    assert pq.read_table(tmp_path / "out" / "items.parquet").to_pylist() == [
        {"item_id": 5, "title": "Père: Part II (1995)", "year": 1995, "genres": ["Comedy"]},
        {"item_id": 661, "title": "James and the Giant Peach (1996)", "year": 1996,
         "genres": ["Animation", "Children's", "Musical"]},
        {"item_id": 1193, "title": "One Flew Over the Cuckoo's Nest (1975)", "year": 1975, "genres": ["Drama"]},
    ]
    assert (meta["source"], meta["ratings"], meta["users"], meta["items"]) == ("movielens-1m", 3, 2, 2)


def test_movielens_csv(tmp_path):
    meta = convert(write_ml_csv(tmp_path / "ml"), tmp_path / "out")
    assert read_rows(tmp_path / "out") == [(1, 1, 4.0, utc(964982703)), (1, 11, 0.5, utc(964981247)),
                                           (2, 209171, 5.0, utc(1445714835)), (2, 1, 3.5, utc(1445714836))]
    assert pq.read_table(tmp_path / "out" / "items.parquet").to_pylist() == [
        {"item_id": 1, "title": "Toy Story (1995)", "year": 1995,
         "genres": ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]},
        {"item_id": 5, "title": "Untitled", "year": None, "genres": []},
        {"item_id": 11, "title": "American President, The (1995)", "year": 1995,
         "genres": ["Comedy", "Drama", "Romance"]},
        {"item_id": 209171, "title": "Ça commence aujourd'hui (1999)", "year": 1999, "genres": []},
    ]
    assert (meta["source"], meta["rating_min"], meta["rating_max"], meta["rating_step"]) == \
        ("movielens-csv", 0.5, 5.0, 0.5)
    assert (meta["first_date"], meta["last_date"]) == ("2000-07-30", "2015-10-24")


def test_movielens_bom_crlf_and_blank_lines_at_the_end_are_accepted(tmp_path, caplog):
    bom = b"\xef\xbb\xbf"
    reference = {}
    for writer in (write_ml100k, write_ml1m, write_ml_csv):
        reference[writer] = convert(writer(tmp_path / f"plain-{writer.__name__}"), tmp_path / f"ref-{writer.__name__}")
    edited = {
        write_ml100k: dict(data=bom + b"196\t1\t3\t881250949\n22\t2\t1\t878887116\n196\t2\t5\t881250950\n\n \n",
                           items=ML100K_ITEMS + b"\n\n"),
        write_ml1m: dict(data=bom + b"1::1193::5::978300760\r\n1::661::3::978302109\r\n2::1193::4::978298413\r\n\r\n",
                         movies=bom + "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant "
                                      "Peach (1996)::Animation|Children's|Musical\n5::Père: Part II (1995)::Comedy\n\n"
                                      .encode()),
        write_ml_csv: dict(data=bom + b"userId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n1,11,0.5,964981247"
                                      b"\r\n2,209171,5.0,1445714835\r\n2,1,3.5,1445714836\r\n\r\n\r\n",
                           movies=bom + ML_CSV_MOVIES + b"\n\r\n"),
    }
    for writer, files in edited.items():
        out = tmp_path / f"out-{writer.__name__}"
        assert convert(writer(tmp_path / f"edited-{writer.__name__}", **files), out) == reference[writer]
        ref = tmp_path / f"ref-{writer.__name__}"
        assert read_rows(out) == read_rows(ref)
        assert pq.read_table(out / "items.parquet").equals(pq.read_table(ref / "items.parquet"))


BAD_MOVIELENS = {
    "100k rating 6": (write_ml100k, {"data": b"1\t1\t3\t5\n1\t2\t6\t5\n"}, "u.data", 2, "rating 6 is outside"),
    "100k unparsable": (write_ml100k, {"data": b"1\t1\t3\t5\n1 2 3 4\n"}, "u.data", 2, "cannot parse '1 2 3 4'"),
    "100k duplicate": (write_ml100k, {"data": b"1\t1\t3\t5\n1\t2\t3\t5\n1\t1\t4\t6\n"}, "u.data", 3,
                       "user 1 rated movie 1 already on line 1"),
    "100k items few fields": (write_ml100k, {"items": b"1|Toy Story (1995)|01-Jan-1995\n"}, "u.item", 1,
                              "expected 24 '|'-separated fields"),
    "1m rating 0": (write_ml1m, {"data": b"1::1193::0::978300760\n"}, "ratings.dat", 1, "rating 0 is outside"),
    "1m single colon": (write_ml1m, {"data": b"1::1193::5::1\n1:661:3:978302109\n"}, "ratings.dat", 2,
                        "cannot parse '1:661:3:978302109'"),
    "1m movies few fields": (write_ml1m, {"movies": b"1193::Title only\n"}, "movies.dat", 1,
                             "expected 'MovieID::Title::Genres' (3 fields) but found 2"),
    "csv rating 3.3": (write_ml_csv, {"data": b"userId,movieId,rating,timestamp\n1,1,4.0,9\n1,2,3.3,9\n"},
                       "ratings.csv", 3, "rating 3.3 is outside"),
    "csv rating 0": (write_ml_csv, {"data": b"userId,movieId,rating,timestamp\n1,1,0.0,9\n"},
                     "ratings.csv", 2, "rating 0.0 is outside"),
    "csv bad header": (write_ml_csv, {"data": b"user,movie,rating,time\n1,1,4.0,9\n"}, "ratings.csv", 1,
                       "the header must be"),
    "csv duplicate": (write_ml_csv, {"data": b"userId,movieId,rating,timestamp\n1,1,4.0,9\n2,1,4,9\n1,1,3.0,10\n"},
                      "ratings.csv", 4, "user 1 rated movie 1 already on line 2"),
    "csv movies invalid utf-8": (write_ml_csv,
                                 {"movies": b"movieId,title,genres\n1,Ok (1995),Drama\n2,Caf\xe9,Drama\n"},
                                 "movies.csv", 3, "is not valid UTF-8"),
    "csv movies control byte": (write_ml_csv, {"movies": b"movieId,title,genres\n1,Ok\x01 (1995),Drama\n"},
                                "movies.csv", 2, "control byte 0x01"),
    "csv movies few fields": (write_ml_csv, {"movies": b"movieId,title,genres\n1,Ok (1995)\n"}, "movies.csv", 2,
                              "expected 3 fields"),
    # issue 9: bad data that was stored, or ended in a traceback
    "csv rating nan": (write_ml_csv, {"data": b"userId,movieId,rating,timestamp\n1,1,4.0,9\n1,2,nan,9\n"},
                       "ratings.csv", 3, "rating 'nan' is not a number on the movielens-csv scale"),
    "csv rating NaN": (write_ml_csv, {"data": b"userId,movieId,rating,timestamp\n1,2,NaN,9\n"},
                       "ratings.csv", 2, "rating 'NaN' is not a number"),
    "csv rating inf": (write_ml_csv, {"data": b"userId,movieId,rating,timestamp\n1,2,inf,9\n"},
                       "ratings.csv", 2, "rating 'inf' is not a number"),
    "csv timestamp in year 3170844": (write_ml_csv, {"data": b"userId,movieId,rating,timestamp\n1,1,4.0,9\n"
                                                             b"1,2,4.0,99999999999999\n"}, "ratings.csv", 3,
                                      "timestamp 99999999999999 (about the year 3,170,844) lies outside the "
                                      "accepted period 1970-01-01..2099-12-31"),
    "csv timestamp in milliseconds": (write_ml_csv, {"data": b"userId,movieId,rating,timestamp\n1,1,4.0,"
                                                             b"1445714835000\n"}, "ratings.csv", 2,
                                      "timestamp 1445714835000 (about the year 47,783) lies outside the accepted "
                                      "period 1970-01-01..2099-12-31 "
                                      "(milliseconds? the format counts seconds)"),
    "100k timestamp past 2099": (write_ml100k, {"data": b"1\t1\t3\t5\n1\t2\t3\t4102444800\n"}, "u.data", 2,
                                 "timestamp 4102444800 (2100-01-01) lies outside the accepted period"),
    "1m timestamp past int64": (write_ml1m, {"data": b"1::1193::5::99999999999999999999\n"}, "ratings.dat", 1,
                                "timestamp 99999999999999999999 (about the year"),
    "100k items 0xB2 id": (write_ml100k, {"items": b"\xb2|T (1995)|||u|" + b"0|" * 18 + b"0\n"}, "u.item", 1,
                           "the movie id '\xb2' is not a positive 32-bit integer"),
    "csv blank line then a rating": (write_ml_csv, {"data": b"userId,movieId,rating,timestamp\n1,1,4.0,9\n\n"
                                                            b"1,2,4.0,9\n"}, "ratings.csv", 3,
                                     "is a blank line; a rating follows it"),
    "100k bom then a bad line": (write_ml100k, {"data": b"\xef\xbb\xbf1\t1\t3\t5\n1\t2\t6\t5\n"}, "u.data", 2,
                                 "rating 6 is outside"),
}


@pytest.mark.parametrize("case", sorted(BAD_MOVIELENS))
def test_movielens_bad_input_is_refused(tmp_path, previous_output, case):
    writer, kwargs, name, line, problem = BAD_MOVIELENS[case]
    assert_refused(writer(tmp_path / "ml", **kwargs), *previous_output, name, line, problem)


# ------------------------------------------------------------------------------------------------
# Detection, safety, CLI


def test_unrecognised_source_is_refused(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(RecsysError, match="is not a recognised data set"):
        convert(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(RecsysError, match="does not exist"):
        convert(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("src_form, out_form", [
    ("training_set", "."),  # would replace the folder holding the input
    (".", "training_set"),  # would replace the rating files inside the input
    (".", "."),
    ("training_set.tar", "."),
    ("training_set", "movie_titles.txt"),
])
def test_output_may_not_overlap_the_input(tmp_path, src_form, out_form):
    root = write_netflix(tmp_path / "nf")
    write_tar(root, root)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(RecsysError, match="overlaps the input"):
        convert(root / src_form, root / out_form)
    assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_unpadded_file_names_are_read_in_movie_order(tmp_path):
    ratings = {9: [(1, 1, "2005-01-01")], 10: [(2, 2, "2005-01-02")]}
    src = write_netflix(tmp_path / "nf", ratings={}, titles=b"9,2000,A\n10,2000,B\n",
                        overrides={"mv_9.txt": movie_text(9, ratings[9]), "mv_10.txt": movie_text(10, ratings[10])})
    convert(src, tmp_path / "out")
    assert read_rows(tmp_path / "out") == expected_netflix_rows(ratings)


def test_a_folder_in_place_of_a_rating_file_is_refused(tmp_path):
    src = write_netflix(tmp_path / "nf")
    (src / "training_set" / "mv_0000002.txt").unlink()
    (src / "training_set" / "mv_0000002.txt").mkdir()  # a folder where a rating file should be
    with pytest.raises(InputError, match="mv_0000002.txt: is not a regular file"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _no_space_once(real):
    """``real``, except that its first call fails as a full disk does."""
    calls = []

    def fail(*args, **kwargs):
        if not calls:
            calls.append(1)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    return fail


@pytest.mark.parametrize("output, owner, name", [
    ("ratings.parquet", pq.ParquetWriter, "write_table"),
    ("items.parquet", pq, "write_table"),
    ("items.parquet", pq.ParquetWriter, "close"),  # the first file closed is the catalogue
    ("meta.json", io_module.json, "dumps"),
])
def test_a_full_disk_names_the_output_that_could_not_be_written(tmp_path, previous_output, capsys, monkeypatch,
                                                                 output, owner, name):
    out, before = previous_output
    src = write_netflix(tmp_path / "nf")
    monkeypatch.setattr(owner, name, _no_space_once(getattr(owner, name)))
    assert main(["convert", str(src), str(out)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message == (f"error: could not write {out / output}: No space left on device; the previous output, "
                       "if any, is unchanged"), message
    assert str(src) not in message
    assert snapshot(out) == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".out")] == []


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB filesystem (tmpfs); skipped where this process may not mount one (not root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_really_full_disk_names_the_output(tmp_path, small_disk, capsys):
    from recsys_core.synth import generate_netflix

    out = small_disk / "converted"
    convert(write_netflix(tmp_path / "nf"), out)
    before = snapshot(out)
    (small_disk / "filler").write_bytes(b"x" * (2 * 1024 * 1024 - 96 * 1024))  # leave ~80 KB
    generate_netflix(tmp_path / "synth", scale=0.001, seed=1)  # ~100K ratings: ~400 KB of Parquet
    assert main(["convert", str(tmp_path / "synth"), str(out)]) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith(f"error: could not write {out}") and "No space left on device" in message, message
    assert str(tmp_path / "synth") not in message
    assert snapshot(out) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["converted", "filler"]


# `recsys convert` in another process that, once ratings.parquet is whole in its temporary folder (the stage writes
# meta.json next, then renames the folder into place), writes a marker and waits there to be killed: the kill lands
# mid-conversion every time, however loaded the machine (it raced the conversion's end when timed by polling).
CONVERT_THEN_WAIT = """
import runpy, sys, time
from pathlib import Path
import recsys_core.convert as convert_module
marker = Path(sys.argv.pop(1))
real_write_meta = convert_module.write_meta
def write_meta_after_a_pause(*args, **kwargs):
    marker.write_text("ratings.parquet written")
    time.sleep(3600)
    return real_write_meta(*args, **kwargs)
convert_module.write_meta = write_meta_after_a_pause
sys.argv[0] = "recsys"
runpy.run_module("recsys_core", run_name="__main__")
"""


def test_a_killed_conversion_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    from recsys_core.synth import generate_netflix

    generate_netflix(tmp_path / "synth", scale=0.002, seed=1)
    out = tmp_path / "out"
    convert(write_netflix(tmp_path / "nf"), out)
    marker = tmp_path / "marker"
    command = [sys.executable, "-c", CONVERT_THEN_WAIT, str(marker), "convert", str(tmp_path / "synth"), str(out)]
    process = subprocess.Popen(command, env={**os.environ, "RECSYS_PROGRESS": "0"}, stderr=subprocess.PIPE,
                               cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 600  # a hang guard, not a measurement
        while not marker.exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)  # mid-conversion: its temporary folder stays behind
    finally:
        process.wait(timeout=60)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    left = list(tmp_path.glob(".out.tmp-*"))
    assert len(left) == 1 and (left[0] / "ratings.parquet").exists()
    assert read_rows(out) == expected_netflix_rows()  # the previous output is whole
    meta = convert(tmp_path / "synth", out)           # the next run of the stage cleans up
    assert list(tmp_path.glob(".out*")) == [] and meta["ratings"] > 100_000


def test_cli_converts_and_reports_bad_input_in_one_sentence(tmp_path, capsys):
    src = write_netflix(tmp_path / "nf")
    assert main(["convert", str(src), str(tmp_path / "out"), "--compression", "zstd"]) == 0
    assert read_rows(tmp_path / "out") == expected_netflix_rows()
    (src / "training_set" / "mv_0000002.txt").write_bytes(b"2:\n1,9,2005-01-01\n")
    assert main(["convert", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "mv_0000002.txt, line 2: rating 9 is outside" in err[-1]


# ------------------------------------------------------------------------------------------------
# A generated set (recsys_core.synth): counts agree with its synth.json, in every input form.


def test_generated_netflix_set_matches_its_synth_json(tmp_path):
    from recsys_core.synth import generate_netflix

    synth = generate_netflix(tmp_path / "synth", scale=0.001, seed=3, tar=True)
    meta = convert(tmp_path / "synth", tmp_path / "out")
    assert meta["source"] == "netflix"
    assert (meta["ratings"], meta["users"], meta["items"], meta["catalog_items"]) == (
        synth["ratings"], synth["rating_customers"], synth["rated_movies"], synth["movies"])
    assert (meta["first_date"], meta["last_date"]) == (synth["first_date"], synth["last_date"])
    rows = read_rows(tmp_path / "out")
    assert convert(tmp_path / "synth" / "training_set.tar", tmp_path / "out-tar") == meta
    assert read_rows(tmp_path / "out-tar") == rows
    titles = pq.read_table(tmp_path / "out" / "items.parquet")
    assert titles.num_rows == synth["movies"] and titles.column("title").null_count == 0


# ------------------------------------------------------------------------------------------------
# The Kaggle layout ("Netflix Prize data"): combined_data_N.txt + movie_titles.csv, folder or zip.

KAGGLE_EXTRAS = {"probe.txt": b"1:\n1488844\n", "qualifying.txt": b"1:\n30878,2005-12-19\n", "README": b"x\n"}


def kaggle_files(ratings=RATINGS, titles: bytes = TITLES, blocks: dict[int, bytes] | None = None,
                 files: list[list[int]] | None = None) -> dict[str, bytes]:
    """The Kaggle layout's files: movie blocks (``blocks`` replaces a movie's block by raw bytes) spread
    over combined_data_N.txt as ``files`` says (default: two files)."""
    texts = {m: movie_text(m, rows) for m, rows in ratings.items()}
    texts.update(blocks or {})
    movies = sorted(texts)
    files = files or [movies[: len(movies) // 2], movies[len(movies) // 2:]]
    combined = {f"combined_data_{n}.txt": b"".join(texts[m] for m in group) for n, group in enumerate(files, 1)}
    return {**combined, "movie_titles.csv": titles, **KAGGLE_EXTRAS}


def write_kaggle(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def write_kaggle_zip(dest: Path, files: dict[str, bytes], folder: str = "") -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(folder + name, data)
    return dest


@pytest.mark.parametrize("form", ["folder", "zip", "zip with a folder inside"])
def test_kaggle_layout_gives_the_per_movie_output(tmp_path, form):
    files = kaggle_files()
    if form == "folder":
        src = write_kaggle(tmp_path / "kaggle", files)
    else:
        src = write_kaggle_zip(tmp_path / "archive.zip", files, "netflix/" if "inside" in form else "")
    meta = convert(src, tmp_path / "out")
    reference = tmp_path / "ref"
    assert meta == convert(write_netflix(tmp_path / "nf"), reference)
    assert read_rows(tmp_path / "out") == expected_netflix_rows()
    assert (tmp_path / "out" / "ratings.parquet").read_bytes() == (reference / "ratings.parquet").read_bytes()
    assert (tmp_path / "out" / "items.parquet").read_bytes() == (reference / "items.parquet").read_bytes()


# 0.0005: a batch per movie, blocks cut by the read buffer (~7 s of CPU: slow, run by CI)
@pytest.mark.parametrize("batch_mb", [128, pytest.param(0.0005, marks=pytest.mark.slow)])
def test_generated_data_in_both_layouts_converts_to_byte_identical_parquet(tmp_path, batch_mb):
    from recsys_core.synth import generate_netflix

    generate_netflix(tmp_path / "per-movie", scale=0.002, seed=3, tar=True)
    generate_netflix(tmp_path / "kaggle", scale=0.002, seed=3, layout="kaggle", zip_archive=True)
    outputs = {}
    for name, src in {"folder": tmp_path / "per-movie", "tar": tmp_path / "per-movie" / "training_set.tar",
                      "kaggle": tmp_path / "kaggle", "kaggle zip": tmp_path / "kaggle" / "netflix-prize-data.zip"
                      }.items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        outputs[name] = (convert(src, out, batch_mb=batch_mb), snapshot(out))
    assert outputs["folder"][0]["ratings"] > 150_000
    for name, output in outputs.items():
        assert output == outputs["folder"], name  # meta.json, ratings.parquet, items.parquet: byte for byte


def test_kaggle_bom_crlf_blank_lines_and_utf8_titles_are_accepted(tmp_path, caplog):
    files = kaggle_files(titles=b"\xef\xbb\xbf" + TITLES.decode("latin-1").encode() + b"\n\n")
    files["combined_data_1.txt"] = b"\xef\xbb\xbf" + files["combined_data_1.txt"].replace(b"\n", b"\r\n")
    files["combined_data_2.txt"] += b"\n \n\n"
    convert(write_kaggle(tmp_path / "kaggle", files), tmp_path / "out")
    assert read_rows(tmp_path / "out") == expected_netflix_rows()
    assert pq.read_table(tmp_path / "out" / "items.parquet").column("title").to_pylist()[3] == "Amélie"
    assert "movie_titles.csv is UTF-8, not ISO-8859-1" in caplog.text


def _kaggle_line(movie: int, line_in_movie_file: int, ratings=RATINGS) -> int:
    """Line number in combined_data_N.txt of a movie file's line (the default split of kaggle_files)."""
    movies = sorted(ratings)
    group = movies[: len(movies) // 2] if movie in movies[: len(movies) // 2] else movies[len(movies) // 2:]
    before = sum(1 + len(ratings[m]) for m in group if m < movie)
    return before + line_in_movie_file


KAGGLE_ONLY = {"bad header", "header id differs", "empty file"}  # these need a file per movie


@pytest.mark.parametrize("case", sorted(set(BAD_MOVIE_FILES) - KAGGLE_ONLY))
@pytest.mark.parametrize("form", ["folder", "zip"])
def test_kaggle_bad_rating_lines_name_the_combined_file_and_its_line(tmp_path, previous_output, case, form):
    name, data, line, problem = BAD_MOVIE_FILES[case]
    problem = re.sub(r"on line (\d+)", lambda m: f"on line {_kaggle_line(2, int(m.group(1)))}", problem)
    files = kaggle_files(blocks={2: data})
    src = write_kaggle(tmp_path / "bad", files) if form == "folder" else write_kaggle_zip(tmp_path / "bad.zip", files)
    file_name = "combined_data_1.txt" if form == "folder" else "bad.zip member combined_data_1.txt"
    assert_refused(src, *previous_output, file_name, _kaggle_line(2, line), problem)


BAD_KAGGLE = {
    "no header first": ({"combined_data_1.txt": b"1,3,2005-01-01\n"}, "combined_data_1.txt", 1,
                        "the first line must be '<movie id>:' but is '1,3,2005-01-01'"),
    "movie 0": ({"combined_data_2.txt": movie_text(3, []) + b"0:\n1,3,2005-01-01\n"}, "combined_data_2.txt", 2,
                "the movie id of '0:' is not a positive 32-bit integer"),
    "colon in a rating line": ({"combined_data_2.txt": movie_text(3, []) + b"1,3,2005:01-01\n"},
                               "combined_data_2.txt", 2, "'1,3,2005:01-01' is neither a '<movie id>:' line"),
    "movie in two files": ({"combined_data_2.txt": movie_text(1, [(9, 3, "2005-01-01")])}, "combined_data_2.txt", 1,
                           "movie 1 was already read from "),
    "empty file": ({"combined_data_2.txt": b""}, "combined_data_2.txt", 1, "is empty"),
    "titles 0xB2": ({"movie_titles.csv": b"1,2003,A\n\xb2,2004,B\n"}, "movie_titles.csv", 2,
                    "the movie id '\xb2' is not a positive 32-bit integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_KAGGLE))
def test_kaggle_bad_input_is_refused(tmp_path, previous_output, case):
    changes, file_name, line, problem = BAD_KAGGLE[case]
    src = write_kaggle(tmp_path / "bad", {**kaggle_files(), **changes})
    assert_refused(src, *previous_output, file_name, line, problem)


def test_kaggle_missing_titles_and_damaged_zips_are_refused(tmp_path, previous_output):
    files = kaggle_files()
    src = write_kaggle(tmp_path / "no-titles", {k: v for k, v in files.items() if k != "movie_titles.csv"})
    assert_refused(src, *previous_output, "movie_titles.csv", None, "is missing")
    archive = write_kaggle_zip(tmp_path / "archive.zip", files)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    assert_refused(archive, *previous_output, "archive.zip", None, "is not a readable zip archive, or it is truncated")
    # a flipped byte inside the stored member: the CRC-32 check at the member's end catches it
    stored = tmp_path / "stored.zip"
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as out:
        for name, content in files.items():
            out.writestr(name, content)
    data = bytearray(stored.read_bytes())
    where = data.index(b"1488844,3,2005-09-06")
    data[where + 8] = ord("4")  # rating 3 -> 4: still a valid line
    stored.write_bytes(bytes(data))
    assert_refused(stored, *previous_output, "stored.zip", None,
                   "is corrupt inside member combined_data_1.txt: its CRC-32 checksum does not match its content")


def test_kaggle_sources_are_recognised_and_the_flow_plans_them(tmp_path):
    from recsys_core.artifacts.layout import source_name
    from recsys_core.convert import detect

    root = write_kaggle(tmp_path / "kaggle", kaggle_files())
    archive = write_kaggle_zip(tmp_path / "netflix-prize-data.zip", kaggle_files())
    for src in (root, archive):
        assert convert(src, tmp_path / f"out-{src.name}")["source"] == "netflix"
        assert detect(src).reads == [src] and source_name(src) in ("kaggle", "netflix-prize-data")
    with pytest.raises(RecsysError, match="overlaps the input"):
        convert(root, root / "converted")
    other = tmp_path / "other.zip"
    write_kaggle_zip(other, {"notes.txt": b"hello\n"})
    with pytest.raises(RecsysError, match="is not a recognised data set"):
        convert(other, tmp_path / "out-other")
