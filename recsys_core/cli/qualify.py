"""``recsys qualify``: a Netflix Prize submission for qualifying.txt from a trained rating model
(``recsys_core.qualify``)."""

from __future__ import annotations

from pathlib import Path

from recsys_core.prize import score_submission


def add(subparsers, name: str, summary: str) -> None:
    p = subparsers.add_parser(
        name, help=summary,
        description="Predict every line of the Netflix Prize's qualifying.txt with the rating model of RUN_DIR and "
                    "write the Prize's submission format: the same '<movie id>:' headers in the same order, one "
                    "predicted rating (clipped to 1..5) per customer line. qualifying.txt is read in place from "
                    "--source (a folder with training_set/, nf_prize_dataset.tar.gz, the Kaggle folder or zip, or "
                    "the file itself) and streamed in chunks: bounded memory for its 2.8M lines. Train the run on "
                    "--protocol netflix-probe (or any split of the same Netflix data). Ranking models are refused.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `train` (a rating model)")
    p.add_argument("--source", required=True, help="the Netflix Prize source holding qualifying.txt")
    p.add_argument("--out", help="the submission file to write (default RUN_DIR/qualifying_predictions.txt)")
    p.add_argument("--truth", help="score the submission against hidden ratings in the generator's format "
                                   "(qualifying_truth.txt of `recsys synth`): RMSE on quiz, test and both")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default auto)")
    p.set_defaults(func=run)


def run(args) -> int:
    from recsys_core.qualify import write_qualifying  # torch (~1.5 s), through load_run: not for `--help`

    out = args.out or str(Path(args.run_dir) / "qualifying_predictions.txt")
    report = write_qualifying(args.run_dir, args.source, out, args.device)
    print(report.summary())
    if args.truth:
        score = score_submission(out, args.truth)
        parts = ", ".join(f"{name} {value:.4f}" for name, value in (("quiz", score.quiz_rmse),
                                                                    ("test", score.test_rmse)) if value is not None)
        print(f"RMSE against {args.truth}: {score.rmse:.4f} on {score.n:,} ratings ({parts})")
    return 0
