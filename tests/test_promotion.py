"""Champion vs challenger on the newest split: mapping the champion onto it, the promotion rule, records."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_core.errors import RecsysError
from recsys_core.interactions import csr_triplets
from recsys_core.matrices import load_split
from recsys_core.promotion import OnNewSplit, decide, promote_if_better
from recsys_core.registry import Registry
from recsys_core.serving.model_access import FoldInUnsupported, ItemVectorsUnsupported, ServableModel


def test_champion_answers_in_the_new_splits_index(loop_runs):
    old, new = load_split(loop_runs["old"]), load_split(loop_runs["new"])
    champion = ServableModel(loop_runs["ae_old"])
    mapped = OnNewSplit(champion, new)
    new_users = ~np.isin(new.user_ids, old.user_ids)
    new_items = ~np.isin(new.item_ids, old.item_ids)
    cov = mapped.coverage()
    assert cov.users_known == int((~new_users).sum()) and cov.items_new == int(new_items.sum()) > 0
    assert cov.users_new_folded_in == int(new_users.sum()) > 0 and cov.users_new_fallback == 0

    rows, cols, _ = csr_triplets(new.valid)
    predicted = mapped.predict_pairs(rows, cols)
    # a pair both splits know: exactly the champion's own prediction for those raw ids
    known = ~new_users[rows] & ~new_items[cols]
    own = champion.predict_pairs(champion.rows_of(new.user_ids[rows[known]]),
                                 champion.cols_of(new.item_ids[cols[known]]))
    np.testing.assert_allclose(predicted[known], own, rtol=1e-5)
    # a new user: folded in from their ratings in the new train part
    user = int(np.flatnonzero(new_users & (np.diff(new.valid.indptr) > 0))[0])
    lo, hi = new.train.indptr[user], new.train.indptr[user + 1]
    train_cols = champion.cols_of(new.item_ids[new.train.indices[lo:hi]])
    keep = train_cols >= 0
    folded = champion.fold_in(train_cols[keep], new.train.data[lo:hi][keep])
    pairs = (rows == user) & ~new_items[cols]
    np.testing.assert_allclose(predicted[pairs], folded[champion.cols_of(new.item_ids[cols[pairs]])], rtol=1e-5)
    # a new item: the champion's global mean, counted
    assert np.all(predicted[new_items[cols]] == np.float32(champion.global_mean))
    assert cov.valid_pairs_fallback == int(new_items[cols].sum())
    # top-K lists: new items never ranked, every user gets a list
    scores = mapped.score_rows(np.arange(new.n_users))
    assert np.all(np.isneginf(scores[:, new_items])) and np.isfinite(scores[:, ~new_items]).all()


def test_a_model_that_cannot_fold_in_falls_back_and_says_how_often(loop_runs):
    new = load_split(loop_runs["new"])
    champion = ServableModel(loop_runs["mlp_old"])
    assert not champion.can_fold_in
    with pytest.raises(FoldInUnsupported, match="mlp model cannot score a user absent"):
        champion.fold_in(np.array([0]), np.array([4.0]))
    mapped = OnNewSplit(champion, new)
    cov = mapped.coverage()
    assert cov.users_new_folded_in == 0 and cov.users_new_fallback > 0
    rows, cols, _ = csr_triplets(new.valid)
    unknown = mapped.old_rows[rows] < 0
    assert np.all(mapped.predict_pairs(rows[unknown], cols[unknown]) == np.float32(champion.global_mean))
    # their top-K list is the champion's most-popular list
    user = int(rows[unknown][0])
    ranked = mapped.score_rows([user])[0]
    known_cols = np.flatnonzero(mapped.old_cols >= 0)
    assert np.array_equal(ranked[known_cols], champion.popularity[mapped.old_cols[known_cols]])


def test_fold_in_reproduces_known_users(loop_runs):
    """Folding a known user's own training ratings in gives the autoencoder's scores exactly, and close
    ones for MF (a ridge solve against its item factors, not its SGD path)."""
    exact = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # noqa: E731
    for label, check in (("ae_new", exact), ("ease_new", exact),
                         ("mf_new", lambda a, b: np.corrcoef(a, b)[0, 1] > 0.9 or pytest.fail("MF fold-in"))):
        model = ServableModel(loop_runs[label])
        train = model.data.train
        row = int(np.argmax(np.diff(train.indptr)))
        lo, hi = train.indptr[row], train.indptr[row + 1]
        check(model.fold_in(train.indices[lo:hi], train.data[lo:hi]), model.score_rows([row])[0])


def test_capabilities_come_from_the_predictor_protocol(loop_runs):
    """What a served model can do is what its estimator's capabilities answer (recsys_core.predictor), for
    every family: fold-in where the model has it and this configuration does not refuse it, item vectors
    where it has them."""
    expected = {"ae_new": (True, True), "mf_new": (True, True), "mlp_old": (False, True), "ease_new": (True, False),
                "als_new": (True, True), "autorec_item_old": (False, True)}
    for label, (folds_in, vectors) in expected.items():
        model = ServableModel(loop_runs[label])
        assert (model.can_fold_in, model.has_item_vectors) == (folds_in, vectors), label
        if vectors:
            unit = model.item_vectors()
            assert unit.shape[0] == model.n_items
            np.testing.assert_allclose(np.linalg.norm(unit, axis=1)[np.linalg.norm(unit, axis=1) > 0], 1, rtol=1e-5)
        else:
            with pytest.raises(ItemVectorsUnsupported, match="no vector per item"):
                model.item_vectors()
        if not folds_in:
            with pytest.raises(FoldInUnsupported, match="cannot score a user absent"):
                model.fold_in(np.array([0]), np.array([4.0]))


def test_first_champion_must_beat_the_baselines(loop_runs, tmp_path):
    registry = Registry(tmp_path / "registry")
    kept = promote_if_better(registry, "demo", [loop_runs["mf_bad"]])
    assert not kept.promoted and "loses to" in kept.reason and registry.champion("demo") is None
    assert kept.line().startswith("registry demo: no champion yet: ") and kept.line().endswith("; nothing promoted")
    assert "KEPT" not in kept.line()
    assert {r.role for r in kept.rows} == {"challenger", "baseline"}
    # the same runs again against the same (absent) champion: the earlier verdict, nothing recorded twice
    again = promote_if_better(registry, "demo", [loop_runs["mf_bad"]])
    assert not again.promoted and again.reason.startswith("already kept out on")
    assert len(registry.history("demo")) == 1

    first = promote_if_better(registry, "demo", [loop_runs["mf_bad"], loop_runs["ae_new"]])
    assert first.promoted and first.version == 1 and first.reason.startswith("first champion: autoencoder")
    pointer = registry.champion("demo")
    assert pointer.run_dir == str(loop_runs["ae_new"].resolve()) and pointer.primary_metric == "rmse"
    event = registry.history("demo")[-1]
    assert event.event == "promoted" and event.decision.metric == "rmse"
    assert {r.model for r in event.decision.rows} >= {"autoencoder", "mf", "user_item_bias"}
    # nothing retrained: the champion's own run is recognised and nothing is recorded
    same = promote_if_better(registry, "demo", [loop_runs["ae_new"]])
    assert not same.promoted and "champion's own run" in same.reason and len(registry.history("demo")) == 2


def test_better_challenger_promoted_worse_kept_out(loop_runs, tmp_path):
    registry = Registry(tmp_path / "registry")
    registry.promote("demo", loop_runs["mlp_old"], "seed champion", primary_metric="rmse")
    # the MLP cannot score the new split's new users and items; the new autoencoder can
    better = promote_if_better(registry, "demo", [loop_runs["ae_new"]])
    assert better.promoted and better.version == 2, better.reason
    champion_row = better.rows[0]
    assert champion_row.role == "champion" and "by fallback" in champion_row.note
    assert better.coverage.users_new_fallback > 0
    # a challenger that is not better by the margin stays out; the champion is untouched
    worse = promote_if_better(registry, "demo", [loop_runs["mf_new"]], margin=0.5)
    assert not worse.promoted and worse.reason.startswith("not better than the champion by the margin")
    assert registry.champion("demo").version == 2
    assert registry.history("demo")[-1].event == "rejected"
    assert registry.history("demo")[-1].champion_version == 2


def test_ranking_registry_and_a_stale_decision(loop_runs, tmp_path):
    registry = Registry(tmp_path / "registry")
    registry.promote("top", loop_runs["ae_old"], "seed", primary_metric="recall@10")
    decision = decide("top", registry.champion("top"), [str(loop_runs["ae_new"])], k=10, recall_users=500)
    assert decision.metric == "recall@10" and "valid recall@10" in decision.table()[0]
    assert {r.model for r in decision.rows if r.role == "baseline"} == {
        "global_mean", "item_mean", "user_item_bias", "most_popular"}
    # a promotion decided against version 1 after someone else moved the champion is refused
    registry.promote("top", loop_runs["mf_new"], "operator")
    with pytest.raises(RecsysError, match="changed to version 2 while version 1 was being compared"):
        registry.promote("top", loop_runs["ae_new"], "late", expected_champion=1)


def test_fast_scoring_gives_the_estimators_scores(loop_runs):
    """The serving fast path (precomputed user vectors, one numpy product) answers what the model does."""
    for label, applies in (("ae_new", True), ("mf_new", True), ("als_new", True), ("mlp_old", False),
                           ("ease_new", False), ("autorec_item_old", False)):
        model = ServableModel(loop_runs[label])
        rows = np.arange(model.n_users)
        before = model.score_rows(rows)
        assert model.prepare_fast_scoring() is applies
        np.testing.assert_allclose(model.score_rows(rows), before, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(model.score_row(3), before[3], rtol=1e-5, atol=1e-5)


def test_a_dropped_champion_leaves_no_cyclic_garbage(loop_runs, tmp_path):
    """The service freezes loaded objects out of the cyclic GC, so a champion must be freed by reference
    counting alone when a swap drops it: no reference cycle in any model family's champion."""
    import gc

    from recsys_core.serving.service import load_champion

    registry = Registry(tmp_path / "registry")
    for label in ("ae_new", "mf_new", "mlp_old", "ease_new", "als_new"):
        registry.promote("c", loop_runs[label], "x")
        champion = load_champion(registry, "c", registry.champion("c"))
        champion.recommend_user(int(champion.model.user_ids[0]), 10)
        if champion.model.has_item_vectors:
            champion.similar_items(int(champion.model.item_ids[0]), 3)
        if champion.model.can_fold_in:
            champion.recommend_ratings({int(champion.model.item_ids[0]): 4.0}, 5)
        gc.collect()
        gc.disable()
        try:
            del champion
            assert gc.collect() == 0, label
        finally:
            gc.enable()


