"""The Netflix Prize's own benchmark: the ``netflix-probe`` split, qualifying submissions and their scoring
(recsys_core/prize.py, split/probe.py, qualify.py), on hand-built files and on generated data."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from split_fixtures import read_rows
from test_convert import RATINGS as TINY
from test_convert import (
    kaggle_files,
    tar_bytes,
    training_members,
    write_kaggle,
    write_kaggle_zip,
    write_netflix,
    write_tar,
)

from recsys_core import prize
from recsys_core.cli import main as cli_main
from recsys_core.convert import convert
from recsys_core.errors import InputError, RecsysError
from recsys_core.split import split
from recsys_core.split.hashing import SALT_VALID_TEST, hash_unit_scalar
from recsys_core.synth import load_oracle

UTC = dt.timezone.utc
# test_convert's tiny set, with two more ratings so that three probe customers keep train ratings.
RATINGS = {**TINY, 1: TINY[1] + [(2649429, 4, "2005-12-30")], 2: TINY[2] + [(885013, 2, "2005-11-01")]}
# probe.txt of the tiny set of test_convert: customer 822109 rated only movie 1, so its probe rating has no
# train rating left and is dropped (and counted), as held-out ratings of unknown customers are everywhere.
PROBE = b"1:\n822109\n885013\n2:\n1488844\n10:\n2649429\n"
PROBE_PAIRS = {(1, 822109), (1, 885013), (2, 1488844), (10, 2649429)}
QUALIFYING = b"2:\n822109,2005-12-20\n7,2005-12-01\n1:\n2059652,2005-12-02\n"


@pytest.fixture(autouse=True)
def _no_bars(monkeypatch):
    monkeypatch.setenv("RECSYS_PROGRESS", "0")


def all_rows() -> list[tuple]:
    return [(u, m, float(r), dt.datetime.fromisoformat(d).replace(tzinfo=UTC))
            for m, rows in sorted(RATINGS.items()) for u, r, d in rows]


def expected_parts(seed: int, valid_share: float) -> dict[str, list[tuple]]:
    """train / valid / test computed independently: the rules of the protocol written out row by row."""
    rows = all_rows()
    train = [r for r in rows if (r[1], r[0]) not in PROBE_PAIRS]
    users, items = {r[0] for r in train}, {r[1] for r in train}
    held = [r for r in rows if (r[1], r[0]) in PROBE_PAIRS and r[0] in users and r[1] in items]
    valid = [r for r in held if hash_unit_scalar(seed, SALT_VALID_TEST, r[0], r[1]) < valid_share]
    return {"train": train, "valid": valid, "test": [r for r in held if r not in valid]}


def layouts(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """(what convert reads, what the probe split reads) for every layout that carries probe.txt."""
    root = write_netflix(tmp_path / "nf", RATINGS)
    (root / "probe.txt").write_bytes(PROBE)
    tar = write_tar(root, tmp_path / "tar")
    (tar.parent / "probe.txt").write_bytes(PROBE)
    members = {"download/movie_titles.txt": (root / "movie_titles.txt").read_bytes(),
               "download/training_set.tar": tar_bytes(training_members(root)), "download/probe.txt": PROBE,
               "download/qualifying.txt": QUALIFYING}
    tar_gz = tmp_path / "nf_prize_dataset.tar.gz"
    tar_gz.write_bytes(gzip.compress(tar_bytes(members)))
    files = {**kaggle_files(RATINGS), "probe.txt": PROBE, "qualifying.txt": QUALIFYING}
    kaggle = write_kaggle(tmp_path / "kaggle", files)
    kaggle_zip = write_kaggle_zip(tmp_path / "netflix-prize-data.zip", files, "data/")
    return {"folder": (root, root), "training_set folder": (root / "training_set", root / "training_set"),
            "training_set.tar": (tar, tar), "nf_prize_dataset.tar.gz": (tar_gz, tar_gz),
            "kaggle folder": (kaggle, kaggle), "kaggle zip": (kaggle_zip, kaggle_zip),
            "probe.txt itself": (root, root / "probe.txt")}


def parts(folder: Path) -> dict[str, list[tuple]]:
    return {name: sorted(read_rows(folder / f"{name}.parquet"), key=lambda r: (r[1], r[0]))
            for name in ("train", "valid", "test")}


@pytest.mark.parametrize("valid_share", [0.5, 0.0])
def test_probe_split_gives_exactly_the_expected_rows_in_every_layout(tmp_path, valid_share):
    expected = {k: sorted(v, key=lambda r: (r[1], r[0])) for k, v in expected_parts(3, valid_share).items()}
    assert expected["valid"] and expected["test"] if valid_share else not expected["valid"]
    for name, (converted_from, probe_from) in layouts(tmp_path).items():
        converted = tmp_path / f"converted-{name.replace(' ', '_')}"
        convert(converted_from, converted)
        out = tmp_path / f"split-{name.replace(' ', '_')}"
        stats = split(converted, out, "netflix-probe", source=str(probe_from), seed=3, valid_share=valid_share)
        assert parts(out / "probe") == expected, name
        assert stats["probe"]["dropped"]["heldout_ratings_of_users_not_in_train"] == 1
        assert stats["probe"]["probe"]["pairs"] == len(PROBE_PAIRS)
        assert json.loads((out / "probe" / "stats.json").read_text()) == stats["probe"]
        split_json = json.loads((out / "probe" / "split.json").read_text())
        assert split_json["protocol"] == "netflix-probe" and split_json["valid_share"] == valid_share
        assert split_json["probe_file"].endswith("probe.txt")


def test_no_valid_part_is_said_loudly(tmp_path, caplog, capsys):
    root = write_netflix(tmp_path / "nf", RATINGS)
    (root / "probe.txt").write_bytes(PROBE)
    convert(root, tmp_path / "converted")
    with caplog.at_level(logging.WARNING, logger="recsys_core"):
        assert cli_main(["split", str(tmp_path / "converted"), str(tmp_path / "out"), "--protocol", "netflix-probe",
                         "--source", str(root), "--valid-share", "0"]) == 0
    assert "NO VALID PART" in caplog.text
    assert "NO VALID PART" in capsys.readouterr().out
    assert pq.read_metadata(tmp_path / "out" / "probe" / "valid.parquet").num_rows == 0


@pytest.mark.parametrize("probe, line, words", [
    (b"1:\n822109\n3:\n7\n", 4, "customer 7 has no rating of movie 3 in the training set"),
    (b"1:\n822109\n\n2:\n1488844\n822109\n", 6, "customer 822109 has no rating of movie 2"),
    (b"1:\n822109\n885013\n822109\n", 4, "customer 822109 of movie 1 is listed again (first on line 2)"),
    (b"822109\n", 1, "the first line must be '<movie id>:'"),
    (b"1:\n822109,3\n", 2, "expected a customer id under movie 1"),
])
def test_a_bad_probe_file_is_refused_with_its_line(tmp_path, capsys, probe, line, words):
    root = write_netflix(tmp_path / "nf", RATINGS)
    (root / "probe.txt").write_bytes(probe)
    convert(root, tmp_path / "converted")
    out = tmp_path / "out"
    assert cli_main(["split", str(tmp_path / "converted"), str(out), "--protocol", "netflix-probe",
                     "--source", str(root)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"error: {root / 'probe.txt'}, line {line}: ") and words in message, message
    assert "\n" not in message and "Traceback" not in message
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_a_source_without_probe_is_one_sentence(tmp_path, capsys):
    root = write_netflix(tmp_path / "nf", RATINGS)
    convert(root, tmp_path / "converted")
    for source in ([], ["--source", str(root)], ["--source", str(tmp_path / "nowhere")]):
        assert cli_main(["split", str(tmp_path / "converted"), str(tmp_path / "out"), "--protocol", "netflix-probe",
                         *source]) == 2
        message = capsys.readouterr().err.strip()
        assert "probe.txt" in message and "\n" not in message, message
    with pytest.raises(RecsysError, match="holds no probe.txt"):
        split(tmp_path / "converted", tmp_path / "out", "netflix-probe", source=str(root / "training_set"))
    with pytest.raises(RecsysError, match="do not apply to protocol netflix-probe"):
        split(tmp_path / "converted", tmp_path / "out", "netflix-probe", source=str(root), splits=["N3M"])


# ------------------------------------------------------------------------------------------------
# Submissions: the qualifying file's order and headers, and scoring.


def test_submission_pieces_keep_headers_across_chunks(tmp_path):
    qualifying = b"5:\n1,2005-01-01\n2,2005-01-02\n3,2005-01-03\n4:\n9,2005-01-01\n6:\n1,2005-01-05\n2,2005-02-01\n"
    (tmp_path / "qualifying.txt").write_bytes(qualifying)
    found = prize.find_prize_file(tmp_path, "qualifying.txt")
    for size in (1, 2, 3, 100):
        out, previous, values = [], None, iter([1.0, 2.5, 5.0, 3.33333, 4.0, 1.23456])
        for chunk in prize.read_chunks(found, qualifying=True, lines_per_chunk=size):
            records = prize.format_ratings(np.array([next(values) for _ in chunk.lines]))
            pieces, previous = prize.submission_pieces(chunk, previous, records)
            out += pieces
        assert b"".join(out) == b"5:\n1.0000\n2.5000\n5.0000\n4:\n3.3333\n6:\n4.0000\n1.2346\n", size


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory):
    """A generated set (scale 0.002) split by its probe.txt, and an MF trained on it (2 epochs)."""
    from recsys_core.matrices import build_matrices
    from recsys_core.settings import RunSettings
    from recsys_core.synth import generate_netflix
    from recsys_core.train import train

    root = tmp_path_factory.mktemp("prize")
    meta = generate_netflix(root / "raw", scale=0.002, seed=5, tar=True, distribution=True)
    convert(root / "raw", root / "converted")
    split(root / "converted", root / "splits", "netflix-probe", source=str(root / "raw"))
    build_matrices(root / "splits", root / "matrices")
    train(root / "matrices" / "probe", root / "run", "mf", {"epochs": 2}, RunSettings(threads=1))
    return root, meta


def read_blocks(data: bytes) -> list[tuple[int, list[bytes]]]:
    blocks = []
    for line in data.split(b"\n")[:-1]:
        if line.endswith(b":"):
            blocks.append((int(line[:-1]), []))
        else:
            blocks[-1][1].append(line)
    return blocks


def test_qualifying_order_and_headers_survive_the_round_trip(generated_run, tmp_path):
    from recsys_core.qualify import write_qualifying

    root, meta = generated_run
    report = write_qualifying(root / "run", root / "raw", tmp_path / "a.txt", lines_per_chunk=997)
    qualifying = read_blocks((root / "raw" / "qualifying.txt").read_bytes())
    submitted = read_blocks((tmp_path / "a.txt").read_bytes())
    assert [m for m, _ in submitted] == [m for m, _ in qualifying]  # the same headers, in the same order
    assert [len(lines) for _, lines in submitted] == [len(lines) for _, lines in qualifying]
    assert report.lines == meta["qualifying_pairs"] and report.movies == len(qualifying)
    assert report.unknown == 0  # every qualifying customer and movie has training ratings, as on the real data
    values = np.array([float(v) for _, lines in submitted for v in lines])
    assert values.min() >= 1.0 and values.max() <= 5.0 and values.std() > 0.05
    assert all(re.fullmatch(rb"[1-5]\.\d{4}", v) for _, lines in submitted for v in lines)
    # the same bytes whatever the chunk size and whichever layout holds qualifying.txt
    write_qualifying(root / "run", root / "raw" / "nf_prize_dataset.tar.gz", tmp_path / "b.txt")
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()


def test_a_submission_scored_against_the_hidden_ratings_equals_the_rmse_computed_independently(generated_run,
                                                                                               tmp_path, capsys):
    root, meta = generated_run
    truth_file = root / "raw" / "qualifying_truth.txt"
    out = tmp_path / "submission.txt"
    assert cli_main(["qualify", str(root / "run"), "--source", str(root / "raw"), "--out", str(out),
                     "--truth", str(truth_file)]) == 0
    printed = capsys.readouterr().out
    predicted = [float(v) for _, lines in read_blocks(out.read_bytes()) for v in lines]
    truth = [v.split(b",") for _, lines in read_blocks(truth_file.read_bytes()) for v in lines]
    ratings = np.array([float(r) for r, _ in truth])
    quiz = np.array([part == b"quiz" for _, part in truth])
    errors = np.array(predicted) - ratings
    score = prize.score_submission(out, truth_file)
    assert score.n == len(ratings) == meta["qualifying_pairs"]
    assert score.rmse == pytest.approx(np.sqrt(np.mean(errors**2)), abs=1e-12)
    assert score.quiz_rmse == pytest.approx(np.sqrt(np.mean(errors[quiz] ** 2)), abs=1e-12)
    assert score.test_rmse == pytest.approx(np.sqrt(np.mean(errors[~quiz] ** 2)), abs=1e-12)
    assert f"{score.rmse:.4f}" in printed
    # The hidden ratings are the generating model's: its Bayes-optimal prediction scores its recorded floor.
    movies = np.array([m for m, lines in read_blocks((root / "raw" / "qualifying.txt").read_bytes()) for _ in lines])
    customers = np.array([int(v.split(b",")[0]) for _, lines in
                          read_blocks((root / "raw" / "qualifying.txt").read_bytes()) for v in lines])
    oracle = load_oracle(root / "raw")  # (the generator scores in float32)
    assert oracle.rmse(customers, movies, ratings) == pytest.approx(meta["qualifying_oracle_rmse"], rel=1e-6)
    assert oracle.rmse(customers, movies, ratings) < score.rmse  # a 2-epoch MF is above the floor
    # A submission with a wrong header is refused with its line.
    lines = out.read_bytes().split(b"\n")
    lines[0] = b"99999:"
    (tmp_path / "bad.txt").write_bytes(b"\n".join(lines))
    with pytest.raises(InputError, match=r"line 1: expected the header"):
        prize.score_submission(tmp_path / "bad.txt", truth_file)


def test_a_ranking_model_or_a_source_without_qualifying_is_refused(generated_run, tmp_path, capsys):
    from recsys_core.train import train

    root, _ = generated_run
    train(root / "matrices" / "probe", tmp_path / "ease", model="ease")
    assert cli_main(["qualify", str(tmp_path / "ease"), "--source", str(root / "raw"),
                     "--out", str(tmp_path / "p.txt")]) == 2
    message = capsys.readouterr().err.strip()
    assert "ranking model" in message and "\n" not in message and not (tmp_path / "p.txt").exists()
    assert cli_main(["qualify", str(root / "run"), "--source", str(root / "converted"),
                     "--out", str(tmp_path / "p.txt")]) == 2
    assert "holds no qualifying.txt" in capsys.readouterr().err


def test_prize_numbers_beside_the_probe_rmse_are_labelled():
    rows = prize.comparison_rows([{"model": "mf", "rmse": 0.91234, "n": 7000},
                                  {"model": "global_mean", "rmse": None, "n": 7000}], generated=True)
    assert rows[0] == {"system": "mf", "data": "this run: generated", "set": "probe (7000 ratings in test)",
                       "rmse": 0.9123}
    published = {(r["system"], r["set"]): r["rmse"] for r in rows if r["data"] == "real Netflix (published)"}
    assert published[("Cinematch (Netflix's own system)", "quiz")] == 0.9514
    assert published[("BellKor's Pragmatic Chaos (the winner)", "test")] == 0.8567
    assert len(rows) == 1 + len(prize.PUBLISHED_RMSE)
    assert "NOT comparable" in prize.GENERATED_NOTE


def test_the_split_stage_key_holds_the_probe_content_not_its_path(tmp_path, monkeypatch):
    from recsys_core.artifacts import layout
    from recsys_core.artifacts.hashing import HashMemo
    from recsys_core.artifacts.layout import split_spec
    from recsys_core.artifacts.manifest import make_spec

    monkeypatch.setattr(layout, "output_hashes", lambda spec, memo: {"ratings.parquet": "same"})
    converted = make_spec("convert", {}, {}, {}, out_dir=tmp_path / "converted")
    keys = []
    for name, data in (("a", PROBE), ("b", PROBE), ("c", PROBE + b"3:\n1\n")):
        root = write_netflix(tmp_path / name)
        (root / "probe.txt").write_bytes(data)
        spec = split_spec(tmp_path, converted, HashMemo(None), "netflix-probe", {"seed": 0, "source": str(root)})
        keys.append(spec.key)
    assert keys[0] == keys[1] != keys[2]
    with pytest.raises(RecsysError, match="holds no probe.txt"):
        split_spec(tmp_path, converted, HashMemo(None), "netflix-probe", {"source": str(tmp_path / "a" / "x")})


def test_fast_and_line_by_line_parsing_agree_and_name_the_line(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    lines, expected = [], []
    for movie in range(1, 301):
        lines.append(f"{movie}:")
        for customer in np.sort(rng.choice(2_649_429, 12, replace=False) + 1).tolist():
            lines.append(f"{customer},2005-{1 + customer % 12:02d}-{1 + customer % 28:02d}")
            expected.append((movie, customer, len(lines)))
    clean = ("\n".join(lines) + "\n").encode()
    monkeypatch.setattr(prize, "_READ_BYTES", 4096)  # many blocks, movies cut across them
    variants = {"clean": clean, "crlf": clean.replace(b"\n", b"\r\n"), "no final newline": clean[:-1],
                "blank lines at the end": clean + b"\n\n"}
    for name, data in variants.items():
        (tmp_path / "qualifying.txt").write_bytes(data)
        chunks = list(prize.read_chunks(prize.find_prize_file(tmp_path, "qualifying.txt"), qualifying=True,
                                        lines_per_chunk=500))
        got = [(int(m), int(c), int(n)) for ch in chunks for m, c, n in zip(ch.movies, ch.customers, ch.lines)]
        assert got == expected, name
    for index, bad in ((1800, "12x4,2005-01-01"), (2500, "77:"), (3000, "5,2005-1-01x")):
        broken = list(lines)
        broken[index] = bad
        (tmp_path / "qualifying.txt").write_bytes(("\n".join(broken) + "\n").encode())
        with pytest.raises(InputError) as caught:
            list(prize.read_chunks(prize.find_prize_file(tmp_path, "qualifying.txt"), qualifying=True))
        assert caught.value.line == index + 1, (bad, str(caught.value))
