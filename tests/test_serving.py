"""The recommendation service: a real uvicorn server on 127.0.0.1 (a free port, started and stopped here)
answering a real HTTP client (httpx); every endpoint and error case; a promotion during a stream of
requests; a broken champion kept out; rollback."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from recsys_core.matrices import load_split
from recsys_core.registry import Registry
from recsys_core.serving.model_access import ServableModel
from tests.loop_fixtures import serving

ROOT = Path(__file__).resolve().parents[1]
NAME = "demo"


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def service(loop_runs, tmp_path_factory):
    """A server on a registry whose champion (version 1) is the autoencoder of the old split."""
    root = tmp_path_factory.mktemp("serving")
    registry = Registry(root / "registry")
    registry.promote(NAME, loop_runs["ae_old"], "test champion")
    with serving(root / "registry", NAME, root / "server.log") as (client, _):
        yield {"client": client, "registry": registry, "log": root / "server.log", "root": root}
    assert "Traceback" not in (root / "server.log").read_text()


def _no_traceback(response: httpx.Response) -> dict:
    assert "Traceback" not in response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def test_health_and_model(service, loop_runs):
    client = service["client"]
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["version"] == 1
    model = client.get("/model").json()
    assert model["version"] == 1 and model["model_type"] == "autoencoder" and model["can_fold_in"]
    # the run's id, never a path of the server's disk (this run lies outside the registry's data dir)
    assert model["run"] == health.json()["run"] == "ae_old" and "run_dir" not in model
    assert str(loop_runs["ae_old"].parent) not in health.text + client.get("/model").text
    assert model["metrics"]["valid"]["rmse"] > 0 and model["n_items"] == len(load_split(loop_runs["old"]).item_ids)


def test_user_recommendations_exclude_what_the_user_rated(service, loop_runs):
    client = service["client"]
    old = load_split(loop_runs["old"])
    known = (old.train + old.valid + old.test).tocsr()
    row = int(np.argmax(np.diff(known.indptr)))
    user = int(old.user_ids[row])
    body = client.get(f"/users/{user}/recommendations", params={"k": 7}).json()
    items = [entry["item_id"] for entry in body["items"]]
    rated = set(old.item_ids[known.indices[known.indptr[row]:known.indptr[row + 1]]].tolist())
    assert body["user_id"] == user and len(items) == 7 and not rated & set(items)
    assert [entry["rank"] for entry in body["items"]] == list(range(1, 8))
    scores = [entry["score"] for entry in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(entry["title"] == f"Movie {entry['item_id']}" for entry in body["items"])
    assert len(client.get(f"/users/{user}/recommendations").json()["items"]) == 10   # default k


def test_a_known_users_answer_is_the_runs_own_top_list_and_deeper_ones_are_computed(service, loop_runs):
    client = service["client"]
    listed = pl.read_parquet(loop_runs["ae_old"] / "recommendations.parquet")
    depth = int(listed["rank"].max())
    old = load_split(loop_runs["old"])
    known = (old.train + old.valid + old.test).tocsr()
    for user in listed["user_id"].unique().sort().to_list()[:5]:
        mine = listed.filter(pl.col("user_id") == user).sort("rank")
        body = client.get(f"/users/{user}/recommendations", params={"k": depth}).json()
        assert [e["item_id"] for e in body["items"]] == mine["item_id"].to_list()
        assert np.allclose([e["score"] for e in body["items"]], mine["score"].to_numpy())
        deeper = client.get(f"/users/{user}/recommendations", params={"k": depth + 5}).json()["items"]
        row = int(np.searchsorted(old.user_ids, user))
        rated = set(old.item_ids[known.indices[known.indptr[row]:known.indptr[row + 1]]].tolist())
        assert len(deeper) == depth + 5 and not rated & {e["item_id"] for e in deeper}
        assert [e["rank"] for e in deeper] == list(range(1, depth + 6))


def test_the_top_lists_are_read_from_the_run_and_answer_only_as_deep_as_they_go(loop_runs):
    model = ServableModel(loop_runs["ae_old"])
    listed = pl.read_parquet(loop_runs["ae_old"] / "recommendations.parquet")
    depth = model.load_top_lists()
    assert depth == int(listed["rank"].max()) > 0
    user = int(listed["user_id"][0])
    row = model.row_of(user)
    cols, scores = model.top_list(row, depth)
    mine = listed.filter(pl.col("user_id") == user).sort("rank")
    assert model.item_ids[cols].tolist() == mine["item_id"].to_list()
    assert model.top_list(row, depth + 1) is None  # deeper than the run's lists: computed
    unlisted = np.setdiff1d(np.arange(model.n_users), model.rows_of(listed["user_id"].unique().to_numpy()))
    if len(unlisted):
        assert model.top_list(int(unlisted[0]), 1) is None


def test_new_user_and_similar_items(service, loop_runs):
    client = service["client"]
    old = load_split(loop_runs["old"])
    liked = [int(i) for i in old.item_ids[:3]]
    response = client.post("/recommendations", json={"ratings": {str(i): 5 for i in liked}, "k": 5})
    body = _no_traceback(response)
    assert response.status_code == 200 and len(body["items"]) == 5
    assert not set(liked) & {entry["item_id"] for entry in body["items"]}
    similar = client.get(f"/items/{liked[0]}/similar", params={"k": 4}).json()
    assert similar["item_id"] == liked[0] and len(similar["items"]) == 4
    assert liked[0] not in [entry["item_id"] for entry in similar["items"]]
    assert all(-1.0001 <= entry["score"] <= 1.0001 for entry in similar["items"])


@pytest.mark.parametrize("method,path,payload,status,needle", [
    ("get", "/users/8/recommendations", None, 404, "user 8 is not known"),
    ("get", "/users/abc/recommendations", None, 422, "user_id"),
    ("get", "/users/7/recommendations?k=0", None, 422, "k:"),
    ("get", "/users/7/recommendations?k=ten", None, 422, "k:"),
    ("get", "/users/7/recommendations?k=100000", None, 422, "k:"),
    ("get", "/users/99999999999999999999999/recommendations", None, 422, "user_id"),
    ("post", "/recommendations", {"ratings": {"99999999999999999999999": 4}}, 404, "99999999999999999999999"),
    ("get", "/items/99999/similar", None, 404, "item 99999 is not in the catalogue"),
    ("get", "/items/1/similar?k=-3", None, 422, "k:"),
    ("post", "/recommendations", {"ratings": {"99999": 4, "1": 5}}, 404, "99999"),
    ("post", "/recommendations", {"ratings": {"1": 9}}, 422, "must lie in 1..5"),
    ("post", "/recommendations", {"ratings": {}}, 422, "ratings"),
    ("post", "/recommendations", {"ratings": {"x": 3}}, 422, "ratings"),
    ("post", "/recommendations", {"k": 3}, 422, "ratings"),
    ("post", "/recommendations", {"ratings": {"1": 4}, "k": 0}, 422, "k:"),
    ("post", "/recommendations", "not json", 422, "bad request"),
    ("get", "/no/such/route", None, 404, "Not Found"),
])
def test_errors_are_one_json_sentence(service, method, path, payload, status, needle):
    client = service["client"]
    if method == "get":
        response = client.get(path)
    elif isinstance(payload, str):
        response = client.post(path, content=payload, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=payload)
    body = _no_traceback(response)
    assert response.status_code == status and needle in body["detail"], body


def test_promotion_under_a_stream_of_requests(service, loop_runs):
    """Clients keep asking while a better champion is promoted: no request fails, answers switch to the
    new version (the watcher sees the pointer), and users only the new model knows are then answered."""
    client, registry = service["client"], service["registry"]
    old, new = load_split(loop_runs["old"]), load_split(loop_runs["new"])
    shared = [int(u) for u in np.intersect1d(old.user_ids, new.user_ids)[:50]]
    newcomer = int(np.setdiff1d(new.user_ids, old.user_ids)[0])
    assert client.get(f"/users/{newcomer}/recommendations").status_code == 404
    answers: list[tuple[int, int]] = []
    failures: list[str] = []
    stop = threading.Event()

    def stream(offset: int) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
            i = offset
            while not stop.is_set():
                user = shared[i % len(shared)]
                try:
                    response = own.get(f"/users/{user}/recommendations", params={"k": 5})
                    if response.status_code != 200 or len(response.json()["items"]) != 5:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        answers.append((time.monotonic(), response.json()["version"]))
                except httpx.HTTPError as err:
                    failures.append(repr(err))
                i += 1

    streams = [threading.Thread(target=stream, args=(k,)) for k in range(4)]
    for thread in streams:
        thread.start()
    try:
        wait_for(lambda: len(answers) > 40, what="answers from version 1")
        registry.promote(NAME, loop_runs["ae_new"], "better")
        wait_for(lambda: answers and answers[-1][1] == 2, what="answers from version 2")
        switched = len(answers)
        wait_for(lambda: len(answers) > switched + 40, what="more answers after the swap")
    finally:
        stop.set()
        for thread in streams:
            thread.join()
    assert failures == []
    versions = [v for _, v in sorted(answers)]
    assert versions[0] == 1 and set(versions[-40:]) == {2}   # switched, and never back
    assert client.get("/health").json()["version"] == 2
    body = client.get(f"/users/{newcomer}/recommendations").json()
    assert body["version"] == 2 and len(body["items"]) == 10


def test_broken_champion_is_not_served_and_rollback_restores(service, loop_runs):
    """A champion whose weights changed after promotion is refused (the old one keeps serving); a model
    that cannot fold users in answers POST /recommendations with 409, one without item vectors
    /items/{id}/similar; rollback + POST /reload restore."""
    import shutil

    client, registry = service["client"], service["registry"]
    serving_version = client.get("/health").json()["version"]
    broken = service["root"] / "broken-run"
    shutil.copytree(loop_runs["mf_new"], broken)
    registry.promote(NAME, broken, "about to break")
    with open(broken / "model.pt", "ab") as fh:
        fh.write(b"garbage")
    response = client.post("/reload")
    assert response.status_code == 500 and "changed since version" in _no_traceback(response)["detail"]
    health = client.get("/health").json()
    assert health["version"] == serving_version and "still serving" in health["last_reload_error"]
    assert client.get("/users/7/recommendations").status_code in (200, 404)   # still answering

    registry.promote(NAME, loop_runs["mlp_old"], "cannot fold in")
    wait_for(lambda: client.get("/health").json()["version"] == registry.champion(NAME).version,
             what="the MLP champion")
    response = client.post("/recommendations", json={"ratings": {"1": 5}})
    assert response.status_code == 409 and "mlp model cannot score a user absent" in response.json()["detail"]
    similar = client.get("/items/1/similar", params={"k": 3})
    assert similar.status_code == 200 and len(similar.json()["items"]) == 3

    registry.promote(NAME, loop_runs["ease_new"], "no item vectors")
    wait_for(lambda: client.get("/health").json()["version"] == registry.champion(NAME).version,
             what="the EASE champion")
    response = client.get("/items/1/similar")
    assert response.status_code == 409 and "ease model has no vector per item" in response.json()["detail"]
    assert client.post("/recommendations", json={"ratings": {"1": 5}}).status_code == 200   # EASE folds in

    registry.rollback(NAME, to_version=serving_version)
    reloaded = client.post("/reload").json()
    assert reloaded["changed"] and reloaded["version"] == serving_version
    assert client.post("/recommendations", json={"ratings": {"1": 5}}).status_code == 200


def test_no_champion_yet_then_the_first_promotion(loop_runs, tmp_path):
    registry = Registry(tmp_path / "registry")
    with serving(tmp_path / "registry", NAME, tmp_path / "server.log") as (client, _):
        response = client.get("/health")
        assert response.status_code == 503 and response.json()["status"] == "no champion"
        response = client.get("/users/7/recommendations")
        assert response.status_code == 503 and "has no champion yet" in response.json()["detail"]
        # said when it starts, not only when asked
        assert f"registry model {NAME} has no champion yet" in (tmp_path / "server.log").read_text()
        registry.promote(NAME, loop_runs["mf_new"], "first")
        wait_for(lambda: client.get("/health").status_code == 200, what="the first champion")
        assert client.get("/model").json()["model_type"] == "mf"
        assert client.post("/recommendations", json={"ratings": {"1": 5, "2": 1}}).status_code == 200
    assert "Traceback" not in (tmp_path / "server.log").read_text()