@pytest.mark.parametrize("damage", ["corrupt model.pt", "deleted run folder", "damaged pointer"])
def test_an_unreadable_champion_is_recorded_and_replaced(loop_runs, tmp_path, damage):
    """Any failure loading the champion (torch cannot unpickle its weights, its folder is gone) or a
    damaged champion.json does not stop a scheduled retrain: the reason is in history.jsonl and the best
    valid challenger that beats the baselines takes over."""
    import shutil

    registry = Registry(tmp_path / "registry")
    champion = tmp_path / "champion-run"
    shutil.copytree(loop_runs["ae_old"], champion)
    registry.promote("demo", champion, "seed champion")
    if damage == "corrupt model.pt":
        (champion / "model.pt").write_bytes(b"\x80\x02garbage \xff\xfe" * 50)
    elif damage == "deleted run folder":
        shutil.rmtree(champion)
    else:
        (tmp_path / "registry" / "demo" / "champion.json").write_text('{"version": "one"}')
    decision = promote_if_better(registry, "demo", [loop_runs["mf_bad"], loop_runs["ae_new"]])
    if damage == "damaged pointer":   # rebuilt from the history, then the champion compared as usual
        events = [e.event for e in registry.history("demo")]
        assert events[:2] == ["promoted", "pointer_rebuilt"] and registry.champion("demo").version >= 1
        assert decision.champion_version == 1 and decision.champion_error is None and decision.rows[0].note
        return
    assert decision.promoted and decision.version == 2, decision.reason
    event = registry.history("demo")[-1]
    assert event.event == "promoted" and event.run_dir == str(loop_runs["ae_new"].resolve())
    assert "cannot be loaded" in decision.reason and decision.champion_error
    assert event.decision.champion_error == decision.champion_error
    first_row = event.decision.rows[0]
    assert first_row.role == "champion" and "cannot be loaded" in first_row.note

    # beaten by the baselines, a challenger does not replace a broken champion: the rejection is recorded
    registry2 = Registry(tmp_path / "registry2")
    registry2.promote("demo", loop_runs["ae_new"], "seed")
    broken = tmp_path / "broken-2"
    shutil.copytree(loop_runs["ae_new"], broken)
    registry2.promote("demo", broken, "to be broken")
    shutil.rmtree(broken)
    kept = promote_if_better(registry2, "demo", [loop_runs["mf_bad"]])
    assert not kept.promoted and "loses to" in kept.reason and kept.champion_error
    assert registry2.history("demo")[-1].decision.champion_error == kept.champion_error


