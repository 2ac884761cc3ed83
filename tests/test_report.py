"""The summary table's notes: what marks a model as beaten, and what only says its lists rank worse."""

from __future__ import annotations

import json

from tasks.report import bucket_rows, metric_rows, summary_markdown


def _run(tmp_path, name, **metrics):
    run_dir = tmp_path / name
    run_dir.mkdir()
    baselines = {"user_item_bias": {"test": {"rmse": 0.95, "recall@10": 0.02}},
                 "most_popular": {"test": {"recall@10": 0.05}}}
    (run_dir / "metrics.json").write_text(json.dumps({"test": {"rmse": 0.9, "recall@10": 0.01},
                                                      "baselines": baselines, **metrics}))
    return {"split": "N3M", "model": name, "run_dir": str(run_dir)}


def test_notes_separate_beaten_from_ranked_worse(tmp_path):
    runs = [_run(tmp_path, "mf", beaten_by=["user_item_bias"], top_k_beaten_by=["user_item_bias", "most_popular"]),
            _run(tmp_path, "autoencoder", beaten_by=[], top_k_beaten_by=["most_popular"]),
            _run(tmp_path, "mlp", beaten_by=[], top_k_beaten_by=[])]
    rows = metric_rows(runs)
    notes = {r["model"]: r["note"] for r in rows if r["kind"] == "model"}
    assert notes == {"mf": "BEATEN by user_item_bias", "autoencoder": "top-K ranked better by most_popular",
                     "mlp": ""}
    # Each baseline appears once per split, beside the first model that carried it.
    assert [r["model"] for r in rows if r["kind"] == "baseline"] == ["user_item_bias", "most_popular"]
    assert rows[1]["rmse"] == 0.95


def test_a_baseline_without_a_ranking_shows_n_a(tmp_path):
    run = _run(tmp_path, "mf", beaten_by=[], top_k_beaten_by=[])
    metrics_file = tmp_path / "mf" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["baselines"]["global_mean"] = {"test": {"rmse": 1.1, "recall@10": None}}
    metrics_file.write_text(json.dumps(metrics))
    tied = next(r for r in metric_rows([run]) if r["model"] == "global_mean")
    assert tied["recall@10"] == "n/a" and tied["rmse"] == 1.1


def _bucket(label, n, value, metric="rmse"):
    count = "ratings" if metric == "rmse" else "ranked_users"
    row = {"bucket": label, count: n, metric: value}
    if metric == "rmse":
        row["users"] = n
    if n == 0:
        row["absent"] = "no held-out rating of an item without training ratings (...)"
    return row


def _bucket_run(tmp_path, name, model, baselines, metric="rmse", test_only=False):
    """A run folder whose metrics.json carries per-bucket rows: {part: [(label, n, value)]} for the model and
    for each baseline."""
    run_dir = tmp_path / name
    run_dir.mkdir()

    def buckets(parts):
        return {part: [_bucket(*row, metric=metric) for row in rows] for part, rows in parts.items()
                if not (test_only and part == "valid")}

    metrics = {"test": {metric: 0.9}, "beaten_by": [], "top_k_beaten_by": [], "buckets": buckets(model),
               "baselines": {b: {"test": {metric: 1.0}, "buckets": buckets(parts)} for b, parts in baselines.items()}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return {"split": "N3M", "model": name, "run_dir": str(run_dir)}


def test_the_bucket_table_puts_each_model_beside_its_best_baseline_and_flags_where_it_loses(tmp_path):
    model = {"test": [("1-5", 40, 1.10), ("6-20", 100, 0.90), ("new items", 0, None)],
             "valid": [("1-5", 30, 1.00), ("6-20", 90, 0.95), ("new items", 0, None)]}
    baselines = {"global_mean": {"test": [("1-5", 40, 1.20), ("6-20", 100, 1.00), ("new items", 0, None)],
                                 "valid": [("1-5", 30, 1.10), ("6-20", 90, 1.00), ("new items", 0, None)]},
                 "user_item_bias": {"test": [("1-5", 40, 1.00), ("6-20", 100, 0.95), ("new items", 0, None)],
                                    "valid": [("1-5", 30, 1.05), ("6-20", 90, 0.93), ("new items", 0, None)]}}
    rows = {r["bucket"]: r for r in bucket_rows([_bucket_run(tmp_path, "autoencoder", model, baselines)])}
    assert list(rows) == ["1-5", "6-20", "new items"]
    short = rows["1-5"]
    assert (short["metric"], short["test n"], short["test"], short["best baseline"]) == \
        ("rmse", 40, "1.1 / 1.0", "user_item_bias")
    # the best on valid may be another baseline than on test
    assert (short["valid"], short["valid n"]) == ("1.0 / 1.05", 30)
    assert short["note"] == "LOSES: test +10.0%"
    six = rows["6-20"]
    assert (six["test"], six["valid"], six["note"]) == ("0.9 / 0.95", "0.95 / 0.93", "loses: valid +2.2%")
    assert rows["new items"]["test"] == "absent" and rows["new items"]["test n"] == 0
    assert rows["new items"]["note"] == "" and rows["new items"]["best baseline"] == ""


def test_the_bucket_table_compares_hit_rate_for_ranking_models_and_shows_in_the_summary(tmp_path, capsys):
    ranking = _bucket_run(tmp_path, "ease", {"test": [("1-5", 50, 0.5), (">100", 10, 0.9)]},
                          {"most_popular": {"test": [("1-5", 50, 0.6), (">100", 10, 0.3)]},
                           "global_mean": {"test": [("1-5", 50, None), (">100", 10, None)]}},
                          metric="hr@10", test_only=True)
    old = _run(tmp_path, "mf", beaten_by=[], top_k_beaten_by=[])  # a run from before the buckets: no rows
    rows = bucket_rows([ranking, old])
    assert [(r["model"], r["bucket"], r["metric"]) for r in rows] == [("ease", "1-5", "hr@10"),
                                                                       ("ease", ">100", "hr@10")]
    assert rows[0]["note"] == "LOSES: test -16.7%" and rows[1]["note"] == ""
    assert rows[0]["best baseline"] == rows[1]["best baseline"] == "most_popular"  # the global mean ranks nothing
    assert rows[0]["valid"] == rows[0]["valid n"] == ""  # no valid part measured
    text = summary_markdown({"source": "sample", "data_dir": "/d", "stages": [], "buckets": rows})
    assert "## Where models lose" in text
    assert "| N3M | ease | 1-5 | hr@10 | 50 | 0.5 / 0.6 |  |  | most_popular | LOSES: test -16.7% |" in text
    # the flow's terminal summary prints the same table
    from flows.full import print_summary

    print_summary({"data_dir": "/d", "stages": [], "buckets": rows})
    printed = capsys.readouterr().out
    assert "Where models lose" in printed and "0.5 / 0.6" in printed and "LOSES: test -16.7%" in printed