def test_the_service_loads_a_linear_champion_without_its_training_estimator(loop_runs, tmp_path):
    """A champion with LinearScores is loaded in a child process: the serving process holds its answering
    arrays and no estimator or training data; its answers (known users, fold-in, similar items) are the
    in-process model's; the child ends when the champion is dropped."""
    from recsys_core.serving.service import load_champion

    registry = Registry(tmp_path / "registry")
    registry.promote("c", loop_runs["ae_new"], "x")
    champion = load_champion(registry, "c", registry.champion("c"))
    served, local = champion.model, ServableModel(loop_runs["ae_new"])
    assert served.estimator is None and served.data is None and served._remote is not None
    local.prepare_fast_scoring()
    rows = np.arange(0, served.n_users, 7)
    np.testing.assert_allclose(served.score_rows(rows), local.score_rows(rows), rtol=1e-6, atol=1e-6)
    assert np.array_equal(served.item_ids, local.item_ids) and served.titles == local.titles
    assert all(np.array_equal(served.seen_cols(r), local.seen_cols(r)) for r in rows)
    cols, values = np.array([3, 1, 8]), np.array([5.0, 2.0, 4.0], np.float32)
    np.testing.assert_allclose(served.fold_in(cols, values), local.fold_in(cols, values), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(served.item_vectors(), local.item_vectors(), rtol=1e-6, atol=1e-6)
    assert (served.can_fold_in, served.has_item_vectors, served.model_name) == (True, True, "autoencoder")
    process = served._remote.process
    assert process.poll() is None
    del champion, served
    assert process.wait(timeout=30) == 0
    # a model without LinearScores is loaded in process, as before
    registry.promote("c", loop_runs["mlp_old"], "x")
    assert load_champion(registry, "c", registry.champion("c")).model.estimator is not None
